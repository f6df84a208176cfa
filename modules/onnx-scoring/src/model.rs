//! Loading a model and verifying it before it may score: file hash, interface, golden test.

use crate::scorer::Scorer;
use ndarray::Array2;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorElementType;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the metadata file next to the model when the twin names none.
pub const METADATA_FILE: &str = "metadata.json";

/// What to load: the twin's `model` section, resolved to paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The `.onnx` file.
    pub path: PathBuf,
    /// Expected SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Expected version; must equal the metadata's `version`.
    pub version: String,
    /// The metadata file (default: [`METADATA_FILE`] beside the model).
    pub metadata: Option<PathBuf>,
}

impl ModelSpec {
    /// Resolves a twin URI (`file:///abs/model.onnx` or a plain path) to a spec.
    ///
    /// # Errors
    /// A message when the URI has a scheme other than `file`.
    pub fn from_uri(
        uri: &str,
        sha256: &str,
        version: &str,
        metadata: Option<&str>,
    ) -> Result<Self, String> {
        let to_path = |u: &str| -> Result<PathBuf, String> {
            if let Some(rest) = u.strip_prefix("file://") {
                return Ok(PathBuf::from(rest));
            }
            if u.contains("://") {
                return Err(format!(
                    "unsupported URI scheme in {u:?} (only file:// and plain paths)"
                ));
            }
            Ok(PathBuf::from(u))
        };
        Ok(Self {
            path: to_path(uri)?,
            sha256: sha256.trim().to_ascii_lowercase(),
            version: version.to_string(),
            metadata: metadata.map(to_path).transpose()?,
        })
    }

    /// The metadata file path.
    #[must_use]
    pub fn metadata_path(&self) -> PathBuf {
        self.metadata.clone().unwrap_or_else(|| {
            self.path
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(METADATA_FILE)
        })
    }
}

/// A tensor's declared name, element type and shape (`-1` = any size).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type, `float32`.
    pub dtype: String,
    /// Dimensions, `-1` for a dynamic one.
    pub shape: Vec<i64>,
}

/// The model's `metadata.json` (fields used here; others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Metadata {
    /// Model version.
    pub version: String,
    /// SHA-256 of the `.onnx` file.
    pub sha256: String,
    /// Inputs (exactly `x`, `[-1, variables]`).
    pub inputs: Vec<TensorSpec>,
    /// Outputs (`t2` `[-1]`, `q` `[-1]`, `contrib` `[-1, variables]`).
    pub outputs: Vec<TensorSpec>,
    /// Variable names in column order.
    pub variables: Vec<String>,
    /// Significance level of the limits.
    pub alpha: f64,
    /// T² control limit.
    pub t2_limit: f64,
    /// Q control limit.
    pub q_limit: f64,
    /// Golden test file, relative to the metadata file.
    pub golden: String,
}

/// The golden test: inputs and the outputs they must give.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Golden {
    /// Input rows.
    pub x: Vec<Vec<f32>>,
    /// Expected T².
    pub t2: Vec<f64>,
    /// Expected Q.
    pub q: Vec<f64>,
    /// Expected contributions (optional).
    #[serde(default)]
    pub contrib: Option<Vec<Vec<f64>>>,
    /// Relative tolerance for t2 and q: `|got - want| <= tol * max(1, |want|)`.
    pub tolerance: f64,
    /// Same for contributions (default: `tolerance`).
    #[serde(default)]
    pub contrib_tolerance: Option<f64>,
}

/// Why a model was refused. Each variant names what failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {what} {path}")]
    Read {
        /// `model`, `metadata` or `golden test`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Metadata or golden file is not the JSON expected.
    #[error("invalid {what} {path}: {message}")]
    Parse {
        /// `metadata` or `golden test`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// The file's hash is not the expected one.
    #[error("sha256 mismatch against the {against}: expected {expected}, file has {actual}")]
    Hash {
        /// `twin` or `metadata`.
        against: &'static str,
        /// Expected hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// The twin's version is not the metadata's.
    #[error("version mismatch: twin says {twin}, metadata says {metadata}")]
    Version {
        /// `model.version` from the twin.
        twin: String,
        /// `version` from the metadata.
        metadata: String,
    },
    /// ONNX Runtime refused the file (corrupt or unsupported model).
    #[error("onnx runtime could not load the model: {0}")]
    Session(String),
    /// Names, types or shapes differ from the metadata, or the metadata is not what the scorer
    /// needs.
    #[error("interface mismatch: {0}")]
    Interface(String),
    /// The golden input did not give the golden output.
    #[error("golden test failed: {0}")]
    Golden(String),
}

impl ModelError {
    /// A short machine-readable kind: `read`, `parse`, `hash`, `version`, `session`,
    /// `interface` or `golden`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Parse { .. } => "parse",
            Self::Hash { .. } => "hash",
            Self::Version { .. } => "version",
            Self::Session(_) => "session",
            Self::Interface(_) => "interface",
            Self::Golden(_) => "golden",
        }
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|source| ModelError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    what: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<T, ModelError> {
    serde_json::from_slice(bytes).map_err(|e| ModelError::Parse {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Lowercase hex SHA-256 of `bytes`.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Loads and verifies a model: reads the file once, checks its SHA-256 against the twin and
/// the metadata, checks the version, builds the session from those same bytes, checks input
/// and output names, types and shapes against the metadata, and runs the golden test. Only a
/// model that passes all of this is returned.
///
/// # Errors
/// [`ModelError`] naming the first check that failed.
pub fn load(env: &Environment, spec: &ModelSpec) -> Result<Scorer, ModelError> {
    let bytes = read("model", &spec.path)?;
    let actual = sha256_hex(&bytes);
    if actual != spec.sha256 {
        return Err(ModelError::Hash {
            against: "twin",
            expected: spec.sha256.clone(),
            actual,
        });
    }
    let meta_path = spec.metadata_path();
    let metadata: Metadata = parse("metadata", &meta_path, &read("metadata", &meta_path)?)?;
    if metadata.sha256.to_ascii_lowercase() != actual {
        return Err(ModelError::Hash {
            against: "metadata",
            expected: metadata.sha256.clone(),
            actual,
        });
    }
    if metadata.version != spec.version {
        return Err(ModelError::Version {
            twin: spec.version.clone(),
            metadata: metadata.version.clone(),
        });
    }
    check_metadata(&metadata)?;
    let golden_path = meta_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(&metadata.golden);
    let golden: Golden = parse(
        "golden test",
        &golden_path,
        &read("golden test", &golden_path)?,
    )?;

    let session = Session::builder(env)
        .map_err(|e| ModelError::Session(e.to_string()))?
        .with_intra_threads(1)
        .map_err(|e| ModelError::Session(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| ModelError::Session(e.to_string()))?
        .commit_from_memory(&bytes)
        .map_err(|e| ModelError::Session(e.to_string()))?;
    check_interface(&session, &metadata)?;
    let mut scorer = Scorer::new(session, Arc::new(metadata), actual);
    golden_test(&mut scorer, &golden)?;
    tracing::info!(version = %scorer.version(), sha256 = %scorer.sha256(), "Model verified.");
    Ok(scorer)
}

/// The metadata describes what the scorer needs: input `x` `[-1, V]`, outputs `t2` `[-1]`,
/// `q` `[-1]`, `contrib` `[-1, V]`, all float32, V = number of variables, finite limits.
fn check_metadata(m: &Metadata) -> Result<(), ModelError> {
    let v = i64::try_from(m.variables.len()).unwrap_or(i64::MAX);
    let want_in = [("x", vec![-1, v])];
    let want_out = [("t2", vec![-1]), ("q", vec![-1]), ("contrib", vec![-1, v])];
    let same = |got: &[TensorSpec], want: &[(&str, Vec<i64>)]| {
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(g, (n, s))| g.name == *n && g.shape == *s && g.dtype == "float32")
    };
    if m.variables.is_empty() || !same(&m.inputs, &want_in) || !same(&m.outputs, &want_out) {
        return Err(ModelError::Interface(format!(
            "metadata must declare input x float32 [-1, {v}] and outputs t2 [-1], q [-1], contrib [-1, {v}] \
             (float32); it declares inputs {:?} and outputs {:?}",
            m.inputs, m.outputs
        )));
    }
    if !(m.t2_limit.is_finite() && m.t2_limit > 0.0 && m.q_limit.is_finite() && m.q_limit > 0.0) {
        return Err(ModelError::Interface(format!(
            "limits must be positive and finite (t2_limit {}, q_limit {})",
            m.t2_limit, m.q_limit
        )));
    }
    Ok(())
}

fn outlet_matches(
    name: &str,
    dtype: &ort::value::ValueType,
    spec: &TensorSpec,
) -> Result<(), String> {
    if name != spec.name {
        return Err(format!(
            "model has {name:?} where the metadata declares {:?}",
            spec.name
        ));
    }
    let ty = dtype.tensor_type();
    if ty != Some(TensorElementType::Float32) {
        return Err(format!(
            "{name}: element type {ty:?}, metadata says float32"
        ));
    }
    let shape: Vec<i64> = dtype.tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
    if shape != spec.shape {
        return Err(format!(
            "{name}: shape {shape:?}, metadata says {:?}",
            spec.shape
        ));
    }
    Ok(())
}

fn check_interface(session: &Session, m: &Metadata) -> Result<(), ModelError> {
    let check =
        |kind: &str, got: &[ort::value::Outlet], want: &[TensorSpec]| -> Result<(), ModelError> {
            if got.len() != want.len() {
                let names: Vec<&str> = got.iter().map(ort::value::Outlet::name).collect();
                return Err(ModelError::Interface(format!(
                    "model has {kind}s {names:?}, metadata declares {} of them",
                    want.len()
                )));
            }
            for (g, w) in got.iter().zip(want) {
                outlet_matches(g.name(), g.dtype(), w).map_err(ModelError::Interface)?;
            }
            Ok(())
        };
    check("input", session.inputs(), &m.inputs)?;
    check("output", session.outputs(), &m.outputs)
}

fn close(got: f32, want: f64, tol: f64) -> bool {
    (f64::from(got) - want).abs() <= tol * want.abs().max(1.0)
}

fn golden_test(scorer: &mut Scorer, g: &Golden) -> Result<(), ModelError> {
    let n = g.x.len();
    let w = scorer.width();
    if n == 0 || g.t2.len() != n || g.q.len() != n || g.x.iter().any(|r| r.len() != w) {
        return Err(ModelError::Golden(format!(
            "golden file is inconsistent: {n} rows of {w} values, {} t2, {} q expected",
            g.t2.len(),
            g.q.len()
        )));
    }
    let x = Array2::from_shape_vec((n, w), g.x.concat())
        .map_err(|e| ModelError::Golden(e.to_string()))?;
    let raw = scorer
        .run_raw(x.view())
        .map_err(|e| ModelError::Golden(format!("running the golden input: {e}")))?;
    for i in 0..n {
        for (name, got, want) in [("t2", raw.t2[i], g.t2[i]), ("q", raw.q[i], g.q[i])] {
            if !close(got, want, g.tolerance) {
                return Err(ModelError::Golden(format!(
                    "row {i}: {name} = {got}, expected {want} (relative tolerance {})",
                    g.tolerance
                )));
            }
        }
    }
    if let Some(contrib) = &g.contrib {
        let tol = g.contrib_tolerance.unwrap_or(g.tolerance);
        if contrib.len() != n {
            return Err(ModelError::Golden(format!(
                "golden file has {} contrib rows for {n} inputs",
                contrib.len()
            )));
        }
        for (i, (row, want_row)) in raw.contrib.rows().into_iter().zip(contrib).enumerate() {
            if want_row.len() != w {
                return Err(ModelError::Golden(format!(
                    "golden contrib row {i} has {} values",
                    want_row.len()
                )));
            }
            if let Some(j) = (0..w).find(|&j| !close(row[j], want_row[j], tol)) {
                return Err(ModelError::Golden(format!(
                    "row {i}: contrib[{j}] = {}, expected {} (relative tolerance {tol})",
                    row[j], want_row[j]
                )));
            }
        }
    }
    Ok(())
}
