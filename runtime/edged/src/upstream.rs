//! The upstream link's view of this device ([`edge_upstream::Device`] on the agent and hub).
//!
//! - A desired deployment from upstream is parsed with `edge_manifest::parse` and handed to
//!   `Agent::deploy` (or recorded with `Agent::record_refused`); the outcome goes into the
//!   `$edgeAgent` reported property `lastDesiredDeployment`
//!   (`{version, hash, code, description, errors}`), next to the agent's own
//!   `lastDesiredStatus`.
//! - A desired patch for a module is merged into that module's twin in the hub
//!   (`Hub::patch_desired`), which sends it to the module with its new `$version`; the
//!   deployment is not redeployed (no history line, no rollback window). The next
//!   deployment that changes the module's desired properties sets them again.
//! - Method calls go to `Hub::invoke`; failures become a status (404 not connected or not
//!   subscribed, 504 timeout, 500 otherwise) with `{"error": "…"}`.

use edge_agent::{Agent, DeployError};
use edge_hub::{Hub, MethodError};
use edge_upstream::{Device, Upstream, UpstreamConfig};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const AGENT: &str = "$edgeAgent";

/// The device as the upstream link sees it.
struct LinkDevice {
    agent: Arc<Agent>,
    hub: Hub,
}

impl LinkDevice {
    fn report(&self, version: u64, hash: &str, code: u16, description: &str, errors: &[String]) {
        let patch = json!({"lastDesiredDeployment": {
            "version": version, "hash": hash, "code": code,
            "description": description, "errors": errors,
        }});
        if let Err(e) = self.hub.patch_reported(AGENT, patch) {
            tracing::warn!(error = %e, "Cannot record the upstream deployment outcome.");
        }
    }
}

#[async_trait::async_trait]
impl Device for LinkDevice {
    fn identities(&self) -> Vec<String> {
        let mut v = vec![AGENT.to_owned(), "$edgeHub".to_owned()];
        v.extend(self.agent.list().into_iter().map(|m| m.name));
        v
    }

    fn reported(&self, identity: &str) -> Option<Value> {
        self.hub.twin(identity)?.get("reported").cloned()
    }

    /// The recorded upstream version, but only while the agent still runs that deployment
    /// (after a restart edged first applies its local file; the retained upstream deployment
    /// then wins again).
    fn deployment_version(&self) -> u64 {
        let Some(last) = self
            .reported(AGENT)
            .and_then(|r| r.get("lastDesiredDeployment").cloned())
        else {
            return 0;
        };
        let version = last.get("version").and_then(Value::as_u64).unwrap_or(0);
        let hash = last.get("hash").and_then(Value::as_str).unwrap_or_default();
        let code = last.get("code").and_then(Value::as_u64).unwrap_or(0);
        let running = self.agent.current().is_some_and(|d| d.hash == hash);
        if code != 200 || running { version } else { 0 }
    }

    fn apply_deployment(&self, version: u64, manifest: &str) {
        let source = format!("upstream v{version}");
        match edge_manifest::parse(manifest, &source) {
            Ok((d, _notices)) => {
                let hash = d.hash.clone();
                match self.agent.deploy(d, &source) {
                    Ok(outcome) => {
                        let what = match outcome {
                            edge_agent::DeployOutcome::Applied { .. } => "applied",
                            edge_agent::DeployOutcome::Unchanged { .. } => "unchanged",
                        };
                        self.report(version, &hash, 200, what, &[]);
                    }
                    Err(DeployError::Refused {
                        hash,
                        code,
                        reasons,
                    }) => self.report(version, &hash, code, "refused", &reasons),
                    Err(DeployError::ShuttingDown) => {
                        self.report(version, &hash, 406, "edged is shutting down", &[]);
                    }
                }
            }
            Err(e) => {
                let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
                let hash = edge_manifest::sha256_hex(manifest.as_bytes());
                self.agent
                    .record_refused(&hash, &source, e.status_code(), &problems);
                self.report(version, &hash, e.status_code(), "refused", &problems);
            }
        }
    }

    fn patch_desired(&self, identity: &str, patch: Value) -> Result<(), String> {
        let d = self
            .agent
            .current()
            .ok_or_else(|| "no deployment yet".to_owned())?;
        if !d.twins.iter().any(|(id, _)| id.as_str() == identity) {
            return Err(format!("no module `{identity}` in the deployment"));
        }
        // Straight into the hub's twin: no redeployment, no history line, no rollback window.
        let version = self
            .hub
            .patch_desired(identity, &patch)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            module = identity,
            version,
            "Desired patch from upstream applied."
        );
        Ok(())
    }

    async fn invoke(
        &self,
        identity: &str,
        method: &str,
        payload: Value,
        timeout: Duration,
    ) -> (i32, Value) {
        match self.hub.invoke(identity, method, payload, timeout).await {
            Ok(answer) => answer,
            Err(e) => {
                let status = match e {
                    MethodError::NotConnected { .. } | MethodError::NotSubscribed { .. } => 404,
                    MethodError::Timeout { .. } => 504,
                    _ => 500,
                };
                (status, json!({"error": e.to_string()}))
            }
        }
    }
}

/// Starts the upstream link on `tracker`; it runs until `cancel` fires. Returns its counters
/// (for `/metrics`).
///
/// # Errors
/// When the configuration is unusable (the broker URL).
pub fn start(
    config: UpstreamConfig,
    device_id: &str,
    hub: Hub,
    agent: Arc<Agent>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Arc<edge_upstream::LinkStats>> {
    let url = config.url.clone();
    let device = Arc::new(LinkDevice {
        agent,
        hub: hub.clone(),
    });
    let link = Upstream::new(config, device_id, hub.upstream_queue(), device)?;
    let stats = link.stats();
    tracker.spawn(link.run(cancel));
    tracing::info!(%url, "Upstream link started.");
    Ok(stats)
}
