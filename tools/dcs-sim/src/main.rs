//! `dcs-sim`: runs the simulated DCS (an OPC UA server) until SIGINT/SIGTERM.
//!
//! The first line on stdout is the endpoint URL (`opc.tcp://127.0.0.1:PORT/`); logs go to
//! stderr. With `--replay FILE` the TEP samples of FILE are published into the measurement
//! nodes at `--speed` times real time (one sample = 3 min of plant time), or one every
//! `--period` (wall time, e.g. `50ms`). Node ids: column n ≤ 41 → `ns=2;s=TEP.XMEAS(n)`,
//! column 41 + n → `ns=2;s=TEP.XMV(n).PV`.

use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// A simulated DCS: TEP tags, setpoints, advisory nodes and an interlock over OPC UA.
#[derive(Debug, Parser)]
#[command(name = "dcs-sim", version)]
struct Args {
    /// Port to listen on; 0 picks a free port.
    #[arg(long, default_value_t = 4840)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Data directory; the PKI (certificates) is kept in DATA_DIR/pki.
    #[arg(long, default_value = "dcs-sim-data")]
    data_dir: PathBuf,
    /// Start with the remote-enable interlock on (default: off, the operator turns it on).
    #[arg(long)]
    remote_enable: bool,
    /// TEP data file to replay into the measurement nodes (e.g. data/tep/d01_te.dat).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Replay speed: multiples of real time (1 sample = 180 s of plant time).
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// Wall time between two replayed samples (e.g. `50ms`, `1s`); overrides --speed.
    #[arg(long, value_parser = humantime::parse_duration)]
    period: Option<std::time::Duration>,
    /// Start the replay again at the end of the file.
    #[arg(long = "loop")]
    repeat: bool,
    /// Require a login: `NAME:PASSWORD` (repeatable). Without it sessions are anonymous.
    #[arg(long = "user", value_parser = parse_user)]
    users: Vec<(String, String)>,
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_owned(), p.to_owned())),
        _ => Err(format!("`{s}` is not NAME:PASSWORD")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dcs-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let rows = match &args.replay {
        Some(p) => match dcs_sim::replay::load(p) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("dcs-sim: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut cfg = dcs_sim::DcsConfig::new(args.port, args.data_dir.join("pki"));
    cfg.host = args.host;
    cfg.remote_enable = args.remote_enable;
    cfg.users = args.users;
    let server = match dcs_sim::DcsServer::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dcs-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", server.endpoint_url());
        let _ = out.flush();
    }
    let replay = async {
        if let Some(r) = &rows {
            let period = args
                .period
                .unwrap_or_else(|| dcs_sim::replay::period_at_speed(args.speed));
            dcs_sim::replay::run(&server, r, period, args.repeat).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = replay => {}
        () = shutdown_signal() => {}
    }
    tracing::info!("stopping");
    server.stop().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
