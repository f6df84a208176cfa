//! Throughput of `Pipeline::push` for the TEP shape: 52 tags, 2 lags.

use criterion::{Criterion, criterion_group, criterion_main};
use feature_pipeline::{Pipeline, PipelineConfig, SampleIn};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

fn tags() -> Vec<String> {
    (1..=41)
        .map(|i| format!("XMEAS({i})"))
        .chain((1..=11).map(|i| format!("XMV({i})")))
        .collect()
}

fn bench_push(c: &mut Criterion) {
    let tags = tags();
    let config: PipelineConfig = match edge_sdk::parse_config(&serde_json::json!({
        "tags": tags, "lags": 2
    })) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    };
    let mut p = match Pipeline::build(Arc::new(config), Path::new(".")) {
        Ok(p) => p,
        Err(e) => panic!("bench pipeline: {e}"),
    };
    let mut sample = SampleIn {
        ingested_at: serde_json::Value::Null,
        run_id: "bench".into(),
        sample: 0,
        ts: serde_json::Value::Null,
        values: tags
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as f64))
            .collect(),
    };
    c.bench_function("push_52_tags_2_lags", |b| {
        b.iter(|| {
            sample.sample += 1;
            black_box(p.push(black_box(&sample)))
        });
    });
    let windowed: PipelineConfig = match edge_sdk::parse_config(&serde_json::json!({
        "tags": tags, "lags": 2, "window": 5, "scaling": {"mean": vec![1.0; 52], "sd": vec![2.0; 52]}
    })) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    };
    let mut p = match Pipeline::build(Arc::new(windowed), Path::new(".")) {
        Ok(p) => p,
        Err(e) => panic!("bench pipeline: {e}"),
    };
    c.bench_function("push_52_tags_2_lags_window5_scaled", |b| {
        b.iter(|| {
            sample.sample += 1;
            black_box(p.push(black_box(&sample)))
        });
    });
}

criterion_group!(benches, bench_push);
criterion_main!(benches);
