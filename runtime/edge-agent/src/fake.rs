//! A recording [`ProcessRunner`] with failure switches, for unit tests of the agent (and of
//! crates that embed it). No OS processes are started.

use crate::runner::{
    BoxFuture, ExitStatus, ProcessRunner, RunnerError, Signal, SpawnSpec, SpawnedProcess,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use tokio::sync::watch;

/// How a fake process behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeBehavior {
    /// Runs until signalled (SIGTERM and SIGKILL end it) or [`FakeRunner::exit`].
    Run,
    /// Exits at once with this code.
    Exit(i32),
    /// Runs and ignores SIGTERM; only SIGKILL or [`FakeRunner::exit`] end it.
    IgnoreTerm,
}

/// One recorded spawn.
#[derive(Debug, Clone)]
pub struct SpawnRecord {
    /// The pid handed out.
    pub pid: u32,
    /// What was asked for.
    pub spec: SpawnSpec,
    /// When (tokio time, so paused-clock tests see virtual time).
    pub at: tokio::time::Instant,
}

struct FakeProc {
    exit: watch::Sender<Option<ExitStatus>>,
    behavior: FakeBehavior,
}

#[derive(Default)]
struct Inner {
    next_pid: u32,
    procs: HashMap<u32, FakeProc>,
    spawns: Vec<SpawnRecord>,
    signals: Vec<(u32, Signal)>,
    fail_spawn: bool,
    default: Option<FakeBehavior>,
    behaviors: HashMap<PathBuf, FakeBehavior>,
}

/// The fake runner. Pids start at 1000.
///
/// # Invariants
/// A pid is handed out once; a process's exit status, once set, never changes.
#[derive(Default)]
pub struct FakeRunner {
    inner: Mutex<Inner>,
}

impl FakeRunner {
    /// A runner whose processes [`FakeBehavior::Run`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every later spawn fail (`true`) or succeed (`false`).
    pub fn set_fail_spawn(&self, fail: bool) {
        self.lock().fail_spawn = fail;
    }

    /// Behaviour of programs without their own.
    pub fn set_default(&self, behavior: FakeBehavior) {
        self.lock().default = Some(behavior);
    }

    /// Behaviour of one program.
    pub fn set_behavior(&self, program: impl AsRef<Path>, behavior: FakeBehavior) {
        self.lock()
            .behaviors
            .insert(program.as_ref().to_path_buf(), behavior);
    }

    /// Ends a running fake process with `code`. Returns false when it is unknown or ended.
    pub fn exit(&self, pid: u32, code: i32) -> bool {
        Self::finish(&mut self.lock(), pid, ExitStatus::code(code))
    }

    /// Every spawn so far, in order.
    #[must_use]
    pub fn spawns(&self) -> Vec<SpawnRecord> {
        self.lock().spawns.clone()
    }

    /// Every signal so far, in order.
    #[must_use]
    pub fn signals(&self) -> Vec<(u32, Signal)> {
        self.lock().signals.clone()
    }

    /// Pids of fake processes that have not ended.
    #[must_use]
    pub fn alive(&self) -> Vec<u32> {
        let inner = self.lock();
        let mut v: Vec<u32> = inner
            .procs
            .iter()
            .filter(|(_, p)| p.exit.borrow().is_none())
            .map(|(pid, _)| *pid)
            .collect();
        v.sort_unstable();
        v
    }

    fn finish(inner: &mut Inner, pid: u32, status: ExitStatus) -> bool {
        match inner.procs.get(&pid) {
            Some(p) if p.exit.borrow().is_none() => {
                p.exit.send_replace(Some(status));
                true
            }
            _ => false,
        }
    }
}

impl ProcessRunner for FakeRunner {
    fn spawn(&self, spec: &SpawnSpec) -> Result<SpawnedProcess, RunnerError> {
        let mut inner = self.lock();
        if inner.fail_spawn {
            return Err(RunnerError::Spawn {
                program: spec.program.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "fake spawn failure"),
            });
        }
        let pid = 1000 + inner.next_pid;
        inner.next_pid += 1;
        let behavior = inner
            .behaviors
            .get(&spec.program)
            .copied()
            .or(inner.default)
            .unwrap_or(FakeBehavior::Run);
        let initial = match behavior {
            FakeBehavior::Exit(code) => Some(ExitStatus::code(code)),
            FakeBehavior::Run | FakeBehavior::IgnoreTerm => None,
        };
        let (exit, _) = watch::channel(initial);
        inner.procs.insert(pid, FakeProc { exit, behavior });
        inner.spawns.push(SpawnRecord {
            pid,
            spec: spec.clone(),
            at: tokio::time::Instant::now(),
        });
        Ok(SpawnedProcess {
            pid,
            stdout: None,
            stderr: None,
        })
    }

    fn signal(&self, pid: u32, signal: Signal) -> Result<(), RunnerError> {
        let mut inner = self.lock();
        inner.signals.push((pid, signal));
        let Some(p) = inner.procs.get(&pid) else {
            return Err(RunnerError::NoSuchProcess(pid));
        };
        if p.exit.borrow().is_some() {
            return Err(RunnerError::NoSuchProcess(pid));
        }
        match (signal, p.behavior) {
            (Signal::Term, FakeBehavior::IgnoreTerm) => {}
            (Signal::Term, _) => {
                Self::finish(&mut inner, pid, ExitStatus::signalled(15));
            }
            (Signal::Kill, _) => {
                Self::finish(&mut inner, pid, ExitStatus::signalled(9));
            }
        }
        Ok(())
    }

    fn wait(&self, pid: u32) -> BoxFuture<Result<ExitStatus, RunnerError>> {
        let rx = self.lock().procs.get(&pid).map(|p| p.exit.subscribe());
        Box::pin(async move {
            let mut rx = rx.ok_or(RunnerError::NoSuchProcess(pid))?;
            let status = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| RunnerError::NoSuchProcess(pid))?;
            (*status).ok_or(RunnerError::NoSuchProcess(pid))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(p: &str) -> SpawnSpec {
        SpawnSpec {
            program: p.into(),
            args: vec![],
            env: vec![],
            cwd: "/".into(),
        }
    }

    #[tokio::test]
    async fn behaviours_and_switches() {
        let r = FakeRunner::new();
        r.set_behavior("/crash", FakeBehavior::Exit(3));
        r.set_behavior("/stubborn", FakeBehavior::IgnoreTerm);
        let a = r.spawn(&spec("/run")).unwrap().pid;
        let b = r.spawn(&spec("/crash")).unwrap().pid;
        let c = r.spawn(&spec("/stubborn")).unwrap().pid;
        assert_eq!(r.wait(b).await.unwrap(), ExitStatus::code(3));
        assert_eq!(r.alive(), vec![a, c]);
        r.signal(a, Signal::Term).unwrap();
        assert_eq!(r.wait(a).await.unwrap(), ExitStatus::signalled(15));
        r.signal(c, Signal::Term).unwrap();
        assert_eq!(r.alive(), vec![c]);
        r.signal(c, Signal::Kill).unwrap();
        assert_eq!(r.wait(c).await.unwrap(), ExitStatus::signalled(9));
        assert!(matches!(
            r.signal(c, Signal::Kill),
            Err(RunnerError::NoSuchProcess(_))
        ));
        r.set_fail_spawn(true);
        assert!(r.spawn(&spec("/run")).is_err());
        assert_eq!(r.spawns().len(), 3);
        assert_eq!(r.signals().len(), 4);
    }
}
