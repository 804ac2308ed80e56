//! The upload direction, for parity with KubeAI's loader (`load SRC_DIR DEST_URL`): every file
//! of a local directory to `s3://`, `oss://` or `gs://`, as a sync — files whose object already
//! holds the same bytes are not sent — with checksums the server verifies (Content-MD5 per
//! request on S3/OSS; CRC32C compared with what GCS stored). Large files go in parts streamed
//! from disk, so memory stays flat.

mod walk;

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;

use crate::cancel::Cancel;
use crate::cli::Config;
use crate::confine::Dir;
use crate::error::{Error, Kind, Result};
use crate::progress::{PlanSummary, Reporter, Summary};
use crate::remote::body::FileRange;
use crate::remote::{self, AnySource, Source};
use crate::retry::retrying;
use crate::url::{RelPath, SourceUrl};
use walk::{open_range, walk};

/// Destinations this tool does not write, with the tool that does.
fn refuse_unwritable(to: &SourceUrl) -> Result<()> {
    match to {
        SourceUrl::Hf(_) => Err(Error::usage(
            "uploading to hf:// is not supported: use `hf upload` (huggingface_hub), which handles Xet and commits",
        )),
        SourceUrl::Oci(o) if o.digest.is_some() => Err(Error::usage(
            "an upload names the tag it moves: write oci://REGISTRY/REPOSITORY:TAG, without @sha256:…",
        )),
        SourceUrl::Oci(_) | SourceUrl::Bucket { .. } => Ok(()),
    }
}

/// Uploads `cfg.dest` (a local directory) to `cfg.source` (a URL).
/// A stop request (`cancel`) starts no new file and aborts open multipart uploads.
pub async fn upload(cfg: &Config, reporter: Arc<dyn Reporter>, cancel: Cancel) -> Result<Summary> {
    let started = Instant::now();
    refuse_unwritable(&cfg.source)?;
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
    let opts = remote::Options {
        p2p: None,
        http: remote::http::ClientOptions {
            read_timeout: cfg.read_timeout,
            ..Default::default()
        },
        oss_internal: cfg.oss_internal,
        requester_pays: cfg.requester_pays.clone(),
        write: true,
    };
    let target = Arc::new(AnySource::open(&cfg.source, &opts, &reporter).await?);
    let classified = classify(&target, &root, cfg, reporter.as_ref(), files).await?;
    if cfg.dry_run {
        print_dry_run(cfg, &classified);
        return Ok(Summary::default());
    }
    let (send, same): (Vec<_>, Vec<_>) = classified
        .into_iter()
        .partition(|(_, _, at, _)| *at != AtDestination::Same);
    for (rel, len, _, listed) in &same {
        target.keep_file(rel, *len, listed.as_ref());
    }
    let total: u64 = send.iter().map(|f| f.1).sum();
    reporter.plan(&PlanSummary {
        upload: true,
        files: send.len(),
        bytes: total,
        skipped_files: same.len(),
        skipped_bytes: same.iter().map(|f| f.1).sum(),
        ..Default::default()
    });

    let results = send_all(&target, &root, cfg, &reporter, &cancel, send).await;
    let mut summary = Summary {
        upload: true,
        files_skipped: same.len(),
        ..Default::default()
    };
    for r in results {
        summary.bytes_fetched += r?;
        summary.files_fetched += 1;
    }
    if let Some(digest) = target.finish_upload(&cfg.retry, reporter.as_ref()).await? {
        reporter.info(&format!("pushed {} as {digest}", cfg.source));
    }
    summary.elapsed = started.elapsed();
    reporter.finish(&summary);
    Ok(summary)
}

/// Sends `files` (at most 8 at once); each result is the bytes sent or why not.
async fn send_all(
    target: &Arc<AnySource>,
    root: &Arc<Dir>,
    cfg: &Config,
    reporter: &Arc<dyn Reporter>,
    cancel: &Cancel,
    files: Vec<Classified>,
) -> Vec<Result<u64>> {
    let cfg = Arc::new(cfg.clone());
    futures_util::stream::iter(files.into_iter().enumerate().map(|(id, (rel, len, _, _))| {
        let (target, reporter, cfg, root, cancel) = (
            Arc::clone(target),
            Arc::clone(reporter),
            Arc::clone(&cfg),
            Arc::clone(root),
            cancel.clone(),
        );
        async move {
            if let Some(kind) = cancel.reason() {
                return Err(Error::new(kind, "stopped before this file was sent"));
            }
            reporter.file_started(id, rel.as_str(), len);
            let whole = open_range(&root, &rel, len)?;
            target
                .put_file(
                    &rel,
                    whole,
                    cfg.chunk_size,
                    &cfg.retry,
                    reporter.as_ref(),
                    &cancel,
                )
                .await?;
            reporter.bytes(id, len);
            reporter.file_done(id, rel.as_str());
            Ok::<u64, Error>(len)
        }
    }))
    .buffer_unordered(cfg.concurrency.unwrap_or(8).clamp(1, 8))
    .collect::<Vec<_>>()
    .await
}

/// A local file, what the destination holds at its name, and the checksum listed there.
type Classified = (RelPath, u64, AtDestination, Option<remote::Checksum>);

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
) -> Result<Vec<Classified>> {
    let listed = retrying(&cfg.retry, reporter, "listing the destination", || {
        target.list()
    })
    .await;
    let existing: std::collections::HashMap<String, remote::RemoteFile> = match listed {
        Ok(l) => l.files.into_iter().map(|f| (f.path.clone(), f)).collect(),
        Err(e) if e.kind() == Kind::NotFound => Default::default(),
        // A tag holding what this tool does not read as files (an image, tar layers): the
        // upload replaces it, comparing nothing.
        Err(e) if e.kind() == Kind::Usage && matches!(target, AnySource::Oci(_)) => {
            reporter.warn(&format!(
                "{}: what the tag holds now is replaced, none of it compared",
                e.message()
            ));
            Default::default()
        }
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
            let listed = remote.as_ref().and_then(|r| r.checksum.clone());
            let at = match remote {
                None => AtDestination::Nothing,
                Some(r) if r.size != len => AtDestination::Other(r.size),
                Some(_) if force => AtDestination::Other(len),
                Some(_) if len == 0 => AtDestination::Same,
                Some(r) => match r.checksum {
                    None => AtDestination::Other(len),
                    Some(want) => {
                        let whole = open_range(&root, &rel, len)?;
                        let same = blocking(move || matches(&whole, &want)).await?;
                        if same {
                            AtDestination::Same
                        } else {
                            AtDestination::Other(len)
                        }
                    }
                },
            };
            Ok::<_, Error>((rel, len, at, listed))
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
fn print_dry_run(cfg: &Config, files: &[Classified]) {
    use std::io::Write;
    let mut files: Vec<_> = files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = std::io::stdout().lock();
    let (mut total, mut overwrites, mut same) = (0u64, 0usize, 0usize);
    for (rel, len, at, _) in &files {
        let (len, at) = (*len, *at);
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

/// Whether the whole file hashes to `want` (any algorithm a listing gives).
fn matches(whole: &FileRange, want: &remote::Checksum) -> Result<bool> {
    let got = crate::checksum::hash_file(whole.file(), &whole.path, want, whole.len)?;
    Ok(&got == want)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(Kind::Local, "a checksum task failed").with_source(e))?
}
