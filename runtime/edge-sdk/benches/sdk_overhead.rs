//! Per-message cost of the SDK against a bare rumqttc client, in the same run, through the same
//! in-process hub: each side publishes N QoS 1 messages of 256 bytes to its output and waits
//! until the hub has acknowledged every one (durable, fsynced). Prints JSON lines
//! `{"name", "unit", "value", "peer", "peer_value", "ratio"}`.
//!
//! `cargo bench -p edge-sdk --bench sdk_overhead` (`BENCH_QUICK=1` for a short run).

use edge_core::identity::IdentityRegistry;
use edge_core::sas::{ModuleKey, make_token, module_uri};
use edge_core::{DeviceId, ModuleId};
use edge_hub::{Hub, HubConfig};
use edge_manifest::{RouteSpec, StoreAndForward};
use edge_sdk::{ClientOptions, Message, ModuleClient, ModuleEnv};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
const DEVICE: &str = "bench-dev";
const HOST: &str = "bench.hub";

async fn sdk_run(port: u16, key: &ModuleKey, n: usize) -> Res<Duration> {
    let env = ModuleEnv {
        device_id: DeviceId::new(DEVICE)?,
        module_id: ModuleId::new("sdk")?,
        iothub_hostname: HOST.into(),
        hub_addr: format!("127.0.0.1:{port}"),
        hub_socket: None,
        key: key.clone(),
        data_dir: None,
    };
    let client = ModuleClient::start(env, ClientOptions::default())?;
    client.wait_connected().await;
    let body = bytes::Bytes::from(vec![7u8; 256]);
    let start = Instant::now();
    for _ in 0..n {
        client.send("out", Message::new(body.clone())).await?;
    }
    let all = client.flush(Duration::from_secs(120)).await;
    let elapsed = start.elapsed();
    client.shutdown(Duration::from_secs(1)).await;
    if !all {
        return Err("sdk: not every message was acknowledged".into());
    }
    Ok(elapsed)
}

async fn bare_run(port: u16, key: &ModuleKey, n: usize) -> Res<Duration> {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let mut o = MqttOptions::new(format!("{DEVICE}/bare"), "127.0.0.1", port);
    o.set_credentials(
        format!("{HOST}/{DEVICE}/bare/?api-version=2021-04-12"),
        make_token(key, &module_uri(HOST, DEVICE, "bare"), expiry),
    )
    .set_inflight(100)
    .set_clean_session(false);
    let (client, mut el) = AsyncClient::new(o, 10_000);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await? {
            break;
        }
    }
    let topic = format!("devices/{DEVICE}/modules/bare/messages/events/%24.on=out");
    let body = vec![7u8; 256];
    let start = Instant::now();
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, body.clone())
                    .await?;
            }
            Ok::<_, rumqttc::ClientError>(())
        })
    };
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = el.poll().await? {
            acked += 1;
        }
    }
    let elapsed = start.elapsed();
    publisher.await??;
    Ok(elapsed)
}

fn line(name: &str, unit: &str, value: f64, peer: &str, peer_value: f64) {
    let v = serde_json::json!({"name": name, "unit": unit, "value": value, "peer": peer,
        "peer_value": peer_value, "ratio": value / peer_value});
    let _ = writeln!(std::io::stdout().lock(), "{v}");
}

fn main() -> Res<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n: usize = if std::env::var_os("BENCH_QUICK").is_some() {
        5_000
    } else {
        50_000
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let identities = IdentityRegistry::new();
        let sdk_key = ModuleKey::generate()?;
        let bare_key = ModuleKey::generate()?;
        identities.insert(ModuleId::new("sdk")?, sdk_key.clone());
        identities.insert(ModuleId::new("bare")?, bare_key.clone());
        let mut cfg = HubConfig::new(DeviceId::new(DEVICE)?, HOST, dir.path());
        cfg.listen = "127.0.0.1:0".parse()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let hub = Hub::start(
            cfg,
            identities,
            &prometheus::Registry::new(),
            cancel.clone(),
            &tracker,
        )
        .await?;
        let routes: Vec<RouteSpec> = ["sdk", "bare"]
            .iter()
            .map(|m| RouteSpec {
                name: (*m).into(),
                text: format!("FROM /messages/modules/{m}/outputs/out INTO $upstream"),
                priority: 0,
                time_to_live: None,
            })
            .collect();
        let saf = StoreAndForward {
            time_to_live: Duration::from_secs(600),
            max_size_bytes: None,
        };
        hub.apply_deployment(&routes, &saf, &BTreeMap::new())?;
        let port = hub.local_addr().port();
        // Warm up both paths, then measure alternately.
        sdk_run(port, &sdk_key, n / 10).await?;
        bare_run(port, &bare_key, n / 10).await?;
        let sdk = sdk_run(port, &sdk_key, n).await?;
        let bare = bare_run(port, &bare_key, n).await?;
        #[allow(clippy::cast_precision_loss)]
        let (sdk_us, bare_us) = (
            sdk.as_secs_f64() * 1e6 / n as f64,
            bare.as_secs_f64() * 1e6 / n as f64,
        );
        line(
            "sdk_send_us_per_msg_qos1",
            "us",
            sdk_us,
            "bare rumqttc",
            bare_us,
        );
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        Ok(())
    })
}
