//! Test helpers shared by the workspace's integration and end-to-end tests.
//!
//! - [`wait_until`]: await a condition with a deadline instead of sleeping.
//! - [`workspace_bin`]: the path of a binary built from this workspace (tests run after
//!   `cargo build --workspace --all-targets`, which the test command does first).
//! - [`Edged`]: a real `edged` child process on a temporary data directory with the hub on
//!   port 0; it learns the bound addresses from `{data_dir}/endpoints.json`, which edged writes
//!   once it listens.

#![allow(clippy::missing_panics_doc)]

use anyhow::{Context, Result, bail};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Polls `cond` every 10 ms until it returns `Some`, or fails after `timeout`.
///
/// # Errors
/// When the deadline passes; the message says what was awaited.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The workspace's target directory for the current profile (`target/debug`).
#[must_use]
pub fn target_dir() -> PathBuf {
    // Test binaries live in target/<profile>/deps.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary (`edged`, `edgectl`, a module), checked to exist.
///
/// # Errors
/// When it has not been built.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let p = target_dir().join(name);
    if !p.is_file() {
        bail!(
            "{} is not built; run `cargo build --workspace --all-targets` first",
            p.display()
        );
    }
    Ok(p)
}

/// The repository root.
#[must_use]
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Addresses a running edged listens on (`{data_dir}/endpoints.json`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Endpoints {
    /// The hub's plain MQTT listener.
    pub hub: String,
    /// The Prometheus endpoint.
    pub metrics: Option<String>,
    /// edged's process id.
    pub pid: u32,
}

/// A real edged child process.
#[derive(Debug)]
pub struct Edged {
    /// The child.
    pub child: Child,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its addresses.
    pub endpoints: Endpoints,
}

impl Edged {
    /// Starts edged with `deployment` on `data_dir` (hub and metrics on port 0) and waits until
    /// it has written its endpoints. Extra environment variables are passed through.
    ///
    /// # Errors
    /// When edged is not built, does not start, or exits before listening.
    pub async fn start(deployment: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Result<Self> {
        let bin = workspace_bin("edged")?;
        let _ = std::fs::remove_file(data_dir.join("endpoints.json"));
        let log = std::fs::File::create(data_dir.join("edged.test.log"))
            .or_else(|_| {
                std::fs::create_dir_all(data_dir)?;
                std::fs::File::create(data_dir.join("edged.test.log"))
            })
            .context("cannot create edged log")?;
        let mut cmd = Command::new(bin);
        cmd.arg("--deployment")
            .arg(deployment)
            .arg("--data-dir")
            .arg(data_dir)
            .env("EDGED_HUB__LISTEN", "127.0.0.1:0")
            .env("EDGED_HUB__TLS_LISTEN", "127.0.0.1:0")
            .env("EDGED_METRICS__LISTEN", "127.0.0.1:0")
            .env("EDGED_MODULE_PATH", target_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("cannot spawn edged")?;
        let file = data_dir.join("endpoints.json");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(endpoints) = serde_json::from_str::<Endpoints>(&text)
            {
                return Ok(Self {
                    child,
                    data_dir: data_dir.to_owned(),
                    endpoints,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "edged exited with {status} before listening; log:\n{}",
                    std::fs::read_to_string(data_dir.join("edged.test.log")).unwrap_or_default()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("edged did not write {} within 30 s", file.display());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// edged's log so far (its stdout and stderr).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("edged.test.log")).unwrap_or_default()
    }

    /// The processes edged started that are still alive (not zombies), from `/proc`.
    #[must_use]
    pub fn children(&self) -> Vec<u32> {
        self.child.id().map(live_children).unwrap_or_default()
    }

    /// Sends SIGKILL and waits for the process to end.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub async fn kill9(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the exit code.
    ///
    /// # Errors
    /// When it does not exit in time.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        }
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("edged did not exit after SIGTERM")??;
        Ok(status.code())
    }
}

/// Live (not zombie) processes whose parent is `parent`, from `/proc/*/stat`.
#[must_use]
pub fn live_children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(
            |pid| matches!(proc_stat(*pid), Some((state, ppid)) if ppid == parent && state != 'Z'),
        )
        .collect()
}

/// Whether `pid` is alive and not a zombie.
#[must_use]
pub fn is_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z')
}

/// State and parent pid of a process (`/proc/PID/stat`; the name may hold spaces or parens).
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
