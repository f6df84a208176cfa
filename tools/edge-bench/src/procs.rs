//! Child processes the benchmark starts (edged, mosquitto, dcs-sim, store fillers), each in its
//! own process group and killed with it on drop; plus /proc and /metrics readers.

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A child in its own process group; the group gets SIGKILL on drop (after SIGTERM to the
/// leader when [`Group::terminate`] was not called). Extra pids (processes that made their
/// own groups, like edged's modules) are killed too.
pub struct Group {
    pub child: Child,
    pub extra: Vec<u32>,
}

/// Leaders of the groups alive now, for the signal handler.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// On SIGINT/SIGTERM/SIGHUP: kill every live group (and the groups of its children, which is
/// where edged's modules are), then exit 130.
pub fn kill_on_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        });
        let live = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
        for leader in live {
            for (pid, _) in children(leader) {
                kill_group(pid);
            }
            kill_group(leader);
        }
        eprintln!("[bench] interrupted; everything it started was killed");
        std::process::exit(130);
    });
    Ok(())
}

fn kill_group(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
    }
}

impl Group {
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn {:?}", cmd.get_program()))?;
        if let Ok(mut l) = LIVE.lock() {
            l.push(child.id());
        }
        Ok(Self {
            child,
            extra: Vec::new(),
        })
    }

    /// SIGTERM to the leader, wait up to `grace`, then SIGKILL to everything.
    pub fn terminate(&mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_all();
    }

    fn kill_all(&mut self) {
        // Each was started as the leader of its own group.
        for pid in self.extra.iter().copied().chain([self.child.id()]) {
            kill_group(pid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mut l) = LIVE.lock() {
            l.retain(|p| *p != self.child.id());
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The repository root (the current directory, checked).
pub fn repo_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    if !cwd.join("deployment.json").is_file() || !cwd.join("Cargo.toml").is_file() {
        bail!("run edge-bench from the repository root (scripts/bench.sh does)");
    }
    Ok(cwd)
}

/// `target/release/<name>`, checked to exist.
pub fn release_bin(root: &Path, name: &str) -> Result<PathBuf> {
    let p = root.join("target/release").join(name);
    if !p.is_file() {
        bail!(
            "{} is not built; run `cargo build --release --workspace --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// A free loopback port (bound, then released: a small race, acceptable for a benchmark).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}")
}

/// Starts Debian's mosquitto on a free loopback port.
pub fn mosquitto(dir: &Path) -> Result<(Group, u16)> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("mosquitto is not installed (scripts/setup.sh installs it)")?;
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n\
             max_inflight_messages 100\npersistence false\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("mosquitto.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    let g = Group::spawn(cmd)?;
    wait_port(port, Duration::from_secs(10))?;
    Ok((g, port))
}

/// edged's `endpoints.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Endpoints {
    pub hub: String,
    pub metrics: Option<String>,
    pub pid: u32,
}

/// A running `target/release/edged`.
pub struct Edged {
    pub group: Group,
    pub endpoints: Endpoints,
    stopped: bool,
    pub spawned: Instant,
}

impl Edged {
    /// Starts edged (cwd = repo root) and waits for `endpoints.json`.
    pub fn start(root: &Path, deployment: &Path, data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let log = std::fs::File::create(data_dir.join("edged.bench.log"))?;
        let mut cmd = Command::new(release_bin(root, "edged")?);
        cmd.current_dir(root)
            .arg("--deployment")
            .arg(deployment)
            .arg("--data-dir")
            .arg(data_dir)
            .env("EDGED_HUB__LISTEN", "127.0.0.1:0")
            .env("EDGED_METRICS__LISTEN", "127.0.0.1:0")
            .env("EDGED_HUB__TLS_LISTEN", "127.0.0.1:0")
            .env("EDGED_MODULE_PATH", root.join("target/release"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let spawned = Instant::now();
        let mut group = Group::spawn(cmd)?;
        let file = data_dir.join("endpoints.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(endpoints) = serde_json::from_str::<Endpoints>(&text)
            {
                return Ok(Self {
                    group,
                    endpoints,
                    stopped: false,
                    spawned,
                });
            }
            if let Some(status) = group.child.try_wait()? {
                bail!(
                    "edged exited with {status}; log:\n{}",
                    std::fs::read_to_string(data_dir.join("edged.bench.log")).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                bail!("edged did not write {} within 30 s", file.display());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn hub_port(&self) -> Result<u16> {
        let (_, port) = self
            .endpoints
            .hub
            .rsplit_once(':')
            .context("hub address has no port")?;
        Ok(port.parse()?)
    }

    /// The current Prometheus samples.
    pub fn metrics(&self) -> Result<Metrics> {
        let addr = self
            .endpoints
            .metrics
            .as_deref()
            .context("edged has no metrics listener")?;
        Metrics::scrape(addr)
    }

    /// Module name → pid: edged's child processes, named by their executable (so
    /// `edgectl` is not needed).
    pub fn module_pids(&self) -> BTreeMap<String, u32> {
        children(self.endpoints.pid)
            .into_iter()
            .map(|(pid, name)| (name, pid))
            .collect()
    }

    /// Stops edged (SIGTERM, then SIGKILL to it and to every module it started).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.group
            .extra
            .extend(children(self.endpoints.pid).into_iter().map(|(p, _)| p));
        self.group.terminate(Duration::from_secs(10));
    }
}

impl Drop for Edged {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Parsed Prometheus text: `name{labels}` → value.
#[derive(Debug, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn scrape(addr: &str) -> Result<Self> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let mut m = BTreeMap::new();
        for line in body.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ')
                && let Ok(v) = v.parse::<f64>()
            {
                m.insert(k.to_owned(), v);
            }
        }
        Ok(Self(m))
    }

    /// Sum of every sample of metric `name` (any labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }

    /// One labelled sample, e.g. `get("edgehub_messages_received_total", "module", "x")`.
    pub fn get(&self, name: &str, label: &str, value: &str) -> f64 {
        self.0
            .get(&format!("{name}{{{label}=\"{value}\"}}"))
            .copied()
            .unwrap_or(0.0)
    }

    /// Whether `module` has status running and a live hub connection.
    pub fn module_up(&self, module: &str) -> bool {
        let running = self.0.iter().any(|(k, v)| {
            *v >= 1.0
                && k.starts_with("edgeagent_module_status{")
                && k.contains(&format!("module=\"{module}\""))
                && k.contains("status=\"running\"")
        });
        let connected = self.0.keys().any(|k| {
            k.starts_with("edgehub_module_heartbeat_age_seconds{")
                && k.contains(&format!("module=\"{module}\""))
        });
        running && connected
    }
}

/// Resident memory of a process in MiB (`VmRSS`).
pub fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The fields of `/proc/PID/stat` after the command name (state, ppid, …). The name is in
/// parentheses and may hold spaces, so the line is split after the last `)`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_s(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Some(ticks / 100.0)
}

/// Direct children of `parent`: (pid, executable name).
pub fn children(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let ppid = stat_fields(pid)
            .and_then(|f| f.get(1).cloned())
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let name = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| format!("pid{pid}"));
        out.push((pid, name));
    }
    out
}
