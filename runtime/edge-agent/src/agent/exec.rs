//! Starting, stopping and watching module processes, and the restart policy applied when a
//! process ends on its own.

use super::{Agent, Module, Run};
use crate::config::AgentConfig;
use crate::logs::{self, RotatingLog};
use crate::persist;
use crate::plan::{Action, RuntimeStatus};
use crate::runner::{ExitStatus, Signal, SpawnSpec};
use edge_core::ModuleId;
use edge_manifest::{DesiredStatus, ModuleKind, ModuleSpec, ProcessSettings, RestartPolicy};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long to wait for a process to go after SIGKILL before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The API version handed to modules, as edgelet does.
const API_VERSION: &str = "2022-08-03";

/// Environment variables the agent sets; a manifest cannot override them.
const RESERVED_ENV: [&str; 12] = [
    "IOTEDGE_WORKLOADURI",
    "IOTEDGE_DEVICEID",
    "IOTEDGE_MODULEID",
    "IOTEDGE_IOTHUBHOSTNAME",
    "IOTEDGE_GATEWAYHOSTNAME",
    "IOTEDGE_MODULEGENERATIONID",
    "IOTEDGE_APIVERSION",
    "IOTEDGE_AUTHSCHEME",
    "EDGE_HUB_ADDR",
    "EDGE_HUB_SOCKET",
    "EDGE_MODULE_KEY",
    "EDGE_MODULE_DATA_DIR",
];

/// Why a module is being started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartReason {
    /// First start, or the start of a new version.
    Fresh,
    /// A restart by the restart policy (counts against the budget).
    Policy,
    /// A restart asked for by the operator.
    Manual,
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// There was no process.
    NotRunning,
    /// It exited after SIGTERM.
    Graceful,
    /// It had to be killed.
    Killed,
}

impl Module {
    /// Applies the restart policy after the process ended on its own (or could not start).
    pub(crate) fn after_failure(
        &mut self,
        policy: RestartPolicy,
        failed: bool,
        what: &str,
        now: Instant,
        config: &AgentConfig,
    ) {
        if self
            .started_at
            .is_some_and(|s| now.saturating_duration_since(s) >= config.stable_after)
        {
            self.restart_count = 0;
        }
        let restart = match policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure | RestartPolicy::OnUnhealthy => failed,
            RestartPolicy::Always => true,
        };
        self.restart_at = None;
        if !restart {
            self.status = if failed {
                RuntimeStatus::Failed
            } else {
                RuntimeStatus::Stopped
            };
            self.description = format!("{what} (restart policy {})", policy.as_str());
        } else if self.restart_count >= config.max_restarts {
            self.status = RuntimeStatus::Failed;
            self.description = format!("{what}; gave up after {} restarts", self.restart_count);
        } else {
            let delay = config.backoff(self.restart_count);
            self.status = RuntimeStatus::Backoff;
            self.restart_at = Some(now + delay);
            self.description = format!(
                "{what}; restarting in {}",
                humantime::format_duration(delay)
            );
        }
    }
}

impl Agent {
    /// Carries out one planned action.
    pub(crate) async fn execute(self: &Arc<Self>, action: Action) {
        match action {
            Action::Start(id) => self.start(&id, StartReason::Fresh),
            Action::Restart(id) => {
                let alive = self
                    .lock()
                    .modules
                    .get(&id)
                    .is_some_and(|m| m.run.is_some());
                if alive {
                    self.kill_unhealthy(&id).await;
                } else {
                    self.start(&id, StartReason::Policy);
                }
            }
            Action::Update(id) => {
                tracing::info!(module = %id, "Updating module.");
                self.stop_process(&id, self.config.stop_grace).await;
                if let Some(m) = self.lock().modules.get_mut(&id) {
                    m.restart_count = 0;
                }
                self.start(&id, StartReason::Fresh);
            }
            Action::Stop(id) => {
                self.stop_process(&id, self.config.stop_grace).await;
                let mut st = self.lock();
                let desired = st
                    .desired
                    .as_ref()
                    .and_then(|d| d.modules.get(&id))
                    .cloned();
                if let (Some(m), Some(d)) = (st.modules.get_mut(&id), desired) {
                    m.restart_at = None;
                    if let ModuleKind::Unsupported { kind } = &d.kind {
                        m.applied = None;
                        m.status = RuntimeStatus::Unknown;
                        m.description = unsupported_description(kind);
                    } else {
                        m.applied = Some(d);
                        m.status = RuntimeStatus::Stopped;
                        m.description = "stopped by the deployment".into();
                    }
                }
            }
            Action::Remove(id) => {
                tracing::info!(module = %id, "Removing module.");
                self.stop_process(&id, self.config.stop_grace).await;
                self.lock().modules.remove(&id);
                self.identities.remove(&id);
                self.logs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                let key = persist::identity_path(&self.keys_dir(), &id);
                if let Err(e) = std::fs::remove_file(&key)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(module = %id, error = %e, "Cannot delete the identity of a removed module.");
                }
            }
        }
    }

    /// Kills an unhealthy module (gracefully) and schedules its restart with back-off.
    async fn kill_unhealthy(self: &Arc<Self>, id: &ModuleId) {
        tracing::warn!(module = %id, "Module is unhealthy (no heartbeat); restarting it.");
        self.stop_process(id, self.config.stop_grace).await;
        let mut st = self.lock();
        let policy = policy_of(&st, id);
        if let Some(m) = st.modules.get_mut(id) {
            let what = format!(
                "killed: no heartbeat for {}",
                humantime::format_duration(self.config.heartbeat_timeout)
            );
            m.after_failure(policy, true, &what, Instant::now(), &self.config);
        }
    }

    /// Starts the desired spec of `id`. A failure to start is handled like a failed exit.
    pub(crate) fn start(self: &Arc<Self>, id: &ModuleId, reason: StartReason) {
        let spec = {
            let st = self.lock();
            st.desired.as_ref().and_then(|d| d.modules.get(id)).cloned()
        };
        let Some(spec) = spec else { return };
        let ModuleKind::Process(settings) = &spec.kind else {
            return;
        };
        if spec.status != DesiredStatus::Running {
            return;
        }
        let prepared = self.prepare(&spec, settings);
        let now = Instant::now();
        let spawned = prepared.and_then(|s| {
            self.runner
                .spawn(&s)
                .map_err(|e| format!("failed to start: {}", error_chain(&e)))
        });
        let mut st = self.lock();
        let Some(m) = st.modules.get_mut(id) else {
            return;
        };
        m.applied = Some(spec.clone());
        m.restart_at = None;
        if reason != StartReason::Fresh {
            m.last_restart = Some(SystemTime::now());
        }
        if reason == StartReason::Policy {
            m.restart_count += 1;
        }
        match spawned {
            Ok(p) => {
                let run_id = self.next_run.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = watch::channel(false);
                m.run = Some(Run {
                    pid: p.pid,
                    run_id,
                    stopping: false,
                    exited: rx,
                });
                m.status = RuntimeStatus::Running;
                m.description = "running".into();
                m.started_at = Some(now);
                m.last_start = Some(SystemTime::now());
                drop(st);
                tracing::info!(module = %id, pid = p.pid, version = %spec.version, "Module started.");
                let log = self.module_log(id);
                for (stream, name) in [(p.stdout, "stdout"), (p.stderr, "stderr")] {
                    if let Some(stream) = stream {
                        self.tracker
                            .spawn(logs::pump(stream, name, id.to_string(), log.clone()));
                    }
                }
                let agent = Arc::clone(self);
                let id = id.clone();
                self.tracker
                    .spawn(async move { agent.watch_exit(id, p.pid, run_id, tx).await });
            }
            Err(why) => {
                tracing::warn!(module = %id, error = %why, "Module could not be started.");
                m.started_at = None;
                let policy = spec.restart_policy;
                m.after_failure(policy, true, &why, now, &self.config);
            }
        }
    }

    /// Resolves the binary, the identity and the directories, and builds the spawn spec.
    /// Small synchronous file operations only (identity file, directory).
    fn prepare(&self, spec: &ModuleSpec, settings: &ProcessSettings) -> Result<SpawnSpec, String> {
        let id = &spec.id;
        let program = edge_manifest::resolve_binary(
            settings,
            &self.setup.manifest_dir,
            &self.setup.module_path,
        )
        .ok_or_else(|| {
            format!(
                "binary `{}` not found or not executable",
                settings.path.display()
            )
        })?;
        let identity = persist::load_or_create_identity(&self.keys_dir(), id)
            .map_err(|e| format!("cannot load or create the module identity: {e}"))?;
        self.identities.insert(id.clone(), identity.key.clone());
        let data_dir = self.module_data_dir(id);
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let cwd = match &settings.working_dir {
            Some(w) if w.is_absolute() => w.clone(),
            Some(w) => self.setup.manifest_dir.join(w),
            None => data_dir.clone(),
        };
        let mut env: Vec<(String, String)> = Vec::new();
        for (k, v) in &spec.env {
            if RESERVED_ENV.contains(&k.as_str()) {
                tracing::warn!(module = %id, name = %k, "Ignoring a deployment env var the agent sets itself.");
            } else {
                env.push((k.clone(), v.clone()));
            }
        }
        let s = &self.setup;
        for (k, v) in &s.extra_env {
            if !env.iter().any(|(ek, _)| ek == k) {
                env.push((k.clone(), v.clone()));
            }
        }
        env.extend([
            ("IOTEDGE_DEVICEID".into(), s.device_id.clone()),
            ("IOTEDGE_MODULEID".into(), id.to_string()),
            ("IOTEDGE_IOTHUBHOSTNAME".into(), s.iothub_hostname.clone()),
            ("IOTEDGE_GATEWAYHOSTNAME".into(), s.gateway_hostname.clone()),
            ("IOTEDGE_MODULEGENERATIONID".into(), identity.generation_id),
            ("IOTEDGE_APIVERSION".into(), API_VERSION.into()),
            ("IOTEDGE_AUTHSCHEME".into(), "sasToken".into()),
            ("IOTEDGE_WORKLOADURI".into(), s.workload_uri.clone()),
            ("EDGE_HUB_ADDR".into(), s.hub_addr.clone()),
            (
                "EDGE_MODULE_KEY".into(),
                identity.key.expose_base64().to_owned(),
            ),
            (
                "EDGE_MODULE_DATA_DIR".into(),
                data_dir.display().to_string(),
            ),
        ]);
        if let Some(sock) = &s.hub_socket {
            env.push(("EDGE_HUB_SOCKET".into(), sock.display().to_string()));
        }
        Ok(SpawnSpec {
            program,
            args: settings.args.clone(),
            env,
            cwd,
        })
    }

    fn module_log(&self, id: &ModuleId) -> Arc<tokio::sync::Mutex<RotatingLog>> {
        let path = self.module_log_path(id);
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(RotatingLog::new(
                    path,
                    self.config.log_max_bytes,
                    self.config.log_keep,
                )))
            })
            .clone()
    }

    /// Waits for one run to end, records the exit and applies the restart policy unless the
    /// agent stopped it.
    async fn watch_exit(
        self: Arc<Self>,
        id: ModuleId,
        pid: u32,
        run_id: u64,
        exited: watch::Sender<bool>,
    ) {
        let status = self.runner.wait(pid).await;
        // Whatever the module left behind in its process group goes with it.
        let _ = self.runner.signal(pid, Signal::Kill);
        let now = Instant::now();
        {
            let mut st = self.lock();
            let policy = policy_of(&st, &id);
            if let Some(m) = st.modules.get_mut(&id)
                && m.run.as_ref().is_some_and(|r| r.run_id == run_id)
            {
                let stopping = m.run.take().is_some_and(|r| r.stopping);
                m.last_exit = Some(SystemTime::now());
                let what = match &status {
                    Ok(s) => {
                        m.exit_code = Some(s.reported_code());
                        s.to_string()
                    }
                    Err(e) => {
                        m.exit_code = None;
                        format!("lost track of the process: {e}")
                    }
                };
                let failed = !status.as_ref().is_ok_and(ExitStatus::success);
                tracing::info!(module = %id, pid, stopping, exit = %what, "Module exited.");
                if stopping {
                    m.status = RuntimeStatus::Stopped;
                    m.description = what;
                } else {
                    m.after_failure(policy, failed, &what, now, &self.config);
                }
            }
        }
        exited.send_replace(true);
        self.wake.notify_one();
    }

    /// SIGTERM to the module's process group, up to `grace`, then SIGKILL. Returns once the
    /// exit has been recorded (or SIGKILL did not help within a few seconds).
    pub(crate) async fn stop_process(&self, id: &ModuleId, grace: Duration) -> StopOutcome {
        let target = {
            let mut st = self.lock();
            st.modules
                .get_mut(id)
                .and_then(|m| m.run.as_mut())
                .map(|r| {
                    r.stopping = true;
                    (r.pid, r.exited.clone())
                })
        };
        let Some((pid, mut exited)) = target else {
            return StopOutcome::NotRunning;
        };
        tracing::info!(module = %id, pid, "Stopping module.");
        if let Err(e) = self.runner.signal(pid, Signal::Term) {
            tracing::debug!(module = %id, pid, error = %e, "SIGTERM not delivered.");
        }
        if tokio::time::timeout(grace, exited.wait_for(|e| *e))
            .await
            .is_ok()
        {
            return StopOutcome::Graceful;
        }
        tracing::warn!(module = %id, pid, grace = %humantime::format_duration(grace), "Module ignored SIGTERM; killing it.");
        if let Err(e) = self.runner.signal(pid, Signal::Kill) {
            tracing::debug!(module = %id, pid, error = %e, "SIGKILL not delivered.");
        }
        if tokio::time::timeout(KILL_WAIT, exited.wait_for(|e| *e))
            .await
            .is_err()
        {
            tracing::warn!(module = %id, pid, "Module did not exit after SIGKILL.");
        }
        StopOutcome::Killed
    }
}

/// The restart policy in force for a module: the desired one, else the one it ran with.
fn policy_of(st: &super::State, id: &ModuleId) -> RestartPolicy {
    st.desired
        .as_ref()
        .and_then(|d| d.modules.get(id))
        .or_else(|| st.modules.get(id).and_then(|m| m.applied.as_ref()))
        .map_or(RestartPolicy::OnUnhealthy, |s| s.restart_policy)
}

pub(crate) fn unsupported_description(kind: &str) -> String {
    format!("module type `{kind}` cannot run here; this runtime runs `process` modules only")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
