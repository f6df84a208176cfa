//! Parsing and validation (to be written).
use crate::{Deployment, ManifestError, Notice, Problem};
use std::path::Path;

/// Parses and validates manifest text. `source_name` names it in errors.
///
/// # Errors
/// [`ManifestError`] with every problem found.
pub fn parse(_text: &str, source_name: &str) -> Result<(Deployment, Vec<Notice>), ManifestError> {
    Err(ManifestError { source_name: source_name.into(), problems: vec![] })
}

/// Reads and parses a manifest file.
///
/// # Errors
/// [`ManifestError`] when the file cannot be read or is invalid.
pub fn parse_file(path: &Path) -> Result<(Deployment, Vec<Notice>), ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        source_name: path.display().to_string(),
        problems: vec![Problem { pointer: String::new(), position: None, message: format!("cannot read: {e}") }],
    })?;
    parse(&text, &path.display().to_string())
}

/// Checks that every process module's binary can be found (`edgectl check`).
#[must_use]
pub fn check_binaries(_d: &Deployment, _manifest_dir: &Path, _module_path: &[std::path::PathBuf]) -> Vec<Problem> {
    vec![]
}
