//! dcs-sim over real OPC UA: the Python `asyncua` client (independent implementation) browses,
//! reads replayed measurements and writes a setpoint; the write log and the range check work.

use dcs_sim::{DcsConfig, DcsServer, tags};
use opcua::types::Variant;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn template_pki() -> &'static PathBuf {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let d = tempfile::tempdir().expect("tmp").keep();
        dcs_sim::provision_pki(&d).expect("pki");
        d
    })
}

fn pki_in(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    for f in ["own/cert.der", "private/private.pem"] {
        let to = pki.join(f);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(template_pki().join(f), to).expect("copy");
    }
    pki
}

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: create it with `python3 -m venv .venv && .venv/bin/pip install asyncua` in the repo root",
        p.display()
    );
    p
}

async fn asyncua(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_with_asyncua.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .arg(endpoint)
        .args(args)
        .output()
        .await
        .expect("run python");
    assert!(
        out.status.success(),
        "asyncua client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from the python client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_asyncua_browses_reads_and_writes() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = DcsServer::start(DcsConfig::new(0, pki_in(dir.path())))
        .await
        .expect("start");
    let mut row: Vec<f64> = (0..52).map(|i| f64::from(i) + 0.25).collect();
    row[0] = 0.2504;
    server.set_sample(&row).expect("sample");

    let sp = tags::xmv_sp_id(10);
    let r = asyncua(
        server.endpoint_url(),
        &[
            "--write",
            &format!("{sp}=33.5"),
            "TEP.XMEAS(1)",
            "TEP.XMEAS(41)",
            &sp,
            tags::ids::REMOTE_ENABLE,
        ],
    )
    .await;
    assert_eq!(r["ns"], serde_json::json!(server.namespace_index()));
    let browse: Vec<&str> = r["browse"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(browse, ["Advisory", "Interlock", "TEP", "WriteLog"]);
    assert_eq!(r["values"]["TEP.XMEAS(1)"], serde_json::json!(0.2504));
    assert_eq!(r["values"]["TEP.XMEAS(41)"], serde_json::json!(40.25));
    assert_eq!(r["values"][&sp], serde_json::json!(33.5));
    assert_eq!(
        r["values"][tags::ids::REMOTE_ENABLE],
        serde_json::json!(false)
    );

    assert_eq!(server.value(&sp), Some(Variant::Double(33.5)));
    let log = server.write_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        log[0].node,
        format!("ns={};s={sp}", server.namespace_index())
    );
    assert_eq!(log[0].status, "Good");

    // Out of the engineering range: refused by the simulator, logged.
    let out = tokio::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_with_asyncua.py"))
        .arg(server.endpoint_url())
        .args(["--write", &format!("{sp}=150")])
        .output()
        .await
        .expect("run python");
    assert!(!out.status.success(), "an out-of-range write must fail");
    assert_eq!(server.value(&sp), Some(Variant::Double(33.5)));
    let log = server.write_log();
    assert_eq!(log.len(), 2);
    assert!(log[1].status.contains("BadOutOfRange"), "{:?}", log[1]);

    // Interlock and tamper switches.
    server.set_remote_enable(true).expect("interlock");
    server.tamper_next_write(1.0);
    let r = asyncua(
        server.endpoint_url(),
        &[
            "--write",
            &format!("{sp}=20"),
            &sp,
            tags::ids::REMOTE_ENABLE,
        ],
    )
    .await;
    assert_eq!(r["values"][&sp], serde_json::json!(21.0));
    assert_eq!(
        r["values"][tags::ids::REMOTE_ENABLE],
        serde_json::json!(true)
    );
    assert!(server.write_log()[2].tampered);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_the_endpoint_first() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("tmp");
    pki_in(dir.path());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dcs-sim"))
        .args(["--port", "0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = lines.next_line().await.expect("read").expect("a line");
    assert!(first.starts_with("opc.tcp://127.0.0.1:"), "{first}");
    let r = asyncua(&first, &["TEP.XMV(1).SP"]).await;
    assert_eq!(
        r["values"]["TEP.XMV(1).SP"],
        serde_json::json!(tags::MANIPULATED[0].initial)
    );
    child.kill().await.expect("kill");
}
