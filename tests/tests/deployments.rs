//! Deployments through a real edged: a bad one is refused with located problems and the running
//! one is untouched; SIGTERM stops modules and edged exits 0.

use anyhow::Result;
use edge_e2e::{identity_module, manifest, write_manifest};
use edge_test_utils::{Edged, wait_until, workspace_bin};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn edgectl(data: &Path, args: &[&str]) -> Result<std::process::Output> {
    Ok(std::process::Command::new(workspace_bin("edgectl")?)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()?)
}

fn list(data: &Path) -> Result<Vec<Value>> {
    let out = edgectl(data, &["list", "--json"])?;
    anyhow::ensure!(
        out.status.success(),
        "edgectl list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deployment_is_refused_and_the_running_one_stays() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let good = manifest(json!({"a": identity_module(1)}), json!({}), &[]);
    let path = write_manifest(tmp.path(), "deployment.json", &good)?;
    let mut edged = Edged::start(&path, &data, &[]).await?;
    let pid = wait_until("module a running", Duration::from_secs(20), || {
        let rows = list(&data).ok();
        async move {
            rows?
                .into_iter()
                .find(|r| r["name"] == "a" && r["status"] == "running")
                .and_then(|r| r["pid"].as_u64())
        }
    })
    .await?;

    let mut bad = manifest(
        json!({"a": identity_module(1), "b": identity_module(2)}),
        json!({}),
        &[],
    );
    bad["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["b"]["restartPolicy"] =
        json!("sometimes");
    let bad_path = write_manifest(tmp.path(), "bad.json", &bad)?;
    let out = edgectl(&data, &["deploy", bad_path.to_str().unwrap_or_default()])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/modulesContent/$edgeAgent/properties.desired/modules/b/restartPolicy"),
        "problem not located: {err}"
    );

    let rows = list(&data)?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0]["pid"].as_u64(),
        Some(pid),
        "running module was touched"
    );
    let hist = edgectl(&data, &["history"])?;
    let hist = String::from_utf8_lossy(&hist.stdout);
    assert!(hist.contains("refused"), "history: {hist}");

    assert_eq!(edged.terminate(Duration::from_secs(30)).await?, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_problem_offline() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut bad = manifest(
        json!({"a": identity_module(1)}),
        json!({"r": "FROM /messages/* INTO BrokeredEndpoint(\"/modules/nope/inputs/x\")"}),
        &[],
    );
    bad["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["a"]["env"] =
        json!({"1BAD": {"value": "x"}});
    let p = write_manifest(tmp.path(), "bad.json", &bad)?;
    let out = std::process::Command::new(workspace_bin("edgectl")?)
        .args(["check", "--no-port-check", p.to_str().unwrap_or_default()])
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/env/1BAD"), "{err}");
    assert!(err.contains("/routes/r"), "{err}");
    Ok(())
}

#[test]
fn check_reports_a_busy_port() -> Result<()> {
    let holder = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = holder.local_addr()?.to_string();
    let root = edge_test_utils::repo_root();
    let out = std::process::Command::new(workspace_bin("edgectl")?)
        .args([
            "check",
            "--listen",
            &addr,
            root.join("deployment.json").to_str().unwrap_or_default(),
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr));
    Ok(())
}

#[test]
fn the_reference_deployment_is_valid() -> Result<()> {
    let root = edge_test_utils::repo_root();
    let out = std::process::Command::new(workspace_bin("edgectl")?)
        .args([
            "check",
            root.join("deployment.json").to_str().unwrap_or_default(),
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_upstream_setting_stops_edged_before_any_module_starts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let m = manifest(json!({"a": identity_module(1)}), json!({}), &[]);
    let path = write_manifest(tmp.path(), "deployment.json", &m)?;
    let missing = tmp.path().join("missing-ca.pem");
    let missing = missing.to_str().unwrap_or_default();
    let err = Edged::start(
        &path,
        &data,
        &[
            ("EDGED_UPSTREAM__URL", "mqtts://127.0.0.1:1"),
            ("EDGED_UPSTREAM__TLS__CA_FILE", missing),
        ],
    )
    .await
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default();
    assert!(err.contains("upstream"), "{err}");
    assert!(err.contains("missing-ca.pem"), "the file is named: {err}");
    // Nothing was started: no module key was issued, no hub listened.
    assert!(!data.join("keys").join("a.json").exists(), "{err}");
    assert!(!data.join("endpoints.json").exists());
    Ok(())
}
