//! Detection quality is part of the product: all 21 faulty TEP test runs and `d00_te` go through
//! historian-ingest → feature-pipeline → onnx-scoring under a real edged; the alarms the
//! pipeline emits give, per run, the missed-detection rate (samples 161–960) and the
//! false-alarm rate (samples 1–160, all of `d00_te`). They must equal the figures the training
//! script computed independently (`models/tep-pca/reference_detection.json`) to within one
//! sample, and are written to `models/tep-pca/detection.json`.

use anyhow::{Context, Result};
use edge_e2e::{connect_as, identity_module, write_manifest};
use edge_test_utils::{Edged, repo_root, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const ONSET: u64 = 161;

#[derive(Default, Clone, Copy)]
struct Counts {
    normal: u64,
    faulty: u64,
    false_t2: u64,
    false_q: u64,
    false_any: u64,
    missed_t2: u64,
    missed_q: u64,
    missed_any: u64,
}

#[allow(clippy::cast_precision_loss)]
fn rate(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_detection_matches_the_training_script() -> Result<()> {
    let root = repo_root().canonicalize()?;
    let mut d: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deployment.json"))?)?;
    let mc = d["modulesContent"]
        .as_object_mut()
        .context("modulesContent")?;
    // The three data-path modules from the reference deployment, plus a sink we speak as.
    let agent = &mut mc["$edgeAgent"]["properties.desired"]["modules"];
    let mut modules = serde_json::Map::new();
    for m in ["historian-ingest", "feature-pipeline", "onnx-scoring"] {
        let mut spec = agent[m].clone();
        spec["settings"]["workingDir"] = json!(root);
        modules.insert(m.into(), spec);
    }
    modules.insert("sink".into(), identity_module(0));
    *agent = Value::Object(modules);
    let runs: Vec<String> = std::iter::once("d00_te".to_owned())
        .chain((1..=21).map(|i| format!("d{i:02}_te")))
        .collect();
    mc["historian-ingest"]["properties.desired"]["source"]["files"] = json!(
        runs.iter()
            .map(|r| format!("data/tep/{r}.dat"))
            .collect::<Vec<_>>()
    );
    mc["historian-ingest"]["properties.desired"]["speed"] = json!(0);
    mc["$edgeHub"]["properties.desired"]["routes"] = json!({
        "samples": "FROM /messages/modules/historian-ingest/outputs/samples INTO BrokeredEndpoint(\"/modules/feature-pipeline/inputs/samples\")",
        "features": "FROM /messages/modules/feature-pipeline/outputs/features WHERE valid = 'true' INTO BrokeredEndpoint(\"/modules/onnx-scoring/inputs/features\")",
        "scores": "FROM /messages/modules/onnx-scoring/outputs/scores INTO BrokeredEndpoint(\"/modules/sink/inputs/scores\")",
    });
    for m in ["opcua-writer", "health-monitor"] {
        mc.remove(m);
    }

    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let path = write_manifest(tmp.path(), "deployment.json", &d)?;
    let edged = Edged::start(&path, &data, &[]).await?;
    wait_until("sink key", Duration::from_secs(30), || {
        let ok = data.join("keys/sink.json").exists();
        async move { ok.then_some(()) }
    })
    .await?;
    let sink = connect_as(&data, &edged.endpoints.hub, "sink")?;
    let mut input = sink.input("scores").context("input")?;
    let total = runs.len() * 960;
    let mut seen: BTreeMap<(String, u64), (bool, bool)> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while seen.len() < total {
        let d = tokio::time::timeout_at(deadline, input.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {total} scores; log:\n{}",
                    seen.len(),
                    edged.log()
                )
            })?
            .context("sink closed")?;
        let v: Value = serde_json::from_slice(&d.message.body)?;
        d.ack().await?;
        let run = v["runId"].as_str().context("runId")?.to_owned();
        let sample = v["sample"].as_u64().context("sample")?;
        let t2 = v["t2Alarm"].as_bool().context("t2Alarm")?;
        let q = v["qAlarm"].as_bool().context("qAlarm")?;
        seen.insert((run, sample), (t2, q));
    }

    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for ((run, sample), (t2, q)) in &seen {
        let c = counts.entry(run.clone()).or_default();
        let normal = run == "d00_te" || *sample < ONSET;
        if normal {
            c.normal += 1;
            c.false_t2 += u64::from(*t2);
            c.false_q += u64::from(*q);
            c.false_any += u64::from(*t2 || *q);
        } else {
            c.faulty += 1;
            c.missed_t2 += u64::from(!*t2);
            c.missed_q += u64::from(!*q);
            c.missed_any += u64::from(!(*t2 || *q));
        }
    }

    let reference: Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("models/tep-pca/reference_detection.json"),
    )?)?;
    let metadata: Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("models/tep-pca/metadata.json"),
    )?)?;
    let mut faults = serde_json::Map::new();
    let mut mismatches = Vec::new();
    for (run, c) in &counts {
        let key = run
            .trim_start_matches('d')
            .trim_end_matches("_te")
            .trim_start_matches('0');
        let key = if key.is_empty() { "0" } else { key };
        let ours = json!({
            "missed_t2": rate(c.missed_t2, c.faulty), "missed_q": rate(c.missed_q, c.faulty),
            "missed_any": rate(c.missed_any, c.faulty),
            "false_alarm_t2": rate(c.false_t2, c.normal), "false_alarm_q": rate(c.false_q, c.normal),
            "false_alarm_any": rate(c.false_any, c.normal),
        });
        let r = &reference["runs"][run];
        for (field, n, denom) in [
            ("false_alarm_t2", c.false_t2, c.normal),
            ("false_alarm_q", c.false_q, c.normal),
            ("missed_t2", c.missed_t2, c.faulty),
            ("missed_q", c.missed_q, c.faulty),
        ] {
            if denom == 0 {
                continue;
            }
            let want = r[field].as_f64().context("reference field")?;
            #[allow(clippy::cast_precision_loss)]
            let diff_samples = (rate(n, denom) - want).abs() * denom as f64;
            if diff_samples > 1.0 + 1e-9 {
                mismatches.push(format!(
                    "{run} {field}: pipeline {} vs script {want}",
                    rate(n, denom)
                ));
            }
        }
        faults.insert(key.to_owned(), ours);
    }
    let out = json!({
        "components": metadata["components"], "alpha": metadata["alpha"],
        "model_version": metadata["version"],
        "comment": "Written by tests/tests/detection.rs from the alarms the pipeline emitted under edged (T2/Q at the 99% limits). Missed detection over samples 161-960, false alarms over 1-160 (all of d00_te = fault 0).",
        "faults": faults,
    });
    let text = serde_json::to_string_pretty(&out)? + "\n";
    let target = root.join("models/tep-pca/detection.json");
    if std::fs::read_to_string(&target).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&target, text)?;
    }
    assert!(
        mismatches.is_empty(),
        "pipeline and training script disagree:\n{}",
        mismatches.join("\n")
    );
    assert_eq!(counts.len(), 22);
    sink.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
