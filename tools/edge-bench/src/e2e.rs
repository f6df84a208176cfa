//! End to end on the repository's `deployment.json`: throughput of the full TEP replay into
//! the simulated DCS, ingest-to-DCS latency of a paced replay (and ingest-to-score beside it),
//! start-up times, resident memory, binary sizes.
//!
//! The DCS is dcs-sim in this process with the remote-enable interlock on, so that the writer
//! really writes. Its write log, stamped by the server at each write, is the observation point:
//! the writer maps each result's `ingestedAt` (stamped by historian-ingest when it read the
//! sample) to `Advisory.LastUpdate`, so one such write is one sample landed in the DCS, and
//! its server time minus the value written is that sample's ingest-to-DCS latency.

use crate::procs::{self, Edged};
use crate::{Bench, Entry};
use anyhow::{Context, Result};
use dcs_sim::{DcsConfig, DcsServer};
use edge_core::sas::{ModuleKey, make_token, module_uri};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// The node the writer stamps with each result's `ingestedAt`.
const LAST_UPDATE_NODE: &str = "ns=2;s=Advisory.LastUpdate";

/// dcs-sim in this process, on its own runtime (the bench's waits are synchronous).
struct Dcs {
    server: DcsServer,
    _rt: tokio::runtime::Runtime,
}

impl Dcs {
    /// (server time of the write, `ingestedAt` written) of every `LastUpdate` write that was
    /// stored (a refused write, null `stored`, did not land), in log order.
    fn landed(&self) -> Vec<(SystemTime, SystemTime)> {
        self.server
            .write_log()
            .into_iter()
            .filter(|r| r.node == LAST_UPDATE_NODE && !r.stored.is_null())
            .filter_map(|r| {
                Some((
                    r.server_time()?,
                    dcs_sim::parse_time(r.requested.as_str()?)?,
                ))
            })
            .collect()
    }
}

/// When the deployment has opcua-writer, starts dcs-sim (interlock on) and points the
/// writer's twin at it.
fn with_dcs(manifest: &mut Value, dir: &Path) -> Result<Option<Dcs>> {
    if !modules(manifest).iter().any(|m| m == WRITER) {
        return Ok(None);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut cfg = DcsConfig::new(0, dir.join("dcs-pki"));
    cfg.remote_enable = true;
    let server = rt
        .block_on(DcsServer::start(cfg))
        .context("starting dcs-sim")?;
    point_at(
        &mut manifest["modulesContent"][WRITER],
        server.endpoint_url(),
    );
    Ok(Some(Dcs { server, _rt: rt }))
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

/// CPU seconds used so far by each of `pids` (name → pid).
fn cpu_now(pids: &BTreeMap<String, u32>) -> BTreeMap<String, f64> {
    pids.iter()
        .filter_map(|(name, pid)| Some((name.clone(), procs::cpu_s(*pid)?)))
        .collect()
}

/// What one full replay observed (times from spawning edged).
struct Replay {
    first_route: Option<Duration>,
    all_running: Option<Duration>,
    samples: f64,
    scores: f64,
    /// Spawn to the last score counted in `/metrics`.
    to_last_score: Duration,
    /// Writes dcs-sim counted (0 without a DCS).
    writes: usize,
    /// CPU seconds per process (edged and each module) up to the last score.
    cpu_at_score: BTreeMap<String, f64>,
}

impl Replay {
    /// Samples over the time from spawning edged to the last score.
    fn scored_per_s(&self) -> f64 {
        (self.samples / self.to_last_score.as_secs_f64().max(1e-9)).round()
    }

    /// The same, timed from the first routed message (start-up left out).
    fn scored_per_s_after_start(&self) -> Option<f64> {
        let steady = self.to_last_score.checked_sub(self.first_route?)?;
        Some((self.samples / steady.as_secs_f64().max(1e-9)).round())
    }
}

/// Polls edged's `/metrics` until the replay is over: nothing more received from the historian
/// or the scorer for 2 s, and the writer done (2 s without a DCS write, or 20 s after the last
/// score without any).
fn replay(b: &Bench, edged: &Edged, names: &[String], dcs: Option<&Dcs>) -> Result<Replay> {
    let t0 = edged.spawned;
    let deadline = t0 + Duration::from_secs(if b.quick { 150 } else { 600 });
    let mut first_route = None;
    let mut all_running = None;
    let (mut samples, mut scores) = (0.0, 0.0);
    let mut last_score = t0;
    let mut last_sample = t0;
    let (mut writes, mut last_write) = (0, t0);
    let mut pids = BTreeMap::new();
    let mut cpu_at_score = BTreeMap::new();
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
            // Once, not at every poll: finding them scans /proc.
            pids = edged.module_pids();
            pids.insert("edged".to_owned(), edged.endpoints.pid);
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
            // CPU used up to the last score: what the three modules and the hub cost
            // (the writer and the DCS go on after it).
            cpu_at_score = cpu_now(&pids);
        }
        if let Some(d) = dcs {
            let w = d.server.write_count();
            if w > writes {
                writes = w;
                last_write = now;
            }
        }
        if samples == 0.0 && now - t0 > Duration::from_secs(60) {
            anyhow::bail!("no sample was published within 60 s (see the module logs)");
        }
        let quiet = Duration::from_secs(2);
        // Done when nothing more lands; a writer that never writes is given 20 s after the
        // last score, then reported as such (no `e2e_samples_per_s`).
        let writer_done = dcs.is_none()
            || (writes > 0 && now - last_write > quiet)
            || (writes == 0 && now - last_score > Duration::from_secs(20));
        if samples > 0.0
            && scores > 0.0
            && now - last_sample > quiet
            && now - last_score > quiet
            && writer_done
        {
            break;
        }
        let step = if first_route.is_none() || all_running.is_none() {
            5
        } else {
            20
        };
        std::thread::sleep(Duration::from_millis(step));
    }
    Ok(Replay {
        first_route,
        all_running,
        samples,
        scores,
        to_last_score: last_score.saturating_duration_since(t0),
        writes,
        cpu_at_score,
    })
}

/// Full replay, as fast as it goes; start-up times and footprint on the way.
pub fn throughput(b: &mut Bench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut manifest = load_manifest(&b.root)?;
    let dcs = with_dcs(&mut manifest, dir.path())?;
    let names = modules(&manifest);
    let path = write(dir.path(), "deployment.json", &manifest)?;
    eprintln!(
        "[bench] e2e: edged on deployment.json ({})",
        names.join(", ")
    );
    let mut edged = Edged::start(&b.root, &path, &dir.path().join("edged"))?;
    let t0 = edged.spawned;
    let t0_wall = SystemTime::now() - t0.elapsed();
    let run = replay(b, &edged, &names, dcs.as_ref())?;
    let Replay {
        first_route,
        all_running,
        samples,
        scores,
        writes,
        ..
    } = run;
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
    let elapsed = run.to_last_score.as_secs_f64();
    eprintln!("[bench] e2e: {samples} samples, {scores} scores in {elapsed:.2} s");
    b.push(Entry::solo("e2e_samples", "samples", samples, &cmd));
    b.push(Entry::solo("e2e_scores", "scores", scores, &cmd));
    b.push(Entry::solo(
        "e2e_scored_per_s",
        "samples/s",
        run.scored_per_s(),
        &format!("{cmd}; samples over the time to the last score"),
    ));
    if let Some(v) = run.scored_per_s_after_start() {
        // The same run without edged's and the modules' start-up: from the first routed
        // message (the first sample) to the last score.
        b.push(Entry::solo(
            "e2e_scored_per_s_after_start",
            "samples/s",
            v,
            &format!(
                "{cmd}; samples over the time from the first routed message to the last score"
            ),
        ));
    }
    if let Some(d) = dcs.as_ref().filter(|_| writes > 0) {
        let landed = d.landed();
        let end = landed.iter().map(|(t, _)| *t).max().unwrap_or(t0_wall);
        let secs = end
            .duration_since(t0_wall)
            .unwrap_or_default()
            .as_secs_f64();
        eprintln!(
            "[bench] e2e: {} samples landed in the DCS in {secs:.2} s",
            landed.len()
        );
        let dcs_cmd = format!(
            "{cmd}; samples whose result the DCS stored (Advisory.LastUpdate writes in dcs-sim's write log) over the time to the last one"
        );
        b.push(Entry::solo(
            "e2e_samples_per_s",
            "samples/s",
            (landed.len() as f64 / secs.max(1e-9)).round(),
            &dcs_cmd,
        ));
        b.push(Entry::solo(
            "e2e_samples_in_dcs",
            "samples",
            landed.len() as f64,
            &dcs_cmd,
        ));
    }

    let cpu_cmd =
        format!("{cmd}; CPU time (utime + stime in /proc/PID/stat) from spawn to the last score");
    for (name, secs) in &run.cpu_at_score {
        b.push(Entry::solo(
            &format!("e2e_cpu_s_{}", name.replace('-', "_")),
            "s",
            (secs * 100.0).round() / 100.0,
            &cpu_cmd,
        ));
    }

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

/// `manifest` without opcua-writer: its module, its twin and the routes into it. What is left
/// is the data path the throughput goal is set for (historian-ingest, feature-pipeline and
/// onnx-scoring), with the rest of the deployment (health-monitor, alarms stored for upstream).
fn without_writer(manifest: &mut Value) {
    let mc = &mut manifest["modulesContent"];
    if let Some(m) = mc["$edgeAgent"]["properties.desired"]["modules"].as_object_mut() {
        m.remove(WRITER);
    }
    if let Some(o) = mc.as_object_mut() {
        o.remove(WRITER);
    }
    let into_writer = format!("/modules/{WRITER}/");
    if let Some(routes) = mc["$edgeHub"]["properties.desired"]["routes"].as_object_mut() {
        routes.retain(|_, r| {
            let text = r.as_str().or_else(|| r["route"].as_str()).unwrap_or("");
            !text.contains(&into_writer)
        });
    }
}

/// The median of `v` (the mean of the two middle values for an even count); `None` if empty.
fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some(((v[n / 2 - 1] + v[n / 2]) / 2.0).round()),
    }
}

/// The data path alone, replayed several times (3 with `--quick`, else 5): the median, lowest
/// and highest rate, so that one run on a noisy machine does not decide the figure.
pub fn pipeline(b: &mut Bench) -> Result<()> {
    let runs = if b.quick { 3 } else { 5 };
    let (mut rates, mut steady, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=runs {
        let dir = tempfile::tempdir()?;
        let mut manifest = load_manifest(&b.root)?;
        without_writer(&mut manifest);
        let names = modules(&manifest);
        let path = write(dir.path(), "deployment.json", &manifest)?;
        eprintln!(
            "[bench] e2e pipeline {i}/{runs}: edged on deployment.json without {WRITER} ({})",
            names.join(", ")
        );
        let mut edged = Edged::start(&b.root, &path, &dir.path().join("edged"))?;
        let run = replay(b, &edged, &names, None)?;
        edged.stop();
        anyhow::ensure!(
            run.scores >= run.samples && run.samples > 0.0,
            "run {i}: {} samples but {} scores",
            run.samples,
            run.scores
        );
        eprintln!(
            "[bench] e2e pipeline {i}/{runs}: {} samples/s ({:?} after start-up)",
            run.scored_per_s(),
            run.scored_per_s_after_start()
        );
        rates.push(run.scored_per_s());
        steady.extend(run.scored_per_s_after_start());
        let total: f64 = run.cpu_at_score.values().sum();
        cpu.push((total / run.samples * 1e6 * 10.0).round() / 10.0);
    }
    let mode = if b.quick { " --quick" } else { "" };
    let cmd = format!(
        "edge-bench{mode} (e2e pipeline: target/release/edged --deployment deployment.json without {WRITER} and its route, full replay, speed 0, {runs} runs)"
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, unit, v, what) in [
        (
            "e2e_pipeline_scored_per_s",
            "samples/s",
            &rates,
            "samples over the time from spawning edged to the last score",
        ),
        (
            "e2e_pipeline_scored_per_s_after_start",
            "samples/s",
            &steady,
            "samples over the time from the first routed message to the last score",
        ),
        (
            "e2e_pipeline_cpu_us_per_sample",
            "µs",
            &cpu,
            "CPU time (user + system) of edged and every module up to the last score, per sample",
        ),
    ] {
        let (Some(med), Some(lo), Some(hi)) = (
            median(v),
            v.iter().copied().reduce(f64::min),
            v.iter().copied().reduce(f64::max),
        ) else {
            continue;
        };
        let detail = format!("{cmd}; {what}; runs: {}", list(v));
        b.push(Entry::solo(name, unit, med, &format!("{detail}; median")));
        b.push(Entry::solo(
            &format!("{name}_min"),
            unit,
            lo,
            &format!("{detail}; lowest"),
        ));
        b.push(Entry::solo(
            &format!("{name}_max"),
            unit,
            hi,
            &format!("{detail}; highest"),
        ));
    }
    Ok(())
}

/// Paced replay: latency from a sample's `ingestedAt` to the DCS storing its result, and
/// from its scheduled emit time to a sink module receiving its score.
pub fn latency(b: &mut Bench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut manifest = load_manifest(&b.root)?;
    let dcs = with_dcs(&mut manifest, dir.path())?;
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
    push_quantiles(b, &hist, "e2e_score", &cmd);
    b.push(Entry::solo(
        "e2e_latency_scores",
        "scores",
        hist.len() as f64,
        &cmd,
    ));
    if let Some(d) = &dcs {
        let landed = d.landed();
        let dcs_cmd = format!(
            "{cmd}; ingestedAt to the DCS's server time of the Advisory.LastUpdate write (dcs-sim write log)"
        );
        let hist = dcs_latency(&landed)?;
        eprintln!(
            "[bench] e2e latency: {} samples landed in the DCS",
            hist.len()
        );
        anyhow::ensure!(!hist.is_empty(), "no result landed in the DCS");
        push_quantiles(b, &hist, "e2e", &dcs_cmd);
        b.push(Entry::solo(
            "e2e_latency_samples_in_dcs",
            "samples",
            hist.len() as f64,
            &dcs_cmd,
        ));
    }
    Ok(())
}

/// `{prefix}_p50_latency_ms` and `{prefix}_p99_latency_ms` of a histogram in microseconds.
fn push_quantiles(b: &mut Bench, hist: &Histogram<u64>, prefix: &str, cmd: &str) {
    for (p, q) in [("p50", 0.5), ("p99", 0.99)] {
        let v = hist.value_at_quantile(q) as f64 / 1000.0;
        b.push(Entry::solo(
            &format!("{prefix}_{p}_latency_ms"),
            "ms",
            (v * 100.0).round() / 100.0,
            cmd,
        ));
    }
}

/// Ingest-to-DCS latencies of landed samples. Samples ingested before the first result landed
/// (plus 200 ms) waited for the writer to connect, not for the pipeline, and are left out.
fn dcs_latency(landed: &[(SystemTime, SystemTime)]) -> Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let Some(first) = landed.iter().map(|(t, _)| *t).min() else {
        return Ok(hist);
    };
    let steady = first + Duration::from_millis(200);
    for (stored, ingested) in landed {
        if *ingested < steady {
            continue;
        }
        let us = stored
            .duration_since(*ingested)
            .unwrap_or_default()
            .as_micros();
        hist.saturating_record(u64::try_from(us)?.max(1));
    }
    Ok(hist)
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
