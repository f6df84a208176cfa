//! The edge-sdk module: input loop, reconnect flushing, twin reporting, direct methods
//! `read` (current values of the mapped nodes and the interlock) and `audit` (recent records;
//! payload `{"count": N}`, default 50).

use crate::audit::{AuditLog, read_recent};
use crate::client::{ClientSettings, OpcuaDcs};
use crate::config::WriterConfig;
use crate::dcs::DcsWriter;
use crate::engine::{Incoming, Writer};
use edge_sdk::{MethodError, Module, ModuleContext, ModuleError, SysProp};
use serde_json::{Value as Json, json};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Mutex;

/// The module.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterModule;

/// The reported-properties patch for the current state.
#[must_use]
pub fn status_report(writer: &Writer, dcs: &OpcuaDcs) -> Json {
    let connected = *dcs.connected().borrow();
    let interlock = *dcs.interlock().borrow();
    let connects = dcs.connects();
    json!({
        "connection": {
            "state": if connected { "connected" } else { "disconnected" },
            "lastError": dcs.last_error(),
            "endpoint": writer.config().endpoint,
            "securityPolicy": writer.config().security_policy,
            "securityMode": writer.config().security_mode,
            "sessions": connects,
        },
        "interlock": interlock,
        "advisoryOnly": writer.config().advisory_only,
        "pending": writer.pending_len(),
        "counters": writer.counters(),
        "lastAlarm": writer.last_alarm(),
    })
}

/// A metric and the counter it mirrors.
type Mirrored = (edge_sdk::Counter, fn(&crate::engine::Counters) -> u64);

/// The writer's series on edged's `/metrics` (`edge_module_…{module="opcua-writer"}`),
/// mirrored from [`crate::engine::Counters`].
struct WriterMetrics {
    counters: [Mirrored; 13],
    connected: edge_sdk::Gauge,
    interlock: edge_sdk::Gauge,
    pending: edge_sdk::Gauge,
}

impl WriterMetrics {
    fn new(m: &edge_sdk::Metrics) -> Self {
        use crate::engine::Counters as C;
        let c = |name: &str| m.counter(name);
        Self {
            counters: [
                (c("messages_total"), |c: &C| c.messages),
                (c("writes_total"), |c: &C| c.written),
                (c("writes_clamped_total"), |c: &C| c.clamped),
                (c("writes_refused_total"), |c: &C| c.refused),
                (c("writes_rate_limited_total"), |c: &C| c.rate_limited),
                (c("writes_deadband_total"), |c: &C| c.deadband),
                (c("interlock_blocked_total"), |c: &C| c.interlock_blocked),
                (c("stale_total"), |c: &C| c.stale),
                (c("version_blocked_total"), |c: &C| c.version_blocked),
                (c("verify_failures_total"), |c: &C| c.mismatches),
                (c("writes_failed_total"), |c: &C| c.failed),
                (c("queued_total"), |c: &C| c.queued),
                (c("bad_fields_total"), |c: &C| c.bad_fields),
            ],
            connected: m.gauge("dcs_connected"),
            interlock: m.gauge("interlock_enabled"),
            pending: m.gauge("pending_values"),
        }
    }

    fn mirror(&self, w: &Writer) {
        let c = w.counters();
        for (counter, get) in &self.counters {
            counter.advance_to(get(c));
        }
        self.pending.set(w.pending_len() as f64);
    }

    fn set_state(&self, connected: bool, interlock: Option<bool>) {
        self.connected.set(f64::from(u8::from(connected)));
        self.interlock
            .set(f64::from(u8::from(interlock == Some(true))));
    }
}

/// Parses an input message into what the writer needs.
#[must_use]
pub fn incoming(msg: &edge_sdk::Message) -> Option<Incoming> {
    let body: Json = serde_json::from_slice(&msg.body).ok()?;
    Some(Incoming {
        body,
        message_id: msg
            .system
            .get(SysProp::MessageId)
            .unwrap_or_default()
            .to_owned(),
    })
}

/// Reads the current values of the mapped nodes and the interlock, as JSON.
///
/// # Errors
/// The DCS error as text.
pub async fn read_mapped<D: DcsWriter>(dcs: &D, cfg: &WriterConfig) -> Result<Json, String> {
    let mut nodes: Vec<String> = cfg.mappings.iter().map(|m| m.node.clone()).collect();
    nodes.push(cfg.interlock_node.clone());
    let values = dcs.read(&nodes).await.map_err(|e| e.to_string())?;
    let mut out = serde_json::Map::new();
    for (n, v) in nodes.into_iter().zip(values) {
        out.insert(n, v.map_or(Json::Null, |v| v.to_json()));
    }
    Ok(Json::Object(out))
}

impl Module for WriterModule {
    type Config = WriterConfig;

    async fn run(self, ctx: ModuleContext<WriterConfig>) -> Result<(), ModuleError> {
        let cfg = ctx.config();
        let data_dir = ctx
            .client()
            .env()
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("opcua-writer-data"));
        let audit = AuditLog::open(&data_dir).map_err(ModuleError::other)?;
        let audit_path = audit.path().to_owned();
        let dcs = Arc::new(OpcuaDcs::start(ClientSettings::from_config(
            &cfg, &data_dir,
        )));
        let writer = Arc::new(Mutex::new(Writer::new((*cfg).clone(), audit)));

        ctx.on_method("audit", move |payload| {
            let path = audit_path.clone();
            async move {
                let n = payload.get("count").and_then(Json::as_u64).unwrap_or(50);
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let recs = tokio::task::spawn_blocking(move || read_recent(&path, n))
                    .await
                    .map_err(|e| MethodError::internal(e.to_string()))?
                    .map_err(|e| MethodError::internal(format!("{e}: {}", e.source)))?;
                Ok(json!({ "records": recs }))
            }
        });
        {
            let dcs = dcs.clone();
            let writer = writer.clone();
            ctx.on_method("read", move |_payload| {
                let dcs = dcs.clone();
                let writer = writer.clone();
                async move {
                    let cfg = writer.lock().await.config().clone();
                    read_mapped(&*dcs, &cfg)
                        .await
                        .map_err(MethodError::internal)
                }
            });
        }

        let metrics = WriterMetrics::new(ctx.metrics());
        let mut input = ctx.input(&cfg.input);
        let mut connected = dcs.connected();
        let mut interlock = dcs.interlock();
        let mut config_rx = ctx.config_changes();
        let mut report = tokio::time::interval(cfg.report_interval);
        loop {
            tokio::select! {
                d = ctx.next(&mut input) => {
                    let Some(d) = d else { break };
                    match incoming(&d.message) {
                        Some(m) => {
                            let mut w = writer.lock().await;
                            w.handle(&*dcs, &m).await;
                            metrics.mirror(&w);
                        }
                        None => tracing::warn!("input message is not JSON; ignored"),
                    }
                    d.ack().await?;
                }
                r = connected.changed() => {
                    if r.is_err() { break; }
                    let up = *connected.borrow_and_update();
                    tracing::info!(connected = up, "DCS connection state");
                    report.reset_immediately();
                }
                r = interlock.changed() => {
                    if r.is_err() { break; }
                    let _ = interlock.borrow_and_update();
                    // Values kept while disconnected go out once the interlock is known again.
                    writer.lock().await.flush_pending(&*dcs).await;
                    report.reset_immediately();
                }
                r = config_rx.changed() => {
                    if r.is_err() { break; }
                    let new = (**config_rx.borrow_and_update()).clone();
                    let mut w = writer.lock().await;
                    if new.endpoint != w.config().endpoint || new.security_mode != w.config().security_mode {
                        tracing::warn!("connection settings changed: they apply at the next module restart");
                    }
                    w.set_config(new);
                }
                _ = report.tick() => {
                    let patch = {
                        let w = writer.lock().await;
                        metrics.mirror(&w);
                        metrics.set_state(*dcs.connected().borrow(), *dcs.interlock().borrow());
                        status_report(&w, &dcs)
                    };
                    if let Err(e) = ctx.report(&patch).await {
                        tracing::warn!(error = %e, "cannot report status");
                    }
                }
            }
        }
        dcs.stop();
        Ok(())
    }
}
