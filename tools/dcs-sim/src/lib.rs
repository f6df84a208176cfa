//! A simulated DCS: an OPC UA server (async-opcua) exposing the Tennessee Eastman Process tags,
//! setpoints with engineering ranges, advisory nodes for model results, an operator-controlled
//! remote-enable interlock and a write log. Used by the demo (`dcs-sim` binary) and by tests
//! (start a [`DcsServer`] in-process on port 0).
//!
//! Address space (namespace [`NAMESPACE_URI`], normally index 2, string node ids):
//! - `TEP.XMEAS(1..41)`: Double, read-only measurements.
//! - `TEP.XMV(1..11).SP`: Double, writable setpoints; a write outside the engineering range
//!   (0–100 %, property `EURange`) is refused with `BadOutOfRange`.
//! - `TEP.XMV(1..11).PV`: Double, read-only valve positions (replayed).
//!
//!   A replay ([`replay::run`], `dcs-sim --replay FILE`) sets one TEP sample at a time into
//!   these 52 variables: column `n` ≤ 41 → `ns=2;s=TEP.XMEAS(n)`, column 41 + `n` →
//!   `ns=2;s=TEP.XMV(n).PV`, all with the same timestamp ([`DcsServer::set_sample`]).
//! - `Advisory.{Alarm, T2, Q, T2Limit, QLimit, Contributors, ModelVersion, LastUpdate}`: writable.
//! - `Interlock.RemoteEnable`: Boolean, writable by the operator (any client) or the handle.
//! - `WriteLog.{Count, Last}`: every client write is logged (see [`DcsServer::write_log`]).
//!
//! Endpoints: security policy None, and Basic256Sha256 Sign & Encrypt with a self-signed
//! certificate created at first start in the PKI directory. Client certificates are trusted
//! automatically (a simulator, not a plant).
//!
//! Layout: `tags` (TEP variable tables), `nodes` (the node manager: address space and writes),
//! `replay` (TEP data files into the measurement nodes), this file (server lifecycle, handle).

mod nodes;
pub mod replay;
pub mod tags;

use nodes::{DcsNodeManager, DcsNodes};
use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::NodeType;
use opcua::server::node_manager::memory::InMemoryNodeManagerBuilder;
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle, ServerUserToken};
use opcua::types::{
    AttributeId, DataEncoding, DataValue, MessageSecurityMode, NodeId, NumericRange,
    TimestampsToReturn, Variant,
};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The namespace URI of the simulator's nodes.
pub const NAMESPACE_URI: &str = "urn:edge-runtime:dcs-sim";

/// How to start the simulator.
#[derive(Debug, Clone)]
pub struct DcsConfig {
    /// Address to listen on (default `127.0.0.1`).
    pub host: String,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// PKI directory (own certificate, private key, trusted/rejected client certificates).
    pub pki_dir: PathBuf,
    /// Initial state of `Interlock.RemoteEnable`.
    pub remote_enable: bool,
    /// User names and passwords the server accepts. Empty: anonymous sessions only; otherwise
    /// a login is required on every endpoint and anonymous sessions are refused.
    pub users: Vec<(String, String)>,
}

impl DcsConfig {
    /// Defaults: `127.0.0.1`, the given port, the given PKI directory, interlock off,
    /// anonymous sessions.
    #[must_use]
    pub fn new(port: u16, pki_dir: impl Into<PathBuf>) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            pki_dir: pki_dir.into(),
            remote_enable: false,
            users: Vec::new(),
        }
    }
}

/// The simulator could not start or a node update failed.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The OPC UA server could not be built (configuration, certificates).
    #[error("cannot build the OPC UA server: {0}")]
    Build(String),
    /// The node manager is missing (a bug).
    #[error("the simulator's node manager is not registered")]
    NoNodeManager,
    /// Updating a node failed.
    #[error("cannot update node {node}: {status}")]
    Update {
        /// The node.
        node: String,
        /// The OPC UA status.
        status: String,
    },
}

fn app_builder() -> ServerBuilder {
    ServerBuilder::new()
        .application_name("dcs-sim")
        .application_uri("urn:edge-runtime:dcs-sim:server")
        .product_uri("urn:edge-runtime:dcs-sim")
}

/// Creates the simulator's certificate and key in `pki_dir` (`own/cert.der`,
/// `private/private.pem`) unless they exist. [`DcsServer::start`] does the same on first start;
/// tests call this once and copy the files, as key generation is slow in debug builds.
///
/// # Errors
/// [`DcsError::Build`] when the files cannot be created.
pub fn provision_pki(pki_dir: &std::path::Path) -> Result<(), DcsError> {
    let cert = pki_dir.join("own/cert.der");
    let key = pki_dir.join("private/private.pem");
    if cert.exists() && key.exists() {
        return Ok(());
    }
    for d in ["own", "private", "trusted", "rejected"] {
        std::fs::create_dir_all(pki_dir.join(d)).map_err(|e| DcsError::Build(e.to_string()))?;
    }
    let desc = opcua::core::config::Config::application_description(app_builder().config());
    opcua::crypto::CertificateStore::create_certificate_and_key(&desc.into(), false, &cert, &key)
        .map(|_| ())
        .map_err(DcsError::Build)
}

/// One client write as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteRecord {
    /// Server time of the write (RFC 3339).
    pub time: String,
    /// The node id written (`ns=2;s=...`).
    pub node: String,
    /// The value the client asked for.
    pub requested: serde_json::Value,
    /// The value stored (differs from `requested` when tampered; null when refused).
    pub stored: serde_json::Value,
    /// Whether the tamper switch altered this write.
    pub tampered: bool,
    /// The OPC UA status returned to the client.
    pub status: String,
}

impl WriteRecord {
    /// [`WriteRecord::time`] as a `SystemTime`.
    #[must_use]
    pub fn server_time(&self) -> Option<std::time::SystemTime> {
        parse_time(&self.time)
    }
}

/// Reads a time as the simulator writes it (an OPC UA `DateTime` shown in RFC 3339, with
/// `+00:00` for UTC): the write log's `time`, and a `DateTime` value in `requested`/`stored`.
#[must_use]
pub fn parse_time(s: &str) -> Option<std::time::SystemTime> {
    // chrono writes `+00:00`; humantime reads `Z`.
    humantime::parse_rfc3339_weak(&s.replace("+00:00", "Z")).ok()
}

/// State shared between the handle and the node manager.
///
/// # Invariants
/// `log` only grows; `tamper` is consumed by exactly one numeric write.
#[derive(Debug)]
pub(crate) struct SimState {
    tamper: Mutex<Option<f64>>,
    log: Mutex<Vec<WriteRecord>>,
    pub(crate) initial_remote_enable: bool,
}

impl SimState {
    pub(crate) fn take_tamper(&self) -> Option<f64> {
        self.tamper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Appends a record; returns the new count and the record as JSON.
    pub(crate) fn log(&self, r: WriteRecord) -> (u32, String) {
        let json = serde_json::to_string(&r).unwrap_or_default();
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.push(r);
        (u32::try_from(log.len()).unwrap_or(u32::MAX), json)
    }
}

/// A running simulator.
///
/// # Invariants
/// `ns` is the index of [`NAMESPACE_URI`] in this server; `endpoint` names the bound port.
pub struct DcsServer {
    handle: ServerHandle,
    nm: Arc<DcsNodeManager>,
    state: Arc<SimState>,
    endpoint: String,
    port: u16,
    ns: u16,
    task: JoinHandle<Result<(), String>>,
}

impl std::fmt::Debug for DcsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcsServer")
            .field("endpoint", &self.endpoint)
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl DcsServer {
    /// Starts the server on the current tokio runtime.
    ///
    /// # Errors
    /// [`DcsError::Bind`] when the port is taken, [`DcsError::Build`] when the server cannot be
    /// configured (e.g. the PKI directory cannot be written).
    pub async fn start(cfg: DcsConfig) -> Result<Self, DcsError> {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| DcsError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| DcsError::Bind { addr, source })?
            .port();
        let endpoint = format!("opc.tcp://{}:{port}/", cfg.host);
        let state = Arc::new(SimState {
            tamper: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            initial_remote_enable: cfg.remote_enable,
        });
        let st = state.clone();
        let nm_builder = InMemoryNodeManagerBuilder::new(
            move |ctx: opcua::server::node_manager::ServerContext,
                  space: &mut opcua::server::address_space::AddressSpace| {
                let ns =
                    opcua::server::address_space::add_namespaces(&ctx, space, &[NAMESPACE_URI])[0];
                DcsNodes::new(ns, st)
            },
        );
        let user_ids: Vec<String> = (0..cfg.users.len()).map(|i| format!("user{i}")).collect();
        let tokens: Vec<&str> = if user_ids.is_empty() {
            vec![ANONYMOUS_USER_TOKEN_ID]
        } else {
            user_ids.iter().map(String::as_str).collect()
        };
        let mut builder = app_builder();
        for (id, (user, pass)) in user_ids.iter().zip(&cfg.users) {
            builder = builder.add_user_token(id, ServerUserToken::user_pass(user, pass));
        }
        let (server, handle) = builder
            .create_sample_keypair(true)
            .pki_dir(&cfg.pki_dir)
            .trust_client_certs(true)
            .host(cfg.host.clone())
            .port(port)
            .discovery_urls(vec![endpoint.clone()])
            .add_endpoint(
                "none",
                (
                    "/",
                    SecurityPolicy::None,
                    MessageSecurityMode::None,
                    tokens.as_slice(),
                ),
            )
            .add_endpoint(
                "basic256sha256_sign_encrypt",
                (
                    "/",
                    SecurityPolicy::Basic256Sha256,
                    MessageSecurityMode::SignAndEncrypt,
                    tokens.as_slice(),
                ),
            )
            .with_node_manager(nm_builder)
            .build()
            .map_err(DcsError::Build)?;
        let nm = handle
            .node_managers()
            .get_of_type::<DcsNodeManager>()
            .ok_or(DcsError::NoNodeManager)?;
        let ns = handle
            .get_namespace_index(NAMESPACE_URI)
            .ok_or(DcsError::NoNodeManager)?;
        let task = tokio::spawn(server.run_with(listener));
        // The address space is populated by the server task; wait for it so that the handle
        // works as soon as `start` returns.
        let probe = NodeId::new(ns, tags::ids::WRITE_LOG_LAST.to_owned());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while nm.address_space().read().find(&probe).is_none() {
            if task.is_finished() || tokio::time::Instant::now() > deadline {
                return Err(DcsError::Build("the server did not initialise".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tracing::info!(%endpoint, ns, "dcs-sim listening");
        Ok(Self {
            handle,
            nm,
            state,
            endpoint,
            port,
            ns,
            task,
        })
    }

    /// The endpoint URL, e.g. `opc.tcp://127.0.0.1:4840/`.
    #[must_use]
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint
    }

    /// The bound port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The namespace index of [`NAMESPACE_URI`].
    #[must_use]
    pub fn namespace_index(&self) -> u16 {
        self.ns
    }

    /// The node id of a string id in the simulator's namespace.
    #[must_use]
    pub fn node_id(&self, id: &str) -> NodeId {
        NodeId::new(self.ns, id.to_owned())
    }

    /// Sets `Interlock.RemoteEnable` (as the operator would), notifying subscribers.
    ///
    /// # Errors
    /// [`DcsError::Update`] if the node cannot be set.
    pub fn set_remote_enable(&self, on: bool) -> Result<(), DcsError> {
        self.set_values(&[(tags::ids::REMOTE_ENABLE.to_owned(), Variant::Boolean(on))])
    }

    /// The current value of `Interlock.RemoteEnable`.
    #[must_use]
    pub fn remote_enable(&self) -> bool {
        matches!(
            self.value(tags::ids::REMOTE_ENABLE),
            Some(Variant::Boolean(true))
        )
    }

    /// Arms the tamper switch: the next numeric (Double) client write is stored as
    /// `requested + delta`, so a read-back sees a different value.
    pub fn tamper_next_write(&self, delta: f64) {
        *self
            .state
            .tamper
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(delta);
    }

    /// All client writes so far, oldest first.
    #[must_use]
    pub fn write_log(&self) -> Vec<WriteRecord> {
        self.state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many client writes have been logged (cheap: no copy of the log).
    #[must_use]
    pub fn write_count(&self) -> usize {
        self.state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The current value of a node in the simulator's namespace, by string id.
    #[must_use]
    pub fn value(&self, id: &str) -> Option<Variant> {
        let space = self.nm.address_space().read();
        match space.find(&self.node_id(id))? {
            n @ NodeType::Variable(_) => n
                .as_node()
                .get_attribute(
                    TimestampsToReturn::Neither,
                    AttributeId::Value,
                    &NumericRange::None,
                    &DataEncoding::Binary,
                )
                .and_then(|dv| dv.value),
            _ => None,
        }
    }

    /// Sets node values by string id (server side, e.g. replayed measurements), notifying
    /// subscribers. All values get the same source and server timestamp (now), and subscribers
    /// are notified of them in one batch, so a client sees one sample, never half of one.
    ///
    /// # Errors
    /// [`DcsError::Update`] naming the first node that cannot be set.
    pub fn set_values(&self, values: &[(String, Variant)]) -> Result<(), DcsError> {
        let ids: Vec<NodeId> = values.iter().map(|(id, _)| self.node_id(id)).collect();
        let now = opcua::types::DateTime::now();
        let updates = ids
            .iter()
            .zip(values)
            .map(|(id, (_, v))| (id, None, DataValue::new_at(v.clone(), now)));
        self.nm
            .set_values(self.handle.subscriptions(), updates)
            .map_err(|status| DcsError::Update {
                node: values.first().map(|(id, _)| id.clone()).unwrap_or_default(),
                status: status.to_string(),
            })
    }

    /// Sets one replayed TEP sample: columns 1–41 go to `TEP.XMEAS(n)`, 42–52 to `TEP.XMV(n).PV`.
    ///
    /// # Errors
    /// [`DcsError::Update`] if a node cannot be set.
    pub fn set_sample(&self, row: &[f64]) -> Result<(), DcsError> {
        let values: Vec<(String, Variant)> = row
            .iter()
            .enumerate()
            .take(52)
            .map(|(i, x)| {
                let id = if i < 41 {
                    tags::xmeas_id(i + 1)
                } else {
                    tags::xmv_pv_id(i - 40)
                };
                (id, Variant::Double(*x))
            })
            .collect();
        self.set_values(&values)
    }

    /// Stops the server (closing client sessions) and waits until it has released the port.
    pub async fn stop(self) {
        self.handle.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "dcs-sim stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "dcs-sim task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_time;
    use opcua::types::DateTime;
    use std::time::{Duration, SystemTime};

    #[test]
    fn times_as_the_server_writes_them_parse_back() {
        let before = SystemTime::now() - Duration::from_secs(1);
        let t = parse_time(&DateTime::now().to_string()).expect("parses");
        assert!(t >= before && t <= SystemTime::now(), "{t:?}");
        assert_eq!(
            parse_time("2026-12-07T05:24:23.5+00:00"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_621_063_500))
        );
        assert_eq!(parse_time("not a time"), None);
    }
}
