//! `feature-pipeline`: turns raw samples (from `historian-ingest`) into the feature vectors a
//! model expects: tag selection and order, range checks, hold-last for missing values, moving
//! averages, autoscaling and lagged copies for dynamic PCA. Built on `ndarray`.
//!
//! # Configuration (the module twin's desired properties)
//!
//! ```json
//! {
//!   "tags": ["XMEAS(1)", "XMEAS(2)", "…", "XMV(11)"],
//!   "scaling": {"fromMetadata": "models/tep-pca/metadata.json"},
//!   "window": 0,
//!   "windows": {"XMEAS(9)": 5},
//!   "lags": 2,
//!   "ranges": {"XMEAS(7)": {"min": 2600, "max": 3000}},
//!   "rangeAction": "invalid",
//!   "holdSamples": 3,
//!   "reportEvery": "10s"
//! }
//! ```
//!
//! - `tags` (required): the model's inputs, in its order.
//! - `scaling` (default none; the TEP ONNX model scales inside its graph): either
//!   `{"mean": [...], "sd": [...]}` (one per tag, sd > 0) or `{"fromMetadata": path}` naming a
//!   JSON file with `mean` and `sd` arrays (and, if present, `tags`, which must equal ours).
//!   Relative paths are resolved against the module's working directory.
//! - `window` / `windows`: moving average over W samples for every tag / per tag (0 or 1 = off).
//! - `lags`: L lagged copies; the vector is `[v(t), v(t-1), …, v(t-L)]`, `tags × (L+1)` long.
//! - `ranges`: `{tag: {"min", "max"}}` on raw values; `rangeAction` `invalid` (default: the
//!   vector is invalid, with a reason) or `clamp`.
//! - `holdSamples`: a missing value (tag absent, `null` or NaN) is replaced by the last good
//!   one for up to this many consecutive samples; after that the vector is invalid.
//!
//! Per tag, in order: missing/hold → range check → moving window → scaling. The vector is
//! invalid while the lag history or a window is filling, when any sample in the lag history
//! was invalid, or when this sample has a missing or out-of-range value. A sample of a new
//! `runId` starts from empty history. A new configuration applies between two samples (never
//! mid-vector) and starts from empty history; one that cannot be built (e.g. unreadable
//! metadata) is reported under `features.configError` and the current one stays.
//!
//! # Messages
//!
//! Input `samples`: `{"runId", "sample", "ts", "values": {tag: number|null}}` (other fields
//! ignored). Output `features` (`application/json`, `utf-8`; properties `runId`, `sample`,
//! `valid`):
//!
//! ```json
//! {"runId": "d01_te", "sample": 161, "ts": "2024-01-01T08:03:00.000Z", "x": [0.25, …], "valid": true}
//! {"runId": "d01_te", "sample": 1, "ts": "…", "x": [...], "valid": false, "reasons": ["warming up: lag history 1/3"]}
//! ```
//!
//! Reported properties: `{"features": {"samplesIn", "valid", "invalid", "badInput",
//! "dimension", "lastReasons", "configError"}}` every `reportEvery`.
//!
//! # Layout
//!
//! - `config`: [`PipelineConfig`], validation and scaling resolution.
//! - `pipeline`: [`Pipeline`] (`push(&SampleIn) -> FeatureVector`) and [`FeaturePipeline`]
//!   (config swap between samples).
//! - `module`: [`FeaturePipelineModule`], the thin SDK wrapper.

mod config;
mod module;
mod pipeline;

pub use config::{
    ConfigError, MAX_LAGS, MAX_WINDOW, PipelineConfig, RangeAction, RangeCheck, Scaling,
    ScalingConfig,
};
pub use module::{FeaturePipelineModule, INPUT, OUTPUT, to_message};
pub use pipeline::{FeaturePipeline, FeatureVector, Pipeline, SampleIn, TagValues};

#[cfg(test)]
mod tests;
