//! Torn writes, flipped bytes and garbage: recovery cuts the torn tail of the last segment,
//! skips the rest of a corrupt older segment, and never panics.

use proptest::prelude::*;

use super::{NEVER, T0, config, contents, key, open};
use crate::record::{self, HEADER_LEN};
use crate::segment::file_name;
use crate::testing::{ManualClock, MemFs};
use crate::{QueueKey, Store};

/// `(start, len)` of every record in a segment image.
fn frames(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (_, n) = record::decode(&data[at..]).expect("valid image");
        out.push((at, n));
        at += n;
    }
    out
}

struct Built {
    fs: MemFs,
    appended: Vec<(QueueKey, u64, Vec<u8>)>,
}

/// A synced store with `n` appends spread over three queues.
fn build(n: usize, segment_bytes: u64) -> Built {
    let fs = MemFs::new();
    let clock = ManualClock::new(T0);
    let (mut store, _) = open(&fs, &clock, config(segment_bytes));
    let mut appended = Vec::new();
    for i in 0..n {
        let k = key(["a/in", "b/in", "$upstream"][i % 3], (i % 2) as u8);
        let payload = vec![i as u8; 10 + i % 7];
        let seq = store.append(&k, NEVER, &payload).unwrap();
        appended.push((k, seq, payload));
    }
    store.sync().unwrap();
    Built { fs, appended }
}

/// Everything readable, as `(key, seq, payload)` sorted by seq.
fn everything(store: &Store) -> Vec<(QueueKey, u64, Vec<u8>)> {
    let mut out: Vec<_> = store
        .queues()
        .into_iter()
        .flat_map(|k| {
            contents(store, &k, T0)
                .into_iter()
                .map(move |(s, p)| (k.clone(), s, p))
        })
        .collect();
    out.sort_by_key(|(_, s, _)| *s);
    out
}

fn fs_with(name: &str, data: &[u8]) -> MemFs {
    let fs = MemFs::new();
    fs.set_contents(name, data.to_vec());
    fs
}

#[test]
fn a_cut_at_every_byte_of_the_last_record_loses_only_that_record() {
    let b = build(5, 1 << 20);
    let name = file_name(1);
    let data = b.fs.contents(&name).unwrap();
    let (start, len) = *frames(&data).last().unwrap();
    assert_eq!(start + len, data.len());
    let clock = ManualClock::new(T0);
    for cut in start..data.len() {
        let fs = fs_with(&name, &data[..cut]);
        let (mut store, report) = open(&fs, &clock, config(1 << 20));
        assert_eq!(report.truncated_bytes, (cut - start) as u64, "cut {cut}");
        assert_eq!(report.entries, 4, "cut {cut}");
        assert_eq!(everything(&store), b.appended[..4], "cut {cut}");
        assert_eq!(fs.contents(&name).unwrap().len(), start, "file cut back");
        // Appending after recovery lands on a clean boundary.
        let k = key("a/in", 0);
        let seq = store.append(&k, NEVER, b"after").unwrap();
        assert!(seq > b.appended[3].1);
        store.sync().unwrap();
        drop(store);
        fs.crash();
        let (store, report) = open(&fs, &clock, config(1 << 20));
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.entries, 5);
        assert_eq!(contents(&store, &k, T0).last().unwrap().1, b"after");
    }
    // No cut: nothing lost.
    let fs = fs_with(&name, &data);
    let (store, report) = open(&fs, &clock, config(1 << 20));
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(everything(&store), b.appended);
}

#[test]
fn a_torn_ack_record_means_redelivery() {
    let fs = MemFs::new();
    let clock = ManualClock::new(T0);
    let (mut store, _) = open(&fs, &clock, config(1 << 20));
    let k = key("m/in", 0);
    let s1 = store.append(&k, NEVER, b"1").unwrap();
    let s2 = store.append(&k, NEVER, b"2").unwrap();
    store.sync().unwrap();
    store.ack(&k, s1).unwrap();
    store.sync().unwrap();
    drop(store);
    let name = file_name(1);
    let data = fs.contents(&name).unwrap();
    let (start, _) = *frames(&data).last().unwrap();
    for cut in start..data.len() {
        let fs = fs_with(&name, &data[..cut]);
        let (store, _) = open(&fs, &clock, config(1 << 20));
        let seqs: Vec<u64> = contents(&store, &k, T0).iter().map(|e| e.0).collect();
        assert_eq!(seqs, vec![s1, s2], "cut {cut}");
    }
}

#[test]
fn every_flipped_byte_of_the_last_record_is_detected() {
    let b = build(4, 1 << 20);
    let name = file_name(1);
    let data = b.fs.contents(&name).unwrap();
    let (start, _) = *frames(&data).last().unwrap();
    let clock = ManualClock::new(T0);
    for at in start..data.len() {
        let mut bad = data.clone();
        bad[at] ^= 0x5A;
        let fs = fs_with(&name, &bad);
        let (store, report) = open(&fs, &clock, config(1 << 20));
        assert_eq!(report.truncated_bytes, (data.len() - start) as u64, "{at}");
        assert_eq!(everything(&store), b.appended[..3], "{at}");
    }
}

#[test]
fn a_zero_filled_tail_is_cut() {
    let b = build(6, 1 << 20);
    let name = file_name(1);
    let mut data = b.fs.contents(&name).unwrap();
    data.extend_from_slice(&[0u8; 4096]);
    let fs = fs_with(&name, &data);
    let (store, report) = open(&fs, &ManualClock::new(T0), config(1 << 20));
    assert_eq!(report.truncated_bytes, 4096);
    assert_eq!(everything(&store), b.appended);
}

#[test]
fn a_torn_header_of_a_new_last_segment_removes_it() {
    let b = build(5, 1 << 20);
    let last_seq = b.appended.last().unwrap().1;
    let mut header = Vec::new();
    record::encode_header(&mut header, 2, last_seq + 1);
    assert_eq!(header.len(), HEADER_LEN);
    let clock = ManualClock::new(T0);
    for cut in 0..HEADER_LEN {
        let fs = b.fs.snapshot();
        fs.set_contents(&file_name(2), header[..cut].to_vec());
        let (mut store, report) = open(&fs, &clock, config(1 << 20));
        assert_eq!(report.truncated_bytes, cut as u64);
        assert_eq!(report.segments, 1);
        assert!(!fs.file_names().contains(&file_name(2)));
        assert_eq!(everything(&store), b.appended);
        let seq = store.append(&key("a/in", 0), NEVER, b"x").unwrap();
        assert!(seq > last_seq);
        store.sync().unwrap();
    }
}

#[test]
fn a_flipped_byte_in_an_older_segment_skips_the_rest_of_it_only() {
    let b = build(60, 256);
    let names = b.fs.file_names();
    assert!(names.len() >= 4, "{names:?}");
    let victim = &names[1];
    let data = b.fs.contents(victim).unwrap();
    let fr = frames(&data);
    assert!(fr.len() >= 3);
    let (start, _) = fr[1];
    let lost_in_victim = fr.len() - 1;
    let clock = ManualClock::new(T0);
    let mut bad = data.clone();
    bad[start + 9] ^= 0x01;
    let fs = b.fs.snapshot();
    fs.set_contents(victim, bad);
    let (mut store, report) = open(&fs, &clock, config(256));
    assert_eq!(report.skipped_bytes, (data.len() - start) as u64);
    assert_eq!(report.truncated_bytes, 0);
    let got = everything(&store);
    assert_eq!(got.len(), b.appended.len() - lost_in_victim);
    assert!(
        got.iter().all(|e| b.appended.contains(e)),
        "no garbage entry"
    );
    // The store keeps working and the skipped segment goes once nothing older is live.
    for (k, seq, _) in &got {
        store.ack(k, *seq).unwrap();
    }
    store.append(&key("a/in", 0), NEVER, b"new").unwrap();
    store.sync().unwrap();
    assert!(!fs.file_names().contains(victim));
    drop(store);
    let (store, report) = open(&fs, &clock, config(256));
    assert_eq!(report.skipped_bytes, 0);
    assert_eq!(report.entries, 1);
    assert_eq!(everything(&store)[0].2, b"new");
}

#[test]
fn a_corrupt_segment_that_ends_up_last_is_never_appended_to() {
    let b = build(30, 256);
    let names = b.fs.file_names();
    let last = names.last().unwrap().clone();
    let prev = names[names.len() - 2].clone();
    let mut prev_data = b.fs.contents(&prev).unwrap();
    let (start, _) = frames(&prev_data)[1];
    prev_data[start + 9] ^= 0xFF;
    let fs = b.fs.snapshot();
    fs.set_contents(&prev, prev_data);
    // The last segment's header is torn away as well: `prev` becomes the last one.
    fs.set_contents(&last, vec![1, 2, 3]);
    let clock = ManualClock::new(T0);
    let (mut store, report) = open(&fs, &clock, config(256));
    assert!(report.skipped_bytes > 0);
    let before = everything(&store);
    let seq = store.append(&key("z", 0), NEVER, b"after garbage").unwrap();
    store.sync().unwrap();
    drop(store);
    let (store, report2) = open(&fs, &clock, config(256));
    assert_eq!(
        report2.skipped_bytes, report.skipped_bytes,
        "same garbage, nothing new lost"
    );
    let after = everything(&store);
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(after.last().unwrap().1, seq);
}

fn open_never_panics(fs: &MemFs) {
    if let Ok((store, report)) =
        Store::open_with_clock(fs.clone(), config(256), ManualClock::new(T0))
    {
        assert_eq!(report.entries, store.total_len() as u64);
        let _ = everything(&store);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_as_segments_never_panic(
        a in proptest::collection::vec(any::<u8>(), 0..600),
        b in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let fs = MemFs::new();
        fs.set_contents(&file_name(1), a);
        fs.set_contents(&file_name(2), b);
        open_never_panics(&fs);
    }

    #[test]
    fn random_damage_to_a_valid_log_never_yields_a_wrong_entry(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        zero_page in any::<bool>(),
    ) {
        let b = build(40, 300);
        let fs = b.fs.snapshot();
        let names = fs.file_names();
        for (at, x) in flips {
            let name = at.get(&names);
            let mut data = fs.contents(name).unwrap();
            let i = at.index(data.len());
            data[i] ^= x;
            fs.set_contents(name, data);
        }
        let last = names.last().unwrap();
        let mut data = fs.contents(last).unwrap();
        let keep = cut.index(data.len() + 1);
        data.truncate(keep);
        if zero_page {
            data.extend_from_slice(&[0; 64]);
        }
        fs.set_contents(last, data);
        let (store, _) = Store::open_with_clock(fs.clone(), config(300), ManualClock::new(T0))
            .expect("recovery copes with damage");
        for e in everything(&store) {
            prop_assert!(b.appended.contains(&e), "entry not appended: {:?}", e);
        }
    }
}
