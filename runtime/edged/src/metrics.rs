//! edged's own series beside the hub's and the agent's: deployments and the upstream link,
//! refreshed at each scrape from the agent's history and the link's counters.

use edge_agent::Agent;
use edge_upstream::LinkStats;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::{Arc, OnceLock};

/// The history outcomes counted in `edgeagent_deployments_total`.
const OUTCOMES: [&str; 5] = ["applied", "refused", "rolled-back", "healthy", "unhealthy"];

/// Deployment and upstream-link metrics.
pub struct EdgedMetrics {
    deployments: IntCounterVec,
    generation: IntGauge,
    link: OnceLock<(Arc<LinkStats>, LinkMetrics)>,
    registry: Registry,
}

struct LinkMetrics {
    connected: IntGauge,
    sent: IntCounter,
    reconnects: IntCounter,
}

/// Raises `c` to `total` (counters mirrored from a count kept elsewhere).
fn advance(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl EdgedMetrics {
    /// Registers the deployment series in `r` (the link's come with [`Self::set_link`]).
    ///
    /// # Errors
    /// When a name is already registered.
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let deployments = IntCounterVec::new(
            Opts::new(
                "edgeagent_deployments_total",
                "Deployments by outcome as recorded in the history (applied, refused, rolled-back, healthy, unhealthy)",
            ),
            &["outcome"],
        )?;
        let generation = IntGauge::new(
            "edgeagent_deployment_generation",
            "Deployments received (the agent's lastDesiredVersion)",
        )?;
        r.register(Box::new(deployments.clone()))?;
        r.register(Box::new(generation.clone()))?;
        for o in OUTCOMES {
            let _ = deployments.with_label_values(&[o]);
        }
        Ok(Self {
            deployments,
            generation,
            link: OnceLock::new(),
            registry: r.clone(),
        })
    }

    /// Adds the upstream link's series (once; a second call is ignored).
    ///
    /// # Errors
    /// When a name is already registered.
    pub fn set_link(&self, stats: Arc<LinkStats>) -> prometheus::Result<()> {
        if self.link.get().is_some() {
            return Ok(());
        }
        let m = LinkMetrics {
            connected: IntGauge::new(
                "edgeupstream_connected",
                "1 while the upstream link is connected to its broker",
            )?,
            sent: IntCounter::new(
                "edgeupstream_messages_sent_total",
                "Telemetry messages the upstream broker acknowledged (resends count again)",
            )?,
            reconnects: IntCounter::new(
                "edgeupstream_reconnects_total",
                "Connections of the upstream link after the first",
            )?,
        };
        self.registry.register(Box::new(m.connected.clone()))?;
        self.registry.register(Box::new(m.sent.clone()))?;
        self.registry.register(Box::new(m.reconnects.clone()))?;
        let _ = self.link.set((stats, m));
        Ok(())
    }

    /// Brings the series up to date.
    pub fn refresh(&self, agent: &Agent) {
        let mut counts = [0u64; OUTCOMES.len()];
        for e in agent.history() {
            if let Some(i) = OUTCOMES.iter().position(|o| *o == e.outcome.name()) {
                counts[i] += 1;
            }
        }
        for (o, n) in OUTCOMES.iter().zip(counts) {
            advance(&self.deployments.with_label_values(&[*o]), n);
        }
        let generation = agent
            .reported()
            .get("lastDesiredVersion")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        self.generation.set(generation);
        if let Some((stats, m)) = self.link.get() {
            m.connected.set(i64::from(stats.connected()));
            advance(&m.sent, stats.messages_sent());
            advance(&m.reconnects, stats.reconnects());
        }
    }
}
