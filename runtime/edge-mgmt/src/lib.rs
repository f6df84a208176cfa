//! The management API between `edged` and `edgectl`.
//!
//! Transport: a Unix domain socket at `{data_dir}/edged.sock`, created with mode 0600 so only
//! the owner of the data directory can steer the daemon. One request per connection: the
//! client writes one JSON [`Request`] line, the server answers with one JSON [`Response`] line
//! (or, for `logs --follow`, a stream of [`Response::LogLine`] lines until the client hangs up).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// File name of the socket inside the data directory.
pub const SOCKET_NAME: &str = "edged.sock";

/// The socket path for a data directory.
#[must_use]
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// A request to edged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Modules with status (`edgectl list`).
    List,
    /// A module's captured output.
    Logs {
        /// Module id.
        module: String,
        /// Last N lines (all when absent).
        tail: Option<usize>,
        /// Keep streaming new lines.
        follow: bool,
    },
    /// Restart one module.
    Restart {
        /// Module id.
        module: String,
    },
    /// Apply a new deployment (manifest text).
    Deploy {
        /// Manifest text.
        manifest: String,
        /// Where it came from (a file path), for history.
        source: String,
    },
    /// Deployment history.
    History,
    /// Call a direct method of a module.
    Invoke {
        /// Module id.
        module: String,
        /// Method name.
        method: String,
        /// JSON payload.
        payload: Value,
        /// Timeout in seconds.
        timeout_secs: u64,
    },
    /// A module's twin (desired + reported).
    Twin {
        /// Module id (or `$edgeAgent`, `$edgeHub`).
        module: String,
    },
    /// Hub queues and counters.
    Stats,
}

/// One row of `edgectl list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleRow {
    /// Module id.
    pub name: String,
    /// Runtime status (`running`, `backoff`, `failed`, `stopped`, `unknown`, `unhealthy`).
    pub status: String,
    /// Status description.
    pub description: String,
    /// Desired version.
    pub version: String,
    /// Restarts so far.
    pub restarts: u32,
    /// Seconds since the current process started, when running.
    pub uptime_secs: Option<u64>,
    /// Process id, when running.
    pub pid: Option<u32>,
}

/// An answer from edged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Response {
    /// Success with no data.
    Ok {
        /// What happened.
        message: String,
    },
    /// `list`.
    Modules {
        /// One row per module.
        modules: Vec<ModuleRow>,
    },
    /// A log line (`logs`; one response per line).
    LogLine {
        /// The line, with its timestamp prefix.
        line: String,
    },
    /// Arbitrary JSON (history, twin, stats, method results).
    Json {
        /// The value.
        value: Value,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
        /// Located problems (deployment refused), one per line.
        problems: Vec<String>,
    },
}

/// Talking to edged failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens on the socket.
    #[error("cannot reach edged at {path} (is it running with this data dir?)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("connection to edged failed")]
    Io(#[source] std::io::Error),
    /// edged sent something that is not a response.
    #[error("edged sent an invalid response")]
    Protocol(#[source] serde_json::Error),
}

/// Sends a request and calls `on_response` for each response line until the server closes
/// (or `on_response` returns false).
///
/// # Errors
/// [`ClientError`] when the daemon is unreachable or the exchange breaks.
pub async fn call(
    socket: &Path,
    request: &Request,
    mut on_response: impl FnMut(Response) -> bool,
) -> Result<(), ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(ClientError::Protocol)?;
    line.push('\n');
    w.write_all(line.as_bytes())
        .await
        .map_err(ClientError::Io)?;
    let mut lines = BufReader::new(r).lines();
    while let Some(l) = lines.next_line().await.map_err(ClientError::Io)? {
        let resp: Response = serde_json::from_str(&l).map_err(ClientError::Protocol)?;
        if !on_response(resp) {
            break;
        }
    }
    Ok(())
}

/// Sends a request and returns the single response.
///
/// # Errors
/// [`ClientError`] as for [`call`]; a closed connection without answer is an I/O error.
pub async fn call_one(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let mut out = None;
    call(socket, request, |r| {
        out = Some(r);
        false
    })
    .await?;
    out.ok_or_else(|| {
        ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "edged closed the connection without answering",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form() {
        let r = Request::Logs {
            module: "m".into(),
            tail: Some(10),
            follow: false,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"logs","module":"m","tail":10,"follow":false}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }
}
