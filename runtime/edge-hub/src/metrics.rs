//! The hub's Prometheus metrics, plus plain totals for [`crate::HubStats`].
//!
//! Every event is recorded through one method here, which moves both the Prometheus series
//! and the matching total, so the two never disagree.
//!
//! [`ModuleMetrics`] serves what modules report through the SDK (a QoS 0 JSON snapshot on
//! `devices/{d}/modules/{m}/metrics`) as `edge_module_<name>{module="<m>"}`, with sanitized
//! names and a bounded number of series per module.

use prometheus::{
    GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, core::Collector,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

/// Why a message was dropped without being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// No route matched it.
    NoRoute,
    /// Its time to live ran out in a queue.
    TtlExpiry,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::NoRoute => "no_route",
            DropReason::TtlExpiry => "ttl_expiry",
        }
    }
}

/// Why a message went to the dead letters (acknowledged, never routed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetter {
    /// The topic is not part of the module profile.
    BadTopic,
    /// The body is larger than `max_message_bytes`.
    TooLarge,
    /// A stored record could not be decoded or read back.
    Corrupt,
}

impl DeadLetter {
    pub(crate) fn label(self) -> &'static str {
        match self {
            DeadLetter::BadTopic => "bad_topic",
            DeadLetter::TooLarge => "too_large",
            DeadLetter::Corrupt => "corrupt",
        }
    }
}

/// Why a message was not accepted (not acknowledged; the module will resend a QoS 1 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The store quota is reached.
    StoreFull,
    /// The store failed to write.
    StoreError,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::StoreFull => "store_full",
            Refused::StoreError => "store_error",
        }
    }
}

/// Plain totals, for [`crate::HubStats`].
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub auth_refused: AtomicU64,
    pub acl_refused: AtomicU64,
    pub dead_letters: AtomicU64,
    pub no_route: AtomicU64,
    pub ttl_expired: AtomicU64,
    pub refused: AtomicU64,
    pub routed: Mutex<BTreeMap<String, u64>>,
}

/// The metric handles, registered once per hub.
#[derive(Debug)]
pub(crate) struct Metrics {
    received: IntCounterVec,
    routed: IntCounterVec,
    sent: IntCounterVec,
    dropped: IntCounterVec,
    dead_letters: IntCounterVec,
    refused: IntCounterVec,
    queue_length: IntGaugeVec,
    queue_oldest_age: GaugeVec,
    store_bytes: IntGauge,
    connected: IntGauge,
    auth_refused: IntCounterVec,
    acl_refused: IntCounterVec,
    seen_endpoints: Mutex<BTreeSet<String>>,
    pub totals: Totals,
    /// What modules report through the SDK.
    pub modules: ModuleMetrics,
}

fn counter(name: &str, help: &str, label: &str) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), &[label])
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            received: counter(
                "edgehub_messages_received_total",
                "Messages received from modules.",
                "module",
            )?,
            routed: counter(
                "edgehub_messages_routed_total",
                "Messages a route matched and queued.",
                "route",
            )?,
            sent: counter(
                "edgehub_messages_sent_total",
                "Messages delivered to an endpoint and acknowledged.",
                "endpoint",
            )?,
            dropped: counter(
                "edgehub_messages_dropped_total",
                "Messages dropped (no route, time to live expired).",
                "reason",
            )?,
            dead_letters: counter(
                "edgehub_dead_letters_total",
                "Messages acknowledged but not routable (bad topic, too large, corrupt).",
                "reason",
            )?,
            refused: counter(
                "edgehub_messages_refused_total",
                "Messages not acknowledged because the store could not take them.",
                "reason",
            )?,
            queue_length: IntGaugeVec::new(
                Opts::new("edgehub_queue_length", "Messages queued per endpoint."),
                &["endpoint"],
            )?,
            queue_oldest_age: GaugeVec::new(
                Opts::new(
                    "edgehub_queue_oldest_age_seconds",
                    "Age of the oldest queued message per endpoint.",
                ),
                &["endpoint"],
            )?,
            store_bytes: IntGauge::new("edgehub_store_bytes", "Bytes held by the durable store.")?,
            connected: IntGauge::new("edgehub_connected_modules", "Modules connected now.")?,
            auth_refused: counter(
                "edgehub_auth_refused_total",
                "Connections refused at CONNECT.",
                "reason",
            )?,
            acl_refused: counter(
                "edgehub_acl_refused_total",
                "Publishes and subscriptions refused by the topic ACL.",
                "module",
            )?,
            seen_endpoints: Mutex::new(BTreeSet::new()),
            totals: Totals::default(),
            modules: ModuleMetrics::new()?,
        };
        let collectors: [Box<dyn Collector>; 13] = [
            Box::new(m.received.clone()),
            Box::new(m.routed.clone()),
            Box::new(m.sent.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.refused.clone()),
            Box::new(m.queue_length.clone()),
            Box::new(m.queue_oldest_age.clone()),
            Box::new(m.store_bytes.clone()),
            Box::new(m.connected.clone()),
            Box::new(m.auth_refused.clone()),
            Box::new(m.acl_refused.clone()),
            Box::new(m.modules.clone()),
        ];
        for c in collectors {
            registry.register(c)?;
        }
        Ok(m)
    }

    /// The `edgehub_messages_received_total` series of `module`, for [`Self::count_received`]
    /// (a connection looks it up once instead of hashing the label for every message).
    pub(crate) fn received_counter(&self, module: &str) -> IntCounter {
        self.received.with_label_values(&[module])
    }

    /// One message received, counted on a series from [`Self::received_counter`].
    pub(crate) fn count_received(&self, series: &IntCounter) {
        series.inc();
        self.totals.received.fetch_add(1, Relaxed);
    }

    pub(crate) fn routed(&self, counts: &BTreeMap<&str, u64>) {
        if counts.is_empty() {
            return;
        }
        let mut totals = self
            .totals
            .routed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (route, n) in counts {
            self.routed.with_label_values(&[route]).inc_by(*n);
            match totals.get_mut(*route) {
                Some(total) => *total += n,
                None => {
                    totals.insert((*route).to_owned(), *n);
                }
            }
        }
    }

    pub(crate) fn sent(&self, endpoint: &str, n: u64) {
        self.sent.with_label_values(&[endpoint]).inc_by(n);
        self.totals.sent.fetch_add(n, Relaxed);
    }

    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped.with_label_values(&[reason.label()]).inc_by(n);
        let total = match reason {
            DropReason::NoRoute => &self.totals.no_route,
            DropReason::TtlExpiry => &self.totals.ttl_expired,
        };
        total.fetch_add(n, Relaxed);
    }

    pub(crate) fn dead_letter(&self, reason: DeadLetter) {
        self.dead_letters.with_label_values(&[reason.label()]).inc();
        self.totals.dead_letters.fetch_add(1, Relaxed);
    }

    pub(crate) fn refused(&self, reason: Refused) {
        self.refused.with_label_values(&[reason.label()]).inc();
        self.totals.refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn auth_refused(&self, reason: &str) {
        self.auth_refused.with_label_values(&[reason]).inc();
        self.totals.auth_refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn acl_refused(&self, module: &str) {
        self.acl_refused.with_label_values(&[module]).inc();
        self.totals.acl_refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_connected(&self, n: usize) {
        self.connected.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets the queue gauges from per-endpoint `(length, oldest age in seconds)`; endpoints
    /// that disappeared are set to zero.
    pub(crate) fn set_queues(&self, queues: &BTreeMap<String, (u64, f64)>, store_bytes: u64) {
        self.store_bytes
            .set(i64::try_from(store_bytes).unwrap_or(i64::MAX));
        let mut seen = self
            .seen_endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for endpoint in seen.iter() {
            if !queues.contains_key(endpoint) {
                self.queue_length.with_label_values(&[endpoint]).set(0);
                self.queue_oldest_age
                    .with_label_values(&[endpoint])
                    .set(0.0);
            }
        }
        for (endpoint, (len, age)) in queues {
            self.queue_length
                .with_label_values(&[endpoint])
                .set(i64::try_from(*len).unwrap_or(i64::MAX));
            self.queue_oldest_age
                .with_label_values(&[endpoint])
                .set(*age);
            seen.insert(endpoint.clone());
        }
    }
}

/// Most series one module may have on `/metrics`; more are dropped and counted.
pub(crate) const MAX_MODULE_SERIES: usize = 64;

/// Longest metric name a module may report (before the `edge_module_` prefix).
const MAX_METRIC_NAME: usize = 80;

/// Most buckets of a reported histogram.
const MAX_BUCKETS: usize = 32;

/// Whether `topic` is `devices/{device}/modules/{module}/metrics`: where a module's SDK
/// reports its own metrics (QoS 0, a JSON snapshot; see [`ModuleMetrics::report`]).
pub(crate) fn is_module_metrics_topic(topic: &str, device: &str, module: &str) -> bool {
    topic
        .strip_prefix("devices/")
        .and_then(|t| t.strip_prefix(device))
        .and_then(|t| t.strip_prefix("/modules/"))
        .and_then(|t| t.strip_prefix(module))
        == Some("/metrics")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, PartialEq)]
enum Sample {
    Scalar(f64),
    Histogram {
        /// `(upper bound, cumulative count)`.
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug, Default)]
struct ModuleSeries {
    /// module → family name → its value.
    modules: BTreeMap<String, BTreeMap<String, Sample>>,
    /// family name → kind (first come wins; a clash is dropped).
    kinds: BTreeMap<String, Kind>,
}

/// Why a reported series was not taken.
#[derive(Debug, Clone, Copy)]
enum ModuleDrop {
    /// The payload is not a JSON object.
    Malformed,
    /// The name is empty or too long.
    InvalidName,
    /// The value is not a finite number (or a bad histogram).
    InvalidValue,
    /// Another module reports the same name as another kind.
    TypeConflict,
    /// The module already has [`MAX_MODULE_SERIES`] series.
    SeriesLimit,
}

impl ModuleDrop {
    fn label(self) -> &'static str {
        match self {
            ModuleDrop::Malformed => "malformed",
            ModuleDrop::InvalidName => "invalid_name",
            ModuleDrop::InvalidValue => "invalid_value",
            ModuleDrop::TypeConflict => "type_conflict",
            ModuleDrop::SeriesLimit => "series_limit",
        }
    }
}

/// The metrics modules report through the SDK, served as `edge_module_<name>{module="…"}`.
///
/// A report carries cumulative values, so it replaces the module's earlier values series by
/// series (a series the module stops reporting keeps its last value; after a module restart
/// its counters start again from zero, which Prometheus reads as a counter reset).
///
/// # Invariants
/// - Names are sanitized (`[A-Za-z0-9_]`, anything else becomes `_`), prefixed with
///   `edge_module_`; counters end in `_total`.
/// - At most [`MAX_MODULE_SERIES`] series per module; one family name has one kind. What
///   breaks either is counted in `edgehub_module_metrics_dropped_total{module, reason}`, once
///   per report.
#[derive(Debug, Clone)]
pub(crate) struct ModuleMetrics {
    state: std::sync::Arc<Mutex<ModuleSeries>>,
    reports: IntCounterVec,
    dropped: IntCounterVec,
}

fn family_name(name: &str, kind: Kind) -> Option<String> {
    if name.is_empty() || name.len() > MAX_METRIC_NAME {
        return None;
    }
    let mut s = String::with_capacity(name.len() + 18);
    s.push_str("edge_module_");
    s.extend(
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    if kind == Kind::Counter && !s.ends_with("_total") {
        s.push_str("_total");
    }
    Some(s)
}

fn histogram_sample(v: &serde_json::Value) -> Option<Sample> {
    let le = v.get("le")?.as_array()?;
    let counts = v.get("counts")?.as_array()?;
    if le.len() != counts.len() || le.len() > MAX_BUCKETS {
        return None;
    }
    let count = v.get("count")?.as_u64()?;
    let sum = v.get("sum")?.as_f64().filter(|s| s.is_finite())?;
    let mut buckets = Vec::with_capacity(le.len());
    let mut cumulative = 0u64;
    let mut last = f64::NEG_INFINITY;
    for (b, c) in le.iter().zip(counts) {
        let b = b.as_f64().filter(|b| b.is_finite() && *b > last)?;
        last = b;
        cumulative = cumulative.checked_add(c.as_u64()?)?;
        buckets.push((b, cumulative));
    }
    (cumulative <= count).then_some(Sample::Histogram {
        buckets,
        sum,
        count,
    })
}

impl ModuleMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            state: std::sync::Arc::default(),
            reports: counter(
                "edgehub_module_metrics_reports_total",
                "Metric reports received from modules (SDK).",
                "module",
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "edgehub_module_metrics_dropped_total",
                    "Module metric series not served, per report (bad name or value, kind clash, series limit).",
                ),
                &["module", "reason"],
            )?,
        })
    }

    fn drop_series(&self, module: &str, why: ModuleDrop) {
        self.dropped.with_label_values(&[module, why.label()]).inc();
    }

    /// Takes one report of `module` (the body its SDK published on its metrics topic).
    pub(crate) fn report(&self, module: &str, payload: &[u8]) {
        let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice(payload) else {
            self.drop_series(module, ModuleDrop::Malformed);
            tracing::debug!(module, "Metrics report is not a JSON object; dropped.");
            return;
        };
        self.reports.with_label_values(&[module]).inc();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ModuleSeries { modules, kinds } = &mut *st;
        let series = modules.entry(module.to_owned()).or_default();
        let sections = [
            ("counters", Kind::Counter),
            ("gauges", Kind::Gauge),
            ("histograms", Kind::Histogram),
        ];
        for (section, kind) in sections {
            let Some(entries) = doc.get(section).and_then(serde_json::Value::as_object) else {
                continue;
            };
            for (name, v) in entries {
                let Some(family) = family_name(name, kind) else {
                    self.drop_series(module, ModuleDrop::InvalidName);
                    continue;
                };
                let sample = match kind {
                    Kind::Counter => v
                        .as_f64()
                        .filter(|x| x.is_finite() && *x >= 0.0)
                        .map(Sample::Scalar),
                    Kind::Gauge => v.as_f64().filter(|x| x.is_finite()).map(Sample::Scalar),
                    Kind::Histogram => histogram_sample(v),
                };
                let Some(sample) = sample else {
                    self.drop_series(module, ModuleDrop::InvalidValue);
                    continue;
                };
                if kinds.get(&family).is_some_and(|k| *k != kind) {
                    self.drop_series(module, ModuleDrop::TypeConflict);
                    continue;
                }
                if let Some(slot) = series.get_mut(&family) {
                    *slot = sample;
                } else if series.len() >= MAX_MODULE_SERIES {
                    self.drop_series(module, ModuleDrop::SeriesLimit);
                } else {
                    kinds.insert(family.clone(), kind);
                    series.insert(family, sample);
                }
            }
        }
    }
}

impl Collector for ModuleMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = self.reports.desc();
        d.extend(self.dropped.desc());
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto::{
            Bucket, Counter as PCounter, Gauge as PGauge, Histogram as PHistogram, LabelPair,
            Metric, MetricFamily, MetricType,
        };
        let mut out = self.reports.collect();
        out.extend(self.dropped.collect());
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut families: BTreeMap<&str, MetricFamily> = BTreeMap::new();
        for (module, series) in &st.modules {
            for (name, sample) in series {
                let kind = st.kinds.get(name).copied().unwrap_or(Kind::Gauge);
                let family = families.entry(name).or_insert_with(|| {
                    let mut f = MetricFamily::default();
                    f.set_name(name.clone());
                    f.set_help("Reported by the module through the SDK.".to_owned());
                    f.set_field_type(match kind {
                        Kind::Counter => MetricType::COUNTER,
                        Kind::Gauge => MetricType::GAUGE,
                        Kind::Histogram => MetricType::HISTOGRAM,
                    });
                    f
                });
                let mut label = LabelPair::default();
                label.set_name("module".to_owned());
                label.set_value(module.clone());
                let mut m = Metric::from_label(vec![label]);
                match (kind, sample) {
                    (Kind::Counter, Sample::Scalar(v)) => {
                        let mut c = PCounter::default();
                        c.set_value(*v);
                        m.set_counter(c);
                    }
                    (
                        _,
                        Sample::Histogram {
                            buckets,
                            sum,
                            count,
                        },
                    ) => {
                        let mut h = PHistogram::default();
                        h.set_sample_count(*count);
                        h.set_sample_sum(*sum);
                        h.set_bucket(
                            buckets
                                .iter()
                                .map(|(le, n)| {
                                    let mut b = Bucket::default();
                                    b.set_upper_bound(*le);
                                    b.set_cumulative_count(*n);
                                    b
                                })
                                .collect(),
                        );
                        m.set_histogram(h);
                    }
                    (_, Sample::Scalar(v)) => {
                        let mut g = PGauge::default();
                        g.set_value(*v);
                        m.set_gauge(g);
                    }
                }
                family.mut_metric().push(m);
            }
        }
        out.extend(families.into_values());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    fn scrape(r: &Registry) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn the_metrics_topic_is_the_modules_own() {
        assert!(is_module_metrics_topic(
            "devices/d/modules/m/metrics",
            "d",
            "m"
        ));
        assert!(!is_module_metrics_topic(
            "devices/d/modules/other/metrics",
            "d",
            "m"
        ));
        assert!(!is_module_metrics_topic(
            "devices/d/modules/m/metrics/x",
            "d",
            "m"
        ));
        assert!(!is_module_metrics_topic(
            "devices/e/modules/m/metrics",
            "d",
            "m"
        ));
    }

    #[test]
    fn module_reports_become_labelled_series_with_sanitized_names() {
        let r = Registry::new();
        let m = Metrics::register(&r).unwrap();
        m.modules.report(
            "scorer",
            br#"{"counters": {"scores": 7, "alarms_total": 2},
                 "gauges": {"batch.size": 32.5, "bad": "x"},
                 "histograms": {"lat_seconds": {"le": [0.01, 0.1], "counts": [3, 1], "sum": 0.2, "count": 5}}}"#,
        );
        m.modules
            .report("writer", br#"{"counters": {"scores_total": 1}}"#);
        m.modules.report("writer", b"not json");
        // A later report replaces values.
        m.modules
            .report("scorer", br#"{"counters": {"scores": 9}}"#);
        let text = scrape(&r);
        for want in [
            "# TYPE edge_module_scores_total counter",
            r#"edge_module_scores_total{module="scorer"} 9"#,
            r#"edge_module_scores_total{module="writer"} 1"#,
            r#"edge_module_alarms_total{module="scorer"} 2"#,
            "# TYPE edge_module_batch_size gauge",
            r#"edge_module_batch_size{module="scorer"} 32.5"#,
            "# TYPE edge_module_lat_seconds histogram",
            r#"edge_module_lat_seconds_bucket{module="scorer",le="0.01"} 3"#,
            r#"edge_module_lat_seconds_bucket{module="scorer",le="0.1"} 4"#,
            r#"edge_module_lat_seconds_bucket{module="scorer",le="+Inf"} 5"#,
            r#"edge_module_lat_seconds_count{module="scorer"} 5"#,
            r#"edgehub_module_metrics_reports_total{module="scorer"} 2"#,
            r#"edgehub_module_metrics_dropped_total{module="scorer",reason="invalid_value"} 1"#,
            r#"edgehub_module_metrics_dropped_total{module="writer",reason="malformed"} 1"#,
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
    }

    #[test]
    fn series_are_capped_per_module_and_kinds_do_not_clash() {
        let r = Registry::new();
        let m = Metrics::register(&r).unwrap();
        let many: serde_json::Map<String, serde_json::Value> = (0..MAX_MODULE_SERIES + 10)
            .map(|i| (format!("g{i}"), serde_json::Value::from(1)))
            .collect();
        let body = serde_json::json!({"gauges": many}).to_string();
        m.modules.report("a", body.as_bytes());
        m.modules
            .report("b", br#"{"counters": {"g1": 1}, "gauges": {"g1": 2}}"#);
        let text = scrape(&r);
        let series_of_a = text
            .lines()
            .filter(|l| l.starts_with("edge_module_") && l.contains(r#"module="a""#))
            .count();
        assert_eq!(series_of_a, MAX_MODULE_SERIES);
        assert!(text.contains(
            r#"edgehub_module_metrics_dropped_total{module="a",reason="series_limit"} 10"#
        ));
        // b's counter g1 → edge_module_g1_total (no clash); its gauge g1 joins a's family.
        assert!(text.contains(r#"edge_module_g1_total{module="b"} 1"#));
        assert!(text.contains(r#"edge_module_g1{module="b"} 2"#));
        // A histogram under a gauge's name clashes.
        m.modules.report(
            "b",
            br#"{"histograms": {"g2": {"le": [1], "counts": [1], "sum": 1, "count": 1}}}"#,
        );
        assert!(scrape(&r).contains(
            r#"edgehub_module_metrics_dropped_total{module="b",reason="type_conflict"} 1"#
        ));
    }
}
