//! [`HubConfig`]: what the hub listens on, who it is, where it keeps its data, its limits.

use edge_core::DeviceId;
use edge_store::StoreConfig;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Configuration of the hub (serde: snake_case keys, durations as `"30s"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Plain MQTT listener for modules (port 0 picks a free port; see [`crate::Hub::local_addr`]).
    pub listen: SocketAddr,
    /// The edge device id; modules connect as `{device_id}/{module}`.
    pub device_id: DeviceId,
    /// The IoT Hub host name modules put in their user name and token audience.
    pub iothub_hostname: String,
    /// The gateway (this edge box) host name, also accepted as token audience.
    pub gateway_hostname: String,
    /// Root of the hub's data: `store/` (queues), `twins/`, `sessions/`.
    pub data_dir: PathBuf,
    /// Unacknowledged QoS 1 messages in flight to one module connection.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// Largest message body a module may publish (IoT Hub's limit is 256 KiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Default time a direct method call waits for the module's answer.
    #[serde(default = "default_method_timeout", with = "humantime_serde")]
    pub method_timeout: Duration,
    /// The durable store's settings.
    #[serde(default = "default_store", with = "store_config_serde")]
    pub store: StoreConfig,
    /// Where a message goes when no route selects it, written as a route's sink:
    /// `$upstream` or `BrokeredEndpoint("/modules/<m>/inputs/<i>")`. Unset (the default, as in
    /// Azure IoT Edge): such messages are dropped and counted (`no_route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<String>,
}

fn default_max_inflight() -> usize {
    64
}

fn default_max_message_bytes() -> usize {
    262_144
}

fn default_method_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_store() -> StoreConfig {
    StoreConfig::default()
}

impl HubConfig {
    /// A configuration with the defaults: listen on `127.0.0.1:1883`, gateway `localhost`,
    /// 64 in flight, 256 KiB messages, 30 s method timeout, 64 MiB segments with fsync.
    #[must_use]
    pub fn new(
        device_id: DeviceId,
        iothub_hostname: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
            device_id,
            iothub_hostname: iothub_hostname.into(),
            gateway_hostname: "localhost".into(),
            data_dir: data_dir.into(),
            max_inflight: default_max_inflight(),
            max_message_bytes: default_max_message_bytes(),
            method_timeout: default_method_timeout(),
            store: default_store(),
            unmatched: None,
        }
    }
}

/// Serde for the store's config, which is a plain struct without serde in `edge-store`.
mod store_config_serde {
    use edge_store::StoreConfig;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Repr {
        segment_bytes: u64,
        #[serde(default)]
        max_bytes: Option<u64>,
        #[serde(default = "yes")]
        fsync: bool,
    }

    fn yes() -> bool {
        true
    }

    pub(super) fn serialize<S: Serializer>(c: &StoreConfig, s: S) -> Result<S::Ok, S::Error> {
        Repr {
            segment_bytes: c.segment_bytes,
            max_bytes: c.max_bytes,
            fsync: c.fsync,
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StoreConfig, D::Error> {
        let r = Repr::deserialize(d)?;
        Ok(StoreConfig {
            segment_bytes: r.segment_bytes,
            max_bytes: r.max_bytes,
            fsync: r.fsync,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_round_trip_with_defaults() {
        let text = r#"{"listen":"127.0.0.1:0","device_id":"dev1","iothub_hostname":"h",
            "gateway_hostname":"g","data_dir":"/tmp/x","method_timeout":"5s",
            "store":{"segment_bytes":1048576}}"#;
        let c: HubConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.method_timeout, Duration::from_secs(5));
        assert_eq!(c.max_inflight, 64);
        assert!(c.store.fsync);
        let back: HubConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.store.segment_bytes, 1_048_576);
        assert!(
            serde_json::from_str::<HubConfig>(&text.replace("\"h\"", "\"h\",\"typo\":1")).is_err()
        );
    }
}
