//! Scoring latency (batch 1) and throughput (batch 256) through `Scorer::score_into` (what the
//! module runs per batch: statistics, alarms and the top 3 contributors per row, buffers
//! reused), next to a bare `ort` `session.run` on the same model, so the wrapper's overhead is
//! visible; `scorer_messages` adds building the `scores` messages (JSON bodies).
//! Needs the ONNX Runtime library (see `onnx_scoring::runtime::locate`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use onnx_scoring::model::{ModelSpec, load};
use ort::session::Session;
use ort::value::TensorRef;
use std::hint::black_box;
use std::path::Path;

fn inputs(rows: usize) -> Array2<f32> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tep-pca");
    let g: onnx_scoring::model::Golden =
        serde_json::from_slice(&std::fs::read(dir.join("golden.json")).expect("golden.json"))
            .expect("golden json");
    let flat: Vec<f32> = (0..rows).flat_map(|i| g.x[i % g.x.len()].clone()).collect();
    Array2::from_shape_vec((rows, 52), flat).expect("shape")
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tep-pca");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metadata.json")).expect("metadata.json"))
            .expect("json");
    let env = onnx_scoring::runtime::environment(None).expect("ONNX Runtime library");
    let spec = ModelSpec {
        path: dir.join("model.onnx"),
        sha256: meta["sha256"].as_str().expect("sha256").into(),
        version: meta["version"].as_str().expect("version").into(),
        metadata: None,
    };
    let mut scorer = load(&env, &spec).expect("model verifies");
    let mut bare = Session::builder(&env)
        .expect("builder")
        .with_intra_threads(1)
        .expect("threads")
        .commit_from_file(dir.join("model.onnx"))
        .expect("session");

    let mut g = c.benchmark_group("score");
    for rows in [1usize, 256] {
        let x = inputs(rows);
        g.throughput(Throughput::Elements(rows as u64));
        let mut scores = onnx_scoring::Scores::default();
        g.bench_with_input(BenchmarkId::new("scorer", rows), &x, |b, x| {
            b.iter(|| {
                scorer.score_into(x.view(), 3, &mut scores).expect("score");
                black_box(&scores);
            });
        });
        let mut identity = serde_json::Map::new();
        identity.insert("runId".into(), "d01_te".into());
        identity.insert("sample".into(), 161.into());
        identity.insert("ts".into(), "2026-01-01T00:00:00.000Z".into());
        g.bench_with_input(BenchmarkId::new("scorer_messages", rows), &x, |b, x| {
            b.iter(|| {
                scorer.score_into(x.view(), 3, &mut scores).expect("score");
                for s in scores.iter() {
                    black_box(onnx_scoring::module::score_message(
                        &identity,
                        "1.0.0",
                        &s,
                        &[],
                    ));
                }
            });
        });
        g.bench_with_input(BenchmarkId::new("bare_ort", rows), &x, |b, x| {
            b.iter(|| {
                let out = bare
                    .run(ort::inputs!["x" => TensorRef::from_array_view(x).expect("tensor")])
                    .expect("run");
                let q = out["q"].try_extract_array::<f32>().expect("q");
                black_box(q[0])
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
