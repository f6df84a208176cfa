//! What the agent shows: `$edgeAgent` reported properties (Azure field names) and the rows of
//! `edgectl list`.

use crate::plan::RuntimeStatus;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Azure deployment status codes (`lastDesiredStatus.code`).
pub mod codes {
    /// The deployment was applied.
    pub const OK: u16 = 200;
    /// The deployment is malformed or the hub refused it.
    pub const CONFIG_FORMAT_ERROR: u16 = 400;
    /// No deployment yet / state unknown.
    pub const UNKNOWN: u16 = 406;
    /// Unsupported `schemaVersion`.
    pub const INVALID_SCHEMA_VERSION: u16 = 412;
    /// The deployment has no modules.
    pub const CONFIG_EMPTY: u16 = 417;
    /// Applying failed (not healthy in time, rolled back).
    pub const FAILED: u16 = 500;
}

/// One row of `edgectl list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleStatusReport {
    /// Module id.
    pub name: String,
    /// Runtime status.
    pub status: RuntimeStatus,
    /// Human-readable status detail.
    pub description: String,
    /// The module's version (from the deployment).
    pub version: String,
    /// Restarts since the count was last reset.
    pub restarts: u32,
    /// Last start, UTC RFC 3339.
    pub start_time: Option<String>,
    /// Time since the last start, while the process runs.
    #[serde(with = "humantime_serde")]
    pub uptime: Option<Duration>,
    /// The process id, while it runs.
    pub pid: Option<u32>,
    /// The last exit code (128 + signal for a signal).
    pub exit_code: Option<i32>,
}

/// The per-module part of `$edgeAgent` reported properties.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModuleReport {
    pub(crate) runtime_status: &'static str,
    pub(crate) status_description: String,
    pub(crate) exit_code: Option<i32>,
    pub(crate) last_start: Option<String>,
    pub(crate) last_exit: Option<String>,
    pub(crate) restart_count: u32,
    pub(crate) last_restart: Option<String>,
    pub(crate) version: String,
    pub(crate) desired_status: Option<&'static str>,
    pub(crate) restart_policy: Option<&'static str>,
    pub(crate) kind: Option<String>,
}

impl ModuleReport {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("runtimeStatus".into(), json!(self.runtime_status));
        m.insert("statusDescription".into(), json!(self.status_description));
        if let Some(c) = self.exit_code {
            m.insert("exitCode".into(), json!(c));
        }
        if let Some(t) = &self.last_start {
            m.insert("lastStartTimeUtc".into(), json!(t));
        }
        if let Some(t) = &self.last_exit {
            m.insert("lastExitTimeUtc".into(), json!(t));
        }
        m.insert("restartCount".into(), json!(self.restart_count));
        if let Some(t) = &self.last_restart {
            m.insert("lastRestartTimeUtc".into(), json!(t));
        }
        m.insert("version".into(), json!(self.version));
        if let Some(s) = self.desired_status {
            m.insert("status".into(), json!(s));
        }
        if let Some(p) = self.restart_policy {
            m.insert("restartPolicy".into(), json!(p));
        }
        if let Some(k) = &self.kind {
            m.insert("type".into(), json!(k));
        }
        Value::Object(m)
    }
}

/// The whole `$edgeAgent` reported document.
pub(crate) fn agent_reported(
    schema_version: Option<&str>,
    desired_version: u64,
    status: (u16, &str),
    modules: &[(String, ModuleReport)],
) -> Value {
    let mods: Map<String, Value> = modules
        .iter()
        .map(|(id, r)| (id.clone(), r.to_json()))
        .collect();
    json!({
        "schemaVersion": schema_version.unwrap_or("1.1"),
        "lastDesiredVersion": desired_version,
        "lastDesiredStatus": { "code": status.0, "description": status.1 },
        "runtime": { "type": "process" },
        "modules": mods,
    })
}
