//! A cloud backend on any MQTT broker: what `edgectl cloud` does.
//!
//! - **deploy**: the desired deployment of a device is one retained message on
//!   `edge/{d}/deployment`, `{"version": n, "manifest": {…}}`. The next version is the retained
//!   one plus 1 (or given). Retained, so a device that connects later, or reconnects, gets
//!   the latest desired state; versioned, so it applies each version once.
//! - **status**: every identity's reported document is retained on
//!   `edge/{d}/{identity}/twin/reported`; reading them is a subscribe.
//! - **invoke**: publish `edge/{d}/{m}/methods/POST/{name}/?$rid=R` and wait for
//!   `edge/{d}/{m}/methods/res/{status}/?$rid=R`.
//!
//! Reading retained state is made deterministic with a marker: the backend subscribes to
//! the state and to its own marker topic in one SUBSCRIBE, then publishes the marker; the
//! broker sends retained messages at subscription time, so when the marker comes back every
//! retained message has arrived.

use crate::topics::{self, FromDevice};
use crate::transport::{TlsError, TlsFiles, UrlError, mqtt_options, parse_url};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, Incoming, QoS, SubscribeFilter};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// How long connecting and each broker round trip may take.
const ROUND_TRIP: Duration = Duration::from_secs(10);

/// Errors of the backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The broker URL is unusable.
    #[error("invalid broker url")]
    Url(#[from] UrlError),
    /// The TLS files are unusable.
    #[error("invalid TLS settings")]
    Tls(#[from] TlsError),
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    /// The connection to the broker is gone.
    #[error("the broker connection is closed")]
    Closed,
    /// The broker did not answer in time.
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
    /// A version not above the current one was asked for.
    #[error("version {asked} is not above the current version {current}")]
    StaleVersion {
        /// The version asked for.
        asked: u64,
        /// The retained version.
        current: u64,
    },
    /// The device did not answer a method call in time.
    #[error("device `{device}` module `{module}` did not answer `{method}` within {timeout:?}")]
    MethodTimeout {
        /// The device.
        device: String,
        /// The module.
        module: String,
        /// The method.
        method: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// A message the backend received: topic and payload.
pub type Received = (String, Bytes);

/// What a device reports, read from its retained documents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceStatus {
    /// The retained desired deployment version, if any.
    pub desired_version: Option<u64>,
    /// Reported documents by identity (`$edgeAgent`, `$edgeHub`, modules).
    pub reported: BTreeMap<String, Value>,
}

impl DeviceStatus {
    /// The version of the last desired deployment the device handled.
    #[must_use]
    pub fn applied_version(&self) -> Option<u64> {
        self.reported
            .get("$edgeAgent")?
            .get("lastDesiredDeployment")?
            .get("version")?
            .as_u64()
    }

    /// A summary: desired version, the device's last deployment outcome, and per module its
    /// version and runtime status.
    #[must_use]
    pub fn summary(&self) -> Value {
        let agent = self.reported.get("$edgeAgent");
        let modules: serde_json::Map<String, Value> = agent
            .and_then(|a| a.get("modules"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            json!({
                                "version": v.get("version"),
                                "runtimeStatus": v.get("runtimeStatus"),
                                "statusDescription": v.get("statusDescription"),
                                "restartCount": v.get("restartCount"),
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "desiredVersion": self.desired_version,
            "lastDesiredDeployment": agent.and_then(|a| a.get("lastDesiredDeployment")),
            "lastDesiredStatus": agent.and_then(|a| a.get("lastDesiredStatus")),
            "modules": modules,
        })
    }
}

/// A backend connection to the broker.
///
/// # Invariants
/// One event-loop task per backend forwards every received publish to all receivers; the
/// task ends when the backend is dropped.
pub struct Backend {
    client: AsyncClient,
    filters: Arc<Mutex<BTreeSet<String>>>,
    tx: broadcast::Sender<Received>,
    task: JoinHandle<()>,
    client_id: String,
    counter: AtomicU64,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Connects to `url` (`mqtt://host:port`) as `client_id` with a clean session.
    ///
    /// # Errors
    /// [`BackendError::Url`], [`BackendError::Connect`], [`BackendError::Timeout`].
    pub async fn connect(
        url: &str,
        client_id: &str,
        credentials: Option<(String, String)>,
    ) -> Result<Self, BackendError> {
        Self::connect_with(url, client_id, credentials, true).await
    }

    /// As [`Backend::connect`], choosing the session: with `clean_session` false the broker
    /// keeps this backend's subscriptions and queues QoS 1 messages for it while it is away
    /// (and across broker restarts when the broker persists sessions).
    ///
    /// # Errors
    /// As [`Backend::connect`].
    pub async fn connect_with(
        url: &str,
        client_id: &str,
        credentials: Option<(String, String)>,
        clean_session: bool,
    ) -> Result<Self, BackendError> {
        Self::connect_tls(
            url,
            client_id,
            credentials,
            &TlsFiles::default(),
            clean_session,
        )
        .await
    }

    /// As [`Backend::connect_with`], to an `mqtts://` broker with `tls` (CA file, optional
    /// client certificate; see [`crate::transport`]).
    ///
    /// # Errors
    /// As [`Backend::connect`], and [`BackendError::Tls`] for unusable TLS files.
    pub async fn connect_tls(
        url: &str,
        client_id: &str,
        credentials: Option<(String, String)>,
        tls: &TlsFiles,
        clean_session: bool,
    ) -> Result<Self, BackendError> {
        let mut o = mqtt_options(&parse_url(url)?, client_id, tls)?;
        o.set_clean_session(clean_session)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(4 << 20, 4 << 20);
        if let Some((u, p)) = credentials {
            o.set_credentials(u, p);
        }
        let (client, mut el) = AsyncClient::new(o, 1024);
        let (tx, _) = broadcast::channel(1 << 16);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let fwd = tx.clone();
        let filters: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let resub = (client.clone(), Arc::clone(&filters));
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Ok(()));
                        } else {
                            // Reconnected: the broker may have lost our subscriptions.
                            let fs: Vec<String> = resub
                                .1
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .iter()
                                .cloned()
                                .collect();
                            if !fs.is_empty() {
                                let _ = resub.0.try_subscribe_many(
                                    fs.into_iter()
                                        .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce)),
                                );
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = fwd.send((p.topic, p.payload));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e.to_string()));
                            return;
                        }
                        tracing::warn!(error = %e, "Broker connection lost; reconnecting.");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        let backend = Self {
            client,
            filters,
            tx,
            task,
            client_id: client_id.to_owned(),
            counter: AtomicU64::new(0),
        };
        match tokio::time::timeout(ROUND_TRIP, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(backend),
            Ok(Ok(Err(e))) => Err(BackendError::Connect(e)),
            Ok(Err(_)) => Err(BackendError::Closed),
            Err(_) => Err(BackendError::Timeout(ROUND_TRIP)),
        }
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Subscribes to `filters` (QoS 1) and returns a receiver of everything received from now
    /// on (for all filters of this backend).
    ///
    /// # Errors
    /// [`BackendError::Closed`].
    pub async fn subscribe(
        &self,
        filters: &[String],
    ) -> Result<broadcast::Receiver<Received>, BackendError> {
        let rx = self.tx.subscribe();
        self.filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(filters.iter().cloned());
        self.client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
            )
            .await
            .map_err(|_| BackendError::Closed)?;
        Ok(rx)
    }

    /// Drops a subscription made with [`Backend::subscribe`].
    pub async fn unsubscribe(&self, filter: &str) {
        self.filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(filter);
        let _ = self.client.unsubscribe(filter.to_owned()).await;
    }

    /// Everything retained under `filter`, as it stands now.
    ///
    /// # Errors
    /// [`BackendError::Closed`], [`BackendError::Timeout`].
    pub async fn retained(&self, filter: &str) -> Result<Vec<Received>, BackendError> {
        let marker = format!(
            "{}/_backend/{}/sync/{}",
            topics::ROOT,
            self.client_id,
            self.next()
        );
        let mut rx = self.subscribe(&[filter.to_owned(), marker.clone()]).await?;
        self.client
            .publish(marker.clone(), QoS::AtLeastOnce, false, Vec::new())
            .await
            .map_err(|_| BackendError::Closed)?;
        let mut out = Vec::new();
        let collect = async {
            loop {
                match rx.recv().await {
                    Ok((t, _)) if t == marker => return Ok(()),
                    Ok(m) => out.push(m),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(BackendError::Closed),
                }
            }
        };
        tokio::time::timeout(ROUND_TRIP, collect)
            .await
            .map_err(|_| BackendError::Timeout(ROUND_TRIP))??;
        self.unsubscribe(filter).await;
        self.unsubscribe(&marker).await;
        // A filter matches its own topics; keep only what it selects.
        Ok(out
            .into_iter()
            .filter(|(t, _)| rumqttc::matches(t, filter))
            .collect())
    }

    /// The retained desired deployment version of `device` (0 when none).
    ///
    /// # Errors
    /// As [`Backend::retained`].
    pub async fn desired_version(&self, device: &str) -> Result<u64, BackendError> {
        let got = self.retained(&topics::deployment(device)).await?;
        Ok(got
            .iter()
            .filter_map(|(_, p)| serde_json::from_slice::<Value>(p).ok())
            .filter_map(|v| v.get("version").and_then(Value::as_u64))
            .max()
            .unwrap_or(0))
    }

    /// Publishes `manifest` as the retained desired deployment of `device` with `version`
    /// (default: the retained version + 1) and returns the version. Returns once the broker
    /// has the message.
    ///
    /// # Errors
    /// [`BackendError::StaleVersion`] for a version not above the retained one, or as
    /// [`Backend::retained`].
    pub async fn deploy(
        &self,
        device: &str,
        manifest: &Value,
        version: Option<u64>,
    ) -> Result<u64, BackendError> {
        let current = self.desired_version(device).await?;
        let version = match version {
            Some(v) if v <= current => {
                return Err(BackendError::StaleVersion { asked: v, current });
            }
            Some(v) => v,
            None => current + 1,
        };
        let body = serde_json::to_vec(&json!({"version": version, "manifest": manifest}))
            .unwrap_or_default();
        self.client
            .publish(topics::deployment(device), QoS::AtLeastOnce, true, body)
            .await
            .map_err(|_| BackendError::Closed)?;
        // The marker round trip returns after the broker processed the publish before it.
        self.retained(&format!(
            "{}/_backend/{}/none",
            topics::ROOT,
            self.client_id
        ))
        .await?;
        tracing::info!(device, version, "Deployment published.");
        Ok(version)
    }

    /// What `device` reports (its retained documents) and its desired version.
    ///
    /// # Errors
    /// As [`Backend::retained`].
    pub async fn status(&self, device: &str) -> Result<DeviceStatus, BackendError> {
        let desired = self.desired_version(device).await?;
        let mut st = DeviceStatus {
            desired_version: (desired > 0).then_some(desired),
            reported: BTreeMap::new(),
        };
        for (t, p) in self.retained(&topics::reported_doc_filter(device)).await? {
            if let Some(FromDevice::ReportedDoc { identity, .. }) = topics::parse_from_device(&t)
                && let Ok(v) = serde_json::from_slice(&p)
            {
                st.reported.insert(identity.to_owned(), v);
            }
        }
        Ok(st)
    }

    /// Publishes a desired-properties patch for module `module` of `device`.
    ///
    /// # Errors
    /// [`BackendError::Closed`].
    pub async fn patch_desired(
        &self,
        device: &str,
        module: &str,
        patch: &Value,
    ) -> Result<(), BackendError> {
        let body = serde_json::to_vec(patch).unwrap_or_default();
        self.client
            .publish(
                topics::desired_patch(device, module, self.next()),
                QoS::AtLeastOnce,
                false,
                body,
            )
            .await
            .map_err(|_| BackendError::Closed)
    }

    /// Calls direct method `method` of `module` on `device` and waits up to `timeout` for the
    /// answer `(status, payload)`.
    ///
    /// # Errors
    /// [`BackendError::MethodTimeout`], [`BackendError::Closed`].
    pub async fn invoke(
        &self,
        device: &str,
        module: &str,
        method: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(i32, Value), BackendError> {
        let rid = format!("{}-{}", self.client_id, self.next());
        let filter = format!("{}/{device}/{module}/methods/res/#", topics::ROOT);
        let mut rx = self.subscribe(std::slice::from_ref(&filter)).await?;
        let body = serde_json::to_vec(payload).unwrap_or_default();
        self.client
            .publish(
                topics::method_request(device, module, method, &rid),
                QoS::AtLeastOnce,
                false,
                body,
            )
            .await
            .map_err(|_| BackendError::Closed)?;
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok((t, p)) => {
                        if let Some(FromDevice::MethodResponse { status, rid: r, .. }) =
                            topics::parse_from_device(&t)
                            && r == rid
                        {
                            let v = serde_json::from_slice(&p).unwrap_or(Value::Null);
                            return Ok((status, v));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(BackendError::Closed),
                }
            }
        };
        let r = tokio::time::timeout(timeout, wait).await;
        self.unsubscribe(&filter).await;
        r.map_err(|_| BackendError::MethodTimeout {
            device: device.to_owned(),
            module: module.to_owned(),
            method: method.to_owned(),
            timeout,
        })?
    }
}
