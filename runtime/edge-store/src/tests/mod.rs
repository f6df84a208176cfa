//! Store tests against [`MemFs`]: behaviour, failures, quota, priorities and TTL. The
//! model-based property test is in `model.rs`, torn writes and flipped bytes in `torn.rs`.

mod model;
mod torn;

use crate::testing::{FsOp, ManualClock, MemFs};
use crate::{QueueKey, RecoveryReport, Store, StoreConfig, StoreError};

pub(crate) const T0: u64 = 1_700_000_000_000;
pub(crate) const NEVER: u64 = u64::MAX;

pub(crate) fn config(segment_bytes: u64) -> StoreConfig {
    StoreConfig {
        segment_bytes,
        max_bytes: None,
        fsync: true,
    }
}

pub(crate) fn open(fs: &MemFs, clock: &ManualClock, cfg: StoreConfig) -> (Store, RecoveryReport) {
    Store::open_with_clock(fs.clone(), cfg, clock.clone()).expect("open")
}

pub(crate) fn key(endpoint: &str, priority: u8) -> QueueKey {
    QueueKey::new(endpoint, priority)
}

/// `(seq, payload)` of everything readable in `key` at `now`.
pub(crate) fn contents(store: &Store, key: &QueueKey, now: u64) -> Vec<(u64, Vec<u8>)> {
    store
        .read(key, None, usize::MAX, now)
        .expect("read")
        .into_iter()
        .map(|e| (e.seq, e.payload.to_vec()))
        .collect()
}

fn setup() -> (MemFs, ManualClock) {
    (MemFs::new(), ManualClock::new(T0))
}

/// Sum of the segment file sizes.
fn disk_bytes(fs: &MemFs) -> u64 {
    fs.file_names()
        .iter()
        .map(|n| fs.contents(n).map_or(0, |c| c.len() as u64))
        .sum()
}

#[test]
fn store_is_send() {
    fn is_send<T: Send>() {}
    is_send::<Store>();
}

#[test]
fn rejects_bad_config() {
    let (fs, clock) = setup();
    for bad in [0, 255, u64::from(u32::MAX) + 1] {
        let err = Store::open_with_clock(fs.clone(), config(bad), clock.clone()).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidConfig { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn synced_appends_survive_a_crash_and_unsynced_do_not() {
    let (fs, clock) = setup();
    let (mut store, report) = open(&fs, &clock, config(64 * 1024));
    assert_eq!(report, RecoveryReport::default());
    let a = key("mod-a/input1", 0);
    let up = key("$upstream", 3);
    let s1 = store.append(&a, NEVER, b"one").unwrap();
    clock.advance(5);
    let s2 = store.append(&up, T0 + 1000, b"two").unwrap();
    let s3 = store.append(&a, NEVER, b"three").unwrap();
    assert!(s1 < s2 && s2 < s3);
    store.sync().unwrap();
    let lost = store.append(&a, NEVER, b"never synced").unwrap();
    // Readable before the sync...
    assert_eq!(contents(&store, &a, T0).len(), 3);
    drop(store);
    fs.crash();

    let (store, report) = open(&fs, &clock, config(64 * 1024));
    assert_eq!(report.entries, 3);
    assert_eq!(report.segments, 1);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.bytes, store.total_bytes());
    assert_eq!(
        contents(&store, &a, T0),
        vec![(s1, b"one".to_vec()), (s3, b"three".to_vec())]
    );
    let got = store.read(&up, None, 10, T0).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq, s2);
    assert_eq!(got[0].key, up);
    assert_eq!(got[0].expires_at_ms, T0 + 1000);
    assert_eq!(got[0].appended_ms, T0 + 5);
    assert_eq!(&got[0].payload[..], b"two");
    assert_eq!(store.oldest_appended_ms(&a), Some(T0));
    assert_eq!(store.oldest_appended_ms(&up), Some(T0 + 5));
    assert_eq!(store.queues(), vec![up, a.clone()]);
    // ...but the lost seq may be reused; every durable seq is below the next one.
    drop(store);
    let (mut store, _) = open(&fs, &clock, config(64 * 1024));
    assert!(store.append(&a, NEVER, b"x").unwrap() > s3);
    assert!(lost > s3);
}

#[test]
fn one_fsync_per_batch_across_endpoints() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(1 << 20));
    store.append(&key("a", 0), NEVER, b"warm-up").unwrap();
    store.sync().unwrap();
    let before = fs.stats();
    for i in 0..64u32 {
        let k = key(["a", "b", "$upstream"][i as usize % 3], (i % 10) as u8);
        store.append(&k, NEVER, &i.to_le_bytes()).unwrap();
    }
    store.ack(&key("a", 0), 1).unwrap();
    store.sync().unwrap();
    let after = fs.stats();
    assert_eq!(after.syncs - before.syncs, 1);
    assert_eq!(after.writes - before.writes, 1);
    assert_eq!(after.dir_syncs, before.dir_syncs);
    // Nothing to do: no I/O at all.
    store.sync().unwrap();
    assert_eq!(fs.stats(), after);
}

#[test]
fn acks_in_any_order_are_durable_after_sync_and_lost_acks_redeliver() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(64 * 1024));
    let k = key("m/in", 1);
    let seqs: Vec<u64> = (0..5u8)
        .map(|i| store.append(&k, NEVER, &[i]).unwrap())
        .collect();
    store.sync().unwrap();
    store.ack(&k, seqs[3]).unwrap();
    store.ack(&k, seqs[0]).unwrap();
    store.ack(&k, seqs[0]).unwrap(); // twice: no effect
    store.ack(&k, 999).unwrap(); // unknown: no effect
    store.ack(&key("nobody", 0), 1).unwrap();
    assert_eq!(store.len(&k), 3);
    assert_eq!(store.oldest(&k), Some(seqs[1]));
    store.sync().unwrap();
    store.ack(&k, seqs[1]).unwrap(); // not synced: lost in the crash
    assert_eq!(store.oldest(&k), Some(seqs[2]));
    drop(store);
    fs.crash();
    let (store, report) = open(&fs, &clock, config(64 * 1024));
    assert_eq!(report.entries, 3);
    assert_eq!(
        contents(&store, &k, T0)
            .into_iter()
            .map(|(s, _)| s)
            .collect::<Vec<_>>(),
        vec![seqs[1], seqs[2], seqs[4]]
    );
    assert!(matches!(
        store.read(&key("x", 10), None, 1, T0),
        Err(StoreError::InvalidPriority(10))
    ));
}

#[test]
fn read_pages_with_after_seq_and_max() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(512));
    let k = key("e", 0);
    let other = key("f", 0);
    let mut seqs = Vec::new();
    for i in 0..40u8 {
        seqs.push(store.append(&k, NEVER, &[i; 20]).unwrap());
        store.append(&other, NEVER, &[0xEE; 7]).unwrap();
        if i % 7 == 0 {
            store.sync().unwrap(); // a mix of durable and unsynced records, several segments
        }
    }
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = store.read(&k, after, 6, T0).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 6);
        after = page.last().map(|e| e.seq);
        got.extend(page);
    }
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    for (i, e) in got.iter().enumerate() {
        assert_eq!(&e.payload[..], &[i as u8; 20]);
    }
    assert!(store.read(&k, Some(u64::MAX), 10, T0).unwrap().is_empty());
    assert!(store.read(&k, None, 0, T0).unwrap().is_empty());
}

#[test]
fn priorities_are_separate_queues_listed_highest_first() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(4096));
    for p in [9, 0, 5] {
        store.append(&key("m/in", p), NEVER, &[p]).unwrap();
    }
    store.append(&key("a/in", 7), NEVER, b"a").unwrap();
    assert_eq!(
        store.queues(),
        vec![
            key("a/in", 7),
            key("m/in", 0),
            key("m/in", 5),
            key("m/in", 9)
        ]
    );
    for p in [0, 5, 9] {
        assert_eq!(contents(&store, &key("m/in", p), T0)[0].1, vec![p]);
    }
    assert!(matches!(
        store.append(&key("m/in", 10), NEVER, b""),
        Err(StoreError::InvalidPriority(10))
    ));
    let long = "x".repeat(70_000);
    assert!(matches!(
        store.append(&key(&long, 0), NEVER, b""),
        Err(StoreError::EndpointTooLong { len: 70_000 })
    ));
    assert_eq!(store.total_len(), 4);
}

#[test]
fn ttl_hides_and_expire_drops() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(4096));
    let k = key("m/in", 0);
    let short = store.append(&k, T0 + 10, b"short").unwrap();
    let long = store.append(&k, T0 + 100, b"long").unwrap();
    let never = store.append(&k, NEVER, b"never").unwrap();
    store.sync().unwrap();
    let seqs = |now| {
        contents(&store, &k, now)
            .into_iter()
            .map(|(s, _)| s)
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(T0 + 9), vec![short, long, never]);
    assert_eq!(seqs(T0 + 10), vec![long, never], "expired at expires_at_ms");
    assert_eq!(seqs(T0 + 100), vec![never]);
    assert!(store.expire(T0 + 5).is_empty());
    assert_eq!(store.expire(T0 + 50), vec![(k.clone(), 1)]);
    assert_eq!(store.len(&k), 2);
    assert_eq!(store.oldest(&k), Some(long));
    assert_eq!(store.expire(T0 + 1_000_000), vec![(k.clone(), 1)]);
    assert_eq!(store.oldest(&k), Some(never));
    // Expiry is not logged: after a restart expired entries are dropped again.
    drop(store);
    let (mut store, report) = open(&fs, &clock, config(4096));
    assert_eq!(report.entries, 3);
    assert_eq!(store.expire(T0 + 1_000_000), vec![(k.clone(), 2)]);
    assert_eq!(contents(&store, &k, T0 + 1_000_000).len(), 1);
}

#[test]
fn segments_roll_and_are_deleted_from_the_oldest_end() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(512));
    let pin = key("slow/in", 0);
    let busy = key("busy/in", 0);
    let pinned = store.append(&pin, T0 + 1000, b"pinned").unwrap();
    let mut busy_seqs = Vec::new();
    for _ in 0..60 {
        busy_seqs.push(store.append(&busy, NEVER, &[7; 50]).unwrap());
    }
    store.sync().unwrap();
    let full = fs.file_names().len();
    assert!(full >= 5, "rolled into {full} segments");
    assert_eq!(store.total_bytes(), disk_bytes(&fs));
    for s in &busy_seqs {
        store.ack(&busy, *s).unwrap();
    }
    store.sync().unwrap();
    // Head of line: the one live entry in the first segment pins everything after it.
    assert_eq!(fs.file_names().len(), full + 1);
    assert_eq!(store.total_bytes(), disk_bytes(&fs));
    // Its TTL bounds that: once it expires, the spent segments go.
    assert_eq!(store.expire(T0 + 1000), vec![(pin.clone(), 1)]);
    store.sync().unwrap();
    assert!(fs.file_names().len() <= 2, "{:?}", fs.file_names());
    assert_eq!(store.total_bytes(), disk_bytes(&fs));
    let _ = pinned;
    // Sequence numbers keep increasing after everything was deleted and the store reopened.
    let last = *busy_seqs.last().unwrap();
    drop(store);
    fs.crash();
    let (mut store, report) = open(&fs, &clock, config(512));
    assert_eq!(report.entries, 0);
    assert!(store.queues().is_empty());
    assert!(store.append(&busy, NEVER, b"next").unwrap() > last);
}

#[test]
fn remove_queue_drops_every_priority_durably() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(4096));
    for p in 0..3 {
        store.append(&key("gone/in", p), NEVER, b"x").unwrap();
        store.append(&key("stays/in", p), NEVER, b"y").unwrap();
    }
    store.sync().unwrap();
    assert_eq!(store.remove_queue("gone/in"), 3);
    assert_eq!(store.remove_queue("gone/in"), 0);
    assert_eq!(store.remove_queue("never-existed"), 0);
    let later = store.append(&key("gone/in", 1), NEVER, b"new").unwrap();
    store.sync().unwrap();
    drop(store);
    fs.crash();
    let (store, report) = open(&fs, &clock, config(4096));
    assert_eq!(report.entries, 4);
    assert_eq!(
        contents(&store, &key("gone/in", 1), T0),
        vec![(later, b"new".to_vec())]
    );
    assert_eq!(store.len(&key("gone/in", 0)), 0);
    assert_eq!(store.len(&key("stays/in", 2)), 1);
}

#[test]
fn quota_reclaims_expired_then_refuses() {
    let (fs, clock) = setup();
    let mut cfg = config(1024);
    cfg.max_bytes = Some(4096);
    let (mut store, _) = open(&fs, &clock, cfg);
    let k = key("m/in", 0);
    // Fill with entries that expire soon.
    let mut n = 0;
    let err = loop {
        match store.append(&k, T0 + 100, &[1; 100]) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        store.sync().unwrap();
    };
    assert!(n >= 20, "{n}");
    let StoreError::QuotaExceeded { used, needed, max } = err else {
        panic!("{err}")
    };
    assert_eq!(max, 4096);
    assert!(used + needed > max && used <= max);
    assert!(err_message_is_clear(&StoreError::QuotaExceeded {
        used,
        needed,
        max
    }));
    // Acks are never refused, even over the quota.
    store.ack(&k, 1).unwrap();
    store.sync().unwrap();
    // Once the entries expired, the next append reclaims them by itself.
    clock.advance(100);
    store.append(&k, NEVER, &[2; 100]).unwrap();
    store.sync().unwrap();
    assert_eq!(store.len(&k), 1);
    assert!(store.total_bytes() <= 4096);
    assert_eq!(store.total_bytes(), disk_bytes(&fs));
}

fn err_message_is_clear(e: &StoreError) -> bool {
    let msg = e.to_string();
    msg.starts_with("store quota exceeded") && msg.contains("4096")
}

#[test]
fn quota_frees_space_of_acknowledged_entries_even_in_the_last_segment() {
    let (fs, clock) = setup();
    let mut cfg = config(64 * 1024 * 1024);
    cfg.max_bytes = Some(2048); // segments capped at 512 bytes
    let (mut store, _) = open(&fs, &clock, cfg);
    let k = key("m/in", 0);
    for round in 0..50u8 {
        let s = store.append(&k, NEVER, &[round; 150]).unwrap();
        store.sync().unwrap();
        store.ack(&k, s).unwrap();
        store.sync().unwrap();
        assert!(store.total_bytes() <= 2048 + 512, "{}", store.total_bytes());
    }
    // Records so big that two never fit: the fully acknowledged last segment is retired.
    for round in 0..10u8 {
        let s = store.append(&k, NEVER, &[round; 1100]).unwrap();
        store.sync().unwrap();
        store.ack(&k, s).unwrap();
        store.sync().unwrap();
        assert!(store.total_bytes() <= 2048, "{}", store.total_bytes());
    }
    let live = store.append(&k, NEVER, &[9; 1100]).unwrap();
    store.sync().unwrap();
    assert!(matches!(
        store.append(&k, NEVER, &[9; 1100]),
        Err(StoreError::QuotaExceeded { .. })
    ));
    assert_eq!(contents(&store, &k, T0), vec![(live, vec![9; 1100])]);
    assert_eq!(store.total_bytes(), disk_bytes(&fs));
}

#[test]
fn failed_writes_and_fsyncs_are_retried_without_corrupting_the_log() {
    for fault in [
        Fault::Op(FsOp::Write),
        Fault::Op(FsOp::Sync),
        Fault::Op(FsOp::Open),
        Fault::Op(FsOp::SyncDir),
        Fault::Partial(3),
        Fault::Partial(30),
    ] {
        let (fs, clock) = setup();
        let (mut store, _) = open(&fs, &clock, config(512));
        let k = key("m/in", 0);
        let mut seqs = Vec::new();
        for i in 0..30u8 {
            seqs.push(store.append(&k, NEVER, &[i; 40]).unwrap());
            if i % 10 == 9 {
                match fault {
                    Fault::Op(op) => fs.fail_next(op),
                    Fault::Partial(n) => fs.fail_next_write_partial(n),
                }
                // Open and SyncDir only fail when a new segment is created in this batch.
                let first = store.sync();
                if matches!(
                    fault,
                    Fault::Op(FsOp::Write | FsOp::Sync) | Fault::Partial(_)
                ) {
                    assert!(first.is_err(), "{fault:?}");
                    assert!(matches!(first, Err(StoreError::Io { .. })));
                }
                fs.clear_failures();
                store.sync().unwrap();
            }
        }
        store.ack(&k, seqs[0]).unwrap();
        fs.fail_next(FsOp::Write);
        assert!(store.sync().is_err());
        drop(store);
        fs.crash();
        let (store, report) = open(&fs, &clock, config(512));
        assert_eq!(report.truncated_bytes, 0, "{fault:?}");
        assert_eq!(report.skipped_bytes, 0, "{fault:?}");
        let got = contents(&store, &k, T0);
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            seqs,
            "{fault:?}: the unsynced ack is lost, every synced append is there"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Op(FsOp),
    Partial(usize),
}

#[test]
fn a_failed_truncate_keeps_the_segment_dirty_until_it_works() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(4096));
    let k = key("m/in", 0);
    let a = store.append(&k, NEVER, b"a").unwrap();
    store.sync().unwrap();
    let b = store.append(&k, NEVER, b"b").unwrap();
    fs.fail_next_write_partial(5);
    assert!(store.sync().is_err());
    fs.fail_next(FsOp::Truncate);
    assert!(store.sync().is_err());
    store.sync().unwrap();
    drop(store);
    fs.crash();
    let (store, report) = open(&fs, &clock, config(4096));
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        contents(&store, &k, T0),
        vec![(a, b"a".to_vec()), (b, b"b".to_vec())]
    );
}

#[test]
fn a_failed_remove_is_retried() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(256));
    let k = key("m/in", 0);
    let seqs: Vec<u64> = (0..20)
        .map(|_| store.append(&k, NEVER, &[0; 60]).unwrap())
        .collect();
    store.sync().unwrap();
    let files = fs.file_names().len();
    for s in seqs {
        store.ack(&k, s).unwrap();
    }
    fs.fail_next(FsOp::Remove);
    store.sync().unwrap();
    assert!(fs.file_names().len() >= files, "nothing deleted yet");
    store.sync().unwrap(); // nothing to write; the deletion is retried
    assert!(fs.file_names().len() <= 2, "{:?}", fs.file_names());
    assert_eq!(store.total_bytes(), disk_bytes(&fs));
}

#[test]
fn a_corrupt_record_found_by_read_names_its_seq_and_can_be_acked_away() {
    let (fs, clock) = setup();
    let (mut store, _) = open(&fs, &clock, config(4096));
    let k = key("m/in", 0);
    let a = store.append(&k, NEVER, b"first payload").unwrap();
    let b = store.append(&k, NEVER, b"second payload").unwrap();
    store.sync().unwrap();
    // Flip a byte of the first payload behind the store's back, after recovery.
    let name = fs.file_names()[0].clone();
    let mut data = fs.contents(&name).unwrap();
    let at = data
        .windows(13)
        .position(|w| w == b"first payload")
        .unwrap();
    data[at] ^= 0x40;
    fs.set_contents(&name, data);
    let err = store.read(&k, None, 10, T0).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { seq, .. } if seq == a),
        "{err}"
    );
    store.ack(&k, a).unwrap();
    assert_eq!(
        contents(&store, &k, T0),
        vec![(b, b"second payload".to_vec())]
    );
}

#[test]
fn store_on_a_fresh_directory_is_empty_and_ignores_foreign_files() {
    let (fs, clock) = setup();
    fs.set_contents("README", b"not a segment".to_vec());
    let (store, report) = open(&fs, &clock, config(4096));
    assert_eq!(report, RecoveryReport::default());
    assert_eq!(store.total_bytes(), 0);
    assert!(store.queues().is_empty());
    assert_eq!(store.oldest(&key("a", 0)), None);
    assert_eq!(store.oldest_appended_ms(&key("a", 0)), None);
    assert!(store.is_empty(&key("a", 0)));
}

#[test]
fn list_failure_is_an_open_error() {
    let (fs, clock) = setup();
    fs.fail_next(FsOp::List);
    let err = Store::open_with_clock(fs.clone(), config(4096), clock).unwrap_err();
    assert_eq!(err.to_string(), "failed to list store directory");
    assert!(std::error::Error::source(&err).is_some());
}
