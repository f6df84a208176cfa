//! The module's configuration (its twin's desired properties).
//!
//! ```json
//! {
//!   "endpoint": "opc.tcp://127.0.0.1:4840/",
//!   "securityPolicy": "None", "securityMode": "None",
//!   "interlockNode": "ns=2;s=Interlock.RemoteEnable",
//!   "maxAge": "30s", "allowedModelVersions": ["pca-v1"], "advisoryOnly": false,
//!   "mappings": [
//!     {"path": "/t2", "node": "ns=2;s=Advisory.T2"},
//!     {"path": "/sp", "node": "ns=2;s=TEP.XMV(10).SP",
//!      "setpoint": {"low": 0, "high": 100, "onViolation": "clamp",
//!                   "maxStep": 2, "maxChangePerMinute": 5, "deadband": 0.05}}
//!   ]
//! }
//! ```

use crate::safety::SetpointLimits;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The OPC UA type a mapped value is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum DataType {
    /// Double (numbers).
    #[default]
    Double,
    /// Boolean.
    Boolean,
    /// String (non-string JSON is written as its JSON text).
    String,
    /// DateTime (from an RFC 3339 string or epoch milliseconds).
    DateTime,
}

/// One message field mapped to one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mapping {
    /// JSON pointer into the message body (e.g. `/t2`).
    pub path: String,
    /// The node id (`ns=2;s=Advisory.T2`).
    pub node: String,
    /// The data type of the node.
    #[serde(default)]
    pub data_type: DataType,
    /// Present for setpoints (closed loop): their limits. Absent = advisory node.
    #[serde(default)]
    pub setpoint: Option<SetpointLimits>,
}

/// The module's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WriterConfig {
    /// The DCS endpoint URL.
    pub endpoint: String,
    /// `None` or `Basic256Sha256` (any policy async-opcua knows by its name).
    #[serde(default = "none")]
    pub security_policy: String,
    /// `None`, `Sign` or `SignAndEncrypt`.
    #[serde(default = "none")]
    pub security_mode: String,
    /// User name (with `password`); anonymous when absent.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`.
    #[serde(default)]
    pub password: Option<String>,
    /// PKI directory for the client certificate (default: `EDGE_MODULE_DATA_DIR/pki`).
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// Accept a server certificate not yet in `pki/trusted` (demo default: true).
    #[serde(default = "yes")]
    pub trust_server_certs: bool,
    /// The remote-enable interlock node (Boolean), read by subscription.
    pub interlock_node: String,
    /// Results older than this are ignored.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// JSON pointer of the time a result's age is measured from (RFC 3339 or epoch ms).
    /// `/ts` is the sample's plant time; a replay of historical data (simulated plant time)
    /// uses `/ingestedAt`, the wall-clock time the historian read the sample.
    #[serde(default = "default_timestamp_path")]
    pub timestamp_path: String,
    /// Model versions allowed to write (`"*"` = any).
    #[serde(default)]
    pub allowed_model_versions: Vec<String>,
    /// Write only advisory nodes, never setpoints.
    #[serde(default)]
    pub advisory_only: bool,
    /// First reconnect delay.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Largest reconnect delay.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Largest difference between written and read-back numbers that still verifies.
    #[serde(default = "default_tolerance")]
    pub verify_tolerance: f64,
    /// The input the results arrive on.
    #[serde(default = "default_input")]
    pub input: String,
    /// How often the counters are reported to the twin.
    #[serde(default = "default_report", with = "humantime_serde")]
    pub report_interval: Duration,
    /// The field-to-node mappings.
    pub mappings: Vec<Mapping>,
}

fn none() -> String {
    "None".into()
}
fn yes() -> bool {
    true
}
fn default_timestamp_path() -> String {
    "/ts".to_owned()
}
fn default_max_age() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(10)
}
fn default_tolerance() -> f64 {
    1e-6
}
fn default_input() -> String {
    "results".into()
}
fn default_report() -> Duration {
    Duration::from_secs(10)
}

impl WriterConfig {
    /// A config with defaults for everything but the endpoint, interlock and mappings.
    #[must_use]
    pub fn new(
        endpoint: impl Into<String>,
        interlock_node: impl Into<String>,
        mappings: Vec<Mapping>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            security_policy: none(),
            security_mode: none(),
            username: None,
            password: None,
            pki_dir: None,
            trust_server_certs: true,
            interlock_node: interlock_node.into(),
            max_age: default_max_age(),
            timestamp_path: default_timestamp_path(),
            allowed_model_versions: vec!["*".into()],
            advisory_only: false,
            reconnect_initial: default_retry_initial(),
            reconnect_max: default_retry_max(),
            verify_tolerance: default_tolerance(),
            input: default_input(),
            report_interval: default_report(),
            mappings,
        }
    }

    /// Checks what serde cannot.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.timestamp_path.starts_with('/') {
            return Err(format!(
                "timestampPath: `{}` is not a JSON pointer (it must start with `/`)",
                self.timestamp_path
            ));
        }
        if !self.endpoint.starts_with("opc.tcp://") {
            return Err("endpoint: must start with opc.tcp://".into());
        }
        if self
            .security_policy
            .parse::<opcua::crypto::SecurityPolicy>()
            .map_or(true, |p| p == opcua::crypto::SecurityPolicy::Unknown)
        {
            return Err("securityPolicy: unknown (e.g. None, Basic256Sha256)".into());
        }
        if !matches!(
            self.security_mode.as_str(),
            "None" | "Sign" | "SignAndEncrypt"
        ) {
            return Err("securityMode: must be None, Sign or SignAndEncrypt".into());
        }
        if (self.security_policy == "None") != (self.security_mode == "None") {
            return Err("securityPolicy/securityMode: None goes with None".into());
        }
        if self.username.is_some() != self.password.is_some() {
            return Err("username/password: give both or neither".into());
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err("reconnectInitial/reconnectMax: need 0 < initial <= max".into());
        }
        for (i, m) in self.mappings.iter().enumerate() {
            if !m.path.starts_with('/') {
                return Err(format!(
                    "mappings[{i}].path: must be a JSON pointer starting with /"
                ));
            }
            if m.node.parse::<opcua::types::NodeId>().is_err() {
                return Err(format!("mappings[{i}].node: not a node id"));
            }
            if let Some(l) = &m.setpoint {
                if m.data_type != DataType::Double {
                    return Err(format!("mappings[{i}].dataType: setpoints are double"));
                }
                l.validate()
                    .map_err(|e| format!("mappings[{i}].setpoint.{e}"))?;
            }
        }
        if self.interlock_node.parse::<opcua::types::NodeId>().is_err() {
            return Err("interlockNode: not a node id".into());
        }
        Ok(())
    }
}

impl edge_sdk::ModuleConfig for WriterConfig {
    fn validate(&self) -> Result<(), String> {
        WriterConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_validates() {
        let doc = serde_json::json!({
            "endpoint": "opc.tcp://127.0.0.1:4840/",
            "interlockNode": "ns=2;s=Interlock.RemoteEnable",
            "maxAge": "30s", "allowedModelVersions": ["pca-v1"],
            "mappings": [
                {"path": "/t2", "node": "ns=2;s=Advisory.T2"},
                {"path": "/sp", "node": "ns=2;s=TEP.XMV(10).SP",
                 "setpoint": {"low": 0, "high": 100, "onViolation": "refuse", "maxStep": 2,
                              "maxChangePerMinute": 5, "deadband": 0.05}}
            ]
        });
        let c: WriterConfig = edge_sdk::parse_config(&doc).expect("valid");
        assert_eq!(c.max_age, Duration::from_secs(30));
        assert_eq!(c.mappings.len(), 2);
        let mut bad = doc.clone();
        bad["mappings"][1]["setpoint"]["low"] = serde_json::json!(500);
        assert!(edge_sdk::parse_config::<WriterConfig>(&bad).is_err());
        let mut bad = doc;
        bad["securityMode"] = serde_json::json!("SignAndEncrypt");
        assert!(edge_sdk::parse_config::<WriterConfig>(&bad).is_err());
    }
}
