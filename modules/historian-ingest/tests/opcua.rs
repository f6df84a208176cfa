//! The live OPC UA source against the simulated DCS (`tools/dcs-sim`, in-process, 127.0.0.1
//! port 0): samples carry the values the server holds, one sample per publish, across a
//! server restart; a node the server does not have is refused naming its config field.
#![allow(clippy::unwrap_used)] // test helpers

use dcs_sim::{DcsConfig, DcsServer};
use historian_ingest::{
    FileReader, IngestConfig, LiveEvent, LiveSource, OpcUaSource, Sample, SourceConfig, TepLayout,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// How long any one expected event may take (generous: debug builds on a shared machine).
const WAIT: Duration = Duration::from_secs(60);

fn template_pki() -> &'static PathBuf {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let d = tempfile::tempdir().unwrap().keep();
        dcs_sim::provision_pki(&d).unwrap();
        d
    })
}

/// A server PKI in `dir`, copied from a template (key generation is slow in debug builds).
fn pki_in(dir: &Path) -> PathBuf {
    let pki = dir.join("server-pki");
    for f in ["own/cert.der", "private/private.pem"] {
        let to = pki.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(template_pki().join(f), to).unwrap();
    }
    pki
}

async fn sim(dir: &Path, port: u16) -> DcsServer {
    DcsServer::start(DcsConfig::new(port, pki_in(dir)))
        .await
        .unwrap()
}

/// The first rows of `data/tep/d01_te.dat`, read with the historian's own reader.
fn rows(n: usize) -> Vec<Vec<f64>> {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tep/d01_te.dat");
    let mut r = FileReader::tep(&f, TepLayout::Rows, false);
    (0..n)
        .map(|_| {
            let row = r.next_row().unwrap().unwrap();
            row.values.into_iter().map(Option::unwrap).collect()
        })
        .collect()
}

fn source(v: Value) -> OpcUaSource {
    let c: IngestConfig = edge_sdk::parse_config(&json!({ "source": v })).unwrap();
    match c.source {
        SourceConfig::Opcua(o) => o,
        other => panic!("not opcua: {other:?}"),
    }
}

fn tep_source(server: &DcsServer, dir: &Path) -> OpcUaSource {
    source(json!({
        "type": "opcua",
        "endpoint": server.endpoint_url(),
        "tep": {"namespace": server.namespace_index()},
        "samplingInterval": "20ms",
        "runId": "dcs",
        "reconnectInitial": "50ms",
        "reconnectMax": "200ms",
        "pkiDir": dir.join("client-pki"),
    }))
}

async fn next(src: &mut LiveSource) -> LiveEvent {
    tokio::time::timeout(WAIT, src.next())
        .await
        .expect("an event in time")
        .expect("the source is running")
}

fn values(s: &Sample) -> Vec<f64> {
    s.values
        .iter()
        .map(|v| v.expect("every tag present"))
        .collect()
}

/// Samples until one carries `want`; every sample before it must carry `before` (nothing
/// torn, nothing invented). Returns that sample.
async fn sample_with(src: &mut LiveSource, want: &[f64], before: Option<&[f64]>) -> Sample {
    loop {
        match next(src).await {
            LiveEvent::Sample(s) => {
                let got = values(&s);
                if got == want {
                    return s;
                }
                if let Some(b) = before {
                    assert_eq!(
                        got, b,
                        "sample {} is neither the old nor the new row",
                        s.index
                    );
                }
            }
            LiveEvent::Subscribed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_carry_the_replayed_rows_and_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows(6);
    let server = sim(dir.path(), 0).await;
    server.set_sample(&rows[0]).unwrap();
    let mut src = LiveSource::start(tep_source(&server, dir.path()));

    // The first publish brings every tag's current value: row 1 of the file.
    let first = sample_with(&mut src, &rows[0], None).await;
    assert_eq!(&*first.run_id, "dcs");
    assert_eq!(first.tags.len(), 52);
    assert_eq!(first.tags[0], "XMEAS(1)");
    assert_eq!(first.tags[41], "XMV(1)");
    assert_eq!(first.tags[51], "XMV(11)");
    let mut last = first.clone();
    for i in 1..4 {
        server.set_sample(&rows[i]).unwrap();
        let s = sample_with(&mut src, &rows[i], Some(&rows[i - 1])).await;
        assert!(s.index > last.index, "indexes grow");
        assert!(s.ts > last.ts, "ts is the server time of the new values");
        last = s;
    }
    // The message the module sends for it.
    let m = last.to_message();
    let body: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(body["runId"], "dcs");
    assert_eq!(body["quality"], "good");
    assert_eq!(body["values"]["XMEAS(1)"], json!(rows[3][0]));
    assert_eq!(body["values"]["XMV(11)"], json!(rows[3][51]));
    assert_eq!(
        body["ts"],
        humantime::format_rfc3339_millis(last.ts).to_string()
    );
    assert!(body["ingestedAt"].is_string());

    // The server goes away: the source says so, then reconnects to the new one.
    let port = server.port();
    server.stop().await;
    loop {
        match next(&mut src).await {
            LiveEvent::Disconnected { .. } => break,
            LiveEvent::Sample(s) => assert_eq!(values(&s), rows[3]),
            other => panic!("unexpected {other:?}"),
        }
    }
    let server = sim(dir.path(), port).await;
    server.set_sample(&rows[5]).unwrap();
    let s = loop {
        match next(&mut src).await {
            LiveEvent::Sample(s) => break s,
            LiveEvent::Disconnected { .. } | LiveEvent::Subscribed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(values(&s), rows[5], "the new server's values");
    assert!(s.index > last.index, "indexes go on across reconnects");
    drop(src);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_server_lacks_is_refused_naming_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = sim(dir.path(), 0).await;
    let ns = server.namespace_index();
    let mut src = LiveSource::start(source(json!({
        "type": "opcua",
        "endpoint": server.endpoint_url(),
        "nodes": [
            {"nodeId": format!("ns={ns};s=TEP.XMEAS(1)"), "tag": "feed"},
            {"nodeId": format!("ns={ns};s=TEP.NoSuchTag"), "tag": "nothing"},
        ],
        "pkiDir": dir.path().join("client-pki"),
    })));
    loop {
        match next(&mut src).await {
            LiveEvent::Refused {
                field,
                node_id,
                status,
            } => {
                assert_eq!(field, "source.nodes[1].nodeId");
                assert_eq!(node_id, format!("ns={ns};s=TEP.NoSuchTag"));
                assert!(status.contains("BadNodeIdUnknown"), "{status}");
                break;
            }
            LiveEvent::Sample(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let end = tokio::time::timeout(WAIT, src.next()).await.unwrap();
    assert_eq!(end, None, "a refused source stops");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retried_with_back_off() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago and has no server now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut src = LiveSource::start(source(json!({
        "type": "opcua",
        "endpoint": format!("opc.tcp://127.0.0.1:{port}/"),
        "tep": {"namespace": 2},
        "reconnectInitial": "10ms",
        "reconnectMax": "40ms",
        "pkiDir": dir.path().join("client-pki"),
    })));
    let mut delays = Vec::new();
    while delays.len() < 4 {
        match next(&mut src).await {
            LiveEvent::Disconnected { retry_in, .. } => delays.push(retry_in),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        delays,
        [10, 20, 40, 40].map(Duration::from_millis).to_vec(),
        "doubling up to reconnectMax"
    );
}
