//! Deployment history: one JSON object per line in `history.jsonl`, appended and synced, read
//! back when the agent starts. A torn last line (power cut mid-append) is skipped.

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What happened to a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The hub accepted it and the agent started applying it.
    Applied,
    /// Refused before anything changed.
    Refused {
        /// Azure status code (400, 412, 417).
        code: u16,
        /// Every reason.
        reasons: Vec<String>,
    },
    /// It did not become healthy in time; the last good deployment was restored.
    RolledBack {
        /// Why it was not healthy.
        why: String,
        /// Hash of the deployment restored.
        to: String,
    },
    /// Every module came up.
    Healthy,
    /// It did not become healthy in time and there was nothing to roll back to.
    Unhealthy {
        /// Why it was not healthy.
        why: String,
    },
}

impl Outcome {
    /// The outcome's name as written in the file.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Refused { .. } => "refused",
            Outcome::RolledBack { .. } => "rolled-back",
            Outcome::Healthy => "healthy",
            Outcome::Unhealthy { .. } => "unhealthy",
        }
    }
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The deployment's hash.
    pub hash: String,
    /// Where it came from (a file path, `upstream`, `rollback`, …).
    pub source: String,
    /// UTC, RFC 3339 / ISO 8601 with milliseconds.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl HistoryEntry {
    /// An entry stamped now.
    #[must_use]
    pub fn now(hash: &str, source: &str, outcome: Outcome) -> Self {
        Self {
            hash: hash.to_owned(),
            source: source.to_owned(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            outcome,
        }
    }
}

/// The history file and its entries in memory.
///
/// # Invariants
/// `entries` equals the readable lines of the file plus every entry appended since, in order.
#[derive(Debug)]
pub(crate) struct History {
    path: PathBuf,
    entries: Vec<HistoryEntry>,
}

impl History {
    /// Loads `path` (a missing file is an empty history).
    pub(crate) fn load(path: &Path) -> io::Result<Self> {
        let mut entries = Vec::new();
        match std::fs::File::open(path) {
            Ok(f) => {
                for (n, line) in io::BufReader::new(f).lines().enumerate() {
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str(&line) {
                        Ok(e) => entries.push(e),
                        Err(e) => tracing::warn!(
                            path = %path.display(), line = n + 1, error = %e,
                            "Skipping an unreadable deployment history line."
                        ),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    pub(crate) fn entries(&self) -> &[HistoryEntry] {
        &self.entries
    }

    /// Appends and syncs one entry. The entry is kept in memory even when the write fails.
    pub(crate) fn append(&mut self, entry: HistoryEntry) -> io::Result<()> {
        let result = (|| {
            let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
            line.push(b'\n');
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            // A torn earlier line must not swallow this one.
            if f.metadata()?.len() > 0 && !ends_with_newline(&self.path)? {
                f.write_all(b"\n")?;
            }
            f.write_all(&line)?;
            f.sync_data()
        })();
        self.entries.push(entry);
        result
    }
}

fn ends_with_newline(path: &Path) -> io::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut h = History::load(&path).unwrap();
        assert!(h.entries().is_empty());
        h.append(HistoryEntry::now("h1", "file", Outcome::Applied))
            .unwrap();
        h.append(HistoryEntry::now(
            "h2",
            "file",
            Outcome::Refused {
                code: 400,
                reasons: vec!["bad route".into()],
            },
        ))
        .unwrap();
        // A torn line at the end, as after a power cut.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"hash\":\"h3\",\"sou")
            .unwrap();
        let mut h = History::load(&path).unwrap();
        assert_eq!(h.entries().len(), 2);
        h.append(HistoryEntry::now(
            "h1",
            "file",
            Outcome::RolledBack {
                why: "crash".into(),
                to: "h0".into(),
            },
        ))
        .unwrap();
        let h = History::load(&path).unwrap();
        let names: Vec<&str> = h.entries().iter().map(|e| e.outcome.name()).collect();
        assert_eq!(names, vec!["applied", "refused", "rolled-back"]);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["outcome"], "applied");
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
        assert!(text.contains(r#""outcome":"rolled-back","why":"crash","to":"h0""#));
    }
}
