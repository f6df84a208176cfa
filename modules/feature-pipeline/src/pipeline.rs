//! The pipeline: one sample in, one feature vector out.

use crate::config::{ConfigError, PipelineConfig, RangeAction};
use ndarray::{Array1, Array2};
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

/// One sample from `historian-ingest` (`{"runId", "sample", "ts", "values": {tag: value|null}}`).
/// Tag names are borrowed from the message body where they need no unescaping.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SampleIn<'a> {
    /// The run the sample belongs to.
    pub run_id: String,
    /// 1-based index within the run.
    pub sample: u64,
    /// The sample's time, carried through as given.
    #[serde(default)]
    pub ts: Value,
    /// Wall-clock time the historian read the sample, carried through as given (absent = null).
    #[serde(default, rename = "ingestedAt")]
    pub ingested_at: Value,
    /// Tag → value; `null`, non-numbers and non-finite values are dropped (= missing).
    #[serde(borrow)]
    pub values: TagValues<'a>,
}

/// The `values` of a sample in the order they were written: tag → finite number. A tag that
/// is `null`, not a number or not finite is absent. When a tag appears twice, the last wins
/// (as in a map).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TagValues<'a>(Vec<(Cow<'a, str>, f64)>);

impl TagValues<'_> {
    /// How many entries (duplicates included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `tag` (the last one written).
    #[must_use]
    pub fn get(&self, tag: &str) -> Option<f64> {
        self.0.iter().rev().find(|(k, _)| k == tag).map(|&(_, v)| v)
    }

    /// The entries in the order they were written.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), *v))
    }
}

impl<K: Into<String>> FromIterator<(K, f64)> for TagValues<'_> {
    fn from_iter<I: IntoIterator<Item = (K, f64)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (Cow::Owned(k.into()), v))
                .collect(),
        )
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for TagValues<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = TagValues<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of tag → number")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(64));
                while let Some(Key(k)) = m.next_key()? {
                    if let Lenient(Some(v)) = m.next_value()? {
                        out.push((k, v));
                    }
                }
                Ok(TagValues(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A map key, borrowed when it needs no unescaping.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a tag name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Any JSON value: `Some` for a finite number, `None` for anything else (skipped whole).
struct Lenient(Option<f64>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lenient;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Lenient, E> {
                Ok(Lenient(Some(v).filter(|x| x.is_finite())))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E>(self, v: i64) -> Result<Lenient, E> {
                Ok(Lenient(Some(v as f64)))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E>(self, v: u64) -> Result<Lenient, E> {
                Ok(Lenient(Some(v as f64)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Lenient, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Lenient, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Lenient, M::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// What the model gets: `{"runId", "sample", "ts", "x": [...], "valid", "reasons"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureVector {
    /// The sample's run.
    pub run_id: String,
    /// The sample's index.
    pub sample: u64,
    /// The sample's time.
    pub ts: Value,
    /// Wall-clock ingest time, carried through (omitted when the sample had none).
    #[serde(rename = "ingestedAt", skip_serializing_if = "Value::is_null")]
    pub ingested_at: Value,
    /// The features: `[v(t), v(t-1), …, v(t-lags)]`, each `v` in the order of `tags`. A value
    /// that is unavailable (missing beyond the hold) is 0 in an invalid vector.
    pub x: Vec<f32>,
    /// Whether the model may use `x`.
    pub valid: bool,
    /// Why not, when invalid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// A moving average over the last `size` values of one tag.
#[derive(Debug, Clone)]
struct Window {
    size: usize,
    values: VecDeque<f64>,
}

impl Window {
    fn push(&mut self, v: f64) {
        if self.values.len() == self.size {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    fn full(&self) -> bool {
        self.values.len() >= self.size
    }

    fn mean(&self) -> f64 {
        // Summing W values each time keeps no drifting running sum.
        let n = self.values.len().max(1);
        self.values.iter().sum::<f64>() / n as f64
    }
}

/// Turns samples into feature vectors for one configuration.
///
/// # Invariants
/// - `history` has `lags + 1` rows of `tags.len()` values; `head` is the row of the newest
///   vector and `filled` (≤ `lags + 1`) how many rows hold data of the current run.
/// - `windows[j]` is `Some` exactly when tag `j` has a window larger than 1.
/// - A sample of another run than the previous one starts from empty history.
#[derive(Debug, Clone)]
pub struct Pipeline {
    config: Arc<PipelineConfig>,
    mean: Option<Array1<f64>>,
    inv_sd: Option<Array1<f64>>,
    lo: Vec<f64>,
    hi: Vec<f64>,
    windows: Vec<Option<Window>>,
    last: Vec<Option<f64>>,
    missing_for: Vec<u32>,
    history: Array2<f64>,
    history_valid: Vec<bool>,
    head: usize,
    filled: usize,
    run: Option<String>,
    current: Array1<f64>,
    /// Tag → its position in `config.tags`.
    index: HashMap<String, usize>,
    /// The values of the sample being processed, in the order of `config.tags`.
    incoming: Vec<Option<f64>>,
}

impl Pipeline {
    /// Builds the pipeline for a configuration, reading the scaling metadata (relative to
    /// `base`) when configured.
    ///
    /// # Errors
    /// The configuration is invalid or its metadata cannot be used.
    pub fn build(config: Arc<PipelineConfig>, base: &Path) -> Result<Self, ConfigError> {
        config.check()?;
        let scaling = config.resolve_scaling(base)?;
        let n = config.tags.len();
        let (mut lo, mut hi) = (vec![f64::NEG_INFINITY; n], vec![f64::INFINITY; n]);
        let mut windows = Vec::with_capacity(n);
        for (j, tag) in config.tags.iter().enumerate() {
            if let Some(r) = config.ranges.get(tag) {
                if let (Some(l), Some(min)) = (lo.get_mut(j), r.min) {
                    *l = min;
                }
                if let (Some(h), Some(max)) = (hi.get_mut(j), r.max) {
                    *h = max;
                }
            }
            let w = config.windows.get(tag).copied().unwrap_or(config.window);
            windows.push((w > 1).then(|| Window {
                size: w,
                values: VecDeque::with_capacity(w),
            }));
        }
        let (mean, inv_sd) = match scaling {
            Some(s) => (
                Some(Array1::from(s.mean)),
                Some(Array1::from(s.sd).mapv(|d| 1.0 / d)),
            ),
            None => (None, None),
        };
        let rows = config.lags + 1;
        Ok(Self {
            mean,
            inv_sd,
            lo,
            hi,
            windows,
            last: vec![None; n],
            missing_for: vec![0; n],
            history: Array2::zeros((rows, n)),
            history_valid: vec![false; rows],
            head: 0,
            filled: 0,
            run: None,
            current: Array1::zeros(n),
            index: config
                .tags
                .iter()
                .enumerate()
                .map(|(j, t)| (t.clone(), j))
                .collect(),
            incoming: vec![None; n],
            config,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Arc<PipelineConfig> {
        &self.config
    }

    /// Length of every feature vector: `tags × (lags + 1)`.
    #[must_use]
    pub fn dimension(&self) -> usize {
        self.history.len()
    }

    fn reset(&mut self) {
        for w in self.windows.iter_mut().flatten() {
            w.values.clear();
        }
        self.last.fill(None);
        self.missing_for.fill(0);
        self.history_valid.fill(false);
        self.filled = 0;
    }

    /// Puts the sample's values in the order of the configured tags. A producer that writes
    /// the tags in that order (historian-ingest with the same tag list) costs one string
    /// comparison per tag; others a hash lookup per value.
    fn take_values(&mut self, values: &TagValues<'_>) {
        self.incoming.fill(None);
        for (i, (k, v)) in values.iter().enumerate() {
            let j = if self.config.tags.get(i).is_some_and(|t| t == k) {
                Some(i)
            } else {
                self.index.get(k).copied()
            };
            if let Some(slot) = j.and_then(|j| self.incoming.get_mut(j)) {
                *slot = Some(v);
            }
        }
    }

    /// Processes one sample.
    pub fn push(&mut self, s: &SampleIn<'_>) -> FeatureVector {
        if self.run.as_deref() != Some(s.run_id.as_str()) {
            self.reset();
            self.run = Some(s.run_id.clone());
        }
        let hold = self.config.hold_samples;
        let clamp = self.config.range_action == RangeAction::Clamp;
        let mut reasons = Vec::new();
        let mut warming = false;
        self.take_values(&s.values);
        let n = self.config.tags.len();
        for j in 0..n {
            let tag = self.config.tags.get(j).map_or("", String::as_str);
            let mut value = match self.incoming[j] {
                Some(v) => {
                    self.missing_for[j] = 0;
                    v
                }
                None => {
                    self.missing_for[j] = self.missing_for[j].saturating_add(1);
                    match self.last[j] {
                        Some(v) if self.missing_for[j] <= hold => v,
                        _ => {
                            reasons.push(format!(
                                "{tag}: missing for {} samples (hold {hold})",
                                self.missing_for[j]
                            ));
                            self.current[j] = f64::NAN;
                            continue;
                        }
                    }
                }
            };
            let (lo, hi) = (self.lo[j], self.hi[j]);
            if value < lo || value > hi {
                if clamp {
                    value = value.clamp(lo, hi);
                } else if value < lo {
                    reasons.push(format!("{tag}: {value} below min {lo}"));
                } else {
                    reasons.push(format!("{tag}: {value} above max {hi}"));
                }
            }
            self.last[j] = Some(value);
            if let Some(w) = self.windows[j].as_mut() {
                w.push(value);
                warming |= !w.full();
                value = w.mean();
            }
            self.current[j] = value;
        }
        if let (Some(mean), Some(inv_sd)) = (&self.mean, &self.inv_sd) {
            self.current -= mean;
            self.current *= inv_sd;
        }
        let rows = self.history_valid.len();
        self.head = (self.head + 1) % rows;
        self.history.row_mut(self.head).assign(&self.current);
        self.history_valid[self.head] = reasons.is_empty();
        self.filled = (self.filled + 1).min(rows);

        let mut x = Vec::with_capacity(self.history.len());
        for k in 0..rows {
            let r = (self.head + rows - k) % rows;
            x.extend(
                self.history
                    .row(r)
                    .iter()
                    .map(|&v| if v.is_nan() { 0.0 } else { v as f32 }),
            );
            if k > 0 && k < self.filled && !self.history_valid[r] {
                reasons.push(format!("lagged sample t-{k} invalid"));
            }
        }
        if self.filled < rows {
            reasons.push(format!("warming up: lag history {}/{rows}", self.filled));
        }
        if warming {
            reasons.push("warming up: moving window not full".into());
        }
        FeatureVector {
            run_id: s.run_id.clone(),
            sample: s.sample,
            ts: s.ts.clone(),
            ingested_at: s.ingested_at.clone(),
            x,
            valid: reasons.is_empty(),
            reasons,
        }
    }
}

/// A [`Pipeline`] whose configuration can be replaced while samples flow: the new one takes
/// over at the next [`FeaturePipeline::push`], never in the middle of a vector.
///
/// # Invariants
/// `pending`, when set, was built successfully and replaces `active` before the next sample.
#[derive(Debug)]
pub struct FeaturePipeline {
    active: Pipeline,
    pending: Option<Pipeline>,
}

impl FeaturePipeline {
    /// Wraps a built pipeline.
    #[must_use]
    pub fn new(active: Pipeline) -> Self {
        Self {
            active,
            pending: None,
        }
    }

    /// Builds a pipeline for `config` and schedules it for the next sample. The new pipeline
    /// starts with empty history (it warms up again).
    ///
    /// # Errors
    /// The new configuration cannot be built; the current one stays.
    pub fn set_config(
        &mut self,
        config: Arc<PipelineConfig>,
        base: &Path,
    ) -> Result<(), ConfigError> {
        self.pending = Some(Pipeline::build(config, base)?);
        Ok(())
    }

    /// The pipeline in use (the pending one is not yet).
    #[must_use]
    pub fn active(&self) -> &Pipeline {
        &self.active
    }

    /// Processes one sample, switching to a pending configuration first.
    pub fn push(&mut self, s: &SampleIn<'_>) -> FeatureVector {
        if let Some(p) = self.pending.take() {
            self.active = p;
        }
        self.active.push(s)
    }
}
