//! The broker path: the same rumqttc load (N publishers → 1 subscriber, 256-byte bodies whose
//! first 8 bytes are the send time) against edged's hub, Mosquitto and a bare rumqttd.

use crate::procs::{self, Edged};
use crate::{Bench, Entry};
use anyhow::{Context, Result, bail};
use edge_core::sas::{ModuleKey, make_token, module_uri};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BODY: usize = 256;
const DEVICE: &str = "edge-device";
const HOST: &str = "edge.local";
const PUBLISHERS: usize = 8;

/// How to connect one client.
#[derive(Clone)]
struct Creds {
    client_id: String,
    login: Option<(String, String)>,
}

/// One broker under test.
struct Target {
    port: u16,
    publishers: Vec<(Creds, String)>,
    subscriber: (Creds, String),
}

struct Outcome {
    sent: usize,
    received: usize,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

fn client(port: u16, c: &Creds) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(c.client_id.clone(), "127.0.0.1", port);
    if let Some((u, p)) = &c.login {
        o.set_credentials(u.clone(), p.clone());
    }
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (cl, mut el) = AsyncClient::new(o, 1024);
    // rumqttc leaves Nagle on; small PUBACKs would then wait for delayed ACKs.
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (cl, el)
}

/// Runs one scenario; `tag` marks this run's messages so leftovers from an earlier run are ignored.
/// With `rate` (messages/s over all publishers) the publishers follow a fixed schedule instead of
/// sending as fast as they can.
async fn run(
    t: &Target,
    publishers: usize,
    qos: QoS,
    per_pub: usize,
    tag: u32,
    rate: Option<f64>,
) -> Result<Outcome> {
    let epoch = Instant::now();
    let total = publishers * per_pub;
    let done = Arc::new(AtomicBool::new(false));
    let (sub, mut sub_loop) = client(t.port, &t.subscriber.0);
    sub.subscribe(t.subscriber.1.clone(), QoS::AtLeastOnce)
        .await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let pubs_done = done.clone();
    let receiver = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
        let mut ready = Some(ready_tx);
        let mut received = 0usize;
        let mut last = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while received < total && tokio::time::Instant::now() < deadline {
            // Once the publishers are done, stop after 2 s of silence (lost QoS 0 messages).
            let wait = if pubs_done.load(Ordering::Relaxed) {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(500)
            };
            match tokio::time::timeout(wait, sub_loop.poll()).await {
                Err(_) => {
                    if pubs_done.load(Ordering::Relaxed) && last.elapsed() >= Duration::from_secs(2)
                    {
                        break;
                    }
                }
                Ok(Err(e)) => bail!("subscriber connection failed: {e}"),
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if p.payload.len() < 12 || p.payload[8..12] != tag.to_le_bytes() {
                        continue;
                    }
                    let now = epoch.elapsed();
                    let mut ts = [0u8; 8];
                    ts.copy_from_slice(&p.payload[..8]);
                    let sent = Duration::from_nanos(u64::from_le_bytes(ts));
                    let us = u64::try_from(now.saturating_sub(sent).as_micros())?;
                    hist.saturating_record(us.max(1));
                    received += 1;
                    last = Instant::now();
                }
                Ok(Ok(_)) => {}
            }
        }
        let _ = sub.disconnect().await;
        // Drive the disconnect out.
        let _ = tokio::time::timeout(Duration::from_millis(200), sub_loop.poll()).await;
        Ok((received, last, hist))
    });
    tokio::time::timeout(Duration::from_secs(20), ready_rx)
        .await
        .context("no SUBACK within 20 s")??;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for (creds, topic) in t.publishers.iter().take(publishers) {
        let (cl, mut el) = client(t.port, creds);
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let driver = tokio::spawn(async move {
                let mut acked = 0usize;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                loop {
                    match tokio::time::timeout_at(deadline, el.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                            acked += 1;
                            if acked == per_pub {
                                break;
                            }
                        }
                        Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)))
                        | Ok(Err(_))
                        | Err(_) => break,
                        Ok(Ok(_)) => {}
                    }
                }
            });
            let mut sent = 0usize;
            let period = rate.map(|r| Duration::from_secs_f64(publishers as f64 / r));
            let t0 = tokio::time::Instant::now();
            for i in 0..per_pub {
                if let Some(p) = period {
                    // Open loop on a schedule: message i is due at t0 + i × period.
                    let due = t0 + p * u32::try_from(i).unwrap_or(u32::MAX);
                    if due > tokio::time::Instant::now() {
                        tokio::time::sleep_until(due).await;
                    }
                }
                let mut body = vec![0u8; BODY];
                let ts = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                body[..8].copy_from_slice(&ts.to_le_bytes());
                body[8..12].copy_from_slice(&tag.to_le_bytes());
                if cl.publish(&topic, qos, false, body).await.is_err() {
                    break;
                }
                sent += 1;
            }
            if qos == QoS::AtMostOnce {
                let _ = cl.disconnect().await;
            }
            let _ = driver.await;
            if qos == QoS::AtLeastOnce {
                let _ = cl.disconnect().await;
            }
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await?;
    }
    done.store(true, Ordering::Relaxed);
    let (received, last, hist) = receiver.await??;
    Ok(Outcome {
        sent,
        received,
        elapsed: last.saturating_duration_since(start),
        latency_us: hist,
    })
}

fn hub_creds(data_dir: &Path, module: &str) -> Result<Creds> {
    let key_file = data_dir.join("keys").join(format!("{module}.json"));
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&key_file).with_context(|| format!("no key file {}", key_file.display()))?,
    )?;
    let key = ModuleKey::from_base64(v["key"].as_str().context("key file has no key")?)?;
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    Ok(Creds {
        client_id: format!("{DEVICE}/{module}"),
        login: Some((
            format!("{HOST}/{DEVICE}/{module}/?api-version=2021-04-12"),
            make_token(&key, &module_uri(HOST, DEVICE, module), expiry),
        )),
    })
}

/// Identity modules pub0..pub7 + sub and one route from all of them to `sub`.
fn hub_manifest() -> serde_json::Value {
    let mut modules = serde_json::Map::new();
    let names: Vec<String> = (0..PUBLISHERS)
        .map(|i| format!("pub{i}"))
        .chain(["sub".to_owned()])
        .collect();
    for n in &names {
        modules.insert(
            n.clone(),
            json!({"version": "1.0", "type": "process", "status": "running",
                   "restartPolicy": "always", "startupOrder": 0,
                   "settings": {"path": "/bin/sleep", "args": ["100000"]}}),
        );
    }
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": modules}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1",
            "routes": {"bench": "FROM /messages/* INTO BrokeredEndpoint(\"/modules/sub/inputs/in\")"},
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}
    }})
}

fn peer_target(port: u16, run: &str) -> Target {
    Target {
        port,
        publishers: (0..PUBLISHERS)
            .map(|i| {
                (
                    Creds {
                        client_id: format!("{run}-pub{i}"),
                        login: None,
                    },
                    format!("devices/{DEVICE}/modules/pub{i}/messages/events"),
                )
            })
            .collect(),
        subscriber: (
            Creds {
                client_id: format!("{run}-sub"),
                login: None,
            },
            format!("devices/{DEVICE}/modules/+/messages/events"),
        ),
    }
}

fn start_rumqttd() -> Result<u16> {
    let port = procs::free_port()?;
    let mut v4 = HashMap::new();
    v4.insert(
        "1".to_owned(),
        rumqttd::ServerSettings {
            name: "v4-1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 20_480,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    let cfg = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 104_857_600,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(v4),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(cfg);
    // The broker has no stop; it lives until this process exits.
    std::thread::spawn(move || {
        if let Err(e) = broker.start() {
            eprintln!("[bench] rumqttd stopped: {e}");
        }
    });
    procs::wait_port(port, Duration::from_secs(10))?;
    Ok(port)
}

struct Figures {
    rate: f64,
    p50: f64,
    p99: f64,
}

fn figures(o: &Outcome, what: &str) -> Figures {
    if o.received < o.sent {
        eprintln!(
            "[bench] {what}: {} of {} messages received ({} lost)",
            o.received,
            o.sent,
            o.sent - o.received
        );
    }
    Figures {
        rate: (o.received as f64 / o.elapsed.as_secs_f64().max(1e-9)).round(),
        p50: o.latency_us.value_at_quantile(0.50) as f64,
        p99: o.latency_us.value_at_quantile(0.99) as f64,
    }
}

/// Runs the four scenarios (QoS 0/1 × 1/8 publishers) on all three brokers.
pub fn bench(b: &mut Bench) -> Result<()> {
    let total = if b.quick { 20_000 } else { 200_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("broker-deployment.json");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&hub_manifest())?)?;
    let data = dir.path().join("edged");
    let mut edged = Edged::start(&b.root, &manifest, &data)?;
    // Wait for the identity modules' keys.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ours = loop {
        let all: Result<Vec<Creds>> = (0..PUBLISHERS)
            .map(|i| hub_creds(&data, &format!("pub{i}")))
            .chain([hub_creds(&data, "sub")])
            .collect();
        match all {
            Ok(mut c) => {
                let sub = c.pop().context("no subscriber")?;
                break Target {
                    port: edged.hub_port()?,
                    publishers: c
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| {
                            (
                                c,
                                format!(
                                    "devices/{DEVICE}/modules/pub{i}/messages/events/%24.on=out"
                                ),
                            )
                        })
                        .collect(),
                    subscriber: (sub, format!("devices/{DEVICE}/modules/sub/inputs/#")),
                };
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if let Some(r) = procs::rss_mb(edged.endpoints.pid) {
        b.push(Entry::solo(
            "rss_edged_idle_mb",
            "MiB",
            (r * 10.0).round() / 10.0,
            "edge-bench (VmRSS of edged with 9 idle identity modules, before any load)",
        ));
    }
    let (_mosq, mosq_port) = procs::mosquitto(dir.path())?;
    let rumqttd_port = start_rumqttd()?;
    let mosq = peer_target(mosq_port, "mosq");
    let rmq = peer_target(rumqttd_port, "rmq");

    let mut tag = 0u32;
    for (q, qos) in [(0, QoS::AtMostOnce), (1, QoS::AtLeastOnce)] {
        for n in [1usize, PUBLISHERS] {
            let per_pub = total / n;
            let mut res = Vec::new();
            for (who, t) in [("edged", &ours), ("mosquitto", &mosq), ("rumqttd", &rmq)] {
                tag += 1;
                eprintln!("[bench] broker qos{q} {n} publisher(s) → {who}");
                let o = rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(180),
                        run(t, n, qos, per_pub, tag, None),
                    )
                    .await
                    .context("scenario timed out")?
                })?;
                res.push(figures(&o, &format!("{who} qos{q} {n}pub")));
            }
            let cmd = format!(
                "edge-bench{} (broker: {n} rumqttc publisher(s) → 1 subscriber, {} msgs of {BODY} B, QoS {q}, inflight 100)",
                if b.quick { " --quick" } else { "" },
                per_pub * n
            );
            let names = [
                (format!("broker_qos{q}_msgs_per_s_{n}pub"), "msgs/s", 0),
                (format!("broker_qos{q}_p50_latency_us_{n}pub"), "us", 1),
                (format!("broker_qos{q}_p99_latency_us_{n}pub"), "us", 2),
            ];
            for (name, unit, k) in names {
                let pick = |f: &Figures| [f.rate, f.p50, f.p99][k];
                for (peer, f) in [("mosquitto 2 (Debian)", &res[1]), ("rumqttd 0.20", &res[2])] {
                    b.push(Entry::vs(&name, unit, pick(&res[0]), peer, pick(f), &cmd));
                }
            }
        }
    }
    // Latency when not saturated: one publisher at a fixed 10k messages/s.
    let paced = if b.quick { 20_000 } else { 100_000 };
    for (q, qos) in [(0, QoS::AtMostOnce), (1, QoS::AtLeastOnce)] {
        let mut res = Vec::new();
        for (who, t) in [("edged", &ours), ("mosquitto", &mosq), ("rumqttd", &rmq)] {
            tag += 1;
            eprintln!("[bench] broker qos{q} paced 10k/s → {who}");
            let o = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(180),
                    run(t, 1, qos, paced, tag, Some(PACED_RATE)),
                )
                .await
                .context("scenario timed out")?
            })?;
            res.push(figures(&o, &format!("{who} qos{q} paced")));
        }
        let cmd = format!(
            "edge-bench{} (broker: 1 rumqttc publisher paced at 10,000 msgs/s → 1 subscriber, {paced} msgs of {BODY} B, QoS {q})",
            if b.quick { " --quick" } else { "" },
        );
        for (name, k) in [
            (format!("broker_qos{q}_p50_latency_us_at_10k"), 1),
            (format!("broker_qos{q}_p99_latency_us_at_10k"), 2),
        ] {
            let pick = |f: &Figures| [f.rate, f.p50, f.p99][k];
            for (peer, f) in [("mosquitto 2 (Debian)", &res[1]), ("rumqttd 0.20", &res[2])] {
                b.push(Entry::vs(&name, "us", pick(&res[0]), peer, pick(f), &cmd));
            }
        }
    }
    edged.stop();
    Ok(())
}

/// The paced scenarios' rate (messages/s): the "p99 under 1 ms at 10k messages/s".
const PACED_RATE: f64 = 10_000.0;
