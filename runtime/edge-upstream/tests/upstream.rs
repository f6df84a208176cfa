//! The upstream link against a real Mosquitto and a real edged: deployments from the backend
//! converge or are refused with their errors, telemetry and reported properties survive a
//! broker outage (at least once, in order, merged), direct methods and desired patches reach
//! the module.

mod support;

use anyhow::{Context, Result};
use edge_e2e::{connect_as, identity_module, manifest, write_manifest};
use edge_sdk::Message;
use edge_test_utils::{Edged, wait_until};
use edge_upstream::{Backend, backend::Received, topics};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::Mosquitto;
use tokio::sync::broadcast;

const DEVICE: &str = "edge-device";
const WAIT: Duration = Duration::from_secs(60);

fn sender_manifest() -> Value {
    manifest(
        json!({"sender": identity_module(1)}),
        json!({"up": "FROM /messages/modules/sender/* INTO $upstream"}),
        &[("sender", json!({}))],
    )
}

async fn start_edged(dir: &Path, m: &Value, broker: &Mosquitto) -> Result<Edged> {
    let path = write_manifest(dir, "deployment.json", m)?;
    let url = broker.url();
    Edged::start(
        &path,
        &dir.join("data"),
        &[
            ("EDGED_UPSTREAM__URL", url.as_str()),
            ("EDGED_UPSTREAM__RECONNECT_DELAY", "200ms"),
            ("EDGED_UPSTREAM__REPORT_INTERVAL", "100ms"),
        ],
    )
    .await
}

async fn status_where(
    b: &Backend,
    what: &str,
    ok: impl Fn(&edge_upstream::DeviceStatus) -> bool,
) -> Result<edge_upstream::DeviceStatus> {
    wait_until(what, WAIT, || async {
        let st = b.status(DEVICE).await.ok()?;
        ok(&st).then_some(st)
    })
    .await
}

fn agent(st: &edge_upstream::DeviceStatus) -> &Value {
    st.reported.get("$edgeAgent").unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_deploys_device_converges_and_refusals_report_errors() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = Mosquitto::start(&tmp.path().join("mosquitto"), false).await?;
    let _edged = start_edged(tmp.path(), &sender_manifest(), &broker).await?;
    let b = Backend::connect(&broker.url(), "test-backend", None).await?;

    let v1 = manifest(
        json!({"alpha": identity_module(1), "beta": identity_module(2)}),
        json!({}),
        &[],
    );
    assert_eq!(b.deploy(DEVICE, &v1, None).await?, 1);
    let st = status_where(&b, "v1 running", |st| {
        let a = agent(st);
        st.applied_version() == Some(1)
            && a["lastDesiredDeployment"]["code"] == 200
            && a["modules"]["alpha"]["runtimeStatus"] == "running"
            && a["modules"]["beta"]["runtimeStatus"] == "running"
            && a["modules"].get("sender").is_none()
    })
    .await?;
    assert_eq!(st.desired_version, Some(1));
    assert_eq!(st.summary()["modules"]["alpha"]["version"], "1.0");

    // A refused deployment reports every error; the device keeps running v1.
    let bad =
        json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "9"}}}});
    assert_eq!(b.deploy(DEVICE, &bad, None).await?, 2);
    let st = status_where(&b, "v2 refused", |st| st.applied_version() == Some(2)).await?;
    let last = &agent(&st)["lastDesiredDeployment"];
    assert_eq!(last["description"], "refused", "{last}");
    assert_ne!(last["code"], 200, "{last}");
    let errors = last["errors"].as_array().context("errors")?;
    assert!(errors.len() >= 2, "{last}");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap_or_default().contains("schemaVersion")),
        "{last}"
    );
    assert_eq!(agent(&st)["modules"]["alpha"]["runtimeStatus"], "running");

    // A stale version is refused by the backend itself.
    assert!(b.deploy(DEVICE, &v1, Some(2)).await.is_err());
    Ok(())
}

/// Every received telemetry `seq` property, in arrival order.
fn seqs(got: &[Received]) -> Vec<u64> {
    got.iter()
        .filter(|(t, _)| t.starts_with("devices/"))
        .filter_map(|(t, _)| {
            let bag = t.rsplit_once("/messages/events/")?.1;
            bag.split('&')
                .find_map(|kv| kv.strip_prefix("seq="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

async fn drain(rx: &mut broadcast::Receiver<Received>, into: &mut Vec<Received>) {
    while let Ok(m) = rx.try_recv() {
        into.push(m);
    }
}

async fn collect_until(
    rx: &mut broadcast::Receiver<Received>,
    got: &mut Vec<Received>,
    what: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(got) {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| format!("timed out waiting for {what}"))??;
        got.push(m);
    }
    Ok(())
}

fn patches(got: &[Received]) -> Vec<Value> {
    got.iter()
        .filter(|(t, _)| t.contains("/sender/twin/PATCH/properties/reported/"))
        .filter_map(|(_, p)| serde_json::from_slice(p).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_no_telemetry_and_merges_reported_changes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut broker = Mosquitto::start(&tmp.path().join("mosquitto"), true).await?;
    let edged = start_edged(tmp.path(), &sender_manifest(), &broker).await?;
    // A persistent backend session: the broker keeps its subscriptions across its restart.
    let b = Backend::connect_with(&broker.url(), "test-backend", None, false).await?;
    let mut rx = b
        .subscribe(&[
            topics::telemetry_filter(DEVICE),
            format!("edge/{DEVICE}/sender/twin/PATCH/properties/reported/#"),
        ])
        .await?;
    let data = tmp.path().join("data");
    wait_until("sender key", WAIT, || {
        let ok = data.join("keys/sender.json").exists();
        async move { ok.then_some(()) }
    })
    .await?;
    let sender = connect_as(&data, &edged.endpoints.hub, "sender")?;
    sender.wait_connected().await;
    let mut got = Vec::new();

    for i in 1..=20u64 {
        sender
            .send(
                "out",
                Message::new(format!("{{\"i\":{i}}}")).with_property("seq", i.to_string()),
            )
            .await?;
    }
    collect_until(&mut rx, &mut got, "seq 20", |g| seqs(g).contains(&20)).await?;
    sender.patch_reported(&json!({"a": 1})).await?;
    collect_until(&mut rx, &mut got, "reported a=1", |g| {
        patches(g).iter().any(|p| p["a"] == 1)
    })
    .await?;

    // The broker goes away; telemetry keeps flowing and the twin changes twice.
    broker.stop().await?;
    for i in 21..=60u64 {
        sender
            .send(
                "out",
                Message::new(format!("{{\"i\":{i}}}")).with_property("seq", i.to_string()),
            )
            .await?;
    }
    assert!(
        sender.flush(WAIT).await,
        "the hub did not take the messages"
    );
    sender.patch_reported(&json!({"b": 2})).await?;
    sender.patch_reported(&json!({"a": 3})).await?;
    let before = got.len();
    broker.restart().await?;

    let r = collect_until(&mut rx, &mut got, "seq 60 and the merged patch", |g| {
        seqs(g).contains(&60) && patches(&g[before..]).iter().any(|p| p["a"] == 3)
    })
    .await;
    r.with_context(|| {
        format!(
            "seqs {:?}, patches {:?}; mosquitto log:\n{}\nedged log:\n{}",
            seqs(&got),
            patches(&got),
            std::fs::read_to_string(tmp.path().join("mosquitto/mosquitto.log")).unwrap_or_default(),
            edged.log()
        )
    })?;
    drain(&mut rx, &mut got).await;

    // At least once, in order: the first arrivals are exactly 1..=60.
    let mut first = Vec::new();
    for s in seqs(&got) {
        if !first.contains(&s) {
            first.push(s);
        }
    }
    assert_eq!(
        first,
        (1..=60).collect::<Vec<_>>(),
        "arrivals: {:?}",
        seqs(&got)
    );
    // The offline changes arrive as one merged patch.
    let after = patches(&got[before..]);
    assert!(
        after.iter().any(|p| p["a"] == 3 && p["b"] == 2),
        "patches after the outage: {after:?}"
    );
    assert!(
        !after.iter().any(|p| p["b"] == 2 && p.get("a").is_none()),
        "{after:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_desired_patches_reach_the_module() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = Mosquitto::start(&tmp.path().join("mosquitto"), false).await?;
    let edged = start_edged(tmp.path(), &sender_manifest(), &broker).await?;
    let b = Backend::connect(&broker.url(), "test-backend", None).await?;
    // The link is up (and subscribed) once the device reports.
    status_where(&b, "the device reports", |st| {
        st.reported.contains_key("$edgeAgent")
    })
    .await?;
    let data = tmp.path().join("data");
    wait_until("sender key", WAIT, || {
        let ok = data.join("keys/sender.json").exists();
        async move { ok.then_some(()) }
    })
    .await?;
    let sender = connect_as(&data, &edged.endpoints.hub, "sender")?;
    sender.on_method("ping", |v| async move { Ok(json!({"pong": v})) });
    sender.wait_connected().await;

    let (status, answer) = wait_until("method answered", WAIT, || async {
        let r = b
            .invoke(
                DEVICE,
                "sender",
                "ping",
                &json!({"n": 1}),
                Duration::from_secs(10),
            )
            .await
            .ok()?;
        (r.0 == 200).then_some(r)
    })
    .await?;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"pong": {"n": 1}}));
    let (status, answer) = b
        .invoke(
            DEVICE,
            "nobody",
            "ping",
            &json!({}),
            Duration::from_secs(20),
        )
        .await?;
    assert_eq!(status, 404, "{answer}");

    let mut desired = sender.desired();
    b.patch_desired(DEVICE, "sender", &json!({"k": "v"}))
        .await?;
    tokio::time::timeout(
        WAIT,
        desired.wait_for(|d| d.as_ref().is_some_and(|d| d["k"] == "v")),
    )
    .await
    .context("desired patch did not reach the module")??;
    Ok(())
}

/// `mqtts://` with certificates both ways: the device and the backend reach a Mosquitto that
/// only speaks TLS and wants a client certificate from the fleet CA; a deployment converges,
/// telemetry arrives. A backend with the wrong CA, or without a certificate, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_broker_with_client_certificates() -> Result<()> {
    use edge_upstream::{BackendError, TlsFiles};
    let tmp = tempfile::tempdir()?;
    let pki = support::Pki::new(&tmp.path().join("pki"))?;
    let broker = Mosquitto::start_tls(&tmp.path().join("mosquitto"), &pki).await?;
    assert!(broker.url().starts_with("mqtts://"));
    let (dev_cert, dev_key) = pki.issue(DEVICE, &[])?;
    let (be_cert, be_key) = pki.issue("backend", &[])?;

    let path = write_manifest(tmp.path(), "deployment.json", &sender_manifest())?;
    let url = broker.url();
    let (ca, dc, dk) = (
        pki.ca.display().to_string(),
        dev_cert.display().to_string(),
        dev_key.display().to_string(),
    );
    let edged = Edged::start(
        &path,
        &tmp.path().join("data"),
        &[
            ("EDGED_UPSTREAM__URL", url.as_str()),
            ("EDGED_UPSTREAM__TLS__CA_FILE", ca.as_str()),
            ("EDGED_UPSTREAM__TLS__CERT_FILE", dc.as_str()),
            ("EDGED_UPSTREAM__TLS__KEY_FILE", dk.as_str()),
            ("EDGED_UPSTREAM__RECONNECT_DELAY", "200ms"),
            ("EDGED_UPSTREAM__REPORT_INTERVAL", "100ms"),
        ],
    )
    .await?;

    let files = TlsFiles {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(be_cert.clone()),
        key_file: Some(be_key.clone()),
    };
    let b = Backend::connect_tls(&url, "test-backend", None, &files, true).await?;
    let mut telemetry = b.subscribe(&[topics::telemetry_filter(DEVICE)]).await?;

    let v1 = manifest(
        json!({"sender": identity_module(1), "alpha": identity_module(2)}),
        json!({"up": "FROM /messages/modules/sender/* INTO $upstream"}),
        &[("sender", json!({}))],
    );
    assert_eq!(b.deploy(DEVICE, &v1, None).await?, 1);
    status_where(&b, "v1 running over TLS", |st| {
        let a = agent(st);
        st.applied_version() == Some(1)
            && a["lastDesiredDeployment"]["code"] == 200
            && a["modules"]["alpha"]["runtimeStatus"] == "running"
    })
    .await?;

    let data = tmp.path().join("data");
    let sender = connect_as(&data, &edged.endpoints.hub, "sender")?;
    sender.wait_connected().await;
    sender
        .send("out", Message::new(r#"{"over":"tls"}"#))
        .await?;
    let prefix = format!("devices/{DEVICE}/messages/events/");
    let body = tokio::time::timeout(WAIT, async {
        loop {
            let (topic, body) = telemetry.recv().await?;
            if topic.starts_with(&prefix) {
                return anyhow::Ok(body);
            }
        }
    })
    .await
    .context("no telemetry over TLS")??;
    assert_eq!(
        serde_json::from_slice::<Value>(&body)?,
        json!({"over": "tls"})
    );

    // Another CA: the broker's certificate does not verify.
    let other = support::Pki::new(&tmp.path().join("other-pki"))?;
    let wrong_ca = TlsFiles {
        ca_file: Some(other.ca.clone()),
        cert_file: Some(be_cert),
        key_file: Some(be_key),
    };
    let e = Backend::connect_tls(&url, "intruder-1", None, &wrong_ca, true).await;
    assert!(matches!(e, Err(BackendError::Connect(_))), "{e:?}");
    // No client certificate: the broker refuses the handshake.
    let no_cert = TlsFiles {
        ca_file: Some(pki.ca.clone()),
        ..TlsFiles::default()
    };
    let e = Backend::connect_tls(&url, "intruder-2", None, &no_cert, true).await;
    assert!(matches!(e, Err(BackendError::Connect(_))), "{e:?}");
    // A missing CA file is named before anything is sent.
    let missing = TlsFiles {
        ca_file: Some(tmp.path().join("missing-ca.pem")),
        ..TlsFiles::default()
    };
    let e = Backend::connect_tls(&url, "x", None, &missing, true).await;
    let text = e.err().map(|e| format!("{:#}", anyhow::Error::from(e)));
    assert!(
        text.as_deref()
            .is_some_and(|t| t.contains("missing-ca.pem")),
        "{text:?}"
    );
    Ok(())
}
