//! Archive layers (`oci://` tar, tar+gzip, tar+zstd layers: ModelPack folders, ORAS folders,
//! KitOps ModelKits, modelcar images) land as the files inside them.
//!
//! Each layer is fetched whole and streamed through its decompressor and a tar reader into
//! `.model-loader/unpacked/<layer>/<n>` (flat names: no member path is ever used to write),
//! every member hashed as it is written; the layer's digest is checked when its last byte has
//! arrived, and nothing is staged for a layer that fails it. Member paths are refused (exit 2,
//! naming the member) when absolute, climbing out with `..`, or not a safe DEST path; links
//! must resolve to a file of the archive inside DEST (they land as copies: DEST holds plain
//! files); devices, FIFOs and sparse files are refused. Image layers keep only `/models`,
//! later layers winning and whiteouts hiding earlier files, as a container runtime would.
//!
//! The members then are ordinary files of the load, each with its sha256: the engine copies
//! them into DEST (journaled, verified, renamed, recorded in the manifest for `--verify`).
//! An index per manifest digest lets a rerun know the members without fetching any layer;
//! layers are fetched again only when a member must be copied and its staged file is gone.
//! A layer interrupted mid-download is fetched again whole (raw layers resume by range).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::plan::FilePlan;
use super::state::StateDir;
use crate::confine::Dir;
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;
use crate::remote::types::{Archive, Compression};
use crate::remote::{AnySource, ByteRange, Checksum, Fetched, RemoteFile, Source};
use crate::retry::{retrying, RetryPolicy};
use crate::url::RelPath;

/// Key prefix of a member: the engine reads it from the staged file, not from the source.
pub const STAGED: &str = "staged:";
const UNPACKED: &str = "unpacked";
/// Symlinks followed from one member before giving up (a loop, or a chain too long).
const MAX_HOPS: usize = 8;

/// One file of the unpacked model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Member {
    path: String,
    size: u64,
    sha256: String,
    /// Under the state folder: `unpacked/<layer>/<n>`.
    staged: String,
}

#[derive(Serialize, Deserialize)]
struct Index {
    members: Vec<Member>,
}

/// What one tar entry means.
enum Entry {
    File(Member),
    HardLink {
        path: String,
        target: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// An image layer hides this path (and everything under it) in earlier layers.
    Whiteout(String),
    /// An image layer hides everything under this folder in earlier layers.
    Opaque(String),
}

/// Takes the archive layers out of a listing (they land as their members, see [`expand`]).
pub fn take_archives(files: &mut Vec<RemoteFile>) -> Vec<RemoteFile> {
    let (archives, rest): (Vec<_>, Vec<_>) = files.drain(..).partition(|f| f.archive.is_some());
    *files = rest;
    archives
}

/// The members of `layers` as files of the load: from the index an earlier run left for this
/// `revision` (no layer is fetched), else unpacked now.
pub async fn expand(
    source: &AnySource,
    state: &StateDir,
    layers: &[RemoteFile],
    revision: &str,
    retry: &RetryPolicy,
    reporter: &dyn Reporter,
) -> Result<Vec<RemoteFile>> {
    let members = match read_index(state, revision) {
        Some(m) => m,
        None => stage_all(source, state, layers, revision, retry, reporter).await?,
    };
    Ok(members.into_iter().map(remote_file).collect())
}

/// Before the engine copies members: the staged file of every member to fetch must be there;
/// when an earlier run left only the index, the layers are unpacked again.
pub async fn ensure_staged(
    source: &AnySource,
    state: &StateDir,
    fetch: &[FilePlan],
    layers: &[RemoteFile],
    revision: &str,
    retry: &RetryPolicy,
    reporter: &dyn Reporter,
) -> Result<()> {
    let missing = fetch
        .iter()
        .filter_map(|f| staged_name(&f.file.key))
        .any(|name| open_staged(state, name).is_err());
    if missing {
        reporter.info("unpacking the archive layers again: files from them are missing in DEST");
        stage_all(source, state, layers, revision, retry, reporter).await?;
    }
    Ok(())
}

/// The staged file a member's key names, if it is one.
pub fn staged_name(key: &str) -> Option<&str> {
    key.strip_prefix(STAGED)
}

/// `range` of a staged member, as a fetch reply.
pub fn read_staged(state: &StateDir, name: &str, range: ByteRange) -> Result<Fetched> {
    let file = std::sync::Arc::new(open_staged(state, name)?);
    let path = state.dir().path().join(name);
    let body =
        futures_util::stream::unfold((file, range.start, range.end), move |(file, off, end)| {
            let path = path.clone();
            async move {
                if off >= end {
                    return None;
                }
                let n = (end - off).min(256 << 10) as usize;
                let f = std::sync::Arc::clone(&file);
                let read = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, off).map(|()| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                Some(match read {
                    Ok(b) => (Ok(b), (file, off + n as u64, end)),
                    Err(e) => (
                        Err(Error::local("read the unpacked", &path, e)),
                        (file, end, end),
                    ),
                })
            }
        });
    Ok(Fetched::plain(Box::pin(body)))
}

/// After the manifest is written: the staged members go (the index stays for reruns).
pub fn clean(state: &StateDir) {
    let Ok((dir, _)) = state.dir().subdir(UNPACKED, false) else {
        return;
    };
    for layer in dir.entries().unwrap_or_default() {
        if let Ok((d, _)) = dir.subdir(&layer, false) {
            for name in d.entries().unwrap_or_default() {
                let _ = d.remove_file(&name);
            }
        }
        let _ = dir.remove_dir(&layer);
    }
}

fn open_staged(state: &StateDir, name: &str) -> Result<std::fs::File> {
    let (parent, base) = crate::confine::split_parent(name);
    let (dir, _) = state.dir().subdir(parent, false)?;
    dir.open_file(base, rustix::fs::OFlags::RDONLY, 0)
        .map_err(|e| Error::local("open the unpacked", &dir.path().join(base), e))
}

fn remote_file(m: Member) -> RemoteFile {
    let mut sha = [0u8; 32];
    let _ = hex::decode_to_slice(&m.sha256, &mut sha);
    RemoteFile {
        path: m.path,
        key: format!("{STAGED}{}", m.staged),
        size: m.size,
        checksum: Some(Checksum::Sha256(sha)),
        // Content-addressed: the same file in another build of the image is up to date.
        version: Some(format!("sha256:{}", m.sha256)),
        archived: None,
        stored_gzip: false,
        archive: None,
    }
}

fn index_name(revision: &str) -> String {
    format!(
        "{UNPACKED}-{}.json",
        revision.strip_prefix("sha256:").unwrap_or(revision)
    )
}

fn read_index(state: &StateDir, revision: &str) -> Option<Vec<Member>> {
    let body = state.dir().read(&index_name(revision)).ok()?;
    serde_json::from_slice::<Index>(&body)
        .ok()
        .map(|i| i.members)
}

fn write_index(state: &StateDir, revision: &str, members: &[Member]) -> Result<()> {
    let body = serde_json::to_vec(&Index {
        members: members.to_vec(),
    })
    .expect("the index serializes");
    let name = index_name(revision);
    let tmp = format!("{name}.tmp");
    let dir = state.dir();
    let mut f = dir
        .open_file(
            &tmp,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CREATE | rustix::fs::OFlags::TRUNC,
            0o664,
        )
        .map_err(|e| Error::local("write", &dir.path().join(&tmp), e))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::local("write", &dir.path().join(&tmp), e))?;
    dir.rename(&tmp, &dir, &name)
        .map_err(|e| Error::local("rename", &dir.path().join(&name), e))
}

/// Unpacks every layer (each retried whole), merges them, writes the index.
async fn stage_all(
    source: &AnySource,
    state: &StateDir,
    layers: &[RemoteFile],
    revision: &str,
    retry: &RetryPolicy,
    reporter: &dyn Reporter,
) -> Result<Vec<Member>> {
    state.owned_recently()?;
    let mut staged = Vec::new();
    for layer in layers {
        let what = format!("fetch and unpack {}", layer.path);
        let entries =
            retrying(retry, reporter, &what, || stage_layer(source, state, layer)).await?;
        staged.push(entries);
    }
    let image = layers
        .iter()
        .any(|l| l.archive.as_ref().is_some_and(|a| a.image_root.is_some()));
    let members = merge(staged)?;
    if members.is_empty() {
        return Err(Error::new(
            Kind::NotFound,
            if image {
                "the image has no files under /models (a KServe modelcar keeps its model there)"
                    .to_string()
            } else {
                "the archive layers hold no files".to_string()
            },
        ));
    }
    write_index(state, revision, &members)?;
    Ok(members)
}

/// Fetches one layer whole, unpacking it as it arrives; its digest is checked at the end.
async fn stage_layer(
    source: &AnySource,
    state: &StateDir,
    layer: &RemoteFile,
) -> Result<Vec<Entry>> {
    let archive = layer
        .archive
        .clone()
        .expect("only archive layers are staged");
    let hex = layer.key.strip_prefix("sha256:").unwrap_or(&layer.key);
    let folder = format!("{UNPACKED}/{}", &hex[..hex.len().min(16)]);
    let (dir, _) = state.dir().subdir(&folder, true)?;
    for name in dir.entries().unwrap_or_default() {
        let _ = dir.remove_file(&name);
    }
    let room = rustix::fs::statvfs(state.dir().path())
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(u64::MAX);
    let fetched = source
        .fetch(
            layer,
            ByteRange {
                start: 0,
                end: layer.size,
            },
        )
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let shown = layer.path.clone();
    let untar = tokio::task::spawn_blocking(move || {
        untar(
            Channel {
                rx,
                held: Bytes::new(),
            },
            &archive,
            &dir,
            &folder,
            &shown,
            room,
        )
    });
    let (mut hasher, mut got, mut body) = (Sha256::new(), 0u64, fetched.body);
    let mut failed = None;
    while let Some(item) = body.next().await {
        match item {
            Ok(b) => {
                hasher.update(&b);
                got += b.len() as u64;
                if tx.send(b).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let unpacked = untar
        .await
        .map_err(|e| Error::new(Kind::Internal, "the unpacking task failed").with_source(e))?;
    if let Some(e) = failed {
        return Err(e);
    }
    let entries = unpacked?;
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != layer.size || digest != layer.key {
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "{}: {got} bytes hashing to {digest} arrived, not {} bytes of {}: damaged on \
                 the way; nothing from it was kept",
                layer.path, layer.size, layer.key
            ),
        )
        .transient(None));
    }
    Ok(entries)
}

/// The async side's bytes, read as a blocking `Read`.
struct Channel {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    held: Bytes,
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

/// Reads the tar from `reader`, staging each regular member as `folder/<n>` in `dir`. Reads to
/// the end, so every byte of the layer reaches the digest.
fn untar(
    reader: Channel,
    archive: &Archive,
    dir: &Dir,
    folder: &str,
    shown: &str,
    room: u64,
) -> Result<Vec<Entry>> {
    let bad = |why: String| Error::new(Kind::Corrupt, format!("{shown}: {why}")).transient(None);
    let decoded: Box<dyn Read> = match archive.compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(reader)
                .map_err(|e| bad(format!("not zstd ({e})")))?,
        ),
    };
    let mut tar = tar::Archive::new(decoded);
    let mut out = Vec::new();
    let mut total = 0u64;
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a tar archive ({e})")))?;
    for (n, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| bad(format!("a broken tar entry ({e})")))?;
        let raw = entry.path_bytes().into_owned();
        let raw = String::from_utf8(raw)
            .map_err(|_| member_error(shown, "a member", "its name is not UTF-8"))?;
        let kind = entry.header().entry_type();
        let Some(path) = member_path(&raw, archive, shown)? else {
            continue;
        };
        if let Some(e) = whiteout(&path, archive) {
            out.push(e);
            continue;
        }
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => {
                total = total.saturating_add(entry.size());
                if total > room {
                    return Err(Error::new(
                        Kind::Local,
                        format!(
                            "{shown} unpacks to more than the {} free on DEST's volume: give \
                             DEST a larger volume",
                            crate::progress::human(room)
                        ),
                    ));
                }
                let name = n.to_string();
                let (size, sha) = stage_member(&mut entry, dir, &name, shown, &raw)?;
                out.push(Entry::File(Member {
                    path,
                    size,
                    sha256: sha,
                    staged: format!("{folder}/{name}"),
                }));
            }
            T::Directory | T::XGlobalHeader => {}
            T::Link | T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                out.push(if kind == T::Link {
                    // Hard link targets are archive paths, like the members'.
                    let Some(target) = member_path(&target, archive, shown)? else {
                        return Err(member_error(
                            shown,
                            &raw,
                            "a hard link to a file outside what lands",
                        ));
                    };
                    Entry::HardLink { path, target }
                } else {
                    Entry::Symlink { path, target }
                });
            }
            other => {
                return Err(member_error(
                    shown,
                    &raw,
                    &format!(
                    "its type ({other:?}) is not a file, folder or link; DEST holds plain files"
                ),
                ))
            }
        }
    }
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| {
        bad(format!(
            "the archive is damaged after its last member ({e})"
        ))
    })?;
    Ok(out)
}

/// Writes one member's bytes to `dir/name`, hashing them; (size, sha256 hex).
fn stage_member(
    entry: &mut impl Read,
    dir: &Dir,
    name: &str,
    shown: &str,
    raw: &str,
) -> Result<(u64, String)> {
    let path = dir.path().join(name);
    let mut f = dir
        .open_file(
            name,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CREATE | rustix::fs::OFlags::TRUNC,
            0o664,
        )
        .map_err(|e| Error::local("create", &path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(|e| {
            Error::new(
                Kind::Corrupt,
                format!("{shown}: member {raw:?} is cut short ({e})"),
            )
            .transient(None)
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])
            .map_err(|e| Error::local("write", &path, e))?;
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

fn member_error(shown: &str, raw: &str, why: &str) -> Error {
    Error::usage(format!(
        "{shown}: refusing member {raw:?}: {why}; nothing from this artifact was written to DEST"
    ))
}

/// The path a member lands at (relative to DEST), None when it does not land (an image's
/// files outside `/models`, the archive's root folder itself). Refuses absolute paths and
/// `..` (exit 2, naming the member).
fn member_path(raw: &str, archive: &Archive, shown: &str) -> Result<Option<String>> {
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
fn merge(layers: Vec<Vec<Entry>>) -> Result<Vec<Member>> {
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
                // An empty path is the root: the whole model is hidden.
                let under = |k: &String| {
                    (itself && k == p)
                        || p.is_empty()
                        || k.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
                };
                files.retain(|k, _| !under(k));
                symlinks.retain(|k, _| !under(k));
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
        let ok = |raw: &str, a: &Archive| member_path(raw, a, "layer 1").unwrap();
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
            let e = member_path(raw, &plain, "layer 1").unwrap_err();
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
