//! `edgectl top`: a live terminal view of a running edged, and a summary when it ends.
//!
//! It reads only what an operator can read anyway: `list`, hub `stats` and the modules' twins
//! (reported properties). It knows the shipped modules' report sections (`replay` of
//! historian-ingest, `scoring`/`model` of onnx-scoring, `writer` of opcua-writer, `health` of
//! health-monitor) and shows what is there; missing modules are simply not shown.

use anyhow::Result;
use edge_mgmt::{Request, Response, call_one};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Options of `edgectl top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Exit once the replay is done and nothing was scored for this many seconds.
    #[arg(long)]
    pub exit_when_idle: Option<u64>,
    /// Exit after this many seconds in any case.
    #[arg(long)]
    pub max_seconds: Option<u64>,
    /// Sample at which faults start in each run (TEP test runs: 161), for detection delays.
    #[arg(long)]
    pub fault_onset: Option<u64>,
    /// Runs without a fault (their alarms are false alarms), e.g. `d00_te`.
    #[arg(long = "normal-run")]
    pub normal_runs: Vec<String>,
    /// Minutes per sample, to print detection delays in plant time (TEP: 3).
    #[arg(long, default_value_t = 3.0)]
    pub sample_minutes: f64,
    /// Do not redraw (print one snapshot per interval), for logs and CI.
    #[arg(long)]
    pub plain: bool,
}

async fn json(sock: &Path, req: Request) -> Option<Value> {
    match call_one(sock, &req).await.ok()? {
        Response::Json { value } => Some(value),
        Response::Modules { modules } => serde_json::to_value(modules).ok(),
        _ => None,
    }
}

async fn reported(sock: &Path, module: &str) -> Value {
    json(
        sock,
        Request::Twin {
            module: module.into(),
        },
    )
    .await
    .map(|t| t["reported"].clone())
    .unwrap_or(Value::Null)
}

struct Snapshot {
    modules: Value,
    stats: Value,
    ingest: Value,
    scoring: Value,
    writer: Value,
    health: Value,
}

async fn snapshot(sock: &Path) -> Option<Snapshot> {
    Some(Snapshot {
        modules: json(sock, Request::List).await?,
        stats: json(sock, Request::Stats).await.unwrap_or(Value::Null),
        ingest: reported(sock, "historian-ingest").await,
        scoring: reported(sock, "onnx-scoring").await,
        writer: reported(sock, "opcua-writer").await,
        health: reported(sock, "health-monitor").await,
    })
}

fn num(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_f64().map_or_else(
            || n.to_string(),
            |f| {
                if f.fract() == 0.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.2}")
                }
            },
        ),
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render(s: &Snapshot, rates: &BTreeMap<String, f64>, elapsed: Duration) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "edged  ·  {:.0}s  ·  hub received {}  routes {:?}",
        elapsed.as_secs_f64(),
        num(&s.stats["messages_received"]),
        s.stats["routed"].as_object().map(|m| m.len()).unwrap_or(0)
    );
    let _ = writeln!(
        o,
        "{:<18} {:<9} {:>8} {:>10}  DESCRIPTION",
        "MODULE", "STATUS", "RESTARTS", "UPTIME"
    );
    for m in s.modules.as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "{:<18} {:<9} {:>8} {:>9}s  {}",
            num(&m["name"]),
            num(&m["status"]),
            num(&m["restarts"]),
            num(&m["uptime_secs"]),
            num(&m["description"])
        );
    }
    let _ = writeln!(o, "\nROUTES (messages/s)");
    for (route, rate) in rates {
        let _ = writeln!(o, "  {route:<20} {rate:>10.0}");
    }
    let _ = writeln!(o, "\nQUEUES");
    for q in s.stats["queues"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {:<40} len {:>8}  oldest {}",
            format!("{}[p{}]", num(&q["endpoint"]), num(&q["priority"])),
            num(&q["len"]),
            num(&q["oldest_age"])
        );
    }
    let r = &s.ingest["replay"];
    if !r.is_null() {
        let _ = writeln!(
            o,
            "\nINGEST   {}  run {}  files {}  samples {}  bad rows {}",
            num(&r["state"]),
            num(&r["currentRun"]),
            num(&r["filesDone"]),
            num(&r["samplesSent"]),
            num(&r["badRows"])
        );
    }
    let sc = &s.scoring["scoring"];
    if !sc.is_null() {
        let l = &sc["last"];
        let _ = writeln!(
            o,
            "MODEL    {}  scored {}  alarms {}",
            num(&s.scoring["model"]["version"]),
            num(&sc["samples"]),
            num(&sc["alarms"])
        );
        let _ = writeln!(
            o,
            "LATEST   {} #{}  T² {} (limit {})  Q {} (limit {})  {}",
            num(&l["runId"]),
            num(&l["sample"]),
            num(&l["t2"]),
            num(&l["t2Limit"]),
            num(&l["q"]),
            num(&l["qLimit"]),
            if l["alarm"] == true {
                "ALARM"
            } else {
                "normal"
            }
        );
    }
    if !s.writer.is_null() {
        let _ = writeln!(o, "DCS      {}", writer_line(&s.writer));
    }
    let h = &s.health["health"];
    if !h.is_null() {
        let _ = writeln!(
            o,
            "HEALTH   {}  {}",
            num(&h["state"]),
            h["reasons"]
                .as_array()
                .map(|r| r.iter().map(num).collect::<Vec<_>>().join("; "))
                .unwrap_or_default()
        );
    }
    o
}

/// One line for the DCS writer's reported state: connection, interlock and counters.
fn writer_line(w: &Value) -> String {
    let mut parts = vec![num(&w["connection"]["state"])];
    if !w["interlock"].is_null() {
        parts.push(format!("interlock {}", num(&w["interlock"])));
    }
    if let Some(c) = w["counters"].as_object() {
        for (k, v) in c {
            if v.as_u64().unwrap_or(0) > 0 {
                parts.push(format!("{k} {}", num(v)));
            }
        }
    }
    if w["pending"].as_u64().unwrap_or(0) > 0 {
        parts.push(format!("pending {}", num(&w["pending"])));
    }
    parts.join(" · ")
}

/// What the sustained-alarm episodes of a run mean, given the fault onset.
fn detection(args: &TopArgs, run: &str, starts: &[u64]) -> String {
    if args.normal_runs.iter().any(|n| n == run) {
        return match starts.len() {
            0 => "no false alarm (normal run)".to_owned(),
            n => format!("{n} false-alarm episode(s) (normal run)"),
        };
    }
    let Some(onset) = args.fault_onset else {
        return starts.first().map_or_else(
            || "no sustained alarm".to_owned(),
            |f| format!("first at sample {f}"),
        );
    };
    let before = starts.iter().filter(|s| **s < onset).count();
    let note = if before > 0 {
        format!(", {before} false-alarm episode(s) before onset")
    } else {
        String::new()
    };
    match starts.iter().find(|s| **s >= onset) {
        Some(f) => {
            let d = f - onset;
            #[allow(clippy::cast_precision_loss)]
            let minutes = d as f64 * args.sample_minutes;
            format!("detected after {d} samples ({minutes:.0} min){note}")
        }
        None => format!("not detected{note}"),
    }
}

fn summary(s: &Snapshot, args: &TopArgs, elapsed: Duration) -> String {
    let mut o = String::new();
    let sc = &s.scoring["scoring"];
    let _ = writeln!(o, "\n== Summary after {:.1}s ==", elapsed.as_secs_f64());
    let _ = writeln!(
        o,
        "samples ingested {}  scored {}  alarms {}",
        num(&s.ingest["replay"]["samplesSent"]),
        num(&sc["samples"]),
        num(&sc["alarms"])
    );
    if let Some(runs) = sc["runs"].as_object() {
        let _ = writeln!(
            o,
            "{:<10} {:>8} {:>8} {:>12} {:>16}  detection",
            "run", "samples", "alarms", "first alarm", "first sustained"
        );
        for (run, r) in runs {
            let starts: Vec<u64> = r["sustainedAlarmStarts"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            let detection = detection(args, run, &starts);
            let _ = writeln!(
                o,
                "{:<10} {:>8} {:>8} {:>12} {:>16}  {}",
                run,
                num(&r["samples"]),
                num(&r["alarms"]),
                num(&r["firstAlarmSample"]),
                num(&r["firstSustainedAlarmSample"]),
                detection
            );
        }
    }
    if !s.writer.is_null() {
        let _ = writeln!(o, "DCS writer: {}", writer_line(&s.writer));
    }
    let _ = writeln!(
        o,
        "\nWhere to look next:\n  edgectl list · edgectl logs onnx-scoring · edgectl twin onnx-scoring · edgectl history\n  edgectl invoke opcua-writer audit '{{\"last\": 10}}'   ·   curl http://<metrics addr>/metrics\n  the DCS: any OPC UA client on the dcs-sim endpoint"
    );
    o
}

/// Runs the view until idle, the time limit or Ctrl-C; prints the summary.
///
/// # Errors
/// When edged cannot be reached at all.
pub async fn run(sock: &Path, args: TopArgs) -> Result<()> {
    let start = Instant::now();
    let mut prev_routed: BTreeMap<String, (f64, Instant)> = BTreeMap::new();
    let mut last_scored = (0u64, Instant::now());
    let mut last: Option<Snapshot> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let Some(s) = snapshot(sock).await else {
            if last.is_none() {
                anyhow::bail!("cannot reach edged at {}", sock.display());
            }
            break;
        };
        let now = Instant::now();
        let mut rates = BTreeMap::new();
        if let Some(routed) = s.stats["routed"].as_object() {
            for (k, v) in routed {
                let n = v.as_f64().unwrap_or(0.0);
                if let Some((p, t)) = prev_routed.get(k) {
                    let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
                    rates.insert(k.clone(), (n - p) / dt);
                }
                prev_routed.insert(k.clone(), (n, now));
            }
        }
        let frame = render(&s, &rates, start.elapsed());
        {
            let mut out = std::io::stdout().lock();
            if args.plain {
                let _ = writeln!(out, "{frame}");
            } else {
                let _ = write!(out, "\x1b[2J\x1b[H{frame}");
            }
            let _ = out.flush();
        }
        let scored = s.scoring["scoring"]["samples"].as_u64().unwrap_or(0);
        if scored != last_scored.0 {
            last_scored = (scored, now);
        }
        let replay_done = s.ingest["replay"]["state"]
            .as_str()
            .is_some_and(|st| st != "replaying");
        // Module inputs drained (what waits for `$upstream` stays queued while offline).
        let drained = s.stats["queues"].as_array().into_iter().flatten().all(|q| {
            q["endpoint"].as_str().is_some_and(|e| e.starts_with('$'))
                || q["len"].as_u64() == Some(0)
        });
        let done = replay_done && drained;
        last = Some(s);
        if let Some(idle) = args.exit_when_idle
            && done
            && scored > 0
            && now.duration_since(last_scored.1) >= Duration::from_secs(idle)
        {
            break;
        }
        if args
            .max_seconds
            .is_some_and(|m| start.elapsed() >= Duration::from_secs(m))
        {
            break;
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            () = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
        }
    }
    if let Some(s) = last {
        let text = summary(&s, &args, start.elapsed());
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    }
    Ok(())
}
