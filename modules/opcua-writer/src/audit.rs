//! The audit log: one JSON line per attempted write, appended and fsynced before the write is
//! reported as done, readable by an operator (`edgectl invoke opcua-writer audit`).

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One attempted write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The node id.
    pub node: String,
    /// The value before the write, as read from the DCS (null when unknown).
    pub old: serde_json::Value,
    /// The value the message asked for.
    pub requested: serde_json::Value,
    /// The value written (null when nothing was written).
    pub written: serde_json::Value,
    /// Outcome: `written`, `clamped`, `refused`, `skipped`, `blocked`, `queued`, `mismatch`, `failed`.
    pub outcome: String,
    /// Why (the rules that applied, the error).
    pub reason: String,
    /// The model version of the result.
    pub model_version: String,
    /// The message id of the result (empty when it had none).
    pub message_id: String,
}

/// The audit log could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}")]
pub struct AuditError {
    /// The file.
    pub path: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// An append-only JSON-lines file.
///
/// # Invariants
/// Every record is one line; `append` and `append_all` return only after the lines are on
/// disk (fsync).
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
}

impl AuditLog {
    /// Opens (creating) `dir/audit.jsonl`.
    ///
    /// # Errors
    /// [`AuditError`] when the directory or file cannot be created.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let path = dir.join("audit.jsonl");
        let err = |source| AuditError {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        Ok(Self { path, file })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record and fsyncs.
    ///
    /// # Errors
    /// [`AuditError`] when the write or the sync fails.
    pub fn append(&mut self, r: &AuditRecord) -> Result<(), AuditError> {
        self.append_all(std::slice::from_ref(r))
    }

    /// Appends records in order with one write and one fsync (group commit: the records of
    /// one result message share a sync). Nothing to do for an empty slice.
    ///
    /// # Errors
    /// [`AuditError`] when the write or the sync fails.
    pub fn append_all(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        let err = |source| AuditError {
            path: self.path.display().to_string(),
            source,
        };
        let mut buf = Vec::with_capacity(records.len() * 256);
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(|e| err(std::io::Error::other(e)))?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf).map_err(err)?;
        self.file.sync_data().map_err(err)
    }

    /// The last `n` records, oldest first (lines that do not parse are skipped).
    ///
    /// # Errors
    /// [`AuditError`] when the file cannot be read.
    pub fn recent(&self, n: usize) -> Result<Vec<AuditRecord>, AuditError> {
        read_recent(&self.path, n)
    }
}

/// The last `n` records of an audit file, oldest first.
///
/// # Errors
/// [`AuditError`] when the file cannot be read.
pub fn read_recent(path: &Path, n: usize) -> Result<Vec<AuditRecord>, AuditError> {
    let err = |source| AuditError {
        path: path.display().to_string(),
        source,
    };
    let f = File::open(path).map_err(err)?;
    let mut out = std::collections::VecDeque::with_capacity(n.min(1024));
    for line in BufReader::new(f).lines() {
        let line = line.map_err(err)?;
        if let Ok(r) = serde_json::from_str::<AuditRecord>(&line) {
            if out.len() == n {
                out.pop_front();
            }
            if n > 0 {
                out.push_back(r);
            }
        }
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> AuditRecord {
        AuditRecord {
            time: "t".into(),
            node: format!("n{i}"),
            old: serde_json::json!(1.0),
            requested: serde_json::json!(2.0),
            written: serde_json::json!(2.0),
            outcome: "written".into(),
            reason: String::new(),
            model_version: "v1".into(),
            message_id: format!("m{i}"),
        }
    }

    #[test]
    fn appends_survive_reopen_and_recent_returns_the_tail() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut log = AuditLog::open(dir.path()).expect("open");
            for i in 0..5 {
                log.append(&rec(i)).expect("append");
            }
        }
        let mut log = AuditLog::open(dir.path()).expect("reopen");
        log.append(&rec(5)).expect("append");
        let r = log.recent(3).expect("recent");
        assert_eq!(
            r.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(),
            ["n3", "n4", "n5"]
        );
        assert!(log.recent(0).expect("zero").is_empty());
        assert_eq!(log.recent(100).expect("all").len(), 6);
    }

    #[test]
    fn append_all_keeps_order_and_one_line_per_record() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = AuditLog::open(dir.path()).expect("open");
        log.append_all(&[]).expect("empty");
        log.append_all(&[rec(0), rec(1), rec(2)]).expect("batch");
        log.append(&rec(3)).expect("one");
        let text = std::fs::read_to_string(log.path()).expect("read");
        assert_eq!(text.lines().count(), 4);
        let r = log.recent(10).expect("recent");
        assert_eq!(
            r.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(),
            ["n0", "n1", "n2", "n3"]
        );
    }
}
