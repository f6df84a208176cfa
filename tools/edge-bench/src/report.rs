//! `results.json` and `results.md`.

use crate::{Bench, Entry};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn commit(root: &Path) -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Whether a smaller value is better for this figure.
fn lower_is_better(e: &Entry) -> bool {
    matches!(e.unit.as_str(), "us" | "ms" | "s" | "MiB" | "us/msg")
}

const METHOD: &str = "\
- **Ratio** = ours / peer. For throughput (`/s`) above 1 is better for us; for latency, time and \
memory below 1 is better (the *better* column says which side wins).
- **Broker path**: the same rumqttc 0.25 load (TCP_NODELAY, inflight 100, 256-byte bodies \
carrying the send time) from 1 or 8 publishers to 1 subscriber (subscribed at QoS 1), against \
(a) a real `target/release/edged` whose hub routes `FROM /messages/*` to the subscriber module \
through its durable queue (fsync on for QoS 1 batches; a QoS 0 message is queued too, synced \
within a second and delivered at QoS 0, as MQTT delivers at the lower of the two QoS; clients \
authenticate with SAS tokens as identity modules), \
(b) Debian's Mosquitto 2 (`persistence false`, `max_queued_messages 1000000`, \
`max_inflight_messages 100`), (c) a bare rumqttd 0.20 in-process (plain pub/sub). The peers do \
no routing, no authentication and keep nothing on disk, so the comparison is of the price of \
those features. Throughput = messages received / (last receive − first publish); latency = \
receive time − send time at the subscriber, p50/p99 over all messages. The publishers send as \
fast as their client allows (open loop), so these latencies are latencies *at saturation* \
(mostly queueing), not of a lightly loaded broker. The `_at_10k` figures are the unloaded \
ones: one publisher on a fixed schedule of 10,000 messages/s (due times on tokio's 1 ms timer, \
so messages leave in small bursts), latency measured the same way.
- **Criterion figures** (route engine, store, feature pipeline, agent planning, scoring) are \
medians of the crates' criterion benches (`cargo bench`), converted to per-second with the \
elements per iteration. The store figure is 64 appends of 256 B then one fsync (the hub's group \
commit).
- **Scoring peers**: Python onnxruntime (same `model.onnx`, 1 thread, median of timed runs \
including input conversion, `models/tep-pca/bench_python.py`) and bare Rust `ort` with the same \
session options (the criterion bench's `bare_ort`, which reads one output); ours is \
`onnx-scoring`'s `Scorer` (input check, run, all outputs, per-row top-3 contributors picked \
from 52 contributions, which is most of the gap at batch 256).
- **TLS**: edge-hub's `tls` bench drives the same QoS 1 load (one rumqttc-shaped client, 256 B) \
through the hub's plain listener and its TLS 1.2 listener in one process (fsync off, so the \
figure is the listener's cost, not the disk's); best of two rounds after a warm-up.
- **Recovery**: a child process appends N × 256 B (sync every 1000) and is killed with SIGKILL; \
the figure is the time for `Store::open` to scan and index the directory.
- **End to end**: `edged` with the repository's `deployment.json` (TEP runs replayed at speed 0, \
as fast as the hub accepts) and dcs-sim in the bench process with the remote-enable interlock \
on, so that opcua-writer really writes (read, write, read back, audit). `e2e_samples_per_s` = \
samples whose result the DCS stored (`Advisory.LastUpdate` writes in dcs-sim's write log) / \
time from spawning edged to the last such write; `e2e_scored_per_s` = samples published / \
time from spawning edged to the last score counted in `/metrics` (polled every 20 ms), so it \
includes start-up; `e2e_scored_per_s_after_start` is the same run from the first routed message \
to the last score. Start-up: time from spawning \
edged to the first routed message, and to every module reported running *and* connected to the \
hub (`/metrics`, polled every 5 ms). `e2e_cpu_s_*`: CPU time (user + system, `/proc/PID/stat`) \
of edged and of each module from spawn to the last score, read at each poll (the writer goes on \
after it). RSS (`VmRSS`) of edged and of each module right after the replay; binary sizes of \
the stripped release build.
- **Data path alone** (the throughput goal of 20k samples/s is set for ingest → features → \
scoring): the same deployment and replay without opcua-writer and its route (health-monitor \
and the alarms stored for upstream stay), run 3 times (`--quick`) or 5 times. \
`e2e_pipeline_scored_per_s` is the median of the runs' samples / time from spawning edged to \
the last score, with `_min` and `_max` beside it; `…_after_start` is the same from the first \
routed message. `e2e_pipeline_cpu_us_per_sample` is the CPU time (user + system) of edged \
and every module up to the last score, per sample: the work the data path costs, which a \
faster or slower minute changes less than the rate. The runs' figures are in each entry's \
command. The machine's speed drifts (the same binaries have given 14k and 20k a minute \
apart), so read the median and the spread, not one run.
- **End-to-end latency**: a second run replays the first TEP runs paced at 500 samples/s. \
`e2e_p50/p99_latency_ms` are ingest to DCS: the DCS's server time of each `Advisory.LastUpdate` \
write minus the value written, which is the sample's `ingestedAt` stamped by historian-ingest \
(samples ingested before the first result landed are left out). `e2e_score_*` are ingest to \
score: the scores are also routed to a sink module (this benchmark, connected as an identity \
module); a sample's send time follows from the replay schedule (`ts` = run start + sample × \
period, sample k is sent (k − 1) × period / speed after the run start) and latency = sink \
receive time − send time (`ts` has millisecond resolution, so figures can be up to 1 ms high).
- **Fleet**: `edge-upstream`'s `fleet` example starts N release `edged` processes on this \
machine (each with a one-module deployment, `/bin/sleep`, fsync off, metrics off) against one \
Debian Mosquitto, waits until all N report, then publishes a retained versioned deployment to \
every device concurrently (as `edgectl cloud deploy --device a --device b …` does); the figure is the \
time from the first publish to the last device reporting version 1 with code 200. N processes \
share the 2 cores, so large N measures the machine as much as the runtime.";

const NOT_MEASURED: &str = "\
- A peer for fleet convergence: Azure IoT Hub and Greengrass need their clouds, which this \
offline machine cannot reach; the figures stand alone.
- `store_recovery_s_1m` runs in full mode only (quick mode measures 200k messages).";

/// Writes both files; returns the Markdown.
pub fn write(b: &Bench, out: &Path, took: Duration) -> Result<String> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&b.entries)?,
    )?;
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mut md = String::new();
    writeln!(md, "# edge runtime benchmarks\n")?;
    writeln!(
        md,
        "- date: {}\n- machine: {cores} cores (`nproc`), {}\n- mode: {}\n- commit: {} (plus working tree)\n- duration: {:.0} s\n- command: `scripts/bench.sh{}`\n",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        cpu_model(),
        if b.quick { "quick" } else { "full" },
        commit(&b.root),
        took.as_secs_f64(),
        if b.quick { " --quick" } else { "" },
    )?;
    writeln!(
        md,
        "| name | value | unit | peer | peer value | ratio | better |\n|---|---:|---|---|---:|---:|---|"
    )?;
    for e in &b.entries {
        let better = match e.ratio {
            None => "",
            Some(r) if (r - 1.0).abs() < 1e-9 => "=",
            Some(r) if (r < 1.0) == lower_is_better(e) => "ours",
            Some(_) => "peer",
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            e.name,
            num(e.value),
            e.unit,
            e.peer.as_deref().unwrap_or(""),
            e.peer_value.map(num).unwrap_or_default(),
            e.ratio.map(num).unwrap_or_default(),
            better,
        )?;
    }
    writeln!(md, "\n## Method\n\n{METHOD}\n")?;
    writeln!(md, "## Not measured\n\n{NOT_MEASURED}")?;
    for f in &b.failures {
        writeln!(md, "- this run failed to measure {f}")?;
    }
    writeln!(
        md,
        "\nThe exact command behind each figure is in `results.json` (`command`)."
    )?;
    std::fs::write(out.join("results.md"), &md)?;
    Ok(md)
}
