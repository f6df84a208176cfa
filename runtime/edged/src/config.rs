//! edged's configuration: defaults, then an optional TOML/JSON file, then `EDGED_*` environment
//! variables (`EDGED_HUB__LISTEN=127.0.0.1:0` sets `hub.listen`), then command-line flags.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration. `edged --print-config` prints the effective one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgedConfig {
    /// The deployment manifest to run.
    pub deployment: PathBuf,
    /// Where edged keeps its state (store, twins, logs, history, keys, socket).
    pub data_dir: PathBuf,
    /// This device's id.
    pub device_id: String,
    /// The IoT Hub host name modules put in their SAS tokens (the audience).
    pub iothub_hostname: String,
    /// The host name modules connect to.
    pub gateway_hostname: String,
    /// Directories searched for module binaries given by bare name (edged's own directory is
    /// always searched last). `EDGED_MODULE_PATH` is a `:`-separated list.
    pub module_path: Vec<PathBuf>,
    /// How often the deployment file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Total time allowed for stopping every module on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The hub's module listeners.
    pub hub: HubSection,
    /// The workload API Azure's module SDKs sign their tokens with.
    pub workload: WorkloadSection,
    /// The Prometheus endpoint.
    pub metrics: MetricsSection,
    /// The agent (restart policy constants, grace periods, rollback window, log rotation).
    pub agent: edge_agent::AgentConfig,
    /// The upstream link (`[upstream]`, e.g. `EDGED_UPSTREAM__URL=mqtt://host:1883`); none
    /// means offline: `$upstream` messages wait in their queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<edge_upstream::UpstreamConfig>,
}

/// `[hub]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// Plain MQTT listener for local modules.
    pub listen: SocketAddr,
    /// TLS MQTT listener for modules on Azure's SDKs, which always connect to port 8883 of
    /// `gateway_hostname`. If it cannot be bound, edged logs an error and runs without it.
    pub tls_listen: SocketAddr,
    /// Serve the TLS listener at all.
    pub tls_enabled: bool,
    /// The Unix-socket listener for the modules edged starts (they get it as
    /// `EDGE_HUB_SOCKET` and prefer it to `listen`). Empty means `{data_dir}/hub.sock`. If it
    /// cannot be bound, edged logs an error and modules use `listen`.
    pub unix_socket: String,
    /// Serve the Unix-socket listener at all.
    pub unix_enabled: bool,
    /// Unacknowledged messages in flight per connection.
    pub max_inflight: usize,
    /// Largest message body accepted.
    pub max_message_bytes: usize,
    /// Default direct-method timeout.
    #[serde(with = "humantime_serde")]
    pub method_timeout: Duration,
    /// fsync every batch before acknowledging (turning this off loses durability).
    pub fsync: bool,
    /// Where messages that no route selects go, as a route sink (`$upstream` or
    /// `BrokeredEndpoint("/modules/<m>/inputs/<i>")`); empty: dropped and counted, as in Azure.
    pub unmatched: String,
}

/// `[workload]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSection {
    /// `unix:///abs/path.sock` or `http://ip:port` (port 0 picks one; for tests). Empty means
    /// `unix://{data_dir}/workload.sock`. Modules get it as `IOTEDGE_WORKLOADURI`.
    pub uri: String,
}

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of `/metrics`; Azure's edgeHub uses port 9600.
    pub listen: SocketAddr,
    /// Serve it at all.
    pub enabled: bool,
}

impl Default for EdgedConfig {
    fn default() -> Self {
        Self {
            deployment: PathBuf::from("deployment.json"),
            data_dir: PathBuf::from("/var/lib/edged"),
            device_id: "edge-device".into(),
            iothub_hostname: "edge.local".into(),
            gateway_hostname: "localhost".into(),
            module_path: Vec::new(),
            watch_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            hub: HubSection {
                listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
                tls_listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
                tls_enabled: true,
                unix_socket: String::new(),
                unix_enabled: true,
                max_inflight: 64,
                max_message_bytes: 262_144,
                method_timeout: Duration::from_secs(30),
                fsync: true,
                unmatched: String::new(),
            },
            workload: WorkloadSection { uri: String::new() },
            metrics: MetricsSection {
                listen: SocketAddr::from(([127, 0, 0, 1], 9600)),
                enabled: true,
            },
            agent: edge_agent::AgentConfig::default(),
            upstream: None,
        }
    }
}

impl EdgedConfig {
    /// Loads defaults ← file (if given) ← `EDGED_*` environment.
    ///
    /// # Errors
    /// When the file cannot be read or a value has the wrong type (the message names it).
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let defaults = config::Config::try_from(&Self::default())?;
        let mut b = config::Config::builder().add_source(defaults);
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).required(true));
        }
        b = b.add_source(
            config::Environment::with_prefix("EDGED")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(":")
                .with_list_parse_key("module_path"),
        );
        Ok(b.build()?.try_deserialize()?)
    }
}
