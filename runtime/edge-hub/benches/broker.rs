//! End-to-end hub benchmark: N publisher modules → route → durable queue → 1 subscriber.
//!
//! Starts a hub in-process on 127.0.0.1:0 (store with fsync on, as in production), connects
//! real rumqttc clients with SAS tokens, publishes 256-byte bodies whose first 8 bytes are the
//! send time, and measures at the subscriber. Prints one JSON line per result:
//! `{"name": "...", "unit": "...", "value": ...}` (throughput in msgs/s, p50/p99 latency in µs).
//!
//! `cargo bench -p edge-hub --bench broker`; `BENCH_QUICK=1` for a short run.

use edge_core::identity::IdentityRegistry;
use edge_core::sas::{ModuleKey, make_token, module_uri};
use edge_core::{DeviceId, ModuleId};
use edge_hub::{Hub, HubConfig};
use edge_manifest::{RouteSpec, StoreAndForward};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::error::Error;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

const DEVICE: &str = "bench-dev";
const HOST: &str = "bench.hub";
const BODY: usize = 256;

struct Scenario {
    publishers: usize,
    qos: QoS,
    messages: usize,
}

struct Outcome {
    received: usize,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

fn credentials(key: &ModuleKey, module: &str) -> Res<(String, String)> {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    Ok((
        format!("{HOST}/{DEVICE}/{module}/?api-version=2021-04-12"),
        make_token(key, &module_uri(HOST, DEVICE, module), expiry),
    ))
}

/// A client with TCP_NODELAY (rumqttc leaves Nagle on by default, which with delayed ACKs
/// stalls small PUBACK writes for ~40 ms; paho, which Azure's Python SDK uses, turns it off).
fn client(opts: MqttOptions) -> (AsyncClient, EventLoop) {
    let (c, mut el) = AsyncClient::new(opts, 1024);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (c, el)
}

fn options(port: u16, module: &str, key: &ModuleKey) -> Res<MqttOptions> {
    let mut o = MqttOptions::new(format!("{DEVICE}/{module}"), "127.0.0.1", port);
    let (user, pass) = credentials(key, module)?;
    o.set_credentials(user, pass);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o.set_max_packet_size(1 << 20, 1 << 20);
    Ok(o)
}

async fn run(s: &Scenario) -> Res<Outcome> {
    let dir = tempfile::tempdir()?;
    let ids = IdentityRegistry::new();
    let mut keys = BTreeMap::new();
    let mut names: Vec<String> = (0..s.publishers).map(|i| format!("pub{i}")).collect();
    names.push("sub".into());
    for n in &names {
        let key = ModuleKey::generate().map_err(|e| format!("no random key: {e}"))?;
        ids.insert(ModuleId::new(n.as_str())?, key.clone());
        keys.insert(n.clone(), key);
    }
    let mut config = HubConfig::new(DeviceId::new(DEVICE)?, HOST, dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let hub = Hub::start(
        config,
        ids,
        &prometheus::Registry::new(),
        cancel.clone(),
        &tracker,
    )
    .await?;
    let route = RouteSpec {
        name: "all".into(),
        text: r#"FROM /messages/* INTO BrokeredEndpoint("/modules/sub/inputs/in")"#.into(),
        priority: 0,
        time_to_live: None,
    };
    let saf = StoreAndForward {
        time_to_live: Duration::from_secs(3600),
        max_size_bytes: None,
    };
    hub.apply_deployment(&[route], &saf, &BTreeMap::new())?;
    let port = hub.local_addr().port();
    let epoch = Instant::now();
    let total = s.publishers * s.messages;

    // Subscriber.
    let (sub, mut sub_loop) = client(options(port, "sub", &keys["sub"])?);
    sub.subscribe(
        format!("devices/{DEVICE}/modules/sub/inputs/#"),
        QoS::AtLeastOnce,
    )
    .await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let receiver = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut ready = Some(ready_tx);
        let mut received = 0usize;
        let mut last = epoch;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while received < total {
            let ev = tokio::time::timeout_at(deadline, sub_loop.poll()).await;
            match ev {
                Err(_) => break,
                Ok(Err(e)) => return Err(Box::new(e) as Box<dyn Error + Send + Sync>),
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let now = epoch.elapsed();
                    let mut ts = [0u8; 8];
                    ts.copy_from_slice(&p.payload[..8]);
                    let sent = Duration::from_nanos(u64::from_le_bytes(ts));
                    let us = u64::try_from(now.saturating_sub(sent).as_micros())?;
                    hist.record(us.max(1))?;
                    received += 1;
                    last = Instant::now();
                }
                Ok(Ok(_)) => {}
            }
        }
        Ok((received, last, hist))
    });
    ready_rx.await?;

    // Publishers.
    let start = Instant::now();
    let mut pubs = Vec::new();
    for i in 0..s.publishers {
        let module = format!("pub{i}");
        let (client, mut el) = client(options(port, &module, &keys[&module])?);
        let qos = s.qos;
        let n = s.messages;
        let topic = format!("devices/{DEVICE}/modules/{module}/messages/events/%24.on=out");
        let done = tokio::spawn(async move {
            let driver = tokio::spawn(async move {
                // Drive the connection until every QoS 1 publish was acknowledged.
                let mut acked = 0usize;
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked += 1;
                            if acked == n {
                                break;
                            }
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            });
            for _ in 0..n {
                let mut body = vec![0u8; BODY];
                let ts = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                body[..8].copy_from_slice(&ts.to_le_bytes());
                if client.publish(&topic, qos, false, body).await.is_err() {
                    break;
                }
            }
            if qos == QoS::AtMostOnce {
                let _ = client.disconnect().await;
            }
            let _ = driver.await;
        });
        pubs.push(done);
    }
    for p in pubs {
        p.await?;
    }
    let (received, last, hist) = receiver.await??;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(Outcome {
        received,
        elapsed: last.saturating_duration_since(start),
        latency_us: hist,
    })
}

fn emit(out: &mut impl Write, name: &str, unit: &str, value: f64) -> std::io::Result<()> {
    writeln!(
        out,
        "{}",
        serde_json::json!({"name": name, "unit": unit, "value": value})
    )
}

fn main() -> Res<()> {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let per_publisher_total = if quick { 2_000 } else { 40_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stdout = std::io::stdout();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        for publishers in [1usize, 8] {
            let s = Scenario {
                publishers,
                qos,
                messages: per_publisher_total / publishers,
            };
            let o = rt.block_on(run(&s))?;
            let q = if qos == QoS::AtMostOnce { 0 } else { 1 };
            let name = format!("broker/qos{q}/publishers{publishers}");
            let mut out = stdout.lock();
            let rate = o.received as f64 / o.elapsed.as_secs_f64().max(1e-9);
            emit(
                &mut out,
                &format!("{name}/throughput"),
                "msgs/s",
                rate.round(),
            )?;
            emit(
                &mut out,
                &format!("{name}/latency_p50"),
                "us",
                o.latency_us.value_at_quantile(0.50) as f64,
            )?;
            emit(
                &mut out,
                &format!("{name}/latency_p99"),
                "us",
                o.latency_us.value_at_quantile(0.99) as f64,
            )?;
            let expected = s.publishers * s.messages;
            if o.received < expected {
                emit(
                    &mut out,
                    &format!("{name}/lost"),
                    "msgs",
                    (expected - o.received) as f64,
                )?;
            }
        }
    }
    Ok(())
}
