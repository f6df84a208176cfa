//! The writer: turns one result message into bounded, verified, audited writes.
//!
//! For each message: parse the body, map fields to nodes, gate (staleness, model version,
//! interlock), apply the setpoint rules, write the batch, read it back and compare, audit
//! every attempt. While disconnected the latest request per node is kept and written on
//! reconnect ([`Writer::flush_pending`]) if it is still fresh.

use crate::audit::{AuditLog, AuditRecord};
use crate::config::{DataType, Mapping, WriterConfig};
use crate::dcs::{DcsWriter, Value};
use crate::safety::{Decision, GateInput, SetpointGuard, gate};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A result message, as far as the writer cares.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The JSON body.
    pub body: serde_json::Value,
    /// The message id (may be empty).
    pub message_id: String,
}

/// Counters reported in the twin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Messages handled.
    pub messages: u64,
    /// Values written and verified.
    pub written: u64,
    /// Setpoints clamped to their limits.
    pub clamped: u64,
    /// Setpoints refused (limit violation).
    pub refused: u64,
    /// Writes shortened or skipped by the step or per-minute limit.
    pub rate_limited: u64,
    /// Requests within the deadband.
    pub deadband: u64,
    /// Messages blocked by the interlock.
    pub interlock_blocked: u64,
    /// Stale messages ignored.
    pub stale: u64,
    /// Messages from a model version not allowed.
    pub version_blocked: u64,
    /// Read-back mismatches (alarms).
    pub mismatches: u64,
    /// Writes the server refused or that failed in transport.
    pub failed: u64,
    /// Requests queued while disconnected.
    pub queued: u64,
    /// Message fields that could not be mapped.
    pub bad_fields: u64,
}

/// A pending request for one node (the latest while disconnected).
#[derive(Debug, Clone)]
struct Pending {
    mapping: usize,
    value: Value,
    produced: SystemTime,
    model_version: String,
    message_id: String,
}

/// The writer state.
///
/// # Invariants
/// `guards` has an entry per setpoint mapping once written; `pending` holds at most one
/// request per node.
#[derive(Debug)]
pub struct Writer {
    cfg: WriterConfig,
    audit: AuditLog,
    guards: HashMap<String, SetpointGuard>,
    pending: HashMap<String, Pending>,
    counters: Counters,
    last_alarm: Option<String>,
    /// Audit records of the message being handled, synced together when it is done.
    unsynced: Vec<AuditRecord>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Reads `ts`: RFC 3339 string or epoch milliseconds.
#[must_use]
pub fn parse_time(v: &serde_json::Value) -> Option<SystemTime> {
    match v {
        serde_json::Value::String(s) => humantime::parse_rfc3339_weak(s).ok(),
        serde_json::Value::Number(n) => {
            let ms = n.as_f64()?;
            (ms.is_finite() && ms >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(ms / 1000.0))
        }
        _ => None,
    }
}

/// Converts a JSON field to the mapped data type.
fn convert(v: &serde_json::Value, dt: DataType) -> Option<Value> {
    match dt {
        DataType::Double => v.as_f64().map(Value::Double),
        DataType::Boolean => v.as_bool().map(Value::Bool),
        DataType::String => Some(Value::String(match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
        DataType::DateTime => parse_time(v).map(Value::DateTime),
    }
}

fn same(a: &Value, b: &Value, tol: f64) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => (x - y).abs() <= tol,
        (Value::DateTime(x), Value::DateTime(y)) => {
            let d = x.duration_since(*y).unwrap_or_else(|e| e.duration());
            d < Duration::from_millis(1)
        }
        _ => a == b,
    }
}

impl Writer {
    /// A writer with its audit log.
    #[must_use]
    pub fn new(cfg: WriterConfig, audit: AuditLog) -> Self {
        Self {
            cfg,
            audit,
            guards: HashMap::new(),
            pending: HashMap::new(),
            counters: Counters::default(),
            last_alarm: None,
            unsynced: Vec::new(),
        }
    }

    /// Replaces the configuration (rate-limit history is kept per node).
    pub fn set_config(&mut self, cfg: WriterConfig) {
        self.cfg = cfg;
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &WriterConfig {
        &self.cfg
    }

    /// The counters.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The last read-back mismatch (an alarm), if any.
    #[must_use]
    pub fn last_alarm(&self) -> Option<&str> {
        self.last_alarm.as_deref()
    }

    /// How many requests wait for a reconnect.
    #[must_use]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The audit log.
    #[must_use]
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Queues an audit record; [`Self::sync_audit`] puts it on disk before the message that
    /// caused it is acknowledged.
    fn record(&mut self, r: AuditRecord) {
        tracing::info!(node = %r.node, outcome = %r.outcome, reason = %r.reason,
            requested = %r.requested, written = %r.written, "audit");
        self.unsynced.push(r);
    }

    /// Appends the queued audit records with one fsync.
    fn sync_audit(&mut self) {
        if let Err(e) = self.audit.append_all(&self.unsynced) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
        self.unsynced.clear();
    }

    #[allow(clippy::too_many_arguments)]
    fn audit_rec(
        &self,
        node: &str,
        old: Option<&Value>,
        requested: &Value,
        written: Option<&Value>,
        outcome: &str,
        reason: String,
        p: &Pending,
    ) -> AuditRecord {
        AuditRecord {
            time: now_rfc3339(),
            node: node.to_owned(),
            old: old.map_or(serde_json::Value::Null, Value::to_json),
            requested: requested.to_json(),
            written: written.map_or(serde_json::Value::Null, Value::to_json),
            outcome: outcome.to_owned(),
            reason,
            model_version: p.model_version.clone(),
            message_id: p.message_id.clone(),
        }
    }

    /// Handles one result message. Returns after its audit records are on disk.
    pub async fn handle<D: DcsWriter>(&mut self, dcs: &D, msg: &Incoming) {
        self.handle_unsynced(dcs, msg).await;
        self.sync_audit();
    }

    async fn handle_unsynced<D: DcsWriter>(&mut self, dcs: &D, msg: &Incoming) {
        self.counters.messages += 1;
        let model_version = msg
            .body
            .get("modelVersion")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let produced = msg
            .body
            .pointer(&self.cfg.timestamp_path)
            .and_then(parse_time);
        let mut requests = Vec::new();
        for (i, m) in self.cfg.mappings.iter().enumerate() {
            match msg
                .body
                .pointer(&m.path)
                .and_then(|v| convert(v, m.data_type))
            {
                Some(value) => requests.push(Pending {
                    mapping: i,
                    value,
                    produced: produced.unwrap_or(UNIX_EPOCH),
                    model_version: model_version.clone(),
                    message_id: msg.message_id.clone(),
                }),
                None => {
                    self.counters.bad_fields += 1;
                    tracing::warn!(path = %m.path, "field missing or of the wrong type");
                }
            }
        }
        if produced.is_none() {
            tracing::warn!(path = %self.cfg.timestamp_path, "message without a valid timestamp: treated as stale");
        }
        if !*dcs.connected().borrow() {
            for p in requests {
                let node = self.cfg.mappings[p.mapping].node.clone();
                let r = self.audit_rec(
                    &node,
                    None,
                    &p.value,
                    None,
                    "queued",
                    "disconnected: kept as latest".into(),
                    &p,
                );
                self.record(r);
                self.counters.queued += 1;
                self.pending.insert(node, p);
            }
            return;
        }
        self.apply(dcs, requests).await;
    }

    /// Writes what was kept while disconnected (only what is still fresh; the gate decides).
    pub async fn flush_pending<D: DcsWriter>(&mut self, dcs: &D) {
        if self.pending.is_empty() || !*dcs.connected().borrow() {
            return;
        }
        let mut reqs: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        reqs.sort_by_key(|p| p.mapping);
        tracing::info!(
            count = reqs.len(),
            "writing the values kept while disconnected"
        );
        self.apply(dcs, reqs).await;
        self.sync_audit();
    }

    #[allow(clippy::too_many_lines)]
    async fn apply<D: DcsWriter>(&mut self, dcs: &D, requests: Vec<Pending>) {
        if requests.is_empty() {
            return;
        }
        let interlock = *dcs.interlock().borrow();
        let now = SystemTime::now();
        // All requests of one batch share produced/model version.
        let first = &requests[0];
        let blocked = gate(&GateInput {
            interlock,
            produced: first.produced,
            now,
            max_age: self.cfg.max_age,
            model_version: &first.model_version,
            allowed_versions: &self.cfg.allowed_model_versions,
        });
        if let Err(b) = blocked {
            match b {
                crate::safety::Block::InterlockOff => self.counters.interlock_blocked += 1,
                crate::safety::Block::Stale { .. } => self.counters.stale += 1,
                crate::safety::Block::ModelVersion(_) => self.counters.version_blocked += 1,
            }
            for p in &requests {
                let node = self.cfg.mappings[p.mapping].node.clone();
                let r = self.audit_rec(&node, None, &p.value, None, "blocked", b.to_string(), p);
                self.record(r);
            }
            return;
        }
        let nodes: Vec<String> = requests
            .iter()
            .map(|p| self.cfg.mappings[p.mapping].node.clone())
            .collect();
        let old = match dcs.read(&nodes).await {
            Ok(v) => v,
            Err(e) => {
                self.requeue(requests, &e.to_string());
                return;
            }
        };
        let mono = Instant::now();
        // (request index, value to write, outcome, reason)
        let mut planned: Vec<(usize, Value, &'static str, String)> = Vec::new();
        for (i, p) in requests.iter().enumerate() {
            let m: &Mapping = &self.cfg.mappings[p.mapping];
            let node = m.node.clone();
            let Some(limits) = m.setpoint.clone() else {
                planned.push((i, p.value.clone(), "written", String::new()));
                continue;
            };
            if self.cfg.advisory_only {
                let r = self.audit_rec(
                    &node,
                    old[i].as_ref(),
                    &p.value,
                    None,
                    "skipped",
                    "advisory-only mode".into(),
                    p,
                );
                self.record(r);
                continue;
            }
            let (Some(req), Some(cur)) =
                (p.value.as_f64(), old[i].as_ref().and_then(Value::as_f64))
            else {
                self.counters.failed += 1;
                let r = self.audit_rec(
                    &node,
                    old[i].as_ref(),
                    &p.value,
                    None,
                    "failed",
                    "current value unreadable".into(),
                    p,
                );
                self.record(r);
                continue;
            };
            let guard = self.guards.entry(node.clone()).or_default();
            match guard.decide(&limits, cur, req, mono) {
                Decision::Write { value, notes } => {
                    let clamped = notes.iter().any(|n| n.starts_with("clamped"));
                    if clamped {
                        self.counters.clamped += 1;
                    }
                    if notes.iter().any(|n| n.contains("limited")) {
                        self.counters.rate_limited += 1;
                    }
                    let outcome = if clamped { "clamped" } else { "written" };
                    planned.push((i, Value::Double(value), outcome, notes.join("; ")));
                }
                Decision::Skip { reason, refused } => {
                    let outcome = if refused {
                        self.counters.refused += 1;
                        "refused"
                    } else {
                        if reason.starts_with("rate") {
                            self.counters.rate_limited += 1;
                        } else {
                            self.counters.deadband += 1;
                        }
                        "skipped"
                    };
                    let r =
                        self.audit_rec(&node, old[i].as_ref(), &p.value, None, outcome, reason, p);
                    self.record(r);
                }
            }
        }
        if planned.is_empty() {
            return;
        }
        let writes: Vec<(String, Value)> = planned
            .iter()
            .map(|(i, v, _, _)| (nodes[*i].clone(), v.clone()))
            .collect();
        let results = match dcs.write(&writes).await {
            Ok(r) => r,
            Err(e) => {
                let reqs = planned.iter().map(|(i, ..)| requests[*i].clone()).collect();
                self.requeue(reqs, &e.to_string());
                return;
            }
        };
        let written_nodes: Vec<String> = writes.iter().map(|(n, _)| n.clone()).collect();
        let readback = dcs.read(&written_nodes).await;
        for (k, (i, value, outcome, reason)) in planned.into_iter().enumerate() {
            let p = &requests[i];
            let node = nodes[i].clone();
            let status = results
                .get(k)
                .cloned()
                .unwrap_or_else(|| Err("no result".into()));
            if let Err(s) = status {
                self.counters.failed += 1;
                let r = self.audit_rec(
                    &node,
                    old[i].as_ref(),
                    &p.value,
                    None,
                    "failed",
                    format!("server: {s}"),
                    p,
                );
                self.record(r);
                continue;
            }
            if let (Some(cur), Some(new)) =
                (old[i].as_ref().and_then(Value::as_f64), value.as_f64())
                && self.cfg.mappings[p.mapping].setpoint.is_some()
            {
                self.guards
                    .entry(node.clone())
                    .or_default()
                    .record(new - cur, mono);
            }
            let back = match &readback {
                Ok(v) => v.get(k).cloned().flatten(),
                Err(_) => None,
            };
            match back {
                Some(b) if same(&b, &value, self.cfg.verify_tolerance) => {
                    self.counters.written += 1;
                    let r = self.audit_rec(
                        &node,
                        old[i].as_ref(),
                        &p.value,
                        Some(&value),
                        outcome,
                        reason,
                        p,
                    );
                    self.record(r);
                }
                other => {
                    self.counters.mismatches += 1;
                    let seen = other
                        .as_ref()
                        .map_or("nothing".to_owned(), |b| b.to_json().to_string());
                    let why = format!("read-back mismatch: wrote {}, read {seen}", value.to_json());
                    tracing::error!(node = %node, alarm = %why, "ALARM");
                    self.last_alarm = Some(format!("{node}: {why}"));
                    let r = self.audit_rec(
                        &node,
                        old[i].as_ref(),
                        &p.value,
                        Some(&value),
                        "mismatch",
                        why,
                        p,
                    );
                    self.record(r);
                }
            }
        }
    }

    fn requeue(&mut self, requests: Vec<Pending>, why: &str) {
        for p in requests {
            let node = self.cfg.mappings[p.mapping].node.clone();
            let r = self.audit_rec(
                &node,
                None,
                &p.value,
                None,
                "queued",
                format!("dcs unavailable ({why}): kept as latest"),
                &p,
            );
            self.record(r);
            self.counters.queued += 1;
            self.pending.insert(node, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::FakeDcs;
    use crate::safety::{OnViolation, SetpointLimits};

    fn writer(dir: &std::path::Path) -> Writer {
        let mut cfg = WriterConfig::new(
            "opc.tcp://x:1/",
            "ns=2;s=IL",
            vec![
                Mapping {
                    path: "/t2".into(),
                    node: "T2".into(),
                    data_type: DataType::Double,
                    setpoint: None,
                },
                Mapping {
                    path: "/sp".into(),
                    node: "SP".into(),
                    data_type: DataType::Double,
                    setpoint: Some(SetpointLimits {
                        low: 0.0,
                        high: 100.0,
                        on_violation: OnViolation::Refuse,
                        max_step: None,
                        max_change_per_minute: None,
                        deadband: 0.0,
                    }),
                },
            ],
        );
        cfg.allowed_model_versions = vec!["v1".into()];
        Writer::new(cfg, AuditLog::open(dir).expect("audit"))
    }

    fn msg(sp: f64, t2: f64) -> Incoming {
        Incoming {
            body: serde_json::json!({"ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "t2": t2, "sp": sp, "modelVersion": "v1"}),
            message_id: "m".into(),
        }
    }

    #[tokio::test]
    async fn disconnected_keeps_the_latest_per_node_and_flushes_on_reconnect() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = writer(dir.path());
        let dcs = FakeDcs::new();
        dcs.set("SP", Value::Double(10.0));
        dcs.set_connected(false);
        w.handle(&dcs, &msg(20.0, 1.0)).await;
        w.handle(&dcs, &msg(30.0, 2.0)).await;
        assert_eq!(w.pending_len(), 2);
        assert!(dcs.writes().is_empty());
        dcs.set_connected(true);
        dcs.set_interlock(true);
        w.flush_pending(&dcs).await;
        assert_eq!(dcs.get("SP"), Some(Value::Double(30.0)));
        assert_eq!(dcs.get("T2"), Some(Value::Double(2.0)));
        assert_eq!(dcs.writes().len(), 2, "only the latest per node");
    }

    #[tokio::test]
    async fn server_refusals_and_mismatches_are_counted_and_audited() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = writer(dir.path());
        let dcs = FakeDcs::new();
        dcs.set("SP", Value::Double(10.0));
        dcs.refuse_writes(Some("BadUserAccessDenied"));
        w.handle(&dcs, &msg(20.0, 1.0)).await;
        assert_eq!(w.counters().failed, 2);
        dcs.refuse_writes(None);
        dcs.alter_next_write(0.5);
        w.handle(&dcs, &msg(20.0, 1.0)).await;
        assert_eq!(w.counters().mismatches, 1);
        assert!(w.last_alarm().is_some());
        let outcomes: Vec<String> = w
            .audit()
            .recent(10)
            .expect("audit")
            .into_iter()
            .map(|r| r.outcome)
            .collect();
        assert_eq!(outcomes, ["failed", "failed", "mismatch", "written"]);
        // Out of limits with refuse: nothing written for SP.
        w.handle(&dcs, &msg(120.0, 1.0)).await;
        assert_eq!(w.counters().refused, 1);
    }

    #[test]
    fn times_parse_from_rfc3339_and_epoch_millis() {
        let t = parse_time(&serde_json::json!(1_700_000_000_000u64)).expect("ms");
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert!(parse_time(&serde_json::json!("2026-01-01T00:00:00Z")).is_some());
        assert!(parse_time(&serde_json::json!("yesterday")).is_none());
    }
}
