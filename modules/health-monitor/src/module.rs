//! The module: runs a [`Monitor`] every `interval` and talks to the hub (outputs, reported
//! properties, the `status` method).

use crate::config::HealthConfig;
use crate::monitor::{CycleOutput, Monitor};
use edge_sdk::{Message, Module, ModuleContext, ModuleError, SendError, SysProp};
use serde_json::{Value, json};
use std::path::PathBuf;
use tokio::sync::watch;
use tokio::time::{MissedTickBehavior, interval};
use tracing::{info, warn};

/// Output of the periodic health summary.
pub const HEALTH_OUTPUT: &str = "health";
/// Output of the state-change events.
pub const EVENTS_OUTPUT: &str = "events";
/// The direct method returning the latest summary.
pub const STATUS_METHOD: &str = "status";

/// The `health-monitor` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthMonitor;

fn json_message(body: &Value, state: &str) -> Message {
    Message::new(body.to_string())
        .with_property("state", state)
        .with_system(SysProp::ContentType, "application/json")
        .with_system(SysProp::ContentEncoding, "utf-8")
}

/// Sends, dropping the message (with a warning) when the SDK's buffer is full; `false` when
/// the client is closing.
async fn send(ctx: &ModuleContext<HealthConfig>, output: &str, msg: Message) -> bool {
    match ctx.send(output, msg).await {
        Ok(()) => true,
        Err(SendError::Closed) => false,
        Err(e) => {
            warn!(output, error = %e, "Health message dropped.");
            true
        }
    }
}

async fn publish(ctx: &ModuleContext<HealthConfig>, out: &CycleOutput) -> bool {
    let state = out.state.as_str();
    for ev in &out.events {
        info!(event = %ev, "Health state changed.");
        if !send(ctx, EVENTS_OUTPUT, json_message(ev, state)).await {
            return false;
        }
    }
    if !send(ctx, HEALTH_OUTPUT, json_message(&out.health, state)).await {
        return false;
    }
    if let Some(patch) = &out.report
        && let Err(e) = ctx.report(patch).await
    {
        warn!(error = %e, "Could not report health.");
    }
    true
}

impl Module for HealthMonitor {
    type Config = HealthConfig;

    async fn run(self, ctx: ModuleContext<HealthConfig>) -> Result<(), ModuleError> {
        let (latest_tx, latest_rx) = watch::channel(json!({"state": "starting"}));
        ctx.on_method(STATUS_METHOD, move |_| {
            let v = latest_rx.borrow().clone();
            async move { Ok(v) }
        });
        let env_addr = std::env::var("EDGE_METRICS_ADDR").ok();
        let data_dir = ctx
            .client()
            .env()
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."));
        let mut changes = ctx.config_changes();
        let mut cfg = changes.borrow_and_update().clone();
        let mut monitor = Monitor::new(&cfg, env_addr.as_deref(), data_dir);
        match monitor.url() {
            Ok(u) => info!(url = %u, rules = cfg.effective_rules().len(), "Watching."),
            Err(e) => warn!(problem = e, "Metrics unavailable."),
        }
        let mut ticker = interval(cfg.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let cycles = ctx.metrics().counter("cycles_total");
        let events = ctx.metrics().counter("events_total");
        // 0 healthy, 1 degraded, 2 failed.
        let state = ctx.metrics().gauge("state");
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = ctx.stopped() => return Ok(()),
                r = changes.changed() => {
                    if r.is_err() {
                        ctx.stopped().await;
                        return Ok(());
                    }
                    cfg = changes.borrow_and_update().clone();
                    monitor.reconfigure(&cfg, env_addr.as_deref());
                    ticker = interval(cfg.interval);
                    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    info!(rules = cfg.effective_rules().len(), "Rules reloaded.");
                    continue;
                }
            }
            let out = tokio::select! {
                o = monitor.cycle() => o,
                () = ctx.stopped() => return Ok(()),
            };
            cycles.inc();
            events.add(out.events.len() as u64);
            state.set(match out.state.as_str() {
                "healthy" => 0.0,
                "degraded" => 1.0,
                _ => 2.0,
            });
            latest_tx.send_replace(out.health.clone());
            if !publish(&ctx, &out).await {
                return Ok(());
            }
        }
    }
}
