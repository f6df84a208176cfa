//! The live OPC UA source: a client session (async-opcua) with one subscription on the
//! configured nodes, turned into one [`Sample`] per publish that carries a change.
//!
//! A connection task owns the session. It connects (security policy None, anonymous),
//! creates the subscription once the session is up, and starts over with exponential
//! back-off (`reconnectInitial` doubling up to `reconnectMax`) whenever the connection is
//! lost or cannot be made. The subscription callback keeps the last value of every tag, so a
//! publish that carries only the tags that changed still yields a sample with all of them;
//! `ts` is the latest server timestamp of the publish. A node the server refuses (unknown
//! id, not a variable) ends the source with [`LiveEvent::Refused`] naming the config field.

use crate::config::{OpcUaSource, ResolvedNode};
use crate::replay::Sample;
use futures::StreamExt;
use opcua::client::{
    ClientBuilder, IdentityToken, MonitoredItemMap, OnSubscriptionNotificationCore, Session,
    SessionPollResult,
};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, DataChangeNotification, DataValue, DateTime, MessageSecurityMode,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeClass, NodeId,
    NotificationMessage, ReadValueId, TimestampsToReturn, Variant,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Samples waiting for the module; a live server is not paused, so past this many the
/// newest samples are dropped (and counted) while the hub does not take them.
pub const LIVE_QUEUE: usize = 1024;

/// Ticks (100 ns) between 1601-01-01 (OPC UA epoch) and 1970-01-01.
const EPOCH_TICKS: i64 = 116_444_736_000_000_000;

/// What the live source reports.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// The subscription is established (after every (re)connect).
    Subscribed {
        /// Revised publishing interval.
        publishing_interval: Duration,
    },
    /// A sample to send.
    Sample(Sample),
    /// The connection was lost or could not be made; the source retries after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// Back-off before the next attempt.
        retry_in: Duration,
    },
    /// The server refused a configured node; the source has stopped.
    Refused {
        /// The config field, e.g. `source.nodes[3].nodeId`.
        field: String,
        /// The node id.
        node_id: String,
        /// The OPC UA status.
        status: String,
    },
}

/// A running live source. Dropping it stops the connection task and closes the session.
///
/// # Invariants
/// Events arrive in the order they happened; after [`LiveEvent::Refused`] no event follows.
#[derive(Debug)]
pub struct LiveSource {
    rx: mpsc::Receiver<LiveEvent>,
    stop: CancellationToken,
    dropped: Arc<AtomicU64>,
}

impl LiveSource {
    /// Starts the connection task on the current tokio runtime. The source must have passed
    /// validation ([`crate::IngestConfig::check`]).
    #[must_use]
    pub fn start(source: OpcUaSource) -> Self {
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        let stop = CancellationToken::new();
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(connection_task(
            source,
            tx,
            stop.clone(),
            Arc::clone(&dropped),
        ));
        Self { rx, stop, dropped }
    }

    /// The next event; `None` once the source has stopped.
    pub async fn next(&mut self) -> Option<LiveEvent> {
        self.rx.recv().await
    }

    /// Samples dropped because the module did not take them fast enough.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for LiveSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Converts an OPC UA time to a `SystemTime`.
fn system_time(t: &DateTime) -> SystemTime {
    let since = t.ticks().saturating_sub(EPOCH_TICKS);
    let nanos = u64::try_from(since).unwrap_or(0).saturating_mul(100);
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// A numeric reading of a value; `None` for bad quality or a non-numeric type.
fn number(dv: &DataValue) -> Option<f64> {
    if dv.status.is_some_and(|s| !s.is_good()) {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let x = match dv.value.as_ref()? {
        Variant::Double(x) => *x,
        Variant::Float(x) => f64::from(*x),
        Variant::Boolean(b) => f64::from(u8::from(*b)),
        Variant::SByte(x) => f64::from(*x),
        Variant::Byte(x) => f64::from(*x),
        Variant::Int16(x) => f64::from(*x),
        Variant::UInt16(x) => f64::from(*x),
        Variant::Int32(x) => f64::from(*x),
        Variant::UInt32(x) => f64::from(*x),
        Variant::Int64(x) => *x as f64,
        Variant::UInt64(x) => *x as f64,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// The subscription callback: last value per tag, one sample per publish with a change.
struct Collector {
    run_id: Arc<str>,
    tags: Arc<[String]>,
    values: Vec<Option<f64>>,
    /// The last sample index; shared by the sessions of one source, so indexes go on across
    /// reconnects.
    index: Arc<AtomicU64>,
    tx: mpsc::Sender<LiveEvent>,
    dropped: Arc<AtomicU64>,
}

impl OnSubscriptionNotificationCore for Collector {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let mut changed = false;
        let mut latest: Option<SystemTime> = None;
        for obj in notification.notification_data.into_iter().flatten() {
            let Some(dc) = obj.into_inner_as::<DataChangeNotification>() else {
                continue;
            };
            for item in dc.monitored_items.into_iter().flatten() {
                // Client handles are 1 + the tag's position (set when the items were created).
                let Some(slot) = usize::try_from(item.client_handle)
                    .ok()
                    .and_then(|h| h.checked_sub(1))
                    .and_then(|i| self.values.get_mut(i))
                else {
                    continue;
                };
                *slot = number(&item.value);
                changed = true;
                if let Some(t) = item.value.server_timestamp.as_ref().map(system_time) {
                    latest = Some(latest.map_or(t, |l| l.max(t)));
                }
            }
        }
        if !changed {
            return;
        }
        let index = self.index.fetch_add(1, Ordering::Relaxed) + 1;
        let sample = Sample {
            run_id: Arc::clone(&self.run_id),
            index,
            ts: latest.unwrap_or_else(|| system_time(&notification.publish_time)),
            offset: Duration::ZERO,
            tags: Arc::clone(&self.tags),
            values: self.values.clone(),
        };
        if self.tx.try_send(LiveEvent::Sample(sample)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends an event unless the source is being dropped.
async fn emit(tx: &mpsc::Sender<LiveEvent>, stop: &CancellationToken, ev: LiveEvent) {
    tokio::select! {
        _ = tx.send(ev) => {}
        () = stop.cancelled() => {}
    }
}

/// Why a session ended.
enum Ended {
    /// Connection lost or never made: retry.
    Lost(String),
    /// A node was refused: stop.
    Refused,
    /// The source was dropped.
    Stopped,
}

async fn connection_task(
    source: OpcUaSource,
    tx: mpsc::Sender<LiveEvent>,
    stop: CancellationToken,
    dropped: Arc<AtomicU64>,
) {
    let nodes = source.resolved_nodes();
    let tags: Arc<[String]> = nodes.iter().map(|n| n.tag.clone()).collect();
    let run_id: Arc<str> = source.run_id.as_str().into();
    let pki = source
        .pki_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("opcua-pki"));
    let mut delay = source.reconnect_initial;
    let index = Arc::new(AtomicU64::new(0));
    loop {
        let collector = Collector {
            run_id: Arc::clone(&run_id),
            tags: Arc::clone(&tags),
            values: vec![None; tags.len()],
            index: Arc::clone(&index),
            tx: tx.clone(),
            dropped: Arc::clone(&dropped),
        };
        let (ended, subscribed) = session(&source, &pki, &nodes, collector, &tx, &stop).await;
        let reason = match ended {
            Ended::Stopped | Ended::Refused => return,
            Ended::Lost(reason) => reason,
        };
        if subscribed {
            delay = source.reconnect_initial;
        }
        tracing::warn!(endpoint = %source.endpoint, %reason, retry_in = ?delay, "OPC UA source disconnected.");
        emit(
            &tx,
            &stop,
            LiveEvent::Disconnected {
                reason,
                retry_in: delay,
            },
        )
        .await;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
        delay = (delay * 2).min(source.reconnect_max);
    }
}

/// One session: connect, subscribe, run until it ends. Returns why it ended and whether the
/// subscription was made.
async fn session(
    source: &OpcUaSource,
    pki: &std::path::Path,
    nodes: &[ResolvedNode],
    collector: Collector,
    tx: &mpsc::Sender<LiveEvent>,
    stop: &CancellationToken,
) -> (Ended, bool) {
    let client = ClientBuilder::new()
        .application_name("historian-ingest")
        .application_uri("urn:edge-runtime:historian-ingest")
        .product_uri("urn:edge-runtime:historian-ingest")
        .pki_dir(pki)
        .create_sample_keypair(false)
        .trust_server_certs(true)
        // The event loop gives up on a lost connection; this task reconnects with back-off.
        .session_retry_limit(0)
        .keep_alive_interval(Duration::from_secs(2))
        .client();
    let mut client = match client {
        Ok(c) => c,
        Err(e) => return (Ended::Lost(format!("client configuration: {e:?}")), false),
    };
    let connect = client.connect_to_matching_endpoint(
        (
            source.endpoint.as_str(),
            SecurityPolicy::None.to_str(),
            MessageSecurityMode::None,
        ),
        IdentityToken::Anonymous,
    );
    let (session, event_loop) = tokio::select! {
        r = connect => match r {
            Ok(s) => s,
            Err(e) => return (Ended::Lost(format!("cannot connect: {e}")), false),
        },
        () = stop.cancelled() => return (Ended::Stopped, false),
    };
    let mut events = Box::pin(event_loop.enter());
    let mut collector = Some(collector);
    let mut subscribed = false;
    // Subscribing is a request/response exchange that needs the event loop polled meanwhile.
    let mut subscribing = None;
    let ended = loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => break Ended::Lost("session ended".into()),
                Some(Err(status)) => break Ended::Lost(format!("session ended: {status}")),
                Some(Ok(SessionPollResult::ConnectionLost(status))) => {
                    break Ended::Lost(format!("connection lost: {status}"));
                }
                Some(Ok(SessionPollResult::Reconnected(_))) => {
                    if let Some(c) = collector.take() {
                        let s = Arc::clone(&session);
                        let src = source.clone();
                        let nodes = nodes.to_vec();
                        subscribing = Some(tokio::spawn(async move {
                            subscribe(&s, &src, &nodes, c).await
                        }));
                    }
                }
                Some(Ok(_)) => {}
            },
            r = async {
                match subscribing.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if subscribing.is_some() => {
                subscribing = None;
                match r {
                    Ok(Ok(interval)) => {
                        tracing::info!(endpoint = %source.endpoint, nodes = nodes.len(), publishing_interval = ?interval, "OPC UA subscription created.");
                        subscribed = true;
                        emit(tx, stop, LiveEvent::Subscribed { publishing_interval: interval }).await;
                    }
                    Ok(Err(SubscribeError::Refused { field, node_id, status })) => {
                        tracing::error!(%field, %node_id, %status, "OPC UA node refused by the server.");
                        emit(tx, stop, LiveEvent::Refused { field, node_id, status }).await;
                        break Ended::Refused;
                    }
                    Ok(Err(SubscribeError::Request(e))) => break Ended::Lost(format!("cannot subscribe: {e}")),
                    Err(e) => break Ended::Lost(format!("subscribe task failed: {e}")),
                }
            }
            () = stop.cancelled() => break Ended::Stopped,
        }
    };
    if let Some(t) = subscribing {
        t.abort();
    }
    if matches!(ended, Ended::Stopped | Ended::Refused) {
        // Close politely while the event loop still runs.
        let disconnect = session.disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::pin!(disconnect);
            loop {
                tokio::select! {
                    _ = &mut disconnect => break,
                    ev = events.next() => if ev.is_none() { break },
                }
            }
        })
        .await;
    }
    (ended, subscribed)
}

enum SubscribeError {
    Refused {
        field: String,
        node_id: String,
        status: String,
    },
    Request(String),
}

/// Creates the subscription and its monitored items (client handle = position + 1).
/// Returns the requested publishing interval.
async fn subscribe(
    session: &Session,
    source: &OpcUaSource,
    nodes: &[ResolvedNode],
    collector: Collector,
) -> Result<Duration, SubscribeError> {
    let publishing = source.publishing();
    let mut ids = Vec::with_capacity(nodes.len());
    for n in nodes {
        let id: NodeId = n.node_id.parse().map_err(|_| SubscribeError::Refused {
            field: n.field.clone(),
            node_id: n.node_id.clone(),
            status: "not a node id".into(),
        })?;
        ids.push(id);
    }
    // The server may accept a monitored item for a node it does not have (and report that
    // only in its data); ask for every node's class first so that a wrong id is refused now.
    let classes: Vec<ReadValueId> = ids
        .iter()
        .map(|id| ReadValueId {
            node_id: id.clone(),
            attribute_id: AttributeId::NodeClass as u32,
            ..Default::default()
        })
        .collect();
    let read = session
        .read(&classes, TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| SubscribeError::Request(e.to_string()))?;
    for (n, dv) in nodes.iter().zip(&read) {
        let refused = |status: String| SubscribeError::Refused {
            field: n.field.clone(),
            node_id: n.node_id.clone(),
            status,
        };
        if let Some(status) = dv.status.filter(|s| !s.is_good()) {
            return Err(refused(status.to_string()));
        }
        if dv.value != Some(Variant::Int32(NodeClass::Variable as i32)) {
            return Err(refused(format!(
                "not a variable (node class {:?})",
                dv.value
            )));
        }
    }
    let sub = session
        .create_subscription(publishing, 60, 10, 0, 0, true, collector)
        .await
        .map_err(|e| SubscribeError::Request(e.to_string()))?;
    let mut requests = Vec::with_capacity(nodes.len());
    for (i, id) in ids.into_iter().enumerate() {
        requests.push(MonitoredItemCreateRequest::new(
            ReadValueId::from(id),
            MonitoringMode::Reporting,
            MonitoringParameters {
                client_handle: u32::try_from(i + 1).unwrap_or(u32::MAX),
                sampling_interval: source.sampling_interval.as_secs_f64() * 1000.0,
                queue_size: 1,
                discard_oldest: true,
                ..Default::default()
            },
        ));
    }
    let created = session
        .create_monitored_items(sub, TimestampsToReturn::Both, requests)
        .await
        .map_err(|e| SubscribeError::Request(e.to_string()))?;
    if let Some((n, item)) = nodes
        .iter()
        .zip(&created)
        .find(|(_, c)| !c.result.status_code.is_good())
    {
        return Err(SubscribeError::Refused {
            field: n.field.clone(),
            node_id: n.node_id.clone(),
            status: item.result.status_code.to_string(),
        });
    }
    if created.len() != nodes.len() {
        return Err(SubscribeError::Request(format!(
            "{} monitored items created for {} nodes",
            created.len(),
            nodes.len()
        )));
    }
    Ok(publishing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::StatusCode;

    #[test]
    fn numbers_from_variants_and_quality() {
        assert_eq!(number(&DataValue::new_now(2.5f64)), Some(2.5));
        assert_eq!(number(&DataValue::new_now(3i32)), Some(3.0));
        assert_eq!(number(&DataValue::new_now(true)), Some(1.0));
        assert_eq!(number(&DataValue::new_now("text")), None);
        assert_eq!(number(&DataValue::new_now(f64::NAN)), None);
        assert_eq!(
            number(&DataValue::new_now_status(
                1.0f64,
                StatusCode::BadNoCommunication
            )),
            None
        );
        assert_eq!(number(&DataValue::null()), None);
    }

    #[test]
    fn opc_ua_time_converts_to_system_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let dt = DateTime::from(EPOCH_TICKS + 17_000_000_001_230_000);
        assert_eq!(system_time(&dt), t);
    }
}
