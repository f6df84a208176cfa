//! Model-based property test: random sequences of append / ack / sync / expire / remove /
//! injected failures / crash-and-reopen against [`MemFs`], compared with a plain in-memory
//! model after every step.
//!
//! After a crash, every entry whose append was synced and whose ack (or removal) was not, and
//! that has not expired, must be back, in order, with its payload; nothing whose ack was synced
//! may reappear; nothing that was never appended may appear.

use proptest::prelude::*;

use super::{T0, config, key};
use crate::testing::{FsOp, ManualClock, MemFs};
use crate::{QueueKey, Store};

const ENDPOINTS: [&str; 2] = ["mod-a/input1", "$upstream"];
const PRIOS: [u8; 2] = [0, 5];
const SEGMENT: u64 = 400;

fn queue(i: usize) -> QueueKey {
    key(ENDPOINTS[i / 2], PRIOS[i % 2])
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        q: usize,
        ttl: Option<u64>,
        len: usize,
    },
    Ack {
        q: usize,
        pick: prop::sample::Index,
    },
    Sync,
    Tick(u64),
    Expire,
    Remove(usize),
    Fail(FsOp),
    FailPartial(usize),
    Crash {
        torn: bool,
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..4usize, prop::option::of(1..60u64), 0..90usize)
            .prop_map(|(q, ttl, len)| Op::Append { q, ttl, len }),
        5 => (0..4usize, any::<prop::sample::Index>()).prop_map(|(q, pick)| Op::Ack { q, pick }),
        4 => Just(Op::Sync),
        2 => (1..25u64).prop_map(Op::Tick),
        1 => Just(Op::Expire),
        1 => (0..2usize).prop_map(Op::Remove),
        2 => prop_oneof![
            Just(FsOp::Write),
            Just(FsOp::Sync),
            Just(FsOp::SyncDir),
            Just(FsOp::Open),
            Just(FsOp::Truncate),
            Just(FsOp::Remove),
        ]
        .prop_map(Op::Fail),
        1 => (0..60usize).prop_map(Op::FailPartial),
        2 => (any::<bool>(), any::<u64>()).prop_map(|(torn, seed)| Op::Crash { torn, seed }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// In the store.
    No,
    /// Acked or removed, not yet synced: may come back after a crash.
    Pending,
    /// Acked or removed and synced: must never come back.
    Durable,
    /// Dropped by `expire` (not logged; expired for good since time only moves forward).
    Expired,
}

#[derive(Debug, Clone)]
struct ModelEntry {
    seq: u64,
    q: usize,
    expires: u64,
    payload: Vec<u8>,
    durable: bool,
    gone: Gone,
}

struct Harness {
    fs: MemFs,
    clock: ManualClock,
    store: Option<Store>,
    model: Vec<ModelEntry>,
    /// Highest seq whose append is known durable: new seqs must be above it.
    max_durable_seq: u64,
}

impl Harness {
    fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("store open")
    }

    fn now(&self) -> u64 {
        crate::Clock::now_ms(&self.clock)
    }

    fn live(&self, q: usize) -> impl Iterator<Item = &ModelEntry> {
        self.model
            .iter()
            .filter(move |e| e.q == q && e.gone == Gone::No)
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Append { q, ttl, len } => {
                let expires = ttl.map_or(u64::MAX, |t| self.now() + t);
                let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ (q as u8 * 31)).collect();
                let seq = self.store().append(&queue(q), expires, &payload).unwrap();
                prop_assert!(seq > self.max_durable_seq);
                prop_assert!(self.model.iter().all(|e| e.seq < seq));
                self.model.push(ModelEntry {
                    seq,
                    q,
                    expires,
                    payload,
                    durable: false,
                    gone: Gone::No,
                });
            }
            Op::Ack { q, pick } => {
                let candidates: Vec<u64> = self
                    .model
                    .iter()
                    .filter(|e| e.q == q)
                    .map(|e| e.seq)
                    .collect();
                if candidates.is_empty() {
                    return Ok(());
                }
                let seq = *pick.get(&candidates);
                self.store().ack(&queue(q), seq).unwrap();
                if let Some(e) = self.model.iter_mut().find(|e| e.seq == seq)
                    && e.gone == Gone::No
                {
                    e.gone = Gone::Pending;
                }
            }
            Op::Sync => {
                if self.store().sync().is_ok() {
                    for e in &mut self.model {
                        e.durable = true;
                        self.max_durable_seq = self.max_durable_seq.max(e.seq);
                        if e.gone == Gone::Pending {
                            e.gone = Gone::Durable;
                        }
                    }
                    self.model.retain(|e| e.gone != Gone::Durable);
                    let disk: u64 = self
                        .fs
                        .file_names()
                        .iter()
                        .map(|n| self.fs.contents(n).map_or(0, |c| c.len() as u64))
                        .sum();
                    prop_assert_eq!(self.store().total_bytes(), disk);
                }
            }
            Op::Tick(ms) => self.clock.advance(ms),
            Op::Expire => {
                let now = self.now();
                let got = self.store().expire(now);
                let mut want = Vec::new();
                for q in 0..4 {
                    let n = self.live(q).filter(|e| e.expires <= now).count() as u64;
                    if n > 0 {
                        want.push((queue(q), n));
                    }
                }
                want.sort();
                prop_assert_eq!(got, want);
                for e in &mut self.model {
                    if e.gone == Gone::No && e.expires <= now {
                        e.gone = Gone::Expired;
                    }
                }
            }
            Op::Remove(ep) => {
                let dropped = self.store().remove_queue(ENDPOINTS[ep]);
                let mut n = 0;
                for e in &mut self.model {
                    if e.q / 2 == ep && e.gone == Gone::No {
                        e.gone = Gone::Pending;
                        n += 1;
                    }
                }
                prop_assert_eq!(dropped, n);
            }
            Op::Fail(fs_op) => self.fs.fail_next(fs_op),
            Op::FailPartial(keep) => self.fs.fail_next_write_partial(keep),
            Op::Crash { torn, seed } => {
                self.store = None;
                if torn {
                    let mut x = seed | 1;
                    self.fs.crash_torn(|_, len| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        usize::try_from(x % (len as u64 + 1)).unwrap_or(0)
                    });
                } else {
                    self.fs.crash();
                }
                self.reopen()?;
            }
        }
        self.check()
    }

    /// Reopens and reconciles the model with what survived.
    fn reopen(&mut self) -> Result<(), TestCaseError> {
        let (store, report) =
            Store::open_with_clock(self.fs.clone(), config(SEGMENT), self.clock.clone())
                .map_err(|e| TestCaseError::fail(format!("reopen: {e}")))?;
        prop_assert_eq!(
            report.skipped_bytes,
            0,
            "a crash never corrupts older segments"
        );
        prop_assert_eq!(report.entries, store.total_len() as u64);
        self.store = Some(store);
        let now = self.now();
        for q in 0..4 {
            let got = self.store().read(&queue(q), None, usize::MAX, now).unwrap();
            let mut prev = 0;
            for e in &got {
                prop_assert!(e.seq > prev, "order");
                prev = e.seq;
                let Some(m) = self.model.iter().find(|m| m.seq == e.seq) else {
                    return Err(TestCaseError::fail(format!("phantom entry {}", e.seq)));
                };
                prop_assert_eq!(m.q, q);
                prop_assert_eq!(&m.payload[..], &e.payload[..]);
                prop_assert_eq!(m.expires, e.expires_at_ms);
                prop_assert!(
                    m.gone != Gone::Durable,
                    "acked and synced, yet back: {}",
                    e.seq
                );
            }
            for m in self.model.iter().filter(|m| m.q == q && m.expires > now) {
                let present = got.iter().any(|e| e.seq == m.seq);
                if m.durable && m.gone == Gone::No {
                    prop_assert!(present, "synced entry {} lost", m.seq);
                }
            }
            let present: Vec<u64> = got.iter().map(|e| e.seq).collect();
            for m in &mut self.model {
                if m.q != q || m.expires <= now {
                    continue;
                }
                if present.contains(&m.seq) {
                    m.durable = true;
                    m.gone = Gone::No;
                    self.max_durable_seq = self.max_durable_seq.max(m.seq);
                } else {
                    m.gone = Gone::Durable;
                }
            }
        }
        // Expired entries may or may not be back; settle them.
        self.store().expire(now);
        for m in &mut self.model {
            if m.expires <= now {
                m.gone = Gone::Durable;
            }
        }
        self.model.retain(|m| m.gone != Gone::Durable);
        Ok(())
    }

    /// The store agrees with the model right now.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let now = self.now();
        for q in 0..4 {
            let k = queue(q);
            let store = self.store.as_ref().expect("store open");
            let got: Vec<(u64, Vec<u8>)> = store
                .read(&k, None, usize::MAX, now)
                .unwrap()
                .into_iter()
                .map(|e| (e.seq, e.payload.to_vec()))
                .collect();
            let want: Vec<(u64, Vec<u8>)> = self
                .live(q)
                .filter(|e| e.expires > now)
                .map(|e| (e.seq, e.payload.clone()))
                .collect();
            prop_assert_eq!(got, want, "queue {:?}", k);
            prop_assert_eq!(store.len(&k), self.live(q).count());
            prop_assert_eq!(store.oldest(&k), self.live(q).map(|e| e.seq).next());
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_through_crashes(ops in proptest::collection::vec(op(), 1..120)) {
        let fs = MemFs::new();
        let clock = ManualClock::new(T0);
        let (store, _) = Store::open_with_clock(fs.clone(), config(SEGMENT), clock.clone()).unwrap();
        let mut h = Harness { fs, clock, store: Some(store), model: Vec::new(), max_durable_seq: 0 };
        for op in &ops {
            h.apply(op)?;
        }
        // Finally everything is made durable and must all be there after one more crash.
        h.fs.clear_failures();
        h.store().sync().unwrap();
        h.apply(&Op::Sync)?;
        h.apply(&Op::Crash { torn: false, seed: 0 })?;
        let now = h.now();
        for q in 0..4 {
            let n = h.live(q).filter(|e| e.expires > now).count();
            prop_assert_eq!(h.store().read(&queue(q), None, usize::MAX, now).unwrap().len(), n);
        }
    }
}
