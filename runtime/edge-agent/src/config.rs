//! Agent configuration: the tunable constants ([`AgentConfig`], serde, defaults = Azure's
//! values) and the per-device setup edged passes in ([`AgentSetup`]).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Timing, restart and log constants. `Default` gives Azure IoT Edge's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Between SIGTERM and SIGKILL when stopping one module.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// Upper bound for stopping every module at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Back-off unit: before restart n the agent waits `min(unit * 2^n, backoff_max)`.
    #[serde(with = "humantime_serde")]
    pub backoff_unit: Duration,
    /// Back-off cap.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// After this many restarts a module that exits again is `failed`.
    pub max_restarts: u32,
    /// A module running this long has its restart count reset.
    #[serde(with = "humantime_serde")]
    pub stable_after: Duration,
    /// An `on-unhealthy` module without a heartbeat for this long is restarted.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// How often heartbeats are polled (only when the hub delivers heartbeats).
    #[serde(with = "humantime_serde")]
    pub heartbeat_poll: Duration,
    /// A new deployment that is not healthy within this window is rolled back.
    #[serde(with = "humantime_serde")]
    pub rollback_window: Duration,
    /// A module counts as up for deployment health once it has run this long.
    #[serde(with = "humantime_serde")]
    pub healthy_after: Duration,
    /// A module log file is rotated before it grows past this size.
    pub log_max_bytes: u64,
    /// Rotated log files kept per module (`<id>.log.1` … `<id>.log.N`).
    pub log_keep: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            stop_grace: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(60),
            backoff_unit: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            max_restarts: 20,
            stable_after: Duration::from_secs(600),
            heartbeat_timeout: Duration::from_secs(30),
            heartbeat_poll: Duration::from_secs(1),
            rollback_window: Duration::from_secs(60),
            healthy_after: Duration::from_secs(10),
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 3,
        }
    }
}

impl AgentConfig {
    /// The wait before restart `n` (0-based): `min(unit * 2^n, max)`.
    #[must_use]
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.backoff_unit
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Where the agent keeps its files and what it tells modules about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSetup {
    /// Root of the agent's files: `history.jsonl`, `last-good.json`, `keys/`, `logs/`, `modules/`.
    pub data_dir: PathBuf,
    /// `IOTEDGE_DEVICEID`.
    pub device_id: String,
    /// `IOTEDGE_IOTHUBHOSTNAME`.
    pub iothub_hostname: String,
    /// `IOTEDGE_GATEWAYHOSTNAME`.
    pub gateway_hostname: String,
    /// `EDGE_HUB_ADDR`: `host:port` of the hub's plain MQTT listener.
    pub hub_addr: String,
    /// `EDGE_HUB_SOCKET`: the hub's Unix-socket listener, which the module SDK prefers when
    /// set. `None`: modules get no such variable and connect over TCP.
    pub hub_socket: Option<PathBuf>,
    /// `IOTEDGE_WORKLOADURI`: the workload API Azure's SDKs sign tokens with
    /// (`unix:///path/workload.sock` or `http://host:port`).
    pub workload_uri: String,
    /// Relative module paths with a `/` are resolved against this directory.
    pub manifest_dir: PathBuf,
    /// Bare module binary names are looked up in these directories, in order.
    pub module_path: Vec<PathBuf>,
    /// Variables every module gets (e.g. `EDGE_METRICS_ADDR`, `RUST_LOG`); a module's own
    /// `env` entries override them, and the identity variables override both.
    pub extra_env: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_backoff_and_humantime_config() {
        let c = AgentConfig::default();
        let secs: Vec<u64> = (0..7).map(|n| c.backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(c.backoff(200), Duration::from_secs(300));
        let parsed: AgentConfig =
            serde_json::from_str(r#"{"backoff_unit": "20ms", "max_restarts": 3}"#).unwrap();
        assert_eq!(parsed.backoff_unit, Duration::from_millis(20));
        assert_eq!(parsed.max_restarts, 3);
        assert_eq!(parsed.stop_grace, Duration::from_secs(10));
        assert!(serde_json::from_str::<AgentConfig>(r#"{"backof_unit": "1s"}"#).is_err());
    }
}
