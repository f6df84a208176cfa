//! Scoring a batch of feature vectors with a verified model.
//!
//! The hot path ([`Scorer::score_into`]) reads the model's outputs where ONNX Runtime left
//! them and writes into a caller-owned [`Scores`], so a batch allocates nothing once the
//! buffers have grown: the top contributors of a row are chosen by `k` maximum passes over
//! its contributions (no sort, no per-row vector), and variable names are borrowed from the model's metadata when a result is read.

use crate::model::Metadata;
use ndarray::{Array2, ArrayView1, ArrayView2, Ix1, Ix2};
use ort::session::Session;
use ort::value::TensorRef;
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contributor<'a> {
    /// The variable's name, e.g. `XMEAS(9) Reactor temperature`.
    pub variable: &'a str,
    /// 1-based column of the variable in the feature vector.
    pub column: usize,
    /// Its contribution to Q (squared scaled residual).
    pub contribution: f32,
    /// `contribution / q` (0 when q is not positive).
    pub share: f32,
}

/// The variables contributing most to one sample's Q, largest first (ties: lower column
/// first). A view into a [`Scores`]; names come from the model's metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Top<'a> {
    /// `(0-based column, contribution)`, largest first.
    entries: &'a [(u32, f32)],
    names: &'a [String],
    q: f32,
}

impl<'a> Top<'a> {
    /// No contributors.
    pub const EMPTY: Top<'static> = Top {
        entries: &[],
        names: &[],
        q: 0.0,
    };

    /// Number of contributors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none (`topContributors` 0).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `i`-th largest contributor.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<Contributor<'a>> {
        self.entries
            .get(i)
            .map(|&(col, c)| self.contributor(col, c))
    }

    /// The contributors, largest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Contributor<'a>> + 'a {
        let this = *self;
        self.entries
            .iter()
            .map(move |&(col, c)| this.contributor(col, c))
    }

    fn contributor(&self, col: u32, contribution: f32) -> Contributor<'a> {
        let i = col as usize;
        Contributor {
            variable: self.names.get(i).map_or("", String::as_str),
            column: i + 1,
            contribution,
            share: if self.q > 0.0 {
                contribution / self.q
            } else {
                0.0
            },
        }
    }
}

/// The result for one sample (a view into a [`Scores`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleScore<'a> {
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
    pub top: Top<'a>,
}

/// The scores of a batch, stored column by column. Filled by [`Scorer::score_into`], which
/// reuses its buffers: keep one per scoring loop and scoring stops allocating.
///
/// # Invariants
/// `t2.len() == q.len()` = rows; `top.len() == rows * per_row`; the columns in `top` are
/// below the width of `metadata`'s model, which produced the scores.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    t2: Vec<f32>,
    q: Vec<f32>,
    top: Vec<(u32, f32)>,
    per_row: usize,
    metadata: Option<Arc<Metadata>>,
    /// Scratch for [`select_top`].
    keys: Vec<i32>,
}

impl Scores {
    /// Number of scored rows.
    #[must_use]
    pub fn len(&self) -> usize {
        self.t2.len()
    }

    /// True when no row was scored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.t2.is_empty()
    }

    /// The version of the model that produced these scores (`None` before the first batch).
    #[must_use]
    pub fn version(&self) -> Option<&str> {
        self.metadata.as_deref().map(|m| m.version.as_str())
    }

    /// The score of row `i`.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<SampleScore<'_>> {
        (i < self.len()).then(|| self.row(i))
    }

    /// Every row's score, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = SampleScore<'_>> + '_ {
        (0..self.len()).map(|i| self.row(i))
    }

    /// Row `i < len` (rows exist only with the metadata of the model that scored them).
    fn row(&self, i: usize) -> SampleScore<'_> {
        let (t2_limit, q_limit, names) = self
            .metadata
            .as_deref()
            .map_or((f64::INFINITY, f64::INFINITY, &[][..]), |m| {
                (m.t2_limit, m.q_limit, &m.variables[..])
            });
        let (t2, q) = (self.t2[i], self.q[i]);
        let entries = self
            .top
            .get(i * self.per_row..(i + 1) * self.per_row)
            .unwrap_or_default();
        let t2_alarm = f64::from(t2) > t2_limit;
        let q_alarm = f64::from(q) > q_limit;
        SampleScore {
            t2,
            q,
            t2_limit,
            q_limit,
            t2_alarm,
            q_alarm,
            alarm: t2_alarm || q_alarm,
            top: Top { entries, names, q },
        }
    }

    fn reset(&mut self, metadata: &Arc<Metadata>, rows: usize, per_row: usize) {
        if !self
            .metadata
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, metadata))
        {
            self.metadata = Some(Arc::clone(metadata));
        }
        self.per_row = per_row;
        self.t2.clear();
        self.q.clear();
        self.top.clear();
        self.t2.reserve(rows);
        self.q.reserve(rows);
        self.top.reserve(rows * per_row);
    }
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

fn ort_err(stage: &'static str) -> impl Fn(ort::Error) -> ScoreError {
    move |e| ScoreError::Ort {
        stage,
        message: e.to_string(),
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

    /// Runs the model on `x` and hands `f` views of its outputs `t2` `[N]`, `q` `[N]` and
    /// `contrib` `[N, width]`, shapes checked, without copying them.
    fn run_with<R>(
        &mut self,
        x: ArrayView2<'_, f32>,
        f: impl FnOnce(ArrayView1<'_, f32>, ArrayView1<'_, f32>, ArrayView2<'_, f32>) -> R,
    ) -> Result<R, ScoreError> {
        let width = self.width();
        if x.ncols() != width {
            return Err(ScoreError::Width {
                got: x.ncols(),
                expected: width,
            });
        }
        let n = x.nrows();
        let x = x.as_standard_layout();
        let input = TensorRef::from_array_view(&x).map_err(ort_err("creating the input tensor"))?;
        let out = self
            .session
            .run(ort::inputs!["x" => input])
            .map_err(ort_err("running the model"))?;
        let array = |name: &'static str| {
            out.get(name)
                .ok_or(ScoreError::OutputShape {
                    name,
                    shape: Vec::new(),
                    expected: "an output of that name".into(),
                })?
                .try_extract_array::<f32>()
                .map_err(ort_err("reading an output"))
        };
        let vector = |name: &'static str| {
            let v = array(name)?;
            let shape = v.shape().to_vec();
            v.into_dimensionality::<Ix1>()
                .ok()
                .filter(|v| v.len() == n)
                .ok_or_else(|| ScoreError::OutputShape {
                    name,
                    shape,
                    expected: format!("[{n}]"),
                })
        };
        let t2 = vector("t2")?;
        let q = vector("q")?;
        let c = array("contrib")?;
        let shape = c.shape().to_vec();
        let contrib = c
            .into_dimensionality::<Ix2>()
            .ok()
            .filter(|c| c.dim() == (n, width))
            .ok_or_else(|| ScoreError::OutputShape {
                name: "contrib",
                shape,
                expected: format!("[{n}, {width}]"),
            })?;
        Ok(f(t2, q, contrib))
    }

    /// Runs the model on `x` (`[N, width]`, raw measurements) and returns copies of its outputs.
    ///
    /// # Errors
    /// [`ScoreError`] on a wrong width, an ONNX Runtime failure or unexpected output shapes.
    pub fn run_raw(&mut self, x: ArrayView2<'_, f32>) -> Result<RawOutputs, ScoreError> {
        self.run_with(x, |t2, q, contrib| RawOutputs {
            t2: t2.to_vec(),
            q: q.to_vec(),
            contrib: contrib.to_owned(),
        })
    }

    /// Scores `x` (`[N, width]`) into `out`, replacing what it held: statistics, limits,
    /// alarm flags and the `top_k` variables contributing most to Q, for each row. Reuses
    /// `out`'s buffers; nothing is allocated per row.
    ///
    /// # Errors
    /// As [`Scorer::run_raw`]; `out` is then empty.
    pub fn score_into(
        &mut self,
        x: ArrayView2<'_, f32>,
        top_k: usize,
        out: &mut Scores,
    ) -> Result<(), ScoreError> {
        let per_row = top_k.min(self.width());
        out.reset(&self.metadata, x.nrows(), per_row);
        let Scores {
            t2, q, top, keys, ..
        } = out;
        self.run_with(x, |t2_out, q_out, contrib| {
            t2.extend(t2_out.iter().copied());
            q.extend(q_out.iter().copied());
            if per_row == 0 {
                return;
            }
            match contrib.as_slice() {
                Some(flat) => {
                    for row in flat.chunks_exact(contrib.ncols()) {
                        select_top(row, per_row, keys, top);
                    }
                }
                // ONNX Runtime returns contiguous tensors; copy a row should one not be.
                None => {
                    let mut buf = Vec::with_capacity(contrib.ncols());
                    for row in contrib.rows() {
                        buf.clear();
                        buf.extend(row.iter().copied());
                        select_top(&buf, per_row, keys, top);
                    }
                }
            }
        })
        .inspect_err(|_| {
            t2.clear();
            q.clear();
            top.clear();
        })
    }

    /// Scores `x` (`[N, width]`) into a new [`Scores`]; see [`Scorer::score_into`], which a
    /// scoring loop should call instead to reuse buffers.
    ///
    /// # Errors
    /// As [`Scorer::run_raw`].
    pub fn score(&mut self, x: ArrayView2<'_, f32>, top_k: usize) -> Result<Scores, ScoreError> {
        let mut out = Scores::default();
        self.score_into(x, top_k, &mut out)?;
        Ok(out)
    }
}

/// `f32::total_cmp` as an integer: `key(a) < key(b)` iff `a.total_cmp(&b)` is `Less`.
#[inline]
fn key(v: f32) -> i32 {
    // Same transform as `total_cmp`: flip the magnitude bits of negative numbers.
    #[allow(clippy::cast_possible_wrap)]
    let bits = v.to_bits() as i32;
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_wrap)]
    let flipped = bits ^ ((((bits >> 31) as u32) >> 1) as i32);
    flipped
}

/// Appends the `k` (≤ the row's length) largest values of `row` to `out` as
/// `(0-based column, value)`, largest first by `f32::total_cmp`, ties by lower column.
///
/// `k` passes over the row's keys (see [`key`], computed once into `keys`): each takes the
/// maximum (a branch-free reduction the compiler vectorizes), finds its first column and
/// marks it taken. For the small `k` of a contributor list this beats one pass that keeps
/// the best so far, whose data-dependent branches mispredict on every new leader.
fn select_top(row: &[f32], k: usize, keys: &mut Vec<i32>, out: &mut Vec<(u32, f32)>) {
    let start = out.len();
    keys.clear();
    keys.extend(row.iter().map(|&v| key(v)));
    for _ in 0..k {
        let m = keys.iter().copied().fold(i32::MIN, i32::max);
        let pos = if m == i32::MIN {
            // `i32::MIN` marks taken columns (and is the key of one NaN bit pattern).
            (0..row.len()).find(|&i| !out[start..].iter().any(|&(c, _)| c as usize == i))
        } else {
            keys.iter().position(|&x| x == m)
        };
        let Some(pos) = pos else { break };
        #[allow(clippy::cast_possible_truncation)]
        out.push((pos as u32, row[pos]));
        keys[pos] = i32::MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top_of(row: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut out = vec![(99, 99.0)];
        select_top(row, k.min(row.len()), &mut Vec::new(), &mut out);
        assert_eq!(out[0], (99, 99.0), "what was there stays");
        out.split_off(1)
    }

    /// The definition: sort by value descending (total order), then column ascending.
    fn reference(row: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut idx: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v))
            .collect();
        idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        idx.truncate(k);
        idx
    }

    #[test]
    fn selection_equals_a_full_sort() {
        let mut rows: Vec<Vec<f32>> = vec![
            vec![1.0, 4.0, 4.0, 2.0],
            vec![0.0],
            vec![3.0, 3.0, 3.0, 3.0, 3.0],
            vec![-1.0, -0.0, 0.0, f32::NAN, -f32::NAN, f32::INFINITY, 2.0],
            vec![5.0, 4.0, 3.0, 2.0, 1.0, 0.5],
            vec![0.5, 1.0, 2.0, 3.0, 4.0, 5.0],
        ];
        // A deterministic pseudo-random row of the model's width, with repeats.
        let mut s = 0x2545_f491_u32;
        let noisy: Vec<f32> = (0..52)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20) as f32 / 4.0
            })
            .collect();
        let min_key_nan = f32::from_bits(u32::MAX);
        rows.push(vec![min_key_nan, 1.0, min_key_nan, min_key_nan]);
        for row in rows.iter().chain(std::iter::once(&noisy)) {
            for k in 1..=row.len() {
                let got = top_of(row, k);
                let want = reference(row, k);
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.0, w.0, "row {row:?} k {k}");
                    assert_eq!(g.1.to_bits(), w.1.to_bits());
                }
            }
        }
    }

    #[test]
    fn top_views_are_named_with_shares() {
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| (*s).into()).collect();
        let entries = top_of(&[1.0, 4.0, 4.0, 2.0], 3);
        let top = Top {
            entries: &entries,
            names: &names,
            q: 11.0,
        };
        let got: Vec<(&str, usize)> = top.iter().map(|c| (c.variable, c.column)).collect();
        assert_eq!(got, vec![("b", 2), ("c", 3), ("d", 4)]);
        assert_eq!(top.len(), 3);
        assert!((top.get(0).unwrap().share - 4.0 / 11.0).abs() < 1e-6);
        let zero_q = Top { q: 0.0, ..top };
        assert!(zero_q.iter().all(|c| c.share == 0.0));
        assert!(Top::EMPTY.is_empty());
    }
}
