//! Ingest: routing and the group commit.
//!
//! Every connection hands what it received to one ingest task through a bounded channel
//! (back-pressure reaches the publishing module's socket when the store falls behind). The
//! task takes whatever is waiting (up to [`BATCH`] items), routes each message with the router
//! loaded once for the batch, appends one record per target queue, wakes the subscribers of
//! those queues (they may read the records at once), has the store thread sync the batch once,
//! and only then sends the PUBACKs: a QoS 1 message is acknowledged only when it is durable in
//! every queue a route sent it to. A subscriber can thus get a message before it is durable;
//! if the sync fails or the hub dies first, the publisher, never acknowledged, sends it again
//! (at least once). QoS 0 messages are queued the same way, but
//! a batch of only QoS 0 messages is not synced before the next batch: its records become
//! durable with the next sync (a QoS 1 batch, the once-a-second sweep, or shutdown), so a
//! crash can lose up to a second of QoS 0 messages, which MQTT allows (at most once). Their
//! records are flagged [`store::AT_MOST_ONCE`] and delivered at QoS 0.
//!
//! Items without a message only carry a PUBACK (twin requests, method answers, dead letters);
//! they travel through the same channel so PUBACKs leave in the order the PUBLISHes came, as
//! MQTT 3.1.1 asks.
//!
//! # Invariants
//! - A PUBACK for a routed message is sent only after the store reported a successful sync of
//!   the batch holding all its records.
//! - If one message goes to several routes with the same endpoint, it is queued there once
//!   (highest priority and longest time to live of those routes).

use crate::Inner;
use crate::metrics::{DropReason, Refused};
use crate::store::{self, AppendFailure, AppendReq, QKey};
use edge_core::Message;
use edge_route::Sink;
use rumqttc::mqttbytes::v4::{Packet, PubAck};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

/// Most items committed together.
pub(crate) const BATCH: usize = 512;

/// The endpoint name of the upstream queue.
pub(crate) const UPSTREAM: &str = "$upstream";

/// The `route` label of messages sent to `HubConfig::unmatched` because no route selected
/// them.
pub(crate) const UNMATCHED_ROUTE: &str = "$unmatched";

/// The priority of the unmatched sink: that of a plain-string route.
const DEFAULT_PRIORITY: u8 = 0;

/// Where to send the PUBACK of a QoS 1 publish.
#[derive(Debug)]
pub(crate) struct Ack {
    pub out: mpsc::Sender<Packet>,
    pub pkid: u16,
    pub cancel: CancellationToken,
}

impl Ack {
    /// Sends the PUBACK. The write queue of a connection holds far more than a well-behaved
    /// client keeps in flight; if it is full anyway, the connection is closed rather than
    /// stalling every other module's ingest (the client resends what was not acknowledged).
    pub(crate) fn send(self) {
        match self.out.try_send(Packet::PubAck(PubAck::new(self.pkid))) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("Connection's write queue is full; closing it.");
                self.cancel.cancel();
            }
        }
    }
}

/// Something a connection received that goes through ingest.
#[derive(Debug)]
pub(crate) struct IngestItem {
    /// The authenticated sender.
    pub module: Arc<str>,
    /// The message to route, `None` for a PUBACK-only item.
    pub msg: Option<Message>,
    /// The PUBACK to send once done (QoS 1 only).
    pub ack: Option<Ack>,
}

/// The queue name of a route's sink.
pub(crate) fn endpoint_of(sink: &Sink) -> String {
    match sink {
        Sink::Upstream => UPSTREAM.to_owned(),
        Sink::ModuleInput { module, input } => format!("module/{module}/inputs/{input}"),
    }
}

/// The module of a module-input endpoint name.
pub(crate) fn module_of(endpoint: &str) -> Option<&str> {
    endpoint
        .strip_prefix("module/")
        .and_then(|rest| rest.split_once("/inputs/"))
        .map(|(m, _)| m)
}

/// The ingest task: commit batches until the hub is cancelled, then commit what is left.
pub(crate) async fn run(hub: Arc<Inner>, mut rx: mpsc::Receiver<IngestItem>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            biased;
            () = hub.cancel.cancelled() => break,
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            break;
        }
        commit(&hub, &mut batch).await;
    }
    while let Ok(item) = rx.try_recv() {
        batch.push(item);
    }
    if !batch.is_empty() {
        commit(&hub, &mut batch).await;
    }
    tracing::debug!("Ingest stopped.");
}

/// Per item: which appends belong to it and which routes matched.
struct Plan<'r> {
    appends: std::ops::Range<usize>,
    routes: Vec<&'r str>,
}

/// Routes, stores, syncs and acknowledges one batch.
pub(crate) async fn commit(hub: &Inner, batch: &mut Vec<IngestItem>) {
    let routing = hub.routing();
    let now = crate::now_ms();
    let mut reqs: Vec<AppendReq> = Vec::new();
    let mut plans: Vec<Plan<'_>> = Vec::with_capacity(batch.len());
    let mut hits = Vec::new();
    let mut targets: Vec<(String, u8, u64)> = Vec::new();
    for item in batch.iter() {
        let start = reqs.len();
        let mut routes = Vec::new();
        if let Some(msg) = &item.msg {
            hits.clear();
            routing.router.route(msg, &mut hits);
            targets.clear();
            for hit in &hits {
                routes.push(hit.route);
                let ttl = hit.time_to_live.unwrap_or(routing.default_ttl);
                let expires =
                    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
                let endpoint = endpoint_of(hit.sink);
                match targets.iter_mut().find(|t| t.0 == endpoint) {
                    Some(t) => {
                        t.1 = t.1.min(hit.priority);
                        t.2 = t.2.max(expires);
                    }
                    None => targets.push((endpoint, hit.priority, expires)),
                }
            }
            if targets.is_empty()
                && let Some(endpoint) = &hub.unmatched
            {
                let ttl = u64::try_from(routing.default_ttl.as_millis()).unwrap_or(u64::MAX);
                targets.push((endpoint.clone(), DEFAULT_PRIORITY, now.saturating_add(ttl)));
                routes.push(UNMATCHED_ROUTE);
            }
            if targets.is_empty() {
                hub.metrics.dropped(DropReason::NoRoute, 1);
                tracing::debug!(module = %item.module, "No route matched the message; dropped.");
            } else {
                let flags = if item.ack.is_none() {
                    store::AT_MOST_ONCE
                } else {
                    0
                };
                let mut payload = store::encode_record(msg, flags);
                let n = targets.len();
                for (i, (endpoint, priority, expires_at_ms)) in targets.drain(..).enumerate() {
                    // The last target takes the record itself: no shared copy for one target.
                    let payload = if i + 1 == n {
                        std::mem::take(&mut payload)
                    } else {
                        payload.clone()
                    };
                    reqs.push(AppendReq {
                        key: QKey { endpoint, priority },
                        expires_at_ms,
                        payload,
                    });
                }
            }
        }
        plans.push(Plan {
            appends: start..reqs.len(),
            routes,
        });
    }

    let keys: Vec<QKey> = reqs.iter().map(|r| r.key.clone()).collect();
    // Only a QoS 1 publisher waits for its PUBACK, so only then is the batch synced first.
    let durable = batch.iter().any(|i| i.ack.is_some() && i.msg.is_some());
    let outcome = if reqs.is_empty() {
        None
    } else {
        // Subscribers are woken as soon as the records are in the store, while the sync runs;
        // the PUBACKs wait for the sync.
        let wake = |results: &[Result<u64, AppendFailure>]| {
            let mut woken: BTreeSet<&str> = BTreeSet::new();
            let mut upstream = false;
            for (key, r) in keys.iter().zip(results) {
                if r.is_ok() {
                    match module_of(&key.endpoint) {
                        Some(m) => {
                            woken.insert(m);
                        }
                        None => upstream = true,
                    }
                }
            }
            for m in woken {
                hub.registry.wake(m);
            }
            if upstream {
                hub.upstream_wake.notify_one();
            }
        };
        match hub.store.append(reqs, durable, wake).await {
            Ok(o) => Some(o),
            Err(_) => {
                tracing::warn!("Store closed; the batch is not acknowledged.");
                batch.clear();
                return;
            }
        }
    };
    if let Some(Err(error)) = outcome.as_ref().map(|o| &o.synced) {
        tracing::error!(%error, items = batch.len(), "Store sync failed; the batch is not acknowledged.");
    }

    let mut routed: BTreeMap<&str, u64> = BTreeMap::new();
    for (item, plan) in batch.drain(..).zip(plans) {
        let mut ok = true;
        if let Some(o) = &outcome {
            for i in plan.appends.clone() {
                match &o.results[i] {
                    Ok(_) => ok &= o.synced.is_ok(),
                    Err(AppendFailure::Full) => {
                        ok = false;
                        hub.metrics.refused(Refused::StoreFull);
                        tracing::error!(module = %item.module, endpoint = %keys[i].endpoint, "Store is full; message not accepted.");
                    }
                    Err(AppendFailure::Failed(error)) => {
                        ok = false;
                        hub.metrics.refused(Refused::StoreError);
                        tracing::error!(module = %item.module, endpoint = %keys[i].endpoint, %error, "Store append failed; message not accepted.");
                    }
                }
            }
        }
        if ok {
            for r in plan.routes {
                *routed.entry(r).or_default() += 1;
            }
            if let Some(ack) = item.ack {
                ack.send();
            }
        }
    }
    hub.metrics.routed(&routed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_round_trip() {
        let e = endpoint_of(&Sink::ModuleInput {
            module: "scoring".into(),
            input: "features".into(),
        });
        assert_eq!(e, "module/scoring/inputs/features");
        assert_eq!(module_of(&e), Some("scoring"));
        assert_eq!(endpoint_of(&Sink::Upstream), UPSTREAM);
        assert_eq!(module_of(UPSTREAM), None);
    }
}
