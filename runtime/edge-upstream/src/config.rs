//! [`UpstreamConfig`]: where the upstream broker is and how to talk to it.

use crate::transport::TlsFiles;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[upstream]` in edged's configuration. Without it, edged runs offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `mqtt://host[:port]` (port 1883 when left out) or `mqtts://host[:port]` (TLS, port
    /// 8883 when left out; see `tls`).
    pub url: String,
    /// `[upstream.tls]`: CA and client certificate files for an `mqtts://` broker.
    pub tls: TlsFiles,
    /// MQTT user name, if the broker wants one.
    pub username: Option<String>,
    /// MQTT password, if the broker wants one.
    pub password: Option<String>,
    /// MQTT keep-alive.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Wait before reconnecting after the link dropped.
    #[serde(with = "humantime_serde")]
    pub reconnect_delay: Duration,
    /// How often reported properties are compared with what the backend has.
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
    /// Telemetry messages published and not yet acknowledged, at most.
    pub max_inflight: u16,
    /// Timeout for a direct method the backend calls on a module.
    #[serde(with = "humantime_serde")]
    pub method_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            tls: TlsFiles::default(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            reconnect_delay: Duration::from_secs(1),
            report_interval: Duration::from_millis(200),
            max_inflight: 100,
            method_timeout: Duration::from_secs(30),
        }
    }
}
