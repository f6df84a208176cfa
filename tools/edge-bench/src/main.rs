//! `edge-bench`: measures the product against its peers in one run and writes
//! `bench/results.json` (a list of `{name, unit, value, peer, peer_value, ratio, command}`) and
//! `bench/results.md` (the same as a table, with the machine, the date and the method).
//!
//! Run from the repository root after a release build (`scripts/bench.sh [--quick]` does both).
//!
//! Layout:
//! - `procs`: child processes in their own process groups (edged, mosquitto, dcs-sim), killed
//!   on drop; `/metrics` scraping; `/proc` RSS.
//! - `broker`: one rumqttc load against edged's hub, Mosquitto and an in-process rumqttd.
//! - `crit`: the crates' criterion benches via `cargo bench`, plus Python onnxruntime.
//! - `store`: recovery after kill -9 with N messages queued.
//! - `e2e`: the reference deployment end to end (throughput, latency, start-up, footprint), and
//!   the data path alone (the deployment without the writer), replayed several times.
//! - `writer`: the OPC UA writer into dcs-sim (writes/s, message-to-DCS latency).
//! - `report`: the JSON and Markdown outputs.

mod broker;
mod crit;
mod e2e;
mod fleet;
mod procs;
mod report;
mod store;
mod writer;

use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// One figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub name: String,
    pub unit: String,
    pub value: f64,
    pub peer: Option<String>,
    pub peer_value: Option<f64>,
    pub ratio: Option<f64>,
    pub command: String,
}

impl Entry {
    /// A figure without a peer.
    pub fn solo(name: &str, unit: &str, value: f64, command: &str) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            value,
            peer: None,
            peer_value: None,
            ratio: None,
            command: command.into(),
        }
    }

    /// A figure with a peer; ratio = ours / peer.
    pub fn vs(
        name: &str,
        unit: &str,
        value: f64,
        peer: &str,
        peer_value: f64,
        command: &str,
    ) -> Self {
        let ratio = (peer_value != 0.0).then(|| ((value / peer_value) * 1000.0).round() / 1000.0);
        Self {
            name: name.into(),
            unit: unit.into(),
            value,
            peer: Some(peer.into()),
            peer_value: Some(peer_value),
            ratio,
            command: command.into(),
        }
    }
}

/// The run's state: options and the figures so far.
pub struct Bench {
    pub root: PathBuf,
    pub quick: bool,
    pub entries: Vec<Entry>,
    pub failures: Vec<String>,
}

impl Bench {
    pub fn push(&mut self, e: Entry) {
        eprintln!(
            "[bench]   {} = {} {}{}",
            e.name,
            e.value,
            e.unit,
            match (&e.peer, e.peer_value) {
                (Some(p), Some(v)) => format!("  (peer {p}: {v})"),
                _ => String::new(),
            }
        );
        self.entries.push(e);
    }
}

/// Benchmarks edged, its store, route engine, scoring and the whole pipeline against peers.
#[derive(Debug, Parser)]
#[command(name = "edge-bench", version)]
struct Args {
    /// Short runs (under 5 minutes on 2 cores after the build).
    #[arg(long)]
    quick: bool,
    /// Only run these sections (route, store, features, agent, score, recovery, broker, e2e,
    /// pipeline, latency, writer, tls, fleet).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
}

/// A benchmark section.
type Section = fn(&mut Bench) -> Result<()>;

const SECTIONS: [(&str, Section); 13] = [
    ("route", crit::route),
    ("store", crit::store),
    ("features", crit::features),
    ("agent", crit::reconcile),
    ("score", crit::score),
    ("recovery", store::recovery),
    ("broker", broker::bench),
    ("e2e", e2e::throughput),
    ("pipeline", e2e::pipeline),
    ("latency", e2e::latency),
    ("writer", writer::bench),
    ("tls", crit::tls),
    ("fleet", fleet::bench),
];

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // Internal: the store filler that the recovery benchmark kills.
    if argv.get(1).map(String::as_str) == Some("fill-store") {
        let dir = argv.get(2).map(PathBuf::from).unwrap_or_default();
        let n = argv.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
        return match store::fill(&dir, n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fill-store: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("edge-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    let root = procs::repo_root()?;
    procs::kill_on_signal()?;
    let mut b = Bench {
        root,
        quick: args.quick,
        entries: Vec::new(),
        failures: Vec::new(),
    };
    let started = std::time::Instant::now();
    for (name, f) in SECTIONS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let t = std::time::Instant::now();
        eprintln!("[bench] == {name}");
        if let Err(e) = f(&mut b) {
            eprintln!("[bench] {name} failed: {e:#}");
            b.failures.push(format!("{name}: {e:#}"));
        }
        eprintln!("[bench] == {name} took {:.1} s", t.elapsed().as_secs_f64());
    }
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        b.root.join(&args.out)
    };
    let md = report::write(&b, &out, started.elapsed())?;
    let mut stdout = std::io::stdout().lock();
    std::io::Write::write_all(&mut stdout, md.as_bytes())?;
    Ok(b.failures.is_empty())
}
