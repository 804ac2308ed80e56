//! The tar side of archive layers (see `unpack`): one layer's bytes, read as they arrive,
//! through its decompressor and a tar reader; each regular member written under a flat name of
//! our own and hashed; member paths confined; then layers merged (image whiteouts, later layers
//! winning, links resolved to the files they lead to). No member name is ever used to write.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::confine::Dir;
use crate::error::{Error, Kind, Result};
use crate::remote::types::{Archive, Compression};
use crate::url::RelPath;

/// Symlinks followed from one member before giving up (Linux follows 40).
const MAX_HOPS: usize = 40;
/// Members of one layer, at most: each is a staged file and an index row.
const MAX_MEMBERS: usize = 1_000_000;
/// Longest member name or link target kept (PATH_MAX): names are held in memory and the index.
const MAX_NAME: usize = 4096;
/// Bytes of names and link targets one layer may keep in all (a million 4 KiB names would
/// hold 8 GB in memory): a model's few thousand files use a few hundred KiB.
const MAX_NAME_BYTES: usize = 64 << 20;
/// Bytes of tar headers (pax, GNU long names) allowed beyond the members' own data: the tar
/// reader holds an extension header in memory whole.
const HEADER_SLACK: u64 = 1 << 20;

/// One file of the unpacked model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Under the state folder: `unpacked/<layer digest>/<n>`.
    pub staged: String,
}

/// What one tar entry means.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Entry {
    File(Member),
    HardLink {
        path: String,
        target: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// An image layer hides this path (and everything under it) in earlier layers; empty: the
    /// whole model.
    Whiteout(String),
    /// An image layer hides everything under this folder in earlier layers.
    Opaque(String),
}

/// The async side's bytes, read as a blocking `Read`.
pub struct Channel {
    pub rx: tokio::sync::mpsc::Receiver<Bytes>,
    pub held: Bytes,
}

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.held.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.held = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.held.len());
        buf[..n].copy_from_slice(&self.held[..n]);
        self.held = self.held.slice(n..);
        Ok(n)
    }
}

/// Every frame of a zstd stream, skippable frames skipped: `pzstd` writes a skippable frame
/// before each frame, zstd:chunked layers end with skippable frames, and concatenated files
/// have several frames (a plain decoder stops after the first).
struct ZstdFrames<R: Read> {
    src: BufReader<R>,
    dec: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
    /// After an error every read fails: no silent end.
    failed: bool,
}

impl<R: Read> ZstdFrames<R> {
    fn new(src: R) -> Self {
        ZstdFrames {
            src: BufReader::new(src),
            dec: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
            failed: false,
        }
    }

    fn next_frame(&mut self) -> std::io::Result<bool> {
        use ruzstd::decoding::errors::{FrameDecoderError as F, ReadFrameHeaderError as H};
        loop {
            if self.src.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.dec.reset(&mut self.src) {
                Ok(()) => return Ok(true),
                Err(F::ReadFrameHeaderError(H::SkipFrame { length, .. })) => {
                    let want = u64::from(length);
                    let skipped =
                        std::io::copy(&mut (&mut self.src).take(want), &mut std::io::sink())?;
                    if skipped != want {
                        return Err(invalid("a skippable zstd frame is cut short"));
                    }
                }
                Err(e) => return Err(invalid(&e.to_string())),
            }
        }
    }
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.failed {
            return Err(invalid("the zstd stream failed earlier"));
        }
        let r = (|| loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            while self.dec.can_collect() == 0 && !self.dec.is_finished() {
                self.dec
                    .decode_blocks(
                        &mut self.src,
                        ruzstd::decoding::BlockDecodingStrategy::UptoBlocks(1),
                    )
                    .map_err(|e| invalid(&e.to_string()))?;
            }
            let n = self.dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if self.dec.is_finished() {
                self.in_frame = false;
            }
        })();
        self.failed = r.is_err();
        r
    }
}

/// Fails a read past `allowed` bytes: what the tar reader may hold of a layer beyond the data
/// of the members it has yielded.
struct Limited<R> {
    inner: R,
    read: u64,
    allowed: Arc<AtomicU64>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.allowed.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a tar header larger than any member list needs",
            ));
        }
        Ok(n)
    }
}

/// A format error in a layer whose digest was right: the artifact itself is broken.
fn broken(shown: &str, why: String) -> Error {
    Error::new(
        Kind::Corrupt,
        format!("{shown}: {why}; the artifact itself is damaged: push it again"),
    )
}

/// Where and how one layer is staged.
pub struct Staging<'a> {
    pub archive: &'a Archive,
    pub dir: &'a Dir,
    /// `dir`'s name under the state folder, as the index names staged files.
    pub folder: &'a str,
    pub shown: &'a str,
    /// Free space: a layer that unpacks to more is refused.
    pub room: u64,
    /// The lease, checked before each member is written.
    pub fenced: &'a dyn Fn() -> Result<()>,
}

/// Reads the tar from `reader`, staging each regular member as `<n>` in the folder. Reads to
/// the end, so every byte of the layer reaches the digest.
pub fn untar(reader: Channel, st: &Staging<'_>) -> Result<Vec<Entry>> {
    let shown = st.shown;
    let allowed = Arc::new(AtomicU64::new(HEADER_SLACK));
    let decoded: Box<dyn Read> = match st.archive.compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(reader))),
        Compression::Zstd => Box::new(ZstdFrames::new(reader)),
    };
    let mut tar = tar::Archive::new(Limited {
        inner: decoded,
        read: 0,
        allowed: Arc::clone(&allowed),
    });
    let mut run = Run {
        out: Vec::new(),
        total: 0,
        kept: 0,
        names: 0,
        buf: vec![0u8; 256 << 10],
    };
    let entries = tar
        .entries()
        .map_err(|e| broken(shown, format!("not a tar archive ({e})")))?;
    for (n, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| broken(shown, format!("a broken tar entry ({e})")))?;
        // This entry's data (and padding) may now be read, and the next entry's headers: no
        // more (the tar reader holds an extension header whole in memory).
        let end = entry
            .raw_file_position()
            .saturating_add(entry.size().div_ceil(512).saturating_mul(512))
            .saturating_add(HEADER_SLACK);
        allowed.store(end, Ordering::SeqCst);
        if let Some(e) = run.take(st, n, &mut entry)? {
            run.out.push(e);
        }
    }
    // The rest (end blocks, padding) is drained below the bound: it is not held in memory.
    let mut rest = tar.into_inner().inner;
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| broken(shown, format!("damaged after its last member ({e})")))?;
    Ok(run.out)
}

/// What one layer's reading has gathered so far.
struct Run {
    out: Vec<Entry>,
    /// Bytes of the members staged.
    total: u64,
    /// Entries that land (or hide what lands).
    kept: usize,
    /// Bytes of their names and link targets.
    names: usize,
    buf: Vec<u8>,
}

impl Run {
    fn count_names(&mut self, len: usize, shown: &str) -> Result<()> {
        self.names += len;
        if self.names > MAX_NAME_BYTES {
            return Err(broken(
                shown,
                format!("more than {} MiB of member names", MAX_NAME_BYTES >> 20),
            ));
        }
        Ok(())
    }

    /// What entry `n` means, staging its bytes when it is a file; None when nothing lands.
    fn take(
        &mut self,
        st: &Staging<'_>,
        n: usize,
        entry: &mut tar::Entry<'_, impl Read>,
    ) -> Result<Option<Entry>> {
        use tar::EntryType as T;
        let shown = st.shown;
        let kind = entry.header().entry_type();
        if kind == T::XGlobalHeader {
            return Ok(None);
        }
        let raw = entry.path_bytes().into_owned();
        if raw.len() > MAX_NAME {
            let start = String::from_utf8_lossy(&raw[..64]).into_owned();
            return Err(member_error(
                shown,
                &start,
                "its name is longer than 4096 bytes",
            ));
        }
        let Some(path) = member_path(&raw, st.archive, shown)? else {
            return Ok(None);
        };
        let raw = String::from_utf8_lossy(&raw).into_owned();
        self.kept += 1;
        if self.kept > MAX_MEMBERS {
            return Err(broken(shown, format!("more than {MAX_MEMBERS} members")));
        }
        self.count_names(path.len(), shown)?;
        if let Some(e) = whiteout(&path, st.archive) {
            return Ok(Some(e));
        }
        match kind {
            T::Regular | T::Continuous => {
                self.total = self.total.saturating_add(entry.size());
                // The copies into DEST are counted before the first of them is made, once
                // every layer is unpacked and the files still to copy are known (prepare_dest).
                if self.total > st.room {
                    return Err(Error::new(
                        Kind::Local,
                        format!(
                            "{shown} unpacks to more than the {} free on DEST's volume: give \
                             DEST a larger volume",
                            crate::progress::human(st.room)
                        ),
                    ));
                }
                let name = n.to_string();
                (st.fenced)()?;
                let (size, sha) = stage_member(entry, st.dir, &name, (shown, &raw), &mut self.buf)?;
                let staged = format!("{}/{name}", st.folder);
                Ok(Some(Entry::File(Member {
                    path,
                    size,
                    sha256: sha,
                    staged,
                })))
            }
            T::Directory => Ok(None),
            T::Link | T::Symlink => {
                let e = link(entry, kind == T::Link, path, &raw, st)?;
                if let Entry::HardLink { target, .. } | Entry::Symlink { target, .. } = &e {
                    self.count_names(target.len(), shown)?;
                }
                Ok(Some(e))
            }
            other => Err(member_error(
                shown,
                &raw,
                &format!(
                    "its type ({other:?}) is not a file, folder or link; DEST holds plain files"
                ),
            )),
        }
    }
}

/// A hard or symbolic link entry, resolved later (`merge`).
fn link(
    entry: &tar::Entry<'_, impl Read>,
    hard: bool,
    path: String,
    raw: &str,
    st: &Staging<'_>,
) -> Result<Entry> {
    let target = entry
        .link_name_bytes()
        .map(|b| b.into_owned())
        .unwrap_or_default();
    if target.len() > MAX_NAME {
        return Err(member_error(
            st.shown,
            raw,
            "its link target is longer than 4096 bytes",
        ));
    }
    if hard {
        // Hard link targets are archive paths, like the members'.
        let Some(target) = member_path(&target, st.archive, st.shown)? else {
            return Err(member_error(
                st.shown,
                raw,
                "a hard link to a file outside what lands",
            ));
        };
        return Ok(Entry::HardLink { path, target });
    }
    Ok(Entry::Symlink {
        path,
        target: String::from_utf8_lossy(&target).into_owned(),
    })
}

/// Writes one member's bytes to `dir/name`, hashing them; (size, sha256 hex). A member that
/// ends short of its header's size is damage.
fn stage_member(
    entry: &mut tar::Entry<'_, impl Read>,
    dir: &Dir,
    name: &str,
    (shown, raw): (&str, &str),
    buf: &mut [u8],
) -> Result<(u64, String)> {
    let path = dir.path().join(name);
    let mut f = dir
        .open_file(
            name,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CREATE | rustix::fs::OFlags::EXCL,
            0o664,
        )
        .map_err(|e| Error::local("create", &path, e))?;
    let mut hasher = Sha256::new();
    let want = entry.size();
    let mut size = 0u64;
    loop {
        let n = entry
            .read(buf)
            .map_err(|e| broken(shown, format!("member {raw:?} is cut short ({e})")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])
            .map_err(|e| Error::local("write", &path, e))?;
        size += n as u64;
    }
    if size != want {
        return Err(broken(
            shown,
            format!("member {raw:?} holds {size} of its {want} bytes"),
        ));
    }
    Ok((size, hex::encode(hasher.finalize())))
}

pub fn member_error(shown: &str, raw: &str, why: &str) -> Error {
    Error::usage(format!(
        "{shown}: refusing member {raw:?}: {why}; nothing from this artifact was written to DEST"
    ))
}

/// The path a member lands at (relative to DEST), None when it does not land (an image's
/// files outside `/models`, the archive's root folder itself). Refuses absolute paths and
/// `..` (exit 2, naming the member).
fn member_path(raw: &[u8], archive: &Archive, shown: &str) -> Result<Option<String>> {
    // An image's files outside the model are skipped before anything else is asked of them.
    if let Some(root) = &archive.image_root {
        let trimmed = raw.strip_prefix(b"./").unwrap_or(raw);
        let trimmed = trimmed.strip_prefix(b"/").unwrap_or(trimmed);
        let whiteout_of_root = trimmed == format!(".wh.{root}").as_bytes();
        if !trimmed.starts_with(format!("{root}/").as_bytes())
            && trimmed != root.as_bytes()
            && !whiteout_of_root
        {
            return Ok(None);
        }
    }
    let shown_raw = String::from_utf8_lossy(raw).into_owned();
    let Ok(raw) = std::str::from_utf8(raw) else {
        return Err(member_error(shown, &shown_raw, "its name is not UTF-8"));
    };
    if raw.starts_with('/') {
        return Err(member_error(shown, raw, "it is an absolute path"));
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(member_error(shown, raw, "it climbs out with '..'")),
            c => parts.push(c),
        }
    }
    let path = parts.join("/");
    let path = match &archive.image_root {
        None => path,
        Some(root) => match path.strip_prefix(root.as_str()) {
            Some("") => return Ok(None),
            Some(rest) if rest.starts_with('/') => rest[1..].to_string(),
            // A whiteout of the root itself hides the whole model.
            _ if path == format!(".wh.{root}") => ".wh.".to_string(),
            _ => return Ok(None),
        },
    };
    if path.is_empty() {
        return Ok(None);
    }
    if !path.rsplit('/').next().unwrap_or("").starts_with(".wh.") || archive.image_root.is_none() {
        RelPath::new(&path).map_err(|e| {
            member_error(
                shown,
                raw,
                e.message().split(": ").nth(1).unwrap_or("not a safe path"),
            )
        })?;
    }
    Ok(Some(path))
}

/// An image layer's whiteout markers (`.wh.NAME`, `.wh..wh..opq`).
fn whiteout(path: &str, archive: &Archive) -> Option<Entry> {
    archive.image_root.as_ref()?;
    let (parent, base) = crate::confine::split_parent(path);
    if base == ".wh..wh..opq" {
        return Some(Entry::Opaque(parent.to_string()));
    }
    let hidden = base.strip_prefix(".wh.")?;
    Some(Entry::Whiteout(if parent.is_empty() {
        hidden.to_string()
    } else {
        format!("{parent}/{hidden}")
    }))
}

/// Layers in order: each hides what its whiteouts name in the layers below, then adds its
/// files (a later one replacing an earlier one at the same path); links resolve last.
pub fn merge(layers: Vec<Vec<Entry>>) -> Result<Vec<Member>> {
    let mut files: BTreeMap<String, Member> = BTreeMap::new();
    let mut symlinks: BTreeMap<String, String> = BTreeMap::new();
    for entries in layers {
        for e in &entries {
            let hidden = match e {
                Entry::Whiteout(p) => Some((p.as_str(), true)),
                Entry::Opaque(p) => Some((p.as_str(), false)),
                _ => None,
            };
            if let Some((p, itself)) = hidden {
                hide(&mut files, p, itself);
                hide(&mut symlinks, p, itself);
            }
        }
        for e in entries {
            match e {
                Entry::File(m) => {
                    symlinks.remove(&m.path);
                    files.insert(m.path.clone(), m);
                }
                Entry::HardLink { path, target } => {
                    let Some(m) = files.get(&target).cloned() else {
                        return Err(Error::usage(format!(
                            "refusing member {path:?}: a hard link to {target:?}, which is no \
                             file of the archive; nothing from this artifact was written to DEST"
                        )));
                    };
                    symlinks.remove(&path);
                    files.insert(path.clone(), Member { path, ..m });
                }
                Entry::Symlink { path, target } => {
                    files.remove(&path);
                    symlinks.insert(path, target);
                }
                Entry::Whiteout(_) | Entry::Opaque(_) => {}
            }
        }
    }
    for (path, target) in &symlinks {
        let m = resolve(path, target, &files, &symlinks)?;
        files.insert(
            path.clone(),
            Member {
                path: path.clone(),
                ..m
            },
        );
    }
    Ok(files.into_values().collect())
}

/// Removes what a whiteout hides: `p` itself (`itself`) and everything under `p/`; an empty
/// `p` is the root, the whole model. A range of the sorted map, so that a layer of a million
/// whiteouts over a million files costs a million lookups, not their product.
fn hide<V>(map: &mut BTreeMap<String, V>, p: &str, itself: bool) {
    if p.is_empty() {
        map.clear();
        return;
    }
    if itself {
        map.remove(p);
    }
    // Keys under `p/` sort between `p/` and `p0` ('0' follows '/').
    let doomed: Vec<String> = map
        .range(format!("{p}/")..format!("{p}0"))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        map.remove(&k);
    }
}

/// The file a symlink leads to, inside what lands; anything else is refused.
fn resolve(
    path: &str,
    target: &str,
    files: &BTreeMap<String, Member>,
    symlinks: &BTreeMap<String, String>,
) -> Result<Member> {
    let refuse = |why: &str| {
        Error::usage(format!(
            "refusing member {path:?}: a symbolic link to {target:?}, {why}; DEST holds plain \
             files, so a link must lead to a file of the model; nothing from this artifact was \
             written to DEST"
        ))
    };
    let (mut at, mut to) = (path.to_string(), target.to_string());
    for _ in 0..MAX_HOPS {
        if to.starts_with('/') {
            return Err(refuse("an absolute path, outside DEST"));
        }
        let mut parts: Vec<&str> = at
            .rsplit_once('/')
            .map_or(vec![], |(p, _)| p.split('/').collect());
        for c in to.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(refuse("which leads outside DEST"));
                    }
                }
                c => parts.push(c),
            }
        }
        let next = parts.join("/");
        if let Some(m) = files.get(&next) {
            return Ok(m.clone());
        }
        match symlinks.get(&next) {
            Some(t) => (at, to) = (next, t.clone()),
            None => {
                return Err(refuse(
                    "which is no file of the archive (a folder, or nothing)",
                ))
            }
        }
    }
    Err(refuse("through too many links (a loop?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whiteout_hides_its_path_and_what_is_under_it_and_nothing_beside() {
        let keys = [
            "a/b", "a/b/c", "a/b/c/d", "a/b.txt", "a/bc", "a/b0", "a/a", "b",
        ];
        let map = || -> BTreeMap<String, ()> { keys.iter().map(|k| (k.to_string(), ())).collect() };
        let left = |m: BTreeMap<String, ()>| m.into_keys().collect::<Vec<_>>();
        let mut m = map();
        hide(&mut m, "a/b", true);
        assert_eq!(left(m), ["a/a", "a/b.txt", "a/b0", "a/bc", "b"]);
        let mut m = map();
        hide(&mut m, "a/b", false);
        assert_eq!(left(m), ["a/a", "a/b", "a/b.txt", "a/b0", "a/bc", "b"]);
        let mut m = map();
        hide(&mut m, "", false);
        assert!(m.is_empty());
    }

    fn member(path: &str, sha: &str) -> Entry {
        Entry::File(Member {
            path: path.into(),
            size: 1,
            sha256: sha.into(),
            staged: format!("s/{sha}"),
        })
    }

    fn paths(m: &[Member]) -> Vec<(String, String)> {
        m.iter()
            .map(|m| (m.path.clone(), m.sha256.clone()))
            .collect()
    }

    /// The layer `bytes`, as the async side would send them, in small pieces.
    fn channel(bytes: Vec<u8>) -> Channel {
        let (tx, rx) = tokio::sync::mpsc::channel(bytes.len() / 1000 + 2);
        for piece in bytes.chunks(1000) {
            tx.try_send(Bytes::copy_from_slice(piece)).unwrap();
        }
        Channel {
            rx,
            held: Bytes::new(),
        }
    }

    fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack(bytes: Vec<u8>, archive: &Archive) -> (Result<Vec<Entry>>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        (
            untar(
                channel(bytes),
                &Staging {
                    archive,
                    dir: &dir,
                    folder: "unpacked/x",
                    shown: "layer 1",
                    room: u64::MAX,
                    fenced: &|| Ok(()),
                },
            ),
            tmp,
        )
    }

    #[test]
    fn every_zstd_frame_is_read_and_a_header_bomb_is_refused() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let tar = tar_with(&[("a", b"first"), ("b", &[7u8; 5000]), ("c", b"last")]);
        // Three frames, as pzstd or a concatenation writes them.
        let (one, two) = tar.split_at(1100);
        let (two, three) = two.split_at(3000);
        // A skippable frame (magic 0x184D2A5?, length, bytes) before each, as pzstd writes,
        // and one at the end, as zstd:chunked's manifest.
        let skippable = |n: u8| {
            let mut f = vec![0x50 + n, 0x2A, 0x4D, 0x18, 3, 0, 0, 0];
            f.extend([n; 3]);
            f
        };
        let mut z = Vec::new();
        for (i, part) in [one, two, three].into_iter().enumerate() {
            z.extend(skippable(i as u8));
            z.extend(compress_to_vec(part, CompressionLevel::Fastest));
        }
        z.extend(skippable(9));
        let zstd = Archive {
            compression: Compression::Zstd,
            image_root: None,
        };
        let (got, _tmp) = unpack(z, &zstd);
        let paths: Vec<String> = got
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                Entry::File(m) => Some(m.path),
                _ => None,
            })
            .collect();
        assert_eq!(paths, ["a", "b", "c"]);
        // A pax header of 4 MiB (the tar reader would hold it whole), after many small
        // entries (whose slack must not add up): refused as damage.
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..64 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, format!("d{i}/"), &b""[..]).unwrap();
        }
        let big = "x".repeat(4 << 20);
        b.append_pax_extensions([("comment", big.as_bytes())])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        b.append_data(&mut h, "f", &b"1"[..]).unwrap();
        let plain = Archive {
            compression: Compression::None,
            image_root: None,
        };
        let (got, _tmp) = unpack(b.into_inner().unwrap(), &plain);
        let e = got.unwrap_err();
        assert_eq!(e.kind(), Kind::Corrupt, "{e}");
    }

    #[test]
    fn an_image_skips_names_outside_models_before_judging_them() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.as_old_mut().name[..4].copy_from_slice(b"\xff\xfe/x");
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"1"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        b.append_data(&mut h, "models/w", &b"ok"[..]).unwrap();
        let image = Archive {
            compression: Compression::None,
            image_root: Some("models".into()),
        };
        let (got, _tmp) = unpack(b.into_inner().unwrap(), &image);
        let got = got.unwrap();
        assert!(
            matches!(got.as_slice(), [Entry::File(m)] if m.path == "w"),
            "{got:?}"
        );
        // Under /models, the same name is refused, shown lossily.
        let e = member_path(b"models/\xff", &image, "layer 1").unwrap_err();
        assert!(e.message().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn later_layers_win_and_whiteouts_hide_what_is_below() {
        let l1 = vec![
            member("a", "1"),
            member("d/x", "2"),
            member("d/y", "3"),
            member("e/z", "4"),
        ];
        let l2 = vec![
            Entry::Whiteout("a".into()),
            Entry::Opaque("d".into()),
            member("d/new", "5"),
            member("e/z", "6"),
        ];
        let got = merge(vec![l1, l2]).unwrap();
        assert_eq!(
            paths(&got),
            [("d/new".into(), "5".into()), ("e/z".into(), "6".into())]
        );
    }

    #[test]
    fn links_land_as_copies_inside_and_are_refused_outside() {
        let l = vec![
            member("blobs/abc", "9"),
            Entry::Symlink {
                path: "snap/model.bin".into(),
                target: "../blobs/abc".into(),
            },
            Entry::Symlink {
                path: "chain".into(),
                target: "snap/model.bin".into(),
            },
            Entry::HardLink {
                path: "hard".into(),
                target: "blobs/abc".into(),
            },
        ];
        let got = merge(vec![l]).unwrap();
        assert!(got.iter().all(|m| m.sha256 == "9"), "{got:?}");
        assert_eq!(got.len(), 4);
        for (target, why) in [
            ("/etc/passwd", "absolute"),
            ("../../etc/passwd", "outside DEST"),
            ("nothing", "no file of the archive"),
            ("loop", "too many links"),
        ] {
            let l = vec![
                member("f", "1"),
                Entry::Symlink {
                    path: "loop".into(),
                    target: "loop".into(),
                },
                Entry::Symlink {
                    path: "bad".into(),
                    target: target.into(),
                },
            ];
            let e = merge(vec![l]).unwrap_err();
            assert!(e.message().contains(why), "{target}: {e}");
            assert_eq!(e.kind(), Kind::Usage);
        }
        let l = vec![Entry::HardLink {
            path: "h".into(),
            target: "missing".into(),
        }];
        assert!(merge(vec![l]).unwrap_err().message().contains("hard link"));
    }

    #[test]
    fn member_paths_are_confined_and_images_keep_only_models() {
        let plain = Archive {
            compression: Compression::None,
            image_root: None,
        };
        let image = Archive {
            compression: Compression::Gzip,
            image_root: Some("models".into()),
        };
        let ok = |raw: &str, a: &Archive| member_path(raw.as_bytes(), a, "layer 1").unwrap();
        assert_eq!(
            ok("./docs/README.md", &plain).as_deref(),
            Some("docs/README.md")
        );
        assert_eq!(ok("./", &plain), None);
        assert_eq!(
            ok("models/w.safetensors", &image).as_deref(),
            Some("w.safetensors")
        );
        assert_eq!(
            ok("./models/sub//c.json", &image).as_deref(),
            Some("sub/c.json")
        );
        assert_eq!(ok("models/", &image), None);
        assert_eq!(
            ok("etc/passwd", &image),
            None,
            "outside /models nothing lands"
        );
        assert_eq!(ok("modelsX/a", &image), None);
        for (raw, why) in [
            ("/etc/passwd", "absolute"),
            ("a/../../x", "'..'"),
            ("models/../x", "'..'"),
            (".model-loader/manifest.json", "refusing member"),
        ] {
            let e = member_path(raw.as_bytes(), &plain, "layer 1").unwrap_err();
            assert!(e.message().contains(why), "{raw}: {e}");
            assert_eq!(e.kind(), Kind::Usage);
        }
        assert!(matches!(whiteout("sub/.wh.x", &image), Some(Entry::Whiteout(p)) if p == "sub/x"));
        assert!(matches!(whiteout(".wh..wh..opq", &image), Some(Entry::Opaque(p)) if p.is_empty()));
        assert!(
            whiteout(".wh.x", &plain).is_none(),
            "only images have whiteouts"
        );
    }
}
