//! What one evaluation looks at: the metrics of edged turned into per-module and per-queue
//! views (rates from counter deltas), the device reading, and the raw series for generic rules.

use crate::device::DeviceSnapshot;
use crate::prom::Metrics;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use tokio::time::Instant;

/// Metric: `edgeagent_module_status{module, status}` = 1 for the current status.
pub const MODULE_STATUS: &str = "edgeagent_module_status";
/// Metric: `edgeagent_module_restarts_total{module}`.
pub const MODULE_RESTARTS: &str = "edgeagent_module_restarts_total";
/// Metric: `edgehub_module_heartbeat_age_seconds{module}`.
pub const HEARTBEAT_AGE: &str = "edgehub_module_heartbeat_age_seconds";
/// Metric: `edgehub_messages_received_total{module}` (messages out of a module).
pub const MESSAGES_RECEIVED: &str = "edgehub_messages_received_total";
/// Metric: `edgehub_messages_sent_total{endpoint}` (messages into an endpoint).
pub const MESSAGES_SENT: &str = "edgehub_messages_sent_total";
/// Metric: `edgehub_queue_length{endpoint}`.
pub const QUEUE_LENGTH: &str = "edgehub_queue_length";
/// Metric: `edgehub_queue_oldest_age_seconds{endpoint}`.
pub const QUEUE_AGE: &str = "edgehub_queue_oldest_age_seconds";
/// Metric: `edgehub_dead_letters_total{reason}`.
pub const DEAD_LETTERS: &str = "edgehub_dead_letters_total";

/// One module as seen by the agent and the hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleView {
    /// The agent's runtime status (`running`, `backoff`, …); `None` when the agent does not
    /// report the module.
    pub status: Option<String>,
    /// Restarts since edged started.
    pub restarts: Option<u64>,
    /// Seconds since the module's last MQTT packet; `None` if it never connected.
    pub heartbeat_age_seconds: Option<f64>,
    /// Messages per second the hub delivered to the module's inputs.
    pub in_per_sec: Option<f64>,
    /// Messages per second the hub received from the module.
    pub out_per_sec: Option<f64>,
}

/// One hub queue (endpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    /// Messages waiting.
    pub length: Option<u64>,
    /// Age of the oldest waiting message in seconds.
    pub oldest_age_seconds: Option<f64>,
    /// Messages per second delivered to the endpoint.
    pub sent_per_sec: Option<f64>,
}

/// Dead letters, all reasons together.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    /// Total since edged started.
    pub total: u64,
    /// Per minute since the previous snapshot.
    pub per_min: Option<f64>,
    /// Total by reason.
    pub by_reason: BTreeMap<String, u64>,
}

/// Everything one evaluation looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Modules by id.
    pub modules: BTreeMap<String, ModuleView>,
    /// Queues by endpoint.
    pub queues: BTreeMap<String, QueueView>,
    /// Dead letters.
    pub dead_letters: DeadLetterView,
    /// The device.
    pub device: DeviceSnapshot,
    /// Why the metrics could not be read, if they could not.
    pub scrape_error: Option<String>,
    /// The raw series, for `metric` rules.
    #[serde(skip)]
    pub metrics: Metrics,
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

/// Counter values by (metric, label value).
type Counters = HashMap<(String, String), f64>;

/// Builds snapshots, keeping the counters of the previous one for rates.
///
/// # Invariants
/// `prev` holds the counters and the time of the last successful scrape.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    prev: Option<(Instant, Counters)>,
}

impl SnapshotBuilder {
    /// A builder with no history (the first snapshot has no rates).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns one scrape (or its error) and a device reading into a snapshot.
    pub fn build(
        &mut self,
        scrape: Result<Metrics, String>,
        device: DeviceSnapshot,
        now: Instant,
    ) -> Snapshot {
        let metrics = match scrape {
            Ok(m) => m,
            Err(e) => {
                return Snapshot {
                    device,
                    scrape_error: Some(e),
                    ..Snapshot::default()
                };
            }
        };
        let mut counters: Counters = HashMap::new();
        let key = |name: &str, label: &str| (name.to_owned(), label.to_owned());
        let prev = self.prev.take();
        let rate = |k: &(String, String), cur: f64| -> Option<f64> {
            let (t, old) = prev.as_ref()?;
            let secs = now.saturating_duration_since(*t).as_secs_f64();
            if secs <= 0.0 {
                return None;
            }
            let old = *old.get(k).unwrap_or(&0.0);
            // A counter that went down was reset: everything counted since is new.
            let delta = if cur >= old { cur - old } else { cur };
            Some(delta / secs)
        };
        let mut snap = Snapshot {
            device,
            ..Snapshot::default()
        };
        for s in &metrics.series {
            match s.name.as_str() {
                MODULE_STATUS => {
                    if let (Some(m), Some(st)) = (s.label("module"), s.label("status")) {
                        let view = snap.modules.entry(m.to_owned()).or_default();
                        if s.value >= 1.0 {
                            view.status = Some(st.to_owned());
                        }
                    }
                }
                MODULE_RESTARTS => {
                    if let Some(m) = s.label("module") {
                        snap.modules.entry(m.to_owned()).or_default().restarts =
                            Some(count(s.value));
                    }
                }
                HEARTBEAT_AGE => {
                    if let Some(m) = s.label("module") {
                        snap.modules
                            .entry(m.to_owned())
                            .or_default()
                            .heartbeat_age_seconds = Some(s.value);
                    }
                }
                MESSAGES_RECEIVED => {
                    if let Some(m) = s.label("module") {
                        let k = key(MESSAGES_RECEIVED, m);
                        snap.modules.entry(m.to_owned()).or_default().out_per_sec =
                            rate(&k, s.value);
                        counters.insert(k, s.value);
                    }
                }
                MESSAGES_SENT => {
                    if let Some(ep) = s.label("endpoint") {
                        let k = key(MESSAGES_SENT, ep);
                        let r = rate(&k, s.value);
                        counters.insert(k, s.value);
                        snap.queues.entry(ep.to_owned()).or_default().sent_per_sec = r;
                        if let Some(m) = endpoint_module(ep) {
                            let view = snap.modules.entry(m.to_owned()).or_default();
                            view.in_per_sec = match (view.in_per_sec, r) {
                                (Some(a), Some(b)) => Some(a + b),
                                (a, b) => a.or(b),
                            };
                        }
                    }
                }
                QUEUE_LENGTH => {
                    if let Some(ep) = s.label("endpoint") {
                        snap.queues.entry(ep.to_owned()).or_default().length = Some(count(s.value));
                    }
                }
                QUEUE_AGE => {
                    if let Some(ep) = s.label("endpoint") {
                        snap.queues
                            .entry(ep.to_owned())
                            .or_default()
                            .oldest_age_seconds = Some(s.value);
                    }
                }
                DEAD_LETTERS => {
                    let reason = s.label("reason").unwrap_or("");
                    let k = key(DEAD_LETTERS, reason);
                    let r = rate(&k, s.value);
                    counters.insert(k, s.value);
                    let dl = &mut snap.dead_letters;
                    dl.total += count(s.value);
                    *dl.by_reason.entry(reason.to_owned()).or_default() += count(s.value);
                    dl.per_min = match (dl.per_min, r) {
                        (Some(a), Some(b)) => Some(a + b * 60.0),
                        (a, b) => a.or(b.map(|b| b * 60.0)),
                    };
                }
                _ => {}
            }
        }
        if snap.dead_letters.per_min.is_none() && prev.is_some() {
            snap.dead_letters.per_min = Some(0.0);
        }
        snap.metrics = metrics;
        self.prev = Some((now, counters));
        snap
    }
}

/// The module of an endpoint `module/<m>/inputs/<i>`.
#[must_use]
pub fn endpoint_module(endpoint: &str) -> Option<&str> {
    let rest = endpoint.strip_prefix("module/")?;
    let (m, tail) = rest.split_once('/')?;
    tail.starts_with("inputs/").then_some(m)
}
