//! The DCS as the writer sees it: read, write, the interlock and the connection state. The real
//! implementation is [`crate::client::OpcuaDcs`]; [`FakeDcs`] has failure switches for tests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;
use tokio::sync::watch;

/// A value read from or written to a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Double.
    Double(f64),
    /// Boolean.
    Bool(bool),
    /// String.
    String(String),
    /// DateTime.
    DateTime(SystemTime),
}

impl Value {
    /// The value as JSON (for the audit log and the `read` method).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Double(x) => serde_json::json!(x),
            Self::Bool(b) => serde_json::json!(b),
            Self::String(s) => serde_json::json!(s),
            Self::DateTime(t) => {
                serde_json::json!(humantime::format_rfc3339_millis(*t).to_string())
            }
        }
    }

    /// The number, if this is a Double.
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Double(x) => Some(*x),
            _ => None,
        }
    }
}

/// A DCS operation failed as a whole (not connected, transport error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcsError {
    /// No session.
    #[error("not connected to the DCS")]
    NotConnected,
    /// The request failed.
    #[error("dcs request failed: {0}")]
    Request(String),
    /// A node id does not parse.
    #[error("bad node id {0}")]
    BadNodeId(String),
}

/// What the writer needs from a DCS.
pub trait DcsWriter: Send + Sync + 'static {
    /// Reads the values of `nodes` (None for a node that cannot be read).
    fn read(
        &self,
        nodes: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Value>>, DcsError>> + Send;

    /// Writes values; one result per write (`Err(status)` when the server refused it).
    fn write(
        &self,
        writes: &[(String, Value)],
    ) -> impl Future<Output = Result<Vec<Result<(), String>>, DcsError>> + Send;

    /// The interlock as last seen by subscription (`None` = unknown, e.g. disconnected).
    fn interlock(&self) -> watch::Receiver<Option<bool>>;

    /// Whether a session is up.
    fn connected(&self) -> watch::Receiver<bool>;
}

/// An in-memory DCS for unit tests.
///
/// # Invariants
/// `interlock` is `None` whenever `connected` is false.
#[derive(Debug)]
pub struct FakeDcs {
    values: Mutex<HashMap<String, Value>>,
    writes: Mutex<Vec<(String, Value)>>,
    refuse: Mutex<Option<String>>,
    alter_next: Mutex<Option<f64>>,
    interlock: watch::Sender<Option<bool>>,
    connected: watch::Sender<bool>,
}

impl Default for FakeDcs {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeDcs {
    /// Connected, interlock on, no values.
    #[must_use]
    pub fn new() -> Self {
        Self {
            values: Mutex::default(),
            writes: Mutex::default(),
            refuse: Mutex::default(),
            alter_next: Mutex::default(),
            interlock: watch::channel(Some(true)).0,
            connected: watch::channel(true).0,
        }
    }

    /// Sets a node's value.
    pub fn set(&self, node: &str, v: Value) {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.into(), v);
    }

    /// A node's value.
    #[must_use]
    pub fn get(&self, node: &str) -> Option<Value> {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .cloned()
    }

    /// Every write that reached the DCS.
    #[must_use]
    pub fn writes(&self) -> Vec<(String, Value)> {
        self.writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Flips the interlock.
    pub fn set_interlock(&self, on: bool) {
        self.interlock.send_replace(Some(on));
    }

    /// Connects or disconnects (disconnect makes the interlock unknown).
    pub fn set_connected(&self, up: bool) {
        self.connected.send_replace(up);
        if !up {
            self.interlock.send_replace(None);
        }
    }

    /// Makes every write fail with this status until cleared.
    pub fn refuse_writes(&self, status: Option<&str>) {
        *self.refuse.lock().unwrap_or_else(PoisonError::into_inner) = status.map(str::to_owned);
    }

    /// Stores the next numeric write as `value + delta`.
    pub fn alter_next_write(&self, delta: f64) {
        *self
            .alter_next
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(delta);
    }
}

impl DcsWriter for FakeDcs {
    async fn read(&self, nodes: &[String]) -> Result<Vec<Option<Value>>, DcsError> {
        if !*self.connected.borrow() {
            return Err(DcsError::NotConnected);
        }
        Ok(nodes.iter().map(|n| self.get(n)).collect())
    }

    async fn write(&self, writes: &[(String, Value)]) -> Result<Vec<Result<(), String>>, DcsError> {
        if !*self.connected.borrow() {
            return Err(DcsError::NotConnected);
        }
        let refuse = self
            .refuse
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = Vec::new();
        for (node, v) in writes {
            if let Some(s) = &refuse {
                out.push(Err(s.clone()));
                continue;
            }
            self.writes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((node.clone(), v.clone()));
            let stored = match (
                v,
                self.alter_next
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            ) {
                (Value::Double(x), Some(d)) => Value::Double(x + d),
                (v, _) => v.clone(),
            };
            self.set(node, stored);
            out.push(Ok(()));
        }
        Ok(out)
    }

    fn interlock(&self) -> watch::Receiver<Option<bool>> {
        self.interlock.subscribe()
    }

    fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }
}
