//! The agent with real child processes (`/bin/sh` scripts), real time and tiny durations.
//! Conditions are awaited by polling the agent every 10 ms up to a deadline.

// `allow-unwrap-in-tests` covers test functions only, not this file's helpers.
#![allow(clippy::unwrap_used)]

use edge_agent::runner::BoxFuture;
use edge_agent::{
    Agent, AgentConfig, AgentSetup, DeployError, ExitStatus, HubSeam, ProcessRunner, RunnerError,
    RuntimeStatus, ShutdownReason, Signal, SpawnSpec, SpawnedProcess, TokioRunner,
};
use edge_core::ModuleId;
use edge_core::identity::IdentityRegistry;
use edge_manifest::{
    Deployment, DesiredStatus, ModuleKind, ModuleSpec, ProcessSettings, RestartPolicy,
    StoreAndForward,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- helpers

fn sh(name: &str, script: &str, policy: RestartPolicy, order: u32) -> ModuleSpec {
    ModuleSpec {
        id: ModuleId::new(name).unwrap(),
        version: "1.0".into(),
        kind: ModuleKind::Process(ProcessSettings {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            working_dir: None,
        }),
        status: DesiredStatus::Running,
        restart_policy: policy,
        startup_order: order,
        env: BTreeMap::new(),
    }
}

fn deployment(hash: &str, specs: Vec<ModuleSpec>) -> Deployment {
    Deployment {
        schema_version: "1.1".into(),
        twins: specs
            .iter()
            .map(|s| (s.id.clone(), serde_json::json!({})))
            .collect(),
        modules: specs.into_iter().map(|s| (s.id.clone(), s)).collect(),
        routes: vec![],
        store_and_forward: StoreAndForward {
            time_to_live: Duration::from_secs(7200),
            max_size_bytes: None,
        },
        hash: hash.into(),
    }
}

fn config() -> AgentConfig {
    AgentConfig {
        stop_grace: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(10),
        backoff_unit: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        max_restarts: 3,
        stable_after: Duration::from_secs(600),
        heartbeat_timeout: Duration::from_millis(300),
        heartbeat_poll: Duration::from_millis(10),
        rollback_window: Duration::from_secs(2),
        healthy_after: Duration::from_millis(100),
        log_max_bytes: 1024 * 1024,
        log_keep: 2,
    }
}

fn setup(dir: &Path) -> AgentSetup {
    AgentSetup {
        data_dir: dir.to_owned(),
        device_id: "dev1".into(),
        iothub_hostname: "hub.example".into(),
        gateway_hostname: "127.0.0.1".into(),
        hub_addr: "127.0.0.1:18830".into(),
        hub_socket: None,
        workload_uri: "unix:///run/test/workload.sock".into(),
        manifest_dir: dir.to_owned(),
        module_path: vec![],
        extra_env: vec![],
    }
}

/// A hub seam whose heartbeats are live for the modules in `beating`, that refuses
/// deployments while `refuse` is set, and keeps every report.
#[derive(Default)]
struct FakeHub {
    refuse: Mutex<Option<String>>,
    beating: Mutex<HashSet<String>>,
    last: Mutex<HashMap<String, Instant>>,
    reports: Mutex<Vec<serde_json::Value>>,
    heartbeats: bool,
}

impl FakeHub {
    fn with_heartbeats() -> Self {
        Self {
            heartbeats: true,
            ..Self::default()
        }
    }

    fn latest(&self) -> serde_json::Value {
        self.reports
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Every distinct statusDescription a module had, in order.
    fn descriptions(&self, module: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.reports.lock().unwrap().iter() {
            if let Some(d) = r["modules"][module]["statusDescription"].as_str()
                && out.last().map(String::as_str) != Some(d)
            {
                out.push(d.to_owned());
            }
        }
        out
    }
}

impl HubSeam for FakeHub {
    fn apply(&self, _d: &Deployment) -> Result<(), String> {
        self.refuse.lock().unwrap().clone().map_or(Ok(()), Err)
    }
    fn last_heartbeat(&self, module: &str) -> Option<Instant> {
        let mut last = self.last.lock().unwrap();
        if self.beating.lock().unwrap().contains(module) {
            last.insert(module.to_owned(), Instant::now());
        }
        last.get(module).copied()
    }
    fn report_agent_state(&self, reported: serde_json::Value) {
        self.reports.lock().unwrap().push(reported);
    }
    fn heartbeats_enabled(&self) -> bool {
        self.heartbeats
    }
}

/// The real runner, recording which module got which pid and every signal.
#[derive(Default)]
struct Recording {
    inner: TokioRunner,
    spawned: Mutex<Vec<(String, u32)>>,
    signals: Mutex<Vec<(u32, Signal)>>,
}

impl Recording {
    fn module_of(&self, pid: u32) -> String {
        let spawned = self.spawned.lock().unwrap();
        spawned.iter().find(|(_, p)| *p == pid).unwrap().0.clone()
    }
}

impl ProcessRunner for Recording {
    fn spawn(&self, spec: &SpawnSpec) -> Result<SpawnedProcess, RunnerError> {
        let p = self.inner.spawn(spec)?;
        let module = spec.env_var("IOTEDGE_MODULEID").unwrap().to_owned();
        self.spawned.lock().unwrap().push((module, p.pid));
        Ok(p)
    }
    fn signal(&self, pid: u32, signal: Signal) -> Result<(), RunnerError> {
        self.signals.lock().unwrap().push((pid, signal));
        self.inner.signal(pid, signal)
    }
    fn wait(&self, pid: u32) -> BoxFuture<Result<ExitStatus, RunnerError>> {
        self.inner.wait(pid)
    }
}

struct Rig {
    agent: Arc<Agent>,
    hub: Arc<FakeHub>,
    runner: Arc<Recording>,
    identities: IdentityRegistry,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<ShutdownReason>,
}

fn start(dir: &Path, config: AgentConfig, hub: FakeHub) -> Rig {
    let hub = Arc::new(hub);
    let runner = Arc::new(Recording::default());
    let identities = IdentityRegistry::new();
    let agent = Agent::new(
        setup(dir),
        config,
        runner.clone(),
        hub.clone(),
        identities.clone(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(agent.clone().run(cancel.clone()));
    Rig {
        agent,
        hub,
        runner,
        identities,
        cancel,
        task,
    }
}

impl Rig {
    fn module(&self, name: &str) -> Option<edge_agent::ModuleStatusReport> {
        self.agent.list().into_iter().find(|m| m.name == name)
    }

    fn status(&self, name: &str) -> Option<RuntimeStatus> {
        self.module(name).map(|m| m.status)
    }

    fn pid(&self, name: &str) -> Option<u32> {
        self.module(name).and_then(|m| m.pid)
    }

    fn outcomes(&self, hash: &str) -> Vec<&'static str> {
        self.agent
            .history()
            .iter()
            .filter(|e| e.hash == hash)
            .map(|e| e.outcome.name())
            .collect()
    }

    async fn stop(self) -> ShutdownReason {
        self.cancel.cancel();
        self.task.await.unwrap()
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `within`.
async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const LONG: Duration = Duration::from_secs(20);

/// True when no process of the group led by `pid` exists any more.
fn group_gone(pid: u32) -> bool {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::killpg(pgid, None) == Err(nix::errno::Errno::ESRCH)
}

const SLEEP: &str = "exec sleep 1000";

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn restart_policies_backoff_growth_and_failed() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), config(), FakeHub::default());
    use RestartPolicy::{Always, Never, OnFailure};
    r.agent
        .deploy(
            deployment(
                "h1",
                vec![
                    sh("never-ok", "exit 0", Never, 0),
                    sh("never-fail", "exit 3", Never, 0),
                    sh("onfail-ok", "exit 0", OnFailure, 0),
                    sh("onfail-fail", "exit 3", OnFailure, 0),
                    sh("always-ok", "exit 0", Always, 0),
                    sh("killed", "kill -9 $$", OnFailure, 0),
                ],
            ),
            "test",
        )
        .unwrap();
    let finals = [
        ("never-ok", RuntimeStatus::Stopped, 0, 0),
        ("never-fail", RuntimeStatus::Failed, 3, 0),
        ("onfail-ok", RuntimeStatus::Stopped, 0, 0),
        ("onfail-fail", RuntimeStatus::Failed, 3, 3),
        ("always-ok", RuntimeStatus::Failed, 0, 3),
        ("killed", RuntimeStatus::Failed, 137, 3),
    ];
    wait_until("final states", LONG, || {
        finals.iter().all(|(m, s, _, _)| r.status(m) == Some(*s))
    })
    .await;
    for (m, _, code, restarts) in finals {
        let row = r.module(m).unwrap();
        assert_eq!(row.exit_code, Some(code), "{m}");
        assert_eq!(row.restarts, restarts, "{m}");
        let spawns = r
            .runner
            .spawned
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == m)
            .count();
        assert_eq!(spawns, 1 + restarts as usize, "{m}");
    }
    // The back-off doubled before each restart, then the module was given up.
    wait_until("final report", LONG, || {
        r.hub.latest()["modules"]["onfail-fail"]["runtimeStatus"] == "failed"
    })
    .await;
    let seen: Vec<String> = r
        .hub
        .descriptions("onfail-fail")
        .into_iter()
        .filter(|d| d != "running" && d != "not started yet")
        .collect();
    assert_eq!(
        seen,
        [
            "exited with code 3; restarting in 20ms",
            "exited with code 3; restarting in 40ms",
            "exited with code 3; restarting in 80ms",
            "exited with code 3; gave up after 3 restarts",
        ]
    );
    let never = r.module("never-fail").unwrap();
    assert_eq!(
        never.description,
        "exited with code 3 (restart policy never)"
    );
    r.stop().await;
}

#[tokio::test]
async fn startup_order_and_graceful_shutdown_in_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), config(), FakeHub::default());
    use RestartPolicy::Always;
    r.agent
        .deploy(
            deployment(
                "h1",
                vec![
                    sh("c", SLEEP, Always, 2),
                    sh("b", SLEEP, Always, 1),
                    sh("a", SLEEP, Always, 1),
                    sh("first", SLEEP, Always, 0),
                    sh("unordered", SLEEP, Always, u32::MAX),
                ],
            ),
            "test",
        )
        .unwrap();
    wait_until("all running", LONG, || {
        r.agent
            .list()
            .iter()
            .filter(|m| m.status == RuntimeStatus::Running)
            .count()
            == 5
    })
    .await;
    let spawned: Vec<String> = r
        .runner
        .spawned
        .lock()
        .unwrap()
        .iter()
        .map(|(m, _)| m.clone())
        .collect();
    assert_eq!(spawned, ["first", "a", "b", "c", "unordered"]);
    let pids: Vec<u32> = r
        .runner
        .spawned
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| *p)
        .collect();
    let runner = r.runner.clone();
    assert_eq!(r.stop().await, ShutdownReason::Cancelled { killed: vec![] });
    let terms: Vec<String> = runner
        .signals
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| *s == Signal::Term)
        .map(|(p, _)| runner.module_of(*p))
        .collect();
    assert_eq!(terms, ["unordered", "c", "b", "a", "first"]);
    wait_until("every process group gone", LONG, || {
        pids.iter().all(|p| group_gone(*p))
    })
    .await;
}

#[tokio::test]
async fn forced_stop_when_sigterm_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.stop_grace = Duration::from_millis(300);
    let r = start(dir.path(), c, FakeHub::default());
    r.agent
        .deploy(
            deployment(
                "h1",
                vec![
                    sh(
                        "stubborn",
                        r#"trap "" TERM; echo ready; while :; do sleep 0.05; done"#,
                        RestartPolicy::Always,
                        0,
                    ),
                    sh("polite", SLEEP, RestartPolicy::Always, 1),
                ],
            ),
            "test",
        )
        .unwrap();
    let log = dir.path().join("logs").join("stubborn.log");
    assert_eq!(r.agent.log_path("stubborn"), Some(log.clone()));
    wait_until("trap installed", LONG, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("stdout ready"))
            && r.status("polite") == Some(RuntimeStatus::Running)
    })
    .await;
    let stubborn = r.pid("stubborn").unwrap();
    let polite = r.pid("polite").unwrap();
    let reason = r.stop().await;
    assert_eq!(
        reason,
        ShutdownReason::Cancelled {
            killed: vec![ModuleId::new("stubborn").unwrap()]
        }
    );
    // The whole group, with the loop's `sleep`, was killed (orphans are reaped by init).
    wait_until("groups gone", LONG, || {
        group_gone(stubborn) && group_gone(polite)
    })
    .await;
}

#[tokio::test]
async fn hung_module_is_restarted_when_heartbeats_stop() {
    let dir = tempfile::tempdir().unwrap();
    let hub = FakeHub::with_heartbeats();
    hub.beating.lock().unwrap().insert("hung".into());
    let r = start(dir.path(), config(), hub);
    r.agent
        .deploy(
            deployment("h1", vec![sh("hung", SLEEP, RestartPolicy::OnUnhealthy, 0)]),
            "test",
        )
        .unwrap();
    wait_until("healthy deployment", LONG, || {
        r.outcomes("h1").contains(&"healthy")
    })
    .await;
    let first = r.pid("hung").unwrap();
    r.hub.beating.lock().unwrap().clear();
    wait_until("restarted with a new process", LONG, || {
        r.pid("hung").is_some_and(|p| p != first)
    })
    .await;
    wait_until("the hung process killed", LONG, || group_gone(first)).await;
    let row = r.module("hung").unwrap();
    assert_eq!(row.restarts, 1);
    assert!(
        r.hub
            .descriptions("hung")
            .iter()
            .any(|d| d.starts_with("killed: no heartbeat for 300ms")),
        "{:?}",
        r.hub.descriptions("hung")
    );
    r.stop().await;
}

#[tokio::test]
async fn deployment_refused_by_the_hub_leaves_the_running_one_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), config(), FakeHub::default());
    r.agent
        .deploy(
            deployment("good", vec![sh("m", SLEEP, RestartPolicy::Always, 0)]),
            "test",
        )
        .unwrap();
    wait_until("healthy", LONG, || r.outcomes("good").contains(&"healthy")).await;
    let pid = r.pid("m").unwrap();
    *r.hub.refuse.lock().unwrap() = Some("route `r` names an unknown module".into());
    let err = r
        .agent
        .deploy(
            deployment("bad", vec![sh("other", SLEEP, RestartPolicy::Always, 0)]),
            "upstream",
        )
        .unwrap_err();
    let DeployError::Refused { code, reasons, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(code, 400);
    assert!(reasons[0].contains("unknown module"));
    wait_until("refusal reported", LONG, || {
        r.hub.latest()["lastDesiredStatus"]["code"] == 400
    })
    .await;
    assert_eq!(r.pid("m"), Some(pid));
    assert!(r.module("other").is_none());
    assert_eq!(r.agent.current().unwrap().hash, "good");
    assert_eq!(r.outcomes("bad"), ["refused"]);
    assert!(!group_gone(pid));
    r.stop().await;
}

#[tokio::test]
async fn crash_looping_deployment_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.max_restarts = 100;
    let r = start(dir.path(), c, FakeHub::default());
    let stable = sh("stable", SLEEP, RestartPolicy::Always, 0);
    r.agent
        .deploy(deployment("A", vec![stable.clone()]), "test")
        .unwrap();
    wait_until("A healthy", LONG, || r.outcomes("A").contains(&"healthy")).await;
    let pid = r.pid("stable").unwrap();
    r.agent
        .deploy(
            deployment(
                "B",
                vec![stable, sh("crash", "exit 1", RestartPolicy::Always, 1)],
            ),
            "test",
        )
        .unwrap();
    wait_until("B rolled back", LONG, || {
        r.outcomes("B").contains(&"rolled-back")
    })
    .await;
    let entry = r
        .agent
        .history()
        .into_iter()
        .rfind(|e| e.hash == "B")
        .unwrap();
    let edge_agent::Outcome::RolledBack { why, to } = entry.outcome else {
        panic!("{entry:?}")
    };
    assert_eq!(to, "A");
    assert!(why.contains("`crash`"), "{why}");
    wait_until("crash removed", LONG, || r.module("crash").is_none()).await;
    assert_eq!(
        r.pid("stable"),
        Some(pid),
        "the unchanged module kept running"
    );
    assert_eq!(r.agent.current().unwrap().hash, "A");
    assert_eq!(r.agent.last_good().unwrap().hash, "A");
    wait_until("reported", LONG, || {
        r.hub.latest()["lastDesiredStatus"]["code"] == 500
    })
    .await;
    let desc = r.hub.latest()["lastDesiredStatus"]["description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(desc.starts_with("rolled back to A"), "{desc}");
    assert_eq!(r.outcomes("B"), ["applied", "rolled-back"]);
    r.stop().await;
}

#[tokio::test]
async fn history_last_good_and_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), config(), FakeHub::default());
    let good = deployment("A", vec![sh("m", SLEEP, RestartPolicy::Always, 0)]);
    r.agent.deploy(good.clone(), "file").unwrap();
    wait_until("A healthy", LONG, || r.outcomes("A").contains(&"healthy")).await;
    let key = r.identities.key("m").unwrap();
    let history = r.agent.history();
    r.stop().await;

    // edged restarts: a fresh agent on the same data dir.
    let r = start(dir.path(), config(), FakeHub::default());
    assert_eq!(r.agent.history(), history);
    assert_eq!(r.agent.last_good(), Some(good.clone()));
    assert!(r.agent.current().is_none());
    assert_eq!(r.agent.reported()["lastDesiredVersion"], 1);
    // The file now holds a broken deployment: it crash-loops and is rolled back to A,
    // which the agent knows from disk.
    r.agent
        .deploy(
            deployment("B", vec![sh("m", "exit 1", RestartPolicy::Always, 0)]),
            "file",
        )
        .unwrap();
    wait_until("B rolled back", LONG, || {
        r.outcomes("B").contains(&"rolled-back")
    })
    .await;
    wait_until("A running again", LONG, || {
        r.status("m") == Some(RuntimeStatus::Running)
            && r.agent.current().is_some_and(|d| d.hash == "A")
    })
    .await;
    assert_eq!(
        r.identities.key("m"),
        Some(key),
        "the module key survived the restart"
    );
    let names: Vec<&str> = r.agent.history().iter().map(|e| e.outcome.name()).collect();
    assert_eq!(names, ["applied", "healthy", "applied", "rolled-back"]);
    let text = std::fs::read_to_string(dir.path().join("history.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 4);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(humantime::parse_rfc3339(v["time"].as_str().unwrap()).is_ok());
        assert_eq!(v["source"], "file");
    }
    r.stop().await;
}

#[tokio::test]
async fn reported_properties_use_azure_field_names() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), config(), FakeHub::default());
    let mut missing = sh("missing", "", RestartPolicy::OnFailure, 0);
    missing.kind = ModuleKind::Process(ProcessSettings {
        path: "no-such-module".into(),
        args: vec![],
        working_dir: None,
    });
    r.agent
        .deploy(
            deployment(
                "h1",
                vec![
                    sh("run", SLEEP, RestartPolicy::Always, 0),
                    sh("done", "exit 0", RestartPolicy::Never, 0),
                    sh("fail", "exit 4", RestartPolicy::Never, 0),
                    missing,
                ],
            ),
            "test",
        )
        .unwrap();
    wait_until("settled", LONG, || {
        let rep = r.hub.latest();
        rep["modules"]["run"]["runtimeStatus"] == "running"
            && rep["modules"]["done"]["runtimeStatus"] == "stopped"
            && rep["modules"]["fail"]["runtimeStatus"] == "failed"
    })
    .await;
    let rep = r.hub.latest();
    assert_eq!(rep["schemaVersion"], "1.1");
    assert_eq!(rep["lastDesiredVersion"], 1);
    assert_eq!(rep["lastDesiredStatus"]["code"], 200);
    let run = &rep["modules"]["run"];
    assert!(humantime::parse_rfc3339(run["lastStartTimeUtc"].as_str().unwrap()).is_ok());
    assert_eq!(run["restartCount"], 0);
    assert_eq!(run["version"], "1.0");
    assert_eq!(run["status"], "running");
    assert_eq!(run["restartPolicy"], "always");
    assert_eq!(run["type"], "process");
    assert_eq!(run["statusDescription"], "running");
    let done = &rep["modules"]["done"];
    assert_eq!(done["exitCode"], 0);
    assert!(humantime::parse_rfc3339(done["lastExitTimeUtc"].as_str().unwrap()).is_ok());
    let fail = &rep["modules"]["fail"];
    assert_eq!(fail["exitCode"], 4);
    assert!(
        fail["statusDescription"]
            .as_str()
            .unwrap()
            .contains("exited with code 4")
    );
    let missing = &rep["modules"]["missing"];
    assert!(
        missing["statusDescription"]
            .as_str()
            .unwrap()
            .contains("binary `no-such-module` not found"),
        "{missing}"
    );
    let row = r.module("run").unwrap();
    assert_eq!(row.version, "1.0");
    assert!(row.pid.is_some() && row.uptime.is_some() && row.start_time.is_some());
    r.stop().await;
}

/// Captures tracing output (of every test in this binary).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn module_environment_and_the_key_is_never_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Global: a thread-local default misses events while other tests register callsites.
    // Other tests' events land here too, which only widens the check.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), config(), FakeHub::default());
    let mut m = sh(
        "envy",
        r#"echo "id=$IOTEDGE_MODULEID dev=$IOTEDGE_DEVICEID hubhost=$IOTEDGE_IOTHUBHOSTNAME gw=$IOTEDGE_GATEWAYHOSTNAME api=$IOTEDGE_APIVERSION auth=$IOTEDGE_AUTHSCHEME wl=$IOTEDGE_WORKLOADURI hub=$EDGE_HUB_ADDR keylen=${#EDGE_MODULE_KEY} genlen=${#IOTEDGE_MODULEGENERATIONID} custom=$CUSTOM"; echo "pwd=$(pwd)"; echo "data=$EDGE_MODULE_DATA_DIR"; echo oops >&2; exec sleep 1000"#,
        RestartPolicy::Always,
        0,
    );
    m.env.insert("CUSTOM".into(), "yes".into());
    m.env.insert("EDGE_MODULE_KEY".into(), "forged".into());
    r.agent.deploy(deployment("h1", vec![m]), "test").unwrap();
    let log = dir.path().join("logs").join("envy.log");
    wait_until("output captured", LONG, || {
        std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("stderr oops") && t.contains("data="))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(" stdout id=envy dev=dev1 hubhost=hub.example gw=127.0.0.1 api=2022-08-03 auth=sasToken wl=unix:///run/test/workload.sock hub=127.0.0.1:18830 keylen=44 genlen=16 custom=yes"),
        "{text}"
    );
    let data_dir = dir.path().join("modules").join("envy");
    let data_dir = data_dir.canonicalize().unwrap();
    assert!(
        text.contains(&format!("stdout pwd={}", data_dir.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "data={}",
            dir.path().join("modules").join("envy").display()
        )),
        "{text}"
    );
    for line in text.lines() {
        let ts = line.split(' ').next().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{line}");
    }
    let key = r.identities.key("envy").unwrap();
    let key_file = dir.path().join("keys").join("envy.json");
    // The workload API's view of the identity: the generation id the module got.
    let generation = r.agent.generation_id("envy").unwrap();
    assert_eq!(generation.len(), 16);
    assert_eq!(r.agent.generation_id("nobody"), None);
    assert_eq!(r.agent.generation_id(".."), None);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        std::fs::read_to_string(&key_file)
            .unwrap()
            .contains(key.expose_base64())
    );
    r.stop().await;
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("Module started.") && l.contains("envy")),
        "tracing was captured"
    );
    assert!(
        !logged.contains(key.expose_base64()),
        "the module key was logged"
    );
}

#[tokio::test]
async fn logs_are_rotated_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.log_max_bytes = 2000;
    c.log_keep = 2;
    let r = start(dir.path(), c, FakeHub::default());
    r.agent
        .deploy(
            deployment(
                "h1",
                vec![sh(
                    "chatty",
                    r#"i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done; exec sleep 1000"#,
                    RestartPolicy::Always,
                    0,
                )],
            ),
            "test",
        )
        .unwrap();
    let log = r.agent.log_path("chatty").unwrap();
    wait_until("all lines written", LONG, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("stdout line 299"))
    })
    .await;
    let rotated = |n: usize| {
        let mut p = log.clone().into_os_string();
        p.push(format!(".{n}"));
        std::path::PathBuf::from(p)
    };
    assert!(rotated(1).exists() && rotated(2).exists());
    assert!(!rotated(3).exists(), "only log_keep rotated files are kept");
    let mut last_seen = None;
    for path in [rotated(2), rotated(1), log.clone()] {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.len() <= 2000,
            "{} is {} bytes",
            path.display(),
            text.len()
        );
        for line in text.lines() {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert!(humantime::parse_rfc3339(ts).is_ok(), "{line}");
            assert_eq!(parts.next(), Some("stdout"));
            let n: u32 = line.rsplit(' ').next().unwrap().parse().unwrap();
            // Oldest file first: numbers only grow, without gaps.
            if let Some(prev) = last_seen {
                assert_eq!(n, prev + 1, "{line}");
            }
            last_seen = Some(n);
        }
    }
    assert_eq!(last_seen, Some(299));
    r.stop().await;
}
