//! The rules engine: a pure state machine over snapshots and instants.
//!
//! Each rule yields, per evaluation, the set of *subjects* (a module, an endpoint, `device`, a
//! metric series) for which its condition is true now. Each (rule, subject) pair is a
//! condition with flap suppression:
//!
//! - it becomes **active** only after being true at every evaluation for at least `for`
//!   (a single false evaluation restarts the wait);
//! - an active condition **clears** only after being false at every evaluation for at least
//!   `clearFor` (a single true evaluation restarts the wait).
//!
//! So a status toggling faster than `for` never fires, and an active condition toggling faster
//! than `clearFor` stays active: a flapping condition gives at most one transition each way.
//! Flapping *modules* (restarting over and over) are caught by the `restarts` rule.
//!
//! While the metrics cannot be read, conditions of rules that depend on them keep their state
//! (a scrape failure neither fires nor clears "module down"); the `scrape` rule reports it.
//!
//! The overall state is the worst active severity (`healthy` when none); a [`Transition`] is
//! produced exactly when it changes.

use crate::config::{Direction, Rule, RuleKind, Severity, glob_match};
use crate::snapshot::Snapshot;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// Why the state is not healthy: one active condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reason {
    /// The rule's name.
    pub rule: String,
    /// The rule's severity.
    pub severity: Severity,
    /// What it is about: a module id, an endpoint, `device`, a metric series.
    pub subject: String,
    /// Human-readable text, e.g. `historian-ingest is backoff`.
    pub message: String,
}

/// A change of the overall state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// The state before.
    pub from: Severity,
    /// The state now.
    pub to: Severity,
    /// The active reasons now.
    pub reasons: Vec<Reason>,
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The overall state.
    pub state: Severity,
    /// The active reasons, worst first.
    pub reasons: Vec<Reason>,
    /// The state change, if the state changed (at most one per evaluation).
    pub transitions: Vec<Transition>,
    /// Whether the set of active conditions changed (even when the state did not).
    pub reasons_changed: bool,
}

#[derive(Debug, Clone)]
struct Condition {
    pending_since: Option<Instant>,
    clear_since: Option<Instant>,
    active: bool,
    message: String,
}

/// Evaluates rules against snapshots.
///
/// # Invariants
/// - `conditions` holds only pairs whose rule exists in `rules`; an entry is either active or
///   pending (`pending_since` set).
/// - `state` is the worst severity among active conditions as of the last evaluation.
#[derive(Debug)]
pub struct Evaluator {
    rules: Vec<Rule>,
    conditions: BTreeMap<(String, String), Condition>,
    restarts: HashMap<String, VecDeque<(Instant, u64)>>,
    state: Severity,
    active_keys: Vec<(String, String)>,
}

impl Evaluator {
    /// An evaluator with these rules, starting healthy.
    #[must_use]
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            conditions: BTreeMap::new(),
            restarts: HashMap::new(),
            state: Severity::Healthy,
            active_keys: Vec::new(),
        }
    }

    /// Replaces the rules; conditions of rules that keep their name keep their state.
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        self.conditions
            .retain(|(name, _), _| rules.iter().any(|r| &r.name == name));
        self.rules = rules;
    }

    /// The rules in force.
    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The overall state after the last evaluation.
    #[must_use]
    pub fn state(&self) -> Severity {
        self.state
    }

    /// Evaluates every rule against `snapshot` at `now` (instants must not go backwards).
    pub fn evaluate(&mut self, snapshot: &Snapshot, now: Instant) -> Evaluation {
        let metrics_ok = snapshot.scrape_error.is_none();
        if metrics_ok {
            self.record_restarts(snapshot, now);
        }
        for rule in &self.rules {
            if !metrics_ok && depends_on_metrics(&rule.kind) {
                continue;
            }
            let raw: BTreeMap<String, String> = raw_conditions(rule, snapshot, &self.restarts, now)
                .into_iter()
                .collect();
            for (subject, message) in &raw {
                let c = self
                    .conditions
                    .entry((rule.name.clone(), subject.clone()))
                    .or_insert_with(|| Condition {
                        pending_since: None,
                        clear_since: None,
                        active: false,
                        message: String::new(),
                    });
                c.message.clone_from(message);
                c.clear_since = None;
                if !c.active {
                    let since = *c.pending_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= rule.for_ {
                        c.active = true;
                        c.pending_since = None;
                    }
                }
            }
            self.conditions.retain(|(name, subject), c| {
                if name != &rule.name || raw.contains_key(subject) {
                    return true;
                }
                if !c.active {
                    return false;
                }
                let since = *c.clear_since.get_or_insert(now);
                now.saturating_duration_since(since) < rule.clear_for
            });
        }
        let mut reasons: Vec<(usize, Reason)> = self
            .conditions
            .iter()
            .filter(|(_, c)| c.active)
            .filter_map(|((name, subject), c)| {
                let (i, rule) = self
                    .rules
                    .iter()
                    .enumerate()
                    .find(|(_, r)| &r.name == name)?;
                Some((
                    i,
                    Reason {
                        rule: name.clone(),
                        severity: rule.severity,
                        subject: subject.clone(),
                        message: c.message.clone(),
                    },
                ))
            })
            .collect();
        reasons.sort_by(|(ia, a), (ib, b)| {
            b.severity
                .cmp(&a.severity)
                .then(ia.cmp(ib))
                .then_with(|| a.subject.cmp(&b.subject))
        });
        let reasons: Vec<Reason> = reasons.into_iter().map(|(_, r)| r).collect();
        let state = reasons
            .iter()
            .map(|r| r.severity)
            .max()
            .unwrap_or(Severity::Healthy);
        let keys: Vec<(String, String)> = reasons
            .iter()
            .map(|r| (r.rule.clone(), r.subject.clone()))
            .collect();
        let reasons_changed = keys != self.active_keys;
        self.active_keys = keys;
        let mut transitions = Vec::new();
        if state != self.state {
            transitions.push(Transition {
                from: self.state,
                to: state,
                reasons: reasons.clone(),
            });
            self.state = state;
        }
        Evaluation {
            state,
            reasons,
            transitions,
            reasons_changed,
        }
    }

    fn record_restarts(&mut self, snapshot: &Snapshot, now: Instant) {
        let keep = self
            .rules
            .iter()
            .filter_map(|r| match &r.kind {
                RuleKind::Restarts { window, .. } => Some(*window),
                _ => None,
            })
            .max()
            .unwrap_or(Duration::ZERO);
        for (m, view) in &snapshot.modules {
            let Some(n) = view.restarts else { continue };
            let hist = self.restarts.entry(m.clone()).or_default();
            if hist.back().is_some_and(|(_, last)| *last > n) {
                hist.clear(); // counter reset (edged restarted)
            }
            hist.push_back((now, n));
            while hist
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > keep)
            {
                hist.pop_front();
            }
        }
        self.restarts.retain(|m, _| {
            snapshot
                .modules
                .get(m)
                .is_some_and(|v| v.restarts.is_some())
        });
    }
}

fn depends_on_metrics(kind: &RuleKind) -> bool {
    !matches!(
        kind,
        RuleKind::Cpu { .. }
            | RuleKind::Memory { .. }
            | RuleKind::Disk { .. }
            | RuleKind::Clock { .. }
            | RuleKind::Scrape {}
    )
}

fn secs(v: f64) -> String {
    format!("{v:.0}s")
}

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn threshold_message(
    value: f64,
    above: Option<f64>,
    below: Option<f64>,
    equals: Option<f64>,
    not_equals: Option<f64>,
) -> Option<String> {
    #[allow(clippy::float_cmp)]
    above
        .filter(|t| value > *t)
        .map(|t| format!("above {t}"))
        .or_else(|| below.filter(|t| value < *t).map(|t| format!("below {t}")))
        .or_else(|| {
            equals
                .filter(|t| value == *t)
                .map(|t| format!("equal to {t}"))
        })
        .or_else(|| {
            not_equals
                .filter(|t| value != *t)
                .map(|t| format!("not {t}"))
        })
}

fn series_name(name: &str, labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// The (subject, message) pairs for which `rule` holds now.
fn raw_conditions(
    rule: &Rule,
    snap: &Snapshot,
    restarts: &HashMap<String, VecDeque<(Instant, u64)>>,
    now: Instant,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let modules = |pat: &str| {
        snap.modules
            .iter()
            .filter(move |(m, _)| glob_match(pat, m))
            .collect::<Vec<_>>()
    };
    let queues = |pat: &str| {
        snap.queues
            .iter()
            .filter(move |(q, _)| glob_match(pat, q))
            .collect::<Vec<_>>()
    };
    let dev = &snap.device;
    match &rule.kind {
        RuleKind::ModuleStatus {
            module,
            in_,
            not_in,
        } => {
            for (m, v) in modules(module) {
                let Some(st) = &v.status else { continue };
                let hit = in_.as_ref().is_some_and(|s| s.contains(st))
                    || not_in.as_ref().is_some_and(|s| !s.contains(st));
                if hit {
                    out.push((m.clone(), format!("{m} is {st}")));
                }
            }
        }
        RuleKind::Restarts {
            module,
            above,
            window,
        } => {
            for (m, v) in modules(module) {
                let (Some(cur), Some(hist)) = (v.restarts, restarts.get(m)) else {
                    continue;
                };
                let base = hist
                    .iter()
                    .find(|(t, _)| now.saturating_duration_since(*t) <= *window)
                    .map_or(cur, |(_, n)| *n);
                let n = cur.saturating_sub(base);
                if n > *above {
                    out.push((
                        m.clone(),
                        format!("{m} restarted {n} times in {}", dur(*window)),
                    ));
                }
            }
        }
        RuleKind::HeartbeatAge { module, above } => {
            for (m, v) in modules(module) {
                if let Some(age) = v.heartbeat_age_seconds
                    && age > above.as_secs_f64()
                {
                    out.push((
                        m.clone(),
                        format!(
                            "{m}: no heartbeat for {} (above {})",
                            secs(age),
                            dur(*above)
                        ),
                    ));
                }
            }
        }
        RuleKind::MessageRate {
            module,
            direction,
            above,
            below,
        } => {
            for (m, v) in modules(module) {
                let (rate, verb) = match direction {
                    Direction::In => (v.in_per_sec, "receives"),
                    Direction::Out => (v.out_per_sec, "sends"),
                };
                let Some(rate) = rate else { continue };
                if let Some(t) = threshold_message(rate, *above, *below, None, None) {
                    out.push((m.clone(), format!("{m} {verb} {rate:.2} msg/s ({t})")));
                }
            }
        }
        RuleKind::QueueLength { endpoint, above } => {
            for (q, v) in queues(endpoint) {
                if let Some(n) = v.length.filter(|n| n > above) {
                    out.push((
                        q.clone(),
                        format!("queue {q} holds {n} messages (above {above})"),
                    ));
                }
            }
        }
        RuleKind::QueueAge { endpoint, above } => {
            for (q, v) in queues(endpoint) {
                if let Some(age) = v.oldest_age_seconds.filter(|a| *a > above.as_secs_f64()) {
                    out.push((
                        q.clone(),
                        format!(
                            "queue {q}: oldest message is {} old (above {})",
                            secs(age),
                            dur(*above)
                        ),
                    ));
                }
            }
        }
        RuleKind::DeadLetters { rate_per_min_above } => {
            if let Some(r) = snap.dead_letters.per_min.filter(|r| r > rate_per_min_above) {
                out.push((
                    "hub".into(),
                    format!("{r:.1} dead letters/min (above {rate_per_min_above})"),
                ));
            }
        }
        RuleKind::Cpu { above_percent } => {
            if let Some(v) = dev.cpu_percent.filter(|v| v > above_percent) {
                out.push((
                    "device".into(),
                    format!("cpu {v:.0}% (above {above_percent}%)"),
                ));
            }
        }
        RuleKind::Memory { above_percent } => {
            if let Some(v) = dev.memory_used_percent.filter(|v| v > above_percent) {
                out.push((
                    "device".into(),
                    format!("memory {v:.0}% used (above {above_percent}%)"),
                ));
            }
        }
        RuleKind::Disk { free_below_percent } => {
            if let Some(v) = dev.disk_free_percent.filter(|v| v < free_below_percent) {
                out.push((
                    "device".into(),
                    format!(
                        "disk of {}: {v:.1}% free (below {free_below_percent}%)",
                        dev.data_dir
                    ),
                ));
            }
        }
        RuleKind::Clock { jump_above } => {
            if let Some(v) = dev
                .clock_jump_seconds
                .filter(|v| *v > jump_above.as_secs_f64())
            {
                out.push((
                    "device".into(),
                    format!("wall clock jumped {v:.1}s (above {})", dur(*jump_above)),
                ));
            }
        }
        RuleKind::Scrape {} => {
            if let Some(e) = &snap.scrape_error {
                out.push(("metrics".into(), format!("metrics unavailable: {e}")));
            }
        }
        RuleKind::Metric {
            metric,
            labels,
            above,
            below,
            equals,
            not_equals,
            absent,
        } => {
            let mut any = false;
            for s in snap.metrics.named(metric) {
                let matches = labels
                    .iter()
                    .all(|(k, pat)| s.label(k).is_some_and(|v| glob_match(pat, v)));
                if !matches {
                    continue;
                }
                any = true;
                if let Some(t) = threshold_message(s.value, *above, *below, *equals, *not_equals) {
                    let name = series_name(metric, &s.labels);
                    out.push((name.clone(), format!("{name} = {} ({t})", s.value)));
                }
            }
            if *absent && !any {
                let name = series_name(metric, labels);
                out.push((name.clone(), format!("{name} is absent")));
            }
        }
    }
    out
}
