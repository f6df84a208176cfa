//! Recovery: rebuild the index from the segment files.
//!
//! Segments are scanned in id order in chunks of [`CHUNK`] bytes. Every record's checksum is
//! verified; appends add index entries, acks and drops remove them. At the first bad record:
//! - in the last segment, it is a torn tail (a write that never completed its sync): the file is
//!   cut there and synced, and appends continue at that point;
//! - in an older segment, it cannot come from a crash (a segment is synced before the next one
//!   is written): it is reported at ERROR level, the rest of that segment is skipped, and the
//!   segment is kept until it is the oldest and holds nothing live.
//!
//! If the segment that ends up last holds skipped bytes, a new segment is started so that no
//! record is ever written after garbage.

use std::io;

use tracing::{error, info, warn};

use crate::error::StoreError;
use crate::fs::StoreFile;
use crate::index::{IndexEntry, PRIORITIES};
use crate::record::{self, FRAME, FrameError, Record};
use crate::segment::{Segment, SegmentId, file_name, parse_file_name};
use crate::store::{RecoveryReport, Store};

/// Bytes read from a segment file at a time during recovery.
const CHUNK: u64 = 4 * 1024 * 1024;

/// A window onto a segment file, refilled as the scan moves on.
struct Scanner<'f> {
    file: &'f dyn StoreFile,
    file_len: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl Scanner<'_> {
    /// Bytes `[offset, offset + need)`, or `None` when they extend past the end of the file.
    fn get(&mut self, offset: u64, need: usize) -> io::Result<Option<&[u8]>> {
        let need64 = need as u64;
        let Some(end) = offset.checked_add(need64).filter(|&e| e <= self.file_len) else {
            return Ok(None);
        };
        if offset < self.buf_start || end > self.buf_start + self.buf.len() as u64 {
            let len = need64.max(CHUNK).min(self.file_len - offset);
            self.buf
                .resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
            self.file.read_at(offset, &mut self.buf)?;
            self.buf_start = offset;
        }
        let rel = usize::try_from(offset - self.buf_start).unwrap_or(usize::MAX);
        Ok(self.buf.get(rel..rel + need))
    }
}

/// Why a segment's scan stopped before its end.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Frame(FrameError),
    /// A valid frame in the wrong place or with impossible fields.
    Misplaced,
}

impl Stop {
    fn reason(self) -> &'static str {
        match self {
            Stop::Frame(FrameError::Short) => "record extends past the end of the file",
            Stop::Frame(FrameError::BadLength) => "impossible record length",
            Stop::Frame(FrameError::Checksum) => "checksum mismatch",
            Stop::Frame(FrameError::BadBody) => "malformed record body",
            Stop::Misplaced => "record out of place",
        }
    }
}

/// State carried across segments during one recovery.
#[derive(Default)]
struct Progress {
    last_seq: u64,
    max_base: u64,
}

impl Store {
    /// Scans all segments and rebuilds the in-memory state. Called once by `open`.
    pub(crate) fn recover(&mut self) -> Result<RecoveryReport, StoreError> {
        let names = self
            .fs
            .list()
            .map_err(|e| StoreError::io("list", "store directory", e))?;
        let mut ids: Vec<SegmentId> = names.iter().filter_map(|n| parse_file_name(n)).collect();
        ids.sort_unstable();
        let mut report = RecoveryReport::default();
        let mut progress = Progress::default();
        let mut garbage_in: Option<SegmentId> = None;
        let last_id = ids.last().copied();
        for &id in &ids {
            let name = file_name(id);
            let mut file = self
                .fs
                .open(&name, false)
                .map_err(|e| StoreError::io("open", name.clone(), e))?;
            let file_len = file
                .size()
                .map_err(|e| StoreError::io("stat", name.clone(), e))?;
            let mut seg = Segment::new(id);
            seg.dir_synced = true;
            self.segments.insert(id, seg);
            let (valid_end, stop) = self
                .scan(id, &*file, file_len, &mut progress)
                .map_err(|e| StoreError::io("read", name.clone(), e))?;
            let mut durable_len = file_len;
            if let Some(stop) = stop {
                let bad = file_len - valid_end;
                if Some(id) == last_id {
                    warn!(segment = %name, offset = valid_end, bytes = bad, reason = stop.reason(),
                        "Torn tail of the last segment cut off.");
                    report.truncated_bytes += bad;
                    if valid_end == 0 {
                        // Not even a header survived: the segment never held a synced record.
                        drop(file);
                        self.segments.remove(&id);
                        self.fs
                            .remove(&name)
                            .map_err(|e| StoreError::io("remove", name.clone(), e))?;
                        continue;
                    }
                    file.truncate(valid_end)
                        .map_err(|e| StoreError::io("truncate", name.clone(), e))?;
                    if self.config.fsync {
                        file.sync()
                            .map_err(|e| StoreError::io("fsync", name.clone(), e))?;
                    }
                    durable_len = valid_end;
                } else {
                    error!(segment = %name, offset = valid_end, bytes = bad, reason = stop.reason(),
                        "Corrupt record in an older segment; the rest of the segment is skipped.");
                    report.skipped_bytes += bad;
                    garbage_in = Some(id);
                }
            }
            if let Some(seg) = self.segments.get_mut(&id) {
                seg.file = Some(file);
                seg.durable_len = durable_len;
            }
        }

        if let Some(&max_id) = ids.last() {
            self.next_segment = max_id
                .checked_add(1)
                .ok_or(StoreError::SegmentIdsExhausted)?;
        }
        self.next_seq = (progress.last_seq + 1).max(progress.max_base).max(1);
        self.endpoints.retain(|_, q| {
            q.by_priority.iter_mut().for_each(crate::index::Queue::tidy);
            q.live() > 0
        });
        self.total_bytes = self.segments.values().map(Segment::len).sum();
        if garbage_in.is_some() && self.segments.keys().next_back() == garbage_in.as_ref() {
            // Never append after bytes that recovery skipped.
            self.roll()?;
        }
        self.reclaim();

        report.entries = self.total_len() as u64;
        report.bytes = self.total_bytes;
        report.segments = self.segments.len();
        info!(
            entries = report.entries,
            bytes = report.bytes,
            segments = report.segments,
            truncated_bytes = report.truncated_bytes,
            skipped_bytes = report.skipped_bytes,
            next_seq = self.next_seq,
            "Store recovered."
        );
        Ok(report)
    }

    /// Scans one segment, applying its records. Returns the end of the last valid record and
    /// why the scan stopped early, if it did.
    fn scan(
        &mut self,
        id: SegmentId,
        file: &dyn StoreFile,
        file_len: u64,
        progress: &mut Progress,
    ) -> io::Result<(u64, Option<Stop>)> {
        let mut sc = Scanner {
            file,
            file_len,
            buf: Vec::new(),
            buf_start: 0,
        };
        if file_len == 0 {
            // Created, but not even the header was written.
            return Ok((0, Some(Stop::Frame(FrameError::Short))));
        }
        let mut offset = 0u64;
        while offset < file_len {
            let Some(head) = sc.get(offset, FRAME)? else {
                return Ok((offset, Some(Stop::Frame(FrameError::Short))));
            };
            let body_len = match record::body_len(head) {
                Ok(n) => n,
                Err(e) => return Ok((offset, Some(Stop::Frame(e)))),
            };
            let Some(frame) = sc.get(offset, FRAME + body_len)? else {
                return Ok((offset, Some(Stop::Frame(FrameError::Short))));
            };
            let (rec, n) = match record::decode(frame) {
                Ok(r) => r,
                Err(e) => return Ok((offset, Some(Stop::Frame(e)))),
            };
            if !self.apply(id, offset, n, &rec, progress) {
                return Ok((offset, Some(Stop::Misplaced)));
            }
            offset += n as u64;
        }
        Ok((offset, None))
    }

    /// Applies one recovered record; `false` if it cannot be valid here.
    fn apply(
        &mut self,
        id: SegmentId,
        offset: u64,
        len: usize,
        rec: &Record<'_>,
        progress: &mut Progress,
    ) -> bool {
        if offset == 0 {
            return match *rec {
                Record::Header { segment, base_seq } if segment == id => {
                    progress.max_base = progress.max_base.max(base_seq);
                    true
                }
                _ => false,
            };
        }
        match *rec {
            Record::Header { .. } => false,
            Record::Append {
                seq,
                priority,
                expires_at_ms,
                appended_ms,
                endpoint,
                ..
            } => {
                let (Ok(offset), Ok(len)) = (u32::try_from(offset), u32::try_from(len)) else {
                    return false;
                };
                if usize::from(priority) >= PRIORITIES {
                    return false;
                }
                if seq <= progress.last_seq {
                    warn!(
                        segment = id,
                        offset, seq, "Out-of-order append record ignored."
                    );
                    return true;
                }
                progress.last_seq = seq;
                let queues = match self.endpoints.get_mut(endpoint) {
                    Some(q) => q,
                    None => self.endpoints.entry(endpoint.to_owned()).or_default(),
                };
                queues.by_priority[usize::from(priority)].push(IndexEntry {
                    seq,
                    expires_at_ms,
                    appended_ms,
                    segment: id,
                    offset,
                    len,
                    dead: false,
                });
                if let Some(seg) = self.segments.get_mut(&id) {
                    seg.live += 1;
                }
                true
            }
            Record::Ack {
                priority, endpoint, ..
            } => {
                let Some(q) = self
                    .endpoints
                    .get_mut(endpoint)
                    .and_then(|q| q.by_priority.get_mut(usize::from(priority)))
                else {
                    return true;
                };
                for seq in rec.ack_seqs() {
                    if let Some(e) = q.kill(seq)
                        && let Some(seg) = self.segments.get_mut(&e.segment)
                    {
                        seg.live = seg.live.saturating_sub(1);
                    }
                }
                true
            }
            Record::Drop {
                up_to_seq,
                endpoint,
            } => {
                if let Some(queues) = self.endpoints.get_mut(endpoint) {
                    for q in &mut queues.by_priority {
                        q.drop_up_to(up_to_seq, |e| {
                            if let Some(seg) = self.segments.get_mut(&e.segment) {
                                seg.live = seg.live.saturating_sub(1);
                            }
                        });
                    }
                }
                true
            }
        }
    }
}
