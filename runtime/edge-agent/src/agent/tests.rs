//! Agent tests on the fake runner with tokio's paused clock: back-off schedule, restart
//! budget, count reset, heartbeats, start/stop order, refusals, updates and removals.

use super::*;
use crate::fake::{FakeBehavior, FakeRunner};
use crate::runner::Signal;
use edge_manifest::{DesiredStatus, ProcessSettings, RestartPolicy, StoreAndForward};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> ModuleId {
    ModuleId::new(s).unwrap()
}

fn spec(name: &str, order: u32, policy: RestartPolicy) -> ModuleSpec {
    ModuleSpec {
        id: id(name),
        version: "1.0".into(),
        kind: ModuleKind::Process(ProcessSettings {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), name.into()],
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

fn setup(dir: &Path) -> AgentSetup {
    AgentSetup {
        data_dir: dir.to_owned(),
        device_id: "dev1".into(),
        iothub_hostname: "hub.example".into(),
        gateway_hostname: "127.0.0.1".into(),
        hub_addr: "127.0.0.1:1883".into(),
        hub_socket: None,
        workload_uri: "unix:///run/test/workload.sock".into(),
        manifest_dir: dir.to_owned(),
        module_path: vec![],
        extra_env: vec![],
    }
}

/// A hub whose heartbeats are live for the modules in `beating`.
#[derive(Default)]
struct FakeHub {
    refuse: Mutex<Option<String>>,
    beating: Mutex<HashSet<String>>,
    last: Mutex<HashMap<String, std::time::Instant>>,
    reports: Mutex<Vec<serde_json::Value>>,
}

impl HubSeam for FakeHub {
    fn apply(&self, _d: &Deployment) -> Result<(), String> {
        self.refuse.lock().unwrap().clone().map_or(Ok(()), Err)
    }
    fn last_heartbeat(&self, module: &str) -> Option<std::time::Instant> {
        let mut last = self.last.lock().unwrap();
        if self.beating.lock().unwrap().contains(module) {
            last.insert(module.to_owned(), Instant::now().into_std());
        }
        last.get(module).copied()
    }
    fn report_agent_state(&self, reported: serde_json::Value) {
        self.reports.lock().unwrap().push(reported);
    }
}

struct Rig {
    agent: Arc<Agent>,
    runner: Arc<FakeRunner>,
    hub: Arc<FakeHub>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<ShutdownReason>,
    _dir: tempfile::TempDir,
}

fn rig(config: AgentConfig, heartbeats: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let runner = Arc::new(FakeRunner::new());
    let hub = Arc::new(FakeHub::default());
    let seam: Arc<dyn HubSeam> = if heartbeats {
        hub.clone()
    } else {
        Arc::new(crate::hub::NoHub)
    };
    let agent = Agent::new(
        setup(dir.path()),
        config,
        runner.clone(),
        seam,
        IdentityRegistry::new(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(agent.clone().run(cancel.clone()));
    Rig {
        agent,
        runner,
        hub,
        cancel,
        task,
        _dir: dir,
    }
}

impl Rig {
    fn module(&self, name: &str) -> Option<ModuleStatusReport> {
        self.agent.list().into_iter().find(|m| m.name == name)
    }

    fn status(&self, name: &str) -> Option<RuntimeStatus> {
        self.module(name).map(|m| m.status)
    }

    async fn stop(self) -> ShutdownReason {
        self.cancel.cancel();
        self.task.await.unwrap()
    }
}

/// Polls `cond` every `step` (virtual time) until `within` has passed.
async fn wait_until(what: &str, within: Duration, step: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(step).await;
    }
}

const MS: Duration = Duration::from_millis(10);

#[tokio::test(start_paused = true)]
async fn crash_loop_follows_azure_backoff_then_fails() {
    let r = rig(AgentConfig::default(), false);
    r.runner.set_default(FakeBehavior::Exit(1));
    r.agent
        .deploy(
            deployment("h1", vec![spec("crash", 0, RestartPolicy::OnFailure)]),
            "test",
        )
        .unwrap();
    wait_until(
        "failed",
        Duration::from_secs(3 * 3600),
        Duration::from_secs(1),
        || r.status("crash") == Some(RuntimeStatus::Failed),
    )
    .await;
    let spawns = r.runner.spawns();
    assert_eq!(spawns.len(), 21, "1 start + 20 restarts");
    let config = AgentConfig::default();
    for (n, pair) in spawns.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let want = config.backoff(u32::try_from(n).unwrap());
        assert!(
            gap >= want && gap < want + Duration::from_millis(100),
            "restart {n}: waited {gap:?}, want {want:?}"
        );
    }
    let m = r.module("crash").unwrap();
    assert_eq!(m.restarts, 20);
    assert_eq!(m.exit_code, Some(1));
    assert!(
        m.description.contains("gave up after 20 restarts"),
        "{}",
        m.description
    );
    // Nothing more happens: no busy loop.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(r.runner.spawns().len(), 21);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn restart_count_resets_after_stable_running() {
    let config = AgentConfig {
        backoff_unit: Duration::from_secs(1),
        stable_after: Duration::from_secs(60),
        ..AgentConfig::default()
    };
    let r = rig(config, false);
    r.agent
        .deploy(
            deployment("h1", vec![spec("m", 0, RestartPolicy::Always)]),
            "test",
        )
        .unwrap();
    wait_until("running", Duration::from_secs(5), MS, || {
        r.status("m") == Some(RuntimeStatus::Running)
    })
    .await;
    let first = r.module("m").unwrap().pid.unwrap();
    assert!(r.runner.exit(first, 0));
    wait_until("restarted", Duration::from_secs(5), MS, || {
        r.module("m")
            .is_some_and(|m| m.pid.is_some_and(|p| p != first))
    })
    .await;
    assert_eq!(r.module("m").unwrap().restarts, 1);
    wait_until(
        "count reset",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || r.module("m").unwrap().restarts == 0,
    )
    .await;
    assert_eq!(r.status("m"), Some(RuntimeStatus::Running));
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn start_order_and_reverse_stop_order() {
    let r = rig(AgentConfig::default(), false);
    let d = deployment(
        "h1",
        vec![
            spec("c", 2, RestartPolicy::Always),
            spec("a", 1, RestartPolicy::Always),
            spec("b", 1, RestartPolicy::Always),
            spec("last", u32::MAX, RestartPolicy::Always),
            spec("first", 0, RestartPolicy::Always),
        ],
    );
    r.agent.deploy(d, "test").unwrap();
    wait_until("all running", Duration::from_secs(5), MS, || {
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
        .spawns()
        .iter()
        .map(|s| s.spec.env_var("IOTEDGE_MODULEID").unwrap().to_owned())
        .collect();
    assert_eq!(spawned, ["first", "a", "b", "c", "last"]);
    let pids: HashMap<u32, String> = r
        .runner
        .spawns()
        .iter()
        .map(|s| {
            (
                s.pid,
                s.spec.env_var("IOTEDGE_MODULEID").unwrap().to_owned(),
            )
        })
        .collect();
    let runner = r.runner.clone();
    let reason = r.stop().await;
    assert_eq!(reason, ShutdownReason::Cancelled { killed: vec![] });
    let terms: Vec<&str> = runner
        .signals()
        .iter()
        .filter(|(_, s)| *s == Signal::Term)
        .map(|(pid, _)| pids[pid].as_str())
        .collect();
    assert_eq!(terms, ["last", "c", "b", "a", "first"]);
    assert!(runner.alive().is_empty());
}

#[tokio::test(start_paused = true)]
async fn spawn_failure_backs_off_then_recovers() {
    let config = AgentConfig {
        backoff_unit: Duration::from_secs(1),
        ..AgentConfig::default()
    };
    let r = rig(config, false);
    r.runner.set_fail_spawn(true);
    r.agent
        .deploy(
            deployment("h1", vec![spec("m", 0, RestartPolicy::OnFailure)]),
            "test",
        )
        .unwrap();
    wait_until("backoff", Duration::from_secs(5), MS, || {
        r.status("m") == Some(RuntimeStatus::Backoff)
    })
    .await;
    assert!(
        r.module("m")
            .unwrap()
            .description
            .contains("failed to start")
    );
    r.runner.set_fail_spawn(false);
    wait_until("running", Duration::from_secs(60), MS, || {
        r.status("m") == Some(RuntimeStatus::Running)
    })
    .await;
    assert!(r.module("m").unwrap().restarts >= 1);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn forced_stop_after_grace() {
    let config = AgentConfig {
        stop_grace: Duration::from_secs(3),
        ..AgentConfig::default()
    };
    let r = rig(config, false);
    r.runner.set_default(FakeBehavior::IgnoreTerm);
    r.agent
        .deploy(
            deployment("h1", vec![spec("stubborn", 0, RestartPolicy::Always)]),
            "test",
        )
        .unwrap();
    wait_until("running", Duration::from_secs(5), MS, || {
        r.status("stubborn") == Some(RuntimeStatus::Running)
    })
    .await;
    let runner = r.runner.clone();
    let reason = r.stop().await;
    assert_eq!(
        reason,
        ShutdownReason::Cancelled {
            killed: vec![id("stubborn")]
        }
    );
    let sigs: Vec<Signal> = runner.signals().iter().map(|(_, s)| *s).collect();
    assert_eq!(&sigs[..2], &[Signal::Term, Signal::Kill]);
    assert!(runner.alive().is_empty());
}

#[tokio::test(start_paused = true)]
async fn heartbeats_restart_on_unhealthy_modules_only() {
    let config = AgentConfig {
        heartbeat_timeout: Duration::from_secs(10),
        backoff_unit: Duration::from_secs(1),
        ..AgentConfig::default()
    };
    let r = rig(config, true);
    r.hub
        .beating
        .lock()
        .unwrap()
        .extend(["hung".to_owned(), "plain".to_owned()]);
    r.agent
        .deploy(
            deployment(
                "h1",
                vec![
                    spec("hung", 0, RestartPolicy::OnUnhealthy),
                    spec("plain", 0, RestartPolicy::OnFailure),
                ],
            ),
            "test",
        )
        .unwrap();
    wait_until("running", Duration::from_secs(5), MS, || {
        r.agent
            .list()
            .iter()
            .filter(|m| m.status == RuntimeStatus::Running)
            .count()
            == 2
    })
    .await;
    let hung_pid = r.module("hung").unwrap().pid.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        r.module("hung").unwrap().pid,
        Some(hung_pid),
        "heartbeating: left alone"
    );
    r.hub.beating.lock().unwrap().clear();
    wait_until("plain unhealthy", Duration::from_secs(30), MS, || {
        r.status("plain") == Some(RuntimeStatus::Unhealthy)
    })
    .await;
    wait_until("hung restarted", Duration::from_secs(60), MS, || {
        r.module("hung")
            .is_some_and(|m| m.pid.is_some_and(|p| p != hung_pid))
    })
    .await;
    assert_eq!(r.module("hung").unwrap().restarts, 1);
    assert!(r.runner.signals().contains(&(hung_pid, Signal::Term)));
    // on-failure: shown unhealthy, never killed.
    let plain_pid = r.module("plain").unwrap().pid.unwrap();
    assert!(!r.runner.signals().iter().any(|(p, _)| *p == plain_pid));
    assert_eq!(r.status("plain"), Some(RuntimeStatus::Unhealthy));
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn refusals_change_nothing() {
    let r = rig(AgentConfig::default(), true);
    r.hub.beating.lock().unwrap().insert("m".into());
    r.agent
        .deploy(
            deployment("good", vec![spec("m", 0, RestartPolicy::Always)]),
            "test",
        )
        .unwrap();
    wait_until("running", Duration::from_secs(5), MS, || {
        r.status("m") == Some(RuntimeStatus::Running)
    })
    .await;
    let pid = r.module("m").unwrap().pid;

    let err = r
        .agent
        .deploy(
            deployment("dots", vec![spec("..", 0, RestartPolicy::Always)]),
            "test",
        )
        .unwrap_err();
    assert!(
        matches!(err, DeployError::Refused { code: 400, .. }),
        "{err}"
    );
    r.agent.record_refused(
        "",
        "deployment.json",
        412,
        &["schemaVersion `9.0` is not supported".into()],
    );
    assert_eq!(r.agent.reported()["lastDesiredStatus"]["code"], 412);
    *r.hub.refuse.lock().unwrap() = Some("route `r1` does not parse".into());
    let err = r
        .agent
        .deploy(
            deployment("routes", vec![spec("n", 0, RestartPolicy::Always)]),
            "test",
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("route `r1` does not parse"),
        "{err}"
    );
    assert!(matches!(err, DeployError::Refused { code: 400, .. }));

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(r.agent.current().unwrap().hash, "good");
    assert_eq!(r.module("m").unwrap().pid, pid);
    assert!(r.module("n").is_none());
    let rep = r.agent.reported();
    assert_eq!(rep["lastDesiredStatus"]["code"], 400);
    assert_eq!(rep["lastDesiredVersion"], 4);
    let outcomes: Vec<&str> = r.agent.history().iter().map(|e| e.outcome.name()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "refused").count(), 3);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn update_remove_and_policy_only_changes() {
    let r = rig(AgentConfig::default(), false);
    let identities = r.agent.identities.clone();
    r.agent
        .deploy(
            deployment(
                "h1",
                vec![
                    spec("a", 0, RestartPolicy::Always),
                    spec("b", 1, RestartPolicy::Always),
                ],
            ),
            "test",
        )
        .unwrap();
    wait_until("running", Duration::from_secs(5), MS, || {
        r.agent
            .list()
            .iter()
            .filter(|m| m.status == RuntimeStatus::Running)
            .count()
            == 2
    })
    .await;
    let a_pid = r.module("a").unwrap().pid.unwrap();
    let b_pid = r.module("b").unwrap().pid.unwrap();
    assert!(identities.key("b").is_some());

    // Policy change only: nothing restarts.
    r.agent
        .deploy(
            deployment(
                "h2",
                vec![
                    spec("a", 0, RestartPolicy::Never),
                    spec("b", 1, RestartPolicy::Always),
                ],
            ),
            "test",
        )
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(r.module("a").unwrap().pid, Some(a_pid));
    assert_eq!(r.runner.spawns().len(), 2);

    // New version of a; b removed.
    let mut a2 = spec("a", 0, RestartPolicy::Always);
    a2.version = "2.0".into();
    r.agent.deploy(deployment("h3", vec![a2]), "test").unwrap();
    wait_until("updated", Duration::from_secs(5), MS, || {
        r.module("a")
            .is_some_and(|m| m.pid.is_some_and(|p| p != a_pid) && m.version == "2.0")
            && r.module("b").is_none()
    })
    .await;
    assert!(r.runner.signals().contains(&(a_pid, Signal::Term)));
    assert!(r.runner.signals().contains(&(b_pid, Signal::Term)));
    assert!(
        identities.key("b").is_none(),
        "removed module loses its identity"
    );
    assert_eq!(r.module("a").unwrap().restarts, 0);
    assert_eq!(
        r.agent.deploy(r.agent.current().unwrap(), "again").unwrap(),
        DeployOutcome::Unchanged { hash: "h3".into() }
    );
    // A deployment without modules is valid: everything goes, and it is healthy at once.
    r.agent.deploy(deployment("empty", vec![]), "test").unwrap();
    wait_until("healthy and empty", Duration::from_secs(5), MS, || {
        r.agent.list().is_empty()
            && r.agent
                .history()
                .last()
                .is_some_and(|e| e.hash == "empty" && e.outcome == Outcome::Healthy)
    })
    .await;
    assert!(r.runner.alive().is_empty());
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unsupported_and_stopped_modules() {
    let r = rig(AgentConfig::default(), false);
    let mut docker = spec("docker", 0, RestartPolicy::Always);
    docker.kind = ModuleKind::Unsupported {
        kind: "docker".into(),
    };
    let mut off = spec("off", 0, RestartPolicy::Always);
    off.status = DesiredStatus::Stopped;
    r.agent
        .deploy(
            deployment(
                "h1",
                vec![docker, off, spec("on", 0, RestartPolicy::Always)],
            ),
            "test",
        )
        .unwrap();
    wait_until("settled", Duration::from_secs(5), MS, || {
        r.status("on") == Some(RuntimeStatus::Running)
            && r.status("off") == Some(RuntimeStatus::Stopped)
    })
    .await;
    let d = r.module("docker").unwrap();
    assert_eq!(d.status, RuntimeStatus::Unknown);
    assert!(
        d.description.contains("`docker` cannot run here"),
        "{}",
        d.description
    );
    assert_eq!(r.runner.spawns().len(), 1);
    let rep = r.agent.reported();
    assert_eq!(rep["modules"]["docker"]["runtimeStatus"], "unknown");
    assert_eq!(rep["modules"]["docker"]["type"], "docker");
    assert_eq!(rep["modules"]["off"]["runtimeStatus"], "stopped");
    assert_eq!(rep["modules"]["off"]["status"], "stopped");
    let err = r.agent.restart("docker").await.unwrap_err();
    assert!(matches!(err, AgentError::NotRestartable { .. }));
    assert!(matches!(
        r.agent.restart("nope").await,
        Err(AgentError::UnknownModule(_))
    ));
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn manual_restart_revives_a_failed_module() {
    let config = AgentConfig {
        backoff_unit: Duration::from_millis(100),
        max_restarts: 1,
        ..AgentConfig::default()
    };
    let r = rig(config, false);
    r.runner.set_default(FakeBehavior::Exit(2));
    r.agent
        .deploy(
            deployment("h1", vec![spec("m", 0, RestartPolicy::OnFailure)]),
            "test",
        )
        .unwrap();
    wait_until("failed", Duration::from_secs(5), MS, || {
        r.status("m") == Some(RuntimeStatus::Failed)
    })
    .await;
    r.runner.set_default(FakeBehavior::Run);
    r.agent.restart("m").await.unwrap();
    assert_eq!(r.status("m"), Some(RuntimeStatus::Running));
    assert_eq!(r.module("m").unwrap().restarts, 0);
    assert_eq!(r.runner.spawns().len(), 3);
    r.stop().await;
}

#[test]
fn stored_deployment_round_trips() {
    let mut a = spec("a", 3, RestartPolicy::OnUnhealthy);
    a.env.insert("K".into(), "V".into());
    a.status = DesiredStatus::Stopped;
    let mut b = spec("b", u32::MAX, RestartPolicy::Never);
    b.kind = ModuleKind::Unsupported {
        kind: "docker".into(),
    };
    let mut d = deployment("h", vec![a, b]);
    d.routes.push(edge_manifest::RouteSpec {
        name: "r".into(),
        text: "FROM /messages/* INTO $upstream".into(),
        priority: 2,
        time_to_live: Some(Duration::from_secs(30)),
    });
    d.store_and_forward.max_size_bytes = Some(1 << 20);
    d.twins.insert(id("a"), serde_json::json!({"x": 1}));
    let text = persist::deployment_to_json(&d).unwrap();
    assert_eq!(persist::deployment_from_json(&text).unwrap(), d);
}
