//! The transfer engine, written once for every source: one global pool of (file, byte range)
//! requests over all files, largest files first; each chunk streamed into its part file with
//! positional writes through one reused buffer per worker (memory = concurrency × buffer,
//! whatever the model size); retries with backoff that resume inside the chunk; a file is
//! verified, synced and renamed as soon as its last chunk lands.

pub mod lock;
pub mod plan;
pub mod retry;
pub mod state;
pub mod verify;
pub mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use crate::error::{Error, Kind, Result, Retry};
use crate::progress::Reporter;
use crate::source::{AnySource, ByteRange, Source};
use plan::FilePlan;
use retry::RetryPolicy;
use state::StateDir;
use writer::PartFile;

#[derive(Debug, Clone, Copy)]
pub struct ExecOptions {
    /// Requests in flight at once, over all files.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Bytes gathered before one positional write.
    pub buffer_size: usize,
    /// Sync data before journal records and renames (see `--fsync`).
    pub fsync: bool,
}

/// What `execute` did.
#[derive(Debug, Default)]
pub struct Executed {
    pub files: usize,
    pub bytes: u64,
    pub retries: u64,
    /// What each fetched file was really verified against (`None`: size only), for the
    /// manifest — not always the listed checksum (an SSE-KMS ETag is no MD5; OSS gives a
    /// CRC-64 only in replies).
    pub verified: std::collections::HashMap<crate::url::RelPath, Option<crate::source::Checksum>>,
}

struct FileJob {
    id: usize,
    plan: FilePlan,
    part_path: PathBuf,
    final_path: PathBuf,
    remaining: AtomicUsize,
    /// Cleared when a reply shows the listed checksum does not describe the bytes.
    checksum_applies: AtomicBool,
    /// A whole-object checksum from the first reply, for files the listing gave none.
    object_checksum: Mutex<Option<crate::source::Checksum>>,
    /// Opened at the first chunk and closed after the rename, so open files stay bounded by
    /// the concurrency, not the file count.
    part: Mutex<Option<Arc<PartFile>>>,
    /// For a file fetched whole in one request: its hash, computed as the bytes stream in, so
    /// verifying it costs no second read.
    inline: Mutex<Option<verify::Hasher>>,
    hashes_inline: bool,
}

struct Ctx {
    source: Arc<AnySource>,
    state: Arc<StateDir>,
    reporter: Arc<dyn Reporter>,
    opts: ExecOptions,
    files: Vec<FileJob>,
    jobs: Vec<(usize, ByteRange)>,
    next: AtomicUsize,
    abort: AtomicBool,
    first_error: Mutex<Option<Error>>,
    verified:
        Mutex<std::collections::HashMap<crate::url::RelPath, Option<crate::source::Checksum>>>,
    bytes: AtomicU64,
    retries: AtomicU64,
    files_done: AtomicUsize,
    /// The source URL, to name files in messages.
    shown: String,
}

impl Ctx {
    fn fail(&self, e: Error) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    fn shown(&self, job: &FileJob) -> String {
        format!("{} (from {})", job.plan.path, self.shown)
    }

    fn part(&self, job: &FileJob) -> Result<Arc<PartFile>> {
        let mut guard = job.part.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = guard.as_ref() {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new(PartFile::open(
            &job.part_path,
            job.plan.file.size,
            job.plan.resume,
            job.plan.path.as_str(),
        )?);
        self.reporter
            .file_started(job.id, job.plan.path.as_str(), job.plan.file.size);
        *guard = Some(Arc::clone(&p));
        Ok(p)
    }
}

/// Fetches every planned file into DEST. On the first error that retries cannot fix, stops
/// issuing requests and returns it; everything made durable so far stays for a resume.
pub async fn execute(
    source: Arc<AnySource>,
    state: Arc<StateDir>,
    reporter: Arc<dyn Reporter>,
    plans: Vec<FilePlan>,
    opts: ExecOptions,
    shown: String,
) -> Result<Executed> {
    let mut jobs = Vec::new();
    let files: Vec<FileJob> = plans
        .into_iter()
        .enumerate()
        .map(|(id, plan)| {
            jobs.extend(plan.chunks.iter().map(|r| (id, *r)));
            let whole = [ByteRange {
                start: 0,
                end: plan.file.size,
            }];
            let inline = match &plan.file.checksum {
                Some(c) if plan.chunks == whole => {
                    Some(verify::Hasher::for_checksum(c, plan.file.size))
                }
                _ => None,
            };
            FileJob {
                hashes_inline: inline.is_some(),
                inline: Mutex::new(inline),
                id,
                part_path: state.part_path(&plan.path),
                final_path: state.final_path(&plan.path),
                remaining: AtomicUsize::new(plan.chunks.len()),
                checksum_applies: AtomicBool::new(true),
                object_checksum: Mutex::new(None),
                part: Mutex::new(None),
                plan,
            }
        })
        .collect();
    let ctx = Arc::new(Ctx {
        source,
        state,
        reporter,
        opts,
        files,
        jobs,
        next: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        first_error: Mutex::new(None),
        verified: Mutex::new(std::collections::HashMap::new()),
        bytes: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        files_done: AtomicUsize::new(0),
        shown,
    });

    // Zero-byte files and files whose every range an earlier run already fetched.
    for job in ctx.files.iter().filter(|j| j.plan.chunks.is_empty()) {
        finalize(&ctx, job).await?;
    }

    let workers = opts.concurrency.clamp(1, ctx.jobs.len().max(1));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let ctx = Arc::clone(&ctx);
        set.spawn(async move {
            if let Err(e) = worker(&ctx).await {
                ctx.fail(e);
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined {
            ctx.fail(
                Error::new(Kind::Network, "a transfer task failed unexpectedly").with_source(e),
            );
        }
    }
    if let Some(e) = ctx
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(e);
    }
    let verified = std::mem::take(&mut *ctx.verified.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Executed {
        files: ctx.files_done.load(Ordering::Relaxed),
        bytes: ctx.bytes.load(Ordering::Relaxed),
        retries: ctx.retries.load(Ordering::Relaxed),
        verified,
    })
}

async fn worker(ctx: &Ctx) -> Result<()> {
    let mut buf = writer::AlignedBuf::new(ctx.opts.buffer_size);
    while !ctx.abort.load(Ordering::Relaxed) {
        let i = ctx.next.fetch_add(1, Ordering::Relaxed);
        let Some(&(fi, range)) = ctx.jobs.get(i) else {
            break;
        };
        let job = &ctx.files[fi];
        let part = ctx.part(job)?;
        if !fetch_chunk(ctx, job, &part, range, &mut buf).await? {
            break;
        }
        // A file fetched in one request needs no range record: it is renamed right away.
        if job.plan.chunks.len() > 1 {
            // The record must never claim bytes a power loss could take back (with
            // `--fsync false` the user accepted that risk; a crash or kill keeps the page cache).
            if ctx.opts.fsync {
                let p = Arc::clone(&part);
                tokio::task::block_in_place(|| p.sync_data())?;
            }
            ctx.state
                .record_range(&job.plan.path, &job.plan.file, range)?;
        }
        drop(part);
        if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            finalize(ctx, job).await?;
        }
    }
    Ok(())
}

/// Streams `range` into the part file, retrying transient failures and resuming from the last
/// byte written. Returns false when the run is aborting.
async fn fetch_chunk(
    ctx: &Ctx,
    job: &FileJob,
    part: &PartFile,
    range: ByteRange,
    buf: &mut writer::AlignedBuf,
) -> Result<bool> {
    let cap = buf.capacity();
    let mut pos = range.start;
    let mut failures = 0u32;
    loop {
        let err = match ctx
            .source
            .fetch(
                &job.plan.file,
                ByteRange {
                    start: pos,
                    end: range.end,
                },
            )
            .await
        {
            Err(e) => e,
            Ok(fetched) => {
                if !fetched.checksum_applies {
                    job.checksum_applies.store(false, Ordering::Relaxed);
                }
                if let Some(c) = fetched.object_checksum {
                    job.object_checksum
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(c);
                }
                let mut body = fetched.body;
                let mut at = pos;
                buf.clear();
                let mut stream_err = None;
                while let Some(item) = body.next().await {
                    let bytes = match item {
                        Ok(b) => b,
                        Err(e) => {
                            stream_err = Some(e);
                            break;
                        }
                    };
                    if job.hashes_inline {
                        let mut h = job.inline.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(h) = h.as_mut() {
                            h.update(&bytes);
                        }
                    }
                    let mut data = &bytes[..];
                    while !data.is_empty() {
                        let took = buf.fill(data);
                        data = &data[took..];
                        if buf.len() == cap {
                            tokio::task::block_in_place(|| part.write_at(buf.as_slice(), at))?;
                            at += buf.len() as u64;
                            buf.clear();
                        }
                    }
                    ctx.reporter.bytes(job.id, bytes.len() as u64);
                    ctx.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    if ctx.abort.load(Ordering::Relaxed) {
                        break;
                    }
                }
                if !buf.is_empty() {
                    tokio::task::block_in_place(|| part.write_at(buf.as_slice(), at))?;
                    at += buf.len() as u64;
                    buf.clear();
                }
                if at > pos {
                    failures = 0;
                }
                pos = at;
                match stream_err {
                    None if pos == range.end => return Ok(true),
                    None => return Ok(false),
                    Some(e) => e,
                }
            }
        };
        if ctx.abort.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let Retry::After(server_wait) = err.retry() else {
            return Err(err);
        };
        failures += 1;
        if failures >= ctx.opts.retry.max_attempts {
            return Err(err.context(format!(
                "giving up on {} after {failures} attempts",
                ctx.shown(job)
            )));
        }
        let wait = ctx.opts.retry.wait(failures, server_wait, fastrand::f64());
        ctx.retries.fetch_add(1, Ordering::Relaxed);
        ctx.reporter
            .retry(job.plan.path.as_str(), failures, &err, wait);
        tokio::time::sleep(wait).await;
    }
}

/// Verifies (when the listing gave a checksum that applies), syncs and renames a finished file,
/// then records it in the journal.
async fn finalize(ctx: &Ctx, job: &FileJob) -> Result<()> {
    let part = match job.part.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(p) => p,
        None => Arc::new(PartFile::open(
            &job.part_path,
            job.plan.file.size,
            job.plan.resume,
            job.plan.path.as_str(),
        )?),
    };
    let checksum = job
        .plan
        .file
        .checksum
        .clone()
        .filter(|_| job.checksum_applies.load(Ordering::Relaxed))
        .or_else(|| {
            job.object_checksum
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
    let inline = job
        .inline
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .map(verify::Hasher::finish);
    let shown = ctx.shown(job);
    let final_path = job.final_path.clone();
    let size = job.plan.file.size;
    let fsync = ctx.opts.fsync;
    ctx.verified
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(job.plan.path.clone(), checksum.clone());
    tokio::task::spawn_blocking(move || {
        if let Some(want) = checksum {
            // The inline hash is of the listed kind; a reply's checksum may be another kind.
            let got = match inline.filter(|g| g.algorithm() == want.algorithm()) {
                Some(got) => Ok(got),
                None => verify::hash_file(part.path(), &want, size),
            };
            if let Err(e) = got.and_then(|got| verify::check(&got, &want, &shown)) {
                let _ = std::fs::remove_file(part.path());
                return Err(e);
            }
        }
        part.persist(&final_path, fsync)
    })
    .await
    .map_err(|e| Error::new(Kind::Local, "a file check task failed").with_source(e))??;
    ctx.state.record_file(&job.plan.path, &job.plan.file)?;
    ctx.files_done.fetch_add(1, Ordering::Relaxed);
    if job.plan.chunks.is_empty() {
        ctx.reporter
            .file_started(job.id, job.plan.path.as_str(), job.plan.file.size);
    }
    ctx.reporter.file_done(job.id, job.plan.path.as_str());
    Ok(())
}
