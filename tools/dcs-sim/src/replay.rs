//! Replays a TEP data file (`data/tep/dNN[_te].dat`) into the measurement nodes.
//!
//! Files are whitespace-separated floats, one sample of 52 values per line; `d00.dat` is stored
//! transposed (52 lines of 500 values) and is detected and transposed here. One TEP sample is
//! 3 minutes of plant time; at speed `x` a sample is published every `180 s / x`, or every
//! `--period` of wall time when given (`dcs-sim --replay data/tep/d01_te.dat --period 50ms`).
//! Each sample sets the 52 variables `TEP.XMEAS(1..41)` and `TEP.XMV(1..11).PV` at once.

use crate::DcsServer;
use std::path::Path;
use std::time::Duration;

/// Plant time between two TEP samples.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(180);

/// A TEP file could not be read or has the wrong shape.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the file failed.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A token is not a number, or the shape is not n x 52 (or 52 x n).
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// Parses TEP text into rows of 52 values (transposing a 52 x n file with n != 52).
///
/// # Errors
/// [`ReplayError::Format`] when a token is not a number or the shape is wrong.
pub fn parse(text: &str, path: &str) -> Result<Vec<Vec<f64>>, ReplayError> {
    let fmt = |problem: String| ReplayError::Format {
        path: path.to_owned(),
        problem,
    };
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = line
            .split_whitespace()
            .map(str::parse::<f64>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fmt(format!("line {}: {e}", i + 1)))?;
        lines.push(row);
    }
    let Some(first) = lines.first() else {
        return Err(fmt("empty file".into()));
    };
    let width = first.len();
    if lines.iter().any(|r| r.len() != width) {
        return Err(fmt("rows have different lengths".into()));
    }
    if width == 52 {
        return Ok(lines);
    }
    if lines.len() == 52 {
        return Ok((0..width)
            .map(|c| lines.iter().map(|r| r[c]).collect())
            .collect());
    }
    Err(fmt(format!(
        "expected n x 52 values, found {} x {width}",
        lines.len()
    )))
}

/// Reads a TEP file.
///
/// # Errors
/// [`ReplayError`] when it cannot be read or parsed.
pub fn load(path: &Path) -> Result<Vec<Vec<f64>>, ReplayError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Io {
        path: p.clone(),
        source,
    })?;
    parse(&text, &p)
}

/// Wall time between two published samples at `speed` times real time (1× for a speed that is
/// not a positive number).
#[must_use]
pub fn period_at_speed(speed: f64) -> Duration {
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    SAMPLE_PERIOD.div_f64(speed)
}

/// Publishes `rows` into the server one per `period` (wall time, e.g. [`period_at_speed`]),
/// once or forever. A zero period is taken as 1 ms.
pub async fn run(server: &DcsServer, rows: &[Vec<f64>], period: Duration, repeat: bool) {
    let period = period.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(period);
    loop {
        for (i, row) in rows.iter().enumerate() {
            tick.tick().await;
            if let Err(e) = server.set_sample(row) {
                tracing::warn!(error = %e, sample = i, "replay: cannot set sample");
            }
        }
        tracing::info!(samples = rows.len(), "replay: end of file");
        if !repeat {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_transposed_files() {
        let row: String = (0..52).map(|i| format!("{i}.5 ")).collect();
        let text = format!("{row}\n{row}\n");
        let rows = parse(&text, "x").expect("rows");
        assert_eq!(rows.len(), 2);
        assert!((rows[1][51] - 51.5).abs() < 1e-12);

        let t: String = (0..52).map(|i| format!("{i} {}\n", i * 2)).collect();
        let rows = parse(&t, "t").expect("transposed");
        assert_eq!(rows.len(), 2);
        assert!((rows[1][3] - 6.0).abs() < 1e-12);

        assert!(parse("1 2 x", "bad").is_err());
        assert!(parse("1 2 3\n4 5 6\n", "shape").is_err());
    }

    #[test]
    fn period_follows_the_speed() {
        assert_eq!(period_at_speed(60.0), Duration::from_secs(3));
        assert_eq!(period_at_speed(3600.0), Duration::from_millis(50));
        assert_eq!(period_at_speed(0.0), SAMPLE_PERIOD);
        assert_eq!(period_at_speed(f64::NAN), SAMPLE_PERIOD);
    }

    #[test]
    fn reads_the_transposed_d00_file() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tep/d00.dat");
        let rows = load(&p).expect("d00");
        assert_eq!(rows.len(), 500);
        assert_eq!(rows[0].len(), 52);
    }
}
