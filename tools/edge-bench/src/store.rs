//! Durable store recovery: a child process (this binary, `fill-store`) appends N 256-byte
//! messages with a sync every 1000, says so, and is killed with SIGKILL; then the time to
//! `Store::open` the directory (which scans and indexes every record) is measured.

use crate::procs::Group;
use crate::{Bench, Entry};
use anyhow::{Context, Result, bail};
use edge_store::{QueueKey, Store, StoreConfig};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The child side: fill `dir` with `n` messages, print `filled`, then wait to be killed.
pub fn fill(dir: &Path, n: usize) -> Result<()> {
    let (mut store, _) = Store::open(dir, StoreConfig::default())?;
    let keys: Vec<QueueKey> = (0..8)
        .map(|i| QueueKey::new(format!("module/m{i}/inputs/in"), 0))
        .collect();
    let payload = [0xA5u8; 256];
    for i in 0..n {
        store.append(&keys[i % keys.len()], u64::MAX, &payload)?;
        if i % 1000 == 999 {
            store.sync()?;
        }
    }
    store.sync()?;
    let mut out = std::io::stderr();
    writeln!(out, "filled")?;
    out.flush()?;
    // Killed by the parent; bounded in case it is not.
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

pub fn recovery(b: &mut Bench) -> Result<()> {
    let (n, label) = if b.quick {
        (200_000usize, "200k")
    } else {
        (1_000_000, "1m")
    };
    let dir = tempfile::tempdir()?;
    // A rebuild while running leaves current_exe pointing at a deleted file.
    let exe = std::env::current_exe()
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| b.root.join("target/release/edge-bench"));
    let mut cmd = Command::new(&exe);
    cmd.arg("fill-store")
        .arg(dir.path())
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("[bench] store: filling {n} messages, then kill -9");
    let mut child = Group::spawn(cmd)?;
    let stderr = child.child.stderr.take().context("no child stderr")?;
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line)?;
    if line.trim() != "filled" {
        bail!("store filler said {line:?}");
    }
    drop(child); // SIGKILL to its group, then reaped
    let t = Instant::now();
    let (store, report) = Store::open(dir.path(), StoreConfig::default())?;
    let secs = t.elapsed().as_secs_f64();
    if report.entries != n as u64 {
        eprintln!(
            "[bench] store recovery found {} of {n} entries",
            report.entries
        );
    }
    drop(store);
    b.push(Entry::solo(
        &format!("store_recovery_s_{label}"),
        "s",
        (secs * 1000.0).round() / 1000.0,
        &format!(
            "edge-bench{} (store: {n} x 256 B appended, sync every 1000, kill -9, time Store::open)",
            if b.quick { " --quick" } else { "" }
        ),
    ));
    Ok(())
}
