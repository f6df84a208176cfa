//! A small parser of the Prometheus text exposition format: `name{label="value",…} value
//! [timestamp]` per line; `#` lines (HELP, TYPE, comments) and blank lines are skipped.

use std::collections::BTreeMap;

/// One series and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Metric name.
    pub name: String,
    /// Labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value (`NaN`, `+Inf`, `-Inf` included).
    pub value: f64,
}

impl Series {
    /// The value of label `name`, if present.
    #[must_use]
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// Why a line is not a sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromError {
    /// The metric name is missing or has a character a name cannot have.
    #[error("bad metric name")]
    BadName,
    /// The label set is malformed (unterminated, missing `=` or quotes).
    #[error("bad label set")]
    BadLabels,
    /// The value is missing or not a number.
    #[error("bad value {0:?}")]
    BadValue(String),
}

/// All series of one scrape.
///
/// # Invariants
/// `skipped` counts the non-comment lines that were not valid samples; they are not in `series`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// The series, in the order of the text.
    pub series: Vec<Series>,
    /// Lines that could not be parsed.
    pub skipped: usize,
}

impl Metrics {
    /// Parses a whole exposition text, skipping (and counting) bad lines so one bad line does
    /// not hide every other metric.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines() {
            match parse_line(line) {
                Ok(Some(s)) => m.series.push(s),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(line, error = %e, "Metrics line skipped.");
                    m.skipped += 1;
                }
            }
        }
        m
    }

    /// The series named `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Series> + 'a {
        self.series.iter().filter(move |s| s.name == name)
    }

    /// The value of the first series named `name` whose labels include all of `labels`.
    #[must_use]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.named(name)
            .find(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Parses one line: `Ok(None)` for blank and `#` lines.
///
/// # Errors
/// [`PromError`] when the line is not a valid sample.
pub fn parse_line(line: &str) -> Result<Option<Series>, PromError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_end];
    if !name.starts_with(is_name_start) {
        return Err(PromError::BadName);
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let raw = fields.next().ok_or(PromError::BadValue(String::new()))?;
    let value = parse_value(raw).ok_or_else(|| PromError::BadValue(raw.to_owned()))?;
    // An optional timestamp may follow; anything after it is an error.
    if let Some(ts) = fields.next()
        && (ts.parse::<i64>().is_err() || fields.next().is_some())
    {
        return Err(PromError::BadValue(rest.trim().to_owned()));
    }
    Ok(Some(Series {
        name: name.to_owned(),
        labels,
        value,
    }))
}

/// Parses `l="v",…}` and returns what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    out: &mut BTreeMap<String, String>,
) -> Result<&'a str, PromError> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or(PromError::BadLabels)?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.starts_with(is_name_start) || !key.chars().all(is_name_char) {
            return Err(PromError::BadLabels);
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or(PromError::BadLabels)?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(PromError::BadLabels),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(PromError::BadLabels),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.insert(key.to_owned(), value);
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(PromError::BadLabels);
        }
    }
}

fn parse_value(raw: &str) -> Option<f64> {
    match raw {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => raw.parse().ok(),
    }
}
