//! Fleet benchmark: N edged processes against one Mosquitto; the time from publishing a new
//! deployment to every device (the same code as `edgectl cloud deploy`) until all N report
//! it applied. Prints JSON lines `{"name": "fleet_converge_s_<N>", "unit": "s", "value": …}`.
//!
//! `cargo run -p edge-upstream --example fleet -- 10 50` (needs `target/<profile>/edged`).

#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{Context, Result};
use edge_upstream::{Backend, topics};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn tiny(tag: &str) -> Value {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {
            "idle": {"version": tag, "type": "process", "status": "running",
                     "restartPolicy": "always", "settings": {"path": "/bin/sleep", "args": ["100000"]}}}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {},
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}}})
}

async fn run(n: usize, dir: &Path, edged: &Path) -> Result<f64> {
    let broker = support::Mosquitto::start(&dir.join("mosquitto"), false).await?;
    let local = dir.join("empty.json");
    std::fs::write(&local, r#"{"modulesContent": {}}"#)?;
    let mut children = Vec::new();
    for i in 0..n {
        let data = dir.join(format!("dev{i}"));
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(data.join("edged.log"))?;
        children.push(
            tokio::process::Command::new(edged)
                .arg("--deployment")
                .arg(&local)
                .arg("--data-dir")
                .arg(&data)
                .env("EDGED_DEVICE_ID", format!("dev{i}"))
                .env("EDGED_HUB__LISTEN", "127.0.0.1:0")
                .env("EDGED_METRICS__ENABLED", "false")
                .env("EDGED_HUB__FSYNC", "false")
                .env("EDGED_UPSTREAM__URL", broker.url())
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::from(log.try_clone()?))
                .stderr(std::process::Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .context("cannot spawn edged")?,
        );
    }
    let b = Backend::connect(&broker.url(), "fleet-bench", None).await?;
    let mut rx = b
        .subscribe(&[format!("{}/+/$edgeAgent/twin/reported", topics::ROOT)])
        .await?;
    // Wait until every device is connected (it reports), so we time convergence, not boot.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut collect = async |seen: &mut HashMap<String, u64>, want: Option<u64>| -> Result<()> {
        // Booting and converging N daemons on a small machine takes longer for larger N.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + n as u64);
        loop {
            let done = match want {
                None => seen.len() >= n,
                Some(v) => seen.len() >= n && seen.values().all(|x| *x >= v),
            };
            if done {
                return Ok(());
            }
            let (t, p) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .with_context(|| format!("timeout; seen {seen:?}"))??;
            let Some(topics::FromDevice::ReportedDoc { device, identity }) =
                topics::parse_from_device(&t)
            else {
                continue;
            };
            if identity != "$edgeAgent" {
                continue;
            }
            let dev = device.to_owned();
            let v: Value = serde_json::from_slice(&p).unwrap_or(Value::Null);
            let ok = v["lastDesiredDeployment"]["code"] == 200;
            let ver = v["lastDesiredDeployment"]["version"]
                .as_u64()
                .filter(|_| ok)
                .unwrap_or(0);
            seen.insert(dev, ver);
        }
    };
    collect(&mut seen, None).await?;
    let start = Instant::now();
    // All deploys in flight at once, as a backend pushing to a fleet would (each is a
    // retained publish plus broker round trips, so one after another costs N round trips).
    let manifest = tiny("1.0");
    let names: Vec<String> = (0..n).map(|i| format!("dev{i}")).collect();
    futures::future::try_join_all(names.iter().map(|d| b.deploy(d, &manifest, Some(1)))).await?;
    collect(&mut seen, Some(1)).await?;
    let secs = start.elapsed().as_secs_f64();
    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    Ok(secs)
}

#[tokio::main]
async fn main() -> Result<()> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("no target dir")?;
    let edged = profile_dir.join("edged");
    anyhow::ensure!(edged.is_file(), "{} is not built", edged.display());
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    for n in if ns.is_empty() { vec![10, 50] } else { ns } {
        let tmp = tempfile::tempdir()?;
        let secs = run(n, tmp.path(), &edged).await?;
        let line = json!({"name": format!("fleet_converge_s_{n}"), "unit": "s", "value": secs});
        std::io::Write::write_all(&mut std::io::stdout(), format!("{line}\n").as_bytes())?;
    }
    Ok(())
}
