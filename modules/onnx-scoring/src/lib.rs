//! Module `onnx-scoring`: scores feature vectors with an ONNX model through ONNX Runtime (`ort`,
//! loaded at run time), verifies every model before it takes traffic, and swaps models while
//! running without losing or duplicating a message.
//!
//! # Twin (desired properties)
//! ```json
//! {
//!   "model": {
//!     "uri": "file:///opt/models/tep-pca/model.onnx",
//!     "sha256": "31b2dd…",                    // of model.onnx
//!     "version": "1.0.0",                     // must equal metadata.json's version
//!     "metadata": "/opt/models/tep-pca/metadata.json",   // optional, default beside the model
//!     "shadow": {"samples": 500, "maxDisagreement": 0.01} // optional: shadow new versions first
//!   },
//!   "batch": {"max": 64, "latency": "0ms"},  // optional, defaults shown
//!   "runtime": {"ortLibrary": "/path/libonnxruntime.so.1.31.1"},   // optional
//!   "topContributors": 3                      // optional
//! }
//! ```
//! A model is verified before it scores ([`model::load`]): its SHA-256 equals the twin's and the
//! metadata's, the versions agree, ONNX Runtime loads it, its input/output names, types and
//! shapes equal the metadata's, and the golden input gives the golden output. A model that
//! fails any check never scores; the one already scoring goes on, and the reported properties
//! say why the candidate was refused. A verified new version is promoted at once or, with
//! `model.shadow`, after scoring the same inputs as the live model for `samples` samples with
//! alarm flags disagreeing on at most `maxDisagreement` of them ([`swap`]).
//!
//! # Messages
//! Input `features`, JSON body:
//! `{"runId": "d01_te", "sample": 161, "ts": "…", "x": [52 numbers], "valid": true}`.
//! `x` is required (the model's width, finite numbers); `"valid": false` messages are
//! acknowledged and not scored; malformed ones are logged, acknowledged and not scored. Every
//! other field is carried through unchanged.
//!
//! Output `scores`, one message per scored sample, JSON body: the carried fields plus
//! `modelVersion`, `t2`, `q`, `t2Limit`, `qLimit`, `t2Alarm`, `qAlarm`, `alarm` and `top`
//! (`[{"variable": "XMEAS(9) Reactor temperature", "column": 9, "contribution": 12.3,
//! "share": 0.41}, …]`, the variables contributing most to Q). Application properties:
//! the input's properties, plus `alarm` = `true`/`false` and `modelVersion`.
//!
//! # Reported properties
//! `model.version`, `model.sha256`, `model.since` (RFC 3339), `model.reason` (initial model or
//! how it was promoted) and `model.candidate` (`{"status": "shadowing" | "promoted" |
//! "refused", "version", "reason" | "shadowed"/"disagreements"/"required"}`).
//!
//! # Batching
//! Messages that are already queued are scored together, up to `batch.max`; a message waits
//! at most `batch.latency` for others (default 0: a lone message is scored at once). The batch
//! is acknowledged after its scores are sent.
//!
//! # ONNX Runtime library
//! `ORT_DYLIB_PATH`, else twin `runtime.ortLibrary`, else [`runtime::VENV_LIBRARY`] under the
//! working directory (or an ancestor) or the source tree ([`runtime::locate`]).
//!
//! # Cost per sample
//! Scoring reuses its buffers ([`Scorer::score_into`] into a [`Scores`] kept by the loop):
//! the top contributors come from `k` vectorized maximum passes over each row (no sort, no
//! allocation), names are borrowed from the metadata, and the `scores` body is serialized
//! straight from the score ([`module::score_message`]). `benches/score.rs` compares it with
//! a bare `ort` run on the same model.
//!
//! Layout: `runtime` (library), `model` (load + verify), `scorer` (batch scoring), `swap`
//! (live/candidate state machine), `module` (the SDK module).

pub mod model;
pub mod module;
pub mod runtime;
pub mod scorer;
pub mod stats;
pub mod swap;

pub use model::{Metadata, ModelError, ModelSpec, load};
pub use module::{Config, OnnxScoring};
pub use scorer::{Contributor, RawOutputs, SampleScore, ScoreError, Scorer, Scores, Top};
pub use swap::{CandidateStatus, ShadowPolicy, Swap};
