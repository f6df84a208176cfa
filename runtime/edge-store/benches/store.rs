//! Store benchmarks on a real temporary directory:
//! - `append_sync`: the hub's group commit, 64 appends of 256-byte payloads then one sync
//!   (with and without fsync), reported in messages/s;
//! - `hub_cycle`: the same plus acking the previous batch (steady state, segments reclaimed);
//! - `read_64`: reading a batch of 64 from a queue of 100k entries;
//! - `recovery_100k`: opening a store that holds 100k entries.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edge_store::{QueueKey, Store, StoreConfig};

const BATCH: usize = 64;
const PAYLOAD: usize = 256;
const FILL: usize = 100_000;

fn keys() -> Vec<QueueKey> {
    (0..8)
        .map(|i| QueueKey::new(format!("module-{i}/input1"), (i % 3) as u8))
        .collect()
}

fn append_sync(c: &mut Criterion) {
    let payload = vec![0xA5u8; PAYLOAD];
    let keys = keys();
    let mut group = c.benchmark_group("append_sync");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for fsync in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig {
            fsync,
            ..StoreConfig::default()
        };
        let (mut store, _) = Store::open(dir.path(), config).expect("open");
        let name = if fsync {
            "64x256_fsync"
        } else {
            "64x256_no_fsync"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                for i in 0..BATCH {
                    store
                        .append(&keys[i % keys.len()], u64::MAX, &payload)
                        .expect("append");
                }
                store.sync().expect("sync");
            });
        });
    }
    group.finish();
}

fn hub_cycle(c: &mut Criterion) {
    let payload = vec![0xA5u8; PAYLOAD];
    let keys = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let mut previous: Vec<(usize, u64)> = Vec::with_capacity(BATCH);
    let mut group = c.benchmark_group("hub_cycle");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("64x256_fsync_ack_previous", |b| {
        b.iter(|| {
            for (k, seq) in previous.drain(..) {
                store.ack(&keys[k], seq).expect("ack");
            }
            for i in 0..BATCH {
                let k = i % keys.len();
                let seq = store.append(&keys[k], u64::MAX, &payload).expect("append");
                previous.push((k, seq));
            }
            store.sync().expect("sync");
        });
    });
    group.finish();
}

/// A store in a fresh directory holding `FILL` entries over eight queues.
fn filled() -> (tempfile::TempDir, StoreConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig::default();
    let (mut store, _) = Store::open(
        dir.path(),
        StoreConfig {
            fsync: false,
            ..config
        },
    )
    .expect("open");
    let payload = vec![0x5Au8; PAYLOAD];
    let keys = keys();
    for i in 0..FILL {
        store
            .append(&keys[i % keys.len()], u64::MAX, &payload)
            .expect("append");
        if i % 1024 == 0 {
            store.sync().expect("sync");
        }
    }
    store.sync().expect("sync");
    (dir, config)
}

fn read_64(c: &mut Criterion) {
    let (dir, config) = filled();
    let (store, _) = Store::open(dir.path(), config).expect("open");
    let key = keys()[0].clone();
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut after = None;
    group.bench_function("64_of_100k", |b| {
        b.iter(|| {
            let got = store.read(&key, after, BATCH, 0).expect("read");
            after = if got.len() == BATCH {
                got.last().map(|e| e.seq)
            } else {
                None
            };
            black_box(got)
        });
    });
    group.finish();
}

fn recovery(c: &mut Criterion) {
    let (dir, config) = filled();
    let mut group = c.benchmark_group("recovery");
    group.throughput(Throughput::Elements(FILL as u64));
    group.sample_size(10);
    group.bench_function("open_100k_entries", |b| {
        b.iter(|| {
            let (store, report) = Store::open(dir.path(), config).expect("open");
            assert_eq!(report.entries, FILL as u64);
            black_box(store)
        });
    });
    group.finish();
}

criterion_group!(benches, append_sync, hub_cycle, read_64, recovery);
criterion_main!(benches);
