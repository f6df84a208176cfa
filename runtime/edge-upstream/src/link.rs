//! The device side: one MQTT session to the upstream broker, kept across reconnects.
//!
//! # What the link does
//! - Telemetry: drains the hub's `$upstream` queue in order and publishes each message at
//!   QoS 1 on `devices/{d}/messages/events/{bag}`; a queue entry is acknowledged only after
//!   the broker's PUBACK. When the connection drops, the queue is rewound and everything not
//!   acknowledged is sent again, in order (at least once).
//! - Reported properties: every `report_interval` it compares each identity's reported
//!   document with the last one the broker acknowledged and publishes the difference as one
//!   merge patch (plus the whole document, retained). While offline nothing is sent, so the
//!   changes made meanwhile go out as one merged patch per twin when the link returns.
//! - From the backend: the retained desired deployment (applied once per version), desired
//!   patches for modules, and direct-method calls, whose answers go back at QoS 1.
//!
//! # Invariants
//! - One rumqttc event loop per connection: after a drop the loop is rebuilt, so rumqttc
//!   never replays its own copies; the link resends from the hub queue instead, which keeps
//!   the resent stream in queue order.
//! - At most one reported patch per identity is in flight, so patches of a twin arrive in
//!   the order they were made.
//! - A publish is matched to its packet id through `Outgoing::Publish` events, which rumqttc
//!   emits in the order the publishes were requested.

use crate::config::UpstreamConfig;
use crate::topics::{self, ToDevice};
use crate::transport::{TlsError, UrlError, parse_url};
use edge_hub::{HubError, UpstreamMessage, UpstreamQueue};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the link needs from the device (edged implements it on its agent and hub).
#[async_trait::async_trait]
pub trait Device: Send + Sync + 'static {
    /// Identities whose reported properties go upstream (`$edgeAgent`, `$edgeHub`, modules).
    fn identities(&self) -> Vec<String>;
    /// The reported document of `identity`, with its `$version`, if the twin exists.
    fn reported(&self, identity: &str) -> Option<Value>;
    /// The version of the last desired deployment the device handled (0 for none).
    fn deployment_version(&self) -> u64;
    /// Applies or refuses desired deployment `version` (`manifest` is its JSON text) and
    /// records the outcome in the `$edgeAgent` reported properties. May block briefly.
    fn apply_deployment(&self, version: u64, manifest: &str);
    /// Merges a desired patch into the desired properties of module `identity`, which then
    /// reaches the module. May block briefly.
    ///
    /// # Errors
    /// Why the patch was not applied.
    fn patch_desired(&self, identity: &str, patch: Value) -> Result<(), String>;
    /// Calls direct method `method` of module `identity`: `(status, payload)`.
    async fn invoke(
        &self,
        identity: &str,
        method: &str,
        payload: Value,
        timeout: Duration,
    ) -> (i32, Value);
}

/// Counters of the link, for edged's `/metrics` (read with [`Upstream::stats`]).
#[derive(Debug, Default)]
pub struct LinkStats {
    connected: AtomicBool,
    connects: AtomicU64,
    messages_sent: AtomicU64,
}

impl LinkStats {
    /// Whether the link is connected to the broker now.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// Connections made after the first one.
    #[must_use]
    pub fn reconnects(&self) -> u64 {
        self.connects.load(Relaxed).saturating_sub(1)
    }

    /// Telemetry messages the broker acknowledged (a message resent after a drop counts
    /// again).
    #[must_use]
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Relaxed)
    }
}

/// Why the link cannot start.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The broker URL is unusable.
    #[error("invalid upstream configuration")]
    Url(#[from] UrlError),
    /// The TLS settings (`[upstream.tls]`) are unusable.
    #[error("invalid upstream TLS configuration")]
    Tls(#[from] TlsError),
}

/// The upstream link; [`Upstream::run`] drives it.
pub struct Upstream {
    config: UpstreamConfig,
    /// Broker address and transport, checked once in [`Upstream::new`].
    options: MqttOptions,
    device_id: String,
    queue: UpstreamQueue,
    device: Arc<dyn Device>,
    stats: Arc<LinkStats>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.config.url)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// What a publish in flight was, to act on its PUBACK.
#[derive(Debug)]
enum Sent {
    Telemetry { priority: u8, seq: u64 },
    Reported { identity: String, doc: Value },
    Other,
}

/// Work for the control task, done in arrival order.
enum Control {
    Deploy { version: u64, manifest: String },
    Desired { identity: String, patch: Value },
}

enum SessionEnd {
    Cancelled,
    Dropped(String),
}

/// Checks an upstream configuration without connecting: the URL parses and the TLS files
/// load. edged calls it before it starts anything, so a bad upstream setting stops it at once
/// instead of after the modules are up.
///
/// # Errors
/// As [`Upstream::new`].
pub fn check_config(config: &UpstreamConfig, device_id: &str) -> Result<(), UpstreamError> {
    let broker = parse_url(&config.url)?;
    crate::transport::mqtt_options(&broker, device_id, &config.tls)?;
    Ok(())
}

impl Upstream {
    /// A link for device `device_id` reading `queue`.
    ///
    /// # Errors
    /// [`UpstreamError::Url`] when the URL is not `mqtt[s]://host[:port]`,
    /// [`UpstreamError::Tls`] when a TLS file is missing or unusable.
    pub fn new(
        config: UpstreamConfig,
        device_id: &str,
        queue: UpstreamQueue,
        device: Arc<dyn Device>,
    ) -> Result<Self, UpstreamError> {
        let broker = parse_url(&config.url)?;
        let options = crate::transport::mqtt_options(&broker, device_id, &config.tls)?;
        Ok(Self {
            config,
            options,
            device_id: device_id.to_owned(),
            queue,
            device,
            stats: Arc::default(),
        })
    }

    /// The link's counters (shared; they move while [`Upstream::run`] runs).
    #[must_use]
    pub fn stats(&self) -> Arc<LinkStats> {
        Arc::clone(&self.stats)
    }

    /// Runs the link until `cancel` fires, reconnecting after `reconnect_delay` whenever the
    /// connection drops.
    pub async fn run(self, cancel: CancellationToken) {
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let control = tokio::spawn(control_task(Arc::clone(&self.device), ctl_rx));
        let (answer_tx, mut answer_rx) = mpsc::channel(256);
        let mut acked: HashMap<String, Value> = HashMap::new();
        let mut deployment_seen = self.device.deployment_version();
        loop {
            let end = self
                .session(
                    &cancel,
                    &mut acked,
                    &mut deployment_seen,
                    &ctl_tx,
                    &answer_tx,
                    &mut answer_rx,
                )
                .await;
            self.stats.connected.store(false, Relaxed);
            self.queue.rewind();
            match end {
                SessionEnd::Cancelled => break,
                SessionEnd::Dropped(why) => {
                    tracing::warn!(url = %self.config.url, error = %why, "Upstream link down; reconnecting.");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(self.config.reconnect_delay) => {}
                    }
                }
            }
        }
        drop(ctl_tx);
        let _ = control.await;
        tracing::info!("Upstream link stopped.");
    }

    fn options(&self) -> MqttOptions {
        let mut o = self.options.clone();
        o.set_clean_session(false)
            .set_keep_alive(self.config.keep_alive.max(Duration::from_secs(1)))
            .set_inflight(self.config.max_inflight.max(1))
            .set_max_packet_size(4 << 20, 4 << 20);
        if let Some(u) = &self.config.username {
            o.set_credentials(u, self.config.password.clone().unwrap_or_default());
        }
        o
    }

    #[allow(clippy::too_many_lines)]
    async fn session(
        &self,
        cancel: &CancellationToken,
        acked: &mut HashMap<String, Value>,
        deployment_seen: &mut u64,
        ctl: &mpsc::UnboundedSender<Control>,
        answer_tx: &mpsc::Sender<(String, Vec<u8>)>,
        answer_rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
    ) -> SessionEnd {
        let window = usize::from(self.config.max_inflight.max(1));
        let (client, mut el): (AsyncClient, EventLoop) =
            AsyncClient::new(self.options(), window * 2 + 64);
        let mut fifo: VecDeque<Sent> = VecDeque::new();
        let mut inflight: HashMap<u16, Sent> = HashMap::new();
        let mut connected = false;
        let mut telemetry_out = 0usize;
        let mut fetch: Option<JoinHandle<Result<Vec<UpstreamMessage>, HubError>>> = None;
        let mut idle = false;
        let mut twins_out: HashSet<String> = HashSet::new();
        let mut rid = 0u64;
        let mut tick = tokio::time::interval(self.config.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut acks: Vec<(u8, u64)> = Vec::new();
        let end = loop {
            if connected && fetch.is_none() && !idle && telemetry_out < window {
                let q = self.queue.clone();
                let n = window - telemetry_out;
                fetch = Some(tokio::spawn(async move { q.next_batch(n).await }));
            }
            if !acks.is_empty() {
                if let Err(e) = self.queue.ack(&acks).await {
                    tracing::warn!(error = %e, "Cannot acknowledge upstream messages.");
                }
                acks.clear();
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    let _ = client.try_disconnect();
                    break SessionEnd::Cancelled;
                }
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        tracing::info!(url = %self.config.url, session_present = ack.session_present, "Upstream link connected.");
                        connected = true;
                        self.stats.connected.store(true, Relaxed);
                        self.stats.connects.fetch_add(1, Relaxed);
                        idle = false;
                        let subs = topics::device_filters(&self.device_id)
                            .into_iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
                        if let Err(e) = client.try_subscribe_many(subs) {
                            break SessionEnd::Dropped(format!("cannot subscribe: {e}"));
                        }
                        tick.reset_immediately();
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(s) = fifo.pop_front() {
                            inflight.insert(pkid, s);
                        }
                    }
                    Ok(Event::Incoming(Incoming::PubAck(a))) => match inflight.remove(&a.pkid) {
                        Some(Sent::Telemetry { priority, seq }) => {
                            telemetry_out = telemetry_out.saturating_sub(1);
                            self.stats.messages_sent.fetch_add(1, Relaxed);
                            acks.push((priority, seq));
                        }
                        Some(Sent::Reported { identity, doc }) => {
                            twins_out.remove(&identity);
                            acked.insert(identity, doc);
                        }
                        Some(Sent::Other) | None => {}
                    },
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        self.incoming(&p.topic, &p.payload, deployment_seen, ctl, answer_tx);
                    }
                    Ok(_) => {}
                    Err(e) => break SessionEnd::Dropped(e.to_string()),
                },
                r = join_opt(&mut fetch) => {
                    fetch = None;
                    match r {
                        Ok(Ok(batch)) if batch.is_empty() => idle = true,
                        Ok(Ok(batch)) => {
                            let mut failed = None;
                            for m in batch {
                                let topic = topics::telemetry(&self.device_id, &m.message);
                                let body = m.message.body.to_vec();
                                if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, body) {
                                    failed = Some(e.to_string());
                                    break;
                                }
                                fifo.push_back(Sent::Telemetry { priority: m.priority, seq: m.seq });
                                telemetry_out += 1;
                            }
                            if let Some(e) = failed {
                                break SessionEnd::Dropped(format!("cannot publish: {e}"));
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "Cannot read the upstream queue.");
                            idle = true;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Upstream queue reader failed.");
                            idle = true;
                        }
                    }
                }
                () = self.queue.changed(), if idle => idle = false,
                _ = tick.tick() => {
                    idle = false;
                    if connected {
                        self.sync_reported(&client, acked, &mut twins_out, &mut fifo, &mut rid);
                    }
                }
                Some((topic, body)) = answer_rx.recv(), if connected => {
                    if client.try_publish(topic, QoS::AtLeastOnce, false, body).is_ok() {
                        fifo.push_back(Sent::Other);
                    }
                }
            }
        };
        // A reader still running would move the cursors after the rewind: let it finish.
        if let Some(h) = fetch.take() {
            let _ = h.await;
        }
        if !acks.is_empty() {
            let _ = self.queue.ack(&acks).await;
        }
        if matches!(end, SessionEnd::Cancelled) {
            // Give the DISCONNECT a moment to leave; the broker keeps the session either way.
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while el.poll().await.is_ok() {}
            })
            .await;
        }
        end
    }

    /// Publishes, per identity with nothing in flight, the merge patch from the last
    /// acknowledged reported document to the current one, and the whole document retained.
    fn sync_reported(
        &self,
        client: &AsyncClient,
        acked: &HashMap<String, Value>,
        twins_out: &mut HashSet<String>,
        fifo: &mut VecDeque<Sent>,
        rid: &mut u64,
    ) {
        let empty = Value::Object(Map::new());
        for identity in self.device.identities() {
            if twins_out.contains(&identity) {
                continue;
            }
            let Some(mut doc) = self.device.reported(&identity) else {
                continue;
            };
            let version = doc
                .as_object_mut()
                .and_then(|o| o.remove("$version"))
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            let last = acked.get(&identity).unwrap_or(&empty);
            if *last == doc {
                continue;
            }
            let patch = edge_core::json::diff(last, &doc);
            if patch.as_object().is_some_and(Map::is_empty) {
                continue;
            }
            *rid += 1;
            let mut whole = doc.clone();
            if let Some(o) = whole.as_object_mut() {
                o.insert("$version".into(), Value::from(version));
            }
            let patch_topic = topics::reported_patch(&self.device_id, &identity, *rid, version);
            let doc_topic = topics::reported_doc(&self.device_id, &identity);
            let patch_body = serde_json::to_vec(&patch).unwrap_or_default();
            let whole_body = serde_json::to_vec(&whole).unwrap_or_default();
            if client
                .try_publish(patch_topic, QoS::AtLeastOnce, false, patch_body)
                .is_err()
            {
                return;
            }
            fifo.push_back(Sent::Reported {
                identity: identity.clone(),
                doc,
            });
            twins_out.insert(identity.clone());
            if client
                .try_publish(doc_topic, QoS::AtLeastOnce, true, whole_body)
                .is_err()
            {
                return;
            }
            fifo.push_back(Sent::Other);
            tracing::debug!(identity = %identity, version, "Reported properties sent upstream.");
        }
    }

    fn incoming(
        &self,
        topic: &str,
        payload: &[u8],
        deployment_seen: &mut u64,
        ctl: &mpsc::UnboundedSender<Control>,
        answer_tx: &mpsc::Sender<(String, Vec<u8>)>,
    ) {
        match topics::parse_to_device(&self.device_id, topic) {
            Some(ToDevice::Deployment) => {
                if payload.is_empty() {
                    return;
                }
                let Ok(v) = serde_json::from_slice::<Value>(payload) else {
                    tracing::warn!(topic, "Desired deployment is not JSON; ignored.");
                    return;
                };
                let Some(version) = v.get("version").and_then(Value::as_u64) else {
                    tracing::warn!(topic, "Desired deployment has no version; ignored.");
                    return;
                };
                if version <= *deployment_seen {
                    tracing::debug!(version, "Desired deployment already handled.");
                    return;
                }
                *deployment_seen = version;
                let manifest = v.get("manifest").map(Value::to_string).unwrap_or_default();
                tracing::info!(version, "Desired deployment from upstream.");
                let _ = ctl.send(Control::Deploy { version, manifest });
            }
            Some(ToDevice::DesiredPatch { identity }) => {
                match serde_json::from_slice::<Value>(payload) {
                    Ok(patch @ Value::Object(_)) => {
                        let _ = ctl.send(Control::Desired {
                            identity: identity.to_owned(),
                            patch,
                        });
                    }
                    _ => tracing::warn!(topic, "Desired patch is not a JSON object; ignored."),
                }
            }
            Some(ToDevice::Method {
                identity,
                name,
                rid,
            }) => {
                let payload = if payload.iter().all(u8::is_ascii_whitespace) {
                    Value::Null
                } else {
                    match serde_json::from_slice(payload) {
                        Ok(v) => v,
                        Err(_) => {
                            let topic =
                                topics::method_response(&self.device_id, identity, 400, rid);
                            let body = br#"{"error":"payload is not JSON"}"#.to_vec();
                            let _ = answer_tx.try_send((topic, body));
                            return;
                        }
                    }
                };
                let device = Arc::clone(&self.device);
                let tx = answer_tx.clone();
                let (identity, name, rid) = (identity.to_owned(), name.to_owned(), rid.to_owned());
                let topic_base = self.device_id.clone();
                let timeout = self.config.method_timeout;
                tokio::spawn(async move {
                    let (status, answer) = device.invoke(&identity, &name, payload, timeout).await;
                    let topic = topics::method_response(&topic_base, &identity, status, &rid);
                    let body = serde_json::to_vec(&answer).unwrap_or_default();
                    if tx.send((topic, body)).await.is_err() {
                        tracing::debug!(module = %identity, method = %name, "Link gone; method answer dropped.");
                    }
                });
            }
            None => tracing::debug!(topic, "Unexpected upstream topic; ignored."),
        }
    }
}

async fn join_opt<T>(h: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

async fn control_task(device: Arc<dyn Device>, mut rx: mpsc::UnboundedReceiver<Control>) {
    while let Some(c) = rx.recv().await {
        let device = Arc::clone(&device);
        let done = tokio::task::spawn_blocking(move || match c {
            Control::Deploy { version, manifest } => device.apply_deployment(version, &manifest),
            Control::Desired { identity, patch } => {
                if let Err(e) = device.patch_desired(&identity, patch) {
                    tracing::warn!(module = %identity, error = %e, "Desired patch from upstream not applied.");
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "Upstream control task failed.");
        }
    }
}
