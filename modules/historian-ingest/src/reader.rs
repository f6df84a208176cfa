//! File readers: TEP `.dat` (row and transposed layouts) and CSV, yielding one [`Row`] or one
//! [`BadRow`] at a time.
//!
//! Row files (TEP rows, CSV) are streamed line by line, so memory does not grow with the file;
//! a transposed TEP file has to be read whole (52 lines × N samples, a few hundred KiB).

use crate::config::{CsvSource, TEP_VARIABLES, TepLayout};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The 52 TEP variable names, in file column order: `XMEAS(1)`..`XMEAS(41)`, `XMV(1)`..`XMV(11)`.
#[must_use]
pub fn tep_tags() -> Vec<String> {
    (1..=41)
        .map(|i| format!("XMEAS({i})"))
        .chain((1..=11).map(|i| format!("XMV({i})")))
        .collect()
}

/// One good row of a file, before tag mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based sample index within the run (data rows, counting bad ones, so that indexes match
    /// the file even when a row is skipped).
    pub index: u64,
    /// The sample's time: stored (CSV) or `None` for the replayer to compute (TEP).
    pub ts: Option<SystemTime>,
    /// One value per column of [`FileReader::columns`]; `None` is an allowed NaN.
    pub values: Vec<Option<f64>>,
}

/// A row that could not be used, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number (0 when the problem is the file itself, e.g. it cannot be opened).
    pub line: u64,
    /// What is wrong.
    pub reason: BadRowReason,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// What is wrong with a bad row.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadRowReason {
    /// The row has the wrong number of values.
    #[error("expected {expected} values, found {found}")]
    ColumnCount {
        /// Values a row must have.
        expected: usize,
        /// Values this row has.
        found: usize,
    },
    /// A value is not a number.
    #[error("column {column}: {text:?} is not a number")]
    NotNumeric {
        /// The column's name.
        column: String,
        /// The offending text (truncated to 40 characters).
        text: String,
    },
    /// A value is NaN and NaN is not allowed.
    #[error("column {column}: NaN not allowed")]
    NaN {
        /// The column's name.
        column: String,
    },
    /// A value is infinite.
    #[error("column {column}: value is infinite")]
    Infinite {
        /// The column's name.
        column: String,
    },
    /// The timestamp cannot be parsed.
    #[error("timestamp {text:?} is neither RFC 3339 nor unix milliseconds")]
    Timestamp {
        /// The offending text (truncated to 40 characters).
        text: String,
    },
    /// The line is not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// The file cannot be used at all (cannot be read, no header, wrong shape); the rest of the
    /// file is skipped.
    #[error("file unusable: {0}")]
    File(String),
}

impl BadRowReason {
    /// Whether the rest of the file is lost (as opposed to one row).
    #[must_use]
    pub fn is_file_level(&self) -> bool {
        matches!(self, Self::File(_))
    }
}

fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Parses one value: `Ok(None)` for an allowed NaN.
fn parse_value(text: &str, column: &str, allow_nan: bool) -> Result<Option<f64>, BadRowReason> {
    let v: f64 = text.trim().parse().map_err(|_| BadRowReason::NotNumeric {
        column: column.to_owned(),
        text: clip(text),
    })?;
    if v.is_nan() {
        return if allow_nan {
            Ok(None)
        } else {
            Err(BadRowReason::NaN {
                column: column.to_owned(),
            })
        };
    }
    if v.is_infinite() {
        return Err(BadRowReason::Infinite {
            column: column.to_owned(),
        });
    }
    Ok(Some(v))
}

/// Parses a CSV timestamp: RFC 3339 (`2024-01-01T00:03:00Z`, fractional seconds allowed) or
/// an integer count of unix epoch milliseconds.
///
/// # Errors
/// [`BadRowReason::Timestamp`] when it is neither.
pub fn parse_timestamp(text: &str) -> Result<SystemTime, BadRowReason> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_millis(ms));
    }
    humantime::parse_rfc3339_weak(t).map_err(|_| BadRowReason::Timestamp { text: clip(t) })
}

/// Reads lines as bytes so that a non-UTF-8 line is one bad row, not the end of the file.
struct Lines {
    inner: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
}

enum NextLine {
    Text(String),
    NotUtf8,
    Eof,
    Error(String),
}

impl Lines {
    fn open(path: &Path) -> Result<Self, String> {
        let f = File::open(path).map_err(|e| e.to_string())?;
        Ok(Self {
            inner: BufReader::new(f),
            line: 0,
            buf: Vec::new(),
        })
    }

    fn next_line(&mut self) -> NextLine {
        self.buf.clear();
        match self.inner.read_until(b'\n', &mut self.buf) {
            Ok(0) => NextLine::Eof,
            Ok(_) => {
                self.line += 1;
                while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                    self.buf.pop();
                }
                match String::from_utf8(std::mem::take(&mut self.buf)) {
                    Ok(s) => NextLine::Text(s),
                    Err(_) => NextLine::NotUtf8,
                }
            }
            Err(e) => NextLine::Error(e.to_string()),
        }
    }
}

/// Reads one file, yielding rows until the end.
///
/// # Invariants
/// After a file-level [`BadRow`] or the end of the file, [`FileReader::next_row`] returns `None`.
pub struct FileReader {
    path: PathBuf,
    columns: Arc<[String]>,
    kind: Kind,
    allow_nan: bool,
    index: u64,
    finished: bool,
}

enum Kind {
    /// A file that failed to open: the error is yielded once.
    Failed(String),
    TepRows(Lines),
    TepColumns {
        data: Vec<Vec<f64>>,
        bad: Vec<Option<BadRow>>,
    },
    Csv {
        lines: Lines,
        ts_col: usize,
        delimiter: char,
        names: Vec<String>,
    },
}

impl fmt::Debug for FileReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileReader")
            .field("path", &self.path)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl FileReader {
    /// Opens a TEP file. Problems opening it are yielded as the first (file-level) bad row.
    #[must_use]
    pub fn tep(path: &Path, layout: TepLayout, allow_nan: bool) -> Self {
        let columns: Arc<[String]> = tep_tags().into();
        let kind = match layout {
            TepLayout::Rows => Lines::open(path).map(Kind::TepRows),
            TepLayout::Transposed => read_transposed(path, &columns, allow_nan),
            TepLayout::Auto => match looks_transposed(path) {
                Ok(true) => read_transposed(path, &columns, allow_nan),
                Ok(false) => Lines::open(path).map(Kind::TepRows),
                Err(e) => Err(e),
            },
        };
        Self::with_kind(path, columns, kind, allow_nan)
    }

    /// Opens a CSV file and reads its header when it has one.
    #[must_use]
    pub fn csv(path: &Path, src: &CsvSource, allow_nan: bool) -> Self {
        let opened = Lines::open(path).and_then(|mut lines| {
            let header = if src.header {
                loop {
                    match lines.next_line() {
                        NextLine::Text(t) if t.trim().is_empty() => {}
                        NextLine::Text(t) => {
                            break Some(
                                t.split(src.delimiter)
                                    .map(|s| s.trim().trim_matches('"').to_owned())
                                    .collect::<Vec<_>>(),
                            );
                        }
                        NextLine::NotUtf8 => return Err("header is not UTF-8".to_owned()),
                        NextLine::Eof => return Err("no header line".to_owned()),
                        NextLine::Error(e) => return Err(e),
                    }
                }
            } else {
                None
            };
            let names = match (&src.columns, header) {
                (Some(c), _) => c.clone(),
                (None, Some(h)) => h,
                (None, None) => return Err("no column names (header or columns)".to_owned()),
            };
            let ts_col = names
                .iter()
                .position(|n| *n == src.timestamp_column)
                .ok_or_else(|| format!("no timestamp column {:?}", src.timestamp_column))?;
            Ok((lines, ts_col, names))
        });
        match opened {
            Ok((lines, ts_col, names)) => {
                let values: Vec<String> = names
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != ts_col)
                    .map(|(_, c)| c.clone())
                    .collect();
                Self::with_kind(
                    path,
                    values.into(),
                    Ok(Kind::Csv {
                        lines,
                        ts_col,
                        delimiter: src.delimiter,
                        names,
                    }),
                    allow_nan,
                )
            }
            Err(e) => Self::with_kind(path, Arc::from(Vec::new()), Err(e), allow_nan),
        }
    }

    fn with_kind(
        path: &Path,
        columns: Arc<[String]>,
        kind: Result<Kind, String>,
        allow_nan: bool,
    ) -> Self {
        Self {
            path: path.to_owned(),
            columns,
            kind: kind.unwrap_or_else(Kind::Failed),
            allow_nan,
            index: 0,
            finished: false,
        }
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Column names of the values in each [`Row`] (the timestamp column of a CSV excluded).
    #[must_use]
    pub fn columns(&self) -> &Arc<[String]> {
        &self.columns
    }

    fn bad(&self, line: u64, reason: BadRowReason) -> BadRow {
        BadRow {
            file: self.path.clone(),
            line,
            reason,
        }
    }

    /// The next row, a bad row, or `None` at the end of the file.
    pub fn next_row(&mut self) -> Option<Result<Row, BadRow>> {
        if self.finished {
            return None;
        }
        let r = self.step();
        if matches!(
            &r,
            None | Some(Err(BadRow {
                reason: BadRowReason::File(_),
                ..
            }))
        ) {
            self.finished = true;
        }
        r
    }

    fn step(&mut self) -> Option<Result<Row, BadRow>> {
        let allow_nan = self.allow_nan;
        match &mut self.kind {
            Kind::Failed(e) => {
                let e = std::mem::take(e);
                Some(Err(self.bad(0, BadRowReason::File(e))))
            }
            Kind::TepColumns { data, bad } => {
                let i = usize::try_from(self.index).ok()?;
                if i >= data.len() {
                    return None;
                }
                self.index += 1;
                if let Some(b) = bad.get_mut(i).and_then(Option::take) {
                    return Some(Err(b));
                }
                let values = data
                    .get(i)?
                    .iter()
                    .map(|v| (!v.is_nan()).then_some(*v))
                    .collect();
                Some(Ok(Row {
                    index: self.index,
                    ts: None,
                    values,
                }))
            }
            Kind::TepRows(lines) => loop {
                let text = match lines.next_line() {
                    NextLine::Eof => return None,
                    NextLine::Error(e) => {
                        let line = lines.line;
                        return Some(Err(self.bad(line, BadRowReason::File(e))));
                    }
                    NextLine::NotUtf8 => {
                        let line = lines.line;
                        self.index += 1;
                        return Some(Err(self.bad(line, BadRowReason::NotUtf8)));
                    }
                    NextLine::Text(t) => t,
                };
                if text.trim().is_empty() {
                    continue;
                }
                let line = lines.line;
                self.index += 1;
                let fields: Vec<&str> = text.split_whitespace().collect();
                if fields.len() != TEP_VARIABLES {
                    let found = fields.len();
                    return Some(Err(self.bad(
                        line,
                        BadRowReason::ColumnCount {
                            expected: TEP_VARIABLES,
                            found,
                        },
                    )));
                }
                let parsed: Result<Vec<_>, _> = fields
                    .iter()
                    .zip(self.columns.iter())
                    .map(|(f, c)| parse_value(f, c, allow_nan))
                    .collect();
                return Some(match parsed {
                    Ok(values) => Ok(Row {
                        index: self.index,
                        ts: None,
                        values,
                    }),
                    Err(reason) => Err(self.bad(line, reason)),
                });
            },
            Kind::Csv {
                lines,
                ts_col,
                delimiter,
                names,
            } => loop {
                let text = match lines.next_line() {
                    NextLine::Eof => return None,
                    NextLine::Error(e) => {
                        let line = lines.line;
                        return Some(Err(self.bad(line, BadRowReason::File(e))));
                    }
                    NextLine::NotUtf8 => {
                        let line = lines.line;
                        self.index += 1;
                        return Some(Err(self.bad(line, BadRowReason::NotUtf8)));
                    }
                    NextLine::Text(t) => t,
                };
                if text.trim().is_empty() {
                    continue;
                }
                let line = lines.line;
                let ts_col = *ts_col;
                self.index += 1;
                let fields: Vec<&str> = text.split(*delimiter).collect();
                if fields.len() != names.len() {
                    let found = fields.len();
                    let expected = names.len();
                    return Some(Err(
                        self.bad(line, BadRowReason::ColumnCount { expected, found })
                    ));
                }
                let mut ts = None;
                let mut values = Vec::with_capacity(fields.len().saturating_sub(1));
                let mut err = None;
                for (i, (f, c)) in fields.iter().zip(names.iter()).enumerate() {
                    let r = if i == ts_col {
                        parse_timestamp(f.trim_matches('"')).map(|t| ts = Some(t))
                    } else {
                        parse_value(f.trim_matches('"'), c, allow_nan).map(|v| values.push(v))
                    };
                    if let Err(e) = r {
                        err = Some(e);
                        break;
                    }
                }
                return Some(match err {
                    Some(reason) => Err(self.bad(line, reason)),
                    None => Ok(Row {
                        index: self.index,
                        ts,
                        values,
                    }),
                });
            },
        }
    }
}

fn looks_transposed(path: &Path) -> Result<bool, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    Ok(lines.len() == TEP_VARIABLES
        && lines
            .first()
            .is_some_and(|l| l.split_whitespace().count() > TEP_VARIABLES))
}

/// Reads a transposed file whole: line r holds variable r for every sample. A cell that does
/// not parse makes its sample (column) bad; a line of a different length, or a line count
/// other than 52, makes the file unusable.
fn read_transposed(path: &Path, columns: &[String], allow_nan: bool) -> Result<Kind, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let rows: Vec<(u64, Vec<&str>)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i as u64 + 1, l.split_whitespace().collect()))
        .collect();
    if rows.len() != TEP_VARIABLES {
        return Err(format!(
            "transposed layout needs {TEP_VARIABLES} lines (one per variable), found {}",
            rows.len()
        ));
    }
    let n = rows.first().map_or(0, |(_, r)| r.len());
    if let Some((line, r)) = rows.iter().find(|(_, r)| r.len() != n) {
        return Err(format!(
            "line {line} has {} values, line 1 has {n}",
            r.len()
        ));
    }
    let mut data = vec![vec![0.0; TEP_VARIABLES]; n];
    let mut bad: Vec<Option<BadRow>> = vec![None; n];
    for (var, ((line, cells), name)) in rows.iter().zip(columns).enumerate() {
        for (s, cell) in cells.iter().enumerate() {
            match parse_value(cell, name, allow_nan) {
                Ok(v) => {
                    if let Some(slot) = data.get_mut(s).and_then(|d| d.get_mut(var)) {
                        *slot = v.unwrap_or(f64::NAN);
                    }
                }
                Err(reason) => {
                    if let Some(b) = bad.get_mut(s)
                        && b.is_none()
                    {
                        *b = Some(BadRow {
                            file: path.to_owned(),
                            line: *line,
                            reason,
                        });
                    }
                }
            }
        }
    }
    Ok(Kind::TepColumns { data, bad })
}
