//! Module output capture: every line a module writes to stdout or stderr goes to
//! `logs/<id>.log` as `<UTC timestamp> <stdout|stderr> <line>`, with size-based rotation to
//! `<id>.log.1` … `<id>.log.N` (1 is the newest).

use crate::runner::OutputStream;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

/// Lines longer than this are split.
const MAX_LINE: u64 = 64 * 1024;

/// A log file with rotation.
///
/// # Invariants
/// `size` is the length of the current file; after a write the file is at most `max_bytes`
/// long unless a single line is longer than that.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<tokio::fs::File>,
    size: u64,
}

impl RotatingLog {
    /// A log at `path`; the file is opened (appending) on the first write.
    #[must_use]
    pub fn new(path: PathBuf, max_bytes: u64, keep: usize) -> Self {
        Self {
            path,
            max_bytes,
            keep,
            file: None,
            size: 0,
        }
    }

    /// The current file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of rotated file `n` (1 = newest).
    #[must_use]
    pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Appends one line with a timestamp and the stream name, rotating first if it would not fit.
    ///
    /// # Errors
    /// When the file cannot be opened, rotated or written.
    pub async fn write_line(&mut self, stream: &str, line: &[u8]) -> io::Result<()> {
        let ts = humantime::format_rfc3339_millis(SystemTime::now());
        let text = format!("{ts} {stream} {}\n", String::from_utf8_lossy(line));
        let len = text.len() as u64;
        if self.file.is_none() {
            self.open().await?;
        }
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate().await?;
            self.open().await?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("log file not open"));
        };
        file.write_all(text.as_bytes()).await?;
        file.flush().await?;
        self.size += len;
        Ok(())
    }

    async fn open(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        self.size = file.metadata().await?.len();
        self.file = Some(file);
        Ok(())
    }

    async fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush().await?;
        }
        if self.keep == 0 {
            ignore_missing(tokio::fs::remove_file(&self.path).await)?;
        } else {
            ignore_missing(
                tokio::fs::remove_file(Self::rotated_path(&self.path, self.keep)).await,
            )?;
            for n in (1..self.keep).rev() {
                ignore_missing(
                    tokio::fs::rename(
                        Self::rotated_path(&self.path, n),
                        Self::rotated_path(&self.path, n + 1),
                    )
                    .await,
                )?;
            }
            tokio::fs::rename(&self.path, Self::rotated_path(&self.path, 1)).await?;
        }
        self.size = 0;
        Ok(())
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Copies `stream` line by line into `log` until end of file.
pub(crate) async fn pump(
    stream: OutputStream,
    name: &'static str,
    module: String,
    log: Arc<tokio::sync::Mutex<RotatingLog>>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut warned = false;
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(module = %module, stream = name, error = %e, "Reading module output failed.");
                break;
            }
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        if let Err(e) = log.lock().await.write_line(name, &buf).await
            && !warned
        {
            tracing::warn!(module = %module, error = %e, "Writing the module log failed; lines are lost.");
            warned = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotates_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("m.log");
        let mut log = RotatingLog::new(path.clone(), 200, 2);
        for i in 0..40 {
            log.write_line("stdout", format!("line {i:03}").as_bytes())
                .await
                .unwrap();
        }
        let cur = std::fs::read_to_string(&path).unwrap();
        let r1 = std::fs::read_to_string(RotatingLog::rotated_path(&path, 1)).unwrap();
        let r2 = std::fs::read_to_string(RotatingLog::rotated_path(&path, 2)).unwrap();
        assert!(!RotatingLog::rotated_path(&path, 3).exists());
        for f in [&cur, &r1, &r2] {
            assert!(f.len() <= 200, "{} bytes", f.len());
        }
        assert!(cur.trim_end().ends_with("stdout line 039"));
        // Order: .2 older than .1 older than current.
        let first = |s: &str| {
            s.lines()
                .next()
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert!(first(&r2) < first(&r1) && first(&r1) < first(&cur));
        // Every line starts with an RFC 3339 UTC timestamp.
        for line in cur.lines() {
            let ts = line.split(' ').next().unwrap();
            assert!(humantime::parse_rfc3339(ts).is_ok(), "{line}");
        }
    }

    #[tokio::test]
    async fn keep_zero_truncates_and_reopen_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut log = RotatingLog::new(path.clone(), 60, 0);
        log.write_line("stdout", b"aaaaaaaaaa").await.unwrap();
        drop(log);
        let mut log = RotatingLog::new(path.clone(), 60, 0);
        log.write_line("stderr", b"bbbbbbbbbb").await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("stderr bbbbbbbbbb"));
        assert!(!RotatingLog::rotated_path(&path, 1).exists());
    }
}
