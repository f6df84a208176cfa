//! The OS-process seam: spawn, signal, wait. [`TokioRunner`] is the real implementation;
//! [`crate::fake::FakeRunner`] records calls for unit tests.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use tokio::io::AsyncRead;

/// A boxed, sendable future (the trait must stay object safe).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A captured output stream of a child.
pub type OutputStream = Pin<Box<dyn AsyncRead + Send + 'static>>;

/// What to run.
#[derive(Clone, PartialEq, Eq)]
pub struct SpawnSpec {
    /// The program (an absolute or resolved path).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables added to the inherited environment. Values may be secret.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: PathBuf,
}

impl SpawnSpec {
    /// The value of an environment variable of the spec.
    #[must_use]
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for SpawnSpec {
    // Environment values carry the module key: show names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// A started child.
pub struct SpawnedProcess {
    /// Its process id (also its process group id).
    pub pid: u32,
    /// Its standard output, when captured.
    pub stdout: Option<OutputStream>,
    /// Its standard error, when captured.
    pub stderr: Option<OutputStream>,
}

impl std::fmt::Debug for SpawnedProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnedProcess")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// The signals the agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGTERM: please stop.
    Term,
    /// SIGKILL: stop now.
    Kill,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal number, when a signal ended it.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// An exit with `code`.
    #[must_use]
    pub fn code(code: i32) -> Self {
        Self {
            code: Some(code),
            signal: None,
        }
    }

    /// Ended by signal `sig`.
    #[must_use]
    pub fn signalled(sig: i32) -> Self {
        Self {
            code: None,
            signal: Some(sig),
        }
    }

    /// Exit code 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The code `$edgeAgent` reports: the exit code, or 128 + signal as shells and Docker do.
    #[must_use]
    pub fn reported_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => -1,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("ended for an unknown reason"),
        }
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(s: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt as _;
        Self {
            code: s.code(),
            signal: s.signal(),
        }
    }
}

/// Why a process operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The program could not be started.
    #[error("cannot start {}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The runner does not know this process (already reaped, or never spawned by it).
    #[error("no such process {0}")]
    NoSuchProcess(u32),
    /// Sending a signal failed.
    #[error("cannot signal process group {pid}")]
    Signal {
        /// The process (group) id.
        pid: u32,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// Waiting for the child failed.
    #[error("cannot wait for process {pid}")]
    Wait {
        /// The process id.
        pid: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Spawns and controls module processes.
pub trait ProcessRunner: Send + Sync {
    /// Starts `spec` in its own process group with stdout and stderr captured.
    ///
    /// # Errors
    /// [`RunnerError::Spawn`] when the program cannot be started.
    fn spawn(&self, spec: &SpawnSpec) -> Result<SpawnedProcess, RunnerError>;

    /// Sends `signal` to the process group of `pid`.
    ///
    /// # Errors
    /// [`RunnerError`] when the group does not exist or the signal cannot be sent.
    fn signal(&self, pid: u32, signal: Signal) -> Result<(), RunnerError>;

    /// Waits for `pid` to exit. Call at most once per process.
    ///
    /// # Errors
    /// [`RunnerError::NoSuchProcess`] for an unknown or already awaited pid.
    fn wait(&self, pid: u32) -> BoxFuture<Result<ExitStatus, RunnerError>>;
}

/// The real runner on `tokio::process`. Each child leads its own process group, so a signal
/// reaches everything it started; a child whose wait future is dropped is killed, and a child
/// gets SIGTERM from the kernel when edged dies (even by SIGKILL).
///
/// # Invariants
/// `children` holds exactly the spawned children nobody has started waiting for.
#[derive(Default)]
pub struct TokioRunner {
    children: Mutex<HashMap<u32, tokio::process::Child>>,
}

impl TokioRunner {
    /// A runner with no children.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl ProcessRunner for TokioRunner {
    fn spawn(&self, spec: &SpawnSpec) -> Result<SpawnedProcess, RunnerError> {
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // A module must not outlive edged: after a kill -9 of edged, a restarted edged would
        // start a second instance beside the orphan, and the two would take turns replacing
        // each other's hub connection. The kernel sends the child SIGTERM when the thread that
        // spawned it ends (a runtime worker thread, which lives as long as edged); if edged
        // already died between fork and this point, the spawn fails instead.
        let parent = std::process::id();
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec. It makes two syscalls
        // (prctl, getppid), both async-signal-safe; it allocates nothing and takes no locks.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
                if u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(parent) {
                    return Err(std::io::Error::other("edged exited during the spawn"));
                }
                Ok(())
            });
        }
        let spawn_err = |source| RunnerError::Spawn {
            program: spec.program.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let Some(pid) = child.id() else {
            return Err(spawn_err(std::io::Error::other("child has no pid")));
        };
        let stdout = child.stdout.take().map(|s| Box::pin(s) as OutputStream);
        let stderr = child.stderr.take().map(|s| Box::pin(s) as OutputStream);
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, child);
        Ok(SpawnedProcess {
            pid,
            stdout,
            stderr,
        })
    }

    fn signal(&self, pid: u32, signal: Signal) -> Result<(), RunnerError> {
        let raw = i32::try_from(pid).map_err(|_| RunnerError::NoSuchProcess(pid))?;
        let sig = match signal {
            Signal::Term => nix::sys::signal::Signal::SIGTERM,
            Signal::Kill => nix::sys::signal::Signal::SIGKILL,
        };
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), sig).map_err(|source| {
            if source == nix::errno::Errno::ESRCH {
                RunnerError::NoSuchProcess(pid)
            } else {
                RunnerError::Signal { pid, source }
            }
        })
    }

    fn wait(&self, pid: u32) -> BoxFuture<Result<ExitStatus, RunnerError>> {
        let child = self
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
        Box::pin(async move {
            let mut child = child.ok_or(RunnerError::NoSuchProcess(pid))?;
            child
                .wait()
                .await
                .map(ExitStatus::from)
                .map_err(|source| RunnerError::Wait { pid, source })
        })
    }
}
