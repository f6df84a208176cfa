//! Wiring: config → hub → agent → management API, `/metrics`, the deployment file watcher, and
//! the shutdown sequence (modules first, in reverse startup order, then the hub, which syncs
//! its store last).

use crate::config::EdgedConfig;
use crate::{http, mgmt};
use anyhow::{Context, Result};
use clap::Parser;
use edge_agent::{Agent, AgentSetup, HubSeam, TokioRunner};
use edge_core::identity::IdentityRegistry;
use edge_hub::{Hub, HubConfig};
use edge_manifest::Deployment;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "edged",
    version,
    about = "The edge daemon: agent and hub in one process"
)]
pub struct Cli {
    /// The deployment manifest (overrides the config file).
    #[arg(long)]
    deployment: Option<PathBuf>,
    /// The data directory (overrides the config file).
    #[arg(long, env = "EDGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A config file (TOML or JSON).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML-like JSON and exit.
    #[arg(long)]
    print_config: bool,
}

/// Sets up `tracing` to stderr (`RUST_LOG`, default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs edged until SIGTERM/SIGINT.
///
/// # Errors
/// Startup failures (config, data dir, ports); they name what failed.
pub fn main(cli: Cli) -> Result<()> {
    let mut cfg = EdgedConfig::load(cli.config.as_deref()).context("invalid configuration")?;
    if let Some(d) = cli.deployment {
        cfg.deployment = d;
    }
    if let Some(d) = cli.data_dir {
        cfg.data_dir = d;
    }
    if cli.print_config {
        let text = serde_json::to_string_pretty(&cfg)?;
        std::io::Write::write_all(&mut std::io::stdout(), format!("{text}\n").as_bytes())?;
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(cfg))
}

/// Bridges the agent to the hub.
struct HubBridge {
    hub: Hub,
    last_agent_report: Mutex<serde_json::Value>,
}

impl HubSeam for HubBridge {
    fn apply(&self, d: &Deployment) -> Result<(), String> {
        self.hub
            .apply_deployment(&d.routes, &d.store_and_forward, &d.twins)
            .map_err(|e| e.to_string())
    }

    fn last_heartbeat(&self, module: &str) -> Option<std::time::Instant> {
        self.hub.last_heartbeat(module)
    }

    fn report_agent_state(&self, reported: serde_json::Value) {
        let patch = {
            let mut last = self
                .last_agent_report
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let patch = edge_core::json::diff(&last, &reported);
            *last = reported;
            patch
        };
        if let Err(e) = self.hub.patch_reported("$edgeAgent", patch) {
            warn!(error = %e, "Could not store $edgeAgent reported properties.");
        }
    }
}

/// Metrics about the agent, refreshed at each scrape.
struct AgentMetrics {
    status: IntGaugeVec,
    restarts: IntCounterVec,
    heartbeat_age: prometheus::GaugeVec,
    rss: prometheus::GaugeVec,
    cpu: prometheus::GaugeVec,
}

impl AgentMetrics {
    fn register(r: &Registry) -> Result<Self> {
        let status = IntGaugeVec::new(
            Opts::new(
                "edgeagent_module_status",
                "1 for the module's current runtime status",
            ),
            &["module", "status"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new(
                "edgeagent_module_restarts_total",
                "Restarts of a module since its restart count was last reset",
            ),
            &["module"],
        )?;
        let heartbeat_age = prometheus::GaugeVec::new(
            Opts::new(
                "edgehub_module_heartbeat_age_seconds",
                "Seconds since the module's last MQTT packet",
            ),
            &["module"],
        )?;
        let rss = prometheus::GaugeVec::new(
            Opts::new(
                "edgeagent_module_resident_memory_bytes",
                "Resident memory of the module's process (VmRSS)",
            ),
            &["module"],
        )?;
        let cpu = prometheus::GaugeVec::new(
            Opts::new(
                "edgeagent_module_cpu_seconds",
                "CPU time (user + system) of the module's current process",
            ),
            &["module"],
        )?;
        r.register(Box::new(status.clone()))?;
        r.register(Box::new(restarts.clone()))?;
        r.register(Box::new(heartbeat_age.clone()))?;
        r.register(Box::new(rss.clone()))?;
        r.register(Box::new(cpu.clone()))?;
        Ok(Self {
            status,
            restarts,
            heartbeat_age,
            rss,
            cpu,
        })
    }

    fn refresh(&self, agent: &Agent, hub: &Hub) {
        hub.refresh_queue_gauges();
        self.status.reset();
        self.heartbeat_age.reset();
        self.rss.reset();
        self.cpu.reset();
        for m in agent.list() {
            if let Some((rss, cpu)) = m.pid.and_then(proc_usage) {
                self.rss.with_label_values(&[m.name.as_str()]).set(rss);
                self.cpu.with_label_values(&[m.name.as_str()]).set(cpu);
            }
            self.status
                .with_label_values(&[m.name.as_str(), m.status.as_str()])
                .set(1);
            let c = self.restarts.with_label_values(&[m.name.as_str()]);
            let want = u64::from(m.restarts);
            if want > c.get() {
                c.inc_by(want - c.get());
            }
            if let Some(t) = hub.last_heartbeat(&m.name) {
                self.heartbeat_age
                    .with_label_values(&[m.name.as_str()])
                    .set(t.elapsed().as_secs_f64());
            }
        }
    }
}

/// Resident bytes and CPU seconds of a process, from `/proc` (Linux; `None` elsewhere or when
/// the process is gone).
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((
        rss_kb * 1024.0,
        proc_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?,
    ))
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds (the kernel reports them in
/// USER_HZ, which is 100 on Linux). The command name may hold spaces and parentheses, so the
/// fields are counted after its last `)`.
fn proc_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ppid … ; utime is field 14 and stime 15 of the whole line.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Reads and applies the deployment file; on a bad file, records the refusal and (at start)
/// falls back to the last good deployment.
pub fn apply_file(agent: &Agent, path: &Path, at_start: bool) -> Result<(), Vec<String>> {
    let source = path.display().to_string();
    match edge_manifest::parse_file(path) {
        Ok((d, notices)) => {
            for n in notices {
                info!(pointer = %n.pointer, "{}", n.message);
            }
            agent
                .deploy(d, &source)
                .map(|o| info!(outcome = ?o, "Deployment applied."))
                .map_err(|e| vec![e.to_string()])
        }
        Err(e) => {
            let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
            for p in &problems {
                error!(file = %source, "{p}");
            }
            agent.record_refused(&edge_core_hash(path), &source, e.status_code(), &problems);
            if at_start && let Some(good) = agent.last_good() {
                warn!("Deployment file refused; running the last good deployment.");
                let _ = agent.deploy(good, "last-good");
            }
            Err(problems)
        }
    }
}

fn edge_core_hash(path: &Path) -> String {
    std::fs::read(path).map_or_else(|_| String::new(), |b| edge_manifest::sha256_hex(&b))
}

async fn run(cfg: EdgedConfig) -> Result<()> {
    if let Some(up) = &cfg.upstream {
        edge_upstream::check_config(up, &cfg.device_id)
            .context("the upstream configuration is unusable")?;
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let registry = Registry::new();
    let identities = IdentityRegistry::new();
    let hub_cancel = CancellationToken::new();
    let agent_cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    let mut hub_cfg = HubConfig::new(
        edge_core::DeviceId::new(cfg.device_id.clone())?,
        cfg.iothub_hostname.clone(),
        cfg.data_dir.join("hub"),
    );
    hub_cfg.listen = cfg.hub.listen;
    hub_cfg.gateway_hostname.clone_from(&cfg.gateway_hostname);
    hub_cfg.max_inflight = cfg.hub.max_inflight;
    hub_cfg.max_message_bytes = cfg.hub.max_message_bytes;
    hub_cfg.method_timeout = cfg.hub.method_timeout;
    hub_cfg.store.fsync = cfg.hub.fsync;
    hub_cfg.unmatched = Some(cfg.hub.unmatched.clone()).filter(|s| !s.trim().is_empty());
    let hub = Hub::start(
        hub_cfg,
        identities.clone(),
        &registry,
        hub_cancel.clone(),
        &tracker,
    )
    .await
    .context("cannot start the hub")?;
    let hub_addr = hub.local_addr();
    info!(%hub_addr, "Hub listening.");

    // The edge CA, the TLS head for Azure SDK modules and the workload API they sign with.
    let ca = crate::certs::EdgeCa::load_or_create(&cfg.data_dir.join("certs"))
        .context("cannot prepare the edge CA")?;
    let hub_tls = if cfg.hub.tls_enabled {
        let server = ca
            .server_config(&cfg.gateway_hostname)
            .context("cannot issue the hub's server certificate")?;
        match hub.listen_tls(cfg.hub.tls_listen, server).await {
            Ok(addr) => Some(addr),
            Err(e) => {
                // Local modules keep working on the plain listener; Azure SDK modules cannot
                // connect until the port is free and edged restarts.
                error!(error = %anyhow::Error::from(e), "TLS listener not started; modules on Azure's SDKs cannot connect.");
                None
            }
        }
    } else {
        None
    };
    let hub_socket = if cfg.hub.unix_enabled {
        let path = if cfg.hub.unix_socket.is_empty() {
            cfg.data_dir.join("hub.sock")
        } else {
            PathBuf::from(&cfg.hub.unix_socket)
        };
        // Modules run in their own working directories.
        let path = std::path::absolute(&path).unwrap_or(path);
        match hub.listen_unix(&path).await {
            Ok(()) => Some(path),
            Err(e) => {
                // Modules are told nothing and use the TCP listener, at a higher cost per packet.
                error!(error = %anyhow::Error::from(e), "Unix-socket listener not started; modules connect over TCP.");
                None
            }
        }
    } else {
        None
    };
    let workload = crate::workload::bind(&cfg.workload.uri, &cfg.data_dir)
        .await
        .context("cannot open the workload API")?;
    let workload_uri = workload.uri();
    info!(uri = %workload_uri, "Workload API listening.");

    let mut module_path = cfg.module_path.clone();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
    {
        module_path.push(dir);
    }
    let manifest_dir = cfg
        .deployment
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_else(|| PathBuf::from("."));

    let agent_metrics = Arc::new(AgentMetrics::register(&registry)?);
    let edged_metrics = Arc::new(crate::metrics::EdgedMetrics::register(&registry)?);
    let metrics_addr = if cfg.metrics.enabled {
        // The scrape closure needs the agent, which needs the metrics address: fill it in after.
        Some(cfg.metrics.listen)
    } else {
        None
    };
    let agent_cell: Arc<std::sync::OnceLock<Arc<Agent>>> = Arc::new(std::sync::OnceLock::new());
    let metrics_bound = match metrics_addr {
        Some(addr) => {
            let cell = agent_cell.clone();
            let m = agent_metrics.clone();
            let em = edged_metrics.clone();
            let h = hub.clone();
            Some(
                http::serve(
                    addr,
                    registry.clone(),
                    move || {
                        if let Some(a) = cell.get() {
                            m.refresh(a, &h);
                            em.refresh(a);
                        }
                        // Refreshes the hub's queue gauges.
                        let _ = h.stats();
                    },
                    hub_cancel.clone(),
                    &tracker,
                )
                .await
                .with_context(|| format!("cannot listen for /metrics on {addr}"))?,
            )
        }
        None => None,
    };

    let mut extra_env = vec![];
    if let Some(a) = metrics_bound {
        extra_env.push(("EDGE_METRICS_ADDR".to_owned(), a.to_string()));
    }
    if let Ok(v) = std::env::var("RUST_LOG") {
        extra_env.push(("RUST_LOG".to_owned(), v));
    }
    if let Ok(v) = std::env::var("ORT_DYLIB_PATH") {
        extra_env.push(("ORT_DYLIB_PATH".to_owned(), v));
    }
    let setup = AgentSetup {
        data_dir: cfg.data_dir.clone(),
        device_id: cfg.device_id.clone(),
        iothub_hostname: cfg.iothub_hostname.clone(),
        gateway_hostname: cfg.gateway_hostname.clone(),
        hub_addr: hub_addr.to_string(),
        hub_socket: hub_socket.clone(),
        workload_uri: workload_uri.clone(),
        manifest_dir,
        module_path,
        extra_env,
    };
    let identities_for_workload = identities.clone();
    let bridge = Arc::new(HubBridge {
        hub: hub.clone(),
        last_agent_report: Mutex::new(serde_json::json!({})),
    });
    let agent = Agent::new(
        setup,
        cfg.agent.clone(),
        Arc::new(TokioRunner::new()),
        bridge,
        identities,
    )
    .context("cannot start the agent")?;
    let _ = agent_cell.set(agent.clone());
    let generation_agent = agent.clone();
    crate::workload::serve(
        workload,
        crate::workload::WorkloadState {
            trust_bundle: Arc::from(ca.trust_bundle()),
            identities: identities_for_workload,
            generation: Arc::new(move |m| generation_agent.generation_id(m)),
        },
        hub_cancel.clone(),
        &tracker,
    );

    let _ = apply_file(&agent, &cfg.deployment, true);

    if let Some(up) = cfg.upstream.clone() {
        let link = crate::upstream::start(
            up,
            &cfg.device_id,
            hub.clone(),
            agent.clone(),
            hub_cancel.clone(),
            &tracker,
        )
        .context("cannot start the upstream link")?;
        edged_metrics.set_link(link)?;
    }

    let socket = mgmt::serve(
        &cfg.data_dir,
        agent.clone(),
        hub.clone(),
        hub_cancel.clone(),
        &tracker,
    )
    .context("cannot open the management socket")?;
    info!(socket = %socket.display(), "Management API listening.");

    tracker.spawn(watch_deployment(
        agent.clone(),
        cfg.deployment.clone(),
        cfg.watch_interval,
        agent_cancel.clone(),
    ));

    let endpoints = serde_json::json!({
        "hub": hub_addr.to_string(),
        "hub_tls": hub_tls.map(|a| a.to_string()),
        "hub_socket": hub_socket,
        "workload": workload_uri,
        "metrics": metrics_bound.map(|a| a.to_string()),
        "pid": std::process::id(),
    });
    let tmp = cfg.data_dir.join("endpoints.json.tmp");
    std::fs::write(&tmp, endpoints.to_string())?;
    std::fs::rename(&tmp, cfg.data_dir.join("endpoints.json"))?;

    let agent_run = tokio::spawn(agent.clone().run(agent_cancel.clone()));
    shutdown_signal().await;
    info!("Stopping modules.");
    agent_cancel.cancel();
    match tokio::time::timeout(cfg.shutdown_grace + Duration::from_secs(5), agent_run).await {
        Ok(Ok(reason)) => info!(?reason, "Modules stopped."),
        Ok(Err(e)) => error!(error = %e, "Agent task failed."),
        Err(_) => warn!("Modules did not stop within the grace time."),
    }
    info!("Stopping the hub.");
    hub_cancel.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        warn!("Some tasks did not stop within 10 s.");
    }
    let _ = std::fs::remove_file(cfg.data_dir.join("endpoints.json"));
    info!("Stopped.");
    Ok(())
}

async fn watch_deployment(
    agent: Arc<Agent>,
    path: PathBuf,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = std::fs::read(&path).ok();
        if now.is_some() && now != last {
            info!(file = %path.display(), "Deployment file changed.");
            last = now;
            let _ = apply_file(&agent, &path, false);
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("Cannot install signal handlers; waiting forever.");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received."),
        _ = int.recv() => info!("SIGINT received."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_read_after_the_command_name() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 300 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(proc_cpu_seconds(line), Some(3.25));
        assert_eq!(proc_cpu_seconds("4242 (x) S 1"), None);
    }

    #[test]
    fn usage_of_this_process_is_read_from_proc() {
        let (rss, cpu) = proc_usage(std::process::id()).unwrap();
        assert!(rss > 1024.0 * 1024.0, "rss {rss}");
        assert!(cpu >= 0.0);
        assert_eq!(proc_usage(u32::MAX), None);
    }
}
