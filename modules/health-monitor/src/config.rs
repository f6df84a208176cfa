//! The module's configuration (its twin's desired properties): where metrics come from, how
//! often to evaluate, and the rules.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration of `health-monitor`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthConfig {
    /// How often metrics are scraped, rules evaluated and the `health` message sent.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// The metrics URL (`http://host:port/path`); default `http://$EDGE_METRICS_ADDR/metrics`.
    #[serde(default)]
    pub metrics_url: Option<String>,
    /// How long one scrape may take.
    #[serde(default = "default_scrape_timeout", with = "humantime_serde")]
    pub scrape_timeout: Duration,
    /// The directory whose file system is watched; default the module's data directory
    /// (`EDGE_MODULE_DATA_DIR`), else the working directory.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// At most how often the reported properties are patched when nothing changed (a change of
    /// state or reasons is reported at once).
    #[serde(default = "default_report_every", with = "humantime_serde")]
    pub report_every: Duration,
    /// The rules; [`default_rules`] when absent, exactly these when present (`[]` disables all).
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_scrape_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_report_every() -> Duration {
    Duration::from_secs(60)
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            metrics_url: None,
            scrape_timeout: default_scrape_timeout(),
            data_dir: None,
            report_every: default_report_every(),
            rules: None,
        }
    }
}

/// How bad a condition is; the overall state is the worst active severity.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    /// Nothing wrong.
    #[default]
    Healthy,
    /// Working, with a problem someone should look at.
    Degraded,
    /// Not doing its job.
    Failed,
}

impl Severity {
    /// The name used in messages: `healthy`, `degraded`, `failed`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule: the fields every rule has, and what it watches.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name (default: the kind's name); it prefixes nothing but identifies the rule.
    pub name: String,
    /// How long the condition must hold before it fires.
    pub for_: Duration,
    /// How long the condition must be clear before it clears (default: `for_`).
    pub clear_for: Duration,
    /// The severity while it is active (`degraded` or `failed`).
    pub severity: Severity,
    /// What it watches.
    pub kind: RuleKind,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleCommon {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "for", with = "humantime_serde")]
    for_: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    clear_for: Option<Duration>,
    #[serde(default)]
    severity: Option<Severity>,
}

const COMMON_KEYS: [&str; 4] = ["name", "for", "clearFor", "severity"];

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(d)?;
        let mut common = Map::new();
        for k in COMMON_KEYS {
            if let Some(v) = map.remove(k) {
                common.insert(k.to_owned(), v);
            }
        }
        let common: RuleCommon =
            serde_json::from_value(Value::Object(common)).map_err(D::Error::custom)?;
        let kind: RuleKind =
            serde_json::from_value(Value::Object(map)).map_err(D::Error::custom)?;
        let for_ = common.for_.unwrap_or_default();
        Ok(Rule {
            name: common.name.unwrap_or_else(|| kind.kind_name().to_owned()),
            for_,
            clear_for: common.clear_for.unwrap_or(for_),
            severity: common.severity.unwrap_or(Severity::Degraded),
            kind,
        })
    }
}

/// Which way a message rate is measured, seen from the module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Messages the hub delivered to the module's inputs.
    In,
    /// Messages the hub received from the module.
    #[default]
    Out,
}

/// What a rule watches. `module`/`endpoint` are patterns where `*` matches any run of
/// characters (default `*`, every module / endpoint); each match is a separate condition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum RuleKind {
    /// The agent's runtime status of a module is (not) in a set.
    #[serde(rename_all = "camelCase")]
    ModuleStatus {
        /// Module pattern.
        #[serde(default = "star")]
        module: String,
        /// Fires when the status is one of these.
        #[serde(default, rename = "in")]
        in_: Option<Vec<String>>,
        /// Fires when the status is none of these.
        #[serde(default)]
        not_in: Option<Vec<String>>,
    },
    /// A module restarted more than `above` times within `window`.
    #[serde(rename_all = "camelCase")]
    Restarts {
        /// Module pattern.
        #[serde(default = "star")]
        module: String,
        /// Number of restarts tolerated within the window.
        above: u64,
        /// The sliding window.
        #[serde(default = "default_restart_window", with = "humantime_serde")]
        window: Duration,
    },
    /// Time since a connected module's last MQTT packet.
    #[serde(rename_all = "camelCase")]
    HeartbeatAge {
        /// Module pattern.
        #[serde(default = "star")]
        module: String,
        /// Fires above this age.
        #[serde(with = "humantime_serde")]
        above: Duration,
    },
    /// Messages per second in or out of a module.
    #[serde(rename_all = "camelCase")]
    MessageRate {
        /// Module pattern.
        #[serde(default = "star")]
        module: String,
        /// In or out of the module.
        #[serde(default)]
        direction: Direction,
        /// Fires above this rate (messages per second).
        #[serde(default)]
        above: Option<f64>,
        /// Fires below this rate (messages per second).
        #[serde(default)]
        below: Option<f64>,
    },
    /// Messages waiting in a hub queue.
    #[serde(rename_all = "camelCase")]
    QueueLength {
        /// Endpoint pattern (`module/<m>/inputs/<i>`, `$upstream`).
        #[serde(default = "star")]
        endpoint: String,
        /// Fires above this many messages.
        above: u64,
    },
    /// Age of the oldest message in a hub queue.
    #[serde(rename_all = "camelCase")]
    QueueAge {
        /// Endpoint pattern.
        #[serde(default = "star")]
        endpoint: String,
        /// Fires above this age.
        #[serde(with = "humantime_serde")]
        above: Duration,
    },
    /// Dead letters per minute (all reasons together).
    #[serde(rename_all = "camelCase")]
    DeadLetters {
        /// Fires above this rate.
        rate_per_min_above: f64,
    },
    /// Device CPU use.
    #[serde(rename_all = "camelCase")]
    Cpu {
        /// Fires above this percentage (0–100).
        above_percent: f64,
    },
    /// Device memory use (`1 - MemAvailable / MemTotal`).
    #[serde(rename_all = "camelCase")]
    Memory {
        /// Fires above this percentage of memory used.
        above_percent: f64,
    },
    /// Free space on the data directory's file system.
    #[serde(rename_all = "camelCase")]
    Disk {
        /// Fires below this percentage of free space.
        free_below_percent: f64,
    },
    /// The wall clock moved differently from the monotonic clock between two evaluations
    /// (a step by NTP or by hand).
    #[serde(rename_all = "camelCase")]
    Clock {
        /// Fires when the difference is above this.
        #[serde(with = "humantime_serde")]
        jump_above: Duration,
    },
    /// The metrics endpoint cannot be read.
    #[serde(rename_all = "camelCase")]
    Scrape {},
    /// Any metric series: the generic rule for values modules publish (model version,
    /// scoring latency, DCS connection, interlock state, …).
    #[serde(rename_all = "camelCase")]
    Metric {
        /// The metric name, exactly.
        metric: String,
        /// Label patterns the series must match (`*` wildcards allowed).
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// Fires above this value.
        #[serde(default)]
        above: Option<f64>,
        /// Fires below this value.
        #[serde(default)]
        below: Option<f64>,
        /// Fires when equal to this value.
        #[serde(default)]
        equals: Option<f64>,
        /// Fires when different from this value.
        #[serde(default)]
        not_equals: Option<f64>,
        /// Also fires (once, subject `absent`) when no series matches.
        #[serde(default)]
        absent: bool,
    },
}

fn star() -> String {
    "*".into()
}

fn default_restart_window() -> Duration {
    Duration::from_secs(600)
}

impl RuleKind {
    /// The kind's name as written in the twin.
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::ModuleStatus { .. } => "moduleStatus",
            Self::Restarts { .. } => "restarts",
            Self::HeartbeatAge { .. } => "heartbeatAge",
            Self::MessageRate { .. } => "messageRate",
            Self::QueueLength { .. } => "queueLength",
            Self::QueueAge { .. } => "queueAge",
            Self::DeadLetters { .. } => "deadLetters",
            Self::Cpu { .. } => "cpu",
            Self::Memory { .. } => "memory",
            Self::Disk { .. } => "disk",
            Self::Clock { .. } => "clock",
            Self::Scrape {} => "scrape",
            Self::Metric { .. } => "metric",
        }
    }
}

/// A configuration problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// JSON path of the field, e.g. `rules[2].above`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl HealthConfig {
    /// The rules in force: the configured ones, or [`default_rules`].
    #[must_use]
    pub fn effective_rules(&self) -> Vec<Rule> {
        self.rules.clone().unwrap_or_else(default_rules)
    }

    /// Checks what serde cannot.
    ///
    /// # Errors
    /// Every problem found, each naming its field.
    pub fn check(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut err = |field: String, problem: &str| {
            errs.push(ConfigError {
                field,
                problem: problem.into(),
            });
        };
        if self.interval.is_zero() {
            err("interval".into(), "must be positive");
        }
        if self.scrape_timeout.is_zero() {
            err("scrapeTimeout".into(), "must be positive");
        }
        if self.report_every.is_zero() {
            err("reportEvery".into(), "must be positive");
        }
        if let Some(url) = &self.metrics_url
            && let Err(e) = crate::scrape::HttpUrl::parse(url)
        {
            err("metricsUrl".into(), &e.to_string());
        }
        let mut names = HashSet::new();
        for (i, r) in self.rules.iter().flatten().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if r.name.is_empty() {
                err(at("name"), "must not be empty");
            } else if !names.insert(r.name.clone()) {
                err(
                    at("name"),
                    &format!(
                        "duplicate rule name {:?}; give each rule a distinct name",
                        r.name
                    ),
                );
            }
            if r.severity == Severity::Healthy {
                err(at("severity"), "must be degraded or failed");
            }
            let finite = |v: f64| v.is_finite();
            match &r.kind {
                RuleKind::ModuleStatus { in_, not_in, .. } => {
                    if in_.is_some() == not_in.is_some() {
                        err(at("in"), "give exactly one of in and notIn");
                    }
                }
                RuleKind::Restarts { window, .. } => {
                    if window.is_zero() {
                        err(at("window"), "must be positive");
                    }
                }
                RuleKind::MessageRate { above, below, .. } => {
                    if above.is_none() && below.is_none() {
                        err(at("above"), "give above or below");
                    }
                    if above.is_some_and(|v| !finite(v)) || below.is_some_and(|v| !finite(v)) {
                        err(at("above"), "must be a finite number");
                    }
                }
                RuleKind::DeadLetters { rate_per_min_above } => {
                    if !finite(*rate_per_min_above) || *rate_per_min_above < 0.0 {
                        err(at("ratePerMinAbove"), "must be a non-negative number");
                    }
                }
                RuleKind::Cpu { above_percent } | RuleKind::Memory { above_percent } => {
                    if !(0.0..=100.0).contains(above_percent) {
                        err(at("abovePercent"), "must be between 0 and 100");
                    }
                }
                RuleKind::Disk { free_below_percent } => {
                    if !(0.0..=100.0).contains(free_below_percent) {
                        err(at("freeBelowPercent"), "must be between 0 and 100");
                    }
                }
                RuleKind::Metric {
                    metric,
                    above,
                    below,
                    equals,
                    not_equals,
                    absent,
                    ..
                } => {
                    if metric.is_empty() {
                        err(at("metric"), "must not be empty");
                    }
                    let given = [above, below, equals, not_equals];
                    if !absent && given.iter().all(|v| v.is_none()) {
                        err(
                            at("above"),
                            "give above, below, equals, notEquals or absent",
                        );
                    }
                    if given.iter().any(|v| v.is_some_and(|v| !finite(v))) {
                        err(at("above"), "thresholds must be finite numbers");
                    }
                }
                RuleKind::HeartbeatAge { .. }
                | RuleKind::QueueLength { .. }
                | RuleKind::QueueAge { .. }
                | RuleKind::Clock { .. }
                | RuleKind::Scrape {} => {}
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

impl edge_sdk::ModuleConfig for HealthConfig {
    fn validate(&self) -> Result<(), String> {
        self.check().map_err(|errs| {
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

fn rule(name: &str, for_: u64, clear_for: u64, severity: Severity, kind: RuleKind) -> Rule {
    Rule {
        name: name.into(),
        for_: Duration::from_secs(for_),
        clear_for: Duration::from_secs(clear_for),
        severity,
        kind,
    }
}

/// The rules used when the twin has none:
///
/// | name | kind | threshold | for / clearFor | severity |
/// |---|---|---|---|---|
/// | `module-down` | moduleStatus | notIn running, stopped, failed | 10s / 10s | degraded |
/// | `module-failed` | moduleStatus | in failed | 0s / 0s | failed |
/// | `module-restarts` | restarts | above 3 in 10m | 0s / 0s | degraded |
/// | `heartbeat` | heartbeatAge | above 90s | 0s / 10s | degraded |
/// | `queue-backlog` | queueLength | above 1000 | 30s / 30s | degraded |
/// | `queue-age` | queueAge | above 5m | 0s / 30s | degraded |
/// | `dead-letters` | deadLetters | above 1/min | 0s / 1m | degraded |
/// | `cpu` | cpu | above 90 % | 1m / 1m | degraded |
/// | `memory` | memory | above 90 % | 1m / 1m | degraded |
/// | `disk` | disk | free below 10 % | 0s / 1m | degraded |
/// | `clock` | clock | jump above 5s | 0s / 5m | degraded |
/// | `metrics` | scrape | — | 15s / 0s | degraded |
#[must_use]
pub fn default_rules() -> Vec<Rule> {
    use RuleKind as K;
    use Severity::{Degraded, Failed};
    let strs = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
    vec![
        rule(
            "module-down",
            10,
            10,
            Degraded,
            K::ModuleStatus {
                module: star(),
                in_: None,
                not_in: strs(&["running", "stopped", "failed"]),
            },
        ),
        rule(
            "module-failed",
            0,
            0,
            Failed,
            K::ModuleStatus {
                module: star(),
                in_: strs(&["failed"]),
                not_in: None,
            },
        ),
        rule(
            "module-restarts",
            0,
            0,
            Degraded,
            K::Restarts {
                module: star(),
                above: 3,
                window: default_restart_window(),
            },
        ),
        rule(
            "heartbeat",
            0,
            10,
            Degraded,
            K::HeartbeatAge {
                module: star(),
                above: Duration::from_secs(90),
            },
        ),
        rule(
            "queue-backlog",
            30,
            30,
            Degraded,
            K::QueueLength {
                endpoint: star(),
                above: 1000,
            },
        ),
        rule(
            "queue-age",
            0,
            30,
            Degraded,
            K::QueueAge {
                endpoint: star(),
                above: Duration::from_secs(300),
            },
        ),
        rule(
            "dead-letters",
            0,
            60,
            Degraded,
            K::DeadLetters {
                rate_per_min_above: 1.0,
            },
        ),
        rule(
            "cpu",
            60,
            60,
            Degraded,
            K::Cpu {
                above_percent: 90.0,
            },
        ),
        rule(
            "memory",
            60,
            60,
            Degraded,
            K::Memory {
                above_percent: 90.0,
            },
        ),
        rule(
            "disk",
            0,
            60,
            Degraded,
            K::Disk {
                free_below_percent: 10.0,
            },
        ),
        rule(
            "clock",
            0,
            300,
            Degraded,
            K::Clock {
                jump_above: Duration::from_secs(5),
            },
        ),
        rule("metrics", 15, 0, Degraded, K::Scrape {}),
    ]
}

/// `*` matches any run of characters; everything else matches itself.
#[must_use]
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}
