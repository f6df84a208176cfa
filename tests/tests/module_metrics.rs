//! Module metrics through the SDK into edged's `/metrics`: the `echo` example (a real module
//! process) counts what it echoes, a client in this test reports its own counter, and a scrape
//! of edged's `/metrics` (address from `data_dir/endpoints.json`) parses and holds both with
//! a `module` label, next to the deployment and upstream-link series.

use anyhow::{Context, Result};
use edge_e2e::{connect_as, identity_module, manifest, process_module, write_manifest};
use edge_sdk::Message;
use edge_test_utils::{Edged, target_dir, wait_until};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` over a plain TCP connection; the body.
async fn scrape(addr: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Ok(body.to_owned())
}

/// Parses the Prometheus text format into `series → value` (series = name plus labels as
/// written); every sample line must parse, and every series must have a `# TYPE`.
fn parse(text: &str) -> Result<BTreeMap<String, f64>> {
    let mut types = BTreeMap::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("bad TYPE line")?;
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context("no value")?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in `{line}`"))?;
        let name = series.split('{').next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        anyhow::ensure!(types.contains_key(family), "no # TYPE for `{line}`");
        out.insert(series.to_owned(), value);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_metrics_are_served_with_a_module_label() -> Result<()> {
    let echo = target_dir().join("examples/echo");
    anyhow::ensure!(echo.is_file(), "{} not built", echo.display());
    let mut echo_spec = process_module(&echo, &[], 1, "on-failure");
    echo_spec["env"] = json!({"EDGE_METRICS_INTERVAL": {"value": "200ms"}});
    let m = manifest(
        json!({"echo": echo_spec, "sender": identity_module(2), "receiver": identity_module(2)}),
        json!({
            "in": "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/echo/inputs/in\")",
            "out": "FROM /messages/modules/echo/outputs/out INTO BrokeredEndpoint(\"/modules/receiver/inputs/back\")",
        }),
        &[("echo", json!({"tag": "m"}))],
    );
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let path = write_manifest(tmp.path(), "deployment.json", &m)?;
    // An upstream broker that is not there: the link's series exist and say "not connected".
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let url = format!("mqtt://{closed}");
    let edged = Edged::start(&path, &data, &[("EDGED_UPSTREAM__URL", url.as_str())]).await?;
    let metrics_addr = edged
        .endpoints
        .metrics
        .clone()
        .context("no metrics address in endpoints.json")?;
    wait_until("keys", Duration::from_secs(20), || {
        let ok = data.join("keys/sender.json").exists() && data.join("keys/receiver.json").exists();
        async move { ok.then_some(()) }
    })
    .await?;

    let sender = connect_as(&data, &edged.endpoints.hub, "sender")?;
    let receiver = connect_as(&data, &edged.endpoints.hub, "receiver")?;
    let mut back = receiver.input("back").context("input")?;
    for i in 0..3 {
        sender
            .send("out", Message::new(format!("message {i}")))
            .await?;
        let d = tokio::time::timeout(Duration::from_secs(30), back.recv())
            .await?
            .context("receiver closed")?;
        d.ack().await?;
    }
    // This client's own counter, reported explicitly (its interval is the default 5 s).
    sender.wait_connected().await;
    sender.metrics().counter("probe.hits").add(5);
    assert!(sender.report_metrics(), "a connected client reports");

    let want = [
        (r#"edge_module_messages_echoed_total{module="echo"}"#, 3.0),
        (r#"edge_module_body_bytes_count{module="echo"}"#, 3.0),
        (
            r#"edge_module_body_bytes_bucket{module="echo",le="16"}"#,
            3.0,
        ),
        (r#"edge_module_probe_hits_total{module="sender"}"#, 5.0),
    ];
    let series = wait_until("module series on /metrics", Duration::from_secs(30), || {
        let addr = metrics_addr.clone();
        async move {
            let s = parse(&scrape(&addr).await.ok()?).ok()?;
            want.iter().all(|(k, v)| s.get(*k) == Some(v)).then_some(s)
        }
    })
    .await?;

    // The whole scrape parses (checked above); the hub counted the reports.
    assert!(series[r#"edgehub_module_metrics_reports_total{module="echo"}"#] >= 1.0);
    assert!(series[r#"edgehub_module_metrics_reports_total{module="sender"}"#] >= 1.0);
    // The hub's own series: per route, per endpoint, per module.
    assert_eq!(series[r#"edgehub_messages_routed_total{route="in"}"#], 3.0);
    assert_eq!(series[r#"edgehub_messages_routed_total{route="out"}"#], 3.0);
    assert_eq!(
        series[r#"edgehub_messages_received_total{module="sender"}"#],
        3.0
    );
    assert_eq!(
        series[r#"edgehub_messages_sent_total{endpoint="module/receiver/inputs/back"}"#],
        3.0
    );
    assert_eq!(
        series[r#"edgehub_queue_length{endpoint="module/receiver/inputs/back"}"#],
        0.0
    );
    assert!(
        series
            .contains_key(r#"edgehub_queue_oldest_age_seconds{endpoint="module/echo/inputs/in"}"#)
    );
    assert!(series["edgehub_connected_modules"] >= 3.0, "{series:?}");
    assert!(series.contains_key(r#"edgeagent_module_status{module="echo",status="running"}"#));
    assert_eq!(
        series[r#"edgeagent_module_restarts_total{module="echo"}"#],
        0.0
    );
    // Deployment and upstream-link series.
    assert!(
        series[r#"edgeagent_deployments_total{outcome="applied"}"#] >= 1.0,
        "{series:?}"
    );
    assert_eq!(
        series[r#"edgeagent_deployments_total{outcome="refused"}"#],
        0.0
    );
    assert!(series["edgeagent_deployment_generation"] >= 1.0);
    // The agent's per-process figures for the module it runs.
    assert!(
        series[r#"edgeagent_module_resident_memory_bytes{module="echo"}"#] > 1_000_000.0,
        "{series:?}"
    );
    assert!(series.contains_key(r#"edgeagent_module_cpu_seconds{module="echo"}"#));
    assert_eq!(series["edgeupstream_connected"], 0.0);
    assert_eq!(series["edgeupstream_messages_sent_total"], 0.0);
    assert!(series.contains_key("edgeupstream_reconnects_total"));
    Ok(())
}
