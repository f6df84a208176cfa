//! Direct method calls waiting for their module's answer.
//!
//! [`crate::Hub::invoke`] registers a request id, publishes
//! `$iothub/methods/POST/{name}/?$rid={rid}` to the module and waits; the module's
//! `$iothub/methods/res/{status}/?$rid={rid}` completes it. Request ids are unique per hub run
//! and an answer only counts when it comes from the module that was called.
//!
//! # Invariants
//! A pending call is removed exactly once: by its answer, or by the caller when it gives up.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

/// A method's answer: status and raw payload.
pub(crate) type Answer = (i32, Bytes);

/// Why a direct method call failed.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// The module is not connected to the hub.
    #[error("module `{module}` is not connected")]
    NotConnected {
        /// The module called.
        module: String,
    },
    /// The module is connected but has not subscribed to `$iothub/methods/POST/#`.
    #[error("module `{module}` has not subscribed to methods")]
    NotSubscribed {
        /// The module called.
        module: String,
    },
    /// No answer came in time.
    #[error("module `{module}` did not answer method `{method}` within {timeout:?}")]
    Timeout {
        /// The module called.
        module: String,
        /// The method.
        method: String,
        /// How long the call waited.
        timeout: std::time::Duration,
    },
    /// The answer's payload is not JSON.
    #[error("module `{module}` answered method `{method}` with a payload that is not JSON")]
    InvalidResponse {
        /// The module called.
        module: String,
        /// The method.
        method: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Closed,
}

/// Calls waiting for an answer.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    calls: Mutex<HashMap<String, (String, oneshot::Sender<Answer>)>>,
    next: AtomicU64,
}

impl Pending {
    /// Registers a call to `module` and returns its request id and the answer's receiver.
    pub(crate) fn register(&self, module: &str) -> (String, oneshot::Receiver<Answer>) {
        let rid = self.next.fetch_add(1, Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        self.lock().insert(rid.clone(), (module.to_owned(), tx));
        (rid, rx)
    }

    /// Forgets a call (the caller gave up).
    pub(crate) fn cancel(&self, rid: &str) {
        self.lock().remove(rid);
    }

    /// Completes call `rid` with an answer from `module`; false when no such call is waiting
    /// for that module.
    pub(crate) fn complete(&self, module: &str, rid: &str, answer: Answer) -> bool {
        let mut calls = self.lock();
        match calls.get(rid) {
            Some((m, _)) if m == module => {}
            _ => return false,
        }
        calls
            .remove(rid)
            .is_some_and(|(_, tx)| tx.send(answer).is_ok())
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (String, oneshot::Sender<Answer>)>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_called_module_can_answer() {
        let p = Pending::default();
        let (rid, mut rx) = p.register("a");
        assert!(!p.complete("b", &rid, (200, Bytes::new())));
        assert!(!p.complete("a", "nope", (200, Bytes::new())));
        assert!(p.complete("a", &rid, (201, Bytes::from_static(b"{}"))));
        assert_eq!(rx.try_recv().unwrap().0, 201);
        assert!(!p.complete("a", &rid, (200, Bytes::new())));
        let (rid2, _rx2) = p.register("a");
        assert_ne!(rid, rid2);
        p.cancel(&rid2);
        assert!(!p.complete("a", &rid2, (200, Bytes::new())));
    }
}
