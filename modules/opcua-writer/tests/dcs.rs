//! The writer against the simulated DCS over real OPC UA (127.0.0.1, port 0).

use dcs_sim::{DcsConfig, DcsServer, tags};
use opcua::types::Variant;
use opcua_writer::audit::AuditLog;
use opcua_writer::client::{ClientSettings, OpcuaDcs};
use opcua_writer::config::{DataType, Mapping, WriterConfig};
use opcua_writer::dcs::DcsWriter;
use opcua_writer::engine::{Incoming, Writer};
use opcua_writer::safety::{OnViolation, SetpointLimits};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

const SP: &str = "TEP.XMV(10).SP";

fn template_pki() -> &'static PathBuf {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let d = tempfile::tempdir().expect("tmp").keep();
        dcs_sim::provision_pki(&d).expect("pki");
        d
    })
}

fn pki_in(dir: &Path) -> PathBuf {
    let pki = dir.join("server-pki");
    for f in ["own/cert.der", "private/private.pem"] {
        let to = pki.join(f);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(template_pki().join(f), to).expect("copy");
    }
    pki
}

async fn sim(dir: &Path, port: u16) -> DcsServer {
    let mut c = DcsConfig::new(port, pki_in(dir));
    c.remote_enable = true;
    DcsServer::start(c).await.expect("dcs-sim")
}

fn limits() -> SetpointLimits {
    SetpointLimits {
        low: 0.0,
        high: 60.0,
        on_violation: OnViolation::Clamp,
        max_step: None,
        max_change_per_minute: None,
        deadband: 0.01,
    }
}

fn config(endpoint: &str, sp: SetpointLimits) -> WriterConfig {
    let m = |path: &str, node: &str, dt: DataType| Mapping {
        path: path.into(),
        node: format!("ns=2;s={node}"),
        data_type: dt,
        setpoint: None,
    };
    let mut c = WriterConfig::new(
        endpoint,
        format!("ns=2;s={}", tags::ids::REMOTE_ENABLE),
        vec![
            m("/t2", tags::ids::T2, DataType::Double),
            m("/q", tags::ids::Q, DataType::Double),
            m("/alarm", tags::ids::ALARM, DataType::Boolean),
            m("/contributors", tags::ids::CONTRIBUTORS, DataType::String),
            m("/modelVersion", tags::ids::MODEL_VERSION, DataType::String),
            m("/ts", tags::ids::LAST_UPDATE, DataType::DateTime),
            Mapping {
                setpoint: Some(sp),
                ..m("/sp", SP, DataType::Double)
            },
        ],
    );
    c.allowed_model_versions = vec!["pca-v1".into()];
    c.reconnect_initial = Duration::from_millis(100);
    c.reconnect_max = Duration::from_millis(500);
    c
}

fn msg(sp: f64, t2: f64, age: Duration, version: &str) -> Incoming {
    let ts = humantime::format_rfc3339_millis(SystemTime::now() - age).to_string();
    Incoming {
        body: serde_json::json!({
            "runId": "r1", "sample": 1, "ts": ts, "t2": t2, "q": 1.5, "t2Limit": 20.0, "qLimit": 3.0,
            "alarm": t2 > 20.0, "contributors": [{"name": "XMEAS(9)", "value": 0.7}],
            "modelVersion": version, "sp": sp
        }),
        message_id: format!("m-{t2}"),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    sim: DcsServer,
    dcs: OpcuaDcs,
    writer: Writer,
}

async fn rig_with(sp: SetpointLimits, tweak: impl FnOnce(&mut WriterConfig)) -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = sim(dir.path(), 0).await;
    let mut cfg = config(sim.endpoint_url(), sp);
    tweak(&mut cfg);
    let dcs = OpcuaDcs::start(ClientSettings::from_config(
        &cfg,
        &dir.path().join("writer"),
    ));
    let audit = AuditLog::open(&dir.path().join("writer")).expect("audit");
    let writer = Writer::new(cfg, audit);
    let (c, i) = (dcs.connected(), dcs.interlock());
    wait_for("connected with the interlock on", || {
        *c.borrow() && *i.borrow() == Some(true)
    })
    .await;
    Rig {
        _dir: dir,
        sim,
        dcs,
        writer,
    }
}

async fn rig() -> Rig {
    rig_with(limits(), |_| {}).await
}

fn sp_value(sim: &DcsServer) -> f64 {
    match sim.value(SP) {
        Some(Variant::Double(x)) => x,
        other => panic!("setpoint not a double: {other:?}"),
    }
}

fn outcomes(w: &Writer, node: &str) -> Vec<String> {
    w.audit()
        .recent(1000)
        .expect("audit")
        .into_iter()
        .filter(|r| r.node.ends_with(node))
        .map(|r| r.outcome)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_land_in_the_right_nodes() {
    let mut r = rig().await;
    r.writer
        .handle(&r.dcs, &msg(45.0, 25.5, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(r.sim.value(tags::ids::T2), Some(Variant::Double(25.5)));
    assert_eq!(r.sim.value(tags::ids::Q), Some(Variant::Double(1.5)));
    assert_eq!(r.sim.value(tags::ids::ALARM), Some(Variant::Boolean(true)));
    assert_eq!(
        r.sim.value(tags::ids::MODEL_VERSION),
        Some(Variant::from("pca-v1"))
    );
    assert!(
        matches!(r.sim.value(tags::ids::CONTRIBUTORS), Some(Variant::String(s)) if s.as_ref().contains("XMEAS(9)"))
    );
    assert!(matches!(
        r.sim.value(tags::ids::LAST_UPDATE),
        Some(Variant::DateTime(_))
    ));
    assert_eq!(sp_value(&r.sim), 45.0);
    assert_eq!(r.writer.counters().written, 7, "{:?}", r.writer.counters());
    assert_eq!(r.writer.counters().mismatches, 0);
    let recs = r.writer.audit().recent(10).expect("audit");
    let sp = recs
        .iter()
        .find(|x| x.node.ends_with(SP))
        .expect("sp audited");
    assert_eq!(sp.old, serde_json::json!(tags::MANIPULATED[9].initial));
    assert_eq!(sp.written, serde_json::json!(45.0));
    assert_eq!(sp.model_version, "pca-v1");
    assert_eq!(sp.message_id, "m-25.5");
    assert_eq!(r.sim.write_log().len(), 7);

    // An independent client (Python asyncua) reads what was written.
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: `python3 -m venv .venv && .venv/bin/pip install asyncua` in the repo root",
        py.display()
    );
    let out = tokio::process::Command::new(py)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tools/dcs-sim/tests/read_with_asyncua.py"),
        )
        .arg(r.sim.endpoint_url())
        .args([SP, tags::ids::T2, tags::ids::MODEL_VERSION])
        .output()
        .await
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["values"][SP], serde_json::json!(45.0));
    assert_eq!(v["values"][tags::ids::T2], serde_json::json!(25.5));
    assert_eq!(
        v["values"][tags::ids::MODEL_VERSION],
        serde_json::json!("pca-v1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_violations_are_clamped_or_refused_and_advisory_only_skips_setpoints() {
    let mut r = rig().await;
    r.writer
        .handle(&r.dcs, &msg(80.0, 1.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(sp_value(&r.sim), 60.0);
    assert_eq!(r.writer.counters().clamped, 1);

    let mut cfg = r.writer.config().clone();
    cfg.mappings[6].setpoint.as_mut().expect("sp").on_violation = OnViolation::Refuse;
    r.writer.set_config(cfg.clone());
    r.writer
        .handle(&r.dcs, &msg(-5.0, 2.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(sp_value(&r.sim), 60.0);
    assert_eq!(r.writer.counters().refused, 1);
    assert_eq!(
        r.sim.value(tags::ids::T2),
        Some(Variant::Double(2.0)),
        "advisory still written"
    );

    cfg.advisory_only = true;
    r.writer.set_config(cfg);
    r.writer
        .handle(&r.dcs, &msg(30.0, 3.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(sp_value(&r.sim), 60.0);
    assert_eq!(r.sim.value(tags::ids::T2), Some(Variant::Double(3.0)));
    assert_eq!(outcomes(&r.writer, SP), ["clamped", "refused", "skipped"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_held_to_the_rate_limit() {
    let sp = SetpointLimits {
        max_step: Some(5.0),
        max_change_per_minute: Some(12.0),
        ..limits()
    };
    let mut r = rig_with(sp, |_| {}).await;
    let start = sp_value(&r.sim);
    for i in 0..10 {
        r.writer
            .handle(&r.dcs, &msg(59.0, f64::from(i), Duration::ZERO, "pca-v1"))
            .await;
    }
    let end = sp_value(&r.sim);
    assert!(
        (end - start - 12.0).abs() < 1e-9,
        "moved {} (start {start})",
        end - start
    );
    // Every written step is at most 5.
    let mut prev = start;
    for rec in r.writer.audit().recent(1000).expect("audit") {
        if rec.node.ends_with(SP)
            && let Some(w) = rec.written.as_f64()
        {
            assert!((w - prev).abs() <= 5.0 + 1e-9);
            prev = w;
        }
    }
    assert!(r.writer.counters().rate_limited >= 7);
    let sp_writes = r
        .sim
        .write_log()
        .iter()
        .filter(|w| w.node.ends_with(SP))
        .count();
    assert_eq!(sp_writes, 3, "5 + 5 + 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interlock_off_blocks_everything_and_on_resumes() {
    let mut r = rig().await;
    r.sim.set_remote_enable(false).expect("off");
    let il = r.dcs.interlock();
    wait_for("interlock off seen", || *il.borrow() == Some(false)).await;
    r.writer
        .handle(&r.dcs, &msg(30.0, 9.0, Duration::ZERO, "pca-v1"))
        .await;
    assert!(r.sim.write_log().is_empty());
    assert_eq!(r.writer.counters().interlock_blocked, 1);
    assert_eq!(outcomes(&r.writer, SP), ["blocked"]);

    r.sim.set_remote_enable(true).expect("on");
    wait_for("interlock on seen", || *il.borrow() == Some(true)).await;
    r.writer
        .handle(&r.dcs, &msg(30.0, 9.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(sp_value(&r.sim), 30.0);
    assert_eq!(r.sim.value(tags::ids::T2), Some(Variant::Double(9.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_input_and_disallowed_model_versions_are_ignored() {
    let mut r = rig().await;
    r.writer
        .handle(&r.dcs, &msg(30.0, 9.0, Duration::from_secs(3600), "pca-v1"))
        .await;
    r.writer
        .handle(&r.dcs, &msg(30.0, 9.0, Duration::ZERO, "experimental"))
        .await;
    assert!(r.sim.write_log().is_empty());
    assert_eq!(r.writer.counters().stale, 1);
    assert_eq!(r.writer.counters().version_blocked, 1);
    let recs = r.writer.audit().recent(100).expect("audit");
    assert_eq!(recs.len(), 14);
    assert!(recs.iter().all(|x| x.outcome == "blocked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_back_mismatch_raises_an_alarm() {
    let mut cfgd = None;
    let mut r = rig_with(limits(), |c| {
        // Only the setpoint, so the tamper hits it.
        c.mappings.retain(|m| m.setpoint.is_some());
        cfgd = Some(c.clone());
    })
    .await;
    r.sim.tamper_next_write(0.75);
    r.writer
        .handle(&r.dcs, &msg(30.0, 1.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(sp_value(&r.sim), 30.75);
    assert_eq!(r.writer.counters().mismatches, 1);
    assert!(r.writer.last_alarm().is_some_and(|a| a.contains(SP)));
    assert_eq!(outcomes(&r.writer, SP), ["mismatch"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_dcs_restart_and_writes_the_latest_fresh_value() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut r = rig().await;
    r.writer
        .handle(&r.dcs, &msg(30.0, 1.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(sp_value(&r.sim), 30.0);
    let port = r.sim.port();
    let Rig {
        sim,
        dcs,
        mut writer,
        _dir,
    } = r;
    sim.stop().await;
    let c = dcs.connected();
    wait_for("disconnect noticed", || !*c.borrow()).await;
    writer
        .handle(&dcs, &msg(35.0, 2.0, Duration::ZERO, "pca-v1"))
        .await;
    writer
        .handle(&dcs, &msg(40.0, 3.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(writer.pending_len(), 7, "one per node: the latest");

    let sim2 = sim_on(dir.path(), port).await;
    let (c, i) = (dcs.connected(), dcs.interlock());
    wait_for("reconnected", || *c.borrow()).await;
    wait_for("interlock known after reconnect", || {
        *i.borrow() == Some(true)
    })
    .await;
    writer.flush_pending(&dcs).await;
    assert_eq!(writer.pending_len(), 0);
    assert_eq!(sim2.value(SP), Some(Variant::Double(40.0)));
    assert_eq!(sim2.value(tags::ids::T2), Some(Variant::Double(3.0)));
    writer
        .handle(&dcs, &msg(42.0, 4.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(sim2.value(SP), Some(Variant::Double(42.0)));
    assert!(dcs.connects() >= 2);
    // The interlock subscription works after the restart.
    sim2.set_remote_enable(false).expect("off");
    wait_for("interlock off after restart", || *i.borrow() == Some(false)).await;
    sim2.set_remote_enable(true).expect("on");
    wait_for("interlock on after restart", || *i.borrow() == Some(true)).await;
    // Kept values that went stale while disconnected are not written.
    sim2.stop().await;
    wait_for("disconnect noticed", || !*c.borrow()).await;
    let mut stale = msg(50.0, 5.0, Duration::ZERO, "pca-v1");
    stale.body["ts"] = serde_json::json!(
        humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(25)).to_string()
    );
    writer.handle(&dcs, &stale).await;
    let mut cfg = writer.config().clone();
    cfg.max_age = Duration::from_secs(20);
    writer.set_config(cfg);
    let sim3 = sim_on(dir.path(), port).await;
    wait_for("reconnected again", || {
        *c.borrow() && *i.borrow() == Some(true)
    })
    .await;
    writer.flush_pending(&dcs).await;
    assert!(sim3.write_log().is_empty());
    assert_eq!(writer.counters().stale, 1);
}

async fn sim_on(dir: &Path, port: u16) -> DcsServer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = DcsConfig::new(port, pki_in(dir));
        c.remote_enable = true;
        match DcsServer::start(c).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "restart on {port}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_and_encrypt_session_works() {
    let mut r = rig_with(limits(), |c| {
        c.security_policy = "Basic256Sha256".into();
        c.security_mode = "SignAndEncrypt".into();
    })
    .await;
    r.writer
        .handle(&r.dcs, &msg(33.0, 7.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(sp_value(&r.sim), 33.0);
    assert_eq!(r.writer.counters().written, 7);
}

/// A writer for `sim` logging in as `user` (anonymous when `None`).
fn login_writer(dir: &Path, sim: &DcsServer, user: Option<(&str, &str)>) -> (OpcuaDcs, Writer) {
    let mut cfg = config(sim.endpoint_url(), limits());
    cfg.username = user.map(|u| u.0.to_owned());
    cfg.password = user.map(|u| u.1.to_owned());
    let data = dir.join(user.map_or("anonymous", |u| u.1));
    let dcs = OpcuaDcs::start(ClientSettings::from_config(&cfg, &data));
    let writer = Writer::new(cfg, AuditLog::open(&data).expect("audit"));
    (dcs, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dcs_that_requires_a_login_accepts_only_the_configured_user() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = DcsConfig::new(0, pki_in(dir.path()));
    c.remote_enable = true;
    c.users = vec![("operator".into(), "s3cret".into())];
    let sim = DcsServer::start(c).await.expect("dcs-sim");

    // Anonymous and a wrong password are refused, and the writer says why.
    for user in [None, Some(("operator", "wrong"))] {
        let (dcs, mut writer) = login_writer(dir.path(), &sim, user);
        let mut why = dcs.last_error_watch();
        let err = tokio::time::timeout(Duration::from_secs(60), why.wait_for(Option::is_some))
            .await
            .expect("a refusal within 60 s")
            .expect("watch")
            .clone()
            .unwrap_or_default();
        assert!(!*dcs.connected().borrow(), "{user:?} connected: {err}");
        assert!(!err.is_empty());
        writer
            .handle(&dcs, &msg(30.0, 5.0, Duration::ZERO, "pca-v1"))
            .await;
        assert_eq!(writer.counters().written, 0, "{user:?}");
        assert_eq!(writer.counters().queued, 7, "kept as latest: {user:?}");
        dcs.stop();
    }
    assert!(sim.write_log().is_empty(), "nothing reached the DCS");

    // The configured user writes.
    let (dcs, mut writer) = login_writer(dir.path(), &sim, Some(("operator", "s3cret")));
    let (c, i) = (dcs.connected(), dcs.interlock());
    wait_for("connected as operator with the interlock on", || {
        *c.borrow() && *i.borrow() == Some(true)
    })
    .await;
    assert_eq!(dcs.last_error(), None);
    writer
        .handle(&dcs, &msg(31.0, 6.0, Duration::ZERO, "pca-v1"))
        .await;
    assert_eq!(writer.counters().written, 7);
    assert_eq!(sp_value(&sim), 31.0);
}
