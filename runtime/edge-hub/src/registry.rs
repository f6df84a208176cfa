//! Which module is connected, on which connection, with which subscriptions.
//!
//! One entry per module identity (the client id is `{device}/{module}`, so the module id is
//! the session key). A session with `clean_session = 0` keeps its subscriptions across
//! reconnects, and across hub restarts: they are written to `data_dir/sessions/<module>.json`
//! when they change (temporary file + fsync + rename), because Azure's SDKs never subscribe
//! again after a reconnect. A `clean_session = 1` connection starts empty and its file is
//! removed.
//!
//! # Invariants
//! - At most one connection per module: attaching a new one cancels the old one first.
//! - A connection only detaches itself (matched by its id), so a late cleanup of a replaced
//!   connection never drops its successor.

use edge_core::topic::Subscription;
use rumqttc::mqttbytes::v4::Packet;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// The subscriptions a module holds, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subs {
    /// `devices/{d}/modules/{m}/inputs/#`.
    pub inputs: bool,
    /// `$iothub/methods/POST/#`.
    pub methods: bool,
    /// `$iothub/twin/PATCH/properties/desired/#`.
    pub desired: bool,
    /// `$iothub/twin/res/#` (twin responses are sent regardless).
    pub twin_responses: bool,
}

impl Subs {
    /// Turns one kind on or off.
    pub(crate) fn set(&mut self, kind: Subscription, on: bool) {
        match kind {
            Subscription::Inputs => self.inputs = on,
            Subscription::Methods => self.methods = on,
            Subscription::DesiredPatches => self.desired = on,
            Subscription::TwinResponses => self.twin_responses = on,
        }
    }
}

/// A live connection's handles.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// Unique per hub run.
    pub id: u64,
    /// Packets to write to the module.
    pub out: mpsc::Sender<Packet>,
    /// Cancelling closes the connection.
    pub cancel: CancellationToken,
    /// Wakes the connection's delivery task (new data queued, subscription added).
    pub wake: Arc<Notify>,
}

#[derive(Debug)]
struct Session {
    subs: Subs,
    persistent: bool,
    conn: Option<Conn>,
    /// Milliseconds on the hub clock of the last packet, 0 before the first.
    heartbeat: Arc<AtomicU64>,
}

impl Session {
    fn new() -> Self {
        Self {
            subs: Subs::default(),
            persistent: false,
            conn: None,
            heartbeat: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// What [`Registry::attach`] hands the new connection.
#[derive(Debug)]
pub(crate) struct Attached {
    /// CONNACK's session-present flag.
    pub session_present: bool,
    /// Where to record heartbeats.
    pub heartbeat: Arc<AtomicU64>,
    /// Connected modules after the attach.
    pub connected: usize,
}

/// All sessions.
#[derive(Debug)]
pub(crate) struct Registry {
    dir: PathBuf,
    map: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Loads persisted sessions from `dir` (creating it). Unreadable files are logged and skipped.
    pub(crate) fn load(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut map = HashMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            match fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_slice::<Subs>(&t).map_err(|e| e.to_string()))
            {
                Ok(subs) => {
                    let mut s = Session::new();
                    s.subs = subs;
                    s.persistent = true;
                    map.insert(id.to_owned(), s);
                }
                Err(error) => {
                    tracing::warn!(module = %id, %error, "Session file unreadable; ignoring it.");
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            map: Mutex::new(map),
            next_id: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh connection id.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// Makes `conn` the module's connection, closing any previous one. `clean` discards the
    /// stored session (subscriptions) first.
    pub(crate) fn attach(&self, module: &str, clean: bool, conn: Conn) -> Attached {
        let mut map = self.lock();
        let session = map.entry(module.to_owned()).or_insert_with(Session::new);
        if let Some(old) = session.conn.take() {
            tracing::info!(module = %module, "New connection for the module replaces the old one.");
            old.cancel.cancel();
        }
        let session_present = !clean && session.persistent;
        if clean {
            session.subs = Subs::default();
            if session.persistent {
                self.remove_file(module);
            }
        }
        session.persistent = !clean;
        session.conn = Some(conn);
        let heartbeat = Arc::clone(&session.heartbeat);
        let connected = map.values().filter(|s| s.conn.is_some()).count();
        Attached {
            session_present,
            heartbeat,
            connected,
        }
    }

    /// Detaches connection `conn_id` of `module` if it is still the current one; returns the
    /// number of connected modules afterwards, or `None` when it had been replaced already.
    pub(crate) fn detach(&self, module: &str, conn_id: u64) -> Option<usize> {
        let mut map = self.lock();
        let session = map.get_mut(module)?;
        if session.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return None;
        }
        session.conn = None;
        if !session.persistent {
            session.subs = Subs::default();
        }
        Some(map.values().filter(|s| s.conn.is_some()).count())
    }

    /// Changes the subscriptions of `module` through connection `conn_id` and persists them
    /// for a `clean_session = 0` session. Returns the new set, or `None` when the connection
    /// was replaced.
    pub(crate) fn update_subs(
        &self,
        module: &str,
        conn_id: u64,
        change: impl FnOnce(&mut Subs),
    ) -> Option<Subs> {
        let mut map = self.lock();
        let session = map.get_mut(module)?;
        if session.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return None;
        }
        let before = session.subs;
        change(&mut session.subs);
        let after = session.subs;
        if after != before
            && session.persistent
            && let Err(error) = self.write_file(module, &after)
        {
            tracing::warn!(module = %module, %error, "Cannot persist the session's subscriptions; they are kept in memory.");
        }
        Some(after)
    }

    /// The current connection of `module` and its subscriptions.
    pub(crate) fn conn(&self, module: &str) -> Option<(Conn, Subs)> {
        let map = self.lock();
        let s = map.get(module)?;
        s.conn.clone().map(|c| (c, s.subs))
    }

    /// The subscriptions of `module` if `conn_id` is still its connection.
    pub(crate) fn subs_of(&self, module: &str, conn_id: u64) -> Option<Subs> {
        let map = self.lock();
        let s = map.get(module)?;
        (s.conn.as_ref().map(|c| c.id) == Some(conn_id)).then_some(s.subs)
    }

    /// Wakes the delivery task of `module`'s connection, if any.
    pub(crate) fn wake(&self, module: &str) {
        if let Some(c) = self.lock().get(module).and_then(|s| s.conn.as_ref()) {
            c.wake.notify_one();
        }
    }

    /// Hub-clock milliseconds of the last packet from `module`, if any.
    pub(crate) fn last_heartbeat_ms(&self, module: &str) -> Option<u64> {
        let map = self.lock();
        let ms = map.get(module)?.heartbeat.load(Relaxed);
        (ms != 0).then_some(ms)
    }

    /// Connected module ids, sorted.
    pub(crate) fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Closes every connection (shutdown).
    pub(crate) fn close_all(&self) {
        for s in self.lock().values_mut() {
            if let Some(c) = s.conn.take() {
                c.cancel.cancel();
            }
        }
    }

    fn write_file(&self, module: &str, subs: &Subs) -> io::Result<()> {
        let path = self.dir.join(format!("{module}.json"));
        let tmp = self.dir.join(format!("{module}.json.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(subs).map_err(io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()
    }

    fn remove_file(&self, module: &str) {
        let path = self.dir.join(format!("{module}.json"));
        if let Err(error) = fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(module = %module, %error, "Cannot remove the session file.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(reg: &Registry) -> Conn {
        let (out, _rx) = mpsc::channel(1);
        Conn {
            id: reg.next_conn_id(),
            out,
            cancel: CancellationToken::new(),
            wake: Arc::new(Notify::new()),
        }
    }

    #[test]
    fn persistent_sessions_keep_subscriptions_across_reconnects_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::load(dir.path()).unwrap();
        let c1 = conn(&reg);
        let a = reg.attach("m", false, c1.clone());
        assert!(!a.session_present);
        reg.update_subs("m", c1.id, |s| s.set(Subscription::Methods, true))
            .unwrap();
        // A second connection replaces the first.
        let c2 = conn(&reg);
        let a2 = reg.attach("m", false, c2.clone());
        assert!(c1.cancel.is_cancelled());
        assert!(a2.session_present);
        assert!(reg.conn("m").unwrap().1.methods);
        // The old connection's late cleanup does not detach the new one.
        assert_eq!(reg.detach("m", c1.id), None);
        assert_eq!(reg.connected(), vec!["m".to_owned()]);
        assert_eq!(reg.detach("m", c2.id), Some(0));
        // Subscriptions survive a reload.
        let reg = Registry::load(dir.path()).unwrap();
        let c3 = conn(&reg);
        assert!(reg.attach("m", false, c3.clone()).session_present);
        assert!(reg.subs_of("m", c3.id).unwrap().methods);
        // A clean session drops them, also on disk.
        reg.detach("m", c3.id);
        let c4 = conn(&reg);
        assert!(!reg.attach("m", true, c4.clone()).session_present);
        assert!(!reg.subs_of("m", c4.id).unwrap().methods);
        assert!(!dir.path().join("m.json").exists());
    }
}
