//! End to end on the repository's `deployment.json`: throughput of the full TEP replay,
//! ingest-to-score latency of a paced replay, start-up times, resident memory, binary sizes.

use crate::procs::{self, Edged, Group};
use crate::{Bench, Entry};
use anyhow::{Context, Result};
use edge_core::sas::{ModuleKey, make_token, module_uri};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HISTORIAN: &str = "historian-ingest";
const SCORER: &str = "onnx-scoring";
const WRITER: &str = "opcua-writer";
const SINK: &str = "bench-sink";
/// Paced replay rate for the latency run.
const PACED_RATE: f64 = 500.0;

fn modules(manifest: &Value) -> Vec<String> {
    manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Replaces every `opc.tcp://…` string in `v` by `url`.
fn point_at(v: &mut Value, url: &str) {
    match v {
        Value::String(s) if s.starts_with("opc.tcp://") => *s = url.to_owned(),
        Value::Array(a) => a.iter_mut().for_each(|x| point_at(x, url)),
        Value::Object(o) => o.values_mut().for_each(|x| point_at(x, url)),
        _ => {}
    }
}

/// When the deployment has opcua-writer, starts dcs-sim and points the writer's twin at it.
fn with_dcs(b: &Bench, manifest: &mut Value, dir: &Path) -> Result<Option<Group>> {
    if !modules(manifest).iter().any(|m| m == WRITER) {
        return Ok(None);
    }
    let mut cmd = Command::new(procs::release_bin(&b.root, "dcs-sim")?);
    cmd.current_dir(&b.root)
        .args(["--port", "0", "--data-dir"])
        .arg(dir.join("dcs-sim"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut g = Group::spawn(cmd)?;
    let out = g.child.stdout.take().context("no dcs-sim stdout")?;
    let mut url = String::new();
    BufReader::new(out).read_line(&mut url)?;
    let url = url.trim().to_owned();
    anyhow::ensure!(url.starts_with("opc.tcp://"), "dcs-sim printed {url:?}");
    point_at(&mut manifest["modulesContent"][WRITER], &url);
    Ok(Some(g))
}

/// The repository's deployment, with relative working directories made absolute (a copy in
/// a temporary directory would otherwise resolve them there).
fn load_manifest(root: &Path) -> Result<Value> {
    let mut v: Value = serde_json::from_slice(&std::fs::read(root.join("deployment.json"))?)?;
    if let Some(mods) =
        v["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"].as_object_mut()
    {
        for m in mods.values_mut() {
            let wd = m["settings"]["workingDir"].as_str().unwrap_or(".");
            if Path::new(wd).is_relative() {
                m["settings"]["workingDir"] = json!(root.join(wd));
            }
        }
    }
    Ok(v)
}

fn write(dir: &Path, name: &str, v: &Value) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v)?)?;
    Ok(p)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Full replay, as fast as it goes; start-up times and footprint on the way.
pub fn throughput(b: &mut Bench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut manifest = load_manifest(&b.root)?;
    let _dcs = with_dcs(b, &mut manifest, dir.path())?;
    let names = modules(&manifest);
    let path = write(dir.path(), "deployment.json", &manifest)?;
    eprintln!(
        "[bench] e2e: edged on deployment.json ({})",
        names.join(", ")
    );
    let mut edged = Edged::start(&b.root, &path, &dir.path().join("edged"))?;
    let t0 = edged.spawned;
    let deadline = t0 + Duration::from_secs(if b.quick { 150 } else { 600 });
    let mut first_route = None;
    let mut all_running = None;
    let (mut samples, mut scores) = (0.0, 0.0);
    let mut last_score = t0;
    let mut last_sample = t0;
    while Instant::now() < deadline {
        let m = match edged.metrics() {
            Ok(m) => m,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let now = Instant::now();
        if first_route.is_none() && m.sum("edgehub_messages_routed_total") > 0.0 {
            first_route = Some(now - t0);
        }
        if all_running.is_none() && names.iter().all(|n| m.module_up(n)) {
            all_running = Some(now - t0);
        }
        let s = m.get("edgehub_messages_received_total", "module", HISTORIAN);
        let c = m.get("edgehub_messages_received_total", "module", SCORER);
        if s > samples {
            samples = s;
            last_sample = now;
        }
        if c > scores {
            scores = c;
            last_score = now;
        }
        if samples == 0.0 && now - t0 > Duration::from_secs(60) {
            anyhow::bail!("no sample was published within 60 s (see the module logs)");
        }
        let quiet = Duration::from_secs(2);
        if samples > 0.0 && scores > 0.0 && now - last_sample > quiet && now - last_score > quiet {
            break;
        }
        let step = if first_route.is_none() || all_running.is_none() {
            5
        } else {
            20
        };
        std::thread::sleep(Duration::from_millis(step));
    }
    let mode = if b.quick { " --quick" } else { "" };
    let cmd = format!(
        "edge-bench{mode} (e2e: target/release/edged --deployment deployment.json, full replay, speed 0)"
    );
    if let Some(d) = first_route {
        b.push(Entry::solo("start_to_first_route_ms", "ms", ms(d), &cmd));
    }
    if let Some(d) = all_running {
        b.push(Entry::solo("start_to_all_running_ms", "ms", ms(d), &cmd));
    }
    let elapsed = last_score.saturating_duration_since(t0).as_secs_f64();
    eprintln!("[bench] e2e: {samples} samples, {scores} scores in {elapsed:.2} s");
    b.push(Entry::solo(
        "e2e_samples_per_s",
        "samples/s",
        (samples / elapsed.max(1e-9)).round(),
        &cmd,
    ));
    b.push(Entry::solo("e2e_samples", "samples", samples, &cmd));
    b.push(Entry::solo("e2e_scores", "scores", scores, &cmd));

    // Footprint after the run.
    let rss_cmd = format!("{cmd}; VmRSS from /proc/PID/status after the run");
    if let Some(r) = procs::rss_mb(edged.endpoints.pid) {
        b.push(Entry::solo(
            "rss_edged_mb",
            "MiB",
            (r * 10.0).round() / 10.0,
            &rss_cmd,
        ));
    }
    for (m, pid) in edged.module_pids() {
        if let Some(r) = procs::rss_mb(pid) {
            b.push(Entry::solo(
                &format!("rss_module_mb_{}", m.replace('-', "_")),
                "MiB",
                (r * 10.0).round() / 10.0,
                &rss_cmd,
            ));
        }
    }
    edged.stop();
    let mut bins = vec![
        "edged".to_owned(),
        "edgectl".to_owned(),
        "dcs-sim".to_owned(),
    ];
    bins.extend(names);
    for bin in bins {
        if let Ok(md) = std::fs::metadata(b.root.join("target/release").join(&bin)) {
            b.push(Entry::solo(
                &format!("binary_size_mb_{}", bin.replace('-', "_")),
                "MiB",
                (md.len() as f64 / 1048576.0 * 100.0).round() / 100.0,
                &format!("stat target/release/{bin} (stripped release build)"),
            ));
        }
    }
    Ok(())
}

/// Paced replay with a sink module: latency from a sample's scheduled emit time to the
/// sink receiving its score.
pub fn latency(b: &mut Bench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut manifest = load_manifest(&b.root)?;
    let _dcs = with_dcs(b, &mut manifest, dir.path())?;
    let twin = &mut manifest["modulesContent"][HISTORIAN]["properties.desired"];
    let period = twin["source"]["samplePeriod"]
        .as_str()
        .and_then(|s| humantime::parse_duration(s).ok())
        .unwrap_or(Duration::from_secs(180));
    let speed = period.as_secs_f64() * PACED_RATE;
    let keep = if b.quick { 2 } else { 6 };
    if let Some(files) = twin["source"]["files"].as_array_mut() {
        files.truncate(keep);
    }
    twin["speed"] = json!(speed);
    twin["loop"] = json!(false);
    manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"][SINK] = json!({
        "version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
        "startupOrder": 0, "settings": {"path": "/bin/sleep", "args": ["100000"]}});
    manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["benchSink"] = json!(
        format!(
            "FROM /messages/modules/{SCORER}/outputs/scores INTO BrokeredEndpoint(\"/modules/{SINK}/inputs/scores\")"
        )
    );
    let path = write(dir.path(), "deployment.json", &manifest)?;
    eprintln!("[bench] e2e latency: paced replay at {PACED_RATE} samples/s (speed {speed})");
    let data = dir.path().join("edged");
    let mut edged = Edged::start(&b.root, &path, &data)?;
    let port = edged.hub_port()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let replay = Duration::from_secs_f64(keep as f64 * 960.0 / PACED_RATE);
    let hist = rt.block_on(sink(&data, port, period, speed, replay))?;
    edged.stop();
    let cmd = format!(
        "edge-bench{} (e2e latency: deployment.json, {keep} TEP runs paced at {PACED_RATE} samples/s, scores routed to a sink module)",
        if b.quick { " --quick" } else { "" }
    );
    eprintln!("[bench] e2e latency: {} scores measured", hist.len());
    if hist.is_empty() {
        anyhow::bail!("the sink received no scores");
    }
    for (name, q) in [("e2e_p50_latency_ms", 0.5), ("e2e_p99_latency_ms", 0.99)] {
        let v = hist.value_at_quantile(q) as f64 / 1000.0;
        b.push(Entry::solo(name, "ms", (v * 100.0).round() / 100.0, &cmd));
    }
    b.push(Entry::solo(
        "e2e_latency_scores",
        "scores",
        hist.len() as f64,
        &cmd,
    ));
    Ok(())
}

async fn sink(
    data: &Path,
    port: u16,
    period: Duration,
    speed: f64,
    replay: Duration,
) -> Result<Histogram<u64>> {
    let key_file = data.join("keys").join(format!("{SINK}.json"));
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
            "no key for {SINK}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut o = MqttOptions::new(format!("edge-device/{SINK}"), "127.0.0.1", port);
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    o.set_credentials(
        format!("edge.local/edge-device/{SINK}/?api-version=2021-04-12"),
        make_token(&key, &module_uri("edge.local", "edge-device", SINK), expiry),
    );
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 1024);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    client
        .subscribe(
            format!("devices/edge-device/modules/{SINK}/inputs/#"),
            QoS::AtLeastOnce,
        )
        .await?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut subscribed: Option<SystemTime> = None;
    let mut last = Instant::now();
    let deadline = tokio::time::Instant::now() + replay + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), el.poll()).await {
            Err(_) => {
                if subscribed.is_some()
                    && last.elapsed() > Duration::from_secs(3)
                    && !hist.is_empty()
                {
                    break;
                }
            }
            Ok(Err(e)) => {
                eprintln!("[bench] sink connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                subscribed = Some(SystemTime::now());
                last = Instant::now();
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let recv = SystemTime::now();
                last = Instant::now();
                let Some(sub_at) = subscribed else { continue };
                let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                    continue;
                };
                let (Some(sample), Some(ts)) = (v["sample"].as_u64(), v["ts"].as_str()) else {
                    continue;
                };
                let Ok(ts) = humantime::parse_rfc3339_weak(ts) else {
                    continue;
                };
                // ts = run start + sample × period; sample 1 is sent at the run start and
                // sample k (k − 1) × period / speed later.
                let k = u32::try_from(sample)?;
                let Some(run_start) = ts.checked_sub(period * k) else {
                    continue;
                };
                let emit = run_start + period.mul_f64(f64::from(k.saturating_sub(1)) / speed);
                // Samples sent before the sink listened waited for it, not for the pipeline.
                if emit < sub_at + Duration::from_millis(200) {
                    continue;
                }
                let us = recv.duration_since(emit).unwrap_or_default().as_micros();
                hist.saturating_record(u64::try_from(us)?.max(1));
            }
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(hist)
}
