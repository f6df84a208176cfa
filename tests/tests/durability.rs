//! kill -9 edged mid-stream: every message the hub acknowledged is delivered after restart, in
//! order (at least once).

use anyhow::Result;
use edge_e2e::{connect_as, identity_module, manifest, write_manifest};
use edge_sdk::Message;
use edge_test_utils::{Edged, wait_until};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_loses_no_acknowledged_message() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let m = manifest(
        json!({"sender": identity_module(1), "receiver": identity_module(1)}),
        json!({"r": "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/in\")"}),
        &[],
    );
    let path = write_manifest(tmp.path(), "deployment.json", &m)?;
    let mut edged = Edged::start(&path, &data, &[]).await?;
    let keys = data.join("keys");
    wait_until("module keys", Duration::from_secs(20), || {
        let ok = keys.join("sender.json").exists() && keys.join("receiver.json").exists();
        async move { ok.then_some(()) }
    })
    .await?;

    let sender = connect_as(&data, &edged.endpoints.hub, "sender")?;
    tokio::time::timeout(Duration::from_secs(20), sender.wait_connected()).await?;
    const ACKED: u32 = 1000;
    for i in 0..ACKED {
        sender.send("out", Message::new(i.to_string())).await?;
    }
    assert!(
        sender.flush(Duration::from_secs(30)).await,
        "hub did not acknowledge the first batch"
    );
    // A second batch is still in flight when edged dies.
    for i in ACKED..ACKED + 500 {
        if sender
            .send("out", Message::new(i.to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let modules = edged.children();
    assert_eq!(modules.len(), 2, "edged should run both modules");
    edged.kill9().await?;
    sender.shutdown(Duration::from_millis(50)).await;
    // The modules die with edged (parent-death signal): no orphan would compete with the
    // instances the next edged starts.
    wait_until(
        "modules to exit after edged died",
        Duration::from_secs(20),
        || {
            let left: Vec<u32> = modules
                .iter()
                .copied()
                .filter(|p| edge_test_utils::is_alive(*p))
                .collect();
            async move { left.is_empty().then_some(()) }
        },
    )
    .await?;

    let edged = Edged::start(&path, &data, &[]).await?;
    let receiver = connect_as(&data, &edged.endpoints.hub, "receiver")?;
    let mut input = receiver.input("in").expect("first receiver");
    let mut seen: Vec<u32> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.iter().filter(|v| **v < ACKED).count() < ACKED as usize {
        let d = tokio::time::timeout_at(deadline, input.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {ACKED} acknowledged messages came back; log:\n{}",
                    seen.len(),
                    edged.log()
                )
            })?
            .ok_or_else(|| anyhow::anyhow!("receiver closed"))?;
        let v: u32 = std::str::from_utf8(&d.message.body)?.parse()?;
        d.ack().await?;
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    let acked: Vec<u32> = seen.iter().copied().filter(|v| *v < ACKED).collect();
    assert_eq!(
        acked,
        (0..ACKED).collect::<Vec<_>>(),
        "acknowledged messages lost or out of order"
    );
    receiver.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
