//! The part file: created at its full length, written at chunk offsets from many tasks at
//! once, synced, and renamed to its final path only when complete.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct PartFile {
    file: File,
    path: PathBuf,
    /// The file's path under DEST, so errors name what the user asked for, not the part file.
    shown: String,
}

impl PartFile {
    /// Opens the part file; a fresh one (not `resume`) is truncated and sized to `size` so
    /// chunks can land anywhere in it.
    pub fn open(path: &Path, size: u64, resume: bool, shown: &str) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!resume)
            .open(path)
            .map_err(|e| Error::local("create the partial file", path, e).context(shown))?;
        file.set_len(size)
            .map_err(|e| Error::local("size the partial file", path, e).context(shown))?;
        Ok(PartFile {
            file,
            path: path.to_path_buf(),
            shown: shown.to_string(),
        })
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::local("write", &self.path, e).context(&self.shown))
    }

    /// Makes written data durable (before its journal record, and before the rename).
    pub fn sync_data(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::local("sync", &self.path, e).context(&self.shown))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the finished part file to `dest` (creating its folders), atomically; with
    /// `fsync`, its bytes are on disk before its name is.
    pub fn persist(&self, dest: &Path, fsync: bool) -> Result<()> {
        if fsync {
            self.file
                .sync_all()
                .map_err(|e| Error::local("sync", &self.path, e).context(&self.shown))?;
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::local("create the folder", parent, e))?;
        }
        fs::rename(&self.path, dest).map_err(|e| Error::local("move the finished file to", dest, e))
    }
}
