//! The [`Agent`]: holds the deployment and the module states, applies plans, supervises
//! processes, keeps history, rolls back, reports.
//!
//! Layout: this file has the state and the public API; `exec.rs` starts, stops and watches
//! processes; `supervise.rs` is the loop (health, heartbeats, rollback, plan, report).

mod exec;
mod supervise;
#[cfg(test)]
mod tests;

use crate::config::{AgentConfig, AgentSetup};
use crate::history::{History, HistoryEntry, Outcome};
use crate::hub::HubSeam;
use crate::logs::RotatingLog;
use crate::persist;
use crate::plan::RuntimeStatus;
use crate::report::{ModuleStatusReport, codes};
use crate::runner::ProcessRunner;
use edge_core::ModuleId;
use edge_core::identity::IdentityRegistry;
use edge_manifest::{Deployment, ModuleKind, ModuleSpec};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// Why constructing the agent or a management call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file or directory of the agent could not be created or read.
    #[error("cannot prepare {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The module is not in the current deployment.
    #[error("no module `{0}` in the current deployment")]
    UnknownModule(String),
    /// The module exists but cannot be restarted.
    #[error("module `{module}` cannot be restarted: {why}")]
    NotRestartable {
        /// The module.
        module: String,
        /// Why.
        why: String,
    },
}

/// A deployment the agent refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    /// Refused by the agent's checks or by the hub.
    #[error("deployment {hash} refused ({code}): {}", reasons.join("; "))]
    Refused {
        /// The deployment's hash.
        hash: String,
        /// Azure status code: 400 (the hub refused it, or a module id is unusable as a
        /// file name).
        code: u16,
        /// Every reason.
        reasons: Vec<String>,
    },
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// What [`Agent::deploy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployOutcome {
    /// Accepted; the supervision loop is applying it. It becomes healthy or is rolled back
    /// within the rollback window (see [`Agent::history`]).
    Applied {
        /// Its hash.
        hash: String,
    },
    /// Identical to the current deployment; nothing to do.
    Unchanged {
        /// Its hash.
        hash: String,
    },
}

/// Why [`Agent::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownReason {
    /// The cancellation token fired; every module was stopped.
    Cancelled {
        /// Modules that ignored SIGTERM (or ran out of the shutdown grace) and were killed.
        killed: Vec<ModuleId>,
    },
}

/// One run of a module's process.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) pid: u32,
    pub(crate) run_id: u64,
    /// The agent asked it to stop; its exit is not a failure.
    pub(crate) stopping: bool,
    /// Becomes true once the exit has been recorded.
    pub(crate) exited: watch::Receiver<bool>,
}

/// The agent's view of one module.
#[derive(Debug)]
pub(crate) struct Module {
    pub(crate) applied: Option<ModuleSpec>,
    pub(crate) status: RuntimeStatus,
    pub(crate) description: String,
    pub(crate) run: Option<Run>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) last_start: Option<SystemTime>,
    pub(crate) last_exit: Option<SystemTime>,
    pub(crate) last_restart: Option<SystemTime>,
    pub(crate) restart_count: u32,
    pub(crate) restart_at: Option<Instant>,
    pub(crate) started_at: Option<Instant>,
}

impl Module {
    fn new() -> Self {
        Self {
            applied: None,
            status: RuntimeStatus::Unknown,
            description: "not started yet".into(),
            run: None,
            exit_code: None,
            last_start: None,
            last_exit: None,
            last_restart: None,
            restart_count: 0,
            restart_at: None,
            started_at: None,
        }
    }
}

/// A deployment within its rollback window.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) hash: String,
    pub(crate) source: String,
    pub(crate) deadline: Instant,
}

/// Everything behind the state lock.
///
/// # Invariants
/// - A module with `run: Some` has a live (or not yet reaped) process and is `running` or
///   `unhealthy`; `backoff` implies `restart_at: Some`.
/// - `pending` refers to `desired`.
/// - `last_good`, when set, once reached healthy (and is what `last-good.json` holds).
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) desired: Option<Deployment>,
    pub(crate) last_good: Option<Deployment>,
    pub(crate) pending: Option<Pending>,
    pub(crate) modules: BTreeMap<ModuleId, Module>,
    pub(crate) desired_version: u64,
    pub(crate) desired_status: (u16, String),
    pub(crate) shutting_down: bool,
    pub(crate) last_report: Option<serde_json::Value>,
}

/// The edge agent.
///
/// Build it with [`Agent::new`], give it a deployment with [`Agent::deploy`] (before or after
/// starting the loop) and drive it with [`Agent::run`] until the token is cancelled.
///
/// # Invariants
/// Process operations (the loop's reconcile pass, [`Agent::restart`], shutdown) are
/// serialised by `ops`; deployments and rollbacks by `deploy_lock`. Lock order:
/// `deploy_lock` → `state` → `history`. No std lock is held across an await.
pub struct Agent {
    pub(crate) setup: AgentSetup,
    pub(crate) config: AgentConfig,
    pub(crate) runner: Arc<dyn ProcessRunner>,
    pub(crate) hub: Arc<dyn HubSeam>,
    pub(crate) identities: IdentityRegistry,
    pub(crate) state: Mutex<State>,
    pub(crate) history: Mutex<History>,
    pub(crate) deploy_lock: Mutex<()>,
    pub(crate) ops: tokio::sync::Mutex<()>,
    pub(crate) wake: Notify,
    pub(crate) tracker: TaskTracker,
    pub(crate) logs: Mutex<HashMap<ModuleId, Arc<tokio::sync::Mutex<RotatingLog>>>>,
    pub(crate) next_run: AtomicU64,
}

const HISTORY_FILE: &str = "history.jsonl";
const LAST_GOOD_FILE: &str = "last-good.json";

impl Agent {
    /// Builds the agent: creates `data_dir` (and `keys/`, `logs/`, `modules/`), reads the
    /// deployment history and the last good deployment.
    ///
    /// # Errors
    /// [`AgentError::Io`] when a directory cannot be created or the history cannot be read.
    pub fn new(
        setup: AgentSetup,
        config: AgentConfig,
        runner: Arc<dyn ProcessRunner>,
        hub: Arc<dyn HubSeam>,
        identities: IdentityRegistry,
    ) -> Result<Arc<Self>, AgentError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AgentError::Io { path, source }
        };
        for dir in [
            setup.data_dir.clone(),
            setup.data_dir.join("logs"),
            setup.data_dir.join("modules"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let keys = setup.data_dir.join("keys");
        std::fs::create_dir_all(&keys).map_err(io(&keys))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&keys))?;
        }
        let history_path = setup.data_dir.join(HISTORY_FILE);
        let history = History::load(&history_path).map_err(io(&history_path))?;
        let desired_version = history
            .entries()
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Applied | Outcome::Refused { .. }))
            .count() as u64;
        let last_good = Self::load_last_good(&setup.data_dir.join(LAST_GOOD_FILE));
        Ok(Arc::new(Self {
            setup,
            config,
            runner,
            hub,
            identities,
            state: Mutex::new(State {
                desired: None,
                last_good,
                pending: None,
                modules: BTreeMap::new(),
                desired_version,
                desired_status: (codes::UNKNOWN, "no deployment received yet".into()),
                shutting_down: false,
                last_report: None,
            }),
            history: Mutex::new(history),
            deploy_lock: Mutex::new(()),
            ops: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            tracker: TaskTracker::new(),
            logs: Mutex::new(HashMap::new()),
            next_run: AtomicU64::new(1),
        }))
    }

    fn load_last_good(path: &Path) -> Option<Deployment> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Cannot read the last good deployment.");
                return None;
            }
        };
        match persist::deployment_from_json(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Ignoring an unreadable last good deployment.");
                None
            }
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, entry: HistoryEntry) {
        let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = h.append(entry) {
            tracing::warn!(error = %e, "Cannot append to the deployment history.");
        }
    }

    /// Applies a new (validated) deployment: hands it to the hub (`HubSeam::apply`) and, if
    /// the hub accepts it, makes it the desired deployment; the supervision loop then starts,
    /// updates and removes modules. It must become healthy (every `running` process module up
    /// for `healthy_after`, and heartbeating when the hub delivers heartbeats) within
    /// `rollback_window`, or the last good deployment is restored. Refusals, applications
    /// and their outcome go to the history. Does a small synchronous write (the history line).
    ///
    /// # Errors
    /// [`DeployError::Refused`] (the running deployment is untouched) or
    /// [`DeployError::ShuttingDown`].
    pub fn deploy(&self, d: Deployment, source: &str) -> Result<DeployOutcome, DeployError> {
        let _serial = self
            .deploy_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        {
            let st = self.lock();
            if st.shutting_down {
                return Err(DeployError::ShuttingDown);
            }
            if st.desired.as_ref() == Some(&d) {
                return Ok(DeployOutcome::Unchanged { hash: d.hash });
            }
        }
        let refused = check_deployment(&d).or_else(|| {
            self.hub.apply(&d).err().map(|e| {
                (
                    codes::CONFIG_FORMAT_ERROR,
                    vec![format!("refused by the hub: {e}")],
                )
            })
        });
        if let Some((code, reasons)) = refused {
            self.refuse(&d.hash, source, code, &reasons);
            return Err(DeployError::Refused {
                hash: d.hash,
                code,
                reasons,
            });
        }
        let hash = d.hash.clone();
        {
            let mut st = self.lock();
            st.desired_version += 1;
            st.desired_status = (
                codes::OK,
                "applied; waiting for modules to become healthy".into(),
            );
            st.pending = Some(Pending {
                hash: hash.clone(),
                source: source.to_owned(),
                deadline: Instant::now() + self.config.rollback_window,
            });
            st.desired = Some(d);
        }
        tracing::info!(hash = %hash, source, "Deployment applied.");
        self.record(HistoryEntry::now(&hash, source, Outcome::Applied));
        self.wake.notify_one();
        Ok(DeployOutcome::Applied { hash })
    }

    /// Records a deployment refused before it reached the agent (e.g. a manifest that does not
    /// parse: pass `ManifestError::status_code()` and its problems): history line and
    /// `lastDesiredStatus`, nothing else changes. `hash` may be empty when none is known.
    pub fn record_refused(&self, hash: &str, source: &str, code: u16, reasons: &[String]) {
        let _serial = self
            .deploy_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.refuse(hash, source, code, reasons);
    }

    /// Called with `deploy_lock` held.
    fn refuse(&self, hash: &str, source: &str, code: u16, reasons: &[String]) {
        tracing::warn!(hash, source, code, reasons = ?reasons, "Deployment refused.");
        {
            let mut st = self.lock();
            st.desired_version += 1;
            st.desired_status = (code, reasons.join("; "));
        }
        self.record(HistoryEntry::now(
            hash,
            source,
            Outcome::Refused {
                code,
                reasons: reasons.to_vec(),
            },
        ));
        self.wake.notify_one();
    }

    /// The module rows for `edgectl list`, by name.
    #[must_use]
    pub fn list(&self) -> Vec<ModuleStatusReport> {
        let st = self.lock();
        let now = Instant::now();
        st.modules
            .iter()
            .map(|(id, m)| {
                let version = st
                    .desired
                    .as_ref()
                    .and_then(|d| d.modules.get(id))
                    .or(m.applied.as_ref())
                    .map(|s| s.version.clone())
                    .unwrap_or_default();
                ModuleStatusReport {
                    name: id.to_string(),
                    status: m.status,
                    description: m.description.clone(),
                    version,
                    restarts: m.restart_count,
                    start_time: m.last_start.map(utc),
                    uptime: m
                        .run
                        .as_ref()
                        .and(m.started_at)
                        .map(|s| now.saturating_duration_since(s)),
                    pid: m.run.as_ref().map(|r| r.pid),
                    exit_code: m.exit_code,
                }
            })
            .collect()
    }

    /// Stops (SIGTERM, grace, SIGKILL) and starts a module again; resets its restart count,
    /// so a `failed` module gets a fresh budget.
    ///
    /// # Errors
    /// [`AgentError::UnknownModule`] when it is not in the deployment,
    /// [`AgentError::NotRestartable`] when it is stopped by the deployment or of a type this
    /// runtime cannot run, or the agent is shutting down.
    pub async fn restart(self: &Arc<Self>, module: &str) -> Result<(), AgentError> {
        let _ops = self.ops.lock().await;
        let id = {
            let st = self.lock();
            let spec = st
                .desired
                .as_ref()
                .and_then(|d| d.modules.values().find(|m| m.id.as_str() == module))
                .ok_or_else(|| AgentError::UnknownModule(module.to_owned()))?;
            let not = |why: &str| AgentError::NotRestartable {
                module: module.to_owned(),
                why: why.to_owned(),
            };
            if st.shutting_down {
                return Err(not("the agent is shutting down"));
            }
            if let ModuleKind::Unsupported { kind } = &spec.kind {
                return Err(not(&format!("type `{kind}` cannot run here")));
            }
            if spec.status == edge_manifest::DesiredStatus::Stopped {
                return Err(not("the deployment wants it stopped"));
            }
            spec.id.clone()
        };
        tracing::info!(module = %id, "Restarting module on request.");
        self.stop_process(&id, self.config.stop_grace).await;
        if let Some(m) = self.lock().modules.get_mut(&id) {
            m.restart_count = 0;
        }
        self.start(&id, exec::StartReason::Manual);
        self.wake.notify_one();
        Ok(())
    }

    /// The deployment history, oldest first (also what was read back from disk).
    #[must_use]
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries()
            .to_vec()
    }

    /// The current log file of a module (`data_dir/logs/<id>.log`), when the module is in the
    /// deployment, known to the agent or has a log (the file may not exist yet).
    #[must_use]
    pub fn log_path(&self, module: &str) -> Option<PathBuf> {
        let id = ModuleId::new(module).ok().filter(safe_file_name)?;
        let path = self.module_log_path(&id);
        let known = {
            let st = self.lock();
            st.modules.contains_key(&id)
                || st
                    .desired
                    .as_ref()
                    .is_some_and(|d| d.modules.contains_key(&id))
        };
        (known || path.exists()).then_some(path)
    }

    /// The desired deployment, if any.
    #[must_use]
    pub fn current(&self) -> Option<Deployment> {
        self.lock().desired.clone()
    }

    /// The last deployment that reached healthy (survives restarts of edged); edged can fall
    /// back to it when its deployment file is unusable.
    #[must_use]
    pub fn last_good(&self) -> Option<Deployment> {
        self.lock().last_good.clone()
    }

    /// The `$edgeAgent` reported properties as they stand.
    #[must_use]
    pub fn reported(&self) -> serde_json::Value {
        supervise::build_report(&self.lock())
    }

    /// The generation id issued to `module` (its `IOTEDGE_MODULEGENERATIONID`), read from its
    /// identity file; `None` for an unknown module or one that was never started. The
    /// workload API checks sign requests against it.
    #[must_use]
    pub fn generation_id(&self, module: &str) -> Option<String> {
        let id = ModuleId::new(module).ok().filter(safe_file_name)?;
        match persist::load_identity(&self.keys_dir(), &id) {
            Ok(identity) => identity.map(|i| i.generation_id),
            Err(error) => {
                tracing::warn!(module = %id, %error, "Cannot read the module identity.");
                None
            }
        }
    }

    pub(crate) fn module_log_path(&self, id: &ModuleId) -> PathBuf {
        self.setup.data_dir.join("logs").join(format!("{id}.log"))
    }

    pub(crate) fn module_data_dir(&self, id: &ModuleId) -> PathBuf {
        self.setup.data_dir.join("modules").join(id.as_str())
    }

    pub(crate) fn keys_dir(&self) -> PathBuf {
        self.setup.data_dir.join("keys")
    }

    pub(crate) fn persist_last_good(&self, d: &Deployment) {
        let path = self.setup.data_dir.join(LAST_GOOD_FILE);
        let result = persist::deployment_to_json(d)
            .map_err(std::io::Error::other)
            .and_then(|text| persist::write_atomic(&path, text.as_bytes(), 0o600));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "Cannot store the last good deployment.");
        }
    }
}

/// `.` and `..` are valid module ids but not file names the agent may use.
pub(crate) fn safe_file_name(id: &ModuleId) -> bool {
    id.as_str() != "." && id.as_str() != ".."
}

/// Checks the agent makes before the hub sees a deployment (the manifest is validated by
/// `edge_manifest::parse`; this only guards the file names the agent derives from ids).
fn check_deployment(d: &Deployment) -> Option<(u16, Vec<String>)> {
    let bad: Vec<String> = d
        .modules
        .keys()
        .filter(|id| !safe_file_name(id))
        .map(|id| format!("module id `{id}` cannot be used as a file name"))
        .collect();
    (!bad.is_empty()).then_some((codes::CONFIG_FORMAT_ERROR, bad))
}

/// UTC RFC 3339 with milliseconds.
pub(crate) fn utc(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
