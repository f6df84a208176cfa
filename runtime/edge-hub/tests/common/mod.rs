//! Helpers for the hub's integration tests: a hub in a tempdir, module clients with real SAS
//! tokens, and waiting for conditions with a deadline.

// Test helpers panic on failure like the tests that use them; not every test uses every helper.
#![allow(dead_code, clippy::unwrap_used)]

use edge_core::identity::IdentityRegistry;
use edge_core::sas::{ModuleKey, make_token, module_uri};
use edge_core::{DeviceId, ModuleId};
use edge_hub::{Hub, HubConfig};
use edge_manifest::{RouteSpec, StoreAndForward};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const DEVICE: &str = "dev1";
pub const HOST: &str = "hub.example";
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running hub and what is needed to talk to it and stop it.
pub struct TestHub {
    pub hub: Hub,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub metrics: prometheus::Registry,
    pub ids: IdentityRegistry,
    pub keys: HashMap<String, ModuleKey>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An identity registry with a fresh key for each module.
pub fn identities(modules: &[&str]) -> (IdentityRegistry, HashMap<String, ModuleKey>) {
    let ids = IdentityRegistry::new();
    let mut keys = HashMap::new();
    for m in modules {
        let key = ModuleKey::generate().unwrap();
        ids.insert(ModuleId::new(*m).unwrap(), key.clone());
        keys.insert((*m).to_owned(), key);
    }
    (ids, keys)
}

pub fn config(dir: &Path) -> HubConfig {
    let mut c = HubConfig::new(DeviceId::new(DEVICE).unwrap(), HOST, dir);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c
}

pub async fn start_with(
    config: HubConfig,
    ids: IdentityRegistry,
    keys: HashMap<String, ModuleKey>,
) -> TestHub {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let metrics = prometheus::Registry::new();
    let hub = Hub::start(config, ids.clone(), &metrics, cancel.clone(), &tracker)
        .await
        .unwrap();
    TestHub {
        hub,
        cancel,
        tracker,
        metrics,
        ids,
        keys,
    }
}

pub async fn start(dir: &Path, modules: &[&str]) -> TestHub {
    let (ids, keys) = identities(modules);
    start_with(config(dir), ids, keys).await
}

impl TestHub {
    pub fn port(&self) -> u16 {
        self.hub.local_addr().port()
    }

    /// A valid SAS token for `module`.
    pub fn token(&self, module: &str) -> String {
        make_token(
            &self.keys[module],
            &module_uri(HOST, DEVICE, module),
            now_secs() + 3600,
        )
    }

    /// Connects `module` with valid credentials (clean session) and waits for CONNACK.
    pub async fn connect(&self, module: &str) -> Client {
        self.connect_with(module, true, false).await
    }

    /// Connects `module` over the hub's Unix socket at `path` and waits for CONNACK.
    pub async fn connect_unix(&self, path: &Path, module: &str, token: String) -> Client {
        let mut opts = MqttOptions::new(format!("{DEVICE}/{module}"), path.to_string_lossy(), 0);
        opts.set_transport(rumqttc::Transport::Unix);
        let mut c = Client::open_with(
            opts,
            Some((
                format!("{HOST}/{DEVICE}/{module}/?api-version=2021-04-12"),
                token,
            )),
            true,
            false,
        );
        c.connack().await.unwrap();
        c
    }

    pub async fn connect_with(&self, module: &str, clean: bool, manual_acks: bool) -> Client {
        let mut c = Client::open(
            self.port(),
            &format!("{DEVICE}/{module}"),
            Some((
                format!("{HOST}/{DEVICE}/{module}/?api-version=2021-04-12"),
                self.token(module),
            )),
            clean,
            manual_acks,
        );
        c.connack().await.unwrap();
        c
    }

    /// Stops the hub and waits for all its tasks.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(DEADLINE, self.tracker.wait())
            .await
            .expect("hub tasks did not stop");
    }

    /// Applies routes (name, text) with the default store-and-forward settings.
    pub fn routes(&self, routes: &[(&str, &str)]) {
        self.hub
            .apply_deployment(&route_specs(routes), &saf(), &BTreeMap::new())
            .unwrap();
    }

    /// The value of a counter/gauge series in the Prometheus registry.
    pub fn metric(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        let mut total = 0.0;
        for family in self.metrics.gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                if let Some((k, v)) = label
                    && !m
                        .get_label()
                        .iter()
                        .any(|l| l.name() == k && l.value() == v)
                {
                    continue;
                }
                total += m.get_counter().get_value() + m.get_gauge().get_value();
            }
        }
        total
    }
}

pub fn route_specs(routes: &[(&str, &str)]) -> Vec<RouteSpec> {
    routes
        .iter()
        .map(|(name, text)| RouteSpec {
            name: (*name).to_owned(),
            text: (*text).to_owned(),
            priority: 0,
            time_to_live: None,
        })
        .collect()
}

pub fn saf() -> StoreAndForward {
    StoreAndForward {
        time_to_live: Duration::from_secs(7200),
        max_size_bytes: None,
    }
}

/// A rumqttc client whose event loop runs in a task; events arrive on a channel, the loop
/// stops at the first error (no automatic reconnect).
pub struct Client {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    /// Publishes that arrived while waiting for something else.
    stash: std::collections::VecDeque<Publish>,
}

impl Client {
    pub fn open(
        port: u16,
        client_id: &str,
        login: Option<(String, String)>,
        clean: bool,
        manual_acks: bool,
    ) -> Client {
        Self::open_with(
            MqttOptions::new(client_id, "127.0.0.1", port),
            login,
            clean,
            manual_acks,
        )
    }

    /// [`Client::open`] with the connection given by `opts` (e.g. a Unix socket).
    pub fn open_with(
        mut opts: MqttOptions,
        login: Option<(String, String)>,
        clean: bool,
        manual_acks: bool,
    ) -> Client {
        opts.set_clean_session(clean);
        opts.set_manual_acks(manual_acks);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((u, p)) = login {
            opts.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    break;
                }
            }
        });
        Client {
            client,
            events,
            stash: std::collections::VecDeque::new(),
        }
    }

    /// Waits for the CONNACK; `Err` carries the connection error (e.g. a refusal).
    pub async fn connack(&mut self) -> Result<(), ConnectionError> {
        loop {
            match self.next().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next event, failing the test after the deadline.
    pub async fn next(&mut self) -> Result<Event, ConnectionError> {
        tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("no event before the deadline")
            .expect("event loop ended")
    }

    /// Skips events until a publish arrives.
    pub async fn publish_in(&mut self) -> Publish {
        if let Some(p) = self.stash.pop_front() {
            return p;
        }
        loop {
            match self.next().await {
                Ok(Event::Incoming(Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting for a publish: {e}"),
            }
        }
    }

    /// Skips events until a SUBACK arrives and returns it.
    pub async fn suback(&mut self) -> rumqttc::SubAck {
        loop {
            match self.next().await {
                Ok(Event::Incoming(Packet::SubAck(s))) => return s,
                Ok(Event::Incoming(Packet::Publish(p))) => self.stash.push_back(p),
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting for a SUBACK: {e}"),
            }
        }
    }

    /// Skips events until a PUBACK arrives.
    pub async fn puback(&mut self) -> u16 {
        loop {
            match self.next().await {
                Ok(Event::Incoming(Packet::PubAck(a))) => return a.pkid,
                Ok(Event::Incoming(Packet::Publish(p))) => self.stash.push_back(p),
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting for a PUBACK: {e}"),
            }
        }
    }

    /// Skips events until the connection fails; returns the error.
    pub async fn closed(&mut self) -> ConnectionError {
        loop {
            if let Err(e) = self.next().await {
                return e;
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str) -> rumqttc::SubAck {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.suback().await
    }

    /// Publishes QoS 1 and waits for the PUBACK.
    pub async fn send(&mut self, topic: &str, body: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, body.into())
            .await
            .unwrap();
        self.puback().await;
    }
}

/// The events topic of `module` with a property bag.
pub fn events(module: &str, bag: &str) -> String {
    format!("devices/{DEVICE}/modules/{module}/messages/events/{bag}")
}

/// Waits until `cond` holds, failing the test after the deadline.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The input name and message (properties only) of a hub → module input topic.
pub fn input_of(topic: &str, module: &str) -> (String, edge_core::Message) {
    match edge_core::topic::parse_outbound(topic, DEVICE, module).unwrap() {
        edge_core::topic::Outbound::Input { input, msg } => (input, *msg),
        other => panic!("not an input topic: {other:?}"),
    }
}
