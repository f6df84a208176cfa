//! One module connection: MQTT 3.1.1 on the `rumqttc::mqttbytes::v4` codec.
//!
//! [`serve`] works on any `AsyncRead + AsyncWrite` stream (a TCP socket in the hub, an
//! in-memory duplex in tests). It reads CONNECT, authenticates it, registers the connection
//! (closing an older one of the same module), answers CONNACK, then runs three parts:
//! - the read loop here: ACL checks, telemetry to ingest, twin and method requests,
//!   SUBSCRIBE/UNSUBSCRIBE, PUBACKs of deliveries, PINGREQ, and the keep-alive deadline
//!   (1.5 × the client's keep-alive, as MQTT says);
//! - a write task draining a bounded queue of packets into the socket, several per write;
//! - the delivery task ([`crate::delivery`]).
//!
//! Refused publishes: MQTT 3.1.1 has no negative PUBACK, so a publish outside the module's
//! own topics is not delivered, counted in `edgehub_acl_refused_total`, logged, and the
//! connection is closed (as IoT Hub does). A SUBSCRIBE outside them gets the failure return
//! code for that filter. QoS 2 is not supported (IoT Hub refuses it too): the connection is
//! closed. Twin responses, desired patches and method requests go out at QoS 0; routed
//! messages at QoS 1.

use crate::Inner;
use crate::auth::{AuthContext, authenticate};
use crate::ingest::{Ack, IngestItem};
use crate::metrics::DeadLetter;
use crate::registry::Conn;
use crate::twin::TwinError;
use bytes::{Bytes, BytesMut};
use edge_core::PropStr;
use edge_core::message::SysProp;
use edge_core::message::ToCompactString;
use edge_core::topic::{self, Inbound};
use edge_core::{Message, ModuleId};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, Publish, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck, Unsubscribe,
};
use rumqttc::mqttbytes::{self, Protocol, QoS};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// How long a new connection has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Room for the topic and headers on top of `max_message_bytes` in one packet.
const PACKET_OVERHEAD: usize = 64 * 1024;

/// Write queue of a connection beyond its delivery window (PUBACKs, responses, PINGRESPs).
const OUT_QUEUE: usize = 1024;

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT.
    Disconnect,
    /// The client closed the socket.
    Eof,
    /// The hub closed it (shutdown, or a newer connection of the module).
    Closed,
    /// Nothing arrived within 1.5 × keep-alive.
    KeepAlive,
    /// A protocol violation or a decoding error.
    Protocol(String),
    /// A publish outside the module's topics.
    Acl,
    /// Reading the socket failed.
    Io(std::io::Error),
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Close::Disconnect => f.write_str("client disconnected"),
            Close::Eof => f.write_str("connection closed by the client"),
            Close::Closed => f.write_str("closed by the hub"),
            Close::KeepAlive => f.write_str("keep-alive expired"),
            Close::Protocol(e) => write!(f, "protocol error: {e}"),
            Close::Acl => f.write_str("publish refused by the topic ACL"),
            Close::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

/// Reads one packet, reading more bytes as needed. `Ok(None)` at a clean end of stream.
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Packet>, Close> {
    loop {
        match Packet::read(buf, max) {
            Ok(p) => return Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(n)) => {
                // Room for a burst: one read takes what queued up (about 24 samples of 1.3 KB).
                buf.reserve(n.max(32 * 1024));
                match rd.read_buf(buf).await {
                    Ok(0) => return Ok(None),
                    Ok(_) => {}
                    Err(e) => return Err(Close::Io(e)),
                }
            }
            Err(e) => return Err(Close::Protocol(e.to_string())),
        }
    }
}

async fn write_now<W: AsyncWrite + Unpin>(wr: &mut W, packet: &Packet) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    packet
        .write(&mut buf, usize::MAX)
        .map_err(std::io::Error::other)?;
    wr.write_all(&buf).await?;
    wr.flush().await
}

/// Serves one client connection until it ends.
pub(crate) async fn serve<S>(hub: Arc<Inner>, stream: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let max_packet = hub.config.max_message_bytes.saturating_add(PACKET_OVERHEAD);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let first = tokio::select! {
        () = hub.cancel.cancelled() => return,
        r = tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut rd, &mut buf, max_packet)) => r,
    };
    let connect = match first {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(_))) => {
            tracing::debug!(%peer, "First packet is not CONNECT; closing.");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(reason)) => {
            tracing::debug!(%peer, %reason, "Bad CONNECT; closing.");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "No CONNECT in time; closing.");
            return;
        }
    };
    if connect.protocol != Protocol::V4 {
        let nack = Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::RefusedProtocolVersion,
            false,
        ));
        let _ = write_now(&mut wr, &nack).await;
        return;
    }
    let ctx = AuthContext {
        device: hub.config.device_id.as_str(),
        hosts: [
            hub.config.iothub_hostname.as_str(),
            hub.config.gateway_hostname.as_str(),
        ],
        identities: &hub.identities,
        now: crate::now_ms() / 1000,
    };
    let module = match authenticate(&connect, &ctx) {
        Ok(m) => m,
        Err(refusal) => {
            hub.metrics.auth_refused(refusal.reason());
            tracing::warn!(client_id = %connect.client_id, %peer, reason = refusal.reason(), detail = %refusal, "Connection refused.");
            let nack = Packet::ConnAck(ConnAck::new(refusal.code(), false));
            let _ = write_now(&mut wr, &nack).await;
            let _ = wr.shutdown().await;
            return;
        }
    };
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE + hub.config.max_inflight);
    let conn = Conn {
        id: hub.registry.next_conn_id(),
        out: out_tx,
        cancel: hub.cancel.child_token(),
        wake: Arc::new(Notify::new()),
    };
    let attached = hub
        .registry
        .attach(module.as_str(), connect.clean_session, conn.clone());
    hub.metrics.set_connected(attached.connected);
    attached.heartbeat.store(hub.clock_ms(), Relaxed);
    let ack = Packet::ConnAck(ConnAck::new(
        ConnectReturnCode::Success,
        attached.session_present,
    ));
    if let Err(error) = write_now(&mut wr, &ack).await {
        tracing::debug!(module = %module, %error, "Cannot send CONNACK.");
    } else {
        tracing::info!(module = %module, %peer, clean_session = connect.clean_session, keep_alive = connect.keep_alive, "Module connected.");
        let module_name: Arc<str> = Arc::from(module.as_str());
        hub.tracker
            .spawn(write_loop(wr, out_rx, conn.cancel.clone()));
        let (puback_tx, puback_rx) = mpsc::unbounded_channel();
        hub.tracker.spawn(crate::delivery::run(
            Arc::clone(&hub),
            Arc::clone(&module_name),
            conn.clone(),
            puback_rx,
        ));
        let mut reader = Reader {
            hub: Arc::clone(&hub),
            module: module.clone(),
            module_name,
            conn: conn.clone(),
            pubacks: puback_tx,
            heartbeat: attached.heartbeat,
            received: hub.metrics.received_counter(module.as_str()),
            enqueued: EnqueuedTime::default(),
        };
        let why = reader.run(&mut rd, &mut buf, max_packet, &connect).await;
        tracing::info!(module = %reader.module, reason = %why, "Module disconnected.");
    }
    conn.cancel.cancel();
    if let Some(n) = hub.registry.detach(module.as_str(), conn.id) {
        hub.metrics.set_connected(n);
    }
}

/// Writes queued packets, several per socket write, until cancelled or the socket fails.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Packet>,
    cancel: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut batch = Vec::with_capacity(64);
    loop {
        let n = tokio::select! {
            () = cancel.cancelled() => break,
            n = rx.recv_many(&mut batch, 64) => n,
        };
        if n == 0 {
            break;
        }
        for p in batch.drain(..) {
            if let Err(error) = p.write(&mut buf, usize::MAX) {
                tracing::warn!(%error, "Cannot encode an outgoing packet; dropping it.");
            }
        }
        let written = tokio::select! {
            () = cancel.cancelled() => break,
            r = wr.write_all(&buf) => r,
        };
        buf.clear();
        if written.is_err() {
            break;
        }
    }
    cancel.cancel();
    let _ = wr.shutdown().await;
}

/// The read side of a connection.
struct Reader {
    hub: Arc<Inner>,
    module: ModuleId,
    module_name: Arc<str>,
    conn: Conn,
    pubacks: mpsc::UnboundedSender<u16>,
    heartbeat: Arc<AtomicU64>,
    /// This module's `edgehub_messages_received_total` series, looked up once.
    received: prometheus::IntCounter,
    enqueued: EnqueuedTime,
}

/// The `iothub-enqueuedtime` stamp (RFC 3339, milliseconds), formatted once per millisecond: a
/// busy connection receives several messages within one.
#[derive(Default)]
struct EnqueuedTime {
    /// Unix milliseconds of `text`.
    at_ms: u128,
    text: PropStr,
}

impl EnqueuedTime {
    fn now(&mut self) -> PropStr {
        let now = std::time::SystemTime::now();
        let ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if ms != self.at_ms || self.text.is_empty() {
            self.at_ms = ms;
            self.text = humantime::format_rfc3339_millis(now).to_compact_string();
        }
        self.text.clone()
    }
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        max_packet: usize,
        connect: &Connect,
    ) -> Close {
        let keep_alive = (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
        loop {
            let read = read_packet(rd, buf, max_packet);
            let packet = tokio::select! {
                () = self.conn.cancel.cancelled() => return Close::Closed,
                r = async {
                    match keep_alive {
                        Some(d) => tokio::time::timeout(d, read).await.unwrap_or(Err(Close::KeepAlive)),
                        None => read.await,
                    }
                } => r,
            };
            let packet = match packet {
                Ok(Some(p)) => p,
                Ok(None) => return Close::Eof,
                Err(close) => return close,
            };
            self.heartbeat.store(self.hub.clock_ms(), Relaxed);
            let step = match packet {
                Packet::Publish(p) => self.on_publish(p).await,
                Packet::PubAck(a) => {
                    let _ = self.pubacks.send(a.pkid);
                    Ok(())
                }
                Packet::Subscribe(s) => self.on_subscribe(s).await,
                Packet::Unsubscribe(u) => self.on_unsubscribe(u).await,
                Packet::PingReq => self.send(Packet::PingResp).await,
                Packet::Disconnect => Err(Close::Disconnect),
                other => Err(Close::Protocol(format!(
                    "unexpected packet {other:?} from a client"
                ))),
            };
            if let Err(close) = step {
                return close;
            }
        }
    }

    async fn send(&self, packet: Packet) -> Result<(), Close> {
        tokio::select! {
            () = self.conn.cancel.cancelled() => Err(Close::Closed),
            r = self.conn.out.send(packet) => r.map_err(|_| Close::Closed),
        }
    }

    async fn publish(&self, topic: String, payload: Bytes) -> Result<(), Close> {
        self.send(Packet::Publish(Publish::from_bytes(
            topic,
            QoS::AtMostOnce,
            payload,
        )))
        .await
    }

    fn ack_of(&self, p: &Publish) -> Option<Ack> {
        (p.qos == QoS::AtLeastOnce).then(|| Ack {
            out: self.conn.out.clone(),
            pkid: p.pkid,
            cancel: self.conn.cancel.clone(),
        })
    }

    /// Hands an item to ingest (waiting when it is busy).
    async fn ingest(&self, msg: Option<Message>, ack: Option<Ack>) -> Result<(), Close> {
        if msg.is_none() && ack.is_none() {
            return Ok(());
        }
        let item = IngestItem {
            module: Arc::clone(&self.module_name),
            msg,
            ack,
        };
        tokio::select! {
            () = self.conn.cancel.cancelled() => Err(Close::Closed),
            r = self.hub.ingest.send(item) => r.map_err(|_| Close::Closed),
        }
    }

    fn refuse_publish(&self, topic: &str) -> Close {
        self.hub.metrics.acl_refused(self.module.as_str());
        tracing::warn!(module = %self.module, %topic, "Publish outside the module's topics refused; closing the connection.");
        Close::Acl
    }

    /// Whether a topic is in the module's own publish space (so a malformed one is a dead
    /// letter, not an ACL violation).
    fn own_space(&self, t: &str) -> bool {
        let own = format!(
            "devices/{}/modules/{}/messages/events",
            self.hub.config.device_id, self.module
        );
        t.starts_with(&own)
            || t.starts_with("$iothub/twin/GET/")
            || t.starts_with("$iothub/twin/PATCH/properties/reported/")
            || t.starts_with("$iothub/methods/res/")
    }

    async fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        if p.qos == QoS::ExactlyOnce {
            return Err(Close::Protocol("QoS 2 is not supported".into()));
        }
        let ack = self.ack_of(&p);
        let Publish { topic, payload, .. } = p;
        let device = self.hub.config.device_id.as_str();
        match topic::parse_inbound(&topic) {
            Ok(Inbound::Events {
                device: d,
                module: m,
                bag,
            }) => {
                if d != device || m != self.module.as_str() {
                    return Err(self.refuse_publish(&topic));
                }
                if payload.len() > self.hub.config.max_message_bytes {
                    self.hub.metrics.dead_letter(DeadLetter::TooLarge);
                    tracing::warn!(module = %self.module, size = payload.len(), max = self.hub.config.max_message_bytes, "Message too large; dead-lettered.");
                    return self.ingest(None, ack).await;
                }
                let mut msg = Message::new(payload);
                topic::decode_bag_into(bag, &mut msg);
                msg.system.set(SysProp::ConnectionDeviceId, Some(device));
                msg.system
                    .set(SysProp::ConnectionModuleId, Some(self.module.as_str()));
                msg.system
                    .set(SysProp::EnqueuedTime, Some(self.enqueued.now()));
                msg.system.set(SysProp::InputName, None::<String>);
                self.hub.metrics.count_received(&self.received);
                self.ingest(Some(msg), ack).await
            }
            Ok(Inbound::TwinGet { rid }) => {
                let twin = self.hub.twins.get_or_default(self.module.as_str());
                let body = serde_json::to_vec(&twin).unwrap_or_default();
                self.publish(topic::twin_response_topic(200, &rid, None), body.into())
                    .await?;
                self.ingest(None, ack).await
            }
            Ok(Inbound::TwinPatchReported { rid }) => {
                let result = match serde_json::from_slice::<serde_json::Value>(&payload) {
                    Ok(patch) => self.hub.twins.patch_reported(self.module.as_str(), &patch),
                    Err(_) => Err(TwinError::NotObject),
                };
                let (t, body) = match result {
                    Ok(version) => (
                        topic::twin_response_topic(204, &rid, Some(version)),
                        Bytes::new(),
                    ),
                    Err(TwinError::NotObject) => {
                        tracing::debug!(module = %self.module, "Reported patch is not a JSON object.");
                        (
                            topic::twin_response_topic(400, &rid, None),
                            Bytes::from_static(br#"{"message":"patch is not a JSON object"}"#),
                        )
                    }
                    Err(error @ TwinError::Io { .. }) => {
                        tracing::error!(module = %self.module, error = %crate::error_chain(&error), "Cannot store the reported patch.");
                        (
                            topic::twin_response_topic(500, &rid, None),
                            Bytes::from_static(br#"{"message":"cannot store the twin"}"#),
                        )
                    }
                };
                self.publish(t, body).await?;
                self.ingest(None, ack).await
            }
            Ok(Inbound::MethodResponse { status, rid }) => {
                if !self
                    .hub
                    .methods
                    .complete(self.module.as_str(), &rid, (status, payload))
                {
                    tracing::debug!(module = %self.module, %rid, "Method answer for no waiting call ignored.");
                }
                self.ingest(None, ack).await
            }
            Err(error) => {
                if crate::metrics::is_module_metrics_topic(&topic, device, self.module.as_str()) {
                    self.hub
                        .metrics
                        .modules
                        .report(self.module.as_str(), &payload);
                    return self.ingest(None, ack).await;
                }
                if !self.own_space(&topic)
                    && (topic.starts_with("devices/") || topic.starts_with("$iothub/"))
                {
                    return Err(self.refuse_publish(&topic));
                }
                self.hub.metrics.dead_letter(DeadLetter::BadTopic);
                tracing::warn!(module = %self.module, %error, "Publish to a topic outside the profile; dead-lettered.");
                self.ingest(None, ack).await
            }
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let device = self.hub.config.device_id.as_str();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut kinds = Vec::new();
        for f in &s.filters {
            match topic::classify_subscription(&f.path, device, self.module.as_str()) {
                Some(kind) => {
                    kinds.push(kind);
                    let granted = if f.qos == QoS::AtMostOnce {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    codes.push(SubscribeReasonCode::Success(granted));
                }
                None => {
                    self.hub.metrics.acl_refused(self.module.as_str());
                    tracing::warn!(module = %self.module, filter = %f.path, "Subscription outside the module's topics refused.");
                    codes.push(SubscribeReasonCode::Failure);
                }
            }
        }
        let subs = self
            .hub
            .registry
            .update_subs(self.module.as_str(), self.conn.id, |subs| {
                for k in kinds {
                    subs.set(k, true);
                }
            })
            .ok_or(Close::Closed)?;
        self.send(Packet::SubAck(SubAck::new(s.pkid, codes)))
            .await?;
        if subs.inputs {
            self.conn.wake.notify_one();
        }
        Ok(())
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let device = self.hub.config.device_id.as_str();
        let kinds: Vec<_> = u
            .topics
            .iter()
            .filter_map(|t| topic::classify_subscription(t, device, self.module.as_str()))
            .collect();
        self.hub
            .registry
            .update_subs(self.module.as_str(), self.conn.id, |subs| {
                for k in kinds {
                    subs.set(k, false);
                }
            })
            .ok_or(Close::Closed)?;
        self.send(Packet::UnsubAck(UnsubAck::new(u.pkid))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_core::identity::IdentityRegistry;
    use edge_core::sas::{ModuleKey, make_token, module_uri};
    use tokio::io::DuplexStream;

    async fn read(client: &mut DuplexStream, buf: &mut BytesMut) -> Option<Packet> {
        read_packet(client, buf, 1 << 20).await.ok().flatten()
    }

    async fn send(client: &mut DuplexStream, p: Packet) {
        write_now(client, &p).await.unwrap();
    }

    /// A module connects over an in-memory stream; returns the client side.
    async fn connect(hub: &Arc<Inner>, key: &ModuleKey, keep_alive: u16) -> DuplexStream {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        hub.tracker
            .spawn(serve(Arc::clone(hub), server, "test".into()));
        let mut c = Connect::new("dev/m");
        c.keep_alive = keep_alive;
        c.set_login(
            "hub.test/dev/m",
            make_token(key, &module_uri("hub.test", "dev", "m"), u64::MAX / 2),
        );
        send(&mut client, Packet::Connect(c)).await;
        let mut buf = BytesMut::new();
        match read(&mut client, &mut buf).await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.code, ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        client
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_dropped_after_one_and_a_half_keep_alives() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdentityRegistry::new();
        let key = ModuleKey::generate().unwrap();
        ids.insert(ModuleId::new("m").unwrap(), key.clone());
        let (hub, cancel, tracker) = crate::testing::hub(dir.path(), ids).await;

        // The store thread is a blocking task, which stops tokio from auto-advancing paused
        // time; the test moves the clock itself.
        let mut client = connect(&hub, &key, 10).await;
        let mut buf = BytesMut::new();
        // A PINGREQ at 12 s (past the keep-alive, within 1.5×) keeps it open.
        tokio::time::advance(Duration::from_secs(12)).await;
        send(&mut client, Packet::PingReq).await;
        assert_eq!(read(&mut client, &mut buf).await, Some(Packet::PingResp));
        // Silent until just before 15 s after the PINGREQ: still open.
        tokio::time::advance(Duration::from_millis(14_900)).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(hub.registry.conn("m").is_some(), "closed too early");
        // Past 15 s: closed.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(read(&mut client, &mut buf).await, None);
        crate::testing::eventually_none(&hub, "m").await;
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn qos2_and_a_second_connect_close_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdentityRegistry::new();
        let key = ModuleKey::generate().unwrap();
        ids.insert(ModuleId::new("m").unwrap(), key.clone());
        let (hub, cancel, tracker) = crate::testing::hub(dir.path(), ids).await;
        let mut buf = BytesMut::new();

        let mut client = connect(&hub, &key, 0).await;
        let mut p = Publish::new(
            "devices/dev/modules/m/messages/events/",
            QoS::ExactlyOnce,
            "x",
        );
        p.pkid = 1;
        send(&mut client, Packet::Publish(p)).await;
        assert_eq!(read(&mut client, &mut buf).await, None);

        let mut client = connect(&hub, &key, 0).await;
        send(&mut client, Packet::Connect(Connect::new("dev/m"))).await;
        assert_eq!(read(&mut client, &mut buf).await, None);
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
