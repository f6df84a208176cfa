//! The supervision loop: each pass checks deployment health (and rolls back), heartbeats and
//! stable-running resets, plans, executes, reports, then sleeps until the next deadline or a
//! wake-up (an exit, a deployment).

use super::exec::{StopOutcome, unsupported_description};
use super::{Agent, Module, ShutdownReason, State, utc};
use crate::history::{HistoryEntry, Outcome};
use crate::plan::{ModuleState, RuntimeStatus, needs_new_process, plan};
use crate::report::{ModuleReport, agent_reported, codes};
use edge_core::ModuleId;
use edge_manifest::{DesiredStatus, ModuleKind};
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The loop re-checks at least this often even when nothing is due.
const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// How long shutdown waits for output pumps and watchers after the modules stopped.
const TASK_DRAIN: Duration = Duration::from_secs(5);

impl Agent {
    /// Runs the supervision loop until `cancel` fires, then stops every module in reverse
    /// start order within `shutdown_grace` (SIGTERM, per-module `stop_grace`, SIGKILL) and
    /// waits for its own tasks.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> ShutdownReason {
        tracing::info!(data_dir = %self.setup.data_dir.display(), "Edge agent running.");
        loop {
            let next = self.pass().await;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
        self.shutdown().await
    }

    /// One reconcile pass; returns when the next one is due.
    async fn pass(self: &Arc<Self>) -> Instant {
        let _ops = self.ops.lock().await;
        self.check_deployment_health();
        let actions = {
            let mut st = self.lock();
            let now = Instant::now();
            self.check_modules(&mut st, now);
            let st = &*st;
            match &st.desired {
                Some(d) => {
                    let observed: Vec<ModuleState> = st
                        .modules
                        .iter()
                        .map(|(id, m)| ModuleState {
                            id: id.clone(),
                            applied: m.applied.clone(),
                            status: m.status,
                            restart_due: m.status == RuntimeStatus::Backoff
                                && m.restart_at.is_some_and(|t| t <= now),
                        })
                        .collect();
                    plan(d, &observed)
                }
                None => Vec::new(),
            }
        };
        // Report what the checks and exits changed before acting, so every state is seen.
        self.report_if_changed();
        for action in actions {
            tracing::debug!(?action, "Executing.");
            self.execute(action).await;
        }
        self.report_if_changed();
        self.next_deadline()
    }

    /// Adds state for new desired modules, adopts restart-policy / order changes, checks
    /// heartbeats and resets restart counts of modules that ran long enough.
    fn check_modules(&self, st: &mut State, now: Instant) {
        let Some(desired) = st.desired.as_ref() else {
            return;
        };
        let hb = self.hub.heartbeats_enabled();
        for spec in desired.modules.values() {
            let m = st
                .modules
                .entry(spec.id.clone())
                .or_insert_with(Module::new);
            if let ModuleKind::Unsupported { kind } = &spec.kind
                && m.run.is_none()
            {
                m.status = RuntimeStatus::Unknown;
                m.description = unsupported_description(kind);
                continue;
            }
            if let Some(a) = &m.applied
                && !needs_new_process(a, spec)
                && a.status == spec.status
                && a != spec
            {
                m.applied = Some(spec.clone());
            }
            let Some(started) = m.started_at.filter(|_| m.run.is_some()) else {
                continue;
            };
            if m.restart_count > 0
                && now.saturating_duration_since(started) >= self.config.stable_after
            {
                tracing::info!(module = %spec.id, "Module ran long enough; restart count reset.");
                m.restart_count = 0;
            }
            if hb && matches!(m.status, RuntimeStatus::Running | RuntimeStatus::Unhealthy) {
                let last = self
                    .hub
                    .last_heartbeat(spec.id.as_str())
                    .map(Instant::from_std)
                    .filter(|h| *h >= started);
                let since = now.saturating_duration_since(last.unwrap_or(started));
                let stale = since > self.config.heartbeat_timeout;
                if stale && m.status == RuntimeStatus::Running {
                    m.status = RuntimeStatus::Unhealthy;
                    m.description = match last {
                        Some(_) => {
                            format!("no heartbeat for {}", humantime::format_duration(since))
                        }
                        None => "no heartbeat since start".into(),
                    };
                } else if !stale && m.status == RuntimeStatus::Unhealthy {
                    m.status = RuntimeStatus::Running;
                    m.description = "running".into();
                }
            }
        }
    }

    /// Why the desired deployment is not healthy yet (`None` = healthy). Healthy: every
    /// `running` process module runs its current spec, has been up for `healthy_after` and
    /// (with heartbeats) heartbeated since its start, or has completed (exit 0, not restarted).
    fn unhealthy_reasons(&self, st: &State, now: Instant) -> Option<String> {
        let d = st.desired.as_ref()?;
        let hb = self.hub.heartbeats_enabled();
        let mut why = Vec::new();
        for spec in d.modules.values() {
            if spec.status != DesiredStatus::Running || !matches!(spec.kind, ModuleKind::Process(_))
            {
                continue;
            }
            let Some(m) = st.modules.get(&spec.id) else {
                why.push(format!("`{}`: not started", spec.id));
                continue;
            };
            let current = m
                .applied
                .as_ref()
                .is_some_and(|a| !needs_new_process(a, spec));
            let up_since = m
                .started_at
                .filter(|_| m.run.is_some() && m.status == RuntimeStatus::Running);
            // A module that exited 0 under a policy that does not restart it has completed.
            let completed = m.status == RuntimeStatus::Stopped && m.exit_code == Some(0);
            match up_since {
                _ if current && completed => {}
                Some(s) if current => {
                    if now.saturating_duration_since(s) < self.config.healthy_after {
                        why.push(format!(
                            "`{}`: not up for {} yet",
                            spec.id,
                            humantime::format_duration(self.config.healthy_after)
                        ));
                    } else if hb
                        && self
                            .hub
                            .last_heartbeat(spec.id.as_str())
                            .is_none_or(|h| Instant::from_std(h) < s)
                    {
                        why.push(format!("`{}`: no heartbeat yet", spec.id));
                    }
                }
                _ => why.push(format!(
                    "`{}`: {} ({}), {} restarts",
                    spec.id, m.status, m.description, m.restart_count
                )),
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Marks a pending deployment healthy, or rolls it back once its window has passed.
    fn check_deployment_health(&self) {
        let _serial = self
            .deploy_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut entries = Vec::new();
        {
            let mut st = self.lock();
            let Some(pending) = st.pending.as_ref() else {
                return;
            };
            let (hash, source, deadline) = (
                pending.hash.clone(),
                pending.source.clone(),
                pending.deadline,
            );
            match self.unhealthy_reasons(&st, now) {
                None => {
                    tracing::info!(hash = %hash, "Deployment is healthy.");
                    st.pending = None;
                    st.desired_status = (codes::OK, "healthy".into());
                    st.last_good = st.desired.clone();
                    if let Some(d) = &st.last_good {
                        self.persist_last_good(d);
                    }
                    entries.push(HistoryEntry::now(&hash, &source, Outcome::Healthy));
                }
                Some(why) if now >= deadline => {
                    st.pending = None;
                    let target = st.last_good.clone().filter(|g| g.hash != hash);
                    match target {
                        Some(good) => match self.hub.apply(&good) {
                            Ok(()) => {
                                tracing::warn!(hash = %hash, to = %good.hash, why = %why, "Deployment not healthy in time; rolled back.");
                                st.desired_status = (
                                    codes::FAILED,
                                    format!("rolled back to {}: {why}", good.hash),
                                );
                                entries.push(HistoryEntry::now(
                                    &hash,
                                    &source,
                                    Outcome::RolledBack {
                                        why,
                                        to: good.hash.clone(),
                                    },
                                ));
                                st.desired = Some(good);
                            }
                            Err(e) => {
                                let why = format!("{why}; the hub refused the rollback: {e}");
                                tracing::warn!(hash = %hash, why = %why, "Deployment not healthy in time; cannot roll back.");
                                st.desired_status = (codes::FAILED, why.clone());
                                entries.push(HistoryEntry::now(
                                    &hash,
                                    &source,
                                    Outcome::Unhealthy { why },
                                ));
                            }
                        },
                        None => {
                            tracing::warn!(hash = %hash, why = %why, "Deployment not healthy in time; nothing to roll back to.");
                            st.desired_status = (codes::FAILED, format!("not healthy: {why}"));
                            entries.push(HistoryEntry::now(
                                &hash,
                                &source,
                                Outcome::Unhealthy { why },
                            ));
                        }
                    }
                }
                Some(_) => {}
            }
        }
        for e in entries {
            self.record(e);
        }
    }

    /// The earliest moment something is due.
    fn next_deadline(&self) -> Instant {
        let st = self.lock();
        let now = Instant::now();
        let mut next = now + IDLE_RECHECK;
        let hb = self.hub.heartbeats_enabled();
        let mut earliest = |t: Instant| {
            if t < next {
                next = t.max(now);
            }
        };
        for m in st.modules.values() {
            if let (RuntimeStatus::Backoff, Some(t)) = (m.status, m.restart_at) {
                earliest(t);
            }
            if let (Some(_), Some(s)) = (&m.run, m.started_at) {
                if m.restart_count > 0 {
                    earliest(s + self.config.stable_after);
                }
                if hb {
                    earliest(now + self.config.heartbeat_poll);
                }
                if st.pending.is_some() {
                    earliest(s + self.config.healthy_after);
                }
            }
        }
        if let Some(p) = &st.pending {
            earliest(p.deadline);
        }
        next
    }

    fn report_if_changed(&self) {
        let report = {
            let mut st = self.lock();
            let report = build_report(&st);
            if st.last_report.as_ref() == Some(&report) {
                return;
            }
            st.last_report = Some(report.clone());
            report
        };
        self.hub.report_agent_state(report);
    }

    /// Stops every module in reverse start order within `shutdown_grace`.
    async fn shutdown(self: Arc<Self>) -> ShutdownReason {
        tracing::info!("Edge agent shutting down; stopping modules.");
        self.lock().shutting_down = true;
        let _ops = self.ops.lock().await;
        let deadline = Instant::now() + self.config.shutdown_grace;
        let mut order: Vec<(u32, ModuleId)> = {
            let st = self.lock();
            st.modules
                .iter()
                .filter(|(_, m)| m.run.is_some() || m.status == RuntimeStatus::Backoff)
                .map(|(id, m)| {
                    let o = m.applied.as_ref().map_or(u32::MAX, |s| s.startup_order);
                    (o, id.clone())
                })
                .collect()
        };
        order.sort_by(|a, b| b.cmp(a));
        let mut killed = Vec::new();
        for (_, id) in order {
            let left = deadline.saturating_duration_since(Instant::now());
            let grace = self.config.stop_grace.min(left);
            if self.stop_process(&id, grace).await == StopOutcome::Killed {
                killed.push(id.clone());
            }
            if let Some(m) = self.lock().modules.get_mut(&id) {
                m.status = RuntimeStatus::Stopped;
                m.restart_at = None;
                m.description = "stopped: the agent shut down".into();
            }
        }
        self.report_if_changed();
        self.tracker.close();
        if tokio::time::timeout(TASK_DRAIN, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "Some module output pumps did not finish (a module left a process holding its output)."
            );
        }
        tracing::info!(killed = killed.len(), "Edge agent stopped.");
        ShutdownReason::Cancelled { killed }
    }
}

/// `$edgeAgent` reported properties from the state.
pub(crate) fn build_report(st: &State) -> serde_json::Value {
    let desired = st.desired.as_ref();
    let modules: Vec<(String, ModuleReport)> = st
        .modules
        .iter()
        .map(|(id, m)| {
            let spec = desired
                .and_then(|d| d.modules.get(id))
                .or(m.applied.as_ref());
            (
                id.to_string(),
                ModuleReport {
                    runtime_status: m.status.as_str(),
                    status_description: m.description.clone(),
                    exit_code: m.exit_code,
                    last_start: m.last_start.map(utc),
                    last_exit: m.last_exit.map(utc),
                    restart_count: m.restart_count,
                    last_restart: m.last_restart.map(utc),
                    version: spec.map(|s| s.version.clone()).unwrap_or_default(),
                    desired_status: spec.map(|s| match s.status {
                        DesiredStatus::Running => "running",
                        DesiredStatus::Stopped => "stopped",
                    }),
                    restart_policy: spec.map(|s| s.restart_policy.as_str()),
                    kind: spec.map(|s| match &s.kind {
                        ModuleKind::Process(_) => "process".to_owned(),
                        ModuleKind::Unsupported { kind } => kind.clone(),
                    }),
                },
            )
        })
        .collect();
    agent_reported(
        desired.map(|d| d.schema_version.as_str()),
        st.desired_version,
        (st.desired_status.0, &st.desired_status.1),
        &modules,
    )
}
