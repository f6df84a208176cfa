//! `health-monitor`: watches every module and the device against rules from its twin, sends
//! health telemetry at an interval, an event on every change of state, and keeps a summary in
//! its reported properties.
//!
//! # Where the data comes from
//!
//! edged's Prometheus text at `http://$EDGE_METRICS_ADDR/metrics` (or the twin's
//! `metricsUrl`), read with one HTTP/1.1 GET per interval:
//!
//! | metric | labels | used for |
//! |---|---|---|
//! | `edgeagent_module_status` | `module`, `status` (value 1 = current) | status |
//! | `edgeagent_module_restarts_total` | `module` | restarts, `restarts` rule |
//! | `edgehub_module_heartbeat_age_seconds` | `module` | heartbeat age |
//! | `edgehub_messages_received_total` | `module` | rate out of a module |
//! | `edgehub_messages_sent_total` | `endpoint` | rate into an endpoint; `module/<m>/inputs/*` summed = rate into `m` |
//! | `edgehub_queue_length` | `endpoint` | queue length |
//! | `edgehub_queue_oldest_age_seconds` | `endpoint` | queue age |
//! | `edgehub_dead_letters_total` | `reason` | dead letters per minute |
//!
//! Rates are counter deltas divided by the time between two scrapes (a counter that went down
//! counts as reset). The device: CPU from `/proc/stat` deltas, memory from `/proc/meminfo`
//! (`MemAvailable` / `MemTotal`), free space of the data directory's file system (`statvfs`),
//! and clock jumps (wall clock against monotonic clock between two readings).
//!
//! Values modules publish themselves (model version, scoring latency, DCS connection,
//! interlock state) need no code here: once they appear as metric series, a `metric` rule
//! watches them, e.g. `{"name": "dcs-link", "kind": "metric", "metric":
//! "module_dcs_connected", "labels": {"module": "opcua-writer"}, "notEquals": 1, "absent":
//! true, "severity": "failed"}` or `{"kind": "metric", "metric":
//! "module_scoring_latency_seconds", "labels": {"quantile": "0.99"}, "above": 0.5}`.
//!
//! # Configuration (the module twin's desired properties)
//!
//! ```json
//! {
//!   "interval": "5s",
//!   "metricsUrl": "http://127.0.0.1:9600/metrics",
//!   "scrapeTimeout": "2s",
//!   "dataDir": "/var/lib/edged",
//!   "reportEvery": "1m",
//!   "rules": [
//!     {"name": "module-down", "kind": "moduleStatus", "module": "*", "notIn": ["running"], "for": "10s", "severity": "degraded"},
//!     {"name": "queue-backlog", "kind": "queueLength", "endpoint": "*", "above": 1000, "for": "30s"},
//!     {"kind": "heartbeatAge", "above": "30s"},
//!     {"kind": "deadLetters", "ratePerMinAbove": 1},
//!     {"kind": "cpu", "abovePercent": 90, "for": "1m"},
//!     {"kind": "disk", "freeBelowPercent": 10}
//!   ]
//! }
//! ```
//!
//! Every field is optional. `metricsUrl` defaults to `http://$EDGE_METRICS_ADDR/metrics`;
//! `dataDir` to the module's data directory (`EDGE_MODULE_DATA_DIR`, else `.`); `reportEvery`
//! is how often the reported properties are refreshed when nothing changed. Without `rules` the
//! [`default_rules`] apply; with `rules` exactly those apply (`[]` watches nothing).
//!
//! Every rule has `kind` and optionally `name` (default: the kind; names must be unique),
//! `for` (default `0s`), `clearFor` (default: `for`), `severity` (`degraded` (default) or
//! `failed`). Kinds (patterns use `*` as wildcard; default `*`):
//!
//! - `moduleStatus`: `module`, exactly one of `in` / `notIn` (lists of agent statuses:
//!   `running`, `backoff`, `failed`, `stopped`, `unknown`, `unhealthy`).
//! - `restarts`: `module`, `above` (count), `window` (default `10m`).
//! - `heartbeatAge`: `module`, `above` (duration).
//! - `messageRate`: `module`, `direction` (`in` | `out`, default `out`), `above` / `below`
//!   (messages per second).
//! - `queueLength`: `endpoint`, `above` (messages). `queueAge`: `endpoint`, `above` (duration).
//! - `deadLetters`: `ratePerMinAbove`.
//! - `cpu`: `abovePercent`; `memory`: `abovePercent` (used); `disk`: `freeBelowPercent`.
//! - `clock`: `jumpAbove` (duration).
//! - `scrape`: fires while the metrics cannot be read.
//! - `metric`: `metric` (name), `labels` (patterns), any of `above`, `below`, `equals`,
//!   `notEquals`, and `absent: true` (fire when no series matches).
//!
//! Unknown fields are errors; the error names the rule (`rules[2]: unknown field …`).
//!
//! # Flap suppression
//!
//! A condition fires after holding at every evaluation for `for`, and clears after being
//! clear at every evaluation for `clearFor`; the state (worst active severity: healthy <
//! degraded < failed) changes once per transition, so a condition toggling faster than
//! `for` / `clearFor` produces no storm of events. See [`evaluator`](crate::Evaluator).
//!
//! # Outputs
//!
//! - `health`, every interval, property `state`:
//!   `{"state", "since", "at", "reasons": [{"rule", "severity", "subject", "message"}],
//!   "modules": {"<id>": {"status", "restarts", "heartbeatAgeSeconds", "inPerSec",
//!   "outPerSec"}}, "queues": {"<endpoint>": {"length", "oldestAgeSeconds", "sentPerSec"}},
//!   "deadLetters": {"total", "perMin", "byReason"}, "device": {"cpuPercent",
//!   "memoryTotalBytes", "memoryAvailableBytes", "memoryUsedPercent", "dataDir",
//!   "diskTotalBytes", "diskFreeBytes", "diskFreePercent", "clock", "clockJumpSeconds"},
//!   "metrics": {"url", "error", "series", "skipped"}}`. Route it to `$upstream`.
//! - `events`, on every state transition, property `state` (the new one):
//!   `{"from", "to", "reasons", "at"}`.
//!
//! Reported properties: `{"health": {"state", "since", "reasons", "lastEvaluation"}}` when the
//! state or the reasons change, else every `reportEvery`. Direct method `status` returns the
//! latest `health` body.
//!
//! # Layout
//!
//! - `config`: [`HealthConfig`], [`Rule`], [`default_rules`], validation.
//! - `prom`: the Prometheus text parser ([`Metrics`]).
//! - `scrape`: the HTTP GET ([`fetch`]).
//! - `device`: CPU, memory, disk, clock ([`DeviceProbe`]).
//! - `snapshot`: metrics → per-module / per-queue views with rates ([`SnapshotBuilder`]).
//! - `evaluator`: rules, flap suppression, overall state ([`Evaluator`]).
//! - `monitor`: one cycle → messages and reported patch ([`Monitor`]).
//! - `module`: [`HealthMonitor`], the thin SDK wrapper.

mod config;
mod device;
mod evaluator;
mod module;
mod monitor;
mod prom;
mod scrape;
mod snapshot;

pub use config::{
    ConfigError, Direction, HealthConfig, Rule, RuleKind, Severity, default_rules, glob_match,
};
pub use device::{
    CpuTimes, DeviceProbe, DeviceSnapshot, clock_jump, cpu_percent, parse_meminfo, parse_proc_stat,
};
pub use evaluator::{Evaluation, Evaluator, Reason, Transition};
pub use module::{EVENTS_OUTPUT, HEALTH_OUTPUT, HealthMonitor, STATUS_METHOD};
pub use monitor::{CycleOutput, Monitor, summary};
pub use prom::{Metrics, PromError, Series, parse_line};
pub use scrape::{HttpUrl, MAX_RESPONSE, Response, ScrapeError, fetch, parse_response};
pub use snapshot::{
    DEAD_LETTERS, DeadLetterView, HEARTBEAT_AGE, MESSAGES_RECEIVED, MESSAGES_SENT, MODULE_RESTARTS,
    MODULE_STATUS, ModuleView, QUEUE_AGE, QUEUE_LENGTH, QueueView, Snapshot, SnapshotBuilder,
    endpoint_module,
};

#[cfg(test)]
mod tests;
