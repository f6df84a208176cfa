//! The replay state machine: files in order, tag mapping, simulated time, bad-row policy and
//! the counters the module reports. No I/O besides reading the files, no clock: the caller
//! passes the wall time in, so it is tested without a hub.

use crate::config::{BadRowPolicy, IngestConfig, SourceConfig};
use crate::reader::{BadRow, BadRowReason, FileReader, Row};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many recent bad rows the stats keep.
pub const LAST_BAD_ROWS: usize = 10;

/// Quality of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Every value is present.
    Good,
    /// At least one value is missing (an allowed NaN, sent as `null`).
    Bad,
}

impl Quality {
    /// `good` or `bad`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Bad => "bad",
        }
    }
}

/// One sample, ready to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The run (file stem, e.g. `d01_te`).
    pub run_id: Arc<str>,
    /// 1-based index within the run.
    pub index: u64,
    /// Simulated (TEP) or stored (CSV) time of the sample.
    pub ts: SystemTime,
    /// Simulated time since the start of the run, used for pacing.
    pub offset: Duration,
    /// Published tag names, aligned with `values`.
    pub tags: Arc<[String]>,
    /// Values; `None` is a missing (NaN) value.
    pub values: Vec<Option<f64>>,
}

impl Sample {
    /// `good` when every value is present.
    #[must_use]
    pub fn quality(&self) -> Quality {
        if self.values.iter().all(Option::is_some) {
            Quality::Good
        } else {
            Quality::Bad
        }
    }

    /// The message body: `{"runId", "sample", "ts", "ingestedAt", "quality", "values":
    /// {tag: value|null}}`. `ts` is the sample's (possibly simulated) plant time; `ingestedAt`
    /// is the wall clock when the historian read it, which downstream modules carry so that
    /// freshness checks (the DCS writer's) and latency measurements use real time.
    #[must_use]
    pub fn body(&self) -> Value {
        serde_json::to_value(self.body_at(SystemTime::now())).unwrap_or(Value::Null)
    }

    /// The body of [`Sample::body`] with `ingestedAt` = `now`, serialized in place: tags and
    /// values are written straight from the sample, without a JSON tree of 52 entries (that
    /// tree was most of this module's time per sample).
    fn body_at(&self, now: SystemTime) -> Body<'_> {
        Body {
            sample: self,
            ts: humantime::format_rfc3339_millis(self.ts),
            ingested_at: humantime::format_rfc3339_millis(now),
        }
    }

    /// The message: JSON body, properties `runId`, `sample`, `quality`, content type JSON/UTF-8.
    #[must_use]
    pub fn to_message(&self) -> edge_sdk::Message {
        // ~24 bytes per tag and ~130 for the rest.
        let mut bytes = Vec::with_capacity(160 + 24 * self.values.len());
        // Writing into a Vec cannot fail, and every key is a string.
        if serde_json::to_writer(&mut bytes, &self.body_at(SystemTime::now())).is_err() {
            bytes.clear();
        }
        edge_sdk::Message::new(bytes)
            .with_property("runId", &*self.run_id)
            .with_property("sample", self.index.to_string())
            .with_property("quality", self.quality().as_str())
            .with_system(edge_sdk::SysProp::ContentType, "application/json")
            .with_system(edge_sdk::SysProp::ContentEncoding, "utf-8")
    }
}

/// A sample's body, serialized in place (see [`Sample::body`]).
struct Body<'a> {
    sample: &'a Sample,
    ts: humantime::Rfc3339Timestamp,
    ingested_at: humantime::Rfc3339Timestamp,
}

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let s = self.sample;
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("runId", &*s.run_id)?;
        map.serialize_entry("sample", &s.index)?;
        map.serialize_entry("ts", &DisplayStr(&self.ts))?;
        map.serialize_entry("ingestedAt", &DisplayStr(&self.ingested_at))?;
        map.serialize_entry("quality", s.quality().as_str())?;
        map.serialize_entry("values", &Values(s))?;
        map.end()
    }
}

/// A `Display` value serialized as a JSON string without an intermediate `String`.
struct DisplayStr<'a, T>(&'a T);

impl<T: std::fmt::Display> Serialize for DisplayStr<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// `values` of a body: tag → value, `null` for a missing or non-finite value.
struct Values<'a>(&'a Sample);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let s = self.0;
        let mut map = serializer.serialize_map(Some(s.values.len()))?;
        for (t, v) in s.tags.iter().zip(&s.values) {
            map.serialize_entry(t, &v.filter(|x| x.is_finite()))?;
        }
        map.end()
    }
}

/// Where the replay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayState {
    /// Samples are being produced.
    Replaying,
    /// Every file was replayed.
    Done,
    /// A bad row stopped the replay (`badRows: stop`).
    StoppedOnBadRow,
}

impl ReplayState {
    /// `replaying`, `done` or `stopped-on-bad-row`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replaying => "replaying",
            Self::Done => "done",
            Self::StoppedOnBadRow => "stopped-on-bad-row",
        }
    }
}

/// Counters of a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayStats {
    /// Files read to their end (or given up on).
    pub files_done: u64,
    /// Samples produced.
    pub samples: u64,
    /// Bad rows seen.
    pub bad_rows: u64,
    /// The last [`LAST_BAD_ROWS`] bad rows as `file:line: reason`.
    pub last_bad_rows: VecDeque<String>,
    /// Where the replay is.
    pub state: ReplayState,
    /// The run being replayed.
    pub current_run: Option<String>,
}

impl ReplayStats {
    /// The reported-properties patch.
    #[must_use]
    pub fn report(&self) -> Value {
        json!({"replay": {
            "state": self.state.as_str(),
            "currentRun": self.current_run,
            "filesDone": self.files_done,
            "samplesSent": self.samples,
            "badRows": self.bad_rows,
            "lastBadRows": self.last_bad_rows,
        }})
    }
}

/// What [`Replayer::next_event`] produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A sample to send.
    Sample(Sample),
    /// A bad row that was counted and skipped.
    Skipped(BadRow),
    /// A bad row that stopped the replay.
    Stopped(BadRow),
    /// A file was finished.
    FileDone(PathBuf),
    /// Nothing more will come (state `done` or `stopped-on-bad-row`).
    Finished,
}

struct Run {
    reader: FileReader,
    run_id: Arc<str>,
    /// Published tags and the index of each in the reader's values.
    tags: Arc<[String]>,
    picks: Vec<usize>,
    /// Simulated start (TEP) or first stored timestamp (CSV, set on the first row).
    start: Option<SystemTime>,
    period: Option<Duration>,
}

/// Replays the configured files.
///
/// # Invariants
/// Once the state is not `Replaying`, [`Replayer::next_event`] only returns [`Event::Finished`].
/// At most one file is open at a time; memory does not grow with the number of rows.
pub struct Replayer {
    config: IngestConfig,
    files: Vec<PathBuf>,
    next_file: usize,
    run: Option<Run>,
    start: Option<SystemTime>,
    samples_this_pass: u64,
    stats: ReplayStats,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("files", &self.files)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Replayer {
    /// A replayer for a validated config (an OPC UA source yields [`Event::Finished`] at once).
    #[must_use]
    pub fn new(config: IngestConfig) -> Self {
        let files = match &config.source {
            SourceConfig::Tep(t) => t.files.clone(),
            SourceConfig::Csv(c) => c.files.clone(),
            SourceConfig::Opcua(_) => Vec::new(),
        };
        let start = config
            .start
            .as_deref()
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok());
        Self {
            config,
            files,
            next_file: 0,
            run: None,
            start,
            samples_this_pass: 0,
            stats: ReplayStats {
                files_done: 0,
                samples: 0,
                bad_rows: 0,
                last_bad_rows: VecDeque::new(),
                state: ReplayState::Replaying,
                current_run: None,
            },
        }
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &ReplayStats {
        &self.stats
    }

    /// The next event; `now` is the wall clock, used as the simulated start of a TEP run when
    /// the config has no `start`.
    pub fn next_event(&mut self, now: SystemTime) -> Event {
        if self.stats.state != ReplayState::Replaying {
            return Event::Finished;
        }
        let Some(run) = self.run.as_mut() else {
            return self.open_next(now);
        };
        match run.reader.next_row() {
            None => {
                let path = run.reader.path().to_owned();
                self.run = None;
                self.stats.files_done += 1;
                Event::FileDone(path)
            }
            Some(Ok(row)) => {
                let s = make_sample(run, row);
                self.stats.samples += 1;
                self.samples_this_pass += 1;
                Event::Sample(s)
            }
            Some(Err(bad)) => self.on_bad(bad),
        }
    }

    fn on_bad(&mut self, bad: BadRow) -> Event {
        self.stats.bad_rows += 1;
        if self.stats.last_bad_rows.len() == LAST_BAD_ROWS {
            self.stats.last_bad_rows.pop_front();
        }
        self.stats.last_bad_rows.push_back(bad.to_string());
        match self.config.bad_rows {
            BadRowPolicy::Skip => Event::Skipped(bad),
            BadRowPolicy::Stop => {
                self.stats.state = ReplayState::StoppedOnBadRow;
                self.run = None;
                Event::Stopped(bad)
            }
        }
    }

    fn open_next(&mut self, now: SystemTime) -> Event {
        if self.next_file >= self.files.len() {
            if self.config.loop_files && self.samples_this_pass > 0 {
                self.next_file = 0;
                self.samples_this_pass = 0;
            } else {
                self.stats.state = ReplayState::Done;
                self.stats.current_run = None;
                return Event::Finished;
            }
        }
        let Some(path) = self.files.get(self.next_file).cloned() else {
            self.stats.state = ReplayState::Done;
            return Event::Finished;
        };
        self.next_file += 1;
        let allow_nan = self.config.allow_nan;
        let (reader, start, period) = match &self.config.source {
            SourceConfig::Tep(t) => (
                FileReader::tep(&path, t.layout, allow_nan),
                Some(self.start.unwrap_or(now)),
                Some(t.sample_period),
            ),
            SourceConfig::Csv(c) => (FileReader::csv(&path, c, allow_nan), None, None),
            SourceConfig::Opcua(_) => {
                self.stats.state = ReplayState::Done;
                return Event::Finished;
            }
        };
        let run_id: Arc<str> = path
            .file_stem()
            .map_or_else(|| path.to_string_lossy(), |s| s.to_string_lossy())
            .into();
        self.stats.current_run = Some(run_id.to_string());
        match pick_tags(reader.columns(), self.config.tags.as_ref()) {
            Ok((tags, picks)) => {
                self.run = Some(Run {
                    reader,
                    run_id,
                    tags,
                    picks,
                    start,
                    period,
                });
                self.next_event(now)
            }
            Err(missing) => {
                self.stats.files_done += 1;
                self.on_bad(BadRow {
                    file: path,
                    line: 0,
                    reason: BadRowReason::File(format!(
                        "mapped tag {missing:?} is not in the file"
                    )),
                })
            }
        }
    }
}

/// Published tags and their column indexes. `Err` names a mapped source tag the file lacks.
fn pick_tags(
    columns: &[String],
    mapping: Option<&HashMap<String, String>>,
) -> Result<(Arc<[String]>, Vec<usize>), String> {
    let Some(map) = mapping else {
        return Ok((columns.into(), (0..columns.len()).collect()));
    };
    if !columns.is_empty()
        && let Some(missing) = map.keys().find(|k| !columns.contains(k))
    {
        return Err(missing.clone());
    }
    let (tags, picks): (Vec<String>, Vec<usize>) = columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| map.get(c).map(|t| (t.clone(), i)))
        .unzip();
    Ok((tags.into(), picks))
}

fn make_sample(run: &mut Run, row: Row) -> Sample {
    let (ts, offset) = match (row.ts, run.period) {
        (Some(ts), _) => {
            let first = *run.start.get_or_insert(ts);
            (ts, ts.duration_since(first).unwrap_or_default())
        }
        (None, period) => {
            let offset = period
                .unwrap_or_default()
                .saturating_mul(u32::try_from(row.index).unwrap_or(u32::MAX));
            let start = run.start.unwrap_or(UNIX_EPOCH);
            (start + offset, offset)
        }
    };
    let values = run
        .picks
        .iter()
        .map(|&i| row.values.get(i).copied().flatten())
        .collect();
    Sample {
        run_id: run.run_id.clone(),
        index: row.index,
        ts,
        offset,
        tags: run.tags.clone(),
        values,
    }
}
