//! The transfer engine, written once for every source: one global pool of (file, byte range)
//! requests over all files, largest files first; each chunk streamed into its part file with
//! positional writes from one reused buffer per worker, or for buffered writes from the
//! received pieces themselves, up to 512 KiB a stream (memory = concurrency × that, whatever
//! the model size); retries with backoff that resume inside the chunk; a file is
//! verified, synced and renamed as soon as its last chunk lands.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::inorder;
use super::manifest::Checked;
use super::plan::{self, FilePlan};
use super::ramp;
use super::reread::Verdict;
use super::state::StateDir;
use super::writer::{self, PartFile};
use crate::cancel::Cancel;
use crate::checksum as verify;
use crate::error::{Error, Kind, Result, Retry};
use crate::progress::Reporter;
use crate::remote::{AnySource, ByteRange, Source};
use crate::retry::RetryPolicy;

/// A stream records its progress inside a chunk at least this often (in bytes written and
/// synced), so a kill loses at most this much per request in flight.
pub const RECORD_EVERY_BYTES: u64 = 8 << 20;
/// … and at least this often in time, for slow streams.
pub const RECORD_EVERY: Duration = Duration::from_secs(2);
/// With direct writes, chunk ends are synced (their records survive a power loss) at least
/// this far apart: short chunks (files hashed in order) would otherwise pay a device flush every
/// few MiB. Buffered writes are made durable by the file's fsync (see `checkpoint`).
pub const DURABLE_EVERY: u64 = 64 << 20;

#[derive(Debug, Clone, Copy)]
pub struct ExecOptions {
    /// Requests in flight at once, over all files.
    pub concurrency: usize,
    /// Start with fewer streams and open more only while they raise the throughput (see
    /// [`ramp`]): the default for large files; many small files, and a `--concurrency`
    /// given, keep every stream from the start.
    pub adaptive: bool,
    pub retry: RetryPolicy,
    /// Bytes gathered before one positional write.
    pub buffer_size: usize,
    /// Sync data before journal records and renames (see `--fsync`).
    pub fsync: bool,
}

/// Who a transfer works with: the same for every attempt of one run.
pub struct Parties {
    pub source: Arc<AnySource>,
    pub state: Arc<StateDir>,
    pub reporter: Arc<dyn Reporter>,
    pub cancel: Cancel,
    /// The source URL, to name files in messages.
    pub shown: String,
    /// Checksum mismatches seen by earlier passes, and what they taught (see `reread`).
    pub rereads: Arc<super::reread::Rereads>,
}

/// What `execute` did.
#[derive(Debug, Default)]
pub struct Executed {
    pub files: usize,
    pub bytes: u64,
    pub retries: u64,
    /// What each fetched file was really checked against, for the manifest — not always the
    /// listed checksum (an SSE-KMS ETag is no MD5; OSS gives a CRC-64 only in replies; a
    /// server's multipart ETags may mean something else).
    pub verified: std::collections::HashMap<crate::url::RelPath, Checked>,
    /// Where the bytes of files hashed in order came from (logged: how much was read back).
    pub in_order: inorder::Stats,
}

struct FileJob {
    id: usize,
    plan: FilePlan,
    /// Chunks not finished yet; the last one to finish finalizes the file.
    remaining: AtomicU64,
    /// Record progress in the journal (everything but a small file fetched in one request,
    /// which is renamed as soon as it lands).
    records: bool,
    /// Cleared when a reply shows the listed checksum does not describe the bytes.
    checksum_applies: AtomicBool,
    /// A whole-object checksum from the first reply, for files the listing gave none.
    object_checksum: Mutex<Option<crate::remote::Checksum>>,
    /// Opened at the first chunk and closed after the rename, so open files stay bounded by
    /// the concurrency, not the file count.
    part: Mutex<Option<Arc<PartFile>>>,
    /// For a file fetched whole in one request: its hash, computed as the bytes stream in, so
    /// verifying it costs no second read.
    inline: Mutex<Option<verify::Hasher>>,
    hashes_inline: bool,
    /// For a file fetched in several ranges with a CRC checksum: each finished range's CRC,
    /// computed as it streamed in, so the file's CRC is combined without reading it back.
    crc: Option<crc_fast::CrcAlgorithm>,
    range_crcs: Mutex<Vec<(ByteRange, u64)>>,
    /// Likewise for a checksum over parts (multipart ETag, composite): each part's checksum, by
    /// part index, computed by whichever stream fetched it — in parallel, with no read-back.
    hashes_parts: bool,
    part_digests: Mutex<std::collections::HashMap<u32, Vec<u8>>>,
    /// For a file fetched in several ranges whose checksum needs the bytes in order (SHA-256,
    /// a single-part MD5): the hash that follows the download's frontier.
    in_order: Option<Arc<inorder::InOrder>>,
    /// Taken around each buffered write: the kernel serializes a file's buffered writes on its
    /// inode lock anyway, and waiters there spin on it (ext4 `rwsem_spin_on_owner`, 17% of the
    /// load's samples with 16 writers on one file under `perf`); waiting here parks the task
    /// and frees the thread for the sockets instead. 2 × 1 GiB from s3s-fs, page cache full,
    /// four alternating pairs: system time 2.52–2.79 s against 3.00–3.18 without, wall level.
    write_gate: tokio::sync::Mutex<()>,
}

impl FileJob {
    /// What was hashed of the file as it streamed in, to check it against `want`.
    fn take_hashed(&self, want: Option<&crate::remote::Checksum>) -> Hashed {
        let listed = self.plan.file.checksum.as_ref().map(|c| c.algorithm());
        Hashed {
            inline: take(&self.inline).map(verify::Hasher::finish),
            crc_algo: self.crc,
            range_crcs: take(&self.range_crcs),
            // The parts hashed are the listed checksum's; a reply's may be another kind.
            by_parts: self.hashes_parts && want.map(|w| w.algorithm()) == listed,
            part_digests: take(&self.part_digests),
            in_order: self.in_order.clone(),
        }
    }

    /// A chunk ending at `end` gets a durable record (direct writes: synced first): at the
    /// file's end, and once per [`DURABLE_EVERY`] (every chunk when chunks are at least that
    /// long).
    fn durable_end(&self, end: u64) -> bool {
        let chunk = self.plan.chunk_size.max(1);
        end == self.plan.file.size || chunk >= DURABLE_EVERY || end % DURABLE_EVERY < chunk
    }
}

/// Where the next chunk comes from: file index, missing-range index, offset. Chunks are cut
/// one at a time, never listed in advance.
#[derive(Default)]
struct Cursor {
    file: usize,
    range: usize,
    pos: Option<u64>,
}

struct Ctx {
    source: Arc<AnySource>,
    state: Arc<StateDir>,
    reporter: Arc<dyn Reporter>,
    opts: ExecOptions,
    files: Vec<FileJob>,
    cursor: Mutex<Cursor>,
    abort: AtomicBool,
    cancel: Cancel,
    first_error: Mutex<Option<Error>>,
    verified: Mutex<std::collections::HashMap<crate::url::RelPath, Checked>>,
    rereads: Arc<super::reread::Rereads>,
    bytes: AtomicU64,
    retries: AtomicU64,
    files_done: AtomicU64,
    /// The source URL, to name files in messages.
    shown: String,
    /// Where the bytes of files hashed in order came from.
    in_order: Mutex<inorder::Stats>,
    /// Memory for bytes that arrive ahead of an in-order hash, shared by every file.
    budget: Arc<inorder::Budget>,
    /// Requests in flight, fewer while the server asks to slow down.
    throttle: crate::retry::Throttle,
    /// Streams taking chunks (all of them unless the run ramps, see [`ramp`]).
    streams: ramp::Gate,
    /// Chunks handed to a stream so far.
    handed: AtomicU64,
    /// Streams with a request or body under way: from the request to the end of its body, not
    /// while finishing a file or waiting out a backoff.
    fetching: AtomicUsize,
    /// Of those, streams waiting for room ahead of an in-order hash: they move no bytes, the
    /// host's hashing is the limit, not their link.
    waiting: AtomicUsize,
}

impl Ctx {
    fn fail(&self, e: Error) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
        self.abort.store(true, Ordering::SeqCst);
        // Streams waiting for in-order hashing room, and requests waiting out a pushback,
        // must see the stop.
        self.budget.freed.notify_waiters();
        self.throttle.close();
        self.streams.open_all();
    }

    fn stopping(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || self.cancel.reason().is_some()
    }

    fn shown(&self, job: &FileJob) -> String {
        format!("{} (from {})", job.plan.path, self.shown)
    }

    /// The next chunk to fetch, over all files in plan order.
    fn next_chunk(&self) -> Option<(usize, ByteRange)> {
        let mut c = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let job = self.files.get(c.file)?;
            let Some(r) = job.plan.missing.get(c.range) else {
                *c = Cursor {
                    file: c.file + 1,
                    ..Cursor::default()
                };
                continue;
            };
            let start = c.pos.unwrap_or(r.start);
            let Some(chunk) = job.plan.first_chunk(ByteRange { start, end: r.end }) else {
                c.range += 1;
                c.pos = None;
                continue;
            };
            c.pos = Some(chunk.end);
            self.handed.fetch_add(1, Ordering::Relaxed);
            return Some((c.file, chunk));
        }
    }

    fn part(&self, job: &FileJob) -> Result<Arc<PartFile>> {
        let mut guard = job.part.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = guard.as_ref() {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new(self.state.open_part(
            &job.plan.path,
            job.plan.file.size,
            job.plan.resume,
        )?);
        if let (Some(io), Some(c)) = (&job.in_order, &job.plan.file.checksum) {
            let hasher = verify::Hasher::for_checksum(c, job.plan.file.size);
            let part = Arc::clone(&p);
            io.start(hasher, Box::new(move |r, f| part.read_range(r, f)))?;
        }
        self.reporter
            .file_started(job.id, job.plan.path.as_str(), job.plan.file.size);
        *guard = Some(Arc::clone(&p));
        Ok(p)
    }

    /// Records `[from, to)` of the part file so a rerun keeps it. `durable` with direct writes:
    /// synced first and trusted after a power loss too (at chunk ends); otherwise trusted only
    /// on this boot, which costs no sync (the in-chunk records every few MiB, and every record
    /// of a buffered write).
    fn checkpoint(
        &self,
        job: &FileJob,
        part: &PartFile,
        range: ByteRange,
        durable: bool,
    ) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        // With `--fsync false` nothing is synced, so nothing may claim to survive a power loss.
        // Buffered writes are not synced per chunk: an fdatasync there writes back every dirty
        // page of the file, the other chunks' too, and stalls this request for it. Their chunk
        // ends start the write-back instead, are trusted on this boot only, and the file's
        // fsync before its rename makes them durable (a power loss mid-file refetches it).
        if durable && self.opts.fsync && part.is_direct() {
            tokio::task::block_in_place(|| part.sync_data())?;
            self.state
                .record_range(&job.plan.path, &job.plan.file, range)
        } else {
            if self.opts.fsync && !part.is_direct() {
                // Every recorded range (8 MiB of a stream), not only chunk ends: with 16 streams
                // of 64 MiB, chunk ends come together near the end of the load, the device gets
                // a burst and the fsync waits for it (ARCHITECTURE.md, "Choices that were
                // measured"). Submitting it can wait for the device's queue.
                tokio::task::block_in_place(|| part.start_writeback(range));
            }
            self.state
                .record_written(&job.plan.path, &job.plan.file, range)
        }
    }
}

/// Fetches every planned file into DEST, adding what was done to `out` (also when it fails).
/// On the first error that retries cannot fix, or a stop request, stops issuing requests, joins
/// every worker and returns the error; everything made durable so far stays for a resume.
pub async fn execute(
    with: &Parties,
    plans: Vec<FilePlan>,
    opts: ExecOptions,
    out: &mut Executed,
) -> Result<()> {
    let chunks_total: u64 = plans.iter().map(FilePlan::chunk_count).sum();
    let budget = inorder::Budget::new(inorder::hold_limit(opts.concurrency));
    let files: Vec<FileJob> = plans
        .into_iter()
        .enumerate()
        .map(|(id, plan)| FileJob::new(id, plan, &budget))
        .collect();
    let opts = ExecOptions {
        buffer_size: if files.iter().any(|j| j.in_order.is_some()) {
            opts.buffer_size.max(inorder::WRITE_BUFFER)
        } else {
            opts.buffer_size
        },
        ..opts
    };
    let ctx = Arc::new(Ctx {
        source: Arc::clone(&with.source),
        state: Arc::clone(&with.state),
        reporter: Arc::clone(&with.reporter),
        opts,
        files,
        cursor: Mutex::new(Cursor::default()),
        abort: AtomicBool::new(false),
        cancel: with.cancel.clone(),
        first_error: Mutex::new(None),
        verified: Mutex::new(std::collections::HashMap::new()),
        rereads: Arc::clone(&with.rereads),
        bytes: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        files_done: AtomicU64::new(0),
        shown: with.shown.clone(),
        in_order: Mutex::new(inorder::Stats::default()),
        budget,
        throttle: crate::retry::Throttle::new(opts.concurrency, opts.retry),
        streams: ramp::Gate::new(usize::MAX),
        handed: AtomicU64::new(0),
        fetching: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
    });

    // Zero-byte files and files whose every range an earlier run already fetched.
    for job in ctx.files.iter().filter(|j| j.plan.chunk_count() == 0) {
        if let Err(e) = finalize(&ctx, job).await {
            ctx.fail(e);
            break;
        }
    }

    run_workers(&ctx, chunks_total).await;
    collect(&ctx, out)
}

/// The workers, each taking chunks until none are left or the run stops; joined.
async fn run_workers(ctx: &Arc<Ctx>, chunks_total: u64) {
    let workers = if ctx.stopping() {
        0
    } else {
        (ctx.opts.concurrency.max(1) as u64).min(chunks_total.max(1)) as usize
    };
    let ramping = (ctx.opts.adaptive && workers > 0).then(|| {
        let ramp = ramp::Ramp::new(workers);
        allow(ctx, ramp.initial());
        tokio::spawn(ramp_streams(Arc::clone(ctx), ramp, chunks_total))
    });
    let mut set = tokio::task::JoinSet::new();
    for index in 0..workers {
        let ctx = Arc::clone(ctx);
        set.spawn(async move {
            if let Err(e) = worker(&ctx, index).await {
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
    if let Some(task) = ramping {
        task.abort();
    }
}

/// `streams` may take chunks, and hold as much ahead of in-order hashes as that many need.
fn allow(ctx: &Ctx, streams: usize) {
    ctx.budget.set_limit(inorder::hold_limit(streams));
    ctx.streams.set(streams);
}

/// Feeds the run's throughput to `ramp` every tick and applies its decisions, until it has
/// nothing more to decide or the run ends (the task is then aborted).
async fn ramp_streams(ctx: Arc<Ctx>, mut ramp: ramp::Ramp, chunks_total: u64) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(ramp::TICK);
    // A late tick is taken late, not caught up in a burst of samples at one instant.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !ramp.done() && !ctx.stopping() {
        tick.tick().await;
        if ctx.stopping() {
            return;
        }
        let seen = ramp::Tick {
            now: start.elapsed(),
            bytes: ctx.bytes.load(Ordering::Relaxed),
            fetching: ctx
                .fetching
                .load(Ordering::Relaxed)
                .saturating_sub(ctx.waiting.load(Ordering::Relaxed)),
            chunks_left: chunks_total.saturating_sub(ctx.handed.load(Ordering::Relaxed)),
        };
        if let Some(change) = ramp.observe(seen) {
            allow(&ctx, change.streams);
            if let Some(why) = change.why {
                ctx.reporter.info(&why);
            }
        }
    }
}

/// What the run did, into `out` (also when it failed), and its outcome: a stop, the first
/// error, or success.
fn collect(ctx: &Ctx, out: &mut Executed) -> Result<()> {
    // Hashing threads of files this run will not finish.
    for io in ctx.files.iter().filter_map(|j| j.in_order.as_ref()) {
        io.close();
    }
    out.files += ctx.files_done.load(Ordering::Relaxed) as usize;
    out.bytes += ctx.bytes.load(Ordering::Relaxed);
    out.retries += ctx.retries.load(Ordering::Relaxed);
    out.in_order
        .add(*ctx.in_order.lock().unwrap_or_else(|p| p.into_inner()));
    out.verified.extend(std::mem::take(
        &mut *ctx.verified.lock().unwrap_or_else(|p| p.into_inner()),
    ));
    if let Some(kind) = ctx.cancel.reason() {
        return Err(Error::new(kind, stopped_message(ctx)));
    }
    let first = ctx
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    first.map_or(Ok(()), Err)
}

impl FileJob {
    /// What the file is checked against: the listing's checksum, or the origin's reply's where
    /// the listing had none, unless the run found it does not apply (`types::authority`).
    fn checked_against(&self) -> Option<crate::remote::types::Checksum> {
        let from_reply = self
            .object_checksum
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let applies = self.checksum_applies.load(Ordering::Relaxed);
        crate::remote::types::authority(self.plan.file.checksum.clone(), from_reply, applies)
    }

    /// A planned file with the ways it will be verified: inline (one request), per-range
    /// CRCs combined, part digests, or in order through `budget`.
    fn new(id: usize, plan: FilePlan, budget: &Arc<inorder::Budget>) -> FileJob {
        let single = plan.is_single_request();
        let inline = match &plan.file.checksum {
            Some(c) if single => Some(verify::Hasher::for_checksum(c, plan.file.size)),
            _ => None,
        };
        let crc = match &plan.file.checksum {
            Some(c) if !single => verify::crc_algorithm(c),
            _ => None,
        };
        let hashes_parts = !single
            && plan
                .file
                .checksum
                .as_ref()
                .and_then(verify::part_layout)
                .is_some();
        let in_order = match &plan.file.checksum {
            Some(c) if !single && verify::needs_in_order(c) => {
                let size = plan.file.size;
                let present = plan::missing_ranges(size, &plan.missing);
                Some(Arc::new(inorder::InOrder::new(
                    size,
                    &present,
                    Arc::clone(budget),
                )))
            }
            _ => None,
        };
        FileJob {
            in_order,
            write_gate: tokio::sync::Mutex::new(()),
            crc,
            range_crcs: Mutex::new(Vec::new()),
            hashes_parts,
            part_digests: Mutex::new(Default::default()),
            hashes_inline: inline.is_some(),
            inline: Mutex::new(inline),
            id,
            remaining: AtomicU64::new(plan.chunk_count()),
            records: !single || plan.resume || plan.file.size > RECORD_EVERY_BYTES,
            checksum_applies: AtomicBool::new(true),
            object_checksum: Mutex::new(None),
            part: Mutex::new(None),
            plan,
        }
    }
}

/// One line on a stop: what is kept, and that a rerun resumes.
fn stopped_message(ctx: &Ctx) -> String {
    let done = ctx.files_done.load(Ordering::Relaxed);
    format!(
        "stopped: {done} of {} files complete and {} fetched this run are kept; a rerun resumes from there",
        ctx.files.len(),
        crate::progress::human(ctx.bytes.load(Ordering::Relaxed)),
    )
}

/// Worker `index` of the run: takes chunks while the streams allowed include it.
async fn worker(ctx: &Ctx, index: usize) -> Result<()> {
    let mut buf = writer::Staging::new(ctx.opts.buffer_size);
    while !ctx.stopping() {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break,
            _ = ctx.streams.admit(index) => {}
        }
        if ctx.stopping() {
            break;
        }
        let Some((fi, range)) = ctx.next_chunk() else {
            // Parked workers wake to find nothing left, and end.
            ctx.streams.open_all();
            break;
        };
        let job = &ctx.files[fi];
        let part = ctx.part(job)?;
        if !fetch_chunk(ctx, job, &part, range, &mut buf).await? {
            break;
        }
        drop(part);
        if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            finalize(ctx, job).await?;
        }
    }
    Ok(())
}

/// Writes the first `n` staged bytes at `at` (after checking the lease is still ours); returns
/// the new offset.
async fn flush(
    ctx: &Ctx,
    job: &FileJob,
    part: &PartFile,
    buf: &mut writer::Staging,
    at: u64,
    n: usize,
) -> Result<u64> {
    if n == 0 {
        return Ok(at);
    }
    // Direct writes to a reserved file share the inode lock: no gate for them.
    let _gate = if part.is_direct() {
        None
    } else {
        Some(job.write_gate.lock().await)
    };
    // After the wait: the lease must still be ours when the bytes are written.
    ctx.state.owned_recently()?;
    tokio::task::block_in_place(|| buf.write(part, at, n))?;
    Ok(at + n as u64)
}

/// One chunk's progress, kept across retries (a retry resumes at the first byte not written).
struct ChunkProgress {
    range: ByteRange,
    /// First byte not yet written.
    pos: u64,
    /// First byte not yet in the journal.
    recorded: u64,
    last_record: Instant,
    /// The chunk's CRC and part checksums, computed as the bytes stream past.
    crc: Option<crc_fast::Digest>,
    parts: Option<verify::InlineParts>,
}

impl ChunkProgress {
    fn new(job: &FileJob, range: ByteRange) -> Self {
        ChunkProgress {
            range,
            pos: range.start,
            recorded: range.start,
            last_record: Instant::now(),
            crc: job.crc.map(crc_fast::Digest::new),
            parts: match &job.plan.file.checksum {
                Some(c) if job.hashes_parts => verify::InlineParts::new(c, range),
                _ => None,
            },
        }
    }

    fn hash(&mut self, job: &FileJob, bytes: &[u8]) {
        if job.hashes_inline {
            let mut h = job.inline.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = h.as_mut() {
                h.update(bytes);
            }
        }
        if let Some(d) = self.crc.as_mut() {
            d.update(bytes);
        }
        if let Some(p) = self.parts.as_mut() {
            p.update(bytes);
        }
    }

    /// The chunk is complete: hand its CRC and part checksums to the file.
    fn complete(self, job: &FileJob) {
        if let Some(d) = self.crc {
            job.range_crcs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((self.range, d.finalize()));
        }
        if let Some(p) = self.parts {
            job.part_digests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(p.finish(self.range.end, job.plan.file.size));
        }
    }
}

/// How one reply's body ended.
struct BodyEnd {
    error: Option<Error>,
    stopped: bool,
}

/// Counts a stream in `Ctx::fetching` or `Ctx::waiting` (for the ramp's rate per stream) while
/// it lives.
struct Counting<'a>(&'a AtomicUsize);

impl<'a> Counting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Counting(count)
    }
}

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A chunk's request the server asked to slow down: the shared throttle holds every request
/// back and this one waits its turn there, until the patience runs out (the error).
fn throttled(
    ctx: &Ctx,
    job: &FileJob,
    err: Error,
    server_wait: Option<Duration>,
    pushed_back: &mut crate::retry::Patience,
) -> Result<()> {
    let patience = ctx.opts.retry.throttle_patience;
    if pushed_back.again(patience).is_none() {
        return Err(pushed_back.gave_up(err, &ctx.shown(job), patience));
    }
    if let Some(cut) = ctx.throttle.pushed_back(server_wait) {
        if cut.first {
            ctx.reporter.warn(&format!(
                "{}; the server asks to slow down: {} → {} requests in flight, backing off (waiting up to {} s for it to pass)",
                err.message(),
                cut.from,
                cut.to,
                patience.as_secs()
            ));
        }
        ctx.reporter
            .retry(job.plan.path.as_str(), pushed_back.count(), &err, cut.pause);
    }
    ctx.retries.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Streams `range` into the part file, retrying transient failures and resuming from the last
/// byte written, recording progress every [`RECORD_EVERY_BYTES`] or [`RECORD_EVERY`]. Returns
/// false when the run is stopping (what was written is recorded first).
async fn fetch_chunk(
    ctx: &Ctx,
    job: &FileJob,
    part: &PartFile,
    range: ByteRange,
    buf: &mut writer::Staging,
) -> Result<bool> {
    let mut c = ChunkProgress::new(job, range);
    let mut failures = 0u32;
    let mut pushed_back = crate::retry::Patience::default();
    loop {
        let slot = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Ok(false),
            s = ctx.throttle.enter() => s,
        };
        let Some(slot) = slot else {
            return Ok(false);
        };
        let fetching = Counting::new(&ctx.fetching);
        let want = ByteRange {
            start: c.pos,
            end: range.end,
        };
        // A member of an archive layer is copied from where it was unpacked.
        let fetch = async {
            match job.plan.file.staged.as_deref() {
                Some(name) => super::unpack::read_staged(&ctx.state, name, want),
                None => ctx.source.fetch(&job.plan.file, want).await,
            }
        };
        let reply = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Ok(false),
            r = fetch => r,
        };
        // The throttle paces how requests are asked, not how bodies are read: a body that waits
        // for in-order hashing must not hold a place the frontier's request needs.
        drop(slot);
        let err = match reply {
            Err(e) => e,
            Ok(fetched) => {
                ctx.throttle.succeeded();
                note_reply_checksums(job, &fetched);
                let before = c.pos;
                let end = stream_body(ctx, job, part, buf, fetched.body, &mut c).await?;
                if c.pos > before {
                    failures = 0;
                    pushed_back = crate::retry::Patience::default();
                }
                if c.pos == range.end {
                    c.complete(job);
                    return Ok(true);
                }
                if end.stopped || ctx.stopping() {
                    return Ok(false);
                }
                end.error.unwrap_or_else(|| {
                    Error::new(
                        Kind::Network,
                        format!(
                            "{}: the reply ended at byte {} of {range}",
                            ctx.shown(job),
                            c.pos
                        ),
                    )
                    .transient(None)
                })
            }
        };
        drop(fetching);
        if ctx.stopping() {
            return Ok(false);
        }
        let Retry::After(server_wait) = err.retry() else {
            return Err(err);
        };
        if err.condition() == Some(crate::error::Condition::Throttled) {
            throttled(ctx, job, err, server_wait, &mut pushed_back)?;
            continue;
        }
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
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Ok(false),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What a reply says about the checksum: an SSE-KMS ETag is no MD5; OSS sends a CRC-64.
fn note_reply_checksums(job: &FileJob, fetched: &crate::remote::Fetched) {
    if !fetched.checksum_applies {
        job.checksum_applies.store(false, Ordering::Relaxed);
    }
    if let Some(c) = &fetched.object_checksum {
        job.object_checksum
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(c.clone());
    }
}

/// Writes one reply's body at `c.pos` onwards (hashing it on the way), records progress, and
/// says how the body ended. `c.pos` is the first byte not written when it returns.
async fn stream_body(
    ctx: &Ctx,
    job: &FileJob,
    part: &PartFile,
    buf: &mut writer::Staging,
    mut body: crate::remote::ByteStream,
    c: &mut ChunkProgress,
) -> Result<BodyEnd> {
    let mut at = c.pos;
    buf.begin(part.is_direct());
    let mut end = BodyEnd {
        error: None,
        stopped: false,
    };
    loop {
        let item = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => None,
            i = body.next() => i,
        };
        let bytes = match item {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                end.error = Some(e);
                break;
            }
            None => break,
        };
        c.hash(job, &bytes);
        if !hand_in_order(ctx, job, at + buf.waiting() as u64, &bytes).await {
            end.stopped = true;
            break;
        }
        let received = bytes.len() as u64;
        let mut rest = bytes;
        loop {
            rest = buf.take(rest);
            while let Some(n) = buf.due(at) {
                at = flush(ctx, job, part, buf, at, n).await?;
            }
            if rest.is_empty() {
                break;
            }
        }
        ctx.reporter.bytes(job.id, received);
        ctx.bytes.fetch_add(received, Ordering::Relaxed);
        if job.records
            && (at - c.recorded >= RECORD_EVERY_BYTES || c.last_record.elapsed() >= RECORD_EVERY)
        {
            let written = ByteRange {
                start: c.recorded,
                end: at,
            };
            ctx.checkpoint(job, part, written, false)?;
            c.recorded = at;
            c.last_record = Instant::now();
        }
        if ctx.stopping() {
            end.stopped = true;
            break;
        }
    }
    let n = buf.waiting();
    at = flush(ctx, job, part, buf, at, n).await?;
    c.pos = at;
    if job.records {
        // The chunk's end is made durable (one sync per chunk, as before the in-chunk records
        // existed); an interrupted stream's tail only needs to survive a kill.
        let complete = at == c.range.end;
        let done = ByteRange {
            start: if complete { c.range.start } else { c.recorded },
            end: at,
        };
        ctx.checkpoint(job, part, done, complete && job.durable_end(at))?;
        c.recorded = at;
    }
    Ok(end)
}

/// Hands bytes received for offset `at` to the file's in-order hash, waiting while they are too
/// far ahead of its frontier for the memory budget. False when the run stops meanwhile.
async fn hand_in_order(ctx: &Ctx, job: &FileJob, at: u64, bytes: &bytes::Bytes) -> bool {
    let Some(io) = &job.in_order else {
        return true;
    };
    loop {
        let freed = io.budget().freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if io.offer(at, bytes) {
            return true;
        }
        // A failing run wakes the waiters after it sets the flag (see `Ctx::fail`).
        if ctx.stopping() {
            return false;
        }
        let _waiting = Counting::new(&ctx.waiting);
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return false,
            _ = freed => {}
        }
    }
}

/// Takes what `m` holds, poisoned or not.
fn take<T: Default>(m: &Mutex<T>) -> T {
    std::mem::take(&mut *m.lock().unwrap_or_else(|p| p.into_inner()))
}

/// What was hashed of a file while it streamed in.
struct Hashed {
    /// The whole file's checksum, when it came in one request.
    inline: Option<crate::remote::Checksum>,
    /// CRCs of its ranges, when the checksum is a CRC of this algorithm.
    crc_algo: Option<crc_fast::CrcAlgorithm>,
    range_crcs: Vec<(ByteRange, u64)>,
    /// Its parts' digests were computed as they streamed in (the listed checksum's parts).
    by_parts: bool,
    part_digests: std::collections::HashMap<u32, Vec<u8>>,
    in_order: Option<Arc<inorder::InOrder>>,
}

/// The finished file's checksum of `want`'s kind, from what was hashed as it streamed in, and
/// what is missing read back from the part file.
fn computed(
    want: &crate::remote::Checksum,
    h: Hashed,
    part: &PartFile,
    size: u64,
) -> Result<crate::remote::Checksum> {
    // The inline hash is of the listed kind; a reply's checksum may be another kind.
    let combine_crcs = h
        .crc_algo
        .filter(|a| Some(*a) == verify::crc_algorithm(want));
    let (f, p) = (part.file(), part.path());
    if let Some(got) = h.inline.filter(|g| g.algorithm() == want.algorithm()) {
        Ok(got)
    } else if let Some(algo) = combine_crcs {
        verify::combine_ranges(want, size, h.range_crcs, |r| {
            verify::crc_of_range(f, p, algo, r)
        })
        .map(|(got, _)| got)
    } else if h.by_parts {
        verify::combine_parts(want, size, h.part_digests, |r, kind| {
            verify::digest_of_range(f, p, kind, r)
        })
        .map(|(got, _)| got)
    } else if let Some(got) = h
        .in_order
        .as_deref()
        .and_then(inorder::InOrder::finish)
        .filter(|g| g.algorithm() == want.algorithm())
    {
        Ok(got)
    } else {
        verify::hash_file(f, p, want, size)
    }
}

/// Moves a verified part file into place, decoded first when the source stores it encoded.
fn land(
    state: &StateDir,
    part: &PartFile,
    file: &crate::remote::RemoteFile,
    path: &crate::url::RelPath,
    shown: &str,
    fsync: bool,
    (mut checked, distrusted): (Checked, bool),
) -> Result<(Checked, bool)> {
    if !file.stored_gzip {
        state.persist(part, path, fsync)?;
        return Ok((checked, distrusted));
    }
    // Bytes that do not decode are discarded; on a full volume or a lost lease the verified
    // stored bytes stay, with their journal records, so a rerun only decodes.
    let decoded = state.decode_part(part, path, file.size, shown, fsync);
    let (landed, decoded) = decoded.inspect_err(|e| {
        if e.kind() != Kind::Local {
            state.discard_part(path)
        }
    })?;
    state.persist(&landed, path, fsync)?;
    checked.decoded = Some(decoded);
    Ok((checked, distrusted))
}

/// Verifies (when the listing gave a checksum that applies), syncs and renames a finished file,
/// then records it in the journal.
async fn finalize(ctx: &Ctx, job: &FileJob) -> Result<()> {
    let part = match job.part.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(p) => p,
        None => Arc::new(ctx.state.open_part(
            &job.plan.path,
            job.plan.file.size,
            job.plan.resume,
        )?),
    };
    let checksum = job.checked_against();
    let hashed = job.take_hashed(checksum.as_ref());
    let shown = ctx.shown(job);
    let size = job.plan.file.size;
    let fsync = ctx.opts.fsync;
    let file = job.plan.file.clone();
    let rereads = Arc::clone(&ctx.rereads);
    let recut = job.plan.shift != 0;
    let state = Arc::clone(&ctx.state);
    let path = job.plan.path.clone();
    let (checked, distrusted) = tokio::task::spawn_blocking(move || {
        let judged = match checksum {
            None => Ok((Verdict::Keep(Checked::of(&file, None)), false)),
            Some(want) => computed(&want, hashed, &part, size)
                .map(|got| rereads.judge(&path, &got, &want, &shown, recut)),
        };
        let kept = match judged {
            Ok((Verdict::Keep(checked), distrusted)) => (checked, distrusted),
            Ok((Verdict::Corrupt(e), _)) | Err(e) => {
                state.discard_part(&path);
                return Err(e);
            }
        };
        land(&state, &part, &file, &path, &shown, fsync, kept)
    })
    .await
    .map_err(|e| Error::new(Kind::Local, "a file check task failed").with_source(e))??;
    if distrusted {
        warn_distrusted(ctx, job);
    }
    record_done(ctx, job, checked)
}

/// Said once, when two reads of a file agree with each other but not with its multipart ETag.
fn warn_distrusted(ctx: &Ctx, job: &FileJob) {
    ctx.reporter.warn(&format!(
        "{}: two reads, cut into different ranges, agreed with each other but not with its \
         multipart ETag: this server's multipart ETags are not MD5s of the parts as the \
         loader cuts them (Cloudflare R2 objects from before mid-2023, Apache Ozone, some \
         gateways; or parts of unequal lengths the server would not describe); files with \
         one are checked by size only from now on, and the manifest says so",
        ctx.shown(job)
    ));
}

/// A landed file: what it was checked against, in the journal and the run's results.
fn record_done(ctx: &Ctx, job: &FileJob, checked: Checked) -> Result<()> {
    ctx.verified
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(job.plan.path.clone(), checked.clone());
    if let Some(io) = &job.in_order {
        ctx.in_order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(io.stats());
    }
    ctx.state
        .record_file(&job.plan.path, &job.plan.file, checked)?;
    ctx.files_done.fetch_add(1, Ordering::Relaxed);
    if job.plan.chunk_count() == 0 {
        ctx.reporter
            .file_started(job.id, job.plan.path.as_str(), job.plan.file.size);
    }
    ctx.reporter.file_done(job.id, job.plan.path.as_str());
    Ok(())
}
