//! The module: drives a [`Replayer`] against the hub (pacing, back-pressure, reporting).

use crate::config::IngestConfig;
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
            match replay(&ctx, &cfg, &mut changes).await? {
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

async fn replay(
    ctx: &ModuleContext<IngestConfig>,
    cfg: &IngestConfig,
    changes: &mut watch::Receiver<Arc<IngestConfig>>,
) -> Result<Outcome, ModuleError> {
    let mut replayer = Replayer::new(cfg.clone());
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
            }
            Event::Skipped(bad) => warn!(row = %bad, "Bad row skipped."),
            Event::Stopped(bad) => {
                warn!(row = %bad, "Bad row; replay stopped.");
                force_report = true;
            }
            Event::FileDone(path) => {
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
