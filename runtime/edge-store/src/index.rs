//! The in-memory index: per queue, where each unacknowledged entry's record lives.
//!
//! Payloads are not kept in memory; an [`IndexEntry`] is 40 bytes, so a million queued
//! messages cost about 40 MB of index whatever their size.
//!
//! # Invariants
//! - A [`Queue`]'s entries are in strictly increasing `seq` order.
//! - `live` is the number of entries not marked `dead`.
//! - The front entry, if any, is live (dead entries at the front are popped at once); dead
//!   entries further in wait until they reach the front or a compaction.
//! - `min_expiry` is at most the smallest `expires_at_ms` of the live entries (a lower bound,
//!   so `expire` can skip a queue with nothing due).

use std::collections::VecDeque;

/// Number of priorities (0 = highest .. 9 = lowest).
pub const PRIORITIES: usize = 10;

/// Where one entry's record lives, and the metadata needed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) seq: u64,
    pub(crate) expires_at_ms: u64,
    pub(crate) appended_ms: u64,
    pub(crate) segment: u32,
    pub(crate) offset: u32,
    pub(crate) len: u32,
    pub(crate) dead: bool,
}

/// One queue (endpoint + priority).
#[derive(Debug)]
pub(crate) struct Queue {
    entries: VecDeque<IndexEntry>,
    live: usize,
    min_expiry: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            live: 0,
            min_expiry: u64::MAX,
        }
    }
}

impl Queue {
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// The last seq ever pushed that is still held (live or dead), if any.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.entries.back().map(|e| e.seq)
    }

    /// Adds an entry; `entry.seq` must be above every seq in the queue (the caller checks).
    pub(crate) fn push(&mut self, entry: IndexEntry) {
        debug_assert!(self.last_seq().is_none_or(|s| s < entry.seq));
        self.min_expiry = self.min_expiry.min(entry.expires_at_ms);
        self.live += 1;
        self.entries.push_back(entry);
    }

    /// Marks `seq` dead; returns the entry if it was live.
    pub(crate) fn kill(&mut self, seq: u64) -> Option<IndexEntry> {
        let i = self.entries.partition_point(|e| e.seq < seq);
        let e = self
            .entries
            .get_mut(i)
            .filter(|e| e.seq == seq && !e.dead)?;
        e.dead = true;
        let out = *e;
        self.live -= 1;
        self.tidy();
        Some(out)
    }

    /// Marks every live entry expired at `now_ms` dead, calling `on_dead` for each.
    pub(crate) fn expire(&mut self, now_ms: u64, mut on_dead: impl FnMut(&IndexEntry)) -> u64 {
        if self.min_expiry > now_ms {
            return 0;
        }
        let mut dropped = 0;
        let mut min = u64::MAX;
        for e in self.entries.iter_mut().filter(|e| !e.dead) {
            if e.expires_at_ms <= now_ms {
                e.dead = true;
                on_dead(e);
                dropped += 1;
            } else {
                min = min.min(e.expires_at_ms);
            }
        }
        self.min_expiry = min;
        self.live -= usize::try_from(dropped)
            .unwrap_or(usize::MAX)
            .min(self.live);
        self.tidy();
        dropped
    }

    /// Marks every live entry with `seq <= up_to` dead, calling `on_dead` for each.
    pub(crate) fn drop_up_to(&mut self, up_to: u64, mut on_dead: impl FnMut(&IndexEntry)) -> u64 {
        let mut dropped = 0;
        for e in self.entries.iter_mut() {
            if e.seq > up_to {
                break;
            }
            if !e.dead {
                e.dead = true;
                on_dead(e);
                dropped += 1;
            }
        }
        self.live -= usize::try_from(dropped)
            .unwrap_or(usize::MAX)
            .min(self.live);
        self.tidy();
        dropped
    }

    /// Calls `f` for every live entry, oldest first.
    pub(crate) fn for_each_live(&self, mut f: impl FnMut(&IndexEntry)) {
        self.entries.iter().filter(|e| !e.dead).for_each(&mut f);
    }

    /// Live entries with `seq > after`, oldest first.
    pub(crate) fn live_after(&self, after: Option<u64>) -> impl Iterator<Item = &IndexEntry> {
        let start = after.map_or(0, |a| self.entries.partition_point(|e| e.seq <= a));
        self.entries.range(start..).filter(|e| !e.dead)
    }

    /// The oldest live entry.
    pub(crate) fn front(&self) -> Option<&IndexEntry> {
        self.entries.front()
    }

    /// Restores the front invariant and compacts when dead entries dominate.
    pub(crate) fn tidy(&mut self) {
        while self.entries.front().is_some_and(|e| e.dead) {
            self.entries.pop_front();
        }
        let dead = self.entries.len() - self.live;
        if dead >= 64 && dead > self.live {
            self.entries.retain(|e| !e.dead);
            self.entries.shrink_to_fit();
        }
        if self.live == 0 {
            self.min_expiry = u64::MAX;
        }
    }
}

/// The queues of one endpoint, one per priority.
#[derive(Debug, Default)]
pub(crate) struct EndpointQueues {
    pub(crate) by_priority: [Queue; PRIORITIES],
}

impl EndpointQueues {
    pub(crate) fn live(&self) -> usize {
        self.by_priority.iter().map(Queue::live).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64, exp: u64) -> IndexEntry {
        IndexEntry {
            seq,
            expires_at_ms: exp,
            appended_ms: 0,
            segment: 1,
            offset: 0,
            len: 1,
            dead: false,
        }
    }

    fn seqs(q: &Queue) -> Vec<u64> {
        q.live_after(None).map(|e| e.seq).collect()
    }

    #[test]
    fn an_index_entry_stays_small() {
        // 1M queued messages must cost tens of MB, not the payloads.
        assert!(std::mem::size_of::<IndexEntry>() <= 40);
    }

    #[test]
    fn out_of_order_kills_keep_order_and_front_invariant() {
        let mut q = Queue::default();
        for s in [2, 4, 6, 8] {
            q.push(e(s, u64::MAX));
        }
        assert_eq!(q.kill(6).map(|e| e.seq), Some(6));
        assert_eq!(q.kill(6), None, "double kill");
        assert_eq!(q.kill(5), None, "unknown seq");
        assert_eq!(seqs(&q), vec![2, 4, 8]);
        q.kill(2);
        assert_eq!(q.front().map(|e| e.seq), Some(4));
        assert_eq!(q.live(), 2);
        assert_eq!(
            q.live_after(Some(4)).map(|e| e.seq).collect::<Vec<_>>(),
            vec![8]
        );
        assert_eq!(
            q.live_after(Some(3)).map(|e| e.seq).collect::<Vec<_>>(),
            vec![4, 8]
        );
    }

    #[test]
    fn expire_and_drop_count_only_live() {
        let mut q = Queue::default();
        q.push(e(1, 10));
        q.push(e(2, 30));
        q.push(e(3, 20));
        q.push(e(4, u64::MAX));
        assert_eq!(q.expire(5, |_| {}), 0);
        let mut n = 0;
        assert_eq!(q.expire(20, |_| n += 1), 2);
        assert_eq!(n, 2);
        assert_eq!(seqs(&q), vec![2, 4]);
        assert_eq!(q.drop_up_to(3, |_| {}), 1);
        assert_eq!(seqs(&q), vec![4]);
        assert_eq!(q.live(), 1);
    }

    #[test]
    fn compaction_keeps_live_entries() {
        let mut q = Queue::default();
        for s in 1..=300 {
            q.push(e(s, u64::MAX));
        }
        for s in (2..=300).filter(|s| s % 3 != 0) {
            q.kill(s);
        }
        assert_eq!(q.live(), 101);
        assert!(q.entries.len() < 200, "compacted: {}", q.entries.len());
        assert_eq!(seqs(&q)[..3], [1, 3, 6]);
    }
}
