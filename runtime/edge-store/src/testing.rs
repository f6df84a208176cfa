//! Test doubles: an in-memory [`FileSystem`] that models crashes and injects failures, and a
//! manual [`Clock`]. Available to this crate's tests and, with the `test-utils` feature, to
//! other crates' tests.
//!
//! [`MemFs`] keeps, per file, what the "disk" holds (the contents at the last successful
//! sync) apart from what a reader sees. A crash throws away everything that was not synced,
//! and files whose name was never made durable by [`FileSystem::sync_dir`] disappear.
//! [`MemFs::crash_torn`] keeps a chosen prefix of the unsynced bytes instead, the way a real
//! disk may have written part of a write before power went away.
//!
//! # Invariants
//! - `synced` is a prefix-consistent image of what survives a crash: it only changes on a
//!   successful sync, on a crash, or through [`MemFs::set_contents`].
//! - Handles opened before a crash fail every call after it (a dead process cannot write).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::clock::Clock;
use crate::fs::{FileSystem, StoreFile};

/// A filesystem call that [`MemFs::fail_next`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FsOp {
    /// [`FileSystem::list`].
    List,
    /// [`FileSystem::open`].
    Open,
    /// [`FileSystem::remove`].
    Remove,
    /// [`FileSystem::sync_dir`].
    SyncDir,
    /// [`StoreFile::read_at`].
    Read,
    /// [`StoreFile::append`] (nothing is written).
    Write,
    /// [`StoreFile::sync`]; the unsynced bytes are then lost, as after a real fsync error.
    Sync,
    /// [`StoreFile::truncate`].
    Truncate,
}

/// Counts of calls that reached a [`MemFs`] (failed ones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemFsStats {
    /// `append` calls.
    pub writes: u64,
    /// `sync` calls on files.
    pub syncs: u64,
    /// `sync_dir` calls.
    pub dir_syncs: u64,
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    data: Vec<u8>,
    synced: Vec<u8>,
    /// Truncated since the last sync, so `synced` is not a prefix of `data`.
    truncated: bool,
    name_durable: bool,
}

#[derive(Debug, Default)]
struct MemState {
    files: BTreeMap<String, MemFile>,
    epoch: u64,
    fail_next: BTreeMap<FsOp, u32>,
    partial_write: Option<usize>,
    stats: MemFsStats,
}

impl MemState {
    fn take_fault(&mut self, op: FsOp) -> io::Result<()> {
        match self.fail_next.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(io::Error::other(format!("injected {op:?} failure")))
            }
            _ => Ok(()),
        }
    }
}

/// An in-memory directory with crash simulation and failure switches. Clones share state,
/// so a test keeps one clone while the store owns another.
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    inner: Arc<Mutex<MemState>>,
}

impl MemFs {
    /// An empty directory.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next `op` call fail (calls add up: two calls fail the next two).
    pub fn fail_next(&self, op: FsOp) {
        *self.state().fail_next.entry(op).or_default() += 1;
    }

    /// Makes the next write store only its first `keep` bytes and then fail (a short write,
    /// as on a full disk).
    pub fn fail_next_write_partial(&self, keep: usize) {
        self.state().partial_write = Some(keep);
    }

    /// Clears all pending failures.
    pub fn clear_failures(&self) {
        let mut s = self.state();
        s.fail_next.clear();
        s.partial_write = None;
    }

    /// Power cut: every file goes back to its last synced contents; files whose name was never
    /// made durable disappear; handles opened before fail from now on.
    pub fn crash(&self) {
        self.crash_torn(|_, _| 0);
    }

    /// Power cut where part of the unsynced data made it to disk: for each file,
    /// `keep(name, unsynced_len)` bytes of the data written after its last sync survive (it
    /// is clamped to `unsynced_len`). A file truncated since its last sync reverts to the
    /// synced contents. A file whose name was not durable survives if anything of it does.
    pub fn crash_torn(&self, mut keep: impl FnMut(&str, usize) -> usize) {
        let mut s = self.state();
        s.epoch += 1;
        s.fail_next.clear();
        s.partial_write = None;
        s.files.retain(|name, f| {
            let mut image = std::mem::take(&mut f.synced);
            if !f.truncated && f.data.len() > image.len() && f.data.starts_with(&image) {
                let extra = f.data.len() - image.len();
                let k = keep(name, extra).min(extra);
                let from = image.len();
                image.extend_from_slice(&f.data[from..from + k]);
            }
            let survives = f.name_durable || !image.is_empty();
            f.data.clone_from(&image);
            f.synced = image;
            f.truncated = false;
            f.name_durable = true;
            survives
        });
    }

    /// Names of all files.
    #[must_use]
    pub fn file_names(&self) -> Vec<String> {
        self.state().files.keys().cloned().collect()
    }

    /// What a reader sees in `name` now.
    #[must_use]
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        self.state().files.get(name).map(|f| f.data.clone())
    }

    /// Replaces (or creates) `name` with `data`, durably, as if edited on disk between runs.
    pub fn set_contents(&self, name: &str, data: Vec<u8>) {
        let mut s = self.state();
        s.files.insert(
            name.to_owned(),
            MemFile {
                synced: data.clone(),
                data,
                truncated: false,
                name_durable: true,
            },
        );
    }

    /// An independent copy of the current visible contents, all durable.
    #[must_use]
    pub fn snapshot(&self) -> MemFs {
        let copy = MemFs::new();
        for (name, f) in &self.state().files {
            copy.set_contents(name, f.data.clone());
        }
        copy
    }

    /// Call counts so far.
    #[must_use]
    pub fn stats(&self) -> MemFsStats {
        self.state().stats
    }
}

impl FileSystem for MemFs {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut s = self.state();
        s.take_fault(FsOp::List)?;
        Ok(s.files.keys().cloned().collect())
    }

    fn open(&mut self, name: &str, create: bool) -> io::Result<Box<dyn StoreFile>> {
        let mut s = self.state();
        s.take_fault(FsOp::Open)?;
        if !s.files.contains_key(name) {
            if !create {
                return Err(io::Error::new(io::ErrorKind::NotFound, name.to_owned()));
            }
            s.files.insert(name.to_owned(), MemFile::default());
        }
        Ok(Box::new(MemHandle {
            fs: Arc::clone(&self.inner),
            name: name.to_owned(),
            epoch: s.epoch,
        }))
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut s = self.state();
        s.take_fault(FsOp::Remove)?;
        s.files
            .remove(name)
            .map(drop)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut s = self.state();
        s.stats.dir_syncs += 1;
        s.take_fault(FsOp::SyncDir)?;
        for f in s.files.values_mut() {
            f.name_durable = true;
        }
        Ok(())
    }
}

struct MemHandle {
    fs: Arc<Mutex<MemState>>,
    name: String,
    epoch: u64,
}

impl MemHandle {
    fn with<T>(
        &self,
        op: FsOp,
        f: impl FnOnce(&mut MemFile, &mut Option<usize>) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut guard = self.fs.lock().unwrap_or_else(PoisonError::into_inner);
        let s = &mut *guard;
        match op {
            FsOp::Write => s.stats.writes += 1,
            FsOp::Sync => s.stats.syncs += 1,
            _ => {}
        }
        if s.epoch != self.epoch {
            return Err(io::Error::other("file handle from before a crash"));
        }
        s.take_fault(op)?;
        let file = s
            .files
            .get_mut(&self.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, self.name.clone()))?;
        f(file, &mut s.partial_write)
    }
}

impl StoreFile for MemHandle {
    fn size(&self) -> io::Result<u64> {
        self.with(FsOp::Read, |f, _| Ok(f.data.len() as u64))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(FsOp::Read, |f, _| {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let src = start
                .checked_add(buf.len())
                .and_then(|end| f.data.get(start..end))
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.with(FsOp::Write, |f, partial| {
            if let Some(keep) = partial.take() {
                f.data.extend_from_slice(&data[..keep.min(data.len())]);
                return Err(io::Error::other("injected short write"));
            }
            f.data.extend_from_slice(data);
            Ok(())
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        let result = self.with(FsOp::Sync, |f, _| {
            if f.truncated || !f.data.starts_with(&f.synced) {
                f.synced.clone_from(&f.data);
            } else {
                let from = f.synced.len();
                f.synced.extend_from_slice(&f.data[from..]);
            }
            f.truncated = false;
            Ok(())
        });
        if result.is_err() {
            // As after a real fsync error: the unsynced pages are gone.
            let mut s = self.fs.lock().unwrap_or_else(PoisonError::into_inner);
            if s.epoch == self.epoch
                && let Some(f) = s.files.get_mut(&self.name)
            {
                f.data.clone_from(&f.synced);
                f.truncated = false;
            }
        }
        result
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.with(FsOp::Truncate, |f, _| {
            let len = usize::try_from(len).map_err(io::Error::other)?;
            f.data.resize(len, 0);
            f.truncated = true;
            Ok(())
        })
    }
}

/// A clock that moves only when told. Clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at `now_ms`.
    #[must_use]
    pub fn new(now_ms: u64) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(now_ms)),
        }
    }

    /// Sets the time.
    pub fn set(&self, now_ms: u64) {
        self.now.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}
