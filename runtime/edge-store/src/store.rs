//! [`Store`]: the durable queues over one shared segment log.
//!
//! # Invariants
//! - The log is the sequence of segments in id order; the last segment is the only one that
//!   receives records. Within the log, records are in the order the calls were made, so
//!   appends are in `seq` order and an ack or drop record always follows the appends it
//!   refers to.
//! - Nothing written after the last successful [`Store::sync`] is durable; everything before it
//!   is. A failed write or fsync leaves the segment `dirty` and the bytes in memory: the next
//!   sync cuts the file back to its durable length and writes them again (an fsync error is
//!   never retried on the assumption that the kernel still holds the data).
//! - Segments are synced in id order: a segment's data is durable before any byte of the next
//!   one is written, so after a crash only the last segment can have a torn tail.
//! - `Segment::live` equals the number of live index entries pointing into that segment, and
//!   `total_bytes` equals the sum of all segments' logical lengths.
//! - A segment is deleted only from the oldest end, only when it and every older segment hold
//!   no live entry and nothing unsynced, and only while a newer segment with a durable header
//!   exists (so the highest sequence number survives every crash, and sequence numbers keep
//!   increasing across restarts).
//!
//! # Head-of-line retention
//! One live entry pins its segment and, because deletion works from the oldest end, every
//! newer segment too, even if all their other entries were acknowledged. A queue whose sink is
//! away for long therefore holds disk space for every endpoint's traffic of that period. The
//! TTL bounds it: once the pinning entry expires, [`Store::expire`] drops it and the segments
//! go. Disk usage is thus at most about (traffic during the longest TTL) + one segment.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use tracing::{debug, error, warn};

use crate::clock::{Clock, SystemClock};
use crate::error::StoreError;
use crate::fs::{FileSystem, StdFs};
use crate::index::{EndpointQueues, IndexEntry, PRIORITIES};
use crate::record::{self, AppendFields, MAX_PAYLOAD, Record};
use crate::segment::{Segment, SegmentId};

/// Smallest accepted [`StoreConfig::segment_bytes`].
pub const MIN_SEGMENT_BYTES: u64 = 256;

/// The last segment keeps its write buffer between batches up to this capacity.
const KEEP_BUFFER: usize = 1024 * 1024;

/// Reads for one queue are merged into one `read_at` while the records are at most this far
/// apart...
const READ_GAP: u64 = 16 * 1024;
/// ...and the merged range stays below this size.
const READ_SPAN: u64 = 1024 * 1024;

/// How the store lays out and syncs its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Size at which a segment file is closed and a new one started (default 64 MiB; at least
    /// [`MIN_SEGMENT_BYTES`], at most `u32::MAX`). With a quota, segments are capped at a
    /// quarter of it so that acknowledged space is freed in reasonable steps.
    pub segment_bytes: u64,
    /// Disk quota in bytes over all segment files; `None` = unlimited.
    pub max_bytes: Option<u64>,
    /// Call fsync in [`Store::sync`] (default true). Off only for tests and benchmarks: without
    /// it a power cut can lose data the publisher was told is stored.
    pub fsync: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: None,
            fsync: true,
        }
    }
}

/// One queue: an endpoint (a module input, or `$upstream`) at one priority.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct QueueKey {
    /// Endpoint name, at most 65535 bytes.
    pub endpoint: String,
    /// 0 (highest) to 9 (lowest).
    pub priority: u8,
}

impl QueueKey {
    /// Builds a key.
    pub fn new(endpoint: impl Into<String>, priority: u8) -> Self {
        Self {
            endpoint: endpoint.into(),
            priority,
        }
    }
}

/// One stored message, as [`Store::read`] returns it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// Global sequence number, strictly increasing over all queues and across restarts.
    pub seq: u64,
    /// The queue it is in.
    pub key: QueueKey,
    /// Unix milliseconds after which it is dropped; `u64::MAX` = never.
    pub expires_at_ms: u64,
    /// Unix milliseconds when it was appended.
    pub appended_ms: u64,
    /// The message bytes.
    pub payload: Bytes,
}

/// What [`Store::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Live (unacknowledged, not dropped) entries recovered; expired ones are included until
    /// the first [`Store::expire`].
    pub entries: u64,
    /// Bytes of segment files kept.
    pub bytes: u64,
    /// Bytes cut from the torn tail of the last segment (records that were never synced).
    pub truncated_bytes: u64,
    /// Segment files kept.
    pub segments: usize,
    /// Bytes of older segments that failed their checksum and were skipped (data loss that
    /// crashes cannot cause: disk corruption or outside tampering; logged at ERROR).
    pub skipped_bytes: u64,
}

/// Durable store-and-forward queues over one checksummed, segmented append-only log.
///
/// One owner, synchronous: the hub runs it on a dedicated thread. Appends and acks are
/// buffered in memory and become durable together at the next [`sync`](Self::sync) (group
/// commit: one fsync for a whole batch over all endpoints). Dropping a `Store` does *not*
/// sync: it is the same as a crash.
///
/// # Invariants
/// Listed in the [module docs](self): log order, what is durable when, segments synced in
/// order, live counts, and when a segment may be deleted (head-of-line retention, bounded
/// by the TTL).
pub struct Store {
    pub(crate) fs: Box<dyn FileSystem>,
    pub(crate) clock: Box<dyn Clock>,
    pub(crate) config: StoreConfig,
    pub(crate) segments: BTreeMap<SegmentId, Segment>,
    pub(crate) next_segment: SegmentId,
    pub(crate) next_seq: u64,
    pub(crate) endpoints: HashMap<String, EndpointQueues>,
    pub(crate) pending_acks: HashMap<QueueKey, Vec<u64>>,
    pub(crate) total_bytes: u64,
    /// Segment files were removed since the directory was last synced.
    pub(crate) dir_dirty: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .field("segments", &self.segments.len())
            .field("next_seq", &self.next_seq)
            .field("total_bytes", &self.total_bytes)
            .finish_non_exhaustive()
    }
}

fn check_key(key: &QueueKey) -> Result<usize, StoreError> {
    if usize::from(key.priority) >= PRIORITIES {
        return Err(StoreError::InvalidPriority(key.priority));
    }
    if key.endpoint.len() > usize::from(u16::MAX) {
        return Err(StoreError::EndpointTooLong {
            len: key.endpoint.len(),
        });
    }
    Ok(usize::from(key.priority))
}

impl Store {
    /// Opens (or creates) the store in `dir` on the real filesystem and recovers its queues.
    ///
    /// # Errors
    /// See [`open_with`](Self::open_with); also when `dir` cannot be created.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<(Store, RecoveryReport), StoreError> {
        let fs =
            StdFs::new(dir).map_err(|e| StoreError::io("create", dir.display().to_string(), e))?;
        Self::open_with(fs, config)
    }

    /// Opens the store on any [`FileSystem`] and recovers its queues: scans every segment in
    /// order, verifies each record's checksum, rebuilds the index from appends minus acks and
    /// drops, and cuts a torn tail off the last segment. A bad record in an older segment is
    /// logged and the rest of that segment skipped ([`RecoveryReport::skipped_bytes`]).
    ///
    /// # Errors
    /// [`StoreError::InvalidConfig`]; [`StoreError::Io`] when listing, opening, reading or
    /// truncating fails.
    pub fn open_with(
        fs: impl FileSystem + 'static,
        config: StoreConfig,
    ) -> Result<(Store, RecoveryReport), StoreError> {
        Self::open_with_clock(fs, config, SystemClock)
    }

    /// [`open_with`](Self::open_with) with a clock other than the system's (tests, simulated
    /// time). The clock stamps appends and decides expiry when the quota is reached.
    ///
    /// # Errors
    /// As [`open_with`](Self::open_with).
    pub fn open_with_clock(
        fs: impl FileSystem + 'static,
        config: StoreConfig,
        clock: impl Clock + 'static,
    ) -> Result<(Store, RecoveryReport), StoreError> {
        if config.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(StoreError::InvalidConfig {
                reason: "segment_bytes is below the minimum of 256",
            });
        }
        if config.segment_bytes > u64::from(u32::MAX) {
            return Err(StoreError::InvalidConfig {
                reason: "segment_bytes is above 4 GiB",
            });
        }
        let mut store = Store {
            fs: Box::new(fs),
            clock: Box::new(clock),
            config,
            segments: BTreeMap::new(),
            next_segment: 1,
            next_seq: 1,
            endpoints: HashMap::new(),
            pending_acks: HashMap::new(),
            total_bytes: 0,
            dir_dirty: false,
        };
        let report = store.recover()?;
        Ok((store, report))
    }

    /// Appends a message to `key`'s queue and returns its sequence number. The entry is
    /// readable at once but durable only after the next successful [`sync`](Self::sync).
    ///
    /// # Errors
    /// [`StoreError::InvalidPriority`], [`StoreError::EndpointTooLong`],
    /// [`StoreError::PayloadTooLarge`]; [`StoreError::QuotaExceeded`] when the quota is reached
    /// even after expired entries were reclaimed (nothing is stored then);
    /// [`StoreError::Io`] only from the sync that retiring a fully acknowledged segment needs
    /// under a quota.
    pub fn append(
        &mut self,
        key: &QueueKey,
        expires_at_ms: u64,
        payload: &[u8],
    ) -> Result<u64, StoreError> {
        let priority = check_key(key)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(StoreError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let rec_len = record::append_len(key.endpoint.len(), payload.len()) as u64;
        self.ensure_quota(rec_len)?;
        let appended_ms = self.clock.now_ms();
        let seg_id = self.segment_for(rec_len)?;
        let seq = self.next_seq;
        let Some(seg) = self.segments.get_mut(&seg_id) else {
            return Err(missing_segment(seg_id, seq));
        };
        // `segment_for` keeps offsets below the segment size limit, which fits in u32.
        let offset = u32::try_from(seg.len()).map_err(|_| missing_segment(seg_id, seq))?;
        record::encode_append(
            &mut seg.unsynced,
            &AppendFields {
                seq,
                priority: key.priority,
                expires_at_ms,
                appended_ms,
                endpoint: &key.endpoint,
                payload,
            },
        );
        seg.live += 1;
        self.total_bytes += rec_len;
        self.next_seq += 1;
        let entry = IndexEntry {
            seq,
            expires_at_ms,
            appended_ms,
            segment: seg_id,
            offset,
            // Bounded by MAX_PAYLOAD + framing.
            len: u32::try_from(rec_len).unwrap_or(u32::MAX),
            dead: false,
        };
        let queues = match self.endpoints.get_mut(key.endpoint.as_str()) {
            Some(q) => q,
            None => self.endpoints.entry(key.endpoint.clone()).or_default(),
        };
        queues.by_priority[priority].push(entry);
        Ok(seq)
    }

    /// Writes and fsyncs everything appended, acked and dropped so far, then deletes segments
    /// that hold nothing live any more. Once it returns `Ok`, all of it survives a crash.
    ///
    /// # Errors
    /// [`StoreError::Io`] when a write, fsync, truncate or directory sync fails. Nothing is lost
    /// from memory: the next call writes the same bytes again.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.flush_acks()?;
        let fsync = self.config.fsync;
        if self.dir_dirty {
            if fsync {
                self.fs
                    .sync_dir()
                    .map_err(|e| StoreError::io("fsync", "store directory", e))?;
            }
            self.dir_dirty = false;
        }
        let last = self.segments.keys().next_back().copied();
        for seg in self.segments.values_mut() {
            if seg.is_settled() {
                continue;
            }
            let name = seg.name();
            let file = match &mut seg.file {
                Some(f) => f,
                None => seg.file.insert(
                    self.fs
                        .open(&name, true)
                        .map_err(|e| StoreError::io("create", name.clone(), e))?,
                ),
            };
            if seg.dirty {
                file.truncate(seg.durable_len)
                    .map_err(|e| StoreError::io("truncate", name.clone(), e))?;
            }
            // Until every step below succeeded, the file may hold bytes past `durable_len`
            // that the next attempt must cut before writing them again.
            seg.dirty = true;
            if !seg.unsynced.is_empty() {
                file.append(&seg.unsynced)
                    .map_err(|e| StoreError::io("write", name.clone(), e))?;
                if fsync {
                    file.sync()
                        .map_err(|e| StoreError::io("fsync", name.clone(), e))?;
                }
            }
            if !seg.dir_synced {
                if fsync {
                    self.fs
                        .sync_dir()
                        .map_err(|e| StoreError::io("fsync", "store directory", e))?;
                }
                seg.dir_synced = true;
            }
            seg.dirty = false;
            seg.durable_len += seg.unsynced.len() as u64;
            if Some(seg.id) == last && seg.unsynced.capacity() <= KEEP_BUFFER {
                seg.unsynced.clear(); // the next batch reuses the buffer
            } else {
                seg.unsynced = Vec::new();
            }
        }
        self.reclaim();
        Ok(())
    }

    /// Up to `max` unacknowledged entries of `key` that are not expired at `now_ms` and have
    /// `seq > after_seq`, in `seq` order. Includes appends not yet synced. Payloads are read
    /// from the segment files.
    ///
    /// # Errors
    /// [`StoreError::Io`] when reading fails; [`StoreError::Corrupt`] when a record no longer
    /// matches its checksum (ack its `seq` to skip it); [`StoreError::InvalidPriority`].
    pub fn read(
        &self,
        key: &QueueKey,
        after_seq: Option<u64>,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let priority = check_key(key)?;
        let Some(queues) = self.endpoints.get(key.endpoint.as_str()) else {
            return Ok(Vec::new());
        };
        let picked: Vec<IndexEntry> = queues.by_priority[priority]
            .live_after(after_seq)
            .filter(|e| e.expires_at_ms > now_ms)
            .take(max)
            .copied()
            .collect();
        let mut out = Vec::with_capacity(picked.len());
        let mut i = 0;
        while i < picked.len() {
            let first = picked[i];
            let seg = self
                .segments
                .get(&first.segment)
                .ok_or_else(|| missing_segment(first.segment, first.seq))?;
            let start = u64::from(first.offset);
            if start >= seg.durable_len {
                let from = usize::try_from(start - seg.durable_len).unwrap_or(usize::MAX);
                let rec = seg
                    .unsynced
                    .get(from..from.saturating_add(first.len as usize))
                    .ok_or_else(|| corrupt(&first))?;
                let payload = decode_payload(rec, &first)?;
                out.push(make_entry(key, &first, Bytes::copy_from_slice(payload)));
                i += 1;
                continue;
            }
            // Merge nearby durable records of the same segment into one read.
            let mut end = start + u64::from(first.len);
            let mut j = i + 1;
            while let Some(next) = picked.get(j) {
                let (n_start, n_end) = (
                    u64::from(next.offset),
                    u64::from(next.offset) + u64::from(next.len),
                );
                if next.segment != first.segment
                    || n_end > seg.durable_len
                    || n_start < end
                    || n_start - end > READ_GAP
                    || n_end - start > READ_SPAN
                {
                    break;
                }
                end = n_end;
                j += 1;
            }
            let file = seg.file.as_ref().ok_or_else(|| corrupt(&first))?;
            let mut buf = vec![0u8; usize::try_from(end - start).unwrap_or(usize::MAX)];
            file.read_at(start, &mut buf)
                .map_err(|e| StoreError::io("read", seg.name(), e))?;
            let buf = Bytes::from(buf);
            for e in &picked[i..j] {
                let from = usize::try_from(u64::from(e.offset) - start).unwrap_or(usize::MAX);
                let rec = buf
                    .get(from..from.saturating_add(e.len as usize))
                    .ok_or_else(|| corrupt(e))?;
                let payload_len = decode_payload(rec, e)?.len();
                let at = from + record::append_payload_offset(key.endpoint.len());
                out.push(make_entry(key, e, buf.slice(at..at + payload_len)));
            }
            i = j;
        }
        Ok(out)
    }

    /// Acknowledges entry `seq` of `key`: it is no longer returned by [`read`](Self::read) and
    /// its removal becomes durable at the next [`sync`](Self::sync) (an ack lost in a crash
    /// means the entry is delivered again: at-least-once). Acks may come in any order; acking
    /// an unknown, expired or already acked entry does nothing.
    ///
    /// # Errors
    /// [`StoreError::InvalidPriority`], [`StoreError::EndpointTooLong`].
    pub fn ack(&mut self, key: &QueueKey, seq: u64) -> Result<(), StoreError> {
        let priority = check_key(key)?;
        let Some(queues) = self.endpoints.get_mut(key.endpoint.as_str()) else {
            debug!(endpoint = %key.endpoint, seq, "Ack for an unknown queue ignored.");
            return Ok(());
        };
        let Some(entry) = queues.by_priority[priority].kill(seq) else {
            debug!(endpoint = %key.endpoint, seq, "Ack for an unknown entry ignored.");
            return Ok(());
        };
        dec_live(&mut self.segments, entry.segment);
        match self.pending_acks.get_mut(key) {
            Some(v) => v.push(seq),
            None => {
                self.pending_acks.insert(key.clone(), vec![seq]);
            }
        }
        Ok(())
    }

    /// Drops every entry expired at `now_ms` (`expires_at_ms <= now_ms`) and deletes segments
    /// that no longer hold a live entry. Returns how many entries each queue lost. Expiry is
    /// not logged: after a crash, expired entries come back and are dropped again.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(QueueKey, u64)> {
        let mut out = Vec::new();
        for (endpoint, queues) in &mut self.endpoints {
            for (priority, q) in queues.by_priority.iter_mut().enumerate() {
                let dropped = q.expire(now_ms, |e| dec_live(&mut self.segments, e.segment));
                if dropped > 0 {
                    // priority < PRIORITIES = 10.
                    let priority = u8::try_from(priority).unwrap_or(u8::MAX);
                    out.push((QueueKey::new(endpoint.clone(), priority), dropped));
                }
            }
        }
        out.sort();
        if !out.is_empty() {
            debug!(queues = out.len(), "Expired entries dropped.");
        }
        self.reclaim();
        out
    }

    /// Queues holding at least one live entry, sorted (by endpoint, then priority: serve an
    /// endpoint's queues in this order to get highest priority first).
    #[must_use]
    pub fn queues(&self) -> Vec<QueueKey> {
        let mut out = Vec::new();
        for (endpoint, queues) in &self.endpoints {
            for (priority, q) in queues.by_priority.iter().enumerate() {
                if q.live() > 0 {
                    let priority = u8::try_from(priority).unwrap_or(u8::MAX);
                    out.push(QueueKey::new(endpoint.clone(), priority));
                }
            }
        }
        out.sort();
        out
    }

    /// Live entries of `key` (unacknowledged and not yet dropped; may include expired entries
    /// until the next [`expire`](Self::expire)).
    #[must_use]
    pub fn len(&self, key: &QueueKey) -> usize {
        self.queue_front(key, |q| q.live()).unwrap_or(0)
    }

    /// Whether `key` has no live entry.
    #[must_use]
    pub fn is_empty(&self, key: &QueueKey) -> bool {
        self.len(key) == 0
    }

    /// Live entries over all queues.
    #[must_use]
    pub fn total_len(&self) -> usize {
        self.endpoints.values().map(EndpointQueues::live).sum()
    }

    /// Sequence number of `key`'s oldest live entry.
    #[must_use]
    pub fn oldest(&self, key: &QueueKey) -> Option<u64> {
        self.queue_front(key, |q| q.front().map(|e| e.seq))
            .flatten()
    }

    /// Append time (unix ms) of `key`'s oldest live entry, for queue-age metrics.
    #[must_use]
    pub fn oldest_appended_ms(&self, key: &QueueKey) -> Option<u64> {
        self.queue_front(key, |q| q.front().map(|e| e.appended_ms))
            .flatten()
    }

    /// Bytes held by the store: all segment files plus what waits for the next sync. This is
    /// what [`StoreConfig::max_bytes`] limits.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Drops every entry of `endpoint` (all priorities), e.g. when a new deployment removed
    /// it; durable at the next [`sync`](Self::sync). Returns how many live entries were
    /// dropped. Entries appended to the endpoint afterwards are kept.
    pub fn remove_queue(&mut self, endpoint: &str) -> u64 {
        let Some(queues) = self.endpoints.remove(endpoint) else {
            return 0;
        };
        let mut dropped = 0u64;
        for q in &queues.by_priority {
            q.for_each_live(|e| {
                dec_live(&mut self.segments, e.segment);
                dropped += 1;
            });
        }
        let up_to = self.next_seq - 1;
        let mut rec = Vec::new();
        record::encode_drop(&mut rec, endpoint, up_to);
        if let Err(e) = self.write_meta(&rec) {
            // Only segment-id exhaustion gets here; the drop then lasts until a restart.
            error!(endpoint, error = %e, "Cannot log the removal of a queue.");
        }
        debug!(endpoint, dropped, "Queue removed.");
        dropped
    }

    fn queue_front<T>(
        &self,
        key: &QueueKey,
        f: impl FnOnce(&crate::index::Queue) -> T,
    ) -> Option<T> {
        let priority = usize::from(key.priority);
        let queues = self.endpoints.get(key.endpoint.as_str())?;
        queues.by_priority.get(priority).map(f)
    }

    /// The effective segment size limit.
    fn segment_limit(&self) -> u64 {
        match self.config.max_bytes {
            Some(max) => self
                .config
                .segment_bytes
                .min((max / 4).max(MIN_SEGMENT_BYTES)),
            None => self.config.segment_bytes,
        }
    }

    /// The segment a record of `rec_len` bytes goes to; starts a new one when the last is
    /// full (a segment holding only its header takes any record).
    fn segment_for(&mut self, rec_len: u64) -> Result<SegmentId, StoreError> {
        let limit = self.segment_limit();
        if let Some(seg) = self.segments.values().next_back()
            && (seg.len() <= record::HEADER_LEN as u64 || seg.len() + rec_len <= limit)
        {
            return Ok(seg.id);
        }
        self.roll()
    }

    /// Starts a new segment (in memory; the file is created by the next sync).
    pub(crate) fn roll(&mut self) -> Result<SegmentId, StoreError> {
        let id = self.next_segment;
        self.next_segment = id.checked_add(1).ok_or(StoreError::SegmentIdsExhausted)?;
        let mut seg = Segment::new(id);
        record::encode_header(&mut seg.unsynced, id, self.next_seq);
        self.total_bytes += seg.len();
        self.segments.insert(id, seg);
        debug!(segment = id, "Segment started.");
        Ok(id)
    }

    /// Appends a non-entry record (ack, drop); these are exempt from the quota so that
    /// consumers can always make progress.
    fn write_meta(&mut self, rec: &[u8]) -> Result<(), StoreError> {
        let rec_len = rec.len() as u64;
        let id = self.segment_for(rec_len)?;
        if let Some(seg) = self.segments.get_mut(&id) {
            seg.unsynced.extend_from_slice(rec);
            self.total_bytes += rec_len;
        }
        Ok(())
    }

    fn flush_acks(&mut self) -> Result<(), StoreError> {
        if self.pending_acks.is_empty() {
            return Ok(());
        }
        let mut rec = Vec::new();
        for (key, seqs) in std::mem::take(&mut self.pending_acks) {
            for chunk in seqs.chunks(record::MAX_ACKS_PER_RECORD) {
                rec.clear();
                record::encode_ack(&mut rec, key.priority, &key.endpoint, chunk);
                self.write_meta(&rec)?;
            }
        }
        Ok(())
    }

    /// Makes room for `needed` more bytes under the quota: reclaims expired entries, then
    /// retires a fully acknowledged last segment.
    fn ensure_quota(&mut self, needed: u64) -> Result<(), StoreError> {
        let Some(max) = self.config.max_bytes else {
            return Ok(());
        };
        if self.total_bytes + needed <= max {
            return Ok(());
        }
        let now = self.clock.now_ms();
        self.expire(now);
        if self.total_bytes + needed > max
            && self.segments.values().all(|s| s.live == 0)
            && self
                .segments
                .values()
                .next_back()
                .is_some_and(|s| s.len() > record::HEADER_LEN as u64)
        {
            // Everything is acknowledged but the last segment is never deleted: start a new
            // one, make its header durable, and let the old ones go.
            self.roll()?;
            self.sync()?;
        }
        if self.total_bytes + needed <= max {
            return Ok(());
        }
        warn!(
            used = self.total_bytes,
            needed, max, "Store quota exceeded; append refused."
        );
        Err(StoreError::QuotaExceeded {
            used: self.total_bytes,
            needed,
            max,
        })
    }

    /// Deletes segments from the oldest end while they hold nothing live (see the invariants).
    pub(crate) fn reclaim(&mut self) {
        loop {
            let mut it = self.segments.values();
            let (Some(first), Some(second)) = (it.next(), it.next()) else {
                return;
            };
            if first.live > 0
                || !first.is_settled()
                || second.durable_len == 0
                || !second.dir_synced
            {
                return;
            }
            let (id, len) = (first.id, first.len());
            let name = first.name();
            if let Some(mut seg) = self.segments.remove(&id) {
                seg.file = None;
                if let Err(e) = self.fs.remove(&name) {
                    warn!(segment = %name, error = %e, "Cannot delete a spent segment; will retry.");
                    self.segments.insert(id, seg);
                    return;
                }
            }
            self.total_bytes -= len;
            self.dir_dirty = true;
            debug!(segment = id, bytes = len, "Segment deleted.");
        }
    }
}

fn dec_live(segments: &mut BTreeMap<SegmentId, Segment>, id: SegmentId) {
    if let Some(seg) = segments.get_mut(&id) {
        seg.live = seg.live.saturating_sub(1);
    }
}

fn corrupt(e: &IndexEntry) -> StoreError {
    StoreError::Corrupt {
        segment: e.segment,
        offset: u64::from(e.offset),
        seq: e.seq,
    }
}

fn missing_segment(segment: SegmentId, seq: u64) -> StoreError {
    StoreError::Corrupt {
        segment,
        offset: 0,
        seq,
    }
}

/// Verifies the record of `e` and returns its payload.
fn decode_payload<'a>(rec: &'a [u8], e: &IndexEntry) -> Result<&'a [u8], StoreError> {
    match record::decode(rec) {
        Ok((Record::Append { seq, payload, .. }, n)) if seq == e.seq && n == rec.len() => {
            Ok(payload)
        }
        _ => {
            error!(
                segment = e.segment,
                offset = e.offset,
                seq = e.seq,
                "Stored record fails its checksum."
            );
            Err(corrupt(e))
        }
    }
}

fn make_entry(key: &QueueKey, e: &IndexEntry, payload: Bytes) -> Entry {
    Entry {
        seq: e.seq,
        key: key.clone(),
        expires_at_ms: e.expires_at_ms,
        appended_ms: e.appended_ms,
        payload,
    }
}
