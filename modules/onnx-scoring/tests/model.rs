//! Model verification and scoring against the shipped `models/tep-pca` model. These tests
//! need the ONNX Runtime library (ORT_DYLIB_PATH or the repo's .venv) and FAIL without it.
#![allow(clippy::unwrap_used)] // test helpers

use ndarray::Array2;
use onnx_scoring::model::{Golden, ModelError, ModelSpec, load, sha256_hex};
use ort::environment::Environment;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tep-pca")
}

fn env() -> Environment {
    match onnx_scoring::runtime::environment(None) {
        Ok(e) => e,
        Err(e) => panic!("these tests need ONNX Runtime: {e}"),
    }
}

fn metadata() -> Value {
    serde_json::from_slice(&std::fs::read(model_dir().join("metadata.json")).unwrap()).unwrap()
}

fn good_spec() -> ModelSpec {
    let m = metadata();
    ModelSpec {
        path: model_dir().join("model.onnx"),
        sha256: m["sha256"].as_str().unwrap().into(),
        version: m["version"].as_str().unwrap().into(),
        metadata: None,
    }
}

/// A copy of the model directory in a temp dir, for tampering.
fn copy() -> (tempfile::TempDir, ModelSpec) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "metadata.json", "golden.json"] {
        std::fs::copy(model_dir().join(f), dir.path().join(f)).unwrap();
    }
    let spec = ModelSpec {
        path: dir.path().join("model.onnx"),
        ..good_spec()
    };
    (dir, spec)
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn golden() -> Golden {
    serde_json::from_slice(&std::fs::read(model_dir().join("golden.json")).unwrap()).unwrap()
}

#[test]
fn good_model_loads_and_scores_golden_rows() {
    let mut s = load(&env(), &good_spec()).unwrap();
    assert_eq!(s.version(), "1.0.0");
    assert_eq!(s.width(), 52);
    let g = golden();
    let x = Array2::from_shape_vec((g.x.len(), 52), g.x.concat()).unwrap();
    let scores = s.score(x.view(), 3).unwrap();
    assert_eq!(scores.len(), g.x.len());
    for (i, sc) in scores.iter().enumerate() {
        let rel = |got: f32, want: f64| (f64::from(got) - want).abs() / want.abs().max(1.0);
        assert!(
            rel(sc.t2, g.t2[i]) <= 1e-4,
            "row {i}: t2 {} vs {}",
            sc.t2,
            g.t2[i]
        );
        assert!(
            rel(sc.q, g.q[i]) <= 1e-4,
            "row {i}: q {} vs {}",
            sc.q,
            g.q[i]
        );
        assert_eq!(
            sc.alarm,
            f64::from(sc.t2) > sc.t2_limit || f64::from(sc.q) > sc.q_limit
        );
        assert_eq!(sc.top.len(), 3);
        let top: Vec<_> = sc.top.iter().collect();
        // Top contributor is the largest golden contribution.
        let c = &g.contrib.as_ref().unwrap()[i];
        let best = (0..52).max_by(|&a, &b| c[a].total_cmp(&c[b])).unwrap();
        assert_eq!(top[0].column, best + 1, "row {i}");
        assert!(top[0].contribution >= top[1].contribution);
        assert!(top[1].contribution >= top[2].contribution);
    }
    // Normal row (d00_te row 0) has no alarm; d06_te row 500 (A feed loss) alarms, and the
    // names come from the metadata.
    assert!(!scores.get(5).unwrap().alarm);
    let s6 = scores.get(6).unwrap();
    assert!(s6.alarm);
    let v = s6.top.get(0).unwrap().variable;
    assert!(v.starts_with("X"), "{v}");
    // Batch scoring equals one-by-one scoring.
    for (i, want) in scores.iter().enumerate() {
        let one = s.score(x.row(i).insert_axis(ndarray::Axis(0)), 3).unwrap();
        let one = one.get(0).unwrap();
        assert_eq!(one.alarm, want.alarm);
        assert!((one.q - want.q).abs() <= 1e-4 * want.q.abs().max(1.0));
    }
}

#[test]
fn wrong_width_is_an_error_not_a_panic() {
    let mut s = load(&env(), &good_spec()).unwrap();
    let x = Array2::<f32>::zeros((2, 51));
    assert!(s.score(x.view(), 3).is_err());
}

#[test]
fn wrong_sha256_in_twin_is_refused() {
    let mut spec = good_spec();
    spec.sha256 = "0".repeat(64);
    let e = load(&env(), &spec).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Hash {
                against: "twin",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn corrupt_file_is_refused_by_hash() {
    let (_d, spec) = copy();
    let mut bytes = std::fs::read(&spec.path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&spec.path, &bytes).unwrap();
    let e = load(&env(), &spec).unwrap_err();
    assert_eq!(e.kind(), "hash", "{e}");
}

#[test]
fn corrupt_file_with_matching_hashes_is_refused_by_onnx_runtime() {
    let (d, mut spec) = copy();
    let bytes = b"this is not an onnx model".to_vec();
    std::fs::write(&spec.path, &bytes).unwrap();
    spec.sha256 = sha256_hex(&bytes);
    edit_json(&d.path().join("metadata.json"), |m| {
        m["sha256"] = spec.sha256.clone().into()
    });
    let e = load(&env(), &spec).unwrap_err();
    assert!(matches!(e, ModelError::Session(_)), "{e}");
}

#[test]
fn metadata_hash_mismatch_is_refused() {
    let (d, spec) = copy();
    edit_json(&d.path().join("metadata.json"), |m| {
        m["sha256"] = "1".repeat(64).into()
    });
    let e = load(&env(), &spec).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Hash {
                against: "metadata",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn version_mismatch_is_refused() {
    let mut spec = good_spec();
    spec.version = "9.9.9".into();
    let e = load(&env(), &spec).unwrap_err();
    assert_eq!(e.kind(), "version", "{e}");
}

#[test]
fn wrong_shapes_are_refused() {
    let (d, spec) = copy();
    // Metadata claiming 51 variables: the model's [N,52] input no longer matches.
    edit_json(&d.path().join("metadata.json"), |m| {
        m["variables"].as_array_mut().unwrap().pop();
        m["inputs"][0]["shape"][1] = 51.into();
        m["outputs"][2]["shape"][1] = 51.into();
    });
    let e = load(&env(), &spec).unwrap_err();
    assert!(
        matches!(e, ModelError::Interface(ref m) if m.contains("shape")),
        "{e}"
    );
    // Wrong output name.
    let (d, spec) = copy();
    edit_json(&d.path().join("metadata.json"), |m| {
        m["outputs"][1]["name"] = "spe".into()
    });
    let e = load(&env(), &spec).unwrap_err();
    assert_eq!(e.kind(), "interface", "{e}");
}

#[test]
fn golden_mismatch_is_refused() {
    let (d, spec) = copy();
    edit_json(&d.path().join("golden.json"), |g| {
        let v = g["q"][2].as_f64().unwrap();
        g["q"][2] = (v * 1.01).into();
    });
    let e = load(&env(), &spec).unwrap_err();
    assert!(
        matches!(e, ModelError::Golden(ref m) if m.contains("row 2") && m.contains("q")),
        "{e}"
    );
}

#[test]
fn missing_golden_file_is_refused() {
    let (d, spec) = copy();
    std::fs::remove_file(d.path().join("golden.json")).unwrap();
    let e = load(&env(), &spec).unwrap_err();
    assert_eq!(e.kind(), "read", "{e}");
}

#[test]
fn shipped_metadata_agrees_with_file() {
    let bytes = std::fs::read(model_dir().join("model.onnx")).unwrap();
    assert_eq!(sha256_hex(&bytes), metadata()["sha256"].as_str().unwrap());
}

#[test]
fn verified_candidate_shadows_then_takes_over() {
    use onnx_scoring::swap::{CandidateStatus, ShadowPolicy, Swap};
    use std::time::SystemTime;
    let env = env();
    let live = load(&env, &good_spec()).unwrap();
    let (d, mut spec) = copy();
    edit_json(&d.path().join("metadata.json"), |m| {
        m["version"] = "2.0.0".into()
    });
    spec.version = "2.0.0".into();
    let cand = load(&env, &spec).unwrap();
    let mut swap = Swap::new(live, "1.0.0", SystemTime::UNIX_EPOCH);
    let policy = ShadowPolicy {
        samples: 7,
        max_disagreement: 0.0,
    };
    assert!(matches!(
        swap.offer(cand, "2.0.0", policy, SystemTime::now()),
        CandidateStatus::Shadowing { .. }
    ));
    let g = golden();
    let x = Array2::from_shape_vec((g.x.len(), 52), g.x.concat()).unwrap();
    let live_alarms: Vec<bool> = swap
        .live_mut()
        .score(x.view(), 0)
        .unwrap()
        .iter()
        .map(|s| s.alarm)
        .collect();
    let cand_alarms: Vec<bool> = swap
        .candidate_mut()
        .unwrap()
        .score(x.view(), 0)
        .unwrap()
        .iter()
        .map(|s| s.alarm)
        .collect();
    let st = swap.observe(&live_alarms, &cand_alarms, SystemTime::now());
    assert!(
        matches!(st, Some(CandidateStatus::Promoted { .. })),
        "{st:?}"
    );
    assert_eq!(swap.live().version(), "2.0.0");
    // A refused (bad hash) version afterwards leaves 2.0.0 scoring.
    let mut bad = good_spec();
    bad.sha256 = "f".repeat(64);
    let e = load(&env, &bad).unwrap_err();
    swap.refuse("3.0.0", e.to_string());
    assert_eq!(swap.live_version(), "2.0.0");
    assert!(swap.live_mut().score(x.view(), 3).is_ok());
}

/// The `scores` body as the module built it before bodies were serialized in place: a JSON
/// tree (identity, then `modelVersion` and the score fields merged in), contributors from a
/// full sort of the raw contributions.
fn reference_body(
    identity: &serde_json::Map<String, Value>,
    version: &str,
    t2: f32,
    q: f32,
    contrib: &[f32],
    m: &onnx_scoring::Metadata,
    k: usize,
) -> Vec<u8> {
    let (names, limits) = (&m.variables, (m.t2_limit, m.q_limit));
    let mut idx: Vec<(usize, f32)> = contrib.iter().copied().enumerate().collect();
    idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<Value> = idx
        .into_iter()
        .take(k)
        .map(|(i, c)| {
            serde_json::json!({"variable": names[i], "column": i + 1, "contribution": c,
                "share": if q > 0.0 { c / q } else { 0.0 }})
        })
        .collect();
    let (t2_alarm, q_alarm) = (f64::from(t2) > limits.0, f64::from(q) > limits.1);
    let mut body = identity.clone();
    body.insert("modelVersion".into(), version.into());
    let score = serde_json::json!({"t2": t2, "q": q, "t2Limit": limits.0, "qLimit": limits.1,
        "t2Alarm": t2_alarm, "qAlarm": q_alarm, "alarm": t2_alarm || q_alarm, "top": top});
    if let Value::Object(s) = score {
        body.extend(s);
    }
    serde_json::to_vec(&Value::Object(body)).unwrap()
}

#[test]
fn reused_scores_give_the_same_bodies_as_a_json_tree_with_a_full_sort() {
    let mut s = load(&env(), &good_spec()).unwrap();
    let g = golden();
    let meta = s.metadata().clone();
    // Golden rows repeated into batches of several sizes, scored into one reused `Scores`.
    let mut scores = onnx_scoring::Scores::default();
    for (rows, k) in [
        (1usize, 3usize),
        (40, 3),
        (7, 0),
        (13, 52),
        (3, 60),
        (40, 5),
    ] {
        let x: Vec<f32> = (0..rows).flat_map(|i| g.x[i % g.x.len()].clone()).collect();
        let x = Array2::from_shape_vec((rows, 52), x).unwrap();
        s.score_into(x.view(), k, &mut scores).unwrap();
        assert_eq!(scores.len(), rows);
        assert_eq!(scores.version(), Some("1.0.0"));
        let raw = s.run_raw(x.view()).unwrap();
        for (i, sc) in scores.iter().enumerate() {
            let mut id = serde_json::Map::new();
            id.insert("runId".into(), "golden".into());
            id.insert("sample".into(), (i + 1).into());
            id.insert("q".into(), "shadowed by the score".into());
            let got = onnx_scoring::module::score_message(&id, "1.0.0", &sc, &[]).body;
            let want = reference_body(
                &id,
                "1.0.0",
                raw.t2[i],
                raw.q[i],
                raw.contrib.row(i).as_slice().unwrap(),
                &meta,
                k,
            );
            assert_eq!(
                std::str::from_utf8(&got).unwrap(),
                std::str::from_utf8(&want).unwrap(),
                "batch {rows}, k {k}, row {i}"
            );
        }
    }
    // A failed batch leaves no stale rows behind.
    let bad = Array2::<f32>::zeros((2, 51));
    assert!(s.score_into(bad.view(), 3, &mut scores).is_err());
    assert!(scores.is_empty());
}
