//! Scoring a batch of feature vectors with a verified model.

use crate::model::Metadata;
use ndarray::{Array2, ArrayView2};
use ort::session::Session;
use ort::value::TensorRef;
use serde::Serialize;
use std::sync::Arc;

/// Scoring a batch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScoreError {
    /// The batch does not have the model's number of columns.
    #[error("batch has {got} columns, the model expects {expected}")]
    Width {
        /// Columns given.
        got: usize,
        /// Columns the model takes.
        expected: usize,
    },
    /// ONNX Runtime failed (input creation, run or output extraction).
    #[error("onnx runtime failed while {stage}: {message}")]
    Ort {
        /// What was being done.
        stage: &'static str,
        /// What ort said.
        message: String,
    },
    /// An output has an unexpected shape.
    #[error("output {name} has shape {shape:?}, expected {expected}")]
    OutputShape {
        /// Output name.
        name: &'static str,
        /// Shape returned.
        shape: Vec<usize>,
        /// Shape expected, in words.
        expected: String,
    },
}

/// The raw model outputs for a batch of N rows.
#[derive(Debug, Clone, PartialEq)]
pub struct RawOutputs {
    /// Hotelling T², N values.
    pub t2: Vec<f32>,
    /// Q (SPE), N values.
    pub q: Vec<f32>,
    /// Per-variable contributions to Q, N x variables.
    pub contrib: Array2<f32>,
}

/// One variable's share of a sample's Q statistic.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Contributor {
    /// The variable's name, e.g. `XMEAS(9) Reactor temperature`.
    pub variable: String,
    /// 1-based column of the variable in the feature vector.
    pub column: usize,
    /// Its contribution to Q (squared scaled residual).
    pub contribution: f32,
    /// `contribution / q` (0 when q is 0).
    pub share: f32,
}

/// The result for one sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SampleScore {
    /// Hotelling T².
    pub t2: f32,
    /// Q (SPE).
    pub q: f32,
    /// T² control limit.
    pub t2_limit: f64,
    /// Q control limit.
    pub q_limit: f64,
    /// `t2 > t2_limit`.
    pub t2_alarm: bool,
    /// `q > q_limit`.
    pub q_alarm: bool,
    /// `t2_alarm || q_alarm`.
    pub alarm: bool,
    /// The variables contributing most to Q, largest first.
    pub top: Vec<Contributor>,
}

/// A loaded, verified model that scores batches. Built by [`crate::model::load`].
///
/// # Invariants
/// The session's input and output names and shapes match `metadata` and the model passed its
/// golden test when it was built; `sha256` is the hash of the bytes the session was built from.
pub struct Scorer {
    session: Session,
    metadata: Arc<Metadata>,
    sha256: String,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("version", &self.metadata.version)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Scorer {
    pub(crate) fn new(session: Session, metadata: Arc<Metadata>, sha256: String) -> Self {
        Self {
            session,
            metadata,
            sha256,
        }
    }

    /// The model's metadata.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The model version (from its metadata, equal to the twin's `model.version`).
    #[must_use]
    pub fn version(&self) -> &str {
        &self.metadata.version
    }

    /// The SHA-256 (hex) of the model file.
    #[must_use]
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Number of input variables (columns).
    #[must_use]
    pub fn width(&self) -> usize {
        self.metadata.variables.len()
    }

    /// Runs the model on `x` (`[N, width]`, raw measurements) and returns its outputs.
    ///
    /// # Errors
    /// [`ScoreError`] on a wrong width, an ONNX Runtime failure or unexpected output shapes.
    pub fn run_raw(&mut self, x: ArrayView2<'_, f32>) -> Result<RawOutputs, ScoreError> {
        let width = self.width();
        if x.ncols() != width {
            return Err(ScoreError::Width {
                got: x.ncols(),
                expected: width,
            });
        }
        let n = x.nrows();
        let ort_err = |stage: &'static str| {
            move |e: ort::Error| ScoreError::Ort {
                stage,
                message: e.to_string(),
            }
        };
        let x = x.as_standard_layout();
        let input = TensorRef::from_array_view(&x).map_err(ort_err("creating the input tensor"))?;
        let out = self
            .session
            .run(ort::inputs!["x" => input])
            .map_err(ort_err("running the model"))?;
        let vector = |name: &'static str| -> Result<Vec<f32>, ScoreError> {
            let v = out
                .get(name)
                .ok_or(ScoreError::OutputShape {
                    name,
                    shape: Vec::new(),
                    expected: "an output of that name".into(),
                })?
                .try_extract_array::<f32>()
                .map_err(ort_err("reading an output"))?;
            if v.shape() != [n] {
                return Err(ScoreError::OutputShape {
                    name,
                    shape: v.shape().to_vec(),
                    expected: format!("[{n}]"),
                });
            }
            Ok(v.iter().copied().collect())
        };
        let t2 = vector("t2")?;
        let q = vector("q")?;
        let c = out
            .get("contrib")
            .ok_or(ScoreError::OutputShape {
                name: "contrib",
                shape: Vec::new(),
                expected: "an output of that name".into(),
            })?
            .try_extract_array::<f32>()
            .map_err(ort_err("reading an output"))?;
        let contrib = c
            .into_dimensionality::<ndarray::Ix2>()
            .ok()
            .filter(|c| c.dim() == (n, width))
            .ok_or_else(|| ScoreError::OutputShape {
                name: "contrib",
                shape: Vec::new(),
                expected: format!("[{n}, {width}]"),
            })?
            .to_owned();
        Ok(RawOutputs { t2, q, contrib })
    }

    /// Scores `x` (`[N, width]`): statistics, limits, alarm flags and the `top_k` variables
    /// contributing most to Q, for each row.
    ///
    /// # Errors
    /// As [`Scorer::run_raw`].
    pub fn score(
        &mut self,
        x: ArrayView2<'_, f32>,
        top_k: usize,
    ) -> Result<Vec<SampleScore>, ScoreError> {
        let raw = self.run_raw(x)?;
        Ok(self.interpret(&raw, top_k))
    }

    /// Turns raw outputs into per-sample results (limits, alarms, top contributors).
    #[must_use]
    pub fn interpret(&self, raw: &RawOutputs, top_k: usize) -> Vec<SampleScore> {
        let m = &self.metadata;
        raw.t2
            .iter()
            .zip(&raw.q)
            .zip(raw.contrib.rows())
            .map(|((&t2, &q), row)| {
                let t2_alarm = f64::from(t2) > m.t2_limit;
                let q_alarm = f64::from(q) > m.q_limit;
                SampleScore {
                    t2,
                    q,
                    t2_limit: m.t2_limit,
                    q_limit: m.q_limit,
                    t2_alarm,
                    q_alarm,
                    alarm: t2_alarm || q_alarm,
                    top: top_contributors(row.iter().copied(), q, &m.variables, top_k),
                }
            })
            .collect()
    }
}

/// The `k` largest contributions, largest first (ties: lower column first).
fn top_contributors(
    contrib: impl Iterator<Item = f32>,
    q: f32,
    names: &[String],
    k: usize,
) -> Vec<Contributor> {
    let mut idx: Vec<(usize, f32)> = contrib.enumerate().collect();
    idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    idx.into_iter()
        .take(k)
        .map(|(i, c)| Contributor {
            variable: names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("x[{}]", i + 1)),
            column: i + 1,
            contribution: c,
            share: if q > 0.0 { c / q } else { 0.0 },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_contributors_are_sorted_and_named() {
        let names: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        let top = top_contributors([1.0, 4.0, 4.0, 2.0].into_iter(), 11.0, &names, 3);
        let got: Vec<(&str, usize)> = top
            .iter()
            .map(|c| (c.variable.as_str(), c.column))
            .collect();
        assert_eq!(got, vec![("b", 2), ("c", 3), ("d", 4)]);
        assert!((top[0].share - 4.0 / 11.0).abs() < 1e-6);
        let none = top_contributors([0.0].into_iter(), 0.0, &names, 3);
        assert_eq!(none.len(), 1);
        assert!(none[0].share.abs() < f32::EPSILON);
    }
}
