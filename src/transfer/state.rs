//! `DEST/.model-loader/`: the manifest (completion marker, written last), the journal (what
//! an unfinished run made durable) and the part files.
//!
//! Invariants: a journal record never claims bytes that are not on disk (data is synced
//! before its record is appended); the manifest exists only when every listed file is at its
//! final path; paths read back from either file are re-validated, so a tampered manifest
//! cannot make the loader touch anything outside DEST.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::plan::{LocalState, Partial, Recorded};
use crate::error::{Error, Result};
use crate::source::{ByteRange, RemoteFile};
use crate::url::{RelPath, STATE_DIR};

const MANIFEST: &str = "manifest.json";
const JOURNAL: &str = "journal.jsonl";
const PARTS: &str = "parts";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `algorithm:hex` (md5, sha256, git-sha1) when the source gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub tool: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub completed_at: String,
    pub files: Vec<ManifestFile>,
}

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    /// The file is at its final path, synced.
    File {
        path: String,
        size: u64,
        version: Option<String>,
    },
    /// `[start, end)` of the part file for this version is synced.
    Range {
        path: String,
        size: u64,
        version: Option<String>,
        start: u64,
        end: u64,
    },
}

pub struct StateDir {
    dest: PathBuf,
    dir: PathBuf,
    journal: Mutex<Option<File>>,
}

impl StateDir {
    /// Creates DEST and its state folder; fails with exit 7 when DEST cannot be written.
    pub fn open(dest: &Path) -> Result<Self> {
        let dir = dest.join(STATE_DIR);
        fs::create_dir_all(&dir).map_err(|e| Error::local("create", &dir, e))?;
        fs::create_dir_all(dir.join(PARTS))
            .map_err(|e| Error::local("create", &dir.join(PARTS), e))?;
        Ok(StateDir {
            dest: dest.to_path_buf(),
            dir,
            journal: Mutex::new(None),
        })
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// `DEST/.model-loader`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Refuses to write through a symlink inside DEST: a folder `DEST/sub` that is a link to
    /// `/etc` would otherwise carry a download outside DEST.
    pub fn check_no_symlinks(&self, p: &RelPath) -> Result<()> {
        let mut dir = self.dest.clone();
        let parts: Vec<&str> = p.as_str().split('/').collect();
        for part in &parts[..parts.len() - 1] {
            dir.push(part);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::new(
                        crate::error::Kind::Local,
                        format!(
                            "refusing to write {p}: {} is a symlink, and following it could write outside DEST; remove it",
                            dir.display()
                        ),
                    ))
                }
                Ok(_) => {}
                Err(_) => break, // does not exist yet: it will be created as a real folder
            }
        }
        Ok(())
    }

    pub fn final_path(&self, p: &RelPath) -> PathBuf {
        self.dest.join(p.as_str())
    }

    /// Part files live in the state folder under a fixed-length name, so a long or deep path
    /// never makes the part name too long, and DEST shows only complete files.
    pub fn part_path(&self, p: &RelPath) -> PathBuf {
        let h = Sha256::digest(p.as_str().as_bytes());
        self.dir
            .join(PARTS)
            .join(format!("{}.part", hex::encode(&h[..16])))
    }

    pub fn read_manifest(&self) -> Option<Manifest> {
        read_manifest(&self.dest)
    }

    /// Everything the planner needs to know about DEST for the listed files.
    pub fn local_state(&self, listed: &[(RelPath, RemoteFile)]) -> Result<LocalState> {
        let mut st = LocalState::default();
        if let Some(m) = self.read_manifest() {
            for f in m.files {
                if let Ok(p) = RelPath::new(&f.path) {
                    st.recorded.insert(
                        p,
                        Recorded {
                            size: f.size,
                            version: f.version,
                        },
                    );
                }
            }
        }
        let (files, partial) = self.read_journal();
        st.recorded.extend(files);
        for (path, file) in listed {
            if let Ok(md) = fs::symlink_metadata(self.final_path(path)) {
                if md.is_file() {
                    st.on_disk.insert(path.clone(), md.len());
                }
            }
            if let Some(p) = partial.get(path) {
                let part_ok = fs::metadata(self.part_path(path))
                    .is_ok_and(|m| m.is_file() && m.len() == file.size);
                if part_ok {
                    st.partial.insert(path.clone(), p.clone());
                }
            }
        }
        Ok(st)
    }

    /// Reads the journal. Torn or unknown lines are skipped: losing a record only means
    /// fetching those bytes again.
    fn read_journal(&self) -> (HashMap<RelPath, Recorded>, HashMap<RelPath, Partial>) {
        let mut files = HashMap::new();
        let mut partial: HashMap<RelPath, Partial> = HashMap::new();
        let Ok(f) = File::open(self.dir.join(JOURNAL)) else {
            return (files, partial);
        };
        for line in BufReader::new(f).lines() {
            let Ok(line) = line else { break };
            let Ok(rec) = serde_json::from_str::<Record>(&line) else {
                continue;
            };
            match rec {
                Record::File {
                    path,
                    size,
                    version,
                } => {
                    if let Ok(p) = RelPath::new(&path) {
                        partial.remove(&p);
                        files.insert(p, Recorded { size, version });
                    }
                }
                Record::Range {
                    path,
                    size,
                    version,
                    start,
                    end,
                } => {
                    let Ok(p) = RelPath::new(&path) else { continue };
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

    fn append(&self, rec: &Record) -> Result<()> {
        let path = self.dir.join(JOURNAL);
        let mut guard = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::local("open the journal", &path, e))?;
            *guard = Some(f);
        }
        let mut line = serde_json::to_vec(rec).expect("records serialize");
        line.push(b'\n');
        // One write per record: a crash can tear only the last line, which is then ignored.
        guard
            .as_mut()
            .expect("opened above")
            .write_all(&line)
            .map_err(|e| Error::local("write the journal", &path, e))
    }

    pub fn record_range(&self, path: &RelPath, file: &RemoteFile, r: ByteRange) -> Result<()> {
        self.append(&Record::Range {
            path: path.to_string(),
            size: file.size,
            version: file.version.clone(),
            start: r.start,
            end: r.end,
        })
    }

    pub fn record_file(&self, path: &RelPath, file: &RemoteFile) -> Result<()> {
        self.append(&Record::File {
            path: path.to_string(),
            size: file.size,
            version: file.version.clone(),
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
                })?;
            }
        }
        if let Some(j) = self
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            j.sync_data()
                .map_err(|e| Error::local("sync the journal", &self.dir.join(JOURNAL), e))?;
        }
        let path = self.dir.join(MANIFEST);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::local("remove the old manifest", &path, e)),
        }
    }

    /// Writes the manifest atomically (temp file, fsync, rename, fsync dir), then drops the
    /// journal and any stray part files: from now on the manifest alone describes DEST.
    pub fn commit(&self, manifest: &Manifest) -> Result<()> {
        let tmp = self.dir.join("manifest.json.tmp");
        let path = self.dir.join(MANIFEST);
        let mut body = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        body.push(b'\n');
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()
        };
        write().map_err(|e| Error::local("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::local("rename the manifest to", &path, e))?;
        sync_dir(&self.dir)?;
        *self.journal.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let j = self.dir.join(JOURNAL);
        if let Err(e) = fs::remove_file(&j) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Error::local("remove", &j, e));
            }
        }
        self.remove_stray_parts(&[]);
        Ok(())
    }

    /// Deletes part files that no planned file will use.
    pub fn remove_stray_parts(&self, keep: &[PathBuf]) {
        let Ok(rd) = fs::read_dir(self.dir.join(PARTS)) else {
            return;
        };
        for e in rd.flatten() {
            if !keep.contains(&e.path()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Removes a file the loader wrote earlier, and the folders that become empty.
    pub fn remove_file(&self, p: &RelPath) -> Result<()> {
        let path = self.final_path(p);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::local("remove the stale file", &path, e)),
        }
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.dest || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

pub fn read_manifest(dest: &Path) -> Option<Manifest> {
    let body = fs::read(dest.join(STATE_DIR).join(MANIFEST)).ok()?;
    serde_json::from_slice(&body).ok()
}

/// fsync a directory so the renames and removals in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::local("sync the folder", dir, e))
}

/// RFC 3339 UTC timestamp for the manifest.
pub fn now_rfc3339() -> String {
    let d = crate::source::sigv4::amz_date(std::time::SystemTime::now());
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    )
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
        }
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
        st.record_file(&b, &file(5, "w")).unwrap();
        // A torn last line, as after a crash mid-write.
        let mut j = OpenOptions::new()
            .append(true)
            .open(st.dir.join(JOURNAL))
            .unwrap();
        j.write_all(b"{\"t\":\"range\",\"path\":\"a.b").unwrap();
        fs::write(st.part_path(&a), vec![0u8; 30]).unwrap();
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
                version: Some("w".into())
            }
        );
        assert_eq!(ls.on_disk[&b], 5);
        assert!(!ls.on_disk.contains_key(&a));
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
        fs::write(st.part_path(&a), vec![0u8; 30]).unwrap();
        let ls = st.local_state(&listed).unwrap();
        assert_eq!(ls.partial[&a].version.as_deref(), Some("v2"));
        assert_eq!(ls.partial[&a].done, vec![ByteRange { start: 10, end: 20 }]);
    }

    #[test]
    fn manifest_commit_replaces_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        let a = RelPath::new("a").unwrap();
        st.record_file(&a, &file(1, "v")).unwrap();
        let m = Manifest {
            format: 1,
            tool: "t".into(),
            source: "s3://b/p".into(),
            revision: None,
            completed_at: now_rfc3339(),
            files: vec![ManifestFile {
                path: "a".into(),
                size: 1,
                version: Some("v".into()),
                checksum: None,
            }],
        };
        st.commit(&m).unwrap();
        assert!(!st.dir.join(JOURNAL).exists());
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
        fs::write(st.dir.join(MANIFEST), m).unwrap();
        assert!(st.local_state(&[]).unwrap().recorded.is_empty());
    }
}
