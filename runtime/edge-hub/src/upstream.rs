//! The seam for the future upstream link: reading and acknowledging the `$upstream` queue.
//!
//! There is no upstream link yet, so messages routed `INTO $upstream` stay queued, bounded by
//! their time to live and the store quota. A link will take an [`UpstreamQueue`] from
//! [`crate::Hub::upstream_queue`], call [`UpstreamQueue::next_batch`] to get messages in
//! order (highest priority first), send them, [`UpstreamQueue::ack`] what the cloud
//! acknowledged, and [`UpstreamQueue::rewind`] after a reconnect so that everything not
//! acknowledged is sent again (at least once).
//!
//! # Invariants
//! `next_batch` never returns an entry twice between two `rewind`s; an entry leaves the store
//! only through `ack` (or its time to live).

use crate::store::QKey;
use crate::{HubError, Inner};
use edge_core::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A message waiting for the upstream link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamMessage {
    /// Route priority, 0 highest.
    pub priority: u8,
    /// Store sequence number (pass it back to [`UpstreamQueue::ack`]).
    pub seq: u64,
    /// The message, with `$connectionDeviceId`, `$connectionModuleId` and `$enqueuedTime`.
    pub message: Message,
}

/// Reader of the `$upstream` queue (cheap to clone; clones share the read position).
#[derive(Clone)]
pub struct UpstreamQueue {
    hub: Arc<Inner>,
    cursors: Arc<Mutex<HashMap<QKey, u64>>>,
}

impl std::fmt::Debug for UpstreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamQueue").finish_non_exhaustive()
    }
}

impl UpstreamQueue {
    pub(crate) fn new(hub: Arc<Inner>) -> Self {
        Self {
            hub,
            cursors: Arc::default(),
        }
    }

    /// Up to `max` messages not returned since the last [`rewind`](Self::rewind), highest
    /// priority first, in queue order. Undecodable records are skipped (acked and counted as
    /// dead letters).
    ///
    /// # Errors
    /// [`HubError::Closed`] after shutdown; [`HubError::StoreRead`] when the store fails.
    pub async fn next_batch(&self, max: usize) -> Result<Vec<UpstreamMessage>, HubError> {
        let cursors: Vec<(QKey, u64)> = self.lock().iter().map(|(k, s)| (k.clone(), *s)).collect();
        let read = self
            .hub
            .store
            .read(
                crate::ingest::UPSTREAM.to_owned(),
                cursors,
                max,
                crate::now_ms(),
            )
            .await
            .map_err(|_| HubError::Closed)?
            .map_err(|reason| HubError::StoreRead { reason })?;
        let mut out = Vec::with_capacity(read.entries.len());
        let mut skipped = Vec::new();
        {
            let mut cursors = self.lock();
            for e in read.entries {
                cursors.insert(e.key.clone(), e.seq);
                match Message::decode(crate::store::split_record(e.payload).1) {
                    Ok(message) => out.push(UpstreamMessage {
                        priority: e.key.priority,
                        seq: e.seq,
                        message,
                    }),
                    Err(error) => {
                        tracing::error!(seq = e.seq, %error, "Upstream record does not decode; skipping it.");
                        self.hub
                            .metrics
                            .dead_letter(crate::metrics::DeadLetter::Corrupt);
                        skipped.push((e.key, e.seq));
                    }
                }
            }
        }
        self.hub
            .store
            .ack(skipped)
            .await
            .map_err(|_| HubError::Closed)?;
        Ok(out)
    }

    /// Acknowledges sent messages by `(priority, seq)`: they leave the store.
    ///
    /// # Errors
    /// [`HubError::Closed`] after shutdown.
    pub async fn ack(&self, acked: &[(u8, u64)]) -> Result<(), HubError> {
        let acks: Vec<(QKey, u64)> = acked
            .iter()
            .map(|&(priority, seq)| {
                (
                    QKey {
                        endpoint: crate::ingest::UPSTREAM.to_owned(),
                        priority,
                    },
                    seq,
                )
            })
            .collect();
        let n = acks.len() as u64;
        self.hub
            .store
            .ack(acks)
            .await
            .map_err(|_| HubError::Closed)?;
        if n > 0 {
            self.hub.metrics.sent(crate::ingest::UPSTREAM, n);
        }
        Ok(())
    }

    /// Forgets the read position: the next batch starts at the oldest unacknowledged message.
    pub fn rewind(&self) {
        self.lock().clear();
    }

    /// Waits until a batch added messages to the upstream queue (returns at once if that
    /// happened since the last wait).
    pub async fn changed(&self) {
        self.hub.upstream_wake.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<QKey, u64>> {
        self.cursors.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
