//! `DEST/.model-loader/`: the manifest (completion marker, written last), the journal (what
//! an unfinished run made durable) and the part files.
//!
//! Invariants: a journal record never claims bytes that are not on disk (data is synced
//! before its record is appended); the manifest exists only when every listed file is at its
//! final path; paths read back from either file are re-validated, so a tampered manifest
//! cannot make the loader touch anything outside DEST.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustix::fs::OFlags;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::lock::Held;
pub use super::manifest::{Checked, Manifest, ManifestFile};
use super::plan::{LocalState, Partial, Recorded};
use super::writer::PartFile;
use crate::confine::{split_parent, Dir};
use crate::error::{Error, Result};
use crate::remote::{ByteRange, RemoteFile};
use crate::url::{RelPath, STATE_DIR};

const MANIFEST: &str = "manifest.json";
const JOURNAL: &str = "journal.jsonl";
const PARTS: &str = "parts";

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    /// The part file was started afresh: earlier range records for this path no longer
    /// describe it. Synced before the fresh part file gets any byte.
    Reset { path: String },
    /// The file is at its final path, synced.
    File {
        path: String,
        size: u64,
        version: Option<String>,
        /// What it was verified against (absent in records of older versions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checked: Option<Checked>,
    },
    /// `[start, end)` of the part file for this version is synced.
    Range {
        path: String,
        size: u64,
        version: Option<String>,
        start: u64,
        end: u64,
        /// Set when the bytes were written but not synced: the boot they were written in.
        /// Such a record survives a killed process (the page cache keeps the bytes) but not a
        /// power loss, so it is trusted only while the machine has not rebooted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot: Option<String>,
    },
}

/// DEST and its state folder, opened once; every change to DEST goes through here, through
/// folder handles that no symlink can lead out of DEST ([`Dir`]), and — once a lease is set —
/// only while the lease is still ours.
pub struct StateDir {
    dest: PathBuf,
    root: Dir,
    dir: Arc<Dir>,
    parts: Dir,
    journal: Mutex<Option<File>>,
    /// Paths the journal holds range records for (read, or written by this run): a fresh part
    /// file for one of them is preceded by a synced Reset record.
    journaled: Mutex<std::collections::HashSet<RelPath>>,
    lease: OnceLock<Arc<Held>>,
    /// Folders this run created under DEST, whose parents must be synced before the manifest
    /// vouches for the files in them.
    created: Mutex<BTreeSet<String>>,
    group_shared: bool,
    /// Part files get an `O_DIRECT` descriptor (`write_mode`); set once before the engine.
    direct: std::sync::atomic::AtomicBool,
}

/// Whether DEST (or, before it exists, the nearest folder above it that does) is shared with a
/// group: group-writable or setgid, as OpenShift volumes are (fsGroup; each pod runs as an
/// arbitrary UID in group 0, and the next pod is another UID of the same group). A sticky
/// folder (`/tmp`) is not a shared volume. When shared, the process umask stops masking the
/// group's write bit, so every folder, part file, journal, lock and file this run creates can
/// be resumed, taken over or replaced by another UID of the group. Files are created 0664 and
/// folders 0775 (less the umask): never writable by others, whatever the umask.
fn share_with_group(dest: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let dest = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
    let Some(meta) = dest.ancestors().find_map(|p| fs::metadata(p).ok()) else {
        return false;
    };
    let mode = meta.permissions().mode();
    let shared = mode & 0o1000 == 0 && (mode & 0o2000 != 0 || mode & 0o020 != 0);
    if shared {
        // Read by setting a restrictive one: files created meanwhile by another thread get
        // fewer permissions, never more.
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        rustix::process::umask(old & !rustix::fs::Mode::WGRP);
    }
    shared
}

impl StateDir {
    /// Creates DEST and its state folder; fails with exit 7 when DEST cannot be written.
    pub fn open(dest: &Path) -> Result<Self> {
        let group_shared = share_with_group(dest);
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o775)
                .create(dest)
                .map_err(|e| Error::local("create", dest, e))?;
        }
        let root = Dir::open(dest).map_err(|e| Error::local("open", dest, e))?;
        let (dir, _) = root.subdir(STATE_DIR, true)?;
        let (parts, _) = dir.subdir(PARTS, true)?;
        Ok(StateDir {
            dest: dest.to_path_buf(),
            root,
            dir: Arc::new(dir),
            parts,
            journal: Mutex::new(None),
            journaled: Mutex::new(Default::default()),
            lease: OnceLock::new(),
            created: Mutex::new(BTreeSet::new()),
            group_shared,
            direct: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// DEST is shared with the group (see [`share_with_group`]).
    pub fn group_shared(&self) -> bool {
        self.group_shared
    }

    /// `DEST/.model-loader`, for the lock.
    pub fn dir(&self) -> Arc<Dir> {
        Arc::clone(&self.dir)
    }

    /// Whether part files opened from now on write around the page cache (`write_mode`).
    pub fn set_direct(&self, direct: bool) {
        self.direct
            .store(direct, std::sync::atomic::Ordering::Relaxed);
    }

    /// From now on, every change checks that this lease is still ours.
    pub fn set_lease(&self, held: Arc<Held>) {
        let _ = self.lease.set(held);
    }

    /// Before a journal record, rename or removal: the lease, read afresh.
    fn owned(&self) -> Result<()> {
        self.lease.get().map_or(Ok(()), |l| l.verify())
    }

    /// Before a part-file write: the lease, checked at most a second ago.
    pub fn owned_recently(&self) -> Result<()> {
        self.lease
            .get()
            .map_or(Ok(()), |l| l.verify_recent(Duration::from_secs(1)))
    }

    /// Refuses early (before any byte is fetched) a file whose folder is reached through a
    /// symlink inside DEST. The same check is made again, atomically, at the rename.
    pub fn check_no_symlinks(&self, p: &RelPath) -> Result<()> {
        let (parent, _) = split_parent(p.as_str());
        match self.root.subdir(parent, false) {
            Ok(_) => Ok(()),
            Err(e) if e.message().contains("symlink") => {
                Err(e.context(format!("refusing to write {p}")))
            }
            Err(_) => Ok(()), // does not exist yet: it will be created as a real folder
        }
    }

    pub fn final_path(&self, p: &RelPath) -> PathBuf {
        self.dest.join(p.as_str())
    }

    /// Part files live in the state folder under a fixed-length name, so a long or deep path
    /// never makes the part name too long, and DEST shows only complete files.
    pub fn part_name(&self, p: &RelPath) -> String {
        part_name(p)
    }

    /// Opens (resume) or starts afresh the part file of `p`. Starting afresh over earlier range
    /// records first makes a synced Reset record, so a crash can never leave old records
    /// vouching for bytes of the new part file.
    pub fn open_part(&self, p: &RelPath, size: u64, resume: bool) -> Result<PartFile> {
        // Creating a part file replaces whatever inode has its name: only while the lease,
        // read afresh, is ours.
        self.owned()?;
        let had_records = self
            .journaled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(p);
        if !resume && had_records {
            self.append(&Record::Reset {
                path: p.to_string(),
            })?;
            self.sync_journal()?;
        }
        let direct = self.direct.load(std::sync::atomic::Ordering::Relaxed);
        PartFile::open(
            &self.parts,
            &self.part_name(p),
            size,
            resume,
            p.as_str(),
            direct,
        )
    }

    /// Bytes the part file of `p` holds on disk (0 when there is none): a part file is
    /// reserved whole when created, so resuming it needs no more room.
    pub fn part_allocated(&self, p: &RelPath) -> u64 {
        self.parts
            .stat(&self.part_name(p))
            .map(|st| (st.st_blocks as u64).saturating_mul(512))
            .unwrap_or(0)
    }

    /// Bytes held by part files whose names are not in `mine`: left by an earlier run for
    /// files this run does not fetch (the source changed, or the patterns did), and removed
    /// before the first byte is fetched, so their room counts as free.
    pub fn others_parts_allocated(&self, mine: &std::collections::HashSet<String>) -> u64 {
        self.parts
            .entries()
            .unwrap_or_default()
            .iter()
            .filter(|name| !mine.contains(*name))
            .filter_map(|name| self.parts.stat(name).ok())
            .map(|st| (st.st_blocks as u64).saturating_mul(512))
            .fold(0, u64::saturating_add)
    }

    fn sync_journal(&self) -> Result<()> {
        if let Some(j) = self
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            j.sync_data()
                .map_err(|e| Error::local("sync the journal", &self.dir.path().join(JOURNAL), e))?;
        }
        Ok(())
    }

    /// Moves a finished, verified part file to its final path under DEST (creating folders,
    /// never following a symlink); with `fsync`, its bytes are on disk before its name is.
    pub fn persist(&self, part: &PartFile, p: &RelPath, fsync: bool) -> Result<()> {
        if fsync {
            part.sync_all()?;
        }
        let (parent, base) = split_parent(p.as_str());
        self.owned()?;
        // The name must still be the inode that was written and verified: a loader that lost
        // the lease may have replaced it meanwhile.
        let name = self.part_name(p);
        let written = rustix::fs::fstat(part.file());
        let named = self.parts.stat(&name);
        let same = matches!((&written, &named), (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino);
        if !same {
            // Whatever now has the name is nobody's good bytes, and this run's records for it
            // describe the other inode: both go, so no later run resumes from them.
            let _ = self.parts.remove_file(&name);
            self.append(&Record::Reset {
                path: p.to_string(),
            })?;
            self.sync_journal()?;
            return Err(Error::new(
                crate::error::Kind::Local,
                format!(
                    "{p}: its partial file {} was replaced while it was written (another loader \
                     wrote to this DEST); not moved into place: rerun",
                    self.parts.path().join(&name).display()
                ),
            ));
        }
        let (dir, made) = self
            .root
            .subdir(parent, true)
            .map_err(|e| e.context(format!("refusing to write {p}")))?;
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(made);
        self.parts
            .rename(&self.part_name(p), &dir, base)
            .map_err(|e| Error::local("move the finished file to", &self.final_path(p), e))
    }

    /// Decodes the verified part file of `p` (`size` bytes stored gzip-encoded, see `decode`)
    /// and puts the decoded file under the part file's name, ready for [`StateDir::persist`].
    /// Fenced like every write: the lease is read before the temporary file is made, while it
    /// is written and before the rename; the journal's range records describe the stored
    /// bytes, so they are withdrawn before the name holds others.
    pub fn decode_part(
        &self,
        part: &PartFile,
        p: &RelPath,
        size: u64,
        shown: &str,
        fsync: bool,
    ) -> Result<(PartFile, super::manifest::Decoded)> {
        self.owned()?;
        let name = self.part_name(p);
        // Unpredictable, so no other loader (one that lost the lease) makes or writes it.
        let tmp = format!("{name}.{:016x}.decoded", fastrand::u64(..));
        let tmp_path = self.parts.path().join(&tmp);
        let mut out = self
            .parts
            .open_file(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o664)
            .map_err(|e| Error::local("create the decoded file", &tmp_path, e).context(shown))?;
        let room = rustix::fs::fstatvfs(&out)
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
            .unwrap_or(u64::MAX);
        let fenced = || self.owned_recently();
        let decoded =
            super::decode::gunzip(part, size, &mut out, room, shown, &fenced).and_then(|d| {
                if fsync {
                    out.sync_all()
                        .map_err(|e| Error::local("sync", &tmp_path, e).context(shown))?;
                }
                Ok(d)
            });
        let decoded = match decoded {
            Ok(d) => d,
            Err(e) => {
                let _ = self.parts.remove_file(&tmp);
                return Err(e);
            }
        };
        self.append(&Record::Reset {
            path: p.to_string(),
        })?;
        self.sync_journal()?;
        self.owned()?;
        self.parts
            .rename(&tmp, &self.parts, &name)
            .map_err(|e| Error::local("rename", &tmp_path, e))?;
        let direct = self.direct.load(std::sync::atomic::Ordering::Relaxed);
        let landed = PartFile::open(&self.parts, &name, decoded.size, true, shown, direct)?;
        let (a, b) = (rustix::fs::fstat(&out), rustix::fs::fstat(landed.file()));
        if !matches!((&a, &b), (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
            return Err(Error::new(
                crate::error::Kind::Local,
                format!("{p}: its decoded file was replaced before it was moved into place (another loader wrote to this DEST): rerun"),
            ));
        }
        Ok((landed, decoded))
    }

    /// A part file that failed verification: removed, if the lease is still ours, and its
    /// journal records withdrawn (a Reset), so that even a part file that could not be removed
    /// is never resumed as if its bytes were good.
    pub fn discard_part(&self, p: &RelPath) {
        if self.owned().is_ok() {
            let _ = self.parts.remove_file(&self.part_name(p));
            let _ = self.append(&Record::Reset {
                path: p.to_string(),
            });
        }
    }

    /// Before the manifest: every selected file is at its final path with its size (as it
    /// landed: decoded files at their decoded size). The engine already ensures it; this is
    /// the last line against a bug there or a writer beside us.
    pub fn check_in_place<'a>(
        &self,
        files: impl Iterator<Item = (&'a RelPath, u64)>,
    ) -> Result<()> {
        for (p, want) in files {
            let size = size_beneath(&self.root, p);
            if size != Some(want) {
                return Err(Error::new(
                    crate::error::Kind::Local,
                    format!(
                        "{} is {} where {want} bytes were just written; not writing the manifest \
                         (another writer in DEST?): rerun",
                        self.final_path(p).display(),
                        size.map_or("missing".into(), |s| format!("{s} bytes")),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Makes the renames of `files` and the folders this run created durable: each folder
    /// holding a file, and the parent of each created folder, synced once.
    pub fn sync_folders<'a>(&self, files: impl Iterator<Item = &'a RelPath>) -> Result<()> {
        let mut dirs: BTreeSet<String> = files
            .map(|p| split_parent(p.as_str()).0.to_string())
            .collect();
        for made in self
            .created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            dirs.insert(split_parent(made).0.to_string());
        }
        for d in dirs {
            self.root.subdir(&d, false)?.0.sync()?;
        }
        Ok(())
    }

    /// Fails when two listed paths that differ only in case ended as one file: DEST's volume
    /// folds case (SMB, CIFS, ext4 casefold), so one silently replaced the other.
    pub fn check_case_distinct<'a>(&self, files: impl Iterator<Item = &'a RelPath>) -> Result<()> {
        let mut by_folded: HashMap<String, Vec<&RelPath>> = HashMap::new();
        for p in files {
            by_folded
                .entry(p.as_str().to_lowercase())
                .or_default()
                .push(p);
        }
        for group in by_folded.values().filter(|g| g.len() > 1) {
            let mut seen: HashMap<(u64, u64), &RelPath> = HashMap::new();
            for p in group {
                let (parent, base) = split_parent(p.as_str());
                let Ok(st) = self.root.subdir(parent, false).and_then(|(d, _)| {
                    d.stat(base)
                        .map_err(|e| Error::local("stat", &self.final_path(p), e))
                }) else {
                    continue;
                };
                if let Some(other) = seen.insert((st.st_dev, st.st_ino), p) {
                    return Err(Error::new(
                        crate::error::Kind::Local,
                        format!(
                            "{other} and {p} are one file on this volume (it ignores case): one \
                             replaced the other; load into a case-sensitive volume, or --exclude one"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn read_manifest(&self) -> Option<Manifest> {
        serde_json::from_slice(&self.dir.read(MANIFEST).ok()?).ok()
    }

    /// Everything the planner needs to know about DEST for the listed files.
    pub fn local_state(&self, listed: &[(RelPath, RemoteFile)]) -> Result<LocalState> {
        let (st, journaled) = read_local_state(&self.root, &self.dir, Some(&self.parts), listed);
        self.journaled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(journaled);
        Ok(st)
    }

    fn append(&self, rec: &Record) -> Result<()> {
        self.owned()?;
        let path = self.dir.path().join(JOURNAL);
        let mut guard = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let f = self
                .dir
                .open_file(
                    JOURNAL,
                    OFlags::RDWR | OFlags::CREATE | OFlags::APPEND,
                    0o664,
                )
                .map_err(|e| Error::local("open the journal", &path, e))?;
            // A line torn by a crash must not swallow the first record appended after it.
            if ends_torn(&f) {
                (&f).write_all(b"\n")
                    .map_err(|e| Error::local("write the journal", &path, e))?;
            }
            *guard = Some(f);
        }
        let mut line = serde_json::to_vec(rec).map_err(|e| {
            Error::new(crate::error::Kind::Local, "cannot encode a journal record").with_source(e)
        })?;
        line.push(b'\n');
        // One write per record: a crash can tear only the last line, which is then ignored.
        let f = guard
            .as_mut()
            .ok_or_else(|| Error::new(crate::error::Kind::Local, "the journal is not open"))?;
        f.write_all(&line)
            .map_err(|e| Error::local("write the journal", &path, e))
    }

    /// `r` of the part file is synced: trusted by any later run.
    pub fn record_range(&self, path: &RelPath, file: &RemoteFile, r: ByteRange) -> Result<()> {
        self.append_range(path, file, r, None)
    }

    /// `r` of the part file is written but not synced: trusted only by a run on this same boot
    /// (a kill keeps the bytes, a power loss may not). Cheap enough to record every few MiB.
    pub fn record_written(&self, path: &RelPath, file: &RemoteFile, r: ByteRange) -> Result<()> {
        self.append_range(path, file, r, Some(boot_id()))
    }

    fn append_range(
        &self,
        path: &RelPath,
        file: &RemoteFile,
        r: ByteRange,
        boot: Option<String>,
    ) -> Result<()> {
        self.journaled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone());
        self.append(&Record::Range {
            path: path.to_string(),
            size: file.size,
            version: file.version.clone(),
            start: r.start,
            end: r.end,
            boot,
        })
    }

    pub fn record_file(&self, path: &RelPath, file: &RemoteFile, checked: Checked) -> Result<()> {
        self.append(&Record::File {
            path: path.to_string(),
            size: file.size,
            version: file.version.clone(),
            checked: Some(checked),
        })
    }

    /// Called before the first change to DEST: the manifest stops vouching for DEST, and what it
    /// recorded moves to the journal so that a crash from here on still knows which files the
    /// loader wrote (to skip or to remove them later).
    pub fn begin_changes(&self, previous: Option<&Manifest>) -> Result<()> {
        let Some(m) = previous else { return Ok(()) };
        for f in &m.files {
            if let Ok(p) = RelPath::new(&f.path) {
                self.append(&Record::File {
                    path: p.to_string(),
                    size: f.size,
                    version: f.version.clone(),
                    checked: Some(Checked::from(f)),
                })?;
            }
        }
        self.sync_journal()?;
        match self.dir.remove_file(MANIFEST) {
            Ok(()) => self.dir.sync(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::local(
                "remove the old manifest",
                &self.dir.path().join(MANIFEST),
                e,
            )),
        }
    }

    /// Writes the manifest atomically (temp file, fsync, rename, fsync dir), then drops the
    /// journal and any stray part files: from now on the manifest alone describes DEST.
    pub fn commit(&self, manifest: &Manifest) -> Result<()> {
        let tmp = "manifest.json.tmp";
        let tmp_path = self.dir.path().join(tmp);
        let mut body = serde_json::to_vec_pretty(manifest).map_err(|e| {
            Error::new(crate::error::Kind::Local, "cannot encode the manifest").with_source(e)
        })?;
        body.push(b'\n');
        let write = || -> std::io::Result<()> {
            let _ = self.dir.remove_file(tmp);
            let mut f =
                self.dir
                    .open_file(tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o664)?;
            f.write_all(&body)?;
            f.sync_all()
        };
        write().map_err(|e| Error::local("write", &tmp_path, e))?;
        self.owned()?;
        self.dir.rename(tmp, &self.dir, MANIFEST).map_err(|e| {
            Error::local("rename the manifest to", &self.dir.path().join(MANIFEST), e)
        })?;
        self.dir.sync()?;
        *self.journal.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(e) = self.dir.remove_file(JOURNAL) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Error::local("remove", &self.dir.path().join(JOURNAL), e));
            }
        }
        // The manifest is in place: a lease lost since only leaves the part files alone.
        let _ = self.remove_stray_parts(&[]);
        Ok(())
    }

    /// Deletes part files that no planned file will use (`keep`: part names). Fails when the
    /// lease is no longer ours: the part files are another loader's now, and so is DEST.
    pub fn remove_stray_parts(&self, keep: &[String]) -> Result<()> {
        self.owned()?;
        for name in self.parts.entries().unwrap_or_default() {
            if !keep.contains(&name) {
                let _ = self.parts.remove_file(&name);
            }
        }
        Ok(())
    }

    /// Removes a file the loader wrote earlier, and the folders that become empty — through
    /// folder handles, so a folder of DEST replaced by a symlink is refused, never followed.
    pub fn remove_file(&self, p: &RelPath) -> Result<()> {
        self.owned()?;
        let (parent, base) = split_parent(p.as_str());
        let dir = match self.root.subdir(parent, false) {
            Ok((d, _)) => d,
            Err(e) if e.message().contains("symlink") => {
                return Err(e.context(format!("refusing to remove {p}")))
            }
            Err(_) => return Ok(()), // its folder is gone: so is the file
        };
        match dir.remove_file(base) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::local(
                    "remove the stale file",
                    &self.final_path(p),
                    e,
                ))
            }
        }
        // Empty folders, innermost first; stop at the first that is not empty.
        let mut rel = parent;
        while !rel.is_empty() {
            let (up, name) = split_parent(rel);
            let Ok((updir, _)) = self.root.subdir(up, false) else {
                break;
            };
            if updir.remove_dir(name).is_err() {
                break;
            }
            rel = up;
        }
        Ok(())
    }
}

/// True when a non-empty file does not end in a newline.
fn ends_torn(f: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut last = [0u8; 1];
    len > 0 && f.read_at(&mut last, len - 1).is_ok() && last[0] != b'\n'
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or a fresh random one when it cannot be
/// read, so that unsynced records are then never trusted by another run.
pub fn boot_id() -> String {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("unknown-{:016x}", fastrand::u64(..)))
    })
    .clone()
}

/// The journal's records: files completed and ranges made durable (or written in `boot`).
/// Pure, so that any byte string (torn, tampered, hostile) can be fed to it in tests.
fn parse_journal(
    body: &[u8],
    boot: &str,
) -> (HashMap<RelPath, Recorded>, HashMap<RelPath, Partial>) {
    let mut files = HashMap::new();
    let mut partial: HashMap<RelPath, Partial> = HashMap::new();
    for line in body.split(|&b| b == b'\n') {
        let Ok(rec) = serde_json::from_slice::<Record>(line) else {
            continue;
        };
        match rec {
            Record::Reset { path } => {
                if let Ok(p) = RelPath::new(&path) {
                    partial.remove(&p);
                }
            }
            Record::File {
                path,
                size,
                version,
                checked,
            } => {
                if let Ok(p) = RelPath::new(&path) {
                    partial.remove(&p);
                    files.insert(
                        p,
                        Recorded {
                            size,
                            version,
                            checked,
                        },
                    );
                }
            }
            Record::Range {
                path,
                size,
                version,
                start,
                end,
                boot: written_in,
            } => {
                let Ok(p) = RelPath::new(&path) else { continue };
                if written_in.is_some_and(|b| b != boot) {
                    continue; // unsynced, and the machine rebooted since: maybe lost
                }
                let e = partial.entry(p).or_insert_with(|| Partial {
                    size,
                    version: version.clone(),
                    done: Vec::new(),
                });
                // A record for another version means the part file was restarted.
                if e.size != size || e.version != version {
                    *e = Partial {
                        size,
                        version,
                        done: Vec::new(),
                    };
                }
                if start < end && end <= size {
                    e.done.push(ByteRange { start, end });
                }
            }
        }
    }
    (files, partial)
}

/// The part file of `p`: a hash, so no source name (length, characters) reaches the state
/// folder's namespace.
fn part_name(p: &RelPath) -> String {
    let h = Sha256::digest(p.as_str().as_bytes());
    format!("{}.part", hex::encode(&h[..16]))
}

/// What DEST holds for the listed files, read without writing anything and without the lock:
/// for `--dry-run`, and for a DEST that cannot be written (a pre-populated read-only volume).
/// `None` when DEST or its state folder does not exist.
pub fn peek(
    dest: &Path,
    listed: &[(RelPath, RemoteFile)],
) -> Option<(LocalState, Option<Manifest>)> {
    let root = Dir::open(dest).ok()?;
    let Ok((dir, _)) = root.subdir(STATE_DIR, false) else {
        let mut st = LocalState::default();
        for (path, _) in listed {
            if let Some(len) = size_beneath(&root, path) {
                st.on_disk.insert(path.clone(), len);
            }
        }
        return Some((st, None));
    };
    let parts = dir.subdir(PARTS, false).ok().map(|(d, _)| d);
    let manifest = dir
        .read(MANIFEST)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (st, _) = read_local_state(&root, &dir, parts.as_ref(), listed);
    Some((st, manifest))
}

/// The manifest's and journal's records, the sizes on disk and the usable part files; also
/// returns the paths the journal holds range records for.
fn read_local_state(
    root: &Dir,
    dir: &Dir,
    parts: Option<&Dir>,
    listed: &[(RelPath, RemoteFile)],
) -> (LocalState, Vec<RelPath>) {
    let mut st = LocalState::default();
    let manifest: Option<Manifest> = dir
        .read(MANIFEST)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    for f in manifest.into_iter().flat_map(|m| m.files) {
        if let Ok(p) = RelPath::new(&f.path) {
            let rec = Recorded {
                size: f.size,
                checked: Some(Checked::from(&f)),
                version: f.version,
            };
            st.recorded.insert(p, rec);
        }
    }
    let (files, partial) = parse_journal(&dir.read(JOURNAL).unwrap_or_default(), &boot_id());
    st.recorded.extend(files);
    for (path, file) in listed {
        if let Some(len) = size_beneath(root, path) {
            st.on_disk.insert(path.clone(), len);
        }
        if let Some(p) = partial.get(path) {
            let part_ok = parts
                .and_then(|d| d.stat(&part_name(path)).ok())
                .is_some_and(|m| m.st_size as u64 == file.size);
            if part_ok {
                st.partial.insert(path.clone(), p.clone());
            }
        }
    }
    (st, partial.into_keys().collect())
}

/// Size of the regular file `p` below `root` (None: missing, not a regular file, or reached
/// through a symlink).
pub fn size_beneath(root: &Dir, p: &RelPath) -> Option<u64> {
    let (parent, base) = split_parent(p.as_str());
    let st = root.subdir(parent, false).ok()?.0.stat(base).ok()?;
    (rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile)
        .then_some(st.st_size as u64)
}

/// The manifest of the load at `dest`, read without following symlinks below `dest`.
pub fn read_manifest(dest: &Path) -> Option<Manifest> {
    let root = Dir::open(dest).ok()?;
    let (dir, _) = root.subdir(STATE_DIR, false).ok()?;
    serde_json::from_slice(&dir.read(MANIFEST).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, v: &str) -> RemoteFile {
        RemoteFile {
            path: "x".into(),
            key: "x".into(),
            size,
            checksum: None,
            version: Some(v.into()),
            archived: None,
            stored_gzip: false,
            archive: None,
            staged: None,
        }
    }

    fn checked() -> Checked {
        Checked {
            checksum: Some("crc32c:0000002a".into()),
            size_only: None,
            decoded: None,
        }
    }

    #[test]
    fn paths_differing_in_case_that_ended_as_one_file_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        fs::create_dir(tmp.path().join("m")).unwrap();
        fs::write(tmp.path().join("m/README.md"), b"a").unwrap();
        fs::write(tmp.path().join("m/Other.md"), b"b").unwrap();
        fs::write(tmp.path().join("m/other.md"), b"c").unwrap();
        let paths: Vec<RelPath> = ["m/README.md", "m/readme.md", "m/Other.md", "m/other.md"]
            .iter()
            .map(|p| RelPath::new(p).unwrap())
            .collect();
        // Distinct files (a case-sensitive volume): fine; readme.md not there yet is fine too.
        st.check_case_distinct(paths.iter()).unwrap();
        // A volume that folds case shows both names as one inode (a hard link stands in).
        fs::hard_link(
            tmp.path().join("m/README.md"),
            tmp.path().join("m/readme.md"),
        )
        .unwrap();
        let e = st.check_case_distinct(paths.iter()).unwrap_err();
        assert!(e.message().contains("ignores case"), "{e}");
    }

    #[test]
    fn journal_round_trip_and_torn_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        let a = RelPath::new("a.bin").unwrap();
        let b = RelPath::new("b/c.bin").unwrap();
        st.record_range(&a, &file(30, "v1"), ByteRange { start: 0, end: 10 })
            .unwrap();
        st.record_range(&a, &file(30, "v1"), ByteRange { start: 20, end: 30 })
            .unwrap();
        st.record_file(&b, &file(5, "w"), checked()).unwrap();
        // A torn last line, as after a crash mid-write.
        let mut j = fs::OpenOptions::new()
            .append(true)
            .open(st.dir.path().join(JOURNAL))
            .unwrap();
        j.write_all(b"{\"t\":\"range\",\"path\":\"a.b").unwrap();
        fs::write(st.parts.path().join(st.part_name(&a)), vec![0u8; 30]).unwrap();
        fs::create_dir_all(tmp.path().join("b")).unwrap();
        fs::write(tmp.path().join("b/c.bin"), b"12345").unwrap();

        let listed = vec![(a.clone(), file(30, "v1")), (b.clone(), file(5, "w"))];
        let ls = st.local_state(&listed).unwrap();
        assert_eq!(
            ls.partial[&a].done,
            vec![
                ByteRange { start: 0, end: 10 },
                ByteRange { start: 20, end: 30 }
            ]
        );
        assert_eq!(
            ls.recorded[&b],
            Recorded {
                size: 5,
                version: Some("w".into()),
                checked: Some(checked()),
            }
        );
        assert_eq!(ls.on_disk[&b], 5);
        assert!(!ls.on_disk.contains_key(&a));
    }

    #[test]
    fn a_torn_last_line_does_not_swallow_the_next_run_s_first_record() {
        let tmp = tempfile::tempdir().unwrap();
        let a = RelPath::new("a").unwrap();
        {
            let st = StateDir::open(tmp.path()).unwrap();
            st.record_range(&a, &file(30, "v"), ByteRange { start: 0, end: 10 })
                .unwrap();
        }
        let j = tmp.path().join(STATE_DIR).join(JOURNAL);
        let mut f = fs::OpenOptions::new().append(true).open(&j).unwrap();
        f.write_all(b"{\"t\":\"range\",\"pa").unwrap();
        // The next run appends after the torn line.
        let st = StateDir::open(tmp.path()).unwrap();
        st.record_range(&a, &file(30, "v"), ByteRange { start: 10, end: 20 })
            .unwrap();
        fs::write(st.parts.path().join(st.part_name(&a)), vec![0u8; 30]).unwrap();
        let ls = st.local_state(&[(a.clone(), file(30, "v"))]).unwrap();
        assert_eq!(
            ls.partial[&a].done,
            vec![
                ByteRange { start: 0, end: 10 },
                ByteRange { start: 10, end: 20 }
            ]
        );
    }

    #[test]
    fn a_part_file_replaced_under_the_writer_is_never_renamed_into_place() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        let a = RelPath::new("a.bin").unwrap();
        let part = st.open_part(&a, 4, false).unwrap();
        st.record_range(&a, &file(4, "v"), ByteRange { start: 0, end: 4 })
            .unwrap();
        // Another loader (one that lost the lease) made a new inode under the same name.
        let name = st.parts.path().join(st.part_name(&a));
        fs::remove_file(&name).unwrap();
        fs::write(&name, [0u8; 4]).unwrap();
        let e = st.persist(&part, &a, false).unwrap_err();
        assert!(e.message().contains("was replaced"), "{e}");
        assert!(
            !tmp.path().join("a.bin").exists(),
            "nothing renamed into place"
        );
        assert!(!name.exists(), "the stranger's part file is gone");
        // The records for the other inode are withdrawn: nothing is resumed from them.
        fs::write(&name, [0u8; 4]).unwrap();
        let ls = st.local_state(&[(a.clone(), file(4, "v"))]).unwrap();
        assert!(!ls.partial.contains_key(&a), "{:?}", ls.partial);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_that_lost_the_lease_creates_and_removes_no_part_file() {
        use crate::download::lock::{DestLock, LockTimes};
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        let lock = DestLock::acquire(
            st.dir(),
            "s3://a",
            LockTimes::default(),
            &crate::progress::QuietReporter,
        )
        .await
        .unwrap();
        st.set_lease(lock.held());
        let (a, b) = (
            RelPath::new("a.bin").unwrap(),
            RelPath::new("b.bin").unwrap(),
        );
        drop(st.open_part(&b, 4, false).unwrap());
        // Taken over: the lock now names someone else.
        let lock_path = st.dir.path().join("lock");
        let other = fs::read_to_string(&lock_path).unwrap().replacen(
            "\"owner\":\"",
            "\"owner\":\"other-",
            1,
        );
        fs::write(lock_path.with_extension("new"), other).unwrap();
        fs::rename(lock_path.with_extension("new"), &lock_path).unwrap();
        let Err(e) = st.open_part(&a, 4, false) else {
            panic!("a part file created without the lease")
        };
        assert!(e.message().contains("no longer ours"), "{e}");
        assert!(!st.parts.path().join(st.part_name(&a)).exists());
        st.discard_part(&b);
        assert!(st.remove_stray_parts(&[]).is_err());
        assert!(
            st.parts.path().join(st.part_name(&b)).exists(),
            "the new holder's part file is left alone"
        );
        drop(lock);
    }

    #[test]
    fn a_part_file_started_afresh_drops_the_old_records_first() {
        let tmp = tempfile::tempdir().unwrap();
        let a = RelPath::new("a").unwrap();
        let f = file(30, "v");
        {
            let st = StateDir::open(tmp.path()).unwrap();
            st.record_range(&a, &f, ByteRange { start: 0, end: 10 })
                .unwrap();
        }
        let st = StateDir::open(tmp.path()).unwrap();
        fs::write(st.parts.path().join(st.part_name(&a)), vec![0u8; 30]).unwrap();
        assert!(!st
            .local_state(&[(a.clone(), f.clone())])
            .unwrap()
            .partial
            .is_empty());
        // Verification failed, the part was discarded, and a fresh one is started (as a crash
        // right after would leave it: full length, no new record).
        st.discard_part(&a);
        drop(st.open_part(&a, 30, false).unwrap());
        let st = StateDir::open(tmp.path()).unwrap();
        assert!(
            st.local_state(&[(a.clone(), f)])
                .unwrap()
                .partial
                .is_empty(),
            "the old range must not vouch for the fresh part file"
        );
    }

    #[test]
    fn unsynced_ranges_count_only_on_the_boot_that_wrote_them() {
        let line = |start: u64, boot: Option<&str>| {
            serde_json::to_string(&Record::Range {
                path: "a".into(),
                size: 30,
                version: None,
                start,
                end: start + 10,
                boot: boot.map(str::to_string),
            })
            .unwrap()
        };
        let body = [line(0, None), line(10, Some("b1")), line(20, Some("b0"))].join("\n");
        let a = RelPath::new("a").unwrap();
        let (_, partial) = parse_journal(body.as_bytes(), "b1");
        assert_eq!(
            partial[&a].done,
            vec![
                ByteRange { start: 0, end: 10 },
                ByteRange { start: 10, end: 20 }
            ],
            "synced, and written on this boot; not the one from before a reboot"
        );
        let (_, partial) = parse_journal(body.as_bytes(), "b2");
        assert_eq!(partial[&a].done, vec![ByteRange { start: 0, end: 10 }]);
        assert_eq!(boot_id(), boot_id());
    }

    #[test]
    fn a_restarted_version_drops_older_ranges_and_a_missing_part_drops_all() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        let a = RelPath::new("a").unwrap();
        st.record_range(&a, &file(30, "v1"), ByteRange { start: 0, end: 10 })
            .unwrap();
        st.record_range(&a, &file(30, "v2"), ByteRange { start: 10, end: 20 })
            .unwrap();
        let listed = vec![(a.clone(), file(30, "v2"))];
        assert!(
            st.local_state(&listed).unwrap().partial.is_empty(),
            "no part file, no resume"
        );
        fs::write(st.parts.path().join(st.part_name(&a)), vec![0u8; 30]).unwrap();
        let ls = st.local_state(&listed).unwrap();
        assert_eq!(ls.partial[&a].version.as_deref(), Some("v2"));
        assert_eq!(ls.partial[&a].done, vec![ByteRange { start: 10, end: 20 }]);
    }

    #[test]
    fn manifest_commit_replaces_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        let a = RelPath::new("a").unwrap();
        st.record_file(&a, &file(1, "v"), checked()).unwrap();
        let m = Manifest {
            format: 1,
            tool: "t".into(),
            source: "s3://b/p".into(),
            revision: None,
            completed_at: crate::download::manifest::now_rfc3339(),
            files: vec![ManifestFile {
                path: "a".into(),
                size: 1,
                version: Some("v".into()),
                checksum: None,
                size_only: None,
                decoded: None,
            }],
        };
        st.commit(&m).unwrap();
        assert!(!st.dir.path().join(JOURNAL).exists());
        let back = st.read_manifest().unwrap();
        assert_eq!(back.files, m.files);
        st.begin_changes(Some(&back)).unwrap();
        assert!(st.read_manifest().is_none());
        let ls = st.local_state(&[]).unwrap();
        assert!(
            ls.recorded.contains_key(&a),
            "what the manifest vouched for moved to the journal"
        );
    }

    #[test]
    fn tampered_manifest_paths_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        let m = r#"{"format":1,"tool":"t","source":"s","completed_at":"x","files":[{"path":"../evil","size":1}]}"#;
        fs::write(st.dir.path().join(MANIFEST), m).unwrap();
        assert!(st.local_state(&[]).unwrap().recorded.is_empty());
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any journal (torn, tampered, hostile numbers): never a panic, never a range outside
        /// its file, never an unsafe path.
        #[test]
        fn any_journal_parses_safely(
            lines in proptest::collection::vec(
                prop_oneof![
                    "\\PC{0,40}",
                    ("[a-z./]{1,8}", any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(p, size, a, b)| {
                        format!(r#"{{"t":"range","path":"{p}","size":{size},"version":null,"start":{a},"end":{b}}}"#)
                    }),
                ],
                0..10,
            ),
            manifest in "\\PC{0,60}",
        ) {
            let body = lines.join("\n");
            let (files, partial) = parse_journal(body.as_bytes(), "b");
            for p in files.keys().chain(partial.keys()) {
                prop_assert!(RelPath::new(p.as_str()).is_ok());
            }
            for part in partial.values() {
                for r in &part.done {
                    prop_assert!(r.start < r.end && r.end <= part.size);
                }
            }
            let _ = serde_json::from_str::<Manifest>(&manifest);
        }
    }
}
