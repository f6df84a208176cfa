//! The management API server: one JSON request line per connection on `{data_dir}/edged.sock`
//! (mode 0600), answered with JSON response lines (protocol in `edge-mgmt`).

use edge_agent::Agent;
use edge_hub::Hub;
use edge_mgmt::{ModuleRow, Request, Response};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Binds the socket (replacing a stale one) and serves until `cancel`.
///
/// # Errors
/// When the socket cannot be created or restricted to the owner.
pub fn serve(
    data_dir: &Path,
    agent: Arc<Agent>,
    hub: Hub,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<PathBuf> {
    let path = edge_mgmt::socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let t = tracker.clone();
    tracker.spawn(async move {
        loop {
            let conn = tokio::select! {
                () = cancel.cancelled() => break,
                c = listener.accept() => c,
            };
            match conn {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    let hub = hub.clone();
                    let cancel = cancel.clone();
                    t.spawn(async move {
                        if let Err(e) = handle(stream, &agent, &hub, cancel).await {
                            debug!(error = %e, "Management connection ended.");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "Management accept failed."),
            }
        }
    });
    Ok(path)
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(r).map_err(std::io::Error::other)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await
}

fn error(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
        problems: vec![],
    }
}

async fn handle(
    stream: UnixStream,
    agent: &Arc<Agent>,
    hub: &Hub,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let Some(line) = lines.next_line().await? else {
        return Ok(());
    };
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut w, &error(format!("bad request: {e}"))).await,
    };
    let resp = match req {
        Request::List => Response::Modules {
            modules: agent
                .list()
                .into_iter()
                .map(|m| ModuleRow {
                    name: m.name,
                    status: m.status.as_str().to_owned(),
                    description: m.description,
                    version: m.version,
                    restarts: m.restarts,
                    uptime_secs: m.uptime.map(|d| d.as_secs()),
                    pid: m.pid,
                })
                .collect(),
        },
        Request::Logs {
            module,
            tail,
            follow,
        } => {
            let Some(path) = agent.log_path(&module) else {
                return send(&mut w, &error(format!("no module `{module}`"))).await;
            };
            return stream_log(&mut w, &path, tail, follow, cancel).await;
        }
        Request::Restart { module } => match agent.restart(&module).await {
            Ok(()) => Response::Ok {
                message: format!("{module} restarted"),
            },
            Err(e) => error(e.to_string()),
        },
        Request::Deploy { manifest, source } => match edge_manifest::parse(&manifest, &source) {
            Err(e) => {
                let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
                agent.record_refused(
                    &edge_manifest::sha256_hex(manifest.as_bytes()),
                    &source,
                    e.status_code(),
                    &problems,
                );
                Response::Error {
                    message: format!("deployment refused ({}): {e}", e.status_code()),
                    problems,
                }
            }
            Ok((d, _notices)) => match agent.deploy(d, &source) {
                Ok(o) => Response::Ok {
                    message: format!("{o:?}"),
                },
                Err(e) => error(format!("deployment refused: {e}")),
            },
        },
        Request::History => Response::Json {
            value: serde_json::to_value(agent.history()).unwrap_or_default(),
        },
        Request::Invoke {
            module,
            method,
            payload,
            timeout_secs,
        } => match hub
            .invoke(&module, &method, payload, Duration::from_secs(timeout_secs))
            .await
        {
            Ok((status, payload)) => Response::Json {
                value: serde_json::json!({"status": status, "payload": payload}),
            },
            Err(e) => error(e.to_string()),
        },
        Request::Twin { module } => match hub.twin(&module) {
            Some(t) => Response::Json { value: t },
            None => error(format!("no twin for `{module}`")),
        },
        Request::Stats => Response::Json {
            value: serde_json::to_value(hub.stats()).unwrap_or_default(),
        },
    };
    send(&mut w, &resp).await
}

async fn stream_log(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    path: &Path,
    tail: Option<usize>,
    follow: bool,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = tail.map_or(0, |n| lines.len().saturating_sub(n));
    for l in &lines[start..] {
        send(
            w,
            &Response::LogLine {
                line: (*l).to_owned(),
            },
        )
        .await?;
    }
    if !follow {
        return Ok(());
    }
    let mut pos = text.len() as u64;
    let mut partial = String::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let Ok(mut f) = tokio::fs::File::open(path).await else {
            continue;
        };
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0; // rotated
        }
        if len == pos {
            continue;
        }
        f.seek(std::io::SeekFrom::Start(pos)).await?;
        let mut buf = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut f, &mut buf).await?;
        pos += buf.len() as u64;
        partial.push_str(&buf);
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            send(
                w,
                &Response::LogLine {
                    line: line.trim_end().to_owned(),
                },
            )
            .await?;
        }
    }
}
