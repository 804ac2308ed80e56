//! Archive layers (`oci://` tar, tar+gzip, tar+zstd layers: ModelPack folders, ORAS folders,
//! KitOps ModelKits, modelcar images) land as the files inside them.
//!
//! Each layer is fetched whole and streamed through `untar` into
//! `.model-loader/unpacked/<digest>.tmp/<n>` (flat names: no member path is ever used to
//! write), every member hashed as it is written. The layer's digest is checked when its last
//! byte has arrived; only then is the folder renamed to `unpacked/<digest>/`, with the layer's
//! entries beside its files, stamped with this boot. A layer that fails leaves nothing staged.
//! The members then are ordinary files of the load, each with its sha256: the engine copies
//! them into DEST (journaled, verified, renamed, recorded in the manifest for `--verify`).
//!
//! Reruns: an index per manifest digest lists the members, so a rerun whose files are all in
//! DEST fetches no layer. A layer is fetched again when a member it holds must be copied and
//! its staged file is gone (cleaned after a load), short, or from before a reboot (staged
//! files are not synced). A layer cut mid-download is fetched again whole; raw layers resume
//! by range.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::plan::FilePlan;
use super::state::StateDir;
use super::untar::{self, Entry, Member};
use crate::confine::Dir;
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;
use crate::remote::body::FileRange;
use crate::remote::{AnySource, ByteRange, Checksum, Fetched, RemoteFile, Source};
use crate::retry::{retrying, RetryPolicy};

const UNPACKED: &str = "unpacked";
/// The format of the index and of each layer's entries: another is not trusted.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Index {
    format: u32,
    members: Vec<Member>,
}

/// What one staged layer holds, written when its digest was checked.
#[derive(Serialize, Deserialize)]
struct Staged {
    format: u32,
    boot: String,
    entries: Vec<Entry>,
}

/// Takes the archive layers out of a listing (they land as their members, see [`expand`]).
pub fn take_archives(files: &mut Vec<RemoteFile>) -> Vec<RemoteFile> {
    let (archives, rest): (Vec<_>, Vec<_>) = files.drain(..).partition(|f| f.archive.is_some());
    *files = rest;
    archives
}

/// What staging needs besides the layers.
pub struct Ctx<'a> {
    pub source: &'a AnySource,
    pub state: &'a Arc<StateDir>,
    pub retry: &'a RetryPolicy,
    pub reporter: &'a dyn Reporter,
}

/// The members of `layers` as files of the load: from the index an earlier run left for this
/// `revision` (no layer is fetched), else unpacked now.
pub async fn expand(
    cx: &Ctx<'_>,
    layers: &[RemoteFile],
    revision: &str,
) -> Result<Vec<RemoteFile>> {
    let members =
        match read_json::<Index>(cx.state, &index_name(revision)).filter(|i| i.format == FORMAT) {
            Some(i) => i.members,
            None => stage_all(cx, layers, revision).await?,
        };
    Ok(members.into_iter().map(remote_file).collect())
}

/// Before the engine copies members: the layers of members to fetch whose staged files are
/// missing, short or from another boot are unpacked again (only those).
pub async fn ensure_staged(cx: &Ctx<'_>, fetch: &[FilePlan], layers: &[RemoteFile]) -> Result<()> {
    let boot = super::state::boot_id();
    let mut fresh_layers: std::collections::HashMap<String, bool> = Default::default();
    let mut stale = BTreeSet::new();
    for f in fetch {
        let Some(name) = f.file.staged.as_deref() else {
            continue;
        };
        let Some(hex) = name.split('/').nth(1) else {
            continue;
        };
        let layer_fresh = *fresh_layers.entry(hex.to_string()).or_insert_with(|| {
            read_json::<Staged>(cx.state, &format!("{UNPACKED}/{hex}/entries.json"))
                .is_some_and(|s| s.format == FORMAT && s.boot == boot)
        });
        let (parent, base) = crate::confine::split_parent(name);
        let fresh = layer_fresh
            && cx
                .state
                .dir()
                .subdir(parent, false)
                .ok()
                .and_then(|(d, _)| d.stat(base).ok())
                .is_some_and(|st| st.st_size as u64 == f.file.size);
        if !fresh {
            stale.insert(format!("sha256:{hex}"));
        }
    }
    for key in stale {
        // The same blob may be several layers (empty layers): unpacked once.
        let Some(layer) = layers.iter().find(|l| l.key == key) else {
            continue;
        };
        cx.reporter.info(&format!(
            "unpacking {} again: files from it must be copied into DEST",
            layer.path
        ));
        stage_retried(cx, layer).await?;
    }
    Ok(())
}

/// `range` of a staged member, as a fetch reply.
pub fn read_staged(state: &StateDir, name: &str, range: ByteRange) -> Result<Fetched> {
    let path = state.dir().path().join(name);
    let whole = FileRange::whole(open_staged(state, name)?, path.clone(), range.end);
    let body = whole
        .slice(range.start, range.len())
        .into_stream()
        // A staged file cut short is damage: the next pass unpacks the layer again.
        .map(move |r| {
            r.map_err(|e| {
                Error::new(Kind::Corrupt, format!("{}: {e}", path.display())).transient(None)
            })
        });
    Ok(Fetched::plain(Box::pin(body)))
}

/// After the manifest is written, before the lock is released: the staged members go (the
/// index stays for reruns).
pub fn clean(state: &StateDir) {
    let Ok((dir, _)) = state.dir().subdir(UNPACKED, false) else {
        return;
    };
    for layer in dir.entries().unwrap_or_default() {
        remove_flat(&dir, &layer);
    }
}

/// Removes the folder `name` of `dir` and the files in it (staged folders hold no folders).
fn remove_flat(dir: &Dir, name: &str) {
    if let Ok((d, _)) = dir.subdir(name, false) {
        for f in d.entries().unwrap_or_default() {
            let _ = d.remove_file(&f);
        }
    }
    let _ = dir.remove_dir(name);
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
        key: m.staged.clone(),
        size: m.size,
        checksum: Some(Checksum::Sha256(sha)),
        // Content-addressed: the same file in another build of the image is up to date.
        version: Some(format!("sha256:{}", m.sha256)),
        archived: None,
        stored_gzip: false,
        archive: None,
        staged: Some(m.staged),
    }
}

fn index_name(revision: &str) -> String {
    format!(
        "{UNPACKED}-{}.json",
        revision.strip_prefix("sha256:").unwrap_or(revision)
    )
}

fn read_json<T: serde::de::DeserializeOwned>(state: &StateDir, name: &str) -> Option<T> {
    let (parent, base) = crate::confine::split_parent(name);
    let (dir, _) = state.dir().subdir(parent, false).ok()?;
    serde_json::from_slice(&dir.read(base).ok()?).ok()
}

/// Writes `value` as `name` in `dir` (atomically: a temporary name, then a rename).
fn write_json(dir: &Dir, name: &str, value: &impl Serialize) -> Result<()> {
    let body = serde_json::to_vec(value).expect("staging records serialize");
    let tmp = format!("{name}.tmp");
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
    dir.rename(&tmp, dir, name)
        .map_err(|e| Error::local("rename", &dir.path().join(name), e))
}

/// Unpacks every layer not already staged on this boot, merges them, writes the index.
async fn stage_all(cx: &Ctx<'_>, layers: &[RemoteFile], revision: &str) -> Result<Vec<Member>> {
    let boot = super::state::boot_id();
    let mut staged = Vec::new();
    for layer in layers {
        let hex = layer.key.strip_prefix("sha256:").unwrap_or(&layer.key);
        let kept = read_json::<Staged>(cx.state, &format!("{UNPACKED}/{hex}/entries.json"))
            .filter(|s| s.format == FORMAT && s.boot == boot);
        staged.push(match kept {
            Some(s) => s.entries,
            None => stage_retried(cx, layer).await?,
        });
    }
    let image = layers
        .iter()
        .any(|l| l.archive.as_ref().is_some_and(|a| a.image_root.is_some()));
    let members = untar::merge(staged)?;
    if members.is_empty() && image {
        return Err(Error::new(
            Kind::NotFound,
            "the image has no files under /models (a KServe modelcar keeps its model there)",
        ));
    }
    cx.state.owned_recently()?;
    write_json(
        &cx.state.dir(),
        &index_name(revision),
        &Index {
            format: FORMAT,
            members: members.clone(),
        },
    )?;
    Ok(members)
}

async fn stage_retried(cx: &Ctx<'_>, layer: &RemoteFile) -> Result<Vec<Entry>> {
    let what = format!("fetch and unpack {}", layer.path);
    retrying(cx.retry, cx.reporter, &what, || {
        stage_layer(cx.state, cx.source, layer)
    })
    .await
}

/// Fetches one layer whole, unpacking it as it arrives into a temporary folder; renamed into
/// place once its digest is checked, removed otherwise.
async fn stage_layer(
    state: &Arc<StateDir>,
    source: &AnySource,
    layer: &RemoteFile,
) -> Result<Vec<Entry>> {
    state.owned_recently()?;
    let hex = layer
        .key
        .strip_prefix("sha256:")
        .unwrap_or(&layer.key)
        .to_string();
    let (root, _) = state.dir().subdir(UNPACKED, true)?;
    // A name of this attempt's own: a loader that lost the lease and still writes cannot
    // touch it, nor this one its.
    for old in root.entries().unwrap_or_default() {
        if old.starts_with(&format!("{hex}.")) && old.ends_with(".tmp") {
            remove_flat(&root, &old);
        }
    }
    let tmp = format!("{hex}.{:016x}.tmp", fastrand::u64(..));
    let (dir, _) = root.subdir(&tmp, true)?;
    let unpacked = unpack_stream(state, source, layer, dir, &format!("{UNPACKED}/{hex}")).await;
    let entries = match unpacked {
        Ok(e) => e,
        Err(e) => {
            remove_flat(&root, &tmp);
            return Err(e);
        }
    };
    let (dir, _) = root.subdir(&tmp, false)?;
    let boot = super::state::boot_id();
    write_json(
        &dir,
        "entries.json",
        &Staged {
            format: FORMAT,
            boot,
            entries: entries.clone(),
        },
    )?;
    state.owned_recently()?;
    remove_flat(&root, &hex);
    root.rename(&tmp, &root, &hex)
        .map_err(|e| Error::local("rename", &root.path().join(&hex), e))?;
    Ok(entries)
}

/// The layer's bytes through the digest and, alongside, through `untar` into `dir`. Every
/// byte is read and hashed even when unpacking stops early: a damaged transfer (retried) is
/// told apart from a broken artifact (not retried) by the digest.
async fn unpack_stream(
    state: &Arc<StateDir>,
    source: &AnySource,
    layer: &RemoteFile,
    dir: Dir,
    folder: &str,
) -> Result<Vec<Entry>> {
    let archive = layer
        .archive
        .clone()
        .expect("only archive layers are staged");
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
    let reader = untar::Channel {
        rx,
        held: Bytes::new(),
    };
    let (shown, folder) = (layer.path.clone(), folder.to_string());
    let lease = Arc::clone(state);
    let task = tokio::task::spawn_blocking(move || {
        let fenced = || lease.owned_recently();
        let st = untar::Staging {
            archive: &archive,
            dir: &dir,
            folder: &folder,
            shown: &shown,
            room,
            fenced: &fenced,
        };
        untar::untar(reader, &st)
    });
    let (mut hasher, mut got, mut body) = (Sha256::new(), 0u64, fetched.body);
    let mut tx = Some(tx);
    let mut broke = None;
    while let Some(item) = body.next().await {
        let b = match item {
            Ok(b) => b,
            Err(e) => {
                broke = Some(e);
                break;
            }
        };
        hasher.update(&b);
        got += b.len() as u64;
        // An unpacking that stopped early takes no more bytes; they are still hashed.
        if let Some(t) = &tx {
            if t.send(b).await.is_err() {
                tx = None;
            }
        }
    }
    // The unpacking ends (its input closed) and is joined on every path: nothing writes into
    // the folder once this returns.
    drop(tx);
    let unpacked = task
        .await
        .map_err(|e| Error::new(Kind::Internal, "the unpacking task failed").with_source(e))?;
    if let Some(e) = broke {
        return Err(e);
    }
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
    let entries = unpacked?;
    Ok(entries)
}
