//! The upload direction, for parity with KubeAI's loader (`load SRC_DIR DEST_URL`): every file
//! of a local directory to `s3://`, `oss://` or `gs://`, with checksums the server verifies
//! (Content-MD5 per request on S3/OSS; CRC32C compared with what GCS stored). Large files go
//! in parts (S3 multipart, GCS resumable) streamed from disk, so memory stays flat.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::cli::Config;
use crate::error::{Error, Kind, Result};
use crate::progress::{PlanSummary, Reporter, Summary};
use crate::source::{self, AnySource, Source};
use crate::transfer::confine::{split_parent, Dir};
use crate::transfer::retry::retrying;
use crate::url::{RelPath, SourceUrl, STATE_DIR};
use rustix::fs::OFlags;

/// Bytes `[offset, offset + len)` of a local file, streamed as a request body. The file was
/// opened once, through SRC_DIR's folder handle with no symlink followed; every range of it
/// reads that same open file, so swapping a path for a symlink mid-upload changes nothing.
#[derive(Debug, Clone)]
pub struct FileRange {
    file: Arc<std::fs::File>,
    /// For messages only.
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl FileRange {
    /// `[offset, offset + len)` of the same open file, relative to this range's start.
    pub fn slice(&self, offset: u64, len: u64) -> FileRange {
        FileRange {
            file: Arc::clone(&self.file),
            path: self.path.clone(),
            offset: self.offset + offset,
            len,
        }
    }

    /// A body that reads the range in 256 KiB blocks as the request goes out.
    pub fn into_body(self) -> reqwest::Body {
        let stream = futures_util::stream::unfold(
            (self.file, self.offset, self.len),
            |(file, off, left)| async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(256 * 1024) as usize;
                let f = Arc::clone(&file);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, off).map(|_| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match read {
                    Ok(b) => Some((Ok(b), (file, off + n as u64, left - n as u64))),
                    Err(e) => Some((Err(e), (file, off, 0))),
                }
            },
        );
        reqwest::Body::wrap_stream(stream)
    }

    fn hash<H>(&self, mut update: H) -> Result<()>
    where
        H: FnMut(&[u8]),
    {
        let mut buf = vec![0u8; 1 << 20];
        let mut off = self.offset;
        let end = self.offset + self.len;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            self.file
                .read_exact_at(&mut buf[..n], off)
                .map_err(|e| Error::local("read", &self.path, e))?;
            update(&buf[..n]);
            off += n as u64;
        }
        Ok(())
    }

    pub fn md5(&self) -> Result<[u8; 16]> {
        use md5::Digest;
        let mut h = md5::Md5::new();
        self.hash(|b| h.update(b))?;
        Ok(h.finalize().into())
    }

    pub fn crc32c(&self) -> Result<u32> {
        let mut c = 0;
        self.hash(|b| c = crc32c::crc32c_append(c, b))?;
        Ok(c)
    }

    /// Whether the whole file hashes to `want` (any algorithm a listing gives).
    fn matches(&self, want: &source::Checksum) -> Result<bool> {
        debug_assert_eq!(self.offset, 0, "a whole file");
        let got = crate::transfer::verify::hash_file(&self.file, &self.path, want, self.len)?;
        Ok(&got == want)
    }
}

/// Opens `rel` below `root` (no symlink anywhere on the way) as a whole-file range; refuses a
/// file that is no longer a regular file of the size the walk saw.
fn open_range(root: &Dir, rel: &RelPath, len: u64) -> Result<FileRange> {
    let path = root.path().join(rel.as_str());
    let (parent, base) = split_parent(rel.as_str());
    let (dir, _) = root.subdir(parent, false)?;
    let file = dir
        .open_file(base, OFlags::RDONLY, 0)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::new(
                Kind::Local,
                format!(
                    "{} became a symlink during the upload; refusing to follow it",
                    path.display()
                ),
            ),
            _ => Error::local("open", &path, e),
        })?;
    let md = file
        .metadata()
        .map_err(|e| Error::local("stat", &path, e))?;
    if !md.is_file() || md.len() != len {
        return Err(Error::new(
            Kind::Local,
            format!(
                "{} changed during the upload (now {} bytes, was {len}); rerun once it is stable",
                path.display(),
                md.len()
            ),
        ));
    }
    Ok(FileRange {
        file: Arc::new(file),
        path,
        offset: 0,
        len,
    })
}

/// Every regular file under `root` (the loader's state folder excluded), as safe relative
/// paths, read through folder handles: a symlink is skipped (with a warning), never followed.
fn walk(root: &Dir, reporter: &dyn Reporter) -> Result<Vec<(RelPath, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel_dir) = stack.pop() {
        let (dir, _) = root.subdir(&rel_dir, false)?;
        let names = dir
            .entries()
            .map_err(|e| Error::local("read the folder", dir.path(), e))?;
        for name in names {
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            if rel == STATE_DIR {
                continue;
            }
            let p = dir.path().join(&name);
            let st = dir.stat(&name).map_err(|e| Error::local("stat", &p, e))?;
            match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                rustix::fs::FileType::Symlink => {
                    reporter.warn(&format!("skipping the symlink {}", p.display()))
                }
                rustix::fs::FileType::Directory => stack.push(rel),
                rustix::fs::FileType::RegularFile => {
                    out.push((RelPath::new(&rel)?, st.st_size as u64))
                }
                _ => reporter.warn(&format!("skipping {}: not a regular file", p.display())),
            }
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Uploads `cfg.dest` (a local directory) to `cfg.source` (a URL).
pub async fn upload(cfg: &Config, reporter: Arc<dyn Reporter>) -> Result<Summary> {
    let started = Instant::now();
    if matches!(cfg.source, SourceUrl::Hf(_)) {
        return Err(Error::usage(
            "uploading to hf:// is not supported: use `hf upload` (huggingface_hub), which handles Xet and commits",
        ));
    }
    let root = Arc::new(Dir::open(&cfg.dest).map_err(|e| {
        Error::new(
            Kind::Local,
            format!("{} is not a directory to upload", cfg.dest.display()),
        )
        .with_source(e)
    })?);
    let files: Vec<_> = walk(&root, reporter.as_ref())?
        .into_iter()
        .filter(|(rel, _)| cfg.filter.matches(rel.as_str()))
        .collect();
    if files.is_empty() {
        return Err(Error::new(
            Kind::NotFound,
            format!("nothing to upload in {}", cfg.dest.display()),
        ));
    }
    let opts = source::Options {
        http: source::http::ClientOptions {
            read_timeout: cfg.read_timeout,
            ..Default::default()
        },
        oss_internal: cfg.oss_internal,
        write: true,
    };
    let target = Arc::new(AnySource::open(&cfg.source, &opts, reporter.as_ref()).await?);
    let classified = classify(&target, &root, cfg, reporter.as_ref(), files).await?;
    if cfg.dry_run {
        print_dry_run(cfg, &classified);
        return Ok(Summary::default());
    }
    let (send, same): (Vec<_>, Vec<_>) = classified
        .into_iter()
        .partition(|(_, _, at)| *at != AtDestination::Same);
    let total: u64 = send.iter().map(|f| f.1).sum();
    reporter.plan(&PlanSummary {
        upload: true,
        files: send.len(),
        bytes: total,
        skipped_files: same.len(),
        skipped_bytes: same.iter().map(|f| f.1).sum(),
        ..Default::default()
    });

    let cfg = Arc::new(cfg.clone());
    let results =
        futures_util::stream::iter(send.into_iter().enumerate().map(|(id, (rel, len, _))| {
            let (target, reporter, cfg, root) = (
                Arc::clone(&target),
                Arc::clone(&reporter),
                Arc::clone(&cfg),
                Arc::clone(&root),
            );
            async move {
                reporter.file_started(id, rel.as_str(), len);
                let whole = open_range(&root, &rel, len)?;
                upload_file(&target, &cfg, reporter.as_ref(), &rel, whole).await?;
                reporter.bytes(id, len);
                reporter.file_done(id, rel.as_str());
                Ok::<u64, Error>(len)
            }
        }))
        .buffer_unordered(cfg.concurrency.unwrap_or(8).clamp(1, 8))
        .collect::<Vec<_>>()
        .await;
    let mut summary = Summary {
        upload: true,
        files_skipped: same.len(),
        ..Default::default()
    };
    for r in results {
        summary.bytes_fetched += r?;
        summary.files_fetched += 1;
    }
    summary.elapsed = started.elapsed();
    reporter.finish(&summary);
    Ok(summary)
}

/// What the destination holds at a local file's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtDestination {
    Nothing,
    /// The same bytes: same size and the object's checksum (ETag MD5, multipart ETag, CRC)
    /// matches the local file's. Not sent again unless `--force`.
    Same,
    /// An object of this size that is (or cannot be shown to be) different.
    Other(u64),
}

/// Compares every local file with the object at its name. Objects whose checksum the listing
/// does not give (an SSE-KMS ETag, for one) count as different: they are sent again. A
/// destination that cannot be listed (write-only credentials) has every file sent.
async fn classify(
    target: &AnySource,
    root: &Arc<Dir>,
    cfg: &Config,
    reporter: &dyn Reporter,
    files: Vec<(RelPath, u64)>,
) -> Result<Vec<(RelPath, u64, AtDestination)>> {
    let listed = retrying(&cfg.retry, reporter, "listing the destination", || {
        target.list()
    })
    .await;
    let existing: std::collections::HashMap<String, source::RemoteFile> = match listed {
        Ok(l) => l.files.into_iter().map(|f| (f.path.clone(), f)).collect(),
        Err(e) if e.kind() == Kind::NotFound => Default::default(),
        Err(e) if e.kind() == Kind::Denied => {
            reporter.warn(&format!(
                "cannot list the destination ({}); every file is sent, none compared",
                e.message()
            ));
            Default::default()
        }
        Err(e) => return Err(e),
    };
    let compare = files.into_iter().map(|(rel, len)| {
        let remote = existing.get(rel.as_str()).cloned();
        let root = Arc::clone(root);
        let force = cfg.force;
        async move {
            let at = match remote {
                None => AtDestination::Nothing,
                Some(r) if r.size != len => AtDestination::Other(r.size),
                Some(_) if force => AtDestination::Other(len),
                Some(_) if len == 0 => AtDestination::Same,
                Some(r) => match r.checksum {
                    None => AtDestination::Other(len),
                    Some(want) => {
                        let whole = open_range(&root, &rel, len)?;
                        let same = blocking(move || whole.matches(&want)).await?;
                        if same {
                            AtDestination::Same
                        } else {
                            AtDestination::Other(len)
                        }
                    }
                },
            };
            Ok::<_, Error>((rel, len, at))
        }
    });
    let mut out: Vec<_> = futures_util::stream::iter(compare)
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    // Largest first, as walked: the long poles start early.
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Lists what an upload would send, skip and overwrite; sends nothing.
fn print_dry_run(cfg: &Config, files: &[(RelPath, u64, AtDestination)]) {
    use std::io::Write;
    let mut files: Vec<_> = files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = std::io::stdout().lock();
    let (mut total, mut overwrites, mut same) = (0u64, 0usize, 0usize);
    for &(rel, len, at) in &files {
        let note = match at {
            AtDestination::Nothing => {
                total += len;
                String::new()
            }
            AtDestination::Same => {
                same += 1;
                "  (identical at the destination: skipped)".into()
            }
            AtDestination::Other(size) => {
                total += len;
                overwrites += 1;
                format!("  (overwrites an object of {size} bytes)")
            }
        };
        let _ = writeln!(out, "{len:>14}  {rel}{note}");
    }
    let _ = writeln!(
        out,
        "dry run: would upload {}, {total} bytes ({}) to {}, overwriting {overwrites}; {} already there; nothing was sent",
        crate::progress::count(files.len() - same, "file"),
        crate::progress::human(total),
        cfg.source,
        crate::progress::count(same, "identical file"),
    );
}

async fn upload_file(
    target: &AnySource,
    cfg: &Config,
    reporter: &dyn Reporter,
    rel: &RelPath,
    whole: FileRange,
) -> Result<()> {
    let len = whole.len;
    let what = format!("upload {rel}");
    match target {
        AnySource::S3(s3) | AnySource::Oss(s3) => {
            let key = s3.key_for(rel.as_str());
            // S3 allows 10,000 parts: grow the part size for very large files.
            let part = cfg.chunk_size.max(len.div_ceil(10_000)).max(5 << 20);
            if len <= part {
                let body = whole.clone();
                let md5 = blocking(move || whole.md5()).await?;
                retrying(&cfg.retry, reporter, &what, || {
                    s3.put(&key, body.clone(), md5, None)
                })
                .await?;
                return Ok(());
            }
            let id = retrying(&cfg.retry, reporter, &what, || s3.create_multipart(&key)).await?;
            let mut etags = Vec::new();
            let mut offset = 0;
            let result: Result<()> = async {
                while offset < len {
                    let piece = whole.slice(offset, part.min(len - offset));
                    let p = piece.clone();
                    let md5 = blocking(move || p.md5()).await?;
                    let n = etags.len() as u32 + 1;
                    let etag = retrying(&cfg.retry, reporter, &what, || {
                        s3.put(&key, piece.clone(), md5, Some((&id, n)))
                    })
                    .await?;
                    etags.push(etag);
                    offset += piece.len;
                }
                retrying(&cfg.retry, reporter, &what, || {
                    s3.complete_multipart(&key, &id, &etags)
                })
                .await
            }
            .await;
            if result.is_err() {
                s3.abort_multipart(&key, &id).await;
            }
            result
        }
        AnySource::Gcs(gcs) => {
            let name = gcs.key_for(rel.as_str());
            let w = whole.clone();
            let crc = blocking(move || w.crc32c()).await?;
            retrying(&cfg.retry, reporter, &what, || {
                gcs.upload(&name, &whole, crc, cfg.chunk_size)
            })
            .await
        }
        AnySource::Hf(_) => Err(Error::usage("uploading to hf:// is not supported")),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(Kind::Local, "a checksum task failed").with_source(e))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::QuietReporter;

    #[test]
    fn symlinks_in_src_dir_are_skipped_and_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"do not upload").unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/w.bin"), b"weights").unwrap();
        std::os::unix::fs::symlink(&outside, src.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), src.join("link.bin")).unwrap();
        let root = Dir::open(&src).unwrap();
        let files = walk(&root, &QuietReporter).unwrap();
        let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["sub/w.bin"]);
        assert!(open_range(&root, &RelPath::new("link.bin").unwrap(), 13).is_err());
        assert!(open_range(&root, &RelPath::new("linkdir/secret").unwrap(), 13).is_err());
    }

    #[test]
    fn a_file_swapped_for_a_symlink_after_opening_is_still_read_from_the_original() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("w.bin"), b"original").unwrap();
        std::fs::write(tmp.path().join("evil"), b"EVILEVIL").unwrap();
        let root = Dir::open(&src).unwrap();
        let r = open_range(&root, &RelPath::new("w.bin").unwrap(), 8).unwrap();
        std::fs::remove_file(src.join("w.bin")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("evil"), src.join("w.bin")).unwrap();
        use md5::Digest;
        assert_eq!(
            r.md5().unwrap(),
            <[u8; 16]>::from(md5::Md5::digest(b"original"))
        );
        assert_eq!(
            r.slice(4, 4).crc32c().unwrap(),
            crc32c::crc32c(b"inal"),
            "slices read the same open file"
        );
        // A file that changed size since the walk is refused.
        std::fs::remove_file(src.join("w.bin")).unwrap();
        std::fs::write(src.join("w.bin"), b"longer now").unwrap();
        let e = open_range(&root, &RelPath::new("w.bin").unwrap(), 8).unwrap_err();
        assert!(
            e.message().contains("changed during the upload"),
            "{}",
            e.message()
        );
    }
}
