use super::*;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

fn cfg(v: serde_json::Value) -> Arc<PipelineConfig> {
    Arc::new(edge_sdk::parse_config(&v).unwrap())
}

fn pipe(v: serde_json::Value) -> Pipeline {
    Pipeline::build(cfg(v), Path::new(".")).unwrap()
}

fn sample(i: u64, values: &[(&str, f64)]) -> SampleIn<'static> {
    SampleIn {
        ingested_at: serde_json::Value::Null,
        run_id: "r1".into(),
        sample: i,
        ts: json!(format!("t{i}")),
        values: values.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    }
}

#[test]
fn tags_in_configured_order_and_identity_carried() {
    let mut p = pipe(json!({"tags": ["b", "a", "c"]}));
    let v = p.push(&sample(
        7,
        &[("a", 1.0), ("b", 2.0), ("c", 3.0), ("z", 9.0)],
    ));
    assert_eq!(v.x, [2.0, 1.0, 3.0]);
    assert!(v.valid, "{:?}", v.reasons);
    assert_eq!(v.run_id, "r1");
    assert_eq!(v.sample, 7);
    assert_eq!(v.ts, json!("t7"));
    let body = serde_json::to_value(&v).unwrap();
    assert_eq!(
        body,
        json!({"runId": "r1", "sample": 7, "ts": "t7", "x": [2.0, 1.0, 3.0], "valid": true})
    );
}

#[test]
fn historian_body_parses_with_nulls_as_missing() {
    let body = json!({
        "runId": "d01_te", "sample": 3, "ts": "2024-01-01T00:09:00.000Z", "quality": "bad",
        "values": {"XMEAS(1)": 0.25, "XMEAS(2)": null, "XMEAS(3)": "oops"}
    })
    .to_string();
    let s: SampleIn<'_> = serde_json::from_str(&body).unwrap();
    assert_eq!(s.values.len(), 1);
    assert_eq!(s.values.get("XMEAS(1)"), Some(0.25));
    let mut p = pipe(json!({"tags": ["XMEAS(1)", "XMEAS(2)"]}));
    let v = p.push(&s);
    assert!(!v.valid);
    assert_eq!(v.reasons, ["XMEAS(2): missing for 1 samples (hold 0)"]);
    assert_eq!(v.x, [0.25, 0.0]);
}

#[test]
fn values_in_any_order_escaped_duplicated_or_not_numbers() {
    // Out of the configured order, an escaped key (owned, not borrowed), a duplicate (the
    // last wins, as in a map), an integer, and values of every other JSON type (missing).
    let body = br#"{"runId": "r", "sample": 1, "values": {
        "c": 3, "a\u0062": 2.5, "a": 1.0, "a": 1.5, "d": [1, {"x": 2}], "e": {"y": [3]},
        "f": true, "h": "7"}}"#;
    let s: SampleIn<'_> = serde_json::from_slice(body).unwrap();
    assert_eq!(s.values.get("ab"), Some(2.5));
    assert_eq!(s.values.get("a"), Some(1.5));
    assert_eq!(s.values.get("c"), Some(3.0));
    for missing in ["d", "e", "f", "h"] {
        assert_eq!(s.values.get(missing), None, "{missing}");
    }
    let mut p = pipe(json!({"tags": ["a", "ab", "c", "h"], "holdSamples": 0}));
    let v = p.push(&s);
    assert_eq!(v.x, [1.5, 2.5, 3.0, 0.0]);
    assert_eq!(v.reasons, ["h: missing for 1 samples (hold 0)"]);
    // The same tags in the configured order give the same vector.
    let mut q = pipe(json!({"tags": ["a", "ab", "c", "h"], "holdSamples": 0}));
    let w = q.push(&sample(1, &[("a", 1.5), ("ab", 2.5), ("c", 3.0)]));
    assert_eq!(w.x, v.x);
}

#[test]
fn a_values_field_that_is_not_an_object_is_bad_input() {
    let e =
        serde_json::from_slice::<SampleIn<'_>>(br#"{"runId": "r", "sample": 1, "values": [1]}"#)
            .unwrap_err();
    assert!(e.to_string().contains("tag"), "{e}");
}

#[test]
fn scaling_from_config_and_from_metadata() {
    let mut p =
        pipe(json!({"tags": ["a", "b"], "scaling": {"mean": [1.0, 10.0], "sd": [2.0, 5.0]}}));
    let v = p.push(&sample(1, &[("a", 5.0), ("b", 0.0)]));
    assert_eq!(v.x, [2.0, -2.0]);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("metadata.json"),
        json!({"mean": [1.0, 10.0], "sd": [2.0, 5.0], "tags": ["a", "b"], "other": 1}).to_string(),
    )
    .unwrap();
    let c = cfg(json!({"tags": ["a", "b"], "scaling": {"fromMetadata": "metadata.json"}}));
    let mut p = Pipeline::build(c, dir.path()).unwrap();
    assert_eq!(p.push(&sample(1, &[("a", 5.0), ("b", 0.0)])).x, [2.0, -2.0]);

    // Tags in another order than the metadata's: refused.
    let c = cfg(json!({"tags": ["b", "a"], "scaling": {"fromMetadata": "metadata.json"}}));
    let e = Pipeline::build(c, dir.path()).unwrap_err();
    assert!(e.to_string().contains("scaling.fromMetadata"), "{e}");
    // Missing file: a typed error, not a panic.
    let c = cfg(json!({"tags": ["a"], "scaling": {"fromMetadata": "nope.json"}}));
    assert!(matches!(
        Pipeline::build(c, dir.path()),
        Err(ConfigError::MetadataRead { .. })
    ));
}

#[test]
fn lags_append_previous_vectors_and_warm_up() {
    let mut p = pipe(json!({"tags": ["a", "b"], "lags": 2}));
    assert_eq!(p.dimension(), 6);
    let v1 = p.push(&sample(1, &[("a", 1.0), ("b", 10.0)]));
    assert!(!v1.valid);
    assert_eq!(v1.reasons, ["warming up: lag history 1/3"]);
    let v2 = p.push(&sample(2, &[("a", 2.0), ("b", 20.0)]));
    assert!(!v2.valid);
    let v3 = p.push(&sample(3, &[("a", 3.0), ("b", 30.0)]));
    assert!(v3.valid, "{:?}", v3.reasons);
    assert_eq!(v3.x, [3.0, 30.0, 2.0, 20.0, 1.0, 10.0]);
    let v4 = p.push(&sample(4, &[("a", 4.0), ("b", 40.0)]));
    assert_eq!(v4.x, [4.0, 40.0, 3.0, 30.0, 2.0, 20.0]);
    // A new run starts from empty history.
    let mut s = sample(1, &[("a", 5.0), ("b", 50.0)]);
    s.run_id = "r2".into();
    let v = p.push(&s);
    assert!(!v.valid);
    assert_eq!(v.reasons, ["warming up: lag history 1/3"]);
}

#[test]
fn invalid_sample_taints_the_vectors_that_lag_it() {
    let mut p = pipe(json!({"tags": ["a"], "lags": 1, "ranges": {"a": {"max": 10.0}}}));
    p.push(&sample(1, &[("a", 1.0)]));
    assert!(p.push(&sample(2, &[("a", 2.0)])).valid);
    let bad = p.push(&sample(3, &[("a", 11.0)]));
    assert_eq!(bad.reasons, ["a: 11 above max 10"]);
    let next = p.push(&sample(4, &[("a", 3.0)]));
    assert_eq!(next.reasons, ["lagged sample t-1 invalid"]);
    assert!(p.push(&sample(5, &[("a", 4.0)])).valid);
}

#[test]
fn moving_window_per_tag() {
    let mut p = pipe(json!({"tags": ["a", "b"], "windows": {"a": 3}}));
    let v = p.push(&sample(1, &[("a", 3.0), ("b", 1.0)]));
    assert!(!v.valid);
    assert_eq!(v.reasons, ["warming up: moving window not full"]);
    p.push(&sample(2, &[("a", 6.0), ("b", 2.0)]));
    let v = p.push(&sample(3, &[("a", 9.0), ("b", 3.0)]));
    assert!(v.valid);
    assert_eq!(v.x, [6.0, 3.0]);
    let v = p.push(&sample(4, &[("a", 12.0), ("b", 4.0)]));
    assert_eq!(v.x, [9.0, 4.0]);
    // The global window applies to tags without their own.
    let mut p = pipe(json!({"tags": ["a", "b"], "window": 2, "windows": {"a": 1}}));
    p.push(&sample(1, &[("a", 1.0), ("b", 1.0)]));
    let v = p.push(&sample(2, &[("a", 5.0), ("b", 3.0)]));
    assert_eq!(v.x, [5.0, 2.0]);
}

#[test]
fn hold_last_then_invalid() {
    let mut p = pipe(json!({"tags": ["a", "b"], "holdSamples": 2}));
    assert!(p.push(&sample(1, &[("a", 1.0), ("b", 7.0)])).valid);
    let v = p.push(&sample(2, &[("a", 2.0)]));
    assert!(v.valid);
    assert_eq!(v.x, [2.0, 7.0]);
    let v = p.push(&sample(3, &[("a", 3.0)]));
    assert!(v.valid);
    assert_eq!(v.x, [3.0, 7.0]);
    let v = p.push(&sample(4, &[("a", 4.0)]));
    assert!(!v.valid);
    assert_eq!(v.reasons, ["b: missing for 3 samples (hold 2)"]);
    // Back again: valid at once, and the hold counter starts over.
    assert!(p.push(&sample(5, &[("a", 5.0), ("b", 8.0)])).valid);
    let v = p.push(&sample(6, &[("a", 6.0)]));
    assert!(v.valid);
    assert_eq!(v.x, [6.0, 8.0]);
    // Missing from the first sample: nothing to hold.
    let mut p = pipe(json!({"tags": ["a"], "holdSamples": 5}));
    assert!(!p.push(&sample(1, &[])).valid);
}

#[test]
fn range_checks_invalid_or_clamp() {
    let ranges = json!({"a": {"min": 0.0, "max": 10.0}, "b": {"min": -1.0}});
    let mut p = pipe(json!({"tags": ["a", "b"], "ranges": ranges}));
    let v = p.push(&sample(1, &[("a", 12.0), ("b", -2.0)]));
    assert!(!v.valid);
    assert_eq!(v.reasons, ["a: 12 above max 10", "b: -2 below min -1"]);
    assert_eq!(v.x, [12.0, -2.0]);
    assert!(p.push(&sample(2, &[("a", 10.0), ("b", 1e9)])).valid);

    let mut p = pipe(json!({"tags": ["a", "b"], "ranges": ranges, "rangeAction": "clamp"}));
    let v = p.push(&sample(1, &[("a", 12.0), ("b", -2.0)]));
    assert!(v.valid);
    assert_eq!(v.x, [10.0, -1.0]);
}

#[test]
fn config_change_applies_between_samples() {
    let mut fp = FeaturePipeline::new(pipe(json!({"tags": ["a"]})));
    let v = fp.push(&sample(1, &[("a", 1.0), ("b", 2.0)]));
    assert_eq!(v.x, [1.0]);
    fp.set_config(cfg(json!({"tags": ["a", "b"], "lags": 1})), Path::new("."))
        .unwrap();
    // Not applied until the next sample.
    assert_eq!(fp.active().dimension(), 1);
    let v = fp.push(&sample(2, &[("a", 3.0), ("b", 4.0)]));
    assert_eq!(v.x.len(), 4);
    assert_eq!(&v.x[..2], [3.0, 4.0]);
    assert!(!v.valid, "the new pipeline warms up again");
    let v = fp.push(&sample(3, &[("a", 5.0), ("b", 6.0)]));
    assert_eq!(v.x, [5.0, 6.0, 3.0, 4.0]);
    // A config that cannot be built leaves the current one in place.
    let bad = cfg(json!({"tags": ["a"], "scaling": {"fromMetadata": "/nonexistent/m.json"}}));
    assert!(fp.set_config(bad, Path::new(".")).is_err());
    assert_eq!(
        fp.push(&sample(4, &[("a", 7.0), ("b", 8.0)])).x,
        [7.0, 8.0, 5.0, 6.0]
    );
}

#[test]
fn config_validation() {
    let bad = |v: serde_json::Value| edge_sdk::parse_config::<PipelineConfig>(&v).unwrap_err();
    assert!(bad(json!({"tags": []})).starts_with("tags"));
    assert!(bad(json!({"tags": ["a", "a"]})).contains("twice"));
    assert!(bad(json!({"tags": ["a"], "lags": 1000})).starts_with("lags"));
    assert!(bad(json!({"tags": ["a"], "windows": {"b": 2}})).starts_with("windows.b"));
    assert!(
        bad(json!({"tags": ["a"], "ranges": {"a": {"min": 2, "max": 1}}})).starts_with("ranges.a")
    );
    assert!(bad(json!({"tags": ["a"], "scaling": {"mean": [1.0]}})).starts_with("scaling"));
    assert!(bad(json!({"tags": ["a"], "scaling": {"mean": [1.0], "sd": [0.0]}})).contains("sd"));
    assert!(
        bad(json!({"tags": ["a", "b"], "scaling": {"mean": [1.0], "sd": [1.0]}}))
            .contains("entries")
    );
    assert!(bad(json!({"tags": ["a"], "rangeAction": "ignore"})).contains("rangeAction"));
    assert!(bad(json!({"tags": ["a"], "lag": 1})).contains("lag"));
    let ok: PipelineConfig = edge_sdk::parse_config(&json!({"tags": ["a"]})).unwrap();
    assert_eq!(ok.lags, 0);
    assert_eq!(ok.scaling, None);
    assert_eq!(ok.range_action, RangeAction::Invalid);
}

#[test]
fn message_form() {
    let mut p = pipe(json!({"tags": ["a"]}));
    let v = p.push(&sample(9, &[]));
    let m = to_message(&v);
    assert_eq!(m.property("runId"), Some("r1"));
    assert_eq!(m.property("sample"), Some("9"));
    assert_eq!(m.property("valid"), Some("false"));
    assert_eq!(
        m.system.get(edge_sdk::SysProp::ContentType),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(body["valid"], false);
    assert_eq!(body["reasons"][0], "a: missing for 1 samples (hold 0)");
}

#[test]
fn tep_file_through_the_pipeline() {
    // 52 TEP tags with 2 lags over the first rows of a real file.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tep/d00_te.dat"),
    )
    .unwrap();
    let tags: Vec<String> = (1..=41)
        .map(|i| format!("XMEAS({i})"))
        .chain((1..=11).map(|i| format!("XMV({i})")))
        .collect();
    let mut p = pipe(json!({"tags": tags, "lags": 2}));
    let mut out = Vec::new();
    for (i, line) in text.lines().take(4).enumerate() {
        let values = tags
            .iter()
            .zip(line.split_whitespace())
            .map(|(t, v)| (t.clone(), v.parse::<f64>().unwrap()))
            .collect();
        out.push(p.push(&SampleIn {
            ingested_at: serde_json::Value::Null,
            run_id: "d00_te".into(),
            sample: i as u64 + 1,
            ts: serde_json::Value::Null,
            values,
        }));
    }
    assert_eq!(
        out.iter().map(|v| v.valid).collect::<Vec<_>>(),
        [false, false, true, true]
    );
    assert_eq!(out[2].x.len(), 156);
    assert_eq!(out[3].x[52..104], out[2].x[..52]);
    assert_eq!(out[3].x[104..], out[1].x[..52]);
}
