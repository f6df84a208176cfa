//! One evaluation cycle without the hub: scrape, read the device, build the snapshot, evaluate,
//! and produce the messages and the reported-properties patch to send.

use crate::config::{HealthConfig, Severity};
use crate::device::{DeviceProbe, DeviceSnapshot};
use crate::evaluator::{Evaluation, Evaluator};
use crate::prom::Metrics;
use crate::scrape::{HttpUrl, fetch};
use crate::snapshot::{Snapshot, SnapshotBuilder};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// What one cycle produced.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleOutput {
    /// Body of the `health` message.
    pub health: Value,
    /// Bodies of the `events` messages (one per state transition).
    pub events: Vec<Value>,
    /// A patch for the reported properties, when one is due.
    pub report: Option<Value>,
    /// The overall state.
    pub state: Severity,
}

/// The evaluation loop's state, independent of the hub.
///
/// # Invariants
/// `since` is the wall time of the last state change (or of the start).
#[derive(Debug)]
pub struct Monitor {
    url: Result<HttpUrl, String>,
    scrape_timeout: Duration,
    report_every: Duration,
    default_data_dir: PathBuf,
    probe: DeviceProbe,
    builder: SnapshotBuilder,
    evaluator: Evaluator,
    since: SystemTime,
    last_report: Option<Instant>,
}

fn resolve_url(cfg: &HealthConfig, env_addr: Option<&str>) -> Result<HttpUrl, String> {
    match (&cfg.metrics_url, env_addr) {
        (Some(u), _) => HttpUrl::parse(u).map_err(|e| e.to_string()),
        (None, Some(a)) if !a.is_empty() => Ok(HttpUrl::from_addr(a)),
        _ => Err("no metrics address (set metricsUrl, or EDGE_METRICS_ADDR)".into()),
    }
}

impl Monitor {
    /// A monitor for `cfg`; `env_addr` is `EDGE_METRICS_ADDR`, `default_data_dir` the
    /// module's data directory (used when the config names none).
    #[must_use]
    pub fn new(cfg: &HealthConfig, env_addr: Option<&str>, default_data_dir: PathBuf) -> Self {
        let data_dir = cfg
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir.clone());
        Self {
            url: resolve_url(cfg, env_addr),
            scrape_timeout: cfg.scrape_timeout,
            report_every: cfg.report_every,
            default_data_dir,
            probe: DeviceProbe::new(data_dir),
            builder: SnapshotBuilder::new(),
            evaluator: Evaluator::new(cfg.effective_rules()),
            since: SystemTime::now(),
            last_report: None,
        }
    }

    /// Applies a new configuration, keeping the state of conditions whose rules keep their
    /// names.
    pub fn reconfigure(&mut self, cfg: &HealthConfig, env_addr: Option<&str>) {
        self.url = resolve_url(cfg, env_addr);
        self.scrape_timeout = cfg.scrape_timeout;
        self.report_every = cfg.report_every;
        self.probe.set_data_dir(
            cfg.data_dir
                .clone()
                .unwrap_or_else(|| self.default_data_dir.clone()),
        );
        self.evaluator.set_rules(cfg.effective_rules());
        self.last_report = None;
    }

    /// The metrics URL, or why there is none.
    pub fn url(&self) -> Result<&HttpUrl, &str> {
        self.url.as_ref().map_err(String::as_str)
    }

    /// Scrapes, reads the device and runs [`Monitor::step`].
    pub async fn cycle(&mut self) -> CycleOutput {
        let scrape = match &self.url {
            Ok(u) => fetch(u, self.scrape_timeout)
                .await
                .map(|text| Metrics::parse(&text))
                .map_err(|e| error_chain(&e)),
            Err(e) => Err(e.clone()),
        };
        let now = Instant::now();
        let device = self.probe.read(now);
        self.step(scrape, device, now, SystemTime::now())
    }

    /// One evaluation from a scrape result and a device reading (pure apart from `self`).
    pub fn step(
        &mut self,
        scrape: Result<Metrics, String>,
        device: DeviceSnapshot,
        now: Instant,
        wall: SystemTime,
    ) -> CycleOutput {
        let (series, skipped) = match &scrape {
            Ok(m) => (m.series.len(), m.skipped),
            Err(_) => (0, 0),
        };
        let snap = self.builder.build(scrape, device, now);
        let eval = self.evaluator.evaluate(&snap, now);
        if !eval.transitions.is_empty() {
            self.since = wall;
        }
        let at = rfc3339(wall);
        let events = eval
            .transitions
            .iter()
            .map(|t| json!({"from": t.from, "to": t.to, "reasons": t.reasons, "at": at}))
            .collect();
        let due = self
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= self.report_every);
        let report = (due || eval.reasons_changed || !eval.transitions.is_empty()).then(|| {
            self.last_report = Some(now);
            json!({"health": {
                "state": eval.state,
                "since": rfc3339(self.since),
                "reasons": eval.reasons,
                "lastEvaluation": at,
            }})
        });
        let metrics = json!({
            "url": self.url.as_ref().map(ToString::to_string).ok(),
            "error": snap.scrape_error,
            "series": series,
            "skipped": skipped,
        });
        CycleOutput {
            health: summary(&eval, &snap, &rfc3339(self.since), &at, metrics),
            events,
            report,
            state: eval.state,
        }
    }
}

/// The `health` message body.
#[must_use]
pub fn summary(eval: &Evaluation, snap: &Snapshot, since: &str, at: &str, metrics: Value) -> Value {
    json!({
        "state": eval.state,
        "since": since,
        "at": at,
        "reasons": eval.reasons,
        "modules": snap.modules,
        "queues": snap.queues,
        "deadLetters": snap.dead_letters,
        "device": snap.device,
        "metrics": metrics,
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
