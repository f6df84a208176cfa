//! Module `opcua-writer`: writes model results (from `onnx-scoring`) to the DCS over OPC UA,
//! bounded, rate-limited, interlocked, verified and audited.
//!
//! Each incoming result (JSON: `runId, sample, ts, t2, q, t2Limit, qLimit, alarm,
//! contributors, modelVersion`) is mapped to nodes by the twin's `mappings` (JSON pointer →
//! node id, data type, and for setpoints the limits). Safety rules (see [`safety`]): nothing
//! is written while the DCS's remote-enable interlock is off (read by subscription), while the
//! result is stale, or when its model version is not allowed; advisory-only mode never writes
//! setpoints; setpoints are clamped or refused at their limits, step- and rate-limited, and
//! deadbanded. Every write is read back (a mismatch is an alarm) and every attempt is audited
//! in `EDGE_MODULE_DATA_DIR/audit.jsonl`.
//!
//! Layout: `config` (twin), `safety` (pure rules), `audit` (JSON-lines log), `dcs` (the
//! [`dcs::DcsWriter`] trait and a fake), `client` (the async-opcua implementation),
//! `engine` (the [`engine::Writer`]), `module` (the edge-sdk module, methods, reporting).

pub mod audit;
pub mod client;
pub mod config;
pub mod dcs;
pub mod engine;
pub mod module;
pub mod safety;
