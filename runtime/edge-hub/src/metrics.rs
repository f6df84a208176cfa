//! The hub's Prometheus metrics, plus plain totals for [`crate::HubStats`].
//!
//! Every event is recorded through one method here, which moves both the Prometheus series
//! and the matching total, so the two never disagree.

use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, core::Collector};
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
        };
        let collectors: [Box<dyn Collector>; 12] = [
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
        ];
        for c in collectors {
            registry.register(c)?;
        }
        Ok(m)
    }

    pub(crate) fn received(&self, module: &str) {
        self.received.with_label_values(&[module]).inc();
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
            *totals.entry((*route).to_owned()).or_default() += n;
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
