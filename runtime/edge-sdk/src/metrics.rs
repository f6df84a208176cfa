//! Module metrics: counters, gauges and small histograms by name, cheap to update (one atomic
//! operation, no lock), reported to the hub periodically, which serves them on edged's
//! `/metrics` as `edge_module_<name>{module="<module id>"}`.
//!
//! ```no_run
//! # fn f(client: &edge_sdk::ModuleClient) {
//! let m = client.metrics();
//! let sent = m.counter("samples_published_total");
//! let depth = m.gauge("batch_size");
//! let latency = m.histogram("score_seconds", &[0.001, 0.01, 0.1, 1.0]);
//! sent.inc();
//! depth.set(32.0);
//! latency.observe(0.004);
//! # }
//! ```
//!
//! # Wire format
//! Every [`crate::ClientOptions::metrics_interval`] (and once more at shutdown) the client
//! publishes, at QoS 0 and only while connected, the whole snapshot to
//! `devices/{device}/modules/{module}/metrics`:
//! `{"counters": {name: total}, "gauges": {name: value},
//!   "histograms": {name: {"le": [bounds…], "counts": [per-bucket…], "sum": s, "count": n}}}`.
//! Values are cumulative since the module started, so a lost report costs nothing; `counts`
//! are per bucket (not cumulative), `count` includes observations above the last bound.
//! The hub decides what it serves (names sanitized, series capped per module); see
//! edge-hub's `metrics` module.
//!
//! # Invariants
//! - At most [`MAX_METRICS`] names are reported; a handle asked for beyond that, or for a
//!   name already used by another kind, still works but is not reported (logged once).
//! - Asking twice for the same name and kind gives handles to the same value.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

/// Most metric names one module reports.
pub const MAX_METRICS: usize = 128;

/// Most buckets of one histogram.
pub const MAX_BUCKETS: usize = 32;

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// Raises the count to `total` if it is lower (for mirroring a count kept elsewhere; a
    /// counter never goes down).
    pub fn advance_to(&self, total: u64) {
        self.0.fetch_max(total, Relaxed);
    }

    /// The count now.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }

    /// The value now.
    #[must_use]
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

#[derive(Debug)]
struct HistogramCore {
    bounds: Box<[f64]>,
    /// One per bound, plus one for observations above the last bound.
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

/// A distribution over fixed buckets (Prometheus histogram, without quantiles).
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCore>);

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        let mut b: Vec<f64> = bounds.iter().copied().filter(|x| x.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        b.truncate(MAX_BUCKETS);
        let counts = (0..=b.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(HistogramCore {
            bounds: b.into_boxed_slice(),
            counts,
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let c = &self.0;
        let i = c.bounds.partition_point(|b| *b < v);
        if let Some(slot) = c.counts.get(i) {
            slot.fetch_add(1, Relaxed);
        }
        if v.is_finite() {
            let _ = c.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        }
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn snapshot(&self) -> Value {
        let counts: Vec<u64> = self.0.counts.iter().map(|c| c.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        json!({
            "le": self.0.bounds,
            "counts": &counts[..self.0.bounds.len()],
            "sum": f64::from_bits(self.0.sum_bits.load(Relaxed)),
            "count": count,
        })
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Debug, Default)]
struct Registry {
    entries: Mutex<BTreeMap<String, Entry>>,
    warned: AtomicBool,
}

/// A module's metrics; cheap to clone, shared by every clone of the
/// [`crate::ModuleClient`].
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Registry>);

impl Metrics {
    /// A new, empty set (the client makes one; tests may make their own).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn get_or_insert<T>(
        &self,
        name: &str,
        make: impl FnOnce() -> Entry,
        pick: impl Fn(&Entry) -> Option<T>,
        detached: impl FnOnce() -> T,
    ) -> T {
        let mut entries = self
            .0
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get(name) {
            if let Some(h) = pick(e) {
                return h;
            }
            tracing::warn!(
                metric = name,
                "Metric name already used by another kind; this one is not reported."
            );
            return detached();
        }
        if entries.len() >= MAX_METRICS {
            if !self.0.warned.swap(true, Relaxed) {
                tracing::warn!(
                    metric = name,
                    max = MAX_METRICS,
                    "Too many metrics; the rest are not reported."
                );
            }
            return detached();
        }
        let e = make();
        let h = pick(&e);
        entries.insert(name.to_owned(), e);
        h.unwrap_or_else(detached)
    }

    /// The counter `name` (by convention ending in `_total`; the hub adds it otherwise).
    #[must_use]
    pub fn counter(&self, name: &str) -> Counter {
        self.get_or_insert(
            name,
            || Entry::Counter(Counter::default()),
            |e| match e {
                Entry::Counter(c) => Some(c.clone()),
                _ => None,
            },
            Counter::default,
        )
    }

    /// The gauge `name`.
    #[must_use]
    pub fn gauge(&self, name: &str) -> Gauge {
        self.get_or_insert(
            name,
            || Entry::Gauge(Gauge::default()),
            |e| match e {
                Entry::Gauge(g) => Some(g.clone()),
                _ => None,
            },
            Gauge::default,
        )
    }

    /// The histogram `name` with upper bucket bounds `bounds` (sorted, deduplicated, at most
    /// [`MAX_BUCKETS`]); the bounds of the first call win.
    #[must_use]
    pub fn histogram(&self, name: &str, bounds: &[f64]) -> Histogram {
        self.get_or_insert(
            name,
            || Entry::Histogram(Histogram::new(bounds)),
            |e| match e {
                Entry::Histogram(h) => Some(h.clone()),
                _ => None,
            },
            || Histogram::new(bounds),
        )
    }

    /// Whether nothing was registered yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The report body (see the module docs for its shape).
    #[must_use]
    pub fn snapshot(&self) -> Value {
        let entries: Vec<(String, Entry)> = self
            .0
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (mut counters, mut gauges, mut histograms) = (Map::new(), Map::new(), Map::new());
        for (name, e) in entries {
            match e {
                Entry::Counter(c) => {
                    counters.insert(name, c.get().into());
                }
                Entry::Gauge(g) => {
                    let v = g.get();
                    // JSON has no NaN/inf; such a gauge is left out of this report.
                    if v.is_finite() {
                        gauges.insert(name, v.into());
                    }
                }
                Entry::Histogram(h) => {
                    histograms.insert(name, h.snapshot());
                }
            }
        }
        json!({"counters": counters, "gauges": gauges, "histograms": histograms})
    }
}

/// The topic a module's metrics report goes to.
pub(crate) fn metrics_topic(device: &str, module: &str) -> String {
    format!("devices/{device}/modules/{module}/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_values_and_snapshot_has_every_kind() {
        let m = Metrics::new();
        m.counter("sent_total").inc();
        m.counter("sent_total").add(2);
        m.counter("sent_total").advance_to(2);
        m.gauge("depth").set(4.5);
        let h = m.histogram("lat_seconds", &[0.1, 0.01, 1.0, f64::NAN]);
        h.observe(0.005);
        h.observe(0.5);
        h.observe(7.0);
        let s = m.snapshot();
        assert_eq!(s["counters"]["sent_total"], 3);
        assert_eq!(s["gauges"]["depth"], 4.5);
        let hs = &s["histograms"]["lat_seconds"];
        assert_eq!(hs["le"], json!([0.01, 0.1, 1.0]));
        assert_eq!(hs["counts"], json!([1, 0, 1]));
        assert_eq!(hs["count"], 3);
        assert!((hs["sum"].as_f64().unwrap() - 7.505).abs() < 1e-9);
        m.counter("sent_total").advance_to(10);
        assert_eq!(m.counter("sent_total").get(), 10);
    }

    #[test]
    fn a_kind_clash_and_the_cap_give_detached_handles() {
        let m = Metrics::new();
        m.counter("x").inc();
        let g = m.gauge("x");
        g.set(1.0);
        assert_eq!(m.snapshot()["counters"]["x"], 1);
        assert!(m.snapshot()["gauges"].get("x").is_none());
        for i in 0..MAX_METRICS + 5 {
            m.counter(&format!("c{i}_total")).inc();
        }
        let s = m.snapshot();
        let n = s["counters"].as_object().unwrap().len();
        assert_eq!(n, MAX_METRICS);
    }
}
