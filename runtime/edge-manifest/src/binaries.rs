//! Finding a process module's binary: the agent resolves it before spawning, `edgectl check`
//! reports the modules whose binary is missing or not executable.

use crate::locate::child;
use crate::parse::{base_pointer, module_pointer};
use crate::{Deployment, ModuleKind, Problem, ProcessSettings};
use std::path::{Path, PathBuf};

/// Finds the binary of a process module: an absolute `path` as is, a relative path with a `/`
/// against `manifest_dir`, a bare name in the first `module_path` directory that holds an
/// executable file of that name. Returns `None` when the result is not an executable file.
#[must_use]
pub fn resolve_binary(
    settings: &ProcessSettings,
    manifest_dir: &Path,
    module_path: &[PathBuf],
) -> Option<PathBuf> {
    match binary_location(&settings.path) {
        Location::Absolute => Some(settings.path.clone()).filter(|p| is_executable_file(p)),
        Location::ManifestRelative => {
            Some(manifest_dir.join(&settings.path)).filter(|p| is_executable_file(p))
        }
        Location::ModulePath => module_path
            .iter()
            .map(|dir| dir.join(&settings.path))
            .find(|p| is_executable_file(p)),
    }
}

/// Checks that every process module's binary can be found, is a file and is executable
/// (`edgectl check`). Problems point at `settings/path` and have no text position.
#[must_use]
pub fn check_binaries(
    d: &Deployment,
    manifest_dir: &Path,
    module_path: &[PathBuf],
) -> Vec<Problem> {
    let mut out = Vec::new();
    for m in d.modules.values() {
        let ModuleKind::Process(settings) = &m.kind else {
            continue;
        };
        if resolve_binary(settings, manifest_dir, module_path).is_some() {
            continue;
        }
        let shown = settings.path.display();
        let message = match binary_location(&settings.path) {
            Location::ModulePath => {
                let dirs: Vec<String> = module_path
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                if dirs.is_empty() {
                    format!("`{shown}` is a bare name but the module path is empty")
                } else {
                    format!(
                        "no executable file `{shown}` in the module path ({})",
                        dirs.join(", ")
                    )
                }
            }
            Location::Absolute => why_not_executable(&settings.path),
            Location::ManifestRelative => why_not_executable(&manifest_dir.join(&settings.path)),
        };
        let pointer = child(
            &child(&module_pointer(&base_pointer(), m.id.as_str()), "settings"),
            "path",
        );
        out.push(Problem {
            pointer,
            position: None,
            message,
        });
    }
    out
}

enum Location {
    Absolute,
    ManifestRelative,
    ModulePath,
}

fn binary_location(path: &Path) -> Location {
    if path.is_absolute() {
        Location::Absolute
    } else if path.to_string_lossy().contains('/') {
        Location::ManifestRelative
    } else {
        Location::ModulePath
    }
}

fn why_not_executable(path: &Path) -> String {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) => format!("`{shown}` cannot be used: {e}"),
        Ok(m) if !m.is_file() => format!("`{shown}` is not a file"),
        Ok(_) => format!("`{shown}` is not executable"),
    }
}

fn is_executable_file(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => is_executable(&m),
        _ => false,
    }
}

#[cfg(unix)]
fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_m: &std::fs::Metadata) -> bool {
    true
}
