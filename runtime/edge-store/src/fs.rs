//! The filesystem seam: the few calls the store makes, and their real implementation.
//!
//! The store only ever appends to files, reads at offsets, truncates a torn tail, syncs and
//! removes whole files, all inside one flat directory. Keeping the seam that small lets
//! [`testing::MemFs`](crate::testing) model crashes exactly: what was synced survives, what was
//! not may be lost or torn.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A flat directory of files, as the store sees it.
///
/// Implementations must make [`StoreFile::sync`] + [`FileSystem::sync_dir`] durable: after both
/// returned `Ok`, the file's contents and its name survive a power cut.
pub trait FileSystem: Send {
    /// Names of all files in the directory (in any order).
    ///
    /// # Errors
    /// The directory cannot be listed.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Opens `name` for reading and appending, creating it (empty) if `create` is set.
    ///
    /// # Errors
    /// The file does not exist and `create` is false, or the OS refuses.
    fn open(&mut self, name: &str, create: bool) -> io::Result<Box<dyn StoreFile>>;

    /// Removes `name`.
    ///
    /// # Errors
    /// The OS refuses.
    fn remove(&mut self, name: &str) -> io::Result<()>;

    /// Makes created and removed names durable (fsync of the directory).
    ///
    /// # Errors
    /// The OS refuses.
    fn sync_dir(&mut self) -> io::Result<()>;
}

/// One open file of a [`FileSystem`].
pub trait StoreFile: Send {
    /// Current length in bytes.
    ///
    /// # Errors
    /// The OS refuses.
    fn size(&self) -> io::Result<u64>;

    /// Fills `buf` from `offset` exactly.
    ///
    /// # Errors
    /// The range extends past the end of the file (`UnexpectedEof`), or the OS refuses.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Appends all of `data` at the end of the file. On error, any prefix of `data` may have
    /// been written.
    ///
    /// # Errors
    /// The OS refuses (e.g. `ENOSPC`).
    fn append(&mut self, data: &[u8]) -> io::Result<()>;

    /// Makes the file's contents durable (fdatasync).
    ///
    /// # Errors
    /// The OS refuses. After a failed sync, the unsynced contents must be assumed lost.
    fn sync(&mut self) -> io::Result<()>;

    /// Cuts the file to `len` bytes.
    ///
    /// # Errors
    /// The OS refuses.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// The real filesystem: one directory on disk, `std::fs` underneath.
#[derive(Debug, Clone)]
pub struct StdFs {
    dir: PathBuf,
}

impl StdFs {
    /// Uses `dir`, creating it (and its parents) if needed.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory this filesystem works in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl FileSystem for StdFs {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Ok(name) = entry.file_name().into_string()
            {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&mut self, name: &str, create: bool) -> io::Result<Box<dyn StoreFile>> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .open(self.dir.join(name))?;
        Ok(Box::new(StdFile { file }))
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

struct StdFile {
    file: File,
}

impl StoreFile for StdFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        // Opened with O_APPEND: every write lands at the current end, also after a truncate.
        self.file.write_all(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}
