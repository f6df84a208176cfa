//! A module built on the SDK (the `echo` example) under a real edged: it receives its twin,
//! sends and receives through routes, answers a method, rejects an invalid desired patch and
//! keeps its config, survives an edged restart, and stops cleanly on SIGTERM.

use anyhow::Result;
use edge_e2e::{connect_as, identity_module, manifest, process_module, write_manifest};
use edge_sdk::{Input, Message, ModuleClient};
use edge_test_utils::{Edged, target_dir, wait_until, workspace_bin};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn echo_manifest(tag: &str) -> Result<Value> {
    let echo = target_dir().join("examples/echo");
    anyhow::ensure!(echo.is_file(), "{} not built", echo.display());
    Ok(manifest(
        json!({
            "echo": process_module(&echo, &[], 1, "on-failure"),
            "sender": identity_module(2),
            "receiver": identity_module(2),
        }),
        json!({
            "in": "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/echo/inputs/in\")",
            "out": "FROM /messages/modules/echo/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/back\")",
        }),
        &[("echo", json!({"tag": tag}))],
    ))
}

fn edgectl_json(data: &Path, args: &[&str]) -> Result<Value> {
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

async fn round_trip(sender: &ModuleClient, input: &mut Input, body: &str) -> Result<Message> {
    sender.send("out", Message::new(body.to_owned())).await?;
    let d = tokio::time::timeout(Duration::from_secs(20), input.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("receiver closed"))?;
    let m = d.message.clone();
    d.ack().await?;
    Ok(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_module_under_a_real_edged() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let path = write_manifest(tmp.path(), "deployment.json", &echo_manifest("t1")?)?;
    let mut edged = Edged::start(&path, &data, &[]).await?;
    wait_until("keys", Duration::from_secs(20), || {
        let ok = data.join("keys/sender.json").exists() && data.join("keys/receiver.json").exists();
        async move { ok.then_some(()) }
    })
    .await?;

    // The echo module got its twin: it reports a valid config.
    wait_until("echo configured", Duration::from_secs(30), || {
        let twin = edgectl_json(&data, &["twin", "echo"]).ok();
        async move { (twin?["reported"]["configStatus"]["status"] == "ok").then_some(()) }
    })
    .await?;

    let sender = connect_as(&data, &edged.endpoints.hub, "sender")?;
    let receiver = connect_as(&data, &edged.endpoints.hub, "receiver")?;
    let mut back = receiver.input("back").expect("input");
    let m = round_trip(&sender, &mut back, "hello").await?;
    assert_eq!(&m.body[..], b"hello");
    assert_eq!(m.property("tag"), Some("t1"));
    assert_eq!(
        m.system.get(edge_sdk::SysProp::ConnectionModuleId),
        Some("echo")
    );

    // A direct method through edgectl.
    let r = edgectl_json(&data, &["invoke", "echo", "ping", "{\"n\": 1}"])?;
    assert_eq!(r["status"], 200);
    assert_eq!(r["payload"]["pong"]["n"], 1);
    let r = edgectl_json(&data, &["invoke", "echo", "nope", "{}"])?;
    assert_eq!(r["status"], 404);

    // An invalid desired config (empty tag) is rejected and the old one kept.
    let bad = write_manifest(tmp.path(), "v2.json", &echo_manifest("")?)?;
    let out = std::process::Command::new(workspace_bin("edgectl")?)
        .arg("--data-dir")
        .arg(&data)
        .args(["deploy", bad.to_str().unwrap_or_default()])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("echo rejects the patch", Duration::from_secs(30), || {
        let twin = edgectl_json(&data, &["twin", "echo"]).ok();
        async move {
            let t = twin?;
            (t["reported"]["configStatus"]["status"] == "rejected").then_some(())
        }
    })
    .await?;
    let twin = edgectl_json(&data, &["twin", "echo"])?;
    assert!(
        twin["reported"]["configStatus"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("tag"),
        "{twin}"
    );
    let m = round_trip(&sender, &mut back, "still").await?;
    assert_eq!(
        m.property("tag"),
        Some("t1"),
        "the last good config must stay"
    );

    // edged restarts: the module (restarted by the new edged) and our clients reconnect.
    assert_eq!(edged.terminate(Duration::from_secs(30)).await?, Some(0));
    let echo_log = std::fs::read_to_string(data.join("logs/echo.log"))?;
    assert!(
        echo_log.contains("SIGTERM received"),
        "echo did not see SIGTERM: {echo_log}"
    );
    assert!(
        echo_log.contains("Stopped."),
        "echo did not stop cleanly: {echo_log}"
    );
    let edged = Edged::start(&path, &data, &[]).await?;
    let sender = connect_as(&data, &edged.endpoints.hub, "sender")?;
    let receiver2 = connect_as(&data, &edged.endpoints.hub, "receiver")?;
    let mut back2 = receiver2.input("back").expect("input");
    receiver.shutdown(Duration::from_millis(10)).await;
    let m = round_trip(&sender, &mut back2, "after restart").await?;
    assert_eq!(&m.body[..], b"after restart");
    Ok(())
}

/// A module whose stderr nobody reads any more (edged was killed: its end of the log pipe is
/// closed) still stops on SIGTERM. Every log write fails there; tracing used to report that
/// with `eprintln!`, which panicked in the task that handles SIGTERM, and the module ran on
/// as an orphan.
#[tokio::test]
async fn a_module_with_a_dead_log_pipe_still_stops_on_sigterm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A hub address nobody listens on: the module keeps trying to connect (and logging).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let key = edge_core::sas::ModuleKey::generate()?;
    let mut child = tokio::process::Command::new(target_dir().join("examples/echo"))
        .env_clear()
        .env("IOTEDGE_DEVICEID", "dev")
        .env("IOTEDGE_MODULEID", "echo")
        .env("IOTEDGE_IOTHUBHOSTNAME", "localhost")
        .env("EDGE_MODULE_KEY", key.expose_base64())
        .env("EDGE_HUB_ADDR", format!("127.0.0.1:{port}"))
        .env("EDGE_MODULE_DATA_DIR", dir.path())
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().expect("running");
    // Close our ends of its log pipes, as a dead edged would.
    drop(child.stdout.take());
    drop(child.stderr.take());
    // Wait until its SIGTERM handler is installed (before that, SIGTERM would just kill it
    // and prove nothing).
    wait_until(
        "echo to install its SIGTERM handler",
        Duration::from_secs(20),
        || async {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            let mask = u64::from_str_radix(caught.trim(), 16).ok()?;
            (mask & (1 << (15 - 1)) != 0).then_some(())
        },
    )
    .await?;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .map_err(|_| {
            anyhow::anyhow!("echo with a dead log pipe did not stop within 30 s of SIGTERM")
        })??;
    // It stops by itself, not by the signal's default action (the handler is installed).
    assert!(status.code().is_some(), "{status:?}");
    Ok(())
}
