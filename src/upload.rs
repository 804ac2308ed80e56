//! The upload direction, for parity with KubeAI's loader (`load SRC_DIR DEST_URL`): every file
//! of a local directory to `s3://`, `oss://` or `gs://`, with checksums the server verifies
//! (Content-MD5 per request on S3/OSS; CRC32C compared with what GCS stored). Large files go
//! in parts (S3 multipart, GCS resumable) streamed from disk, so memory stays flat.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::cli::Config;
use crate::error::{Error, Kind, Result};
use crate::progress::{PlanSummary, Reporter, Summary};
use crate::source::{self, AnySource, Source};
use crate::transfer::retry::retrying;
use crate::url::{RelPath, SourceUrl, STATE_DIR};

/// Bytes `[offset, offset + len)` of a local file, streamed as a request body.
#[derive(Debug, Clone)]
pub struct FileRange {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl FileRange {
    /// A body that reads the range in 256 KiB blocks as the request goes out.
    pub fn into_body(self) -> reqwest::Body {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                return reqwest::Body::wrap_stream(futures_util::stream::once(async move {
                    Err::<Bytes, _>(e)
                }))
            }
        };
        let stream = futures_util::stream::unfold(
            (file, self.offset, self.len),
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
        let f = std::fs::File::open(&self.path).map_err(|e| Error::local("read", &self.path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = self.offset;
        let end = self.offset + self.len;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], off)
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
}

/// Every regular file under `root` (the loader's state folder excluded), as safe relative paths.
fn walk(root: &Path, reporter: &dyn Reporter) -> Result<Vec<(RelPath, PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::local("read the folder", &dir, e))?;
        for e in rd {
            let e = e.map_err(|e| Error::local("read the folder", &dir, e))?;
            let p = e.path();
            let ft = e.file_type().map_err(|err| Error::local("stat", &p, err))?;
            let rel = p.strip_prefix(root).unwrap_or(&p);
            let Some(rel) = rel.to_str() else {
                return Err(Error::usage(format!(
                    "{} is not valid UTF-8: object names must be",
                    p.display()
                )));
            };
            if rel == STATE_DIR {
                continue;
            }
            if ft.is_symlink() {
                reporter.warn(&format!("skipping the symlink {}", p.display()));
            } else if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let len = e
                    .metadata()
                    .map_err(|err| Error::local("stat", &p, err))?
                    .len();
                out.push((RelPath::new(rel)?, p, len));
            }
        }
    }
    out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
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
    if !cfg.dest.is_dir() {
        return Err(Error::new(
            Kind::Local,
            format!("{} is not a directory to upload", cfg.dest.display()),
        ));
    }
    let files: Vec<_> = walk(&cfg.dest, reporter.as_ref())?
        .into_iter()
        .filter(|(rel, _, _)| cfg.filter.matches(rel.as_str()))
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
    if cfg.dry_run {
        return dry_run(&target, cfg, reporter.as_ref(), &files).await;
    }
    let total: u64 = files.iter().map(|f| f.2).sum();
    reporter.plan(&PlanSummary {
        files: files.len(),
        bytes: total,
        ..Default::default()
    });

    let cfg = Arc::new(cfg.clone());
    let results =
        futures_util::stream::iter(files.into_iter().enumerate().map(|(id, (rel, path, len))| {
            let (target, reporter, cfg) =
                (Arc::clone(&target), Arc::clone(&reporter), Arc::clone(&cfg));
            async move {
                reporter.file_started(id, rel.as_str(), len);
                upload_file(&target, &cfg, reporter.as_ref(), &rel, path, len).await?;
                reporter.bytes(id, len);
                reporter.file_done(id, rel.as_str());
                Ok::<u64, Error>(len)
            }
        }))
        .buffer_unordered(cfg.concurrency.unwrap_or(8).clamp(1, 8))
        .collect::<Vec<_>>()
        .await;
    let mut summary = Summary::default();
    for r in results {
        summary.bytes_fetched += r?;
        summary.files_fetched += 1;
    }
    summary.elapsed = started.elapsed();
    reporter.finish(&summary);
    Ok(summary)
}

/// Lists what an upload would send and which existing objects it would overwrite; writes
/// nothing.
async fn dry_run(
    target: &AnySource,
    cfg: &Config,
    reporter: &dyn Reporter,
    files: &[(RelPath, PathBuf, u64)],
) -> Result<Summary> {
    use std::io::Write;
    let existing: std::collections::HashMap<String, u64> =
        match retrying(&cfg.retry, reporter, "listing the destination", || {
            target.list()
        })
        .await
        {
            Ok(l) => l.files.into_iter().map(|f| (f.path, f.size)).collect(),
            Err(e) if e.kind() == Kind::NotFound => Default::default(),
            Err(e) => return Err(e),
        };
    let mut out = std::io::stdout().lock();
    let (mut total, mut overwrites) = (0u64, 0usize);
    for (rel, _, len) in files {
        total += len;
        let note = match existing.get(rel.as_str()) {
            Some(size) => {
                overwrites += 1;
                format!("  (overwrites an object of {size} bytes)")
            }
            None => String::new(),
        };
        let _ = writeln!(out, "{len:>14}  {rel}{note}");
    }
    let _ = writeln!(
        out,
        "dry run: would upload {} files, {total} bytes ({}) to {}, overwriting {overwrites}; nothing was sent",
        files.len(),
        crate::progress::human(total),
        cfg.source
    );
    Ok(Summary::default())
}

async fn upload_file(
    target: &AnySource,
    cfg: &Config,
    reporter: &dyn Reporter,
    rel: &RelPath,
    path: PathBuf,
    len: u64,
) -> Result<()> {
    let whole = FileRange {
        path: path.clone(),
        offset: 0,
        len,
    };
    let what = format!("upload {rel}");
    match target {
        AnySource::S3(s3) | AnySource::Oss(s3) => {
            let key = s3.key_for(rel.as_str());
            // S3 allows 10,000 parts: grow the part size for very large files.
            let part = cfg.chunk_size.max(len.div_ceil(10_000)).max(5 << 20);
            if len <= part {
                let md5 = blocking(move || whole.md5()).await?;
                let body = FileRange {
                    path,
                    offset: 0,
                    len,
                };
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
                    let piece = FileRange {
                        path: path.clone(),
                        offset,
                        len: part.min(len - offset),
                    };
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
