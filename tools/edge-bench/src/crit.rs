//! The crates' criterion benchmarks (run through `cargo bench`, read back from
//! `target/criterion/<group>/<id>/new/estimates.json`) and the Python onnxruntime peer.

use crate::{Bench, Entry};
use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};

/// Runs `cargo bench -p <package> --bench <bench> -- <criterion args> <filter>`; returns the
/// command line.
fn cargo_bench(b: &Bench, package: &str, bench: &str, filter: &str) -> Result<String> {
    let mut args: Vec<String> = ["bench", "-q", "-p", package, "--bench", bench, "--"]
        .map(str::to_owned)
        .to_vec();
    if b.quick {
        args.extend(["--warm-up-time", "1", "--measurement-time", "2"].map(str::to_owned));
    } else {
        args.extend(["--warm-up-time", "2", "--measurement-time", "5"].map(str::to_owned));
    }
    args.push("--noplot".into());
    if !filter.is_empty() {
        args.push(filter.into());
    }
    let line = format!("cargo {}", args.join(" "));
    eprintln!("[bench] {line}");
    let status = Command::new("cargo")
        .args(&args)
        .current_dir(&b.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`{line}` failed with {status}");
    }
    Ok(line)
}

/// Median time per iteration in ns of criterion benchmark `id` (`group/function[/param]`).
fn median_ns(b: &Bench, id: &str) -> Result<f64> {
    let p = b
        .root
        .join("target/criterion")
        .join(id)
        .join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("no criterion result {}", p.display()))?,
    )?;
    v["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{} has no median", p.display()))
}

/// Elements per second for a benchmark that processes `elements` per iteration.
fn per_s(b: &Bench, id: &str, elements: f64) -> Result<f64> {
    Ok(elements * 1e9 / median_ns(b, id)?.max(1e-9))
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

pub fn route(b: &mut Bench) -> Result<()> {
    let cmd = cargo_bench(b, "edge-route", "route", "")?;
    let v = per_s(b, "route_20/json_body", 1.0)?;
    b.push(Entry::solo(
        "route_evals_per_s_20",
        "evals/s",
        v.round(),
        &cmd,
    ));
    let v = per_s(b, "route_20/no_body_queries", 1.0)?;
    b.push(Entry::solo(
        "route_evals_per_s_20_no_body",
        "evals/s",
        v.round(),
        &cmd,
    ));
    Ok(())
}

pub fn store(b: &mut Bench) -> Result<()> {
    let cmd = cargo_bench(b, "edge-store", "store", "append_sync|hub_cycle")?;
    let v = per_s(b, "append_sync/64x256_fsync", 64.0)?;
    b.push(Entry::solo(
        "store_qos1_msgs_per_s",
        "msgs/s",
        v.round(),
        &cmd,
    ));
    let v = per_s(b, "hub_cycle/64x256_fsync_ack_previous", 64.0)?;
    b.push(Entry::solo(
        "store_hub_cycle_msgs_per_s",
        "msgs/s",
        v.round(),
        &cmd,
    ));
    Ok(())
}

pub fn features(b: &mut Bench) -> Result<()> {
    let cmd = cargo_bench(b, "feature-pipeline", "features", "push_52_tags_2_lags$")?;
    let v = per_s(b, "push_52_tags_2_lags", 1.0)?;
    b.push(Entry::solo(
        "features_samples_per_s",
        "samples/s",
        v.round(),
        &cmd,
    ));
    Ok(())
}

pub fn reconcile(b: &mut Bench) -> Result<()> {
    let cmd = cargo_bench(b, "edge-agent", "reconcile", "")?;
    let v = median_ns(b, "plan_500_mixed")? / 1e3;
    b.push(Entry::solo(
        "agent_plan_us_500_modules",
        "us",
        round(v, 1),
        &cmd,
    ));
    Ok(())
}

pub fn score(b: &mut Bench) -> Result<()> {
    let cmd = cargo_bench(b, "onnx-scoring", "score", "")?;
    let ours_b1 = median_ns(b, "score/scorer/1")? / 1e3;
    let bare_b1 = median_ns(b, "score/bare_ort/1")? / 1e3;
    let ours_256 = per_s(b, "score/scorer/256", 256.0)?;
    let bare_256 = per_s(b, "score/bare_ort/256", 256.0)?;
    let runs = if b.quick { "2000" } else { "10000" };
    let py_cmd = format!(".venv/bin/python models/tep-pca/bench_python.py --runs {runs}");
    eprintln!("[bench] {py_cmd}");
    let out = Command::new(b.root.join(".venv/bin/python"))
        .args(["models/tep-pca/bench_python.py", "--runs", runs])
        .current_dir(&b.root)
        .stdin(Stdio::null())
        .output();
    let py = match out {
        Ok(o) if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout).ok(),
        Ok(o) => {
            eprintln!(
                "[bench] python peer failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("[bench] python peer not run: {e}");
            None
        }
    };
    let cmd_both = |c: &str| format!("{cmd}; {c}");
    match py.as_ref().and_then(|p| p["batch1"]["median_us"].as_f64()) {
        Some(p) => b.push(Entry::vs(
            "score_latency_us_b1",
            "us",
            round(ours_b1, 2),
            "python onnxruntime",
            round(p, 2),
            &cmd_both(&py_cmd),
        )),
        None => b.push(Entry::solo(
            "score_latency_us_b1",
            "us",
            round(ours_b1, 2),
            &cmd,
        )),
    }
    b.push(Entry::vs(
        "score_latency_us_b1",
        "us",
        round(ours_b1, 2),
        "bare ort (Rust, same session options)",
        round(bare_b1, 2),
        &cmd,
    ));
    match py
        .as_ref()
        .and_then(|p| p["batch256"]["rows_per_s"].as_f64())
    {
        Some(p) => b.push(Entry::vs(
            "score_throughput_b256",
            "samples/s",
            ours_256.round(),
            "python onnxruntime",
            p.round(),
            &cmd_both(&py_cmd),
        )),
        None => b.push(Entry::solo(
            "score_throughput_b256",
            "samples/s",
            ours_256.round(),
            &cmd,
        )),
    }
    b.push(Entry::vs(
        "score_throughput_b256",
        "samples/s",
        ours_256.round(),
        "bare ort (Rust, same session options)",
        bare_256.round(),
        &cmd,
    ));
    Ok(())
}

/// The TLS listener's price per message: the hub bench `tls` (edge-hub/benches/tls.rs) drives
/// the same QoS 1 load through the plain listener and the TLS 1.2 one in one process and prints
/// one JSON line per figure.
pub fn tls(b: &mut Bench) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(["bench", "-q", "-p", "edge-hub", "--bench", "tls"])
        .current_dir(&b.root)
        .stdin(Stdio::null());
    if b.quick {
        cmd.env("BENCH_QUICK", "1");
    }
    let line = format!(
        "{}cargo bench -p edge-hub --bench tls",
        if b.quick { "BENCH_QUICK=1 " } else { "" }
    );
    eprintln!("[bench] {line}");
    let out = cmd.output().context("cannot run cargo")?;
    if !out.status.success() {
        bail!("`{line}` failed with {}", out.status);
    }
    let mut figures = std::collections::BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l)
            && let (Some(name), Some(value)) = (v["name"].as_str(), v["value"].as_f64())
        {
            figures.insert(name.to_owned(), value);
        }
    }
    let get = |k: &str| {
        figures
            .get(k)
            .copied()
            .with_context(|| format!("`{line}` printed no {k}"))
    };
    let plain = get("hub_qos1_plain_per_message")?;
    let secure = get("hub_qos1_tls12_per_message")?;
    b.push(Entry::vs(
        "hub_qos1_tls12_us_per_msg",
        "us/msg",
        secure,
        "plain listener (same hub, same load)",
        plain,
        &line,
    ));
    Ok(())
}
