//! [`ModuleClient`]: the connection of one module to the hub.
//!
//! A cloneable handle over a rumqttc client plus one background task that polls the event
//! loop, dispatches what the hub sends (inputs, twin responses, desired patches, method
//! requests), reconnects with back-off and renews the SAS token.
//!
//! # Invariants
//! - `unacked` counts QoS 1 publishes handed to rumqttc and not yet acknowledged by the hub.
//!   While the hub is unreachable, a send that would push it past `max_buffered` is refused
//!   with [`SendError::BufferFull`]; while connected, it waits (back-pressure). Nothing is
//!   dropped silently.
//! - Input messages are acknowledged to the hub only when the module calls
//!   [`Delivery::ack`]; an unacknowledged message is redelivered by the hub after a reconnect.
//! - The desired document held here always carries the `$version` it was built from; patches
//!   with a version gap trigger a full twin GET.

use crate::env::ModuleEnv;
use crate::error::{MethodError, SendError, TwinError};
use crate::metrics::{Metrics, metrics_topic};
use bytes::Bytes;
use edge_core::message::{Message, SysProp};
use edge_core::sas::{make_token, module_uri};
use edge_core::topic::{self, Outbound};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Tunables of a [`ModuleClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// MQTT keep-alive; the hub treats the pings as the module's heartbeat.
    pub heartbeat: Duration,
    /// Most QoS 1 messages held unacknowledged (in flight or buffered while disconnected).
    pub max_buffered: usize,
    /// Most QoS 1 publishes in flight on the wire.
    pub inflight: u16,
    /// Lifetime of each SAS token; the client reconnects with a fresh one before expiry.
    pub token_ttl: Duration,
    /// Upper bound of the reconnect back-off (it starts at 100 ms and doubles).
    pub max_backoff: Duration,
    /// Timeout of twin requests.
    pub request_timeout: Duration,
    /// Capacity of each input's queue inside the module.
    pub input_capacity: usize,
    /// How often the module's [`Metrics`] are reported to the hub (`EDGE_METRICS_INTERVAL`
    /// for modules started by [`crate::run`]).
    pub metrics_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            max_buffered: 10_000,
            inflight: 100,
            token_ttl: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            input_capacity: 1024,
            metrics_interval: Duration::from_secs(5),
        }
    }
}

type MethodFuture = Pin<Box<dyn Future<Output = Result<Value, MethodError>> + Send>>;
type MethodHandler = Arc<dyn Fn(Value) -> MethodFuture + Send + Sync>;

struct InputSlot {
    tx: mpsc::Sender<Delivery>,
    rx: Option<mpsc::Receiver<Delivery>>,
}

struct Inner {
    env: ModuleEnv,
    opts: ClientOptions,
    mqtt: AsyncClient,
    connected: watch::Sender<bool>,
    unacked: AtomicUsize,
    acked: Notify,
    closing: AtomicBool,
    rid: AtomicU64,
    twin_waiters: Mutex<HashMap<String, oneshot::Sender<(u16, Bytes)>>>,
    inputs: Mutex<HashMap<String, InputSlot>>,
    methods: Mutex<HashMap<String, MethodHandler>>,
    desired: watch::Sender<Option<Value>>,
    metrics: Metrics,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// A module's connection to the hub. Cheap to clone.
#[derive(Clone)]
pub struct ModuleClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModuleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleClient")
            .field("module", &self.inner.env.module_id)
            .finish_non_exhaustive()
    }
}

/// A message received on an input. Acknowledge it with [`Delivery::ack`] once it is handled.
#[derive(Debug)]
pub struct Delivery {
    /// The input it arrived on.
    pub input: String,
    /// The message (body, properties, system properties).
    pub message: Message,
    publish: Publish,
    mqtt: AsyncClient,
}

impl Delivery {
    /// Acknowledges the message: the hub removes it from the input's queue.
    ///
    /// # Errors
    /// [`SendError::Closed`] when the client is gone (the hub then redelivers it).
    pub async fn ack(self) -> Result<(), SendError> {
        self.mqtt
            .ack(&self.publish)
            .await
            .map_err(|_| SendError::Closed)
    }
}

/// The receiving end of one input.
#[derive(Debug)]
pub struct Input {
    rx: mpsc::Receiver<Delivery>,
}

impl Input {
    pub(crate) fn new(rx: mpsc::Receiver<Delivery>) -> Self {
        Self { rx }
    }

    /// The next message, or `None` once the client shut down.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// A message that is already queued, without waiting (and without arming a timer).
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn credentials(env: &ModuleEnv, ttl: Duration) -> (String, String) {
    let user = format!(
        "{}/{}/{}/?api-version=2021-04-12",
        env.iothub_hostname, env.device_id, env.module_id
    );
    let uri = module_uri(
        &env.iothub_hostname,
        env.device_id.as_str(),
        env.module_id.as_str(),
    );
    (user, make_token(&env.key, &uri, now_secs() + ttl.as_secs()))
}

impl ModuleClient {
    /// Creates the client and starts its background task on the current runtime. It connects
    /// (and keeps reconnecting) in the background; use [`ModuleClient::wait_connected`]. It
    /// connects to the hub's Unix socket when the environment names one
    /// ([`ModuleEnv::hub_socket`]), else to `hub_addr` over TCP.
    ///
    /// # Errors
    /// When the hub address is not `host:port`.
    pub fn start(env: ModuleEnv, opts: ClientOptions) -> Result<Self, std::io::Error> {
        let (host, port) = env
            .hub_addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("hub address `{}` is not host:port", env.hub_addr),
                )
            })?;
        let client_id = format!("{}/{}", env.device_id, env.module_id);
        let mut mo = match &env.hub_socket {
            // rumqttc takes the socket's path in place of the host name.
            Some(path) => {
                let mut mo = MqttOptions::new(client_id, path.to_string_lossy(), 0);
                mo.set_transport(rumqttc::Transport::Unix);
                mo
            }
            None => MqttOptions::new(client_id, host, port),
        };
        let (user, pass) = credentials(&env, opts.token_ttl);
        mo.set_credentials(user, pass)
            .set_keep_alive(opts.heartbeat)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(opts.inflight)
            .set_max_packet_size(256 * 1024 + 4096, 256 * 1024 + 4096);
        let (mqtt, mut eventloop) = AsyncClient::new(mo, opts.max_buffered + 256);
        // Small packets (PUBACKs, pings) must not wait for Nagle's algorithm.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let inner = Arc::new(Inner {
            env,
            opts,
            mqtt,
            connected: watch::channel(false).0,
            unacked: AtomicUsize::new(0),
            acked: Notify::new(),
            closing: AtomicBool::new(false),
            rid: AtomicU64::new(1),
            twin_waiters: Mutex::new(HashMap::new()),
            inputs: Mutex::new(HashMap::new()),
            methods: Mutex::new(HashMap::new()),
            desired: watch::channel(None).0,
            metrics: Metrics::new(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let client = Self { inner };
        let c = client.clone();
        client
            .inner
            .tracker
            .spawn(async move { c.drive(eventloop).await });
        let c = client.clone();
        client
            .inner
            .tracker
            .spawn(async move { c.report_metrics_loop().await });
        Ok(client)
    }

    /// The module's metrics, reported to the hub every `metrics_interval` and served on
    /// edged's `/metrics` with a `module` label (see [`crate::metrics`]).
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Publishes the metrics snapshot now (QoS 0), if connected and anything is registered.
    /// Returns whether a report was queued.
    pub fn report_metrics(&self) -> bool {
        let inner = &self.inner;
        if inner.metrics.is_empty() || !self.is_connected() {
            return false;
        }
        let topic = metrics_topic(inner.env.device_id.as_str(), inner.env.module_id.as_str());
        let body = inner.metrics.snapshot().to_string();
        inner
            .mqtt
            .try_publish(topic, QoS::AtMostOnce, false, body)
            .is_ok()
    }

    async fn report_metrics_loop(self) {
        let every = self
            .inner
            .opts
            .metrics_interval
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.inner.cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.report_metrics();
        }
    }

    /// The module's identity.
    #[must_use]
    pub fn env(&self) -> &ModuleEnv {
        &self.inner.env
    }

    /// Whether the client is connected right now.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Waits until the client is connected (or the client is shut down).
    pub async fn wait_connected(&self) {
        let mut rx = self.inner.connected.subscribe();
        tokio::select! {
            _ = rx.wait_for(|c| *c) => {}
            () = self.inner.cancel.cancelled() => {}
        }
    }

    /// Sends `msg` on output `output` with QoS 1. Returns once rumqttc accepted it; the hub
    /// acknowledges it once it is durable. See the invariants for buffering.
    ///
    /// # Errors
    /// [`SendError::BufferFull`] when disconnected with a full buffer; [`SendError::Closed`]
    /// after shutdown.
    pub async fn send(&self, output: &str, mut msg: Message) -> Result<(), SendError> {
        msg.system.set(SysProp::OutputName, Some(output));
        let topic = topic::events_topic(
            self.inner.env.device_id.as_str(),
            self.inner.env.module_id.as_str(),
            &msg,
        );
        self.publish_qos1(topic, msg.body).await
    }

    async fn publish_qos1(&self, topic: String, body: Bytes) -> Result<(), SendError> {
        let inner = &self.inner;
        loop {
            if inner.closing.load(Ordering::Acquire) {
                return Err(SendError::Closed);
            }
            let n = inner.unacked.load(Ordering::Acquire);
            if n < inner.opts.max_buffered {
                break;
            }
            if !self.is_connected() {
                return Err(SendError::BufferFull(n));
            }
            let acked = inner.acked.notified();
            tokio::select! {
                () = acked => {}
                () = inner.cancel.cancelled() => return Err(SendError::Closed),
            }
        }
        inner.unacked.fetch_add(1, Ordering::AcqRel);
        if inner
            .mqtt
            .publish_bytes(topic, QoS::AtLeastOnce, false, body)
            .await
            .is_err()
        {
            inner.unacked.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// QoS 1 messages not yet acknowledged by the hub.
    #[must_use]
    pub fn unacked(&self) -> usize {
        self.inner.unacked.load(Ordering::Acquire)
    }

    /// Waits until every message sent so far is acknowledged by the hub, up to `timeout`.
    /// Returns whether everything was acknowledged.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let acked = self.inner.acked.notified();
            if self.unacked() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, acked).await.is_err() {
                return self.unacked() == 0;
            }
        }
    }

    /// The receiver of input `name`. Messages that arrive before this is called are queued.
    /// Each input has one receiver: a second call returns `None`.
    #[must_use]
    pub fn input(&self, name: &str) -> Option<Input> {
        let mut inputs = self
            .inner
            .inputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let slot = inputs
            .entry(name.to_owned())
            .or_insert_with(|| new_slot(self.inner.opts.input_capacity));
        slot.rx.take().map(|rx| Input { rx })
    }

    /// Registers the handler of direct method `name` (replacing an earlier one).
    pub fn on_method<F, Fut>(&self, name: &str, handler: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, MethodError>> + Send + 'static,
    {
        let h: MethodHandler = Arc::new(move |v| Box::pin(handler(v)));
        self.inner
            .methods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), h);
    }

    /// The latest desired properties (with `$version`), once known.
    #[must_use]
    pub fn desired(&self) -> watch::Receiver<Option<Value>> {
        self.inner.desired.subscribe()
    }

    /// Fetches the whole twin (`{"desired": …, "reported": …}`) and refreshes the desired
    /// document held by the client.
    ///
    /// # Errors
    /// [`TwinError`] on timeout, an error status or a malformed answer.
    pub async fn get_twin(&self) -> Result<Value, TwinError> {
        let rid = self.next_rid();
        let (status, body) = self
            .request(
                rid.clone(),
                topic::twin_get_topic(&rid),
                Bytes::from_static(b" "),
            )
            .await?;
        if status >= 300 {
            return Err(TwinError::Status(status));
        }
        let twin: Value = serde_json::from_slice(&body).map_err(TwinError::BadResponse)?;
        if let Some(d) = twin.get("desired") {
            self.offer_full_desired(d.clone());
        }
        Ok(twin)
    }

    /// Merges `patch` into the module's reported properties.
    ///
    /// # Errors
    /// [`TwinError`] on timeout or an error status.
    pub async fn patch_reported(&self, patch: &Value) -> Result<(), TwinError> {
        let rid = self.next_rid();
        let body = Bytes::from(patch.to_string());
        let (status, _) = self
            .request(rid.clone(), topic::reported_patch_topic(&rid), body)
            .await?;
        if status >= 300 {
            return Err(TwinError::Status(status));
        }
        Ok(())
    }

    /// Stops the client: waits up to `grace` for the hub to acknowledge what was sent, then
    /// disconnects. Returns whether everything sent was acknowledged.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        // The last values (QoS 0: it leaves before the DISCONNECT queued after it).
        self.report_metrics();
        let all_acked = self.flush(grace).await;
        self.inner.closing.store(true, Ordering::Release);
        let _ = self.inner.mqtt.disconnect().await;
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        if !all_acked {
            warn!(
                unacked = self.unacked(),
                "Stopped with messages the hub did not acknowledge."
            );
        }
        all_acked
    }

    fn next_rid(&self) -> String {
        self.inner.rid.fetch_add(1, Ordering::Relaxed).to_string()
    }

    async fn request(
        &self,
        rid: String,
        topic: String,
        body: Bytes,
    ) -> Result<(u16, Bytes), TwinError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .twin_waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(rid.clone(), tx);
        let result = async {
            self.publish_qos1(topic, body)
                .await
                .map_err(|_| TwinError::Closed)?;
            match tokio::time::timeout(self.inner.opts.request_timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(TwinError::Closed),
                Err(_) => Err(TwinError::Timeout(self.inner.opts.request_timeout)),
            }
        }
        .await;
        self.inner
            .twin_waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&rid);
        result
    }

    fn offer_full_desired(&self, desired: Value) {
        let new_v = desired.get("$version").and_then(Value::as_u64);
        self.inner.desired.send_if_modified(|cur| {
            let cur_v = cur
                .as_ref()
                .and_then(|c| c.get("$version"))
                .and_then(Value::as_u64);
            if cur.is_none() || new_v != cur_v {
                *cur = Some(desired);
                true
            } else {
                false
            }
        });
    }

    /// Applies a desired patch; returns false when a version gap needs a full GET.
    fn apply_desired_patch(&self, patch: &Value) -> bool {
        let Some(v) = patch.get("$version").and_then(Value::as_u64) else {
            warn!("Desired patch without $version ignored.");
            return true;
        };
        let mut gap = false;
        self.inner.desired.send_if_modified(|cur| {
            let Some(doc) = cur.as_mut() else {
                gap = true;
                return false;
            };
            let cur_v = doc.get("$version").and_then(Value::as_u64).unwrap_or(0);
            if v <= cur_v {
                return false;
            }
            if v != cur_v + 1 {
                gap = true;
                return false;
            }
            edge_core::json::merge(doc, patch);
            true
        });
        !gap
    }

    async fn drive(self, mut eventloop: EventLoop) {
        let mut backoff = Duration::from_millis(100);
        let mut renew_at = tokio::time::Instant::now() + renew_after(self.inner.opts.token_ttl);
        let mut was_connected = false;
        loop {
            let event = tokio::select! {
                () = self.inner.cancel.cancelled() => break,
                () = tokio::time::sleep_until(renew_at) => {
                    debug!("Renewing the SAS token.");
                    let (u, p) = credentials(&self.inner.env, self.inner.opts.token_ttl);
                    eventloop.mqtt_options.set_credentials(u, p);
                    renew_at = tokio::time::Instant::now() + renew_after(self.inner.opts.token_ttl);
                    let _ = self.inner.mqtt.try_disconnect();
                    continue;
                }
                ev = eventloop.poll() => ev,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code == rumqttc::ConnectReturnCode::Success {
                        info!(
                            session_present = ack.session_present,
                            "Connected to the hub."
                        );
                        backoff = Duration::from_millis(100);
                        was_connected = true;
                        self.inner.connected.send_replace(true);
                        self.on_connected();
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ =
                        self.inner
                            .unacked
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                                n.checked_sub(1)
                            });
                    self.inner.acked.notify_waiters();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.dispatch(p).await,
                Ok(_) => {}
                Err(e) => {
                    if self.inner.closing.load(Ordering::Acquire) {
                        break;
                    }
                    self.inner.connected.send_replace(false);
                    if was_connected {
                        warn!(error = %e, "Lost the hub; reconnecting.");
                        was_connected = false;
                    } else {
                        debug!(error = %e, ?backoff, "Hub not reachable yet.");
                    }
                    if matches!(
                        e,
                        rumqttc::ConnectionError::ConnectionRefused(
                            rumqttc::ConnectReturnCode::NotAuthorized
                                | rumqttc::ConnectReturnCode::BadUserNamePassword
                        )
                    ) {
                        warn!("The hub refused this module's credentials.");
                    }
                    tokio::select! {
                        () = self.inner.cancel.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.inner.opts.max_backoff);
                    let (u, p) = credentials(&self.inner.env, self.inner.opts.token_ttl);
                    eventloop.mqtt_options.set_credentials(u, p);
                    renew_at = tokio::time::Instant::now() + renew_after(self.inner.opts.token_ttl);
                }
            }
        }
        self.inner.connected.send_replace(false);
        // Wake anyone waiting on acks or inputs.
        self.inner.acked.notify_waiters();
        self.inner
            .inputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn on_connected(&self) {
        let me = self.clone();
        self.inner.tracker.spawn(async move {
            let env = &me.inner.env;
            let filters = [
                format!(
                    "devices/{}/modules/{}/inputs/#",
                    env.device_id, env.module_id
                ),
                "$iothub/methods/POST/#".to_owned(),
                "$iothub/twin/PATCH/properties/desired/#".to_owned(),
                "$iothub/twin/res/#".to_owned(),
            ];
            let subs = filters
                .into_iter()
                .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
            if me.inner.mqtt.subscribe_many(subs).await.is_err() {
                return;
            }
            // Catch up on desired changes made while disconnected.
            if let Err(e) = me.get_twin().await {
                debug!(error = %e, "Twin refresh after connect failed.");
            }
        });
    }

    async fn dispatch(&self, p: Publish) {
        let env = &self.inner.env;
        let parsed =
            topic::parse_outbound(&p.topic, env.device_id.as_str(), env.module_id.as_str());
        match parsed {
            Ok(Outbound::Input { input, mut msg }) => {
                msg.body = p.payload.clone();
                msg.system.set(SysProp::InputName, Some(input.as_str()));
                let tx = {
                    let mut inputs = self
                        .inner
                        .inputs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    // Looked up by `&str`: the input's name is copied only the first time.
                    if let Some(slot) = inputs.get(input.as_str()) {
                        slot.tx.clone()
                    } else {
                        inputs
                            .entry(input.clone())
                            .or_insert_with(|| new_slot(self.inner.opts.input_capacity))
                            .tx
                            .clone()
                    }
                };
                let d = Delivery {
                    input,
                    message: *msg,
                    publish: p,
                    mqtt: self.inner.mqtt.clone(),
                };
                // The hub bounds what it has in flight to us, so this rarely waits.
                let _ = tx.send(d).await;
            }
            Ok(Outbound::TwinResponse { status, rid, .. }) => {
                self.ack_now(&p);
                let waiter = self
                    .inner
                    .twin_waiters
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&rid);
                if let Some(w) = waiter {
                    let _ = w.send((status, p.payload));
                }
            }
            Ok(Outbound::DesiredPatch) => {
                self.ack_now(&p);
                match serde_json::from_slice::<Value>(&p.payload) {
                    Ok(patch) => {
                        if !self.apply_desired_patch(&patch) {
                            let me = self.clone();
                            self.inner.tracker.spawn(async move {
                                let _ = me.get_twin().await;
                            });
                        }
                    }
                    Err(e) => warn!(error = %e, "Desired patch is not JSON; ignored."),
                }
            }
            Ok(Outbound::MethodRequest { name, rid }) => {
                self.ack_now(&p);
                let handler = self
                    .inner
                    .methods
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&name)
                    .cloned();
                let me = self.clone();
                let payload = if p.payload.is_empty() {
                    Ok(Value::Null)
                } else {
                    serde_json::from_slice::<Value>(&p.payload)
                };
                self.inner.tracker.spawn(async move {
                    let (status, body) = match (handler, payload) {
                        (_, Err(e)) => (
                            400,
                            serde_json::json!({"error": format!("payload is not JSON: {e}")}),
                        ),
                        (None, _) => (
                            404,
                            serde_json::json!({"error": format!("no method `{name}`")}),
                        ),
                        (Some(h), Ok(v)) => match h(v).await {
                            Ok(v) => (200, v),
                            Err(e) => (e.status, serde_json::json!({"error": e.message})),
                        },
                    };
                    let t = topic::method_response_topic(status, &rid);
                    let _ = me.publish_qos1(t, Bytes::from(body.to_string())).await;
                });
            }
            Err(e) => {
                self.ack_now(&p);
                warn!(error = %e, "Unexpected publish from the hub ignored.");
            }
        }
    }

    fn ack_now(&self, p: &Publish) {
        if p.qos != QoS::AtMostOnce {
            let _ = self.inner.mqtt.try_ack(p);
        }
    }
}

fn new_slot(capacity: usize) -> InputSlot {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    InputSlot { tx, rx: Some(rx) }
}

fn renew_after(ttl: Duration) -> Duration {
    // Renew two minutes before expiry, as Azure's SDK does, or at 80% of short lifetimes.
    ttl.checked_sub(Duration::from_secs(120))
        .filter(|d| !d.is_zero())
        .unwrap_or(ttl * 4 / 5)
}
