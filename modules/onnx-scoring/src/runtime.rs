//! Finding and loading the ONNX Runtime shared library (ort `load-dynamic`).

use ort::environment::Environment;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Where the pip wheel `onnxruntime==1.31.1` puts the library inside the repo's `.venv`.
pub const VENV_LIBRARY: &str =
    ".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1";

/// The environment variable naming the library file.
pub const ENV_VAR: &str = "ORT_DYLIB_PATH";

/// The ONNX Runtime library could not be found or loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// No candidate path exists.
    #[error(
        "onnx runtime library not found: set ORT_DYLIB_PATH or the twin's runtime.ortLibrary to \
         libonnxruntime.so.1.31.1, or install it with `python3 -m venv .venv && .venv/bin/pip install \
         onnxruntime==1.31.1` in the repo (looked for {tried})"
    )]
    NotFound {
        /// The paths that were tried.
        tried: String,
    },
    /// The file exists but did not load (wrong version, not a library, ...).
    #[error("onnx runtime library {path} did not load: {message}")]
    Load {
        /// The library file.
        path: PathBuf,
        /// What ort said.
        message: String,
    },
}

/// Resolves the library path: `ORT_DYLIB_PATH` (when set, it must exist), else `configured` (twin `runtime.ortLibrary`),
/// else [`VENV_LIBRARY`] under the current directory or one of its ancestors, else under the
/// source tree this crate was built from.
///
/// # Errors
/// [`RuntimeError::NotFound`] naming every path tried.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(ENV_VAR).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        // An explicit setting that is wrong is an error, not a reason to look elsewhere.
        return Err(RuntimeError::NotFound {
            tried: format!("{ENV_VAR}={}", p.display()),
        });
    }
    if let Some(p) = configured {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        tried.push(format!("runtime.ortLibrary={}", p.display()));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    roots.extend(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(Path::to_path_buf),
    );
    for root in roots {
        let p = root.join(VENV_LIBRARY);
        if p.is_file() {
            return Ok(p);
        }
        let shown = p.display().to_string();
        if !tried.contains(&shown) {
            tried.push(shown);
        }
    }
    Err(RuntimeError::NotFound {
        tried: tried.join(", "),
    })
}

static ENV: OnceLock<Environment> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The process-wide ONNX Runtime environment, loading the library on first use (see
/// [`locate`]). Later calls return the same environment whatever `configured` says: a process
/// loads ONNX Runtime once.
///
/// # Errors
/// [`RuntimeError`] when the library is missing or does not load.
pub fn environment(configured: Option<&Path>) -> Result<Environment, RuntimeError> {
    if let Some(e) = ENV.get() {
        return Ok(e.clone());
    }
    let _guard = INIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(e) = ENV.get() {
        return Ok(e.clone());
    }
    let path = locate(configured)?;
    let load_err = |message: String| RuntimeError::Load {
        path: path.clone(),
        message,
    };
    let env = ort::init_from(&path)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("onnx-scoring")
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded.");
    Ok(ENV.get_or_init(|| env).clone())
}
