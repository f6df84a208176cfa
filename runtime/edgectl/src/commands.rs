//! The subcommands.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use edge_mgmt::{Request, Response, call, call_one, socket_path};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code for an invalid manifest or route (sysexits EX_USAGE... EX_DATAERR is 65; Azure's
/// `iotedge check` uses 1; we follow STYLE.md: 64).
const EXIT_INVALID: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "edgectl", version, about = "Operate an edged edge runtime")]
pub struct Cli {
    /// edged's data directory (where its management socket lives).
    #[arg(
        long,
        env = "EDGE_DATA_DIR",
        default_value = "/var/lib/edged",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List modules: name, status, description, version, restarts, uptime.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a module's captured output (with timestamps).
    Logs {
        /// Module id.
        module: String,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Restart a module.
    Restart {
        /// Module id.
        module: String,
    },
    /// Apply a deployment manifest to the running edged.
    Deploy {
        /// The manifest file.
        file: PathBuf,
    },
    /// Validate a manifest offline: every problem with its place; binaries present; ports free.
    Check {
        /// The manifest file.
        file: PathBuf,
        /// Extra directories to look for module binaries in (besides the manifest's own and
        /// edgectl's directory).
        #[arg(long = "module-path")]
        module_path: Vec<PathBuf>,
        /// Addresses edged will listen on, checked to be free (hub MQTT, /metrics).
        #[arg(long = "listen", default_values_t = ["127.0.0.1:1883".to_owned(), "127.0.0.1:9600".to_owned()])]
        listen: Vec<String>,
        /// Skip the port check (e.g. while edged is already running).
        #[arg(long)]
        no_port_check: bool,
    },
    /// Deployment history: hash, source, time, outcome.
    History,
    /// Call a direct method of a module.
    Invoke {
        /// Module id.
        module: String,
        /// Method name.
        method: String,
        /// JSON payload.
        #[arg(default_value = "null")]
        payload: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Show a module's twin (desired and reported).
    Twin {
        /// Module id (also `$edgeAgent`, `$edgeHub`).
        module: String,
    },
    /// Hub queues and counters.
    Stats,
    /// A live view: modules, routes, queues, the model's latest scores, DCS writes, health.
    Top(crate::top::TopArgs),
    /// Route debugging, offline.
    #[command(subcommand)]
    Route(RouteCommand),
    /// A fleet backend on any MQTT broker: deploy, status, invoke.
    Cloud(crate::cloud::CloudArgs),
}

#[derive(Debug, Subcommand)]
enum RouteCommand {
    /// Parse a route and print it, or the located error.
    Check {
        /// The route text.
        route: String,
    },
    /// Evaluate a route against a message file (JSON: properties, systemProperties, body).
    Eval {
        /// The route text.
        route: String,
        /// The message file.
        #[arg(long)]
        message: PathBuf,
    },
}

fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{s}");
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let sock = socket_path(&cli.data_dir);
    match cli.command {
        Command::List { json } => list(&sock, json).await,
        Command::Logs {
            module,
            follow,
            tail,
        } => {
            let mut failed = None;
            call(
                &sock,
                &Request::Logs {
                    module,
                    tail,
                    follow,
                },
                |r| match r {
                    Response::LogLine { line } => {
                        out(&line);
                        true
                    }
                    Response::Error { message, .. } => {
                        failed = Some(message);
                        false
                    }
                    _ => true,
                },
            )
            .await?;
            if let Some(m) = failed {
                bail!(m);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restart { module } => simple(&sock, &Request::Restart { module }).await,
        Command::Deploy { file } => {
            let manifest = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            simple(
                &sock,
                &Request::Deploy {
                    manifest,
                    source: file.display().to_string(),
                },
            )
            .await
        }
        Command::Check {
            file,
            module_path,
            listen,
            no_port_check,
        } => {
            let ports = if no_port_check { vec![] } else { listen };
            check(&file, module_path, &ports)
        }
        Command::History => json_cmd(&sock, &Request::History).await,
        Command::Invoke {
            module,
            method,
            payload,
            timeout,
        } => {
            let payload = serde_json::from_str(&payload).context("payload is not JSON")?;
            json_cmd(
                &sock,
                &Request::Invoke {
                    module,
                    method,
                    payload,
                    timeout_secs: timeout,
                },
            )
            .await
        }
        Command::Twin { module } => json_cmd(&sock, &Request::Twin { module }).await,
        Command::Stats => json_cmd(&sock, &Request::Stats).await,
        Command::Top(args) => crate::top::run(&sock, args)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Route(RouteCommand::Check { route }) => Ok(route_check(&route)),
        Command::Route(RouteCommand::Eval { route, message }) => route_eval(&route, &message),
        Command::Cloud(args) => crate::cloud::run(args).await,
    }
}

async fn simple(sock: &Path, req: &Request) -> Result<ExitCode> {
    match call_one(sock, req).await? {
        Response::Ok { message } => {
            out(&message);
            Ok(ExitCode::SUCCESS)
        }
        Response::Json { value } => {
            out(&serde_json::to_string_pretty(&value)?);
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message, problems } => {
            eprintln!("error: {message}");
            for p in problems {
                eprintln!("  {p}");
            }
            Ok(ExitCode::FAILURE)
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

async fn json_cmd(sock: &Path, req: &Request) -> Result<ExitCode> {
    simple(sock, req).await
}

async fn list(sock: &Path, json: bool) -> Result<ExitCode> {
    match call_one(sock, &Request::List).await? {
        Response::Modules { modules } => {
            if json {
                out(&serde_json::to_string_pretty(&modules)?);
                return Ok(ExitCode::SUCCESS);
            }
            out(&format!(
                "{:<20} {:<10} {:<12} {:>8} {:>10}  {}",
                "NAME", "STATUS", "VERSION", "RESTARTS", "UPTIME", "DESCRIPTION"
            ));
            for m in modules {
                out(&format!(
                    "{:<20} {:<10} {:<12} {:>8} {:>10}  {}",
                    m.name,
                    m.status,
                    m.version,
                    m.restarts,
                    m.uptime_secs.map_or_else(|| "-".to_owned(), human_secs),
                    m.description
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message, .. } => bail!(message),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Addresses in `listen` that cannot be bound now, with the reason.
fn busy_ports(listen: &[String]) -> Vec<String> {
    listen
        .iter()
        .filter_map(|a| match std::net::TcpListener::bind(a.as_str()) {
            Ok(_) => None,
            Err(e) => Some(format!(
                "{a}: cannot listen ({e}); another process (an MQTT broker, another edged) holds it, or pass --listen/--no-port-check"
            )),
        })
        .collect()
}

fn check(file: &Path, mut module_path: Vec<PathBuf>, listen: &[String]) -> Result<ExitCode> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
    {
        module_path.push(dir);
    }
    let dir = file
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    match edge_manifest::parse_file(file) {
        Err(e) => {
            eprintln!("{}: {} problem(s):", file.display(), e.problems.len());
            for p in &e.problems {
                eprintln!("  {}:{p}", file.display());
            }
            Ok(ExitCode::from(EXIT_INVALID))
        }
        Ok((d, notices)) => {
            for n in &notices {
                out(&format!("note: {}: {}", n.pointer, n.message));
            }
            let problems = edge_manifest::check_binaries(&d, &dir, &module_path);
            let ports = busy_ports(listen);
            if !problems.is_empty() || !ports.is_empty() {
                eprintln!(
                    "{}: {} problem(s):",
                    file.display(),
                    problems.len() + ports.len()
                );
                for p in &problems {
                    eprintln!("  {}:{p}", file.display());
                }
                for p in &ports {
                    eprintln!("  {p}");
                }
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            out(&format!(
                "{}: ok ({} modules, {} routes, hash {})",
                file.display(),
                d.modules.len(),
                d.routes.len(),
                &d.hash[..12.min(d.hash.len())]
            ));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn route_check(route: &str) -> ExitCode {
    match edge_route::parse(route) {
        Ok(r) => {
            out(&r.to_string());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{route}");
            eprintln!("{}^", " ".repeat(e.column.saturating_sub(1)));
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// A message file for `route eval`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MessageFile {
    #[serde(default)]
    properties: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    system_properties: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: serde_json::Value,
}

fn route_eval(route: &str, message: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(message)
        .with_context(|| format!("cannot read {}", message.display()))?;
    let mf: MessageFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a message file", message.display()))?;
    let mut msg = edge_core::Message::new(match &mf.body {
        serde_json::Value::String(s) => bytes::Bytes::from(s.clone()),
        serde_json::Value::Null => bytes::Bytes::new(),
        v => bytes::Bytes::from(v.to_string()),
    });
    for (k, v) in mf.properties {
        msg.set_property(k, v);
    }
    for (k, v) in mf.system_properties {
        let name = k.trim_start_matches('$');
        let Some(p) = edge_core::message::SysProp::from_route_name(name) else {
            bail!("{}: unknown system property `{k}`", message.display());
        };
        msg.system.set(p, Some(v));
    }
    let r = match edge_route::parse(route) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let ex = edge_route::explain(&r, &msg);
    for s in &ex.steps {
        out(&format!("  {s}"));
    }
    out(&format!(
        "source {}",
        if ex.source_matched {
            "matches"
        } else {
            "does not match"
        }
    ));
    out(&format!("result: {}", ex.result));
    out(&format!("sink: {:?}", ex.sink));
    Ok(ExitCode::SUCCESS)
}
