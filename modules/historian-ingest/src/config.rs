//! The module's configuration (its twin's desired properties) and its validation.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Number of variables in a TEP `.dat` file: XMEAS(1..41) then XMV(1..11).
pub const TEP_VARIABLES: usize = 52;

/// The whole configuration of `historian-ingest`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngestConfig {
    /// Where samples come from.
    pub source: SourceConfig,
    /// Replay speed-up factor over real time; `0` means as fast as the hub accepts.
    #[serde(default)]
    pub speed: f64,
    /// What a bad row does.
    #[serde(default)]
    pub bad_rows: BadRowPolicy,
    /// Start again at the first file after the last one.
    #[serde(default, rename = "loop")]
    pub loop_files: bool,
    /// Accept NaN values (sent as `null`, sample quality `bad`) instead of treating the row as bad.
    #[serde(default, rename = "allowNaN")]
    pub allow_nan: bool,
    /// Source tag name → published tag name. When set, only the mapped tags are published.
    #[serde(default)]
    pub tags: Option<HashMap<String, String>>,
    /// Simulated start time of each run (RFC 3339) for sources without timestamps; the wall
    /// clock at the start of the run when absent.
    #[serde(default)]
    pub start: Option<String>,
    /// How often progress goes to the reported properties while replaying.
    #[serde(default = "default_report_every", with = "humantime_serde")]
    pub report_every: Duration,
}

fn default_report_every() -> Duration {
    Duration::from_secs(5)
}

/// What a bad row does to the replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BadRowPolicy {
    /// Count it, report it and go on with the next row.
    #[default]
    Skip,
    /// Count it, report it and stop the replay.
    Stop,
}

/// A source of samples, chosen by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum SourceConfig {
    /// Replay of Tennessee Eastman `.dat` files.
    Tep(TepSource),
    /// Replay of CSV files with a timestamp column.
    Csv(CsvSource),
    /// Live tags from an OPC UA server by subscription.
    Opcua(OpcUaSource),
}

/// Replay of TEP `.dat` files (whitespace-separated floats, 52 variables).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TepSource {
    /// Files, replayed in order; relative paths are resolved against the working directory.
    pub files: Vec<PathBuf>,
    /// How the values are laid out.
    #[serde(default)]
    pub layout: TepLayout,
    /// Simulated time between two samples.
    #[serde(default = "default_tep_period", with = "humantime_serde")]
    pub sample_period: Duration,
}

fn default_tep_period() -> Duration {
    Duration::from_secs(180)
}

/// Layout of a TEP file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TepLayout {
    /// One sample per line, 52 values per line (`d01.dat`, `dNN_te.dat`).
    #[default]
    Rows,
    /// One variable per line, one sample per column (`d00.dat`: 52 lines × 500 values).
    Transposed,
    /// `transposed` when the file has exactly 52 lines of more than 52 values, else `rows`.
    Auto,
}

/// Replay of CSV files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CsvSource {
    /// Files, replayed in order; relative paths are resolved against the working directory.
    pub files: Vec<PathBuf>,
    /// Whether the first line holds the column names.
    #[serde(default = "default_true")]
    pub header: bool,
    /// Column names by position; required without a header, overrides the header when given.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Name of the timestamp column (RFC 3339 text, or unix epoch milliseconds).
    #[serde(default = "default_ts_column")]
    pub timestamp_column: String,
    /// Field delimiter.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
}

fn default_true() -> bool {
    true
}

fn default_ts_column() -> String {
    "timestamp".into()
}

fn default_delimiter() -> char {
    ','
}

/// Live OPC UA tags by subscription (security policy None, anonymous).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpcUaSource {
    /// Server endpoint, e.g. `opc.tcp://127.0.0.1:4840/`.
    pub endpoint: String,
    /// Node ids to subscribe to, with the tag name each is published under.
    #[serde(default)]
    pub nodes: Vec<OpcUaNode>,
    /// The 52 TEP variables by the simulator's convention, before `nodes`: `XMEAS(n)` from
    /// `ns={namespace};s={prefix}XMEAS(n)`, `XMV(n)` from `ns={namespace};s={prefix}XMV(n).PV`.
    #[serde(default)]
    pub tep: Option<TepNodes>,
    /// Requested sampling interval of every monitored node (the server may revise it).
    #[serde(default = "default_opcua_interval", with = "humantime_serde")]
    pub sampling_interval: Duration,
    /// Requested publishing interval of the subscription; default: the sampling interval.
    /// One message is sent per publish that carries a change.
    #[serde(default, with = "humantime_serde")]
    pub publishing_interval: Option<Duration>,
    /// The `runId` of the published samples.
    #[serde(default = "default_opcua_run")]
    pub run_id: String,
    /// First delay before reconnecting after the server went away; doubles up to `reconnectMax`.
    #[serde(default = "default_reconnect_initial", with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Largest delay between reconnect attempts.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Client PKI directory (created when missing); default `opcua-pki` in the working directory.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
}

fn default_opcua_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_opcua_run() -> String {
    "opcua".into()
}

fn default_reconnect_initial() -> Duration {
    Duration::from_millis(500)
}

fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

/// The TEP node naming convention of `tools/dcs-sim`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TepNodes {
    /// Namespace index of the nodes (dcs-sim: 2).
    pub namespace: u16,
    /// String id prefix (dcs-sim: `TEP.`).
    #[serde(default = "default_tep_prefix")]
    pub prefix: String,
}

fn default_tep_prefix() -> String {
    "TEP.".into()
}

/// One subscribed node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpcUaNode {
    /// Node id, e.g. `ns=2;s=TEP.XMEAS(1)`.
    pub node_id: String,
    /// Published tag name.
    pub tag: String,
}

/// A node of the subscription with the config field it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNode {
    /// The node id text.
    pub node_id: String,
    /// Published tag name.
    pub tag: String,
    /// Where it was configured, e.g. `source.nodes[3].nodeId` or `source.tep`.
    pub field: String,
}

impl OpcUaSource {
    /// Every node to subscribe to, in publishing order: the TEP convention's 52, then `nodes`.
    #[must_use]
    pub fn resolved_nodes(&self) -> Vec<ResolvedNode> {
        let mut out = Vec::new();
        if let Some(t) = &self.tep {
            let (ns, p) = (t.namespace, &t.prefix);
            out.extend((1..=41).map(|n| ResolvedNode {
                node_id: format!("ns={ns};s={p}XMEAS({n})"),
                tag: format!("XMEAS({n})"),
                field: "source.tep".into(),
            }));
            out.extend((1..=11).map(|n| ResolvedNode {
                node_id: format!("ns={ns};s={p}XMV({n}).PV"),
                tag: format!("XMV({n})"),
                field: "source.tep".into(),
            }));
        }
        out.extend(self.nodes.iter().enumerate().map(|(i, n)| ResolvedNode {
            node_id: n.node_id.clone(),
            tag: n.tag.clone(),
            field: format!("source.nodes[{i}].nodeId"),
        }));
        out
    }

    /// The publishing interval: configured, else the sampling interval.
    #[must_use]
    pub fn publishing(&self) -> Duration {
        self.publishing_interval.unwrap_or(self.sampling_interval)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: String| ConfigError::Invalid { field, problem };
        if !self.endpoint.starts_with("opc.tcp://") {
            return Err(invalid(
                "source.endpoint",
                format!("{:?} is not an opc.tcp:// URL", self.endpoint),
            ));
        }
        let nodes = self.resolved_nodes();
        if nodes.is_empty() {
            return Err(invalid(
                "source.nodes",
                "name at least one node (or set source.tep)".into(),
            ));
        }
        let mut tags = std::collections::HashSet::new();
        for n in &nodes {
            if n.node_id.parse::<opcua::types::NodeId>().is_err() {
                return Err(invalid(
                    "source.nodes",
                    format!(
                        "{}: {:?} is not a node id (e.g. ns=2;s=Name)",
                        n.field, n.node_id
                    ),
                ));
            }
            if n.tag.is_empty() || !tags.insert(n.tag.as_str()) {
                return Err(invalid(
                    "source.nodes",
                    format!("{}: tag {:?} is empty or used twice", n.field, n.tag),
                ));
            }
        }
        if self.sampling_interval.is_zero() {
            return Err(invalid(
                "source.samplingInterval",
                "must be positive".into(),
            ));
        }
        if self.publishing().is_zero() {
            return Err(invalid(
                "source.publishingInterval",
                "must be positive".into(),
            ));
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err(invalid(
                "source.reconnectInitial",
                "must be positive and at most source.reconnectMax".into(),
            ));
        }
        Ok(())
    }
}

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value outside its range.
    #[error("{field}: {problem}")]
    Invalid {
        /// JSON path of the field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl IngestConfig {
    /// Checks what serde cannot.
    ///
    /// # Errors
    /// The first problem found, naming the field.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| ConfigError::Invalid {
            field,
            problem: problem.into(),
        };
        if !self.speed.is_finite() || self.speed < 0.0 {
            return Err(invalid(
                "speed",
                "must be 0 (as fast as accepted) or a positive factor",
            ));
        }
        if self.report_every.is_zero() {
            return Err(invalid("reportEvery", "must be positive"));
        }
        if let Some(start) = &self.start
            && humantime::parse_rfc3339_weak(start).is_err()
        {
            return Err(invalid("start", "must be an RFC 3339 time"));
        }
        match &self.source {
            SourceConfig::Opcua(o) => o.check(),
            SourceConfig::Tep(t) => {
                if t.files.is_empty() {
                    return Err(invalid("source.files", "must name at least one file"));
                }
                if t.sample_period.is_zero() {
                    return Err(invalid("source.samplePeriod", "must be positive"));
                }
                Ok(())
            }
            SourceConfig::Csv(c) => {
                if c.files.is_empty() {
                    return Err(invalid("source.files", "must name at least one file"));
                }
                if !c.header && c.columns.is_none() {
                    return Err(invalid("source.columns", "required when header is false"));
                }
                if let Some(cols) = &c.columns
                    && !cols.contains(&c.timestamp_column)
                {
                    return Err(invalid(
                        "source.columns",
                        "must contain the timestamp column",
                    ));
                }
                if c.delimiter == '"' || c.delimiter == '\n' {
                    return Err(invalid(
                        "source.delimiter",
                        "must not be a quote or a newline",
                    ));
                }
                Ok(())
            }
        }
    }
}

impl edge_sdk::ModuleConfig for IngestConfig {
    fn validate(&self) -> Result<(), String> {
        self.check().map_err(|e| e.to_string())
    }
}
