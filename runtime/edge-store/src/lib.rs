//! Durable store-and-forward queues for the edge hub: a checksummed, segmented append-only log
//! with group commit.
//!
//! The hub keeps one queue per endpoint (each module input, and `$upstream`) and priority
//! (0 = highest .. 9). All queues share one log, so one fsync makes a whole batch durable
//! across endpoints: the hub appends a batch, calls [`Store::sync`] once, then acknowledges
//! the batch to its publishers. An entry leaves its queue only when its sink acknowledged it
//! ([`Store::ack`]), when it expires ([`Store::expire`]), or when its endpoint is removed
//! ([`Store::remove_queue`]). A process kill at any point loses nothing that was synced;
//! a torn tail is detected by checksum and cut off on recovery.
//!
//! The API is synchronous; the hub runs the store on a dedicated thread (or `spawn_blocking`).
//!
//! ```
//! use edge_store::{QueueKey, Store, StoreConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let (mut store, report) = Store::open(dir.path(), StoreConfig::default())?;
//! assert_eq!(report.entries, 0);
//! let key = QueueKey::new("$upstream", 0);
//! // A batch from publishers: append all, one sync, then PUBACK them all.
//! let seq = store.append(&key, u64::MAX, b"{\"t\":1}")?;
//! store.sync()?;
//! // The forwarder delivers, the sink acknowledges, the ack is durable at the next sync.
//! let batch = store.read(&key, None, 64, 0)?;
//! assert_eq!(batch[0].seq, seq);
//! store.ack(&key, seq)?;
//! store.sync()?;
//! assert_eq!(store.len(&key), 0);
//! # Ok(())
//! # }
//! ```
//!
//! Layout:
//! - [`store`]: [`Store`] and its types ([`StoreConfig`], [`QueueKey`], [`Entry`],
//!   [`RecoveryReport`]); the invariants and the head-of-line retention rule are written there.
//! - `recovery`: rebuilding the index from the segment files on open.
//! - `record`: the on-disk record format (`[u32 len][u32 crc][body]`).
//! - `segment`: one segment file and its write state.
//! - `index`: the in-memory index (no payloads: ~40 bytes per queued entry).
//! - [`fs`]: the filesystem seam ([`FileSystem`], [`StoreFile`]) and [`StdFs`].
//! - [`clock`]: the wall-clock seam ([`Clock`], [`SystemClock`]).
//! - [`testing`] (tests and the `test-utils` feature): [`testing::MemFs`] with crash
//!   simulation and failure switches, [`testing::ManualClock`].
//!
//! # Invariants
//! - A message is durable once the [`Store::sync`] following its [`Store::append`] returned
//!   `Ok`; until an ack or drop of it is synced, it is in its queue after every restart
//!   (unless expired).
//! - Per queue, entries are returned in append (`seq`) order; `seq` increases strictly over all
//!   queues and across restarts.
//! - Recovery never panics on any file contents: bad records end the scan of their segment.

pub mod clock;
mod error;
pub mod fs;
mod index;
mod record;
mod recovery;
mod segment;
pub mod store;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use clock::{Clock, SystemClock};
pub use error::StoreError;
pub use fs::{FileSystem, StdFs, StoreFile};
pub use index::PRIORITIES;
pub use record::MAX_PAYLOAD;
pub use store::{Entry, MIN_SEGMENT_BYTES, QueueKey, RecoveryReport, Store, StoreConfig};
