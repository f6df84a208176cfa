//! The edge module: input `features` → batch → score → output `scores`, with hot swap driven
//! by the twin.

use crate::model::{self, ModelSpec};
use crate::scorer::{Contributor, SampleScore, Scorer, Scores, Top};
use crate::stats::ScoringStats;
use crate::swap::{CandidateStatus, ShadowPolicy, Swap};
use edge_sdk::{Delivery, Message, Module, ModuleConfig, ModuleContext, ModuleError, SysProp};
use ndarray::Array2;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// Input the module reads.
pub const INPUT: &str = "features";
/// Output the module writes.
pub const OUTPUT: &str = "scores";

/// Twin desired properties.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The model to score with.
    pub model: ModelConfig,
    /// Batching bounds.
    #[serde(default)]
    pub batch: BatchConfig,
    /// ONNX Runtime settings.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// How many top contributing variables to emit per sample (default 3).
    #[serde(default = "default_top")]
    pub top_contributors: usize,
}

fn default_top() -> usize {
    3
}

/// Twin `model`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelConfig {
    /// `file:///abs/model.onnx` or a path.
    pub uri: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Version; must equal the metadata's.
    pub version: String,
    /// Metadata file (default `metadata.json` beside the model).
    #[serde(default)]
    pub metadata: Option<String>,
    /// Shadow a new version before promoting it (default: promote once verified).
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
}

/// Twin `model.shadow`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowConfig {
    /// Samples to shadow.
    pub samples: u64,
    /// Largest fraction of samples whose alarm flags may disagree (0..=1).
    pub max_disagreement: f64,
}

/// Twin `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchConfig {
    /// Most samples per model run (default 64).
    pub max: usize,
    /// Longest a message waits for others to join its batch (default 0: only what is already
    /// queued is batched; a lone message is scored at once).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max: 64,
            latency: Duration::ZERO,
        }
    }
}

/// Twin `runtime`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so.1.31.1` (used when `ORT_DYLIB_PATH` is not set).
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
}

impl ModuleConfig for Config {
    fn validate(&self) -> Result<(), String> {
        if self.batch.max == 0 {
            return Err("batch.max: must be at least 1".into());
        }
        if self.model.sha256.len() != 64
            || !self.model.sha256.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err("model.sha256: must be 64 hex digits".into());
        }
        if self.model.version.is_empty() {
            return Err("model.version: must not be empty".into());
        }
        if let Some(s) = self.model.shadow
            && !(0.0..=1.0).contains(&s.max_disagreement)
        {
            return Err("model.shadow.maxDisagreement: must be within 0..=1".into());
        }
        self.spec().map(|_| ())
    }
}

impl Config {
    /// The model spec the twin names.
    ///
    /// # Errors
    /// A message when the URI is not a file URI or path.
    pub fn spec(&self) -> Result<ModelSpec, String> {
        let m = &self.model;
        ModelSpec::from_uri(&m.uri, &m.sha256, &m.version, m.metadata.as_deref())
            .map_err(|e| format!("model.uri: {e}"))
    }

    /// The shadow policy for a new version.
    #[must_use]
    pub fn shadow_policy(&self) -> ShadowPolicy {
        self.model
            .shadow
            .map_or(ShadowPolicy::IMMEDIATE, |s| ShadowPolicy {
                samples: s.samples,
                max_disagreement: s.max_disagreement,
            })
    }
}

/// One parsed `features` message.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// The measurements.
    pub x: Vec<f32>,
    /// Every other field of the body (`runId`, `sample`, `ts`, ...), carried to the output.
    pub identity: Map<String, Value>,
}

/// Why a `features` message is not scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// Not a JSON object.
    #[error("body is not a JSON object: {0}")]
    NotJson(String),
    /// `x` missing or not an array of finite numbers of the model's width.
    #[error("x must be an array of {expected} finite numbers: {problem}")]
    BadX {
        /// Width the model takes.
        expected: usize,
        /// What is wrong.
        problem: String,
    },
    /// The pipeline marked the vector invalid (`"valid": false`).
    #[error("features marked invalid by the producer")]
    Invalid,
}

/// Parses a `features` body: `{"x": [width numbers], "valid": bool?, ...}`.
///
/// The body is read in one pass: `x` straight into `f32`s, every other field into the
/// identity, without a JSON tree of the 52 values first.
///
/// # Errors
/// [`FeatureError`] naming the problem.
pub fn parse_features(body: &[u8], width: usize) -> Result<Features, FeatureError> {
    let raw: RawFeatures =
        serde_json::from_slice(body).map_err(|e| FeatureError::NotJson(e.to_string()))?;
    if raw.valid.as_ref().and_then(Value::as_bool) == Some(false) {
        return Err(FeatureError::Invalid);
    }
    let bad = |problem: String| FeatureError::BadX {
        expected: width,
        problem,
    };
    let x = match raw.x {
        Some(XField::Values { x, first_bad }) => {
            if x.len() != width {
                return Err(bad(format!("{} values", x.len())));
            }
            if let Some(problem) = first_bad {
                return Err(bad(problem));
            }
            x
        }
        Some(XField::NotArray) => return Err(bad("not an array".into())),
        None => return Err(bad("missing".into())),
    };
    Ok(Features {
        x,
        identity: raw.identity,
    })
}

/// A `features` body as read: `x`, `valid` and the rest.
struct RawFeatures {
    x: Option<XField>,
    valid: Option<Value>,
    identity: Map<String, Value>,
}

/// The `x` field as read.
enum XField {
    /// An array: its numbers as `f32` (a bad element counts as 0 here) and the first bad one.
    Values {
        x: Vec<f32>,
        first_bad: Option<String>,
    },
    /// Anything but an array.
    NotArray,
}

impl<'de> Deserialize<'de> for RawFeatures {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawFeatures;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<RawFeatures, M::Error> {
                let mut raw = RawFeatures {
                    x: None,
                    valid: None,
                    identity: Map::new(),
                };
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "x" => raw.x = Some(m.next_value()?),
                        "valid" => raw.valid = Some(m.next_value()?),
                        _ => {
                            let v = m.next_value()?;
                            raw.identity.insert(k, v);
                        }
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for XField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = XField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<XField, A::Error> {
                let mut x = Vec::with_capacity(a.size_hint().unwrap_or(64));
                let mut first_bad = None;
                while let Some(v) = a.next_element::<Value>()? {
                    #[allow(clippy::cast_possible_truncation)]
                    let f = v.as_f64().map(|f| f as f32).filter(|f| f.is_finite());
                    if f.is_none() && first_bad.is_none() {
                        first_bad = Some(format!("x[{}] = {v}", x.len()));
                    }
                    x.push(f.unwrap_or_default());
                }
                Ok(XField::Values { x, first_bad })
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<XField, M::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(XField::NotArray)
            }
            fn visit_bool<E>(self, _: bool) -> Result<XField, E> {
                Ok(XField::NotArray)
            }
            fn visit_i64<E>(self, _: i64) -> Result<XField, E> {
                Ok(XField::NotArray)
            }
            fn visit_u64<E>(self, _: u64) -> Result<XField, E> {
                Ok(XField::NotArray)
            }
            fn visit_f64<E>(self, _: f64) -> Result<XField, E> {
                Ok(XField::NotArray)
            }
            fn visit_str<E>(self, _: &str) -> Result<XField, E> {
                Ok(XField::NotArray)
            }
            fn visit_unit<E>(self) -> Result<XField, E> {
                Ok(XField::NotArray)
            }
        }
        d.deserialize_any(V)
    }
}

/// Builds the `scores` message for one sample: the identity fields, the model version and the
/// score; application properties `alarm` (`true`/`false`) and `modelVersion`.
///
/// The body is the identity object with `modelVersion`, `t2`, `q`, `t2Limit`, `qLimit`,
/// `t2Alarm`, `qAlarm`, `alarm` and `top` set (an identity field of the same name keeps its
/// place and takes the score's value; the others follow in that order). Numbers are written
/// as the `f64` of their `f32`, non-finite ones as `null`. It is serialized straight from the
/// score, without an intermediate JSON tree.
#[must_use]
pub fn score_message(
    identity: &Map<String, Value>,
    version: &str,
    score: &SampleScore<'_>,
    properties: &[(edge_sdk::PropStr, edge_sdk::PropStr)],
) -> Message {
    let body = ScoreBody {
        identity,
        version,
        score,
    };
    // 9 fields with ~20 bytes each, the identity and ~90 bytes per contributor.
    let mut bytes = Vec::with_capacity(256 + 96 * score.top.len());
    // Writing into a Vec fails only for a non-string map key, which a `Map` cannot have.
    if let Err(e) = serde_json::to_writer(&mut bytes, &body) {
        warn!(error = %e, "Could not serialize a score.");
        bytes.clear();
    }
    let mut msg = Message::new(bytes)
        .with_system(SysProp::ContentType, "application/json")
        .with_system(SysProp::ContentEncoding, "utf-8");
    for (k, v) in properties {
        msg.set_property(k.clone(), v.clone());
    }
    msg.set_property("alarm", if score.alarm { "true" } else { "false" });
    msg.set_property("modelVersion", version);
    msg
}

/// The fields a `scores` body adds to the identity, in the order they are appended.
const SCORE_FIELDS: [&str; 9] = [
    "modelVersion",
    "t2",
    "q",
    "t2Limit",
    "qLimit",
    "t2Alarm",
    "qAlarm",
    "alarm",
    "top",
];

/// A `scores` body, serialized in place (see [`score_message`]).
struct ScoreBody<'a> {
    identity: &'a Map<String, Value>,
    version: &'a str,
    score: &'a SampleScore<'a>,
}

impl ScoreBody<'_> {
    fn field<M: SerializeMap>(&self, map: &mut M, i: usize) -> Result<(), M::Error> {
        let s = self.score;
        let key = SCORE_FIELDS.get(i).copied().unwrap_or_default();
        match i {
            0 => map.serialize_entry(key, self.version),
            1 => map.serialize_entry(key, &f64::from(s.t2)),
            2 => map.serialize_entry(key, &f64::from(s.q)),
            3 => map.serialize_entry(key, &s.t2_limit),
            4 => map.serialize_entry(key, &s.q_limit),
            5 => map.serialize_entry(key, &s.t2_alarm),
            6 => map.serialize_entry(key, &s.q_alarm),
            7 => map.serialize_entry(key, &s.alarm),
            _ => map.serialize_entry(key, &TopBody(s.top)),
        }
    }
}

impl Serialize for ScoreBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let mut written = [false; SCORE_FIELDS.len()];
        for (k, v) in self.identity {
            match SCORE_FIELDS.iter().position(|f| f == k) {
                Some(i) => {
                    written[i] = true;
                    self.field(&mut map, i)?;
                }
                None => map.serialize_entry(k, v)?,
            }
        }
        for (i, done) in written.iter().enumerate() {
            if !done {
                self.field(&mut map, i)?;
            }
        }
        map.end()
    }
}

/// `top` of a `scores` body: `[{"variable", "column", "contribution", "share"}, …]`.
struct TopBody<'a>(Top<'a>);

impl Serialize for TopBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for c in self.0.iter() {
            seq.serialize_element(&ContributorBody(c))?;
        }
        seq.end()
    }
}

struct ContributorBody<'a>(Contributor<'a>);

impl Serialize for ContributorBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = &self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("variable", c.variable)?;
        map.serialize_entry("column", &c.column)?;
        map.serialize_entry("contribution", &f64::from(c.contribution))?;
        map.serialize_entry("share", &f64::from(c.share))?;
        map.end()
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The `model` section of the reported properties.
#[must_use]
pub fn report_of(swap: &Swap<Scorer>) -> Value {
    json!({
        "model": {
            "version": swap.live_version(),
            "sha256": swap.live().sha256(),
            "since": rfc3339(swap.live_since()),
            "reason": swap.live_reason(),
            "candidate": swap.status(),
        }
    })
}

/// The module.
#[derive(Debug, Default)]
pub struct OnnxScoring;

impl Module for OnnxScoring {
    type Config = Config;

    async fn run(self, ctx: ModuleContext<Config>) -> Result<(), ModuleError> {
        let cfg = ctx.config();
        let env = match crate::runtime::environment(cfg.runtime.ort_library.as_deref()) {
            Ok(e) => e,
            Err(e) => {
                let _ = ctx
                    .report(&json!({"model": {"error": e.to_string()}}))
                    .await;
                return Err(ModuleError::other(e));
            }
        };
        let mut changes = ctx.config_changes();
        changes.borrow_and_update();
        // No traffic before a model passed verification.
        let (mut swap, mut spec) = loop {
            let cfg = ctx.config();
            let spec = cfg.spec().map_err(ModuleError::Config)?;
            match model::load(&env, &spec) {
                Ok(s) => break (Swap::new(s, spec.version.clone(), SystemTime::now()), spec),
                Err(e) => {
                    warn!(version = %spec.version, error = %e, kind = e.kind(), "Model refused; waiting for a new twin.");
                    let _ = ctx
                        .report(&json!({"model": {"version": null, "candidate": CandidateStatus::Refused {
                            version: spec.version.clone(), reason: e.to_string() }}}))
                        .await;
                    tokio::select! {
                        () = ctx.stopped() => return Ok(()),
                        r = changes.changed() => if r.is_err() { return Ok(()) },
                    }
                }
            }
        };
        info!(version = %swap.live_version(), "Scoring.");
        report(&ctx, &swap).await;
        // The spec last tried as a candidate (shadowing, promoted or refused): not retried.
        let mut tried: Option<ModelSpec> = None;
        let mut input = ctx.input(INPUT);
        let mut stats = ScoringStats::default();
        // Present (at zero) from the start on /metrics.
        for name in [
            "scores_total",
            "alarms_total",
            "model_swaps_total",
            "model_candidates_refused_total",
        ] {
            let _ = ctx.metrics().counter(name);
        }
        let mut scratch = Scratch::default();
        let mut report_tick = tokio::time::interval(std::time::Duration::from_secs(1));
        report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = ctx.stopped() => break,
                _ = report_tick.tick() => {
                    if let Some(r) = stats.take_report()
                        && let Err(e) = ctx.report(&r).await
                    {
                        warn!(error = %e, "Could not report scoring statistics.");
                    }
                }
                r = changes.changed() => {
                    if r.is_err() { break; }
                    let cfg = changes.borrow_and_update().clone();
                    let Ok(new) = cfg.spec() else { continue };
                    if new == spec || tried.as_ref() == Some(&new) {
                        continue;
                    }
                    tried = Some(new.clone());
                    let status = match model::load(&env, &new) {
                        Ok(s) => swap.offer(s, new.version.clone(), cfg.shadow_policy(), SystemTime::now()),
                        Err(e) => swap.refuse(new.version.clone(), e.to_string()),
                    };
                    if matches!(status, CandidateStatus::Promoted { .. }) {
                        spec = new;
                    }
                    count_candidate(&ctx, &status);
                    info!(?status, "Candidate handled.");
                    report(&ctx, &swap).await;
                }
                d = input.recv() => {
                    let Some(first) = d else { break };
                    let cfg = ctx.config();
                    let batch = collect_batch(first, &mut input, cfg.batch).await;
                    let promoted = process(&ctx, &mut swap, &mut stats, &mut scratch, batch, cfg.top_contributors).await?;
                    if let Some(changed) = promoted {
                        count_candidate(&ctx, &changed);
                        if matches!(changed, CandidateStatus::Promoted { .. })
                            && let Some(t) = &tried
                        {
                            spec = t.clone();
                        }
                        report(&ctx, &swap).await;
                    } else if swap.candidate_version().is_some() {
                        // Progress of the shadow, at most once per batch.
                        report(&ctx, &swap).await;
                    }
                }
            }
        }
        if let Some(r) = stats.take_report() {
            let _ = ctx.report(&r).await;
        }
        Ok(())
    }
}

/// Bucket bounds of the `batch_size` metric.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Counts a model swap or a refused candidate in the module's metrics.
fn count_candidate(ctx: &ModuleContext<Config>, status: &CandidateStatus) {
    match status {
        CandidateStatus::Promoted { .. } => ctx.metrics().counter("model_swaps_total").inc(),
        CandidateStatus::Refused { .. } => {
            ctx.metrics()
                .counter("model_candidates_refused_total")
                .inc();
        }
        CandidateStatus::Shadowing { .. } => {}
    }
}

async fn report(ctx: &ModuleContext<Config>, swap: &Swap<Scorer>) {
    if let Err(e) = ctx.report(&report_of(swap)).await {
        warn!(error = %e, "Could not report the model status.");
    }
}

/// Where a batch's messages come from: the module's input, or a plain channel in tests.
trait Queue<T> {
    /// A message already queued, without waiting.
    fn try_next(&mut self) -> Option<T>;
    /// The next message, waiting for it; `None` once the queue is closed.
    fn next(&mut self) -> impl Future<Output = Option<T>>;
}

impl Queue<Delivery> for edge_sdk::Input {
    fn try_next(&mut self) -> Option<Delivery> {
        self.try_recv()
    }

    fn next(&mut self) -> impl Future<Output = Option<Delivery>> {
        self.recv()
    }
}

/// Takes `first` plus whatever else is queued, up to `bounds.max` messages, waiting at most
/// `bounds.latency` after `first` for more. What is queued already is taken without arming a
/// timer (the common case under load); with a zero latency nothing is waited for.
async fn collect_batch<T>(first: T, input: &mut impl Queue<T>, bounds: BatchConfig) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < bounds.max
        && let Some(d) = input.try_next()
    {
        batch.push(d);
    }
    if bounds.latency.is_zero() {
        return batch;
    }
    let deadline = tokio::time::Instant::now() + bounds.latency;
    while batch.len() < bounds.max {
        match tokio::time::timeout_at(deadline, input.next()).await {
            Ok(Some(d)) => batch.push(d),
            Ok(None) | Err(_) => break,
        }
    }
    batch
}

/// Buffers reused from batch to batch, so that scoring does not allocate per batch.
#[derive(Debug, Default)]
struct Scratch {
    rows: Vec<f32>,
    live: Scores,
    candidate: Scores,
    live_alarms: Vec<bool>,
    candidate_alarms: Vec<bool>,
}

/// Scores one batch with the live model (and the candidate in shadow), sends one `scores`
/// message per scored sample, then acknowledges every message of the batch. Returns the
/// candidate's new status when it was promoted or refused.
async fn process(
    ctx: &ModuleContext<Config>,
    swap: &mut Swap<Scorer>,
    stats: &mut ScoringStats,
    scratch: &mut Scratch,
    batch: Vec<Delivery>,
    top_k: usize,
) -> Result<Option<CandidateStatus>, ModuleError> {
    let width = swap.live().width();
    let mut rows = std::mem::take(&mut scratch.rows);
    rows.clear();
    let mut scored = Vec::with_capacity(batch.len());
    for (i, d) in batch.iter().enumerate() {
        match parse_features(&d.message.body, width) {
            Ok(f) => {
                rows.extend_from_slice(&f.x);
                scored.push((i, f.identity));
            }
            Err(FeatureError::Invalid) => {}
            Err(e) => warn!(input = INPUT, error = %e, "Message not scored."),
        }
    }
    let mut outcome = None;
    let metrics = ctx.metrics();
    metrics
        .histogram("batch_size", BATCH_BUCKETS)
        .observe(batch.len() as f64);
    metrics.counter("scores_total").add(scored.len() as u64);
    let mut out = Vec::with_capacity(scored.len());
    if !scored.is_empty() {
        let x = Array2::from_shape_vec((scored.len(), width), rows).map_err(ModuleError::other)?;
        swap.live_mut()
            .score_into(x.view(), top_k, &mut scratch.live)
            .map_err(ModuleError::other)?;
        if let Some(cand) = swap.candidate_mut() {
            let now = SystemTime::now();
            outcome = match cand.score_into(x.view(), 0, &mut scratch.candidate) {
                Ok(()) => {
                    scratch.live_alarms.clear();
                    scratch
                        .live_alarms
                        .extend(scratch.live.iter().map(|s| s.alarm));
                    scratch.candidate_alarms.clear();
                    scratch
                        .candidate_alarms
                        .extend(scratch.candidate.iter().map(|s| s.alarm));
                    swap.observe(&scratch.live_alarms, &scratch.candidate_alarms, now)
                }
                Err(e) => {
                    let v = swap.candidate_version().unwrap_or_default().to_string();
                    Some(swap.refuse(v, format!("candidate failed to score: {e}")))
                }
            };
        }
        // The version that scored this batch (a promotion above takes effect from the next).
        let version = scratch.live.version().unwrap_or_default();
        let alarms = ctx.metrics().counter("alarms_total");
        for ((i, identity), s) in scored.iter().zip(scratch.live.iter()) {
            stats.record(identity, &s);
            if s.alarm {
                alarms.inc();
            }
            out.push(score_message(
                identity,
                version,
                &s,
                &batch[*i].message.properties,
            ));
        }
        scratch.rows = x.into_raw_vec_and_offset().0;
    } else {
        scratch.rows = rows;
    }
    for m in out {
        ctx.send(OUTPUT, m).await?;
    }
    for d in batch {
        d.ack().await?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<T> Queue<T> for tokio::sync::mpsc::Receiver<T> {
        fn try_next(&mut self) -> Option<T> {
            self.try_recv().ok()
        }

        fn next(&mut self) -> impl Future<Output = Option<T>> {
            self.recv()
        }
    }

    fn bounds(max: usize, latency_ms: u64) -> BatchConfig {
        BatchConfig {
            max,
            latency: Duration::from_millis(latency_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_what_is_queued_up_to_its_size_without_waiting() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        for i in 1..10 {
            tx.send(i).await.unwrap();
        }
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            collect_batch(0, &mut rx, bounds(4, 0)).await,
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            collect_batch(0, &mut rx, bounds(64, 0)).await,
            vec![0, 4, 5, 6, 7, 8, 9]
        );
        // Nothing queued and no latency: the one message is scored alone, at once.
        assert_eq!(collect_batch(0, &mut rx, bounds(64, 0)).await, vec![0]);
        // A full batch does not wait for its latency either.
        for i in 1..4 {
            tx.send(i).await.unwrap();
        }
        assert_eq!(
            collect_batch(0, &mut rx, bounds(4, 50)).await,
            vec![0, 1, 2, 3]
        );
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_its_latency_for_more_and_no_longer() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        tx.send(1).await.unwrap();
        // The arrival schedule, on the paused clock: the sleeps are virtual time that tokio
        // advances at once, not waits for a condition; message 2 lands inside the 5 ms
        // latency, message 3 after it.
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            tx.send(2).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(3).await.unwrap();
        });
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            collect_batch(0, &mut rx, bounds(64, 5)).await,
            vec![0, 1, 2]
        );
        assert_eq!(t0.elapsed(), Duration::from_millis(5));
        // The late message starts the next batch.
        let next = rx.recv().await.unwrap();
        assert_eq!(collect_batch(next, &mut rx, bounds(64, 5)).await, vec![3]);
        feeder.await.unwrap();
    }

    #[test]
    fn parses_pipeline_message_and_carries_identity() {
        let body = json!({"runId": "d01", "sample": 7, "ts": "2026-01-01T00:00:00Z", "x": [1.0, 2.5, -3], "valid": true});
        let f = parse_features(body.to_string().as_bytes(), 3).unwrap();
        assert_eq!(f.x, vec![1.0, 2.5, -3.0]);
        assert_eq!(
            Value::Object(f.identity),
            json!({"runId": "d01", "sample": 7, "ts": "2026-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn bad_features_name_the_problem() {
        let problem = |body: &[u8]| match parse_features(body, 2) {
            Err(FeatureError::BadX {
                expected: 2,
                problem,
            }) => problem,
            other => panic!("expected BadX, got {other:?}"),
        };
        assert_eq!(problem(br#"{"x":[1,"a"]}"#), r#"x[1] = "a""#);
        assert_eq!(problem(br#"{"x":[null,"a"]}"#), "x[0] = null");
        assert_eq!(problem(br#"{"x":[1,2,"a"]}"#), "3 values");
        assert_eq!(problem(br#"{"x":{"a":[1]}}"#), "not an array");
        assert_eq!(problem(br#"{"x":"1,2"}"#), "not an array");
        assert_eq!(problem(br#"{"y":[1,2]}"#), "missing");
        assert_eq!(problem(br#"{"x":[1,3.5e38]}"#), "x[1] = 3.5e+38");
        // Marked invalid wins over a bad x, wherever `valid` is.
        assert_eq!(
            parse_features(br#"{"x":[1],"valid":false}"#, 2),
            Err(FeatureError::Invalid)
        );
        assert_eq!(
            parse_features(br#"{"valid":false,"x":"no"}"#, 2),
            Err(FeatureError::Invalid)
        );
        // The identity keeps its fields in order; the last of a repeated x counts.
        let f = parse_features(br#"{"b":1,"x":[9],"a":{"n":[2]},"x":[3,4]}"#, 2).unwrap();
        assert_eq!(f.x, [3.0, 4.0]);
        let keys: Vec<&String> = f.identity.keys().collect();
        assert_eq!(keys, ["b", "a"]);
    }

    #[test]
    fn rejects_bad_features() {
        assert_eq!(
            parse_features(br#"{"x":[1,2],"valid":false}"#, 2),
            Err(FeatureError::Invalid)
        );
        assert!(matches!(
            parse_features(b"nope", 2),
            Err(FeatureError::NotJson(_))
        ));
        assert!(matches!(
            parse_features(br#"[1,2]"#, 2),
            Err(FeatureError::NotJson(_))
        ));
        assert!(matches!(
            parse_features(br#"{"x":[1]}"#, 2),
            Err(FeatureError::BadX { .. })
        ));
        assert!(matches!(
            parse_features(br#"{"x":[1,"a"]}"#, 2),
            Err(FeatureError::BadX { .. })
        ));
        assert!(matches!(
            parse_features(br#"{"y":[1,2]}"#, 2),
            Err(FeatureError::BadX { .. })
        ));
        assert!(matches!(
            parse_features(br#"{"x":[1,1e400]}"#, 2),
            Err(FeatureError::BadX { .. }) | Err(FeatureError::NotJson(_))
        ));
    }

    #[test]
    fn score_message_has_body_and_properties() {
        let score = SampleScore {
            t2: 30.0,
            q: 1.0,
            t2_limit: 25.0,
            q_limit: 40.0,
            t2_alarm: true,
            q_alarm: false,
            alarm: true,
            top: Top::EMPTY,
        };
        let mut id = Map::new();
        id.insert("runId".into(), json!("d01"));
        id.insert("sample".into(), json!(161));
        let m = score_message(&id, "1.0.0", &score, &[("source".into(), "sim".into())]);
        assert_eq!(m.property("alarm"), Some("true"));
        assert_eq!(m.property("modelVersion"), Some("1.0.0"));
        assert_eq!(m.property("source"), Some("sim"));
        assert_eq!(m.system.get(SysProp::ContentType), Some("application/json"));
        let v: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(v["runId"], "d01");
        assert_eq!(v["sample"], 161);
        assert_eq!(v["modelVersion"], "1.0.0");
        assert_eq!(v["t2Limit"], 25.0);
        assert_eq!(v["alarm"], true);
        assert_eq!(v["t2Alarm"], true);
        assert_eq!(v["qAlarm"], false);
    }

    #[test]
    fn score_body_keeps_identity_order_and_overrides_colliding_fields() {
        let score = SampleScore {
            t2: 0.1,
            q: f32::NAN,
            t2_limit: 25.0,
            q_limit: 40.0,
            t2_alarm: false,
            q_alarm: false,
            alarm: false,
            top: Top::EMPTY,
        };
        let mut id = Map::new();
        id.insert("runId".into(), json!("d01"));
        id.insert("alarm".into(), json!("from the producer"));
        id.insert("sample".into(), json!(3));
        let m = score_message(&id, "2.0.0", &score, &[]);
        // As a JSON tree merge would give: identity order, colliding keys replaced in place,
        // f32 widened to f64, non-finite as null.
        let want = r#"{"runId":"d01","alarm":false,"sample":3,"modelVersion":"2.0.0","t2":0.10000000149011612,"q":null,"t2Limit":25.0,"qLimit":40.0,"t2Alarm":false,"qAlarm":false,"top":[]}"#;
        assert_eq!(std::str::from_utf8(&m.body).unwrap(), want);
    }

    #[test]
    fn config_parses_with_defaults_and_validates() {
        let doc = json!({"model": {"uri": "file:///m/model.onnx", "sha256": "a".repeat(64), "version": "1"}});
        let c: Config = edge_sdk::parse_config(&doc).unwrap();
        assert_eq!(c.batch, BatchConfig::default());
        assert_eq!(c.top_contributors, 3);
        assert_eq!(c.shadow_policy(), ShadowPolicy::IMMEDIATE);
        assert_eq!(c.spec().unwrap().path, PathBuf::from("/m/model.onnx"));

        let doc = json!({"model": {"uri": "m.onnx", "sha256": "a".repeat(64), "version": "1",
            "shadow": {"samples": 100, "maxDisagreement": 0.02}},
            "batch": {"max": 256, "latency": "5ms"}, "runtime": {"ortLibrary": "/x/lib.so"}});
        let c: Config = edge_sdk::parse_config(&doc).unwrap();
        assert_eq!(c.batch.latency, Duration::from_millis(5));
        assert_eq!(c.shadow_policy().samples, 100);

        let bad = json!({"model": {"uri": "m.onnx", "sha256": "xyz", "version": "1"}});
        assert!(
            edge_sdk::parse_config::<Config>(&bad)
                .unwrap_err()
                .contains("model.sha256")
        );
        let bad =
            json!({"model": {"uri": "http://x/m.onnx", "sha256": "a".repeat(64), "version": "1"}});
        assert!(
            edge_sdk::parse_config::<Config>(&bad)
                .unwrap_err()
                .contains("model.uri")
        );
        let bad = json!({"model": {"uri": "m.onnx", "sha256": "a".repeat(64), "version": "1"}, "batch": {"max": 0, "latency": "0s"}});
        assert!(
            edge_sdk::parse_config::<Config>(&bad)
                .unwrap_err()
                .contains("batch.max")
        );
    }
}
