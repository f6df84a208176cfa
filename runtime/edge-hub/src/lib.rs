//! The edge hub: the MQTT endpoint modules connect to, the route engine, durable
//! store-and-forward queues, module twins and direct methods.
//!
//! # Why the hub serves MQTT itself instead of embedding rumqttd
//! The hub must own authentication per module (SAS tokens checked against the identity
//! registry, CONNACK 5 on refusal), topic ACLs per module, routing, and durable per-endpoint
//! queues whose entries leave only when the receiving module acknowledged them. rumqttd
//! (0.20) was considered and not embedded:
//! - its router keeps its own in-memory segments per connection, so a message would sit in a
//!   second queue between the publisher's PUBACK and our durable store: a PUBACK could be
//!   sent before the message is durable, and a subscriber's acknowledgement would release
//!   rumqttd's copy, not our store entry;
//! - it has no hook that matches IoT Hub semantics for per-module SAS authentication and
//!   topic ACLs (connection properties forced from the identity, twin and method topics
//!   answered by the hub, twin responses delivered without a subscription).
//!
//! So, like Azure's edgeHub with its own MQTT head, the hub speaks MQTT 3.1.1 on the
//! maintained codec of `rumqttc::mqttbytes::v4` (packet framing and encoding only), and
//! everything between a PUBLISH and a PUBACK is ours.
//!
//! # The path of a message
//! 1. A module publishes to `devices/{d}/modules/{m}/messages/events/{bag}` (`session`).
//!    The hub checks the topic ACL, decodes the property bag, overwrites
//!    `$connectionDeviceId`/`$connectionModuleId` from the authenticated identity and sets
//!    `$enqueuedTime`.
//! 2. The single ingest task (`ingest`) routes a batch with the current router, appends one
//!    record per target queue, syncs the store once for the batch and then sends the PUBACKs
//!    (group commit).
//! 3. Each connection's delivery task (`delivery`) publishes queued entries to the module
//!    input at QoS 1, highest priority first, `max_inflight` at a time; the module's PUBACK
//!    acks the entry in the store. A module that comes back gets its backlog in order.
//! 4. Entries for `$upstream` wait for the upstream link ([`UpstreamQueue`]); a sweep drops
//!    expired entries every second.
//!
//! # Layout
//! - [`config`]: the hub's configuration, [`HubConfig`].
//! - `session`: one MQTT connection (CONNECT/auth, read loop, write task); `auth`: CONNECT
//!   checks; `registry`: which module is connected where, persistent subscriptions.
//! - `ingest`: routing and group commit; `store`: the store thread; `delivery`: to modules.
//! - `twin`: twins (JSON merge patches from `edge_core::json`); `methods`: pending direct methods.
//! - `tls`: the TLS listener for unmodified Azure SDK modules ([`Hub::listen_tls`]); it leads
//!   to the same sessions as the plain listener. `unix`: the Unix-socket listener for the
//!   modules edged starts ([`Hub::listen_unix`]), to the same sessions too.
//! - `metrics`, [`stats`], [`upstream`].
//!
//! # Deployments
//! [`Hub::apply_deployment`] swaps the router atomically while messages keep flowing; queued
//! messages stay where they are. Queues of endpoints that no route targets any more (for
//! example a removed module's inputs) are kept until their entries expire: a module may come
//! back in the next deployment, and the TTL bounds what is kept. The quota
//! (`storeLimits.maxSizeBytes`) is enforced by the hub on top of the store's own limit.
//!
//! # Shutdown
//! When the cancellation token fires the hub stops accepting, closes every connection, lets
//! the ingest task commit what it holds, syncs the store a last time and ends its tasks (all
//! on the caller's `TaskTracker`).

pub mod config;
pub mod stats;
pub mod upstream;

mod auth;
mod delivery;
mod ingest;
mod methods;
mod metrics;
mod registry;
mod session;
mod store;
mod tls;
mod twin;
mod unix;

pub use config::HubConfig;
pub use methods::MethodError;
pub use stats::{HubStats, QueueStats};
pub use upstream::{UpstreamMessage, UpstreamQueue};

use crate::metrics::{DropReason, Metrics};
use crate::registry::Registry;
use crate::store::StoreClient;
use crate::twin::{TwinError, Twins};
use edge_core::ModuleId;
use edge_core::identity::IdentityRegistry;
use edge_manifest::{RouteSpec, StoreAndForward};
use edge_route::{NamedRoute, Router};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default time to live of queued messages before a deployment sets one (Azure's 7200 s).
const DEFAULT_TTL: Duration = Duration::from_secs(7200);

/// How often expired entries are dropped and the queue gauges refreshed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long a listener waits after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Capacity of the channel from connections to the ingest task.
const INGEST_QUEUE: usize = 4096;

/// Errors of the hub's API.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A data directory could not be created or read.
    #[error("cannot prepare {}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The durable store did not open.
    #[error("cannot open the store in {}", path.display())]
    Store {
        /// The store directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: edge_store::StoreError,
    },
    /// Reading the store failed.
    #[error("reading the store failed: {reason}")]
    StoreRead {
        /// The error chain as text.
        reason: String,
    },
    /// The listener did not bind.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The Unix-socket listener did not bind.
    #[error("cannot listen on the Unix socket {}", path.display())]
    BindUnix {
        /// The socket's path.
        path: PathBuf,
        /// The OS error, or why the path was refused.
        #[source]
        source: std::io::Error,
    },
    /// The metrics could not be registered (already registered in this registry?).
    #[error("cannot register the hub's metrics")]
    Metrics(#[source] prometheus::Error),
    /// A route does not parse.
    #[error("route `{name}` does not parse")]
    RouteParse {
        /// Route name.
        name: String,
        /// The parse error, with its position.
        #[source]
        source: edge_route::ParseError,
    },
    /// A route does not compile.
    #[error("route `{name}` does not compile")]
    RouteCompile {
        /// Route name.
        name: String,
        /// The compile error.
        #[source]
        source: edge_route::CompileError,
    },
    /// A desired properties document is not a JSON object.
    #[error("desired properties of module `{module}` are not a JSON object")]
    DesiredNotObject {
        /// The module.
        module: String,
    },
    /// A reported patch is not a JSON object.
    #[error("reported patch for `{module}` is not a JSON object")]
    PatchNotObject {
        /// The twin's id.
        module: String,
    },
    /// The twin id is not a valid module id.
    #[error("`{id}` is not a valid twin id")]
    InvalidId {
        /// The id given.
        id: String,
        /// Why.
        #[source]
        source: edge_core::IdError,
    },
    /// A twin could not be written.
    #[error("cannot store the twin of `{module}`")]
    Twin {
        /// The twin's id.
        module: String,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
    /// The `unmatched` sink is not a route sink.
    #[error("hub.unmatched `{value}` is not a route sink")]
    UnmatchedSink {
        /// The value configured.
        value: String,
        /// The parse error (its position counts from the start of the value).
        #[source]
        source: edge_route::ParseError,
    },
    /// The hub has shut down.
    #[error("the hub has shut down")]
    Closed,
}

/// The hub error for a failed twin update of `module`.
fn twin_error(module: &str, e: TwinError) -> HubError {
    match e {
        TwinError::NotObject => HubError::PatchNotObject {
            module: module.to_owned(),
        },
        TwinError::Io { source, .. } => HubError::Twin {
            module: module.to_owned(),
            source,
        },
    }
}

/// Parses the `unmatched` setting into an endpoint name (`module/<m>/inputs/<i>`, `$upstream`).
fn unmatched_endpoint(value: &str) -> Result<String, HubError> {
    const PREFIX: &str = "FROM /messages/* INTO ";
    edge_route::parse(&format!("{PREFIX}{value}"))
        .map(|r| ingest::endpoint_of(&r.sink))
        .map_err(|mut source| {
            source.column = source.column.saturating_sub(PREFIX.len());
            HubError::UnmatchedSink {
                value: value.to_owned(),
                source,
            }
        })
}

/// The routing in force: router plus the global time to live.
pub(crate) struct Routing {
    pub router: Router,
    pub default_ttl: Duration,
}

/// Shared state of a running hub.
pub(crate) struct Inner {
    pub config: HubConfig,
    pub identities: IdentityRegistry,
    pub metrics: Metrics,
    routing: RwLock<Arc<Routing>>,
    pub registry: Registry,
    pub twins: Twins,
    pub methods: methods::Pending,
    pub store: StoreClient,
    pub ingest: mpsc::Sender<ingest::IngestItem>,
    pub upstream_wake: Notify,
    /// The endpoint for messages no route selects (`HubConfig::unmatched`), if any.
    pub unmatched: Option<String>,
    pub local_addr: SocketAddr,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    epoch: tokio::time::Instant,
}

impl Inner {
    /// The routing in force (read once per batch).
    pub(crate) fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Milliseconds since the hub started, plus one (0 means "never" in heartbeats).
    pub(crate) fn clock_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

/// Wall-clock unix milliseconds (queue expiry survives restarts, so it is wall time).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An error and its sources on one line (for logs).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// A running hub; a cheap clonable handle.
///
/// # Invariants
/// All clones share one store thread, one ingest task and one router; the handle stays
/// usable after shutdown, but calls that need the store or a connection then fail with
/// [`HubError::Closed`] / [`MethodError::NotConnected`].
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("local_addr", &self.inner.local_addr)
            .field("device_id", &self.inner.config.device_id)
            .finish_non_exhaustive()
    }
}

fn compile_routes(specs: &[RouteSpec]) -> Result<Router, HubError> {
    let mut named = Vec::with_capacity(specs.len());
    for spec in specs {
        let route = edge_route::parse(&spec.text).map_err(|source| HubError::RouteParse {
            name: spec.name.clone(),
            source,
        })?;
        named.push(NamedRoute {
            name: spec.name.clone(),
            route,
            priority: spec.priority,
            time_to_live: spec.time_to_live,
        });
    }
    Router::compile(named).map_err(|source| HubError::RouteCompile {
        name: source.route.clone(),
        source,
    })
}

impl Hub {
    /// Opens (and recovers) the store under `config.data_dir`, loads twins and sessions,
    /// binds the listener and spawns the hub's tasks on `tracker`. The hub runs until `cancel`
    /// fires. It starts with no routes; see [`Hub::apply_deployment`].
    ///
    /// # Errors
    /// [`HubError::DataDir`], [`HubError::Store`], [`HubError::Metrics`], [`HubError::Bind`].
    pub async fn start(
        config: HubConfig,
        identities: IdentityRegistry,
        metrics: &prometheus::Registry,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Hub, HubError> {
        let data = config.data_dir.clone();
        let dir_err = |path: PathBuf| move |source| HubError::DataDir { path, source };
        let store_dir = data.join("store");
        std::fs::create_dir_all(&store_dir).map_err(dir_err(store_dir.clone()))?;
        let twins_dir = data.join("twins");
        let twins = Twins::load(&twins_dir).map_err(dir_err(twins_dir))?;
        let sessions_dir = data.join("sessions");
        let registry = Registry::load(&sessions_dir).map_err(dir_err(sessions_dir))?;
        let unmatched = config
            .unmatched
            .as_deref()
            .map(unmatched_endpoint)
            .transpose()?;
        let metrics = Metrics::register(metrics).map_err(HubError::Metrics)?;
        let router = compile_routes(&[])?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| HubError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: config.listen,
            source,
        })?;
        let (store, report) = store::open(store_dir.clone(), config.store, tracker)
            .await
            .map_err(|source| HubError::Store {
                path: store_dir,
                source,
            })?;
        tracing::info!(
            entries = report.entries,
            bytes = report.bytes,
            truncated_bytes = report.truncated_bytes,
            skipped_bytes = report.skipped_bytes,
            "Store recovered."
        );
        let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_QUEUE);
        let inner = Arc::new(Inner {
            config,
            identities,
            metrics,
            routing: RwLock::new(Arc::new(Routing {
                router,
                default_ttl: DEFAULT_TTL,
            })),
            registry,
            twins,
            methods: methods::Pending::default(),
            store,
            ingest: ingest_tx,
            upstream_wake: Notify::new(),
            unmatched,
            local_addr,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
            epoch: tokio::time::Instant::now(),
        });
        let ingest = tracker.spawn(ingest::run(Arc::clone(&inner), ingest_rx));
        tracker.spawn(accept_loop(Arc::clone(&inner), listener));
        tracker.spawn(sweep_loop(Arc::clone(&inner)));
        let closing = Arc::clone(&inner);
        tracker.spawn(async move {
            closing.cancel.cancelled().await;
            closing.registry.close_all();
            let _ = ingest.await;
            closing.store.shutdown().await;
            tracing::info!("Hub stopped.");
        });
        tracing::info!(addr = %local_addr, "Hub listening.");
        Ok(Hub { inner })
    }

    /// The address the listener is bound to (useful with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Applies the hub part of a deployment: routes, store-and-forward settings and the
    /// modules' desired properties. Every route is parsed and compiled first; on any error
    /// nothing changes. Then the router is swapped atomically (no restart; queued messages
    /// stay), and each module whose desired document changed gets a new desired `$version`,
    /// persisted, and a desired-properties PATCH (a JSON merge patch with `$version` in the
    /// body) if it is connected and subscribed to desired patches.
    ///
    /// # Errors
    /// [`HubError::RouteParse`] / [`HubError::RouteCompile`] naming the route and
    /// [`HubError::DesiredNotObject`], all before anything changed; [`HubError::Twin`] when a
    /// twin cannot be written (the router is already swapped then).
    pub fn apply_deployment(
        &self,
        routes: &[RouteSpec],
        saf: &StoreAndForward,
        twins: &BTreeMap<ModuleId, Value>,
    ) -> Result<(), HubError> {
        let router = compile_routes(routes)?;
        let empty = Map::new();
        let mut desired = Vec::with_capacity(twins.len());
        for (id, doc) in twins {
            match doc {
                Value::Object(m) => desired.push((id, m)),
                Value::Null => desired.push((id, &empty)),
                _ => {
                    return Err(HubError::DesiredNotObject {
                        module: id.to_string(),
                    });
                }
            }
        }
        *self
            .inner
            .routing
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Routing {
            router,
            default_ttl: saf.time_to_live,
        });
        self.inner.store.set_quota(saf.max_size_bytes);
        tracing::info!(routes = routes.len(), ttl = ?saf.time_to_live, "Hub routes applied.");
        for (id, doc) in desired {
            match self.inner.twins.set_desired(id.as_str(), doc) {
                Ok(Some(change)) => self.send_desired(id.as_str(), change),
                Ok(None) => {}
                Err(TwinError::Io { source, .. }) => {
                    return Err(HubError::Twin {
                        module: id.to_string(),
                        source,
                    });
                }
                Err(TwinError::NotObject) => {
                    return Err(HubError::DesiredNotObject {
                        module: id.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    fn send_desired(&self, module: &str, change: twin::DesiredChange) {
        let Some((conn, subs)) = self.inner.registry.conn(module) else {
            return;
        };
        if !subs.desired {
            return;
        }
        let body = serde_json::to_vec(&change.patch).unwrap_or_default();
        let publish = Publish::from_bytes(
            edge_core::topic::desired_patch_topic(change.version),
            QoS::AtMostOnce,
            body.into(),
        );
        if conn.out.try_send(Packet::Publish(publish)).is_err() {
            // The module's write queue is full or closing: close the connection; the SDK
            // reconnects and its twin GET brings it the new desired version.
            tracing::warn!(module = %module, "Cannot queue the desired patch; closing the connection.");
            conn.cancel.cancel();
        } else {
            tracing::debug!(module = %module, version = change.version, "Desired patch sent.");
        }
    }

    /// When the last packet of any kind (PINGREQ included) came from `module`'s connection.
    #[must_use]
    pub fn last_heartbeat(&self, module: &str) -> Option<std::time::Instant> {
        let ms = self.inner.registry.last_heartbeat_ms(module)?;
        Some(self.inner.epoch.into_std() + Duration::from_millis(ms.saturating_sub(1)))
    }

    /// Calls direct method `method` of `module` with `payload` and waits up to `timeout` for
    /// its answer: `(status, payload)`, an empty answer payload giving `null`.
    ///
    /// # Errors
    /// [`MethodError::NotConnected`], [`MethodError::NotSubscribed`], [`MethodError::Timeout`],
    /// [`MethodError::InvalidResponse`].
    pub async fn invoke(
        &self,
        module: &str,
        method: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<(i32, Value), MethodError> {
        let Some((conn, subs)) = self.inner.registry.conn(module) else {
            return Err(MethodError::NotConnected {
                module: module.to_owned(),
            });
        };
        if !subs.methods {
            return Err(MethodError::NotSubscribed {
                module: module.to_owned(),
            });
        }
        let (rid, rx) = self.inner.methods.register(module);
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        let publish = Publish::from_bytes(
            edge_core::topic::method_request_topic(method, &rid),
            QoS::AtMostOnce,
            body.into(),
        );
        let call = async {
            conn.out.send(Packet::Publish(publish)).await.map_err(|_| {
                MethodError::NotConnected {
                    module: module.to_owned(),
                }
            })?;
            rx.await.map_err(|_| MethodError::Closed)
        };
        let answer = tokio::time::timeout(timeout, call).await;
        let (status, body) = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.inner.methods.cancel(&rid);
                return Err(e);
            }
            Err(_) => {
                self.inner.methods.cancel(&rid);
                return Err(MethodError::Timeout {
                    module: module.to_owned(),
                    method: method.to_owned(),
                    timeout,
                });
            }
        };
        let value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|source| MethodError::InvalidResponse {
                module: module.to_owned(),
                method: method.to_owned(),
                source,
            })?
        };
        Ok((status, value))
    }

    /// The twin of `module` (`{"desired": {…, "$version": n}, "reported": {…, "$version": m}}`),
    /// if it exists.
    #[must_use]
    pub fn twin(&self, module: &str) -> Option<Value> {
        self.inner.twins.get(module)
    }

    /// Merges `patch` (a JSON merge patch) into the reported properties of twin `module`
    /// (which need not be a connected module: `$edgeAgent`, `$edgeHub`) and returns the new
    /// reported version.
    ///
    /// # Errors
    /// [`HubError::InvalidId`], [`HubError::PatchNotObject`], [`HubError::Twin`].
    pub fn patch_reported(&self, module: &str, patch: Value) -> Result<u64, HubError> {
        ModuleId::new(module).map_err(|source| HubError::InvalidId {
            id: module.to_owned(),
            source,
        })?;
        self.inner
            .twins
            .patch_reported(module, &patch)
            .map_err(|e| twin_error(module, e))
    }

    /// Merges `patch` (a JSON merge patch, as a backend sends) into the desired properties of
    /// `module`'s twin and sends the change, with its new `$version`, to the module if it is
    /// connected and subscribed (otherwise it gets it with its next twin GET). Returns the new
    /// desired version (unchanged when the patch changed nothing). The deployment is not
    /// touched: the next deployment that changes this module's desired properties sets them
    /// again, as a deployment does in Azure IoT Edge.
    ///
    /// # Errors
    /// [`HubError::InvalidId`], [`HubError::PatchNotObject`], [`HubError::Twin`].
    pub fn patch_desired(&self, module: &str, patch: &Value) -> Result<u64, HubError> {
        ModuleId::new(module).map_err(|source| HubError::InvalidId {
            id: module.to_owned(),
            source,
        })?;
        let change = self
            .inner
            .twins
            .patch_desired(module, patch)
            .map_err(|e| twin_error(module, e))?;
        match change {
            Some(change) => {
                let version = change.version;
                self.send_desired(module, change);
                Ok(version)
            }
            None => Ok(self
                .twin(module)
                .and_then(|t| t["desired"]["$version"].as_u64())
                .unwrap_or(0)),
        }
    }

    /// The `$upstream` queue, for the upstream link (see [`upstream`]).
    #[must_use]
    pub fn upstream_queue(&self) -> UpstreamQueue {
        UpstreamQueue::new(Arc::clone(&self.inner))
    }

    /// Sets the queue gauges from the store now (edged calls it before each `/metrics`
    /// scrape; the sweep also does, once a second).
    pub fn refresh_queue_gauges(&self) {
        update_queue_gauges(&self.inner, &self.inner.store.snapshot());
    }

    /// Queues, connected modules and counters now (queues as of the store thread's last
    /// command). Also refreshes the queue gauges.
    #[must_use]
    pub fn stats(&self) -> HubStats {
        let snapshot = self.inner.store.snapshot();
        update_queue_gauges(&self.inner, &snapshot);
        let now = now_ms();
        let queues = snapshot
            .queues
            .iter()
            .map(|(k, (len, oldest))| QueueStats {
                endpoint: k.endpoint.clone(),
                priority: k.priority,
                len: *len,
                oldest_age: oldest.map(|t| Duration::from_millis(now.saturating_sub(t))),
            })
            .collect();
        let t = &self.inner.metrics.totals;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        HubStats {
            queues,
            store_bytes: snapshot.total_bytes,
            connected_modules: self.inner.registry.connected(),
            messages_received: load(&t.received),
            messages_sent: load(&t.sent),
            auth_refused: load(&t.auth_refused),
            acl_refused: load(&t.acl_refused),
            dead_letters: load(&t.dead_letters),
            unmatched: load(&t.no_route),
            ttl_expired: load(&t.ttl_expired),
            store_refused: load(&t.refused),
            routed: t
                .routed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

fn update_queue_gauges(inner: &Inner, snapshot: &store::Snapshot) {
    let now = now_ms();
    // Every endpoint a route (or the unmatched setting) can fill has its series from the
    // start, at zero, so that a dashboard or an alert rule sees the queue before it grows.
    let mut per_endpoint: BTreeMap<String, (u64, f64)> = inner
        .routing()
        .router
        .sinks()
        .iter()
        .map(ingest::endpoint_of)
        .chain(inner.unmatched.clone())
        .map(|e| (e, (0, 0.0)))
        .collect();
    for (k, (len, oldest)) in &snapshot.queues {
        let age = oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
        let e = per_endpoint.entry(k.endpoint.clone()).or_default();
        e.0 += len;
        e.1 = e.1.max(age);
    }
    inner
        .metrics
        .set_queues(&per_endpoint, snapshot.total_bytes);
}

async fn accept_loop(hub: Arc<Inner>, listener: TcpListener) {
    accept_until_cancelled(
        &hub,
        "tcp",
        || listener.accept(),
        |(sock, peer)| {
            let _ = sock.set_nodelay(true);
            hub.tracker
                .spawn(session::serve(Arc::clone(&hub), sock, peer.to_string()));
        },
    )
    .await;
}

/// The accept loop of every listener (TCP, TLS, Unix socket): hands each accepted connection
/// to `serve` until the hub is cancelled. A failed accept (out of file descriptors and the
/// like) is logged and waited out briefly instead of spinning.
pub(crate) async fn accept_until_cancelled<C, F>(
    hub: &Inner,
    listener: &str,
    mut accept: impl FnMut() -> F,
    mut serve: impl FnMut(C),
) where
    F: std::future::Future<Output = std::io::Result<C>>,
{
    loop {
        let accepted = tokio::select! {
            () = hub.cancel.cancelled() => break,
            r = accept() => r,
        };
        match accepted {
            Ok(conn) => serve(conn),
            Err(error) => {
                tracing::warn!(%error, listener, "Accept failed.");
                tokio::select! {
                    () = hub.cancel.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    tracing::debug!(listener, "Listener closed.");
}

async fn sweep_loop(hub: Arc<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = hub.cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(expired) = hub.store.expire(now_ms()).await else {
            break;
        };
        for (key, n) in &expired {
            tracing::info!(endpoint = %key.endpoint, priority = key.priority, dropped = n, "Messages expired in their queue.");
        }
        hub.metrics
            .dropped(DropReason::TtlExpiry, expired.iter().map(|(_, n)| n).sum());
        update_queue_gauges(&hub, &hub.store.snapshot());
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A hub for unit tests that drive connections without sockets.

    use super::*;
    use edge_core::DeviceId;

    /// Starts a hub in `dir` (listener on 127.0.0.1:0) and returns its shared state.
    pub(crate) async fn hub(
        dir: &std::path::Path,
        ids: IdentityRegistry,
    ) -> (Arc<Inner>, CancellationToken, TaskTracker) {
        let mut config = HubConfig::new(DeviceId::new("dev").unwrap(), "hub.test", dir);
        config.listen = "127.0.0.1:0".parse().unwrap();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let hub = Hub::start(
            config,
            ids,
            &prometheus::Registry::new(),
            cancel.clone(),
            &tracker,
        )
        .await
        .unwrap();
        (hub.inner, cancel, tracker)
    }

    /// Waits (bounded) until `module` has no connection in the registry.
    pub(crate) async fn eventually_none(hub: &Inner, module: &str) {
        for _ in 0..1000 {
            if hub.registry.conn(module).is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{module} is still connected");
    }
}
