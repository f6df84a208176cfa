//! The module: drives a [`Replayer`] against the hub (pacing, back-pressure, reporting).

use crate::config::{IngestConfig, OpcUaSource, SourceConfig};
use crate::live::{LiveEvent, LiveSource};
use crate::pacing::due_after;
use crate::replay::{Event, Replayer};
use edge_sdk::{Module, ModuleContext, ModuleError, SendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// The output samples are sent on.
pub const OUTPUT: &str = "samples";

/// The `historian-ingest` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistorianIngest;

enum Outcome {
    /// A new configuration arrived: replay again with it.
    Restart,
    /// The module is stopping.
    Stop,
}

impl Module for HistorianIngest {
    type Config = IngestConfig;

    async fn run(self, ctx: ModuleContext<IngestConfig>) -> Result<(), ModuleError> {
        let mut changes = ctx.config_changes();
        loop {
            let cfg = changes.borrow_and_update().clone();
            let outcome = match &cfg.source {
                SourceConfig::Opcua(src) => live(&ctx, &cfg, src, &mut changes).await?,
                _ => replay(&ctx, &cfg, &mut changes).await?,
            };
            match outcome {
                Outcome::Restart => info!("Configuration changed; replay restarts."),
                Outcome::Stop => return Ok(()),
            }
        }
    }
}

async fn report(ctx: &ModuleContext<IngestConfig>, r: &Replayer) {
    if let Err(e) = ctx.report(&r.stats().report()).await {
        warn!(error = %e, "Could not report progress.");
    }
}

/// Sends one message, waiting while the SDK's buffer is full (back-pressure) and retrying while
/// the hub is unreachable with a full buffer.
async fn send(
    ctx: &ModuleContext<IngestConfig>,
    msg: edge_sdk::Message,
) -> Result<bool, ModuleError> {
    loop {
        let r = tokio::select! {
            r = ctx.send(OUTPUT, msg.clone()) => r,
            () = ctx.stopped() => return Ok(false),
        };
        match r {
            Ok(()) => return Ok(true),
            Err(SendError::BufferFull(n)) => {
                warn!(buffered = n, "Hub unreachable and buffer full; waiting.");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = ctx.stopped() => return Ok(false),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The `live` section of the reported properties.
fn live_report(
    src: &OpcUaSource,
    state: &str,
    sent: u64,
    dropped: u64,
    error: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({"live": {
        "state": state,
        "endpoint": src.endpoint,
        "samplesSent": sent,
        "dropped": dropped,
        "lastError": error,
    }})
}

/// Publishes the samples of a live OPC UA subscription until stopped or reconfigured.
async fn live(
    ctx: &ModuleContext<IngestConfig>,
    cfg: &IngestConfig,
    src: &OpcUaSource,
    changes: &mut watch::Receiver<Arc<IngestConfig>>,
) -> Result<Outcome, ModuleError> {
    let mut source = Some(LiveSource::start(src.clone()));
    let published = ctx.metrics().counter("samples_published_total");
    let mut state = "connecting";
    let mut sent = 0u64;
    let mut last_error: Option<String> = None;
    let mut report_tick = tokio::time::interval(cfg.report_every);
    report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            () = ctx.stopped() => return Ok(Outcome::Stop),
            r = changes.changed() => {
                if r.is_ok() {
                    return Ok(Outcome::Restart);
                }
                ctx.stopped().await;
                return Ok(Outcome::Stop);
            }
            _ = report_tick.tick() => None,
            ev = async {
                match source.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            } => match ev {
                Some(ev) => Some(ev),
                // The source ended (a refused node): idle until reconfigured or stopped.
                None => {
                    source = None;
                    None
                }
            },
        };
        let mut force_report = false;
        match event {
            None => force_report = true,
            Some(LiveEvent::Sample(s)) => {
                if !send(ctx, s.to_message()).await? {
                    return Ok(Outcome::Stop);
                }
                published.inc();
                sent += 1;
                if state != "subscribed" {
                    state = "subscribed";
                    force_report = true;
                }
            }
            Some(LiveEvent::Subscribed {
                publishing_interval,
            }) => {
                info!(endpoint = %src.endpoint, ?publishing_interval, "Subscribed.");
                state = "subscribed";
                force_report = true;
            }
            Some(LiveEvent::Disconnected { reason, retry_in }) => {
                warn!(endpoint = %src.endpoint, %reason, ?retry_in, "OPC UA server unreachable; retrying.");
                state = "disconnected";
                last_error = Some(reason);
                force_report = true;
            }
            Some(LiveEvent::Refused {
                field,
                node_id,
                status,
            }) => {
                let e = format!("{field}: node {node_id} refused by the server: {status}");
                warn!(error = %e, "OPC UA source refused; waiting for a new configuration.");
                state = "refused";
                last_error = Some(e);
                source = None;
                force_report = true;
            }
        }
        if force_report {
            let dropped = source.as_ref().map_or(0, LiveSource::dropped);
            let r = live_report(src, state, sent, dropped, last_error.as_deref());
            if let Err(e) = ctx.report(&r).await {
                warn!(error = %e, "Could not report progress.");
            }
        }
    }
}

async fn replay(
    ctx: &ModuleContext<IngestConfig>,
    cfg: &IngestConfig,
    changes: &mut watch::Receiver<Arc<IngestConfig>>,
) -> Result<Outcome, ModuleError> {
    let mut replayer = Replayer::new(cfg.clone());
    let published = ctx.metrics().counter("samples_published_total");
    let bad_rows = ctx.metrics().counter("bad_rows_total");
    let files_done = ctx.metrics().counter("files_replayed_total");
    report(ctx, &replayer).await;
    let mut last_report = Instant::now();
    // (run id, wall time of its first sample, simulated offset of its first sample)
    let mut anchor: Option<(Arc<str>, Instant, Duration)> = None;
    loop {
        if ctx.is_stopping() {
            return Ok(Outcome::Stop);
        }
        if changes.has_changed().unwrap_or(false) {
            return Ok(Outcome::Restart);
        }
        let mut force_report = false;
        match replayer.next_event(SystemTime::now()) {
            Event::Sample(s) => {
                let (first_wall, first_offset) = match &anchor {
                    Some((run, w, o)) if *run == s.run_id => (*w, *o),
                    _ => {
                        let now = Instant::now();
                        anchor = Some((s.run_id.clone(), now, s.offset));
                        (now, s.offset)
                    }
                };
                if let Some(d) = due_after(first_offset, s.offset, cfg.speed) {
                    tokio::select! {
                        () = tokio::time::sleep_until(first_wall + d) => {}
                        () = ctx.stopped() => return Ok(Outcome::Stop),
                        r = changes.changed() => if r.is_ok() { return Ok(Outcome::Restart) },
                    }
                }
                if !send(ctx, s.to_message()).await? {
                    return Ok(Outcome::Stop);
                }
                published.inc();
            }
            Event::Skipped(bad) => {
                bad_rows.inc();
                warn!(row = %bad, "Bad row skipped.");
            }
            Event::Stopped(bad) => {
                bad_rows.inc();
                warn!(row = %bad, "Bad row; replay stopped.");
                force_report = true;
            }
            Event::FileDone(path) => {
                files_done.inc();
                info!(file = %path.display(), "File replayed.");
                force_report = true;
            }
            Event::Finished => {
                report(ctx, &replayer).await;
                info!(
                    state = replayer.stats().state.as_str(),
                    "Replay finished; idle until stopped."
                );
                tokio::select! {
                    () = ctx.stopped() => return Ok(Outcome::Stop),
                    r = changes.changed() => {
                        if r.is_ok() {
                            return Ok(Outcome::Restart);
                        }
                        ctx.stopped().await;
                        return Ok(Outcome::Stop);
                    }
                }
            }
        }
        if force_report || last_report.elapsed() >= cfg.report_every {
            report(ctx, &replayer).await;
            last_report = Instant::now();
        }
    }
}
