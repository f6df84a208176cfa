//! `historian-ingest`: replays historian data (Tennessee Eastman `.dat` files, CSV files) into
//! the hub, one message per sample, paced at real time × a speed-up factor or as fast as the
//! hub accepts, or publishes live tags read from an OPC UA server by subscription.
//!
//! # Configuration (the module twin's desired properties)
//!
//! ```json
//! {
//!   "source": {"type": "tep", "files": ["data/tep/d00.dat"], "layout": "transposed", "samplePeriod": "3m"},
//!   "speed": 60.0,
//!   "badRows": "skip",
//!   "loop": false,
//!   "allowNaN": false,
//!   "tags": {"XMEAS(1)": "FI-101.PV"},
//!   "start": "2024-01-01T00:00:00Z",
//!   "reportEvery": "5s"
//! }
//! ```
//!
//! - `source.type = "tep"`: `files` (replayed in order; relative paths are resolved against the
//!   module's working directory), `layout` = `rows` (default; one sample per line, 52 values) |
//!   `transposed` (one variable per line, as `d00.dat`) | `auto` (transposed when the file has
//!   exactly 52 lines of more than 52 values), `samplePeriod` (default `3m`). Columns are named
//!   `XMEAS(1)`..`XMEAS(41)`, `XMV(1)`..`XMV(11)`. A run's simulated time is
//!   `start + sample × samplePeriod` (sample is 1-based, so TEP sample 161 is 8 h 3 min in).
//! - `source.type = "csv"`: `files`, `header` (default `true`), `columns` (names by position;
//!   required without a header, overrides it), `timestampColumn` (default `timestamp`; RFC 3339
//!   or unix epoch milliseconds), `delimiter` (default `,`). No quoting beyond stripping `"`
//!   around a field.
//! - `source.type = "opcua"` (live, see [`live`]): `endpoint` (`opc.tcp://…`, security policy
//!   None, anonymous), `nodes: [{"nodeId": "ns=2;s=…", "tag": "…"}]` and/or `tep:
//!   {"namespace": 2, "prefix": "TEP."}` (the 52 TEP variables by `tools/dcs-sim`'s naming:
//!   `XMEAS(n)` ← `ns=2;s=TEP.XMEAS(n)`, `XMV(n)` ← `ns=2;s=TEP.XMV(n).PV`, published under
//!   the TEP file source's tag names), `samplingInterval` (default `1s`),
//!   `publishingInterval` (default: the sampling interval), `runId` (default `opcua`),
//!   `reconnectInitial`/`reconnectMax` (back-off, default `500ms`/`30s`), `pkiDir` (client
//!   PKI, default `opcua-pki`). One message per publish that carries a change, with every
//!   tag's last value; `ts` is the newest server timestamp of the publish, `ingestedAt` the
//!   wall clock. A node id that does not parse is refused by validation, one the server does
//!   not have (or that is not a variable) when subscribing; both name the config field
//!   (`source.nodes[i].nodeId`). `speed`, `badRows`, `loop`, `tags` and `start` do not apply.
//! - `speed`: `0` (default) = as fast as the hub accepts (the SDK's send waits while its
//!   buffer of unacknowledged messages is full, so memory stays bounded); `s > 0` = simulated
//!   time runs `s` times faster than the wall clock (`60` turns 3 min into 3 s).
//! - `badRows`: `skip` (default) or `stop`. A bad row is a wrong value count, a value that is
//!   not a number, an infinite value, a NaN unless `allowNaN`, a bad timestamp, a non-UTF-8
//!   line, or a file that cannot be used (then the rest of that file is skipped).
//! - `allowNaN`: NaN values are sent as `null` and the sample's quality is `bad`.
//! - `tags`: source name → published name; when set, only mapped tags are published, and a
//!   file lacking a mapped tag is a bad file.
//! - `start`: simulated start time of each TEP run; default: the wall clock when the run starts.
//! - `loop`: start again at the first file after the last (each file restarts its sample index).
//!
//! A new desired configuration restarts the replay from the first file.
//!
//! # Messages (output `samples`)
//!
//! One message per sample, body JSON (`$contentType` `application/json`, `$contentEncoding`
//! `utf-8`), readable by a plant engineer and about 1.5 KiB for the 52 TEP tags:
//!
//! ```json
//! {"runId": "d01_te", "sample": 161, "ts": "2024-01-01T08:03:00.000Z", "quality": "good",
//!  "values": {"XMEAS(1)": 0.25025, "XMEAS(2)": 3657.2, "…": 0, "XMV(11)": 18.776}}
//! ```
//!
//! `values` keeps the file's column order; `null` is a missing value. Application properties:
//! `runId`, `sample`, `quality` (`good` | `bad`), so routes can filter without the body.
//!
//! # Reported properties
//!
//! `{"replay": {"state": "replaying" | "done" | "stopped-on-bad-row", "currentRun", "filesDone",
//! "samplesSent", "badRows", "lastBadRows": ["file:line: reason", … up to 10]}}`, every
//! `reportEvery`, at the end of each file and at the end. After the end the module stays idle
//! until it is stopped (exiting would make the agent restart it) or reconfigured.
//!
//! Live source: `{"live": {"state": "connecting" | "subscribed" | "disconnected" | "refused",
//! "endpoint", "samplesSent", "dropped", "lastError"}}` on every change of state and every
//! `reportEvery`. A refused source idles until reconfigured. A live server is not paused:
//! samples the hub does not take are queued up to [`live::LIVE_QUEUE`], then dropped and
//! counted.
//!
//! # Layout
//!
//! - `config`: [`IngestConfig`] and its validation.
//! - `reader`: [`FileReader`] for TEP (rows / transposed) and CSV files, [`BadRow`].
//! - `replay`: [`Replayer`], the state machine over files (tag mapping, simulated time,
//!   bad-row policy, counters), [`Sample`] and its message form.
//! - `pacing`: [`due_after`], the speed-factor calculation.
//! - `live`: [`LiveSource`], the OPC UA subscription (async-opcua client, reconnect with
//!   back-off) producing [`Sample`]s.
//! - `module`: [`HistorianIngest`], the thin SDK wrapper.

mod config;
pub mod live;
mod module;
mod pacing;
mod reader;
mod replay;

pub use config::{
    BadRowPolicy, ConfigError, CsvSource, IngestConfig, OpcUaNode, OpcUaSource, ResolvedNode,
    SourceConfig, TEP_VARIABLES, TepLayout, TepNodes, TepSource,
};
pub use live::{LiveEvent, LiveSource};
pub use module::{HistorianIngest, OUTPUT};
pub use pacing::due_after;
pub use reader::{BadRow, BadRowReason, FileReader, Row, parse_timestamp, tep_tags};
pub use replay::{Event, LAST_BAD_ROWS, Quality, ReplayState, ReplayStats, Replayer, Sample};

#[cfg(test)]
mod tests;
