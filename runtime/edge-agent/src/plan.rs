//! Reconcile: a pure function from the desired deployment and the observed module states to
//! the list of actions that brings the one to the other.
//!
//! The table (d = desired spec, o = observed state, "active" = running, unhealthy or in
//! back-off):
//!
//! | case | action |
//! |---|---|
//! | o has no desired module | `Remove` |
//! | d unsupported type, o active | `Stop` |
//! | d stopped, o active or not yet stopped by deployment | `Stop` |
//! | d running, never started | `Start` |
//! | d running, version / type / settings / env changed, o active | `Update` |
//! | d running, version / type / settings / env changed, o not active | `Start` |
//! | d running, o was stopped by deployment | `Start` |
//! | d running, o unhealthy and policy `on-unhealthy` | `Restart` |
//! | d running, o in back-off and the back-off has elapsed | `Restart` |
//! | anything else | nothing |
//!
//! Removals and stops come first, in reverse start order; then starts, updates and restarts in
//! start order (`startupOrder`, then id).

use edge_core::ModuleId;
use edge_manifest::{Deployment, DesiredStatus, ModuleKind, ModuleSpec, RestartPolicy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A module's runtime status, as `$edgeAgent` reports it (`runtimeStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeStatus {
    /// Not started (yet), or a module type this runtime cannot run.
    Unknown,
    /// Exited; waiting for its back-off to elapse before a restart.
    Backoff,
    /// The process is running.
    Running,
    /// The process is running but its heartbeat stopped.
    Unhealthy,
    /// Not running, by the deployment's wish or by its restart policy.
    Stopped,
    /// Not running, and the agent gave up restarting it.
    Failed,
}

impl RuntimeStatus {
    /// The spelling used in reported properties.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::Unknown => "unknown",
            RuntimeStatus::Backoff => "backoff",
            RuntimeStatus::Running => "running",
            RuntimeStatus::Unhealthy => "unhealthy",
            RuntimeStatus::Stopped => "stopped",
            RuntimeStatus::Failed => "failed",
        }
    }

    /// Running, unhealthy or in back-off: the module is meant to be up.
    #[must_use]
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RuntimeStatus::Running | RuntimeStatus::Unhealthy | RuntimeStatus::Backoff
        )
    }
}

impl std::fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the executor observed about one module.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleState {
    /// The module id.
    pub id: ModuleId,
    /// The spec the module last ran (or was stopped) with; `None` if it was never started.
    pub applied: Option<ModuleSpec>,
    /// Its runtime status.
    pub status: RuntimeStatus,
    /// In back-off, and the back-off has elapsed.
    pub restart_due: bool,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a module that is not running.
    Start(ModuleId),
    /// Stop a module (or mark a module that is not running as stopped by the deployment).
    Stop(ModuleId),
    /// Restart a module (after its back-off, or because it is unhealthy).
    Restart(ModuleId),
    /// Stop the old version, then start the new one.
    Update(ModuleId),
    /// Stop a module that is no longer in the deployment and forget it.
    Remove(ModuleId),
}

impl Action {
    /// The module the action is about.
    #[must_use]
    pub fn module(&self) -> &ModuleId {
        match self {
            Action::Start(m)
            | Action::Stop(m)
            | Action::Restart(m)
            | Action::Update(m)
            | Action::Remove(m) => m,
        }
    }
}

/// True when the running process must be replaced to match `desired`: version, type,
/// settings or environment differ.
#[must_use]
pub fn needs_new_process(applied: &ModuleSpec, desired: &ModuleSpec) -> bool {
    applied.version != desired.version || applied.kind != desired.kind || applied.env != desired.env
}

/// Computes the actions that bring `observed` to `desired`. Pure; see the module docs for the
/// table.
#[must_use]
pub fn plan(desired: &Deployment, observed: &[ModuleState]) -> Vec<Action> {
    // (startup order, id) keys; stops sort descending, starts ascending.
    let mut stops: Vec<((u32, &ModuleId), Action)> = Vec::new();
    let mut starts: Vec<((u32, &ModuleId), Action)> = Vec::new();

    for o in observed {
        if !desired.modules.contains_key(&o.id) {
            let order = o.applied.as_ref().map_or(u32::MAX, |s| s.startup_order);
            stops.push(((order, &o.id), Action::Remove(o.id.clone())));
        }
    }

    let by_id: HashMap<&ModuleId, &ModuleState> = observed.iter().map(|o| (&o.id, o)).collect();
    for d in desired.modules.values() {
        let o = by_id.get(&d.id).copied();
        let key = (d.startup_order, &d.id);
        let active = o.is_some_and(|o| o.status.is_active());
        if matches!(d.kind, ModuleKind::Unsupported { .. }) {
            if active {
                stops.push((key, Action::Stop(d.id.clone())));
            }
            continue;
        }
        let applied = o.and_then(|o| o.applied.as_ref());
        if d.status == DesiredStatus::Stopped {
            let stopped_by_deployment = applied.is_some_and(|a| a.status == DesiredStatus::Stopped);
            if active || !stopped_by_deployment {
                stops.push((key, Action::Stop(d.id.clone())));
            }
            continue;
        }
        let (Some(o), Some(applied)) = (o, applied) else {
            starts.push((key, Action::Start(d.id.clone())));
            continue;
        };
        let action = if needs_new_process(applied, d) {
            Some(if active {
                Action::Update(d.id.clone())
            } else {
                Action::Start(d.id.clone())
            })
        } else if applied.status == DesiredStatus::Stopped && !active {
            Some(Action::Start(d.id.clone()))
        } else {
            match o.status {
                RuntimeStatus::Unhealthy if d.restart_policy == RestartPolicy::OnUnhealthy => {
                    Some(Action::Restart(d.id.clone()))
                }
                RuntimeStatus::Backoff if o.restart_due => Some(Action::Restart(d.id.clone())),
                RuntimeStatus::Unknown => Some(Action::Start(d.id.clone())),
                _ => None,
            }
        };
        if let Some(a) = action {
            starts.push((key, a));
        }
    }

    stops.sort_by(|a, b| b.0.cmp(&a.0));
    starts.sort_by(|a, b| a.0.cmp(&b.0));
    stops.into_iter().chain(starts).map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_manifest::{ProcessSettings, StoreAndForward};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn id(s: &str) -> ModuleId {
        ModuleId::new(s).unwrap()
    }

    fn spec(name: &str, order: u32) -> ModuleSpec {
        ModuleSpec {
            id: id(name),
            version: "1.0".into(),
            kind: ModuleKind::Process(ProcessSettings {
                path: "/bin/true".into(),
                args: vec![],
                working_dir: None,
            }),
            status: DesiredStatus::Running,
            restart_policy: RestartPolicy::OnFailure,
            startup_order: order,
            env: BTreeMap::new(),
        }
    }

    fn deployment(specs: Vec<ModuleSpec>) -> Deployment {
        Deployment {
            schema_version: "1.1".into(),
            modules: specs.into_iter().map(|s| (s.id.clone(), s)).collect(),
            routes: vec![],
            store_and_forward: StoreAndForward {
                time_to_live: Duration::from_secs(7200),
                max_size_bytes: None,
            },
            twins: BTreeMap::new(),
            hash: "h".into(),
        }
    }

    fn obs(s: &ModuleSpec, status: RuntimeStatus) -> ModuleState {
        ModuleState {
            id: s.id.clone(),
            applied: Some(s.clone()),
            status,
            restart_due: false,
        }
    }

    fn with<F: FnOnce(&mut ModuleSpec)>(s: &ModuleSpec, f: F) -> ModuleSpec {
        let mut s = s.clone();
        f(&mut s);
        s
    }

    /// One row: desired spec (None = not in the deployment), observed state, expected actions.
    struct Row {
        name: &'static str,
        desired: Option<ModuleSpec>,
        observed: Option<ModuleState>,
        expect: Option<fn(ModuleId) -> Action>,
    }

    #[test]
    fn single_module_table() {
        let a = spec("a", 0);
        let stopped = with(&a, |s| s.status = DesiredStatus::Stopped);
        let v2 = with(&a, |s| s.version = "2.0".into());
        let env2 = with(&a, |s| {
            s.env.insert("K".into(), "V".into());
        });
        let args2 = with(&a, |s| {
            s.kind = ModuleKind::Process(ProcessSettings {
                path: "/bin/true".into(),
                args: vec!["x".into()],
                working_dir: None,
            });
        });
        let policy = with(&a, |s| s.restart_policy = RestartPolicy::Always);
        let unhealthy_policy = with(&a, |s| s.restart_policy = RestartPolicy::OnUnhealthy);
        let docker = with(&a, |s| {
            s.kind = ModuleKind::Unsupported {
                kind: "docker".into(),
            };
        });
        let rows = vec![
            Row {
                name: "new running module starts",
                desired: Some(a.clone()),
                observed: None,
                expect: Some(Action::Start),
            },
            Row {
                name: "never started (unknown, no spec) starts",
                desired: Some(a.clone()),
                observed: Some(ModuleState {
                    id: id("a"),
                    applied: None,
                    status: RuntimeStatus::Unknown,
                    restart_due: false,
                }),
                expect: Some(Action::Start),
            },
            Row {
                name: "new stopped module is marked stopped",
                desired: Some(stopped.clone()),
                observed: None,
                expect: Some(Action::Stop),
            },
            Row {
                name: "running, unchanged: nothing",
                desired: Some(a.clone()),
                observed: Some(obs(&a, RuntimeStatus::Running)),
                expect: None,
            },
            Row {
                name: "running, desired stopped: stop",
                desired: Some(stopped.clone()),
                observed: Some(obs(&a, RuntimeStatus::Running)),
                expect: Some(Action::Stop),
            },
            Row {
                name: "backoff, desired stopped: stop",
                desired: Some(stopped.clone()),
                observed: Some(obs(&a, RuntimeStatus::Backoff)),
                expect: Some(Action::Stop),
            },
            Row {
                name: "failed, desired stopped: mark stopped",
                desired: Some(stopped.clone()),
                observed: Some(obs(&a, RuntimeStatus::Failed)),
                expect: Some(Action::Stop),
            },
            Row {
                name: "stopped by deployment stays stopped",
                desired: Some(stopped.clone()),
                observed: Some(obs(&stopped, RuntimeStatus::Stopped)),
                expect: None,
            },
            Row {
                name: "stopped by deployment, desired running: start",
                desired: Some(a.clone()),
                observed: Some(obs(&stopped, RuntimeStatus::Stopped)),
                expect: Some(Action::Start),
            },
            Row {
                name: "stopped by policy stays stopped",
                desired: Some(a.clone()),
                observed: Some(obs(&a, RuntimeStatus::Stopped)),
                expect: None,
            },
            Row {
                name: "failed stays failed",
                desired: Some(a.clone()),
                observed: Some(obs(&a, RuntimeStatus::Failed)),
                expect: None,
            },
            Row {
                name: "version change while running: update",
                desired: Some(v2.clone()),
                observed: Some(obs(&a, RuntimeStatus::Running)),
                expect: Some(Action::Update),
            },
            Row {
                name: "env change while running: update",
                desired: Some(env2.clone()),
                observed: Some(obs(&a, RuntimeStatus::Running)),
                expect: Some(Action::Update),
            },
            Row {
                name: "settings change while in back-off: update",
                desired: Some(args2.clone()),
                observed: Some(obs(&a, RuntimeStatus::Backoff)),
                expect: Some(Action::Update),
            },
            Row {
                name: "version change of a failed module: start",
                desired: Some(v2.clone()),
                observed: Some(obs(&a, RuntimeStatus::Failed)),
                expect: Some(Action::Start),
            },
            Row {
                name: "version change while desired stopped: stop only",
                desired: Some(with(&v2, |s| s.status = DesiredStatus::Stopped)),
                observed: Some(obs(&a, RuntimeStatus::Running)),
                expect: Some(Action::Stop),
            },
            Row {
                name: "restart policy change alone: nothing",
                desired: Some(policy.clone()),
                observed: Some(obs(&a, RuntimeStatus::Running)),
                expect: None,
            },
            Row {
                name: "backoff not elapsed: nothing",
                desired: Some(a.clone()),
                observed: Some(obs(&a, RuntimeStatus::Backoff)),
                expect: None,
            },
            Row {
                name: "backoff elapsed: restart",
                desired: Some(a.clone()),
                observed: Some(ModuleState {
                    restart_due: true,
                    ..obs(&a, RuntimeStatus::Backoff)
                }),
                expect: Some(Action::Restart),
            },
            Row {
                name: "unhealthy with on-unhealthy: restart",
                desired: Some(unhealthy_policy.clone()),
                observed: Some(obs(&unhealthy_policy, RuntimeStatus::Unhealthy)),
                expect: Some(Action::Restart),
            },
            Row {
                name: "unhealthy with on-failure: nothing",
                desired: Some(a.clone()),
                observed: Some(obs(&a, RuntimeStatus::Unhealthy)),
                expect: None,
            },
            Row {
                name: "unsupported type: never started",
                desired: Some(docker.clone()),
                observed: None,
                expect: None,
            },
            Row {
                name: "unsupported type, unknown: nothing",
                desired: Some(docker.clone()),
                observed: Some(ModuleState {
                    id: id("a"),
                    applied: None,
                    status: RuntimeStatus::Unknown,
                    restart_due: false,
                }),
                expect: None,
            },
            Row {
                name: "process became unsupported: stop",
                desired: Some(docker.clone()),
                observed: Some(obs(&a, RuntimeStatus::Running)),
                expect: Some(Action::Stop),
            },
            Row {
                name: "gone from deployment, running: remove",
                desired: None,
                observed: Some(obs(&a, RuntimeStatus::Running)),
                expect: Some(Action::Remove),
            },
            Row {
                name: "gone from deployment, failed: remove",
                desired: None,
                observed: Some(obs(&a, RuntimeStatus::Failed)),
                expect: Some(Action::Remove),
            },
        ];
        for row in rows {
            let d = deployment(row.desired.into_iter().collect());
            let o: Vec<ModuleState> = row.observed.into_iter().collect();
            let got = plan(&d, &o);
            let want: Vec<Action> = row.expect.map(|f| f(id("a"))).into_iter().collect();
            assert_eq!(got, want, "row: {}", row.name);
        }
    }

    #[test]
    fn starts_follow_startup_order_then_id() {
        let d = deployment(vec![
            spec("c", 1),
            spec("b", 0),
            spec("a", 1),
            spec("z", u32::MAX),
        ]);
        assert_eq!(
            plan(&d, &[]),
            vec![
                Action::Start(id("b")),
                Action::Start(id("a")),
                Action::Start(id("c")),
                Action::Start(id("z")),
            ]
        );
    }

    #[test]
    fn stops_and_removals_come_first_in_reverse_order() {
        let a = spec("a", 0);
        let b = spec("b", 1);
        let c = spec("c", 2);
        let gone = spec("gone", 1);
        let d = deployment(vec![
            with(&a, |s| s.status = DesiredStatus::Stopped),
            with(&b, |s| s.version = "2".into()),
            with(&c, |s| s.status = DesiredStatus::Stopped),
            spec("new", 0),
        ]);
        let observed = vec![
            obs(&a, RuntimeStatus::Running),
            obs(&b, RuntimeStatus::Running),
            obs(&c, RuntimeStatus::Running),
            obs(&gone, RuntimeStatus::Running),
        ];
        assert_eq!(
            plan(&d, &observed),
            vec![
                Action::Stop(id("c")),
                Action::Remove(id("gone")),
                Action::Stop(id("a")),
                Action::Start(id("new")),
                Action::Update(id("b")),
            ]
        );
    }

    #[test]
    fn converged_state_plans_nothing() {
        let specs: Vec<ModuleSpec> = (0..20).map(|i| spec(&format!("m{i}"), i % 3)).collect();
        let observed: Vec<ModuleState> = specs
            .iter()
            .map(|s| obs(s, RuntimeStatus::Running))
            .collect();
        assert!(plan(&deployment(specs), &observed).is_empty());
    }
}
