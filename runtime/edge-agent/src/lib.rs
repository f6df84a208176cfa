//! The edge agent: turns a [`Deployment`](edge_manifest::Deployment) into running module
//! processes and keeps them that way.
//!
//! Layout:
//! - [`mod@plan`]: the pure reconcile function `plan(desired, observed) -> Vec<Action>` and its
//!   table.
//! - [`runner`]: the `ProcessRunner` seam (spawn / signal / wait) and its tokio
//!   implementation; [`fake`]: a recording fake with failure switches.
//! - [`hub`]: the `HubSeam` the agent uses to hand deployments to the hub, read heartbeats
//!   and publish `$edgeAgent` reported properties; `NoHub` for offline use.
//! - [`agent`]: the [`Agent`]: deployments (checks, hub, history, automatic rollback), the
//!   supervision loop (restart policy with Azure's back-off, heartbeats, startup order,
//!   graceful stop), module identities and environment, log capture, shutdown.
//! - [`config`]: [`AgentConfig`] (constants, Azure defaults) and [`AgentSetup`] (paths and
//!   device identity).
//! - [`logs`], [`history`], [`report`]: module log files with rotation, the deployment
//!   history file, reported properties and `edgectl list` rows.
//!
//! Files under `data_dir`: `history.jsonl`, `last-good.json`, `keys/<id>.json` (0600),
//! `logs/<id>.log[.N]`, `modules/<id>/` (each module's data directory).

pub mod agent;
pub mod config;
pub mod fake;
pub mod history;
pub mod hub;
pub mod logs;
mod persist;
pub mod plan;
pub mod report;
pub mod runner;

pub use agent::{Agent, AgentError, DeployError, DeployOutcome, ShutdownReason};
pub use config::{AgentConfig, AgentSetup};
pub use history::{HistoryEntry, Outcome};
pub use hub::{HubSeam, NoHub};
pub use plan::{Action, ModuleState, RuntimeStatus, plan};
pub use report::ModuleStatusReport;
pub use runner::{
    ExitStatus, ProcessRunner, RunnerError, Signal, SpawnSpec, SpawnedProcess, TokioRunner,
};
