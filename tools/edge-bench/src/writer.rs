//! The OPC UA writer against the simulated DCS: writes per second sustained and
//! message-to-DCS latency.
//!
//! Set-up: dcs-sim runs in this process (its write log, stamped by the server at each write, is
//! the observation point; remote enable on), a release edged runs `opcua-writer` (advisory
//! mapping `/t2` → `Advisory.T2`, every write read back and audited with an fsync, as in the
//! reference deployment) and a driver identity whose output is routed to the writer's input.
//! The driver publishes results with a unique `t2` each; a result's latency is from just before
//! its PUBLISH to the DCS's write record of that value.
//! - Latency: results paced at [`PACED_RATE`] per second (p50, p99).
//! - Throughput: a burst sent as fast as the hub accepts; writes/s = burst writes over the
//!   time from the first to the last of them in the write log.

use crate::procs::{self, Edged};
use crate::{Bench, Entry};
use anyhow::{Context, Result};
use dcs_sim::{DcsConfig, DcsServer};
use edge_core::Message;
use edge_core::message::SysProp;
use edge_core::sas::{ModuleKey, make_token, module_uri};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, MqttOptions, NetworkOptions, QoS};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WRITER: &str = "opcua-writer";
const DRIVER: &str = "bench-driver";
const T2_NODE: &str = "ns=2;s=Advisory.T2";
/// Paced rate of the latency phase (results per second).
const PACED_RATE: f64 = 200.0;

fn manifest(endpoint: &str) -> Value {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {
            WRITER: {"version": "1.0", "type": "process", "status": "running",
                "restartPolicy": "always", "startupOrder": 1,
                "settings": {"path": WRITER}},
            DRIVER: {"version": "1.0", "type": "process", "status": "running",
                "restartPolicy": "always", "startupOrder": 0,
                "settings": {"path": "/bin/sleep", "args": ["100000"]}},
        }}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1",
            "routes": {"toWriter": format!(
                "FROM /messages/modules/{DRIVER}/outputs/out INTO BrokeredEndpoint(\"/modules/{WRITER}/inputs/results\")")},
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
        WRITER: {"properties.desired": {
            "endpoint": endpoint,
            "interlockNode": "ns=2;s=Interlock.RemoteEnable",
            "maxAge": "60s",
            "timestampPath": "/ingestedAt",
            "allowedModelVersions": ["1.0.0"],
            "advisoryOnly": true,
            "input": "results",
            "mappings": [{"path": "/t2", "node": T2_NODE}],
        }},
    }})
}

/// The driver: a raw MQTT connection as identity `bench-driver` (QoS 1, rumqttc's window).
/// Its event loop ends once `closing` is set and the connection ends.
async fn driver(data: &Path, port: u16, closing: Arc<AtomicBool>) -> Result<AsyncClient> {
    let key_file = data.join("keys").join(format!("{DRIVER}.json"));
    let start = Instant::now();
    let key = loop {
        if let Ok(bytes) = std::fs::read(&key_file)
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && let Some(k) = v["key"].as_str()
        {
            break ModuleKey::from_base64(k)?;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "no key for {DRIVER}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut o = MqttOptions::new(format!("edge-device/{DRIVER}"), "127.0.0.1", port);
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    o.set_credentials(
        format!("edge.local/edge-device/{DRIVER}/?api-version=2021-04-12"),
        make_token(
            &key,
            &module_uri("edge.local", "edge-device", DRIVER),
            expiry,
        ),
    );
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 1024);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    tokio::spawn(async move {
        loop {
            if let Err(e) = el.poll().await {
                if closing.load(Ordering::Relaxed) {
                    break;
                }
                eprintln!("[bench] writer driver connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    Ok(client)
}

/// Publishes one result with `t2 = value`; returns when rumqttc took it.
async fn publish(client: &AsyncClient, value: f64) -> Result<()> {
    let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let body = json!({"t2": value, "modelVersion": "1.0.0", "ingestedAt": now}).to_string();
    let mut msg = Message::new(body.clone());
    msg.system.set(SysProp::OutputName, Some("out"));
    let topic = edge_core::topic::events_topic("edge-device", DRIVER, &msg);
    client
        .publish(topic, QoS::AtLeastOnce, false, body)
        .await
        .context("driver publish")
}

/// The server time of every T2 write, by the value written.
fn t2_writes(dcs: &DcsServer) -> HashMap<u64, SystemTime> {
    dcs.write_log()
        .into_iter()
        .filter(|r| r.node == T2_NODE)
        .filter_map(|r| {
            let v = r.requested.as_f64()?;
            Some((v.to_bits(), r.server_time()?))
        })
        .collect()
}

/// Waits until every value in `values` has been written (or nothing new came for 5 s).
async fn wait_written(dcs: &DcsServer, values: &[f64]) -> HashMap<u64, SystemTime> {
    let mut seen = 0;
    let mut last_change = Instant::now();
    loop {
        let w = t2_writes(dcs);
        let n = values
            .iter()
            .filter(|v| w.contains_key(&v.to_bits()))
            .count();
        if n == values.len() || last_change.elapsed() > Duration::from_secs(5) {
            return w;
        }
        if n != seen {
            seen = n;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Figures {
    latency: Histogram<u64>,
    latency_n: usize,
    burst_sent: usize,
    burst_written: usize,
    burst_secs: f64,
}

async fn measure(b: &Bench, dir: &Path) -> Result<(Figures, Option<f64>)> {
    let mut cfg = DcsConfig::new(0, dir.join("dcs-pki"));
    cfg.remote_enable = true;
    let dcs = DcsServer::start(cfg).await?;
    let path = dir.join("deployment.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&manifest(dcs.endpoint_url()))?,
    )?;
    let data = dir.join("edged");
    let edged = Edged::start(&b.root, &path, &data)?;
    let closing = Arc::new(AtomicBool::new(false));
    let client = driver(&data, edged.hub_port()?, closing.clone()).await?;

    // Warm-up: until the writer is connected, subscribed to the interlock and writing.
    let start = Instant::now();
    let mut k = 0.0;
    loop {
        k += 1.0;
        publish(&client, -k).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t2_writes(&dcs).keys().any(|v| f64::from_bits(*v) < 0.0) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the writer wrote nothing to the DCS within 60 s (see {})",
            data.join("logs").display()
        );
    }
    // The last warm-up results are through before measuring.
    let warm: Vec<f64> = (1..=k as u64).map(|i| -(i as f64)).collect();
    let _ = wait_written(&dcs, &warm[warm.len().saturating_sub(3)..]).await;

    // Latency, paced.
    let n_lat = if b.quick { 600 } else { 3000 };
    let period = Duration::from_secs_f64(1.0 / PACED_RATE);
    let mut sent_at = Vec::with_capacity(n_lat);
    let mut values = Vec::with_capacity(n_lat);
    let t0 = tokio::time::Instant::now();
    for i in 0..n_lat {
        tokio::time::sleep_until(t0 + period * u32::try_from(i)?).await;
        let v = 1_000_000.0 + i as f64;
        sent_at.push(SystemTime::now());
        publish(&client, v).await?;
        values.push(v);
    }
    let written = wait_written(&dcs, &values).await;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for (v, sent) in values.iter().zip(&sent_at) {
        if let Some(w) = written.get(&v.to_bits()) {
            let us = w.duration_since(*sent).unwrap_or_default().as_micros();
            latency.saturating_record(u64::try_from(us)?.max(1));
        }
    }
    let latency_n = values
        .iter()
        .filter(|v| written.contains_key(&v.to_bits()))
        .count();

    // Throughput, a burst as fast as the hub takes it.
    let n_burst = if b.quick { 3000 } else { 20000 };
    let burst: Vec<f64> = (0..n_burst).map(|i| 2_000_000.0 + i as f64).collect();
    for v in &burst {
        publish(&client, *v).await?;
    }
    let written = wait_written(&dcs, &burst).await;
    let times: Vec<SystemTime> = burst
        .iter()
        .filter_map(|v| written.get(&v.to_bits()).copied())
        .collect();
    let first = times.iter().min().copied();
    let last = times.iter().max().copied();
    let burst_secs = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).unwrap_or_default().as_secs_f64(),
        _ => 0.0,
    };
    // The writer's own count, through the SDK into edged's /metrics.
    let reported = edged
        .metrics()
        .ok()
        .map(|m| m.get("edge_module_writes_total", "module", WRITER));
    let rss = edged
        .module_pids()
        .get(WRITER)
        .and_then(|pid| procs::rss_mb(*pid));
    closing.store(true, Ordering::Relaxed);
    let _ = client.disconnect().await;
    drop(edged);
    dcs.stop().await;
    if let Some(r) = reported {
        eprintln!("[bench] writer: edge_module_writes_total = {r}");
    }
    Ok((
        Figures {
            latency,
            latency_n,
            burst_sent: n_burst,
            burst_written: times.len(),
            burst_secs,
        },
        rss,
    ))
}

/// The `writer` section.
pub fn bench(b: &mut Bench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (f, rss) = rt.block_on(measure(b, dir.path()))?;
    let mode = if b.quick { " --quick" } else { "" };
    let cmd = format!(
        "edge-bench{mode} --only writer (release edged + opcua-writer → in-process dcs-sim, advisory T2, read-back + fsynced audit per write)"
    );
    eprintln!(
        "[bench] writer: {}/{} paced results written, burst {}/{} in {:.2} s",
        f.latency_n,
        f.latency.len(),
        f.burst_written,
        f.burst_sent,
        f.burst_secs
    );
    anyhow::ensure!(f.latency_n > 0 && f.burst_written > 1, "no writes observed");
    b.push(Entry::solo(
        "writer_writes_per_s",
        "writes/s",
        (f.burst_written as f64 / f.burst_secs.max(1e-9)).round(),
        &cmd,
    ));
    for (name, q) in [
        ("writer_p50_latency_ms", 0.5),
        ("writer_p99_latency_ms", 0.99),
    ] {
        let v = f.latency.value_at_quantile(q) as f64 / 1000.0;
        b.push(Entry::solo(name, "ms", (v * 100.0).round() / 100.0, &cmd));
    }
    b.push(Entry::solo(
        "writer_latency_results",
        "results",
        f.latency_n as f64,
        &format!("{cmd}; paced at {PACED_RATE}/s"),
    ));
    if let Some(r) = rss {
        b.push(Entry::solo(
            "rss_module_mb_opcua_writer_bench",
            "MiB",
            (r * 10.0).round() / 10.0,
            &format!("{cmd}; VmRSS after the burst"),
        ));
    }
    Ok(())
}
