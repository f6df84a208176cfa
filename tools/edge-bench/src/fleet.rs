//! Fleet convergence: N edged processes against one Mosquitto, timed from the first cloud
//! deploy until all N report it applied (`edge-upstream`'s `fleet` example, release build).
//! Quick mode: N = 10 and 50; full: 10, 50 and 200.

use crate::{Bench, Entry};
use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};

pub fn bench(b: &mut Bench) -> Result<()> {
    let exe = b.root.join("target/release/examples/fleet");
    if !exe.is_file() {
        bail!(
            "{} is not built (cargo build --release -p edge-upstream --examples)",
            exe.display()
        );
    }
    let ns: &[&str] = if b.quick {
        &["10", "50"]
    } else {
        &["10", "50", "200"]
    };
    for n in ns {
        eprintln!("[bench] fleet of {n} edged");
        let out = Command::new(&exe)
            .arg(n)
            .current_dir(&b.root)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run the fleet example")?;
        if !out.status.success() {
            bail!("fleet {n} failed ({})", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let cmd = format!(
            "cargo run --release -p edge-upstream --example fleet -- {n} (N release edged, one /bin/sleep module each, fsync off, one Mosquitto; first deploy → all N report version 1 with code 200)"
        );
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("fleet printed `{line}`"))?;
            let (Some(name), Some(value)) = (v["name"].as_str(), v["value"].as_f64()) else {
                bail!("fleet printed `{line}`");
            };
            b.push(Entry::solo(
                name,
                "s",
                (value * 1000.0).round() / 1000.0,
                &cmd,
            ));
        }
    }
    Ok(())
}
