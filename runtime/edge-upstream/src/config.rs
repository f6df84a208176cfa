//! [`UpstreamConfig`]: where the upstream broker is and how to talk to it.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[upstream]` in edged's configuration. Without it, edged runs offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `mqtt://host:port` (port 1883 when left out). `mqtts://` is recognised but this build
    /// has no TLS transport yet and refuses it at start.
    pub url: String,
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

/// Why a broker URL is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `mqtt://host[:port]`.
    #[error("broker url `{0}` is not mqtt://host[:port]")]
    Malformed(String),
    /// `mqtts://`: no TLS transport in this build.
    #[error("broker url `{0}` needs TLS, which this build does not have yet")]
    TlsUnsupported(String),
}

/// Splits `mqtt://host[:port]` into host and port.
///
/// # Errors
/// [`UrlError`] for any other scheme or shape.
pub fn parse_url(url: &str) -> Result<(String, u16), UrlError> {
    if url.starts_with("mqtts://") {
        return Err(UrlError::TlsUnsupported(url.to_owned()));
    }
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| UrlError::Malformed(url.to_owned()))?
        .trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse().map_err(|_| UrlError::Malformed(url.to_owned()))?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() || host.contains('/') {
        return Err(UrlError::Malformed(url.to_owned()));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884"),
            Ok(("127.0.0.1".into(), 1884))
        );
        assert_eq!(parse_url("mqtt://broker"), Ok(("broker".into(), 1883)));
        assert!(matches!(
            parse_url("mqtts://b:8883"),
            Err(UrlError::TlsUnsupported(_))
        ));
        assert!(matches!(parse_url("http://b"), Err(UrlError::Malformed(_))));
        assert!(matches!(
            parse_url("mqtt://b:x"),
            Err(UrlError::Malformed(_))
        ));
    }
}
