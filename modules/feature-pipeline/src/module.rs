//! The module: input `samples` → [`FeaturePipeline`] → output `features`.

use crate::config::PipelineConfig;
use crate::pipeline::{FeaturePipeline, FeatureVector, Pipeline, SampleIn};
use edge_sdk::{Message, Module, ModuleContext, ModuleError, SendError, SysProp};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::Path;
use tokio::time::Instant;
use tracing::{info, warn};

/// The input samples arrive on.
pub const INPUT: &str = "samples";
/// The output feature vectors leave on.
pub const OUTPUT: &str = "features";

/// The `feature-pipeline` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeaturePipelineModule;

/// Counters for the reported properties.
#[derive(Debug, Default)]
struct Counters {
    samples: u64,
    valid: u64,
    invalid: u64,
    bad_input: u64,
    last_reasons: VecDeque<String>,
    config_error: Option<String>,
}

impl Counters {
    fn report(&self, dimension: usize) -> Value {
        json!({"features": {
            "samplesIn": self.samples,
            "valid": self.valid,
            "invalid": self.invalid,
            "badInput": self.bad_input,
            "dimension": dimension,
            "lastReasons": self.last_reasons,
            "configError": self.config_error,
        }})
    }
}

/// The message for a feature vector: JSON body, properties `runId`, `sample`, `valid`.
#[must_use]
pub fn to_message(v: &FeatureVector) -> Message {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Message::new(body)
        .with_property("runId", v.run_id.clone())
        .with_property("sample", v.sample.to_string())
        .with_property("valid", v.valid.to_string())
        .with_system(SysProp::ContentType, "application/json")
        .with_system(SysProp::ContentEncoding, "utf-8")
}

/// Sends one message; while the hub is unreachable with a full buffer, waits and retries
/// (the input is not acknowledged meanwhile). `false` when stopping.
async fn send(ctx: &ModuleContext<PipelineConfig>, msg: Message) -> Result<bool, ModuleError> {
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
                    () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    () = ctx.stopped() => return Ok(false),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Module for FeaturePipelineModule {
    type Config = PipelineConfig;

    async fn run(self, ctx: ModuleContext<PipelineConfig>) -> Result<(), ModuleError> {
        let base = Path::new(".");
        let mut changes = ctx.config_changes();
        let first = changes.borrow_and_update().clone();
        let pipeline =
            Pipeline::build(first, base).map_err(|e| ModuleError::Config(e.to_string()))?;
        let mut pipeline = FeaturePipeline::new(pipeline);
        let mut counters = Counters::default();
        let m_samples = ctx.metrics().counter("samples_total");
        let m_invalid = ctx.metrics().counter("invalid_samples_total");
        let m_bad_input = ctx.metrics().counter("bad_input_total");
        let mut input = ctx.input(INPUT);
        let mut last_report = Instant::now();
        while let Some(d) = ctx.next(&mut input).await {
            // A new configuration applies from the next sample on.
            if changes.has_changed().unwrap_or(false) {
                let cfg = changes.borrow_and_update().clone();
                match pipeline.set_config(cfg, base) {
                    Ok(()) => {
                        info!("New pipeline configuration applies from the next sample.");
                        counters.config_error = None;
                    }
                    Err(e) => {
                        warn!(error = %e, "New pipeline configuration unusable; keeping the current one.");
                        counters.config_error = Some(e.to_string());
                    }
                }
            }
            match serde_json::from_slice::<SampleIn>(&d.message.body) {
                Ok(sample) => {
                    let v = pipeline.push(&sample);
                    counters.samples += 1;
                    m_samples.inc();
                    if v.valid {
                        counters.valid += 1;
                    } else {
                        counters.invalid += 1;
                        m_invalid.inc();
                        if counters.last_reasons.len() >= 10 {
                            counters.last_reasons.pop_front();
                        }
                        counters.last_reasons.push_back(format!(
                            "{}#{}: {}",
                            v.run_id,
                            v.sample,
                            v.reasons.join("; ")
                        ));
                    }
                    if !send(&ctx, to_message(&v)).await? {
                        break;
                    }
                }
                Err(e) => {
                    counters.bad_input += 1;
                    m_bad_input.inc();
                    warn!(error = %e, "Input is not a sample; dropped.");
                }
            }
            d.ack().await?;
            if last_report.elapsed() >= pipeline.active().config().report_every {
                if let Err(e) = ctx
                    .report(&counters.report(pipeline.active().dimension()))
                    .await
                {
                    warn!(error = %e, "Could not report counters.");
                }
                last_report = Instant::now();
            }
        }
        Ok(())
    }
}
