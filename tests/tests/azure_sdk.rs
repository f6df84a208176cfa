//! Modules written for Azure IoT Edge run unchanged: real Python modules on Azure's unmodified
//! `azure-iot-device` 2.14.0 SDK (installed into `.venv` by `scripts/setup.sh`), launched by
//! the agent, created with `IoTHubModuleClient.create_from_edge_environment()`. They fetch the
//! trust bundle and token signatures from edged's workload API and connect over TLS to port
//! 8883, which the SDK cannot change; so each test runs edged (and with it every module) in a
//! network namespace of its own (`unshare -rn`), and tests can run in parallel. The test talks
//! to edged only through files and the management socket, which a network namespace does not
//! hide.
//!
//! Observations go through what an operator sees: `edgectl twin` (the sample module reports
//! what it received), `edgectl invoke`, `edgectl stats` and edged's log.

use anyhow::{Context, Result, bail};
use edge_e2e::{manifest, process_module, write_manifest};
use edge_test_utils::{Edged, Endpoints, repo_root, target_dir, wait_until, workspace_bin};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// The venv's Python, checked to have the SDK.
fn python() -> Result<PathBuf> {
    let py = repo_root().join(".venv/bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import azure.iot.device, importlib.metadata as m; assert m.version('azure-iot-device') == '2.14.0'"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "{} has no azure-iot-device 2.14.0; run scripts/setup.sh",
            py.display()
        );
    }
    Ok(py)
}

/// A module running a Python file of this repository under the venv's Python.
fn python_module(script: &str, order: u32, env: &[(&str, &str)]) -> Result<Value> {
    let path = repo_root().join(script);
    let mut m = process_module(
        &python()?,
        &[path.to_str().context("path")?],
        order,
        "on-failure",
    );
    let env: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!({"value": v})))
        .collect();
    m["env"] = Value::Object(env);
    Ok(m)
}

/// Starts edged in a network namespace of its own (loopback up), so its TLS listener has port
/// 8883 to itself. `unshare` and `sh` exec into edged, so the child is edged itself.
async fn start_in_netns(deployment: &Path, data_dir: &Path) -> Result<Edged> {
    let bin = workspace_bin("edged")?;
    std::fs::create_dir_all(data_dir)?;
    let log = std::fs::File::create(data_dir.join("edged.test.log"))?;
    let mut child = tokio::process::Command::new("unshare")
        .args(["-rn", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"])
        .arg(bin)
        .arg("--deployment")
        .arg(deployment)
        .arg("--data-dir")
        .arg(data_dir)
        .env("EDGED_HUB__LISTEN", "127.0.0.1:0")
        .env("EDGED_HUB__TLS_LISTEN", "127.0.0.1:8883")
        .env("EDGED_METRICS__ENABLED", "false")
        .env("EDGED_MODULE_PATH", target_dir())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("cannot run unshare (util-linux)")?;
    let file = data_dir.join("endpoints.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(endpoints) = serde_json::from_str::<Endpoints>(&text)
        {
            let v: Value = serde_json::from_str(&text)?;
            anyhow::ensure!(v["hub_tls"] == "127.0.0.1:8883", "no TLS listener: {text}");
            return Ok(Edged {
                child,
                data_dir: data_dir.to_owned(),
                endpoints,
            });
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "edged in a network namespace exited with {status} (does `unshare -rn` work here? it needs root or user namespaces); log:\n{}",
                std::fs::read_to_string(data_dir.join("edged.test.log")).unwrap_or_default()
            );
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("edged did not write {} within 30 s", file.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn edgectl(data: &Path, args: &[&str]) -> Result<Value> {
    let out = std::process::Command::new(workspace_bin("edgectl")?)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "edgectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Waits until `check` holds for the twin of `module`; returns that twin.
async fn twin_until(
    data: &Path,
    module: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    wait_until(what, LONG, || {
        let twin = edgectl(data, &["twin", module]).ok();
        let ok = twin.as_ref().is_some_and(&check);
        async move { if ok { twin } else { None } }
    })
    .await
}

/// Invokes a method, retrying while the module is between connections (token renewal).
async fn invoke(data: &Path, module: &str, method: &str, payload: &Value) -> Result<Value> {
    let payload = payload.to_string();
    wait_until(&format!("{module}.{method} answers"), LONG, || {
        let r = edgectl(data, &["invoke", module, method, &payload]).ok();
        async move { r }
    })
    .await
}

/// edged's log without ANSI colour sequences.
fn plain_log(edged: &Edged) -> String {
    let mut out = String::new();
    let log = edged.log();
    let mut chars = log.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How often `module` connected, from edged's log.
fn connects(edged: &Edged, module: &str) -> usize {
    plain_log(edged)
        .lines()
        .filter(|l| l.contains("Module connected.") && l.contains(&format!("module={module} ")))
        .count()
}

fn has_property(last: &Value, key: &str, value: &str) -> bool {
    last["properties"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p[0] == key && p[1] == value))
}

fn sdk_manifest(receiver_color: &str) -> Result<Value> {
    let echo = target_dir().join("examples/echo");
    anyhow::ensure!(echo.is_file(), "{} not built", echo.display());
    let sample = "modules/azure-sdk-sample/main.py";
    Ok(manifest(
        json!({
            "pysender": python_module(sample, 1, &[])?,
            // A 125 s token is renewed (new signature, DISCONNECT, CONNECT) every 5 s.
            "pyreceiver": python_module(sample, 1, &[("SAMPLE_SASTOKEN_TTL", "125")])?,
            "echo": process_module(&echo, &[], 1, "on-failure"),
        }),
        json!({
            "toPy": "FROM /messages/modules/pysender/outputs/out INTO BrokeredEndpoint(\"/modules/pyreceiver/inputs/in\")",
            "toOurs": "FROM /messages/modules/pysender/outputs/out INTO BrokeredEndpoint(\"/modules/echo/inputs/in\")",
            "back": "FROM /messages/modules/echo/outputs/out INTO BrokeredEndpoint(\"/modules/pyreceiver/inputs/fromecho\")",
        }),
        &[
            ("echo", json!({"tag": "t1"})),
            ("pyreceiver", json!({"color": receiver_color})),
        ],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_azure_sdk_modules_route_twin_methods_and_renew_tokens() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let path = write_manifest(tmp.path(), "deployment.json", &sdk_manifest("red")?)?;
    let mut edged = start_in_netns(&path, &data).await?;

    // Both SDK modules came up: trust bundle, sign, TLS CONNECT, get_twin, reported patch.
    for m in ["pysender", "pyreceiver"] {
        let twin = twin_until(&data, m, &format!("{m} running"), |t| {
            t["reported"]["sample"]["status"] == "running"
        })
        .await?;
        assert_eq!(
            twin["reported"]["sample"]["desiredVersionAtStart"], twin["desired"]["$version"],
            "get_twin returned the desired version: {twin}"
        );
    }

    // An output of one SDK module, routed to another SDK module and to one of ours (echo),
    // whose output comes back to the SDK module: properties survive both encodings.
    let send = json!({
        "output": "out", "body": "{\"t\": 21.5}", "messageId": "m-1",
        "contentType": "application/json", "contentEncoding": "utf-8",
        "properties": {"alert level": "high/very", "b": "x&y=z"},
    });
    let r = invoke(&data, "pysender", "send", &send).await?;
    assert_eq!(r["status"], 200, "{r}");
    let twin = twin_until(&data, "pyreceiver", "both inputs", |t| {
        t["reported"]["inputs"]["in"]["count"] == 1
            && t["reported"]["inputs"]["fromecho"]["count"] == 1
    })
    .await?;
    let direct = &twin["reported"]["inputs"]["in"]["last"];
    assert_eq!(direct["body"], "{\"t\": 21.5}", "{twin}");
    assert_eq!(direct["messageId"], "m-1");
    assert_eq!(direct["contentType"], "application/json");
    assert_eq!(direct["contentEncoding"], "utf-8");
    assert!(has_property(direct, "alert level", "high/very"), "{direct}");
    assert!(has_property(direct, "b", "x&y=z"), "{direct}");
    assert!(has_property(direct, "$.cdid", "edge-device"), "{direct}");
    assert!(has_property(direct, "$.cmid", "pysender"), "{direct}");
    let via_ours = &twin["reported"]["inputs"]["fromecho"]["last"];
    assert_eq!(via_ours["body"], "{\"t\": 21.5}", "{twin}");
    assert!(has_property(via_ours, "tag", "t1"), "{via_ours}");
    assert!(has_property(via_ours, "$.cmid", "echo"), "{via_ours}");
    assert!(has_property(via_ours, "b", "x&y=z"), "{via_ours}");

    // A direct method from edgectl.
    let r = invoke(&data, "pyreceiver", "echo", &json!({"n": 1})).await?;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["payload"], json!({"n": 1}));
    let r = invoke(&data, "pyreceiver", "nope", &json!({})).await?;
    assert_eq!(r["status"], 404, "{r}");

    // Token renewal: pyreceiver signs a new token and reconnects (the SDK never subscribes
    // again). Wait for one more renewal from here on, then check everything still arrives.
    let before = connects(&edged, "pyreceiver");
    wait_until("a token renewal", LONG, || {
        let n = connects(&edged, "pyreceiver");
        async move { (n > before).then_some(()) }
    })
    .await?;
    let send = json!({"output": "out", "body": "after renewal"});
    invoke(&data, "pysender", "send", &send).await?;
    twin_until(&data, "pyreceiver", "input after renewal", |t| {
        t["reported"]["inputs"]["in"]["count"] == 2
            && t["reported"]["inputs"]["in"]["last"]["body"] == "after renewal"
    })
    .await?;
    let r = invoke(&data, "pyreceiver", "echo", &json!("still")).await?;
    assert_eq!(r["payload"], "still", "{r}");

    // A desired patch from a new deployment.
    let v2 = write_manifest(tmp.path(), "v2.json", &sdk_manifest("blue")?)?;
    let out = std::process::Command::new(workspace_bin("edgectl")?)
        .arg("--data-dir")
        .arg(&data)
        .args(["deploy", v2.to_str().context("path")?])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let twin = twin_until(&data, "pyreceiver", "desired patch", |t| {
        t["reported"]["desired"]["last"] == "{\"color\": \"blue\"}"
    })
    .await?;
    assert_eq!(
        twin["reported"]["desired"]["lastVersion"], twin["desired"]["$version"],
        "{twin}"
    );
    assert!(connects(&edged, "pyreceiver") > before);

    let stats = edgectl(&data, &["stats"])?;
    assert_eq!(
        stats["auth_refused"], 0,
        "renewals are never refused: {stats}"
    );
    assert_eq!(stats["dead_letters"], 0, "{stats}");
    assert_eq!(edged.terminate(Duration::from_secs(60)).await?, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_expired_tokens_and_borrowed_identities_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let m = manifest(
        json!({
            "pyvictim": python_module("modules/azure-sdk-sample/main.py", 1, &[])?,
            "pyrogue": python_module("tests/azure/rogue.py", 2, &[("ROGUE_VICTIM", "pyvictim")])?,
        }),
        json!({}),
        &[],
    );
    let path = write_manifest(tmp.path(), "deployment.json", &m)?;
    let mut edged = start_in_netns(&path, &data).await?;
    twin_until(&data, "pyvictim", "victim running", |t| {
        t["reported"]["sample"]["status"] == "running"
    })
    .await?;
    let twin = twin_until(&data, "pyrogue", "rogue results", |t| {
        t["reported"]["refusals"].is_object()
    })
    .await?;
    let r = &twin["reported"]["refusals"];
    // CONNACK 5, which the SDK reports as CredentialError.
    assert_eq!(r["wrongKey"], "CredentialError", "{r}");
    assert_eq!(r["otherIdentity"], "CredentialError", "{r}");
    assert_eq!(r["expiredToken"], "rc=5", "{r}");
    // The SDK refuses an expired token before it connects; the workload API will not sign
    // as another module.
    assert_eq!(r["expiredTokenSdk"], "ValueError", "{r}");
    assert_eq!(r["workloadOther"], "IoTEdgeError", "{r}");

    // Each refusal was counted, and none of them disturbed the victim.
    let stats = edgectl(&data, &["stats"])?;
    assert_eq!(stats["auth_refused"], 3, "{stats}");
    let log = plain_log(&edged);
    for reason in ["reason=\"bad_signature\"", "reason=\"expired_token\""] {
        assert!(log.contains(reason), "{reason} not logged");
    }
    let r = invoke(&data, "pyvictim", "echo", &json!({"ok": true})).await?;
    assert_eq!(r["payload"], json!({"ok": true}), "{r}");
    assert_eq!(edged.terminate(Duration::from_secs(60)).await?, Some(0));
    Ok(())
}
