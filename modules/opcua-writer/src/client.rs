//! The real [`DcsWriter`]: an async-opcua client session with a subscription on the interlock,
//! reconnecting with exponential back-off.
//!
//! A connection task owns the session: it connects (fetching the endpoints first), drives the
//! session event loop (whose own reconnects use the same back-off and recreate the interlock
//! subscription), and starts over with back-off when the event loop gives up.

use crate::config::WriterConfig;
use crate::dcs::{DcsError, DcsWriter, Value};
use futures::StreamExt;
use opcua::client::{
    ClientBuilder, DataChangeCallback, IdentityToken, Password, Session, SessionPollResult,
};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, DataValue, DateTime, MessageSecurityMode, MonitoredItemCreateRequest, NodeId,
    NumericRange, ReadValueId, TimestampsToReturn, Variant, WriteValue,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Ticks (100 ns) between 1601-01-01 and 1970-01-01.
const EPOCH_TICKS: i64 = 116_444_736_000_000_000;

fn to_variant(v: &Value) -> Variant {
    match v {
        Value::Double(x) => Variant::Double(*x),
        Value::Bool(b) => Variant::Boolean(*b),
        Value::String(s) => Variant::from(s.as_str()),
        Value::DateTime(t) => {
            let ticks = t
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos() / 100).unwrap_or(i64::MAX));
            Variant::from(DateTime::from(ticks.saturating_add(EPOCH_TICKS)))
        }
    }
}

fn from_variant(v: &Variant) -> Option<Value> {
    Some(match v {
        Variant::Double(x) => Value::Double(*x),
        Variant::Float(x) => Value::Double(f64::from(*x)),
        Variant::Int32(x) => Value::Double(f64::from(*x)),
        Variant::UInt32(x) => Value::Double(f64::from(*x)),
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::String(s) => Value::String(s.as_ref().to_owned()),
        Variant::DateTime(d) => {
            let since = d.ticks().saturating_sub(EPOCH_TICKS);
            let nanos = u64::try_from(since).unwrap_or(0).saturating_mul(100);
            Value::DateTime(UNIX_EPOCH + Duration::from_nanos(nanos))
        }
        _ => return None,
    })
}

fn parse_node(s: &str) -> Result<NodeId, DcsError> {
    s.parse::<NodeId>()
        .map_err(|_| DcsError::BadNodeId(s.to_owned()))
}

/// Connection settings (a subset of [`WriterConfig`]).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Endpoint URL.
    pub endpoint: String,
    /// Security policy name (`None`, `Basic256Sha256`, ...).
    pub security_policy: String,
    /// `None`, `Sign`, `SignAndEncrypt`.
    pub security_mode: String,
    /// User name and password (anonymous when None).
    pub user: Option<(String, String)>,
    /// PKI directory (own certificate, trusted server certificates).
    pub pki_dir: PathBuf,
    /// Accept unknown server certificates.
    pub trust_server_certs: bool,
    /// The interlock node.
    pub interlock_node: String,
    /// First reconnect delay.
    pub retry_initial: Duration,
    /// Largest reconnect delay.
    pub retry_max: Duration,
}

impl ClientSettings {
    /// From the module config, with the PKI under `data_dir/pki` unless configured.
    #[must_use]
    pub fn from_config(cfg: &WriterConfig, data_dir: &std::path::Path) -> Self {
        Self {
            endpoint: cfg.endpoint.clone(),
            security_policy: cfg.security_policy.clone(),
            security_mode: cfg.security_mode.clone(),
            user: cfg.username.clone().zip(cfg.password.clone()),
            pki_dir: cfg.pki_dir.clone().unwrap_or_else(|| data_dir.join("pki")),
            trust_server_certs: cfg.trust_server_certs,
            interlock_node: cfg.interlock_node.clone(),
            retry_initial: cfg.reconnect_initial,
            retry_max: cfg.reconnect_max,
        }
    }
}

/// The OPC UA implementation of [`DcsWriter`].
///
/// # Invariants
/// `session` is `Some` only while `connected` is true; `interlock` is `None` while not connected
/// or before the subscription delivered its first value.
pub struct OpcuaDcs {
    session: watch::Receiver<Option<Arc<Session>>>,
    interlock: watch::Receiver<Option<bool>>,
    connected: watch::Receiver<bool>,
    stop: CancellationToken,
    connects: Arc<std::sync::atomic::AtomicU64>,
    last_error: watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for OpcuaDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpcuaDcs")
            .field("connected", &*self.connected.borrow())
            .finish_non_exhaustive()
    }
}

struct Shared {
    session: watch::Sender<Option<Arc<Session>>>,
    interlock: watch::Sender<Option<bool>>,
    connected: watch::Sender<bool>,
    connects: Arc<std::sync::atomic::AtomicU64>,
    /// Why the last connection attempt or session failed (cleared on connect).
    last_error: watch::Sender<Option<String>>,
}

impl Shared {
    fn failed(&self, why: String) {
        self.last_error.send_replace(Some(why));
    }
}

impl OpcuaDcs {
    /// Starts the connection task on the current runtime.
    #[must_use]
    pub fn start(settings: ClientSettings) -> Self {
        let (session_tx, session) = watch::channel(None);
        let (interlock_tx, interlock) = watch::channel(None);
        let (connected_tx, connected) = watch::channel(false);
        let stop = CancellationToken::new();
        let connects = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (last_error_tx, last_error) = watch::channel(None);
        let shared = Shared {
            session: session_tx,
            interlock: interlock_tx,
            connected: connected_tx,
            connects: connects.clone(),
            last_error: last_error_tx,
        };
        tokio::spawn(connection_task(settings, shared, stop.clone()));
        Self {
            session,
            interlock,
            connected,
            stop,
            connects,
            last_error,
        }
    }

    /// Why the last connection attempt or session failed, e.g. the server refusing the login;
    /// `None` once connected.
    #[must_use]
    pub fn last_error(&self) -> Option<String> {
        self.last_error.borrow().clone()
    }

    /// Watches [`Self::last_error`].
    #[must_use]
    pub fn last_error_watch(&self) -> watch::Receiver<Option<String>> {
        self.last_error.clone()
    }

    /// How many times a session was established (1 after the first connect).
    #[must_use]
    pub fn connects(&self) -> u64 {
        self.connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the connection task (the session is closed).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    fn session(&self) -> Result<Arc<Session>, DcsError> {
        if !*self.connected.borrow() {
            return Err(DcsError::NotConnected);
        }
        self.session.borrow().clone().ok_or(DcsError::NotConnected)
    }
}

impl Drop for OpcuaDcs {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn security(s: &ClientSettings) -> (SecurityPolicy, MessageSecurityMode) {
    let policy = s
        .security_policy
        .parse::<SecurityPolicy>()
        .unwrap_or(SecurityPolicy::Unknown);
    let mode = match s.security_mode.as_str() {
        "Sign" => MessageSecurityMode::Sign,
        "SignAndEncrypt" => MessageSecurityMode::SignAndEncrypt,
        _ => MessageSecurityMode::None,
    };
    (policy, mode)
}

async fn connection_task(s: ClientSettings, shared: Shared, stop: CancellationToken) {
    let mut delay = s.retry_initial;
    loop {
        let secure = s.security_mode != "None";
        let client = ClientBuilder::new()
            .application_name("opcua-writer")
            .application_uri("urn:edge-runtime:opcua-writer")
            .product_uri("urn:edge-runtime:opcua-writer")
            .pki_dir(&s.pki_dir)
            .create_sample_keypair(secure)
            .trust_server_certs(s.trust_server_certs)
            .session_retry_limit(-1)
            .recreate_subscriptions(false)
            .session_retry_initial(s.retry_initial)
            .session_retry_max(s.retry_max)
            .keep_alive_interval(Duration::from_secs(2))
            .client();
        match client {
            Ok(mut client) => {
                let (policy, mode) = security(&s);
                let token = match &s.user {
                    Some((u, p)) => IdentityToken::UserName(u.clone(), Password(p.clone())),
                    None => IdentityToken::Anonymous,
                };
                let connect = client.connect_to_matching_endpoint(
                    (s.endpoint.as_str(), policy.to_str(), mode),
                    token,
                );
                let res = tokio::select! {
                    r = connect => Some(r),
                    () = stop.cancelled() => None,
                };
                match res {
                    None => return,
                    Some(Ok((session, event_loop))) => {
                        delay = s.retry_initial;
                        run_session(&s, &shared, session, event_loop, &stop).await;
                        if stop.is_cancelled() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(endpoint = %s.endpoint, error = %e, "cannot connect to the DCS");
                        shared.failed(format!("cannot connect: {e}"));
                    }
                }
            }
            Err(e) => {
                tracing::error!(errors = ?e, "invalid OPC UA client configuration");
                shared.failed(format!("invalid client configuration: {e:?}"));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
        delay = (delay * 2).min(s.retry_max);
    }
}

async fn subscribe_interlock(
    interlock_node: &str,
    tx: watch::Sender<Option<bool>>,
    session: &Session,
) -> Result<(), String> {
    let node = parse_node(interlock_node).map_err(|e| e.to_string())?;
    let sub = session
        .create_subscription(
            Duration::from_millis(100),
            60,
            10,
            0,
            0,
            true,
            DataChangeCallback::new(move |dv: DataValue, _item| {
                let v = match dv.value {
                    Some(Variant::Boolean(b)) if dv.status.is_none_or(|s| s.is_good()) => Some(b),
                    _ => None,
                };
                tracing::info!(interlock = ?v, "interlock update");
                tx.send_replace(v);
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
    let items = session
        .create_monitored_items(
            sub,
            TimestampsToReturn::Both,
            vec![MonitoredItemCreateRequest::from(node)],
        )
        .await
        .map_err(|e| e.to_string())?;
    match items.first() {
        Some(i) if i.result.status_code.is_good() => Ok(()),
        Some(i) => Err(format!("monitored item: {}", i.result.status_code)),
        None => Err("no monitored item".into()),
    }
}

fn set_down(shared: &Shared) {
    shared.connected.send_replace(false);
    shared.session.send_replace(None);
    shared.interlock.send_replace(None);
}

async fn run_session(
    s: &ClientSettings,
    shared: &Shared,
    session: Arc<Session>,
    event_loop: opcua::client::SessionEventLoop<opcua::client::transport::TcpConnector>,
    stop: &CancellationToken,
) {
    let mut stream = Box::pin(event_loop.enter());
    let mut subscribed = false;
    loop {
        let item = tokio::select! {
            i = stream.next() => i,
            () = stop.cancelled() => {
                set_down(shared);
                let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
                return;
            }
        };
        match item {
            None => break,
            Some(Err(status)) => {
                tracing::warn!(%status, "DCS session ended");
                shared.failed(format!("session ended: {status}"));
                break;
            }
            Some(Ok(SessionPollResult::ReconnectFailed(status))) => {
                tracing::warn!(%status, "cannot connect to the DCS; retrying");
                shared.failed(format!("connect failed: {status}"));
            }
            Some(Ok(SessionPollResult::ConnectionLost(status))) => {
                tracing::warn!(%status, "DCS connection lost; reconnecting");
                shared.failed(format!("connection lost: {status}"));
                set_down(shared);
            }
            Some(Ok(SessionPollResult::Reconnected(mode))) => {
                tracing::info!(?mode, "DCS session (re)established");
                shared
                    .connects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !subscribed || matches!(mode, opcua::client::SessionConnectMode::NewSession(_)) {
                    // The subscription is made after the first connect and again for every new
                    // session (e.g. after a DCS restart), on its own task: the event loop must
                    // keep being polled meanwhile. A reactivated session keeps it.
                    subscribed = true;
                    let sess = session.clone();
                    let node = s.interlock_node.clone();
                    let tx = shared.interlock.clone();
                    tokio::spawn(async move {
                        if let Err(e) = subscribe_interlock(&node, tx, &sess).await {
                            tracing::error!(error = %e, "cannot subscribe to the interlock");
                        }
                    });
                }
                {
                    // Learn the interlock now; the subscription keeps it current afterwards.
                    let sess = session.clone();
                    let node = s.interlock_node.clone();
                    let tx = shared.interlock.clone();
                    tokio::spawn(async move {
                        let Ok(id) = parse_node(&node) else { return };
                        match sess
                            .read(&[ReadValueId::from(id)], TimestampsToReturn::Neither, 0.0)
                            .await
                        {
                            Ok(v) => {
                                if let Some(Variant::Boolean(b)) =
                                    v.first().and_then(|d| d.value.clone())
                                {
                                    tx.send_if_modified(|cur| {
                                        let changed = cur.is_none();
                                        if changed {
                                            *cur = Some(b);
                                        }
                                        changed
                                    });
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot read the interlock"),
                        }
                    });
                }
                shared.session.send_replace(Some(session.clone()));
                shared.last_error.send_replace(None);
                shared.connected.send_replace(true);
            }
            Some(Ok(_)) => {}
        }
    }
    set_down(shared);
}

impl DcsWriter for OpcuaDcs {
    async fn read(&self, nodes: &[String]) -> Result<Vec<Option<Value>>, DcsError> {
        let session = self.session()?;
        let ids = nodes
            .iter()
            .map(|n| parse_node(n).map(ReadValueId::from))
            .collect::<Result<Vec<_>, _>>()?;
        let values = session
            .read(&ids, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| DcsError::Request(e.to_string()))?;
        Ok(values
            .iter()
            .map(|dv| {
                if dv.status.is_some_and(|s| !s.is_good()) {
                    return None;
                }
                dv.value.as_ref().and_then(from_variant)
            })
            .collect())
    }

    async fn write(&self, writes: &[(String, Value)]) -> Result<Vec<Result<(), String>>, DcsError> {
        let session = self.session()?;
        let values = writes
            .iter()
            .map(|(n, v)| {
                Ok(WriteValue {
                    node_id: parse_node(n)?,
                    attribute_id: AttributeId::Value as u32,
                    index_range: NumericRange::None,
                    value: DataValue {
                        value: Some(to_variant(v)),
                        ..Default::default()
                    },
                })
            })
            .collect::<Result<Vec<_>, DcsError>>()?;
        let results = session
            .write(&values)
            .await
            .map_err(|e| DcsError::Request(e.to_string()))?;
        Ok(results
            .into_iter()
            .map(|s| {
                if s.is_good() {
                    Ok(())
                } else {
                    Err(s.to_string())
                }
            })
            .collect())
    }

    fn interlock(&self) -> watch::Receiver<Option<bool>> {
        self.interlock.clone()
    }

    fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
}
