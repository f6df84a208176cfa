//! The public API on the real filesystem (a temporary directory).

use edge_store::{QueueKey, Store, StoreConfig, StoreError};

fn config() -> StoreConfig {
    StoreConfig {
        segment_bytes: 4096,
        ..StoreConfig::default()
    }
}

#[test]
fn defaults_are_sane() {
    let c = StoreConfig::default();
    assert_eq!(c.segment_bytes, 64 * 1024 * 1024);
    assert_eq!(c.max_bytes, None);
    assert!(c.fsync);
}

#[test]
fn round_trip_through_reopen_with_rolls_acks_and_reclaim() {
    let dir = tempfile::tempdir().unwrap();
    let up = QueueKey::new("$upstream", 0);
    let input = QueueKey::new("scoring/input1", 4);
    let mut up_seqs = Vec::new();
    {
        let (mut store, report) = Store::open(dir.path(), config()).unwrap();
        assert_eq!(report.entries, 0);
        for i in 0..200u32 {
            let payload = i.to_le_bytes().repeat(16);
            up_seqs.push(store.append(&up, u64::MAX, &payload).unwrap());
            store.append(&input, u64::MAX, &payload).unwrap();
            if i % 64 == 63 {
                store.sync().unwrap();
            }
        }
        store.sync().unwrap();
        // The input's sink acknowledged everything; upstream is offline.
        let all = store.read(&input, None, usize::MAX, 0).unwrap();
        assert_eq!(all.len(), 200);
        for e in &all {
            store.ack(&input, e.seq).unwrap();
        }
        store.sync().unwrap();
        assert_eq!(store.len(&input), 0);
        // Dropped without a final sync of anything new: like a kill.
    }
    let (store, report) = Store::open(dir.path(), config()).unwrap();
    assert_eq!(report.entries, 200);
    assert_eq!(report.truncated_bytes, 0);
    assert!(report.segments > 1);
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(report.bytes, on_disk);
    assert_eq!(store.total_bytes(), on_disk);
    let got = store.read(&up, None, usize::MAX, 0).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), up_seqs);
    for (i, e) in got.iter().enumerate() {
        assert_eq!(&e.payload[..], &(i as u32).to_le_bytes().repeat(16)[..]);
    }
    assert_eq!(store.queues(), vec![up]);
}

#[test]
fn a_torn_tail_on_disk_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let k = QueueKey::new("m/in", 0);
    {
        let (mut store, _) = Store::open(dir.path(), config()).unwrap();
        store.append(&k, u64::MAX, b"kept").unwrap();
        store.sync().unwrap();
    }
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut data = std::fs::read(&seg).unwrap();
    let good = data.len();
    data.extend_from_slice(&[0x13, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&seg, &data).unwrap();
    let (store, report) = Store::open(dir.path(), config()).unwrap();
    assert_eq!(report.truncated_bytes, 7);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good as u64);
    assert_eq!(&store.read(&k, None, 9, 0).unwrap()[0].payload[..], b"kept");
}

#[test]
fn open_fails_cleanly_on_a_file_instead_of_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file, config()).unwrap_err();
    assert!(matches!(err, StoreError::Io { op: "create", .. }), "{err}");
}
