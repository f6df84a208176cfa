//! One segment file of the log and its write state.
//!
//! # Invariants
//! - Bytes `[0, durable_len)` are in the file and synced (or were found there by recovery);
//!   `unsynced` holds the bytes that follow, which are not yet durable. Both regions hold whole
//!   records only.
//! - `dirty` means the file may hold garbage past `durable_len` (a failed write or fsync): it
//!   is cut back to `durable_len` before anything else is written.
//! - `live` counts the index entries whose record is in this segment.

use crate::fs::StoreFile;

/// A segment's id is its position in the log; file names sort by id.
pub(crate) type SegmentId = u32;

const SUFFIX: &str = ".seg";

/// File name of segment `id`: ten decimal digits and `.seg`.
pub(crate) fn file_name(id: SegmentId) -> String {
    format!("{id:010}{SUFFIX}")
}

/// The id of a segment file name, or `None` for any other file.
pub(crate) fn parse_file_name(name: &str) -> Option<SegmentId> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) struct Segment {
    pub(crate) id: SegmentId,
    /// `None` until the file is created by the first sync that writes to it.
    pub(crate) file: Option<Box<dyn StoreFile>>,
    pub(crate) durable_len: u64,
    pub(crate) unsynced: Vec<u8>,
    pub(crate) dirty: bool,
    /// The file's name is durable (directory synced after creation).
    pub(crate) dir_synced: bool,
    pub(crate) live: u64,
}

impl Segment {
    /// A segment that exists only in memory so far.
    pub(crate) fn new(id: SegmentId) -> Self {
        Self {
            id,
            file: None,
            durable_len: 0,
            unsynced: Vec::new(),
            dirty: false,
            dir_synced: false,
            live: 0,
        }
    }

    /// Logical length: durable plus unsynced bytes.
    pub(crate) fn len(&self) -> u64 {
        self.durable_len + self.unsynced.len() as u64
    }

    pub(crate) fn name(&self) -> String {
        file_name(self.id)
    }

    /// Nothing left to write or fix for this segment.
    pub(crate) fn is_settled(&self) -> bool {
        self.unsynced.is_empty() && !self.dirty && self.dir_synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_ignored() {
        assert_eq!(file_name(42), "0000000042.seg");
        assert_eq!(parse_file_name("0000000042.seg"), Some(42));
        assert_eq!(parse_file_name(&file_name(u32::MAX)), Some(u32::MAX));
        for other in [
            "42.seg",
            "000000004x.seg",
            "0000000042.tmp",
            "9999999999.seg",
            "",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }
}
