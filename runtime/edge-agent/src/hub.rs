//! The seam between the agent and the hub.

use edge_manifest::Deployment;
use std::time::Instant;

/// What the agent needs from the hub.
pub trait HubSeam: Send + Sync {
    /// Takes a new deployment (routes, twins) before its modules start. An `Err` (the reason)
    /// refuses the deployment and nothing changes.
    ///
    /// # Errors
    /// The reason the hub refuses the deployment.
    fn apply(&self, d: &Deployment) -> Result<(), String>;

    /// When `module` last heartbeated, if ever.
    fn last_heartbeat(&self, module: &str) -> Option<Instant>;

    /// Publishes `$edgeAgent` reported properties (the whole document).
    fn report_agent_state(&self, reported: serde_json::Value);

    /// Whether heartbeats are delivered at all. When false, the agent does no heartbeat
    /// checks (and health does not wait for heartbeats).
    fn heartbeats_enabled(&self) -> bool {
        true
    }
}

/// No hub: accepts every deployment, has no heartbeats (checks disabled) and drops reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHub;

impl HubSeam for NoHub {
    fn apply(&self, _d: &Deployment) -> Result<(), String> {
        Ok(())
    }

    fn last_heartbeat(&self, _module: &str) -> Option<Instant> {
        None
    }

    fn report_agent_state(&self, _reported: serde_json::Value) {}

    fn heartbeats_enabled(&self) -> bool {
        false
    }
}
