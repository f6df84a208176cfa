//! The one error type of the store's public API.

use std::io;

/// Everything that can go wrong in [`Store`](crate::Store).
///
/// I/O failures name the operation and the file; the OS error is the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem call failed.
    #[error("failed to {op} {file}")]
    Io {
        /// What the store was doing (`"write"`, `"fsync"`, `"open"`, ...).
        op: &'static str,
        /// Segment file name (or `"store directory"`).
        file: String,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
    /// The disk quota ([`StoreConfig::max_bytes`](crate::StoreConfig::max_bytes)) is reached
    /// even after expired entries were reclaimed; the append was refused and nothing was stored.
    #[error("store quota exceeded: {used} of {max} bytes used, {needed} more needed")]
    QuotaExceeded {
        /// Bytes held by the store now.
        used: u64,
        /// Size of the refused record.
        needed: u64,
        /// The configured quota.
        max: u64,
    },
    /// A priority outside `0..=9`.
    #[error("invalid priority {0}: must be 0 (highest) to 9")]
    InvalidPriority(u8),
    /// An endpoint name longer than 65535 bytes.
    #[error("endpoint name is {len} bytes long, at most 65535 are allowed")]
    EndpointTooLong {
        /// Length of the refused name in bytes.
        len: usize,
    },
    /// A payload larger than [`MAX_PAYLOAD`](crate::MAX_PAYLOAD).
    #[error("payload is {len} bytes long, at most {max} are allowed")]
    PayloadTooLarge {
        /// Length of the refused payload.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A [`StoreConfig`](crate::StoreConfig) value that cannot work.
    #[error("invalid store config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// A record that passed recovery no longer matches its checksum when read back (bit rot,
    /// or the file was changed behind the store's back). The entry cannot be delivered; the
    /// caller may [`ack`](crate::Store::ack) `seq` to skip it.
    #[error("corrupt record for entry {seq} in segment {segment} at offset {offset}")]
    Corrupt {
        /// Segment id.
        segment: u32,
        /// Byte offset of the record in the segment.
        offset: u64,
        /// Sequence number of the entry whose record is corrupt.
        seq: u64,
    },
    /// More than `u32::MAX` segments were created over the store's life.
    #[error("segment ids are exhausted")]
    SegmentIdsExhausted,
}

impl StoreError {
    pub(crate) fn io(op: &'static str, file: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            op,
            file: file.into(),
            source,
        }
    }
}
