//! The store: one [`Store`] behind a mutex, and the one blocking thread that does its I/O.
//!
//! `edge-store` is synchronous. Work that only touches memory or the page cache is done by the
//! calling task itself, under the mutex: appends that need no sync (QoS 0 batches), reads of a
//! module's queues, and acks. Work that waits for the disk is done by a blocking thread
//! (spawned on the hub's `TaskTracker`) that takes commands through a bounded channel: an
//! append batch that ends with one `sync()` (the group commit), the periodic expire-and-sync
//! sweep, and the final sync at shutdown. The thread holds the mutex while it syncs; a task
//! that finds the mutex held does not wait on it (that would block a runtime worker for an
//! fsync) but sends its operation to the thread as a command instead, to be served after the
//! sync. Before this split every operation was a command, and handing each batch to the
//! thread and back twice (append, then the subscriber's read) cost more than the work itself.
//!
//! # Invariants
//! - A task never blocks on the mutex while the thread holds it for I/O: it uses `try_lock`
//!   and falls back to a command. Only [`StoreClient::snapshot`] waits (stats and metrics).
//! - A reply to a durable append batch is sent only after the batch was synced (or the sync
//!   failed, which the reply says).
//! - Appends and acks made without a sync become durable with the next sync (a durable batch,
//!   the once-a-second sweep, or shutdown); a sync with nothing pending does no I/O.
//! - The thread exits after [`StoreClient::shutdown`] (final sync) or when every client is gone.

use bytes::Bytes;
use edge_store::{Entry, QueueKey, RecoveryReport, Store, StoreConfig, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use tokio::sync::{mpsc, oneshot};

/// A queue: endpoint name (`module/<m>/inputs/<i>` or `$upstream`) and priority (0 highest).
/// The store's own key, so that appends and acks pass it by reference instead of copying the
/// endpoint name for every message.
pub(crate) type QKey = QueueKey;

/// First byte of a record written with [`encode_record`]: `0xE0 | flags`. Records from before
/// the header start with the message encoding's version byte (1), so they read as flags 0.
const RECORD_TAG: u8 = 0xE0;
/// Record flag: the message was published at QoS 0, so it is delivered at QoS 0 (MQTT delivers
/// at the lower of the publish and subscription QoS) and leaves the queue once handed to the
/// connection.
pub(crate) const AT_MOST_ONCE: u8 = 0x01;

/// Encodes a queue record: a one-byte header with `flags`, then the message.
pub(crate) fn encode_record(msg: &edge_core::Message, flags: u8) -> Bytes {
    let mut buf = bytes::BytesMut::with_capacity(1 + msg.encoded_len());
    buf.extend_from_slice(&[RECORD_TAG | (flags & 0x0F)]);
    msg.encode(&mut buf);
    buf.freeze()
}

/// Splits a queue record into its flags and the message encoding (see [`encode_record`]).
pub(crate) fn split_record(mut payload: Bytes) -> (u8, Bytes) {
    match payload.first() {
        Some(&b) if b & 0xF0 == RECORD_TAG => {
            let flags = b & 0x0F;
            let _ = payload.split_to(1);
            (flags, payload)
        }
        _ => (0, payload),
    }
}

/// One entry read back from a queue.
#[derive(Debug, Clone)]
pub(crate) struct QEntry {
    pub key: QKey,
    pub seq: u64,
    pub payload: Bytes,
}

/// What a read returned.
#[derive(Debug, Default)]
pub(crate) struct ReadResult {
    /// Live entries, highest priority first, in sequence order per queue.
    pub entries: Vec<QEntry>,
    /// Corrupt records found and skipped (acked) on the way.
    pub corrupt: u64,
}

/// One append of a batch.
#[derive(Debug, Clone)]
pub(crate) struct AppendReq {
    pub key: QKey,
    pub expires_at_ms: u64,
    pub payload: Bytes,
}

/// Why one append failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppendFailure {
    /// The quota is reached.
    Full,
    /// The store refused or failed; the text is the error chain.
    Failed(String),
}

/// The result of an append batch.
#[derive(Debug)]
pub(crate) struct AppendOutcome {
    /// One result per request, in order: the sequence number or why not.
    pub results: Vec<Result<u64, AppendFailure>>,
    /// Whether the closing sync worked; when it did not, nothing of the batch is durable.
    pub synced: Result<(), String>,
}

/// Queue lengths and store size at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Per queue: length and unix ms of the oldest entry.
    pub queues: BTreeMap<QKey, (u64, Option<u64>)>,
    /// Bytes held by the store.
    pub total_bytes: u64,
}

enum Cmd {
    Append {
        items: Vec<AppendReq>,
        /// Sync before replying (some item waits for a PUBACK). Otherwise the records become
        /// durable with the next sync (a durable batch, the once-a-second sweep, or shutdown).
        durable: bool,
        reply: oneshot::Sender<AppendOutcome>,
    },
    Read {
        prefix: String,
        cursors: Vec<(QKey, u64)>,
        max: usize,
        now_ms: u64,
        reply: oneshot::Sender<Result<ReadResult, String>>,
    },
    Ack(Vec<(QKey, u64)>),
    Sync {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Expire {
        now_ms: u64,
        reply: oneshot::Sender<Vec<(QKey, u64)>>,
    },
    Shutdown,
}

/// The store thread is gone (the hub shut down or the thread failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store is closed")]
pub(crate) struct Closed;

/// What the clients and the thread share.
struct Shared {
    store: Mutex<Store>,
    /// Hub-level byte quota; `u64::MAX` means none.
    quota: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The store if nobody holds it; `Ok(None)` when the thread is busy with it.
    fn try_store(&self) -> Result<Option<MutexGuard<'_, Store>>, Closed> {
        match self.store.try_lock() {
            Ok(g) => Ok(Some(g)),
            Err(TryLockError::WouldBlock) => Ok(None),
            // A panic while the store was held may have left it half-updated: stop using it.
            Err(TryLockError::Poisoned(_)) => Err(Closed),
        }
    }

    /// Appends `items` without a sync, unless the thread holds the store: then they come back.
    fn try_append(
        &self,
        items: Vec<AppendReq>,
    ) -> Result<Result<AppendOutcome, Vec<AppendReq>>, Closed> {
        Ok(match self.try_store()? {
            Some(mut store) => Ok(append(&mut store, items, false, self.quota.load(Relaxed))),
            None => Err(items),
        })
    }
}

/// Handle to the store and its thread.
#[derive(Debug, Clone)]
pub(crate) struct StoreClient {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Append { .. } => "Append",
            Cmd::Read { .. } => "Read",
            Cmd::Ack(_) => "Ack",
            Cmd::Sync { .. } => "Sync",
            Cmd::Expire { .. } => "Expire",
            Cmd::Shutdown => "Shutdown",
        })
    }
}

/// Opens the store on a blocking thread of `tracker` and returns a client once recovery is done.
pub(crate) async fn open(
    dir: PathBuf,
    config: StoreConfig,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<(StoreClient, RecoveryReport), StoreError> {
    let (tx, rx) = mpsc::channel(1024);
    let (ready_tx, ready_rx) = oneshot::channel();
    tracker.spawn_blocking(move || match Store::open(&dir, config) {
        Ok((store, report)) => {
            let shared = Arc::new(Shared {
                store: Mutex::new(store),
                quota: AtomicU64::new(u64::MAX),
            });
            let _ = ready_tx.send(Ok((Arc::clone(&shared), report)));
            run(&shared, rx);
        }
        Err(e) => {
            let _ = ready_tx.send(Err(e));
        }
    });
    let (shared, report) = ready_rx.await.map_err(|_| StoreError::InvalidConfig {
        reason: "the store thread ended while opening",
    })??;
    Ok((StoreClient { tx, shared }, report))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// The thread body: serve commands until shutdown.
fn run(shared: &Shared, mut rx: mpsc::Receiver<Cmd>) {
    while let Some(cmd) = rx.blocking_recv() {
        let Ok(mut store) = shared.store.lock() else {
            tracing::error!("The store was left half-updated by a panic; the hub stops using it.");
            return;
        };
        match cmd {
            Cmd::Append {
                items,
                durable,
                reply,
            } => {
                let outcome = append(&mut store, items, durable, shared.quota.load(Relaxed));
                drop(store);
                let _ = reply.send(outcome);
            }
            Cmd::Read {
                prefix,
                cursors,
                max,
                now_ms,
                reply,
            } => {
                let result = read(&mut store, &prefix, &cursors, max, now_ms);
                drop(store);
                let _ = reply.send(result);
            }
            Cmd::Ack(acks) => ack(&mut store, acks),
            Cmd::Sync { reply } => {
                let synced = store.sync().map_err(|e| chain(&e));
                drop(store);
                let _ = reply.send(synced);
            }
            Cmd::Expire { now_ms, reply } => {
                let expired = store.expire(now_ms);
                // Makes the appends and acks since the last sync durable; nothing pending, no I/O.
                sync(&mut store);
                drop(store);
                let _ = reply.send(expired);
            }
            Cmd::Shutdown => {
                sync(&mut store);
                tracing::debug!("Store thread stopped.");
                return;
            }
        }
    }
    if let Ok(mut store) = shared.store.lock() {
        sync(&mut store);
    }
}

fn ack(store: &mut Store, acks: Vec<(QKey, u64)>) {
    for (key, seq) in acks {
        if let Err(error) = store.ack(&key, seq) {
            tracing::debug!(endpoint = %key.endpoint, seq, error = %chain(&error), "Ack refused by the store.");
        }
    }
}

fn sync(store: &mut Store) {
    if let Err(error) = store.sync() {
        tracing::error!(error = %chain(&error), "Store sync failed.");
    }
}

fn append(store: &mut Store, items: Vec<AppendReq>, durable: bool, quota: u64) -> AppendOutcome {
    let mut results = Vec::with_capacity(items.len());
    let mut appended = false;
    for item in items {
        let len = item.payload.len() as u64;
        if store.total_bytes().saturating_add(len) > quota {
            results.push(Err(AppendFailure::Full));
            continue;
        }
        let r = store
            .append(&item.key, item.expires_at_ms, &item.payload)
            .map_err(|e| match e {
                StoreError::QuotaExceeded { .. } => AppendFailure::Full,
                other => AppendFailure::Failed(chain(&other)),
            });
        appended |= r.is_ok();
        results.push(r);
    }
    let synced = if appended && durable {
        store.sync().map_err(|e| chain(&e))
    } else {
        Ok(())
    };
    AppendOutcome { results, synced }
}

fn read(
    store: &mut Store,
    prefix: &str,
    cursors: &[(QKey, u64)],
    max: usize,
    now_ms: u64,
) -> Result<ReadResult, String> {
    // `queues()` is sorted by endpoint then priority; serve highest priority first.
    let mut keys: Vec<QueueKey> = store
        .queues()
        .into_iter()
        .filter(|k| k.endpoint.starts_with(prefix))
        .collect();
    keys.sort_by(|a, b| (a.priority, &a.endpoint).cmp(&(b.priority, &b.endpoint)));
    let mut out = ReadResult::default();
    for key in keys {
        if out.entries.len() >= max {
            break;
        }
        let after = cursors.iter().find(|(k, _)| *k == key).map(|(_, s)| *s);
        // A corrupt record is skipped by acking it; give up on the queue after a few.
        let mut attempts = 0;
        let entries: Vec<Entry> = loop {
            match store.read(&key, after, max - out.entries.len(), now_ms) {
                Ok(e) => break e,
                Err(StoreError::Corrupt {
                    seq,
                    segment,
                    offset,
                }) if attempts < 16 => {
                    attempts += 1;
                    out.corrupt += 1;
                    tracing::error!(endpoint = %key.endpoint, seq, segment, offset, "Corrupt record in the store; skipping it.");
                    let _ = store.ack(&key, seq);
                }
                Err(e) => return Err(chain(&e)),
            }
        };
        out.entries.extend(entries.into_iter().map(|e| QEntry {
            key: key.clone(),
            seq: e.seq,
            payload: e.payload,
        }));
    }
    Ok(out)
}

fn snapshot_of(store: &Store) -> Snapshot {
    let mut queues = BTreeMap::new();
    for k in store.queues() {
        let len = store.len(&k) as u64;
        let oldest = store.oldest_appended_ms(&k);
        queues.insert(k, (len, oldest));
    }
    Snapshot {
        queues,
        total_bytes: store.total_bytes(),
    }
}

impl StoreClient {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, Closed> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Closed)?;
        rx.await.map_err(|_| Closed)
    }

    /// Appends a batch and calls `appended` with one result per request as soon as the
    /// records are in the store (readable, not yet durable); with `durable`, then syncs once
    /// before answering. Without, the records become durable with the next sync.
    ///
    /// The append is done here unless the thread holds the store; the sync is always the
    /// thread's. Calling `appended` before the sync lets subscribers receive a message while
    /// its fsync runs: if the sync then fails or the hub crashes, the publisher has no PUBACK
    /// and sends it again, which at-least-once allows.
    pub(crate) async fn append(
        &self,
        items: Vec<AppendReq>,
        durable: bool,
        appended: impl FnOnce(&[Result<u64, AppendFailure>]),
    ) -> Result<AppendOutcome, Closed> {
        let items = match self.shared.try_append(items)? {
            Ok(mut outcome) => {
                appended(&outcome.results);
                if durable && outcome.results.iter().any(Result::is_ok) {
                    outcome.synced = self.call(|reply| Cmd::Sync { reply }).await?;
                }
                return Ok(outcome);
            }
            Err(items) => items,
        };
        let outcome = self
            .call(|reply| Cmd::Append {
                items,
                durable,
                reply,
            })
            .await?;
        appended(&outcome.results);
        Ok(outcome)
    }

    /// Reads up to `max` live entries of the queues whose endpoint starts with `prefix`, highest
    /// priority first, each queue after its cursor (or from its oldest unacked entry).
    pub(crate) async fn read(
        &self,
        prefix: String,
        cursors: Vec<(QKey, u64)>,
        max: usize,
        now_ms: u64,
    ) -> Result<Result<ReadResult, String>, Closed> {
        if let Some(mut store) = self.shared.try_store()? {
            return Ok(read(&mut store, &prefix, &cursors, max, now_ms));
        }
        self.call(|reply| Cmd::Read {
            prefix,
            cursors,
            max,
            now_ms,
            reply,
        })
        .await
    }

    /// Acknowledges entries (durable at the next sync).
    pub(crate) async fn ack(&self, acks: Vec<(QKey, u64)>) -> Result<(), Closed> {
        if acks.is_empty() {
            return Ok(());
        }
        if let Some(mut store) = self.shared.try_store()? {
            ack(&mut store, acks);
            return Ok(());
        }
        self.tx.send(Cmd::Ack(acks)).await.map_err(|_| Closed)
    }

    /// Drops expired entries and returns how many per queue.
    pub(crate) async fn expire(&self, now_ms: u64) -> Result<Vec<(QKey, u64)>, Closed> {
        self.call(|reply| Cmd::Expire { now_ms, reply }).await
    }

    /// Sets the hub-level byte quota (`storeLimits.maxSizeBytes`), `None` for none.
    pub(crate) fn set_quota(&self, quota: Option<u64>) {
        self.shared.quota.store(quota.unwrap_or(u64::MAX), Relaxed);
    }

    /// Asks the thread for a final sync and to stop.
    pub(crate) async fn shutdown(&self) {
        let _ = self.tx.send(Cmd::Shutdown).await;
    }

    /// The queues now. Waits for the store if the thread is syncing (at most one fsync).
    pub(crate) fn snapshot(&self) -> Snapshot {
        snapshot_of(
            &self
                .shared
                .store
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}
