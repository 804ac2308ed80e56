//! The download direction: list → select → plan → execute → manifest. `run` orchestrates;
//! each step lives in its own module, and only `state` (through `confine`) touches DEST.
//!
//! Invariants: nothing appears at a file's final path before its bytes are complete, checked
//! and synced; the manifest, written last, exists only when every selected file is in place.

pub mod audit;
mod decode;
mod dry_run;
pub mod engine;
pub mod inorder;
pub mod lock;
pub mod manifest;
pub mod plan;
pub mod ramp;
pub mod reread;
pub mod select;
pub mod state;
mod unpack;
mod untar;
pub mod write_mode;
pub mod writer;

use std::sync::Arc;
use std::time::Instant;

use crate::cancel::Cancel;
use crate::cli::Config;
use crate::error::{self, Error, Result};
use crate::progress::{self, PlanSummary, Reporter, Summary};
use crate::remote::{self as source, AnySource, RemoteFile, Source};
use crate::retry::retrying;
use crate::url::RelPath;
use engine::ExecOptions;
use lock::{DestLock, LockTimes};
use manifest::Manifest;
use plan::{plan, PlanOptions};
use select::select;
use state::StateDir;

/// Bytes gathered per worker before one positional `O_DIRECT` write. 1 MiB was measured faster
/// on the hf bench (fewer `block_in_place` hand-overs) but raised peak RSS past the 32 MiB
/// target on the s3 bench (BENCHMARKS.md), so it stays 256 KiB; runs that hash files in order,
/// which hold far more than that in memory anyway, use [`inorder::WRITE_BUFFER`]. Buffered
/// writes gather the received pieces instead, up to `writer::BUFFERED_WRITE`.
const WRITE_BUFFER: usize = 256 * 1024;

/// Loads `cfg.source` into `cfg.dest`. Returns what was done; every failure is classified.
pub async fn run(cfg: &Config, reporter: Arc<dyn Reporter>, cancel: Cancel) -> Result<Summary> {
    let started = Instant::now();
    let (source, mut listing) = open_and_list(cfg, &reporter).await?;
    let layers = unpack::take_archives(&mut listing.files);
    let filter = if listing.exact {
        cfg.filter.for_exact_object()
    } else {
        cfg.filter.clone()
    };
    // Without archive layers every file is known now: paths are checked before the lock.
    let early = if layers.is_empty() {
        Some(selection(std::mem::take(&mut listing.files), &filter, cfg)?)
    } else {
        None
    };
    let plan_options = PlanOptions {
        chunk_size: cfg.chunk_size,
        whole_files: false,
        force: cfg.force,
    };
    if cfg.dry_run {
        match &early {
            Some(selection) => dry_run::print(cfg, selection, plan_options),
            None => dry_run::print_layers(cfg, &filter, &listing.files, &layers),
        }
        return Ok(Summary::default());
    }
    let source_text = cfg.source.to_string();
    let (state, lock) = match take_dest(cfg, &source_text, reporter.as_ref(), &cancel).await {
        Ok(taken) => taken,
        // A pre-populated volume mounted read-only: fine when it already holds this load.
        Err(e) if e.kind() == error::Kind::Local && !cfg.force => {
            let Some(early) = &early else { return Err(e) };
            return already_complete(cfg, &early.files, &listing.revision, e, reporter.as_ref())
                .map(|p| finish_noop(p, reporter.as_ref(), started));
        }
        Err(e) => return Err(e),
    };
    state.set_lease(lock.held());
    say_group_shared(cfg, &state, reporter.as_ref());
    let revision = listing.revision.clone().unwrap_or_default();
    let staging = unpack::Ctx {
        source: &source,
        state: &state,
        retry: &cfg.retry,
        reporter: reporter.as_ref(),
    };
    let selected = match early {
        Some(s) => s.files,
        None => {
            let mut all = std::mem::take(&mut listing.files);
            all.extend(unpack::expand(&staging, &layers, &revision).await?);
            selection(all, &filter, cfg)?.files
        }
    };
    let previous = state.read_manifest();
    let local = state.local_state(&selected)?;
    let plan = plan(selected.clone(), &local, plan_options);
    let mut summary = report_plan(&plan, reporter.as_ref());
    let manifest_current = previous
        .as_ref()
        .is_some_and(|m| cfg.source.same_source(&m.source) && m.revision == listing.revision);
    if plan.is_noop() && manifest_current {
        // Layers unpacked to learn their files (no index yet) are not needed after all.
        unpack::clean(&state);
        summary.elapsed = started.elapsed();
        reporter.finish(&summary);
        return Ok(summary);
    }
    unpack::ensure_staged(&staging, &plan.fetch, &layers).await?;
    prepare_dest(cfg, &state, &plan, previous.as_ref())?;
    choose_write_mode(cfg, &state, &selected, reporter.as_ref());
    let parties = engine::Parties {
        rereads: Arc::new(reread::Rereads::new(source.multipart_etags_are_md5s())),
        source: Arc::clone(&source),
        state: Arc::clone(&state),
        reporter: Arc::clone(&reporter),
        cancel,
        shown: source_text.clone(),
    };
    let done = fetch_all(cfg, &parties, plan.fetch, &selected, plan_options).await;
    report_p2p(&source, reporter.as_ref(), &mut summary);
    let done = done?;
    let outcome = (source_text, listing.revision);
    let manifest = complete(cfg, &state, &selected, outcome, &done, local)?;
    lock.check()?;
    state.commit(&manifest)?;
    unpack::clean(&state);
    lock.release();
    (summary.files_fetched, summary.bytes_fetched) = (done.files, done.bytes);
    (summary.retries, summary.elapsed) = (done.retries, started.elapsed());
    reporter.finish(&summary);
    Ok(summary)
}

/// The files a run takes (the filters), refused when a path is unsafe or lands in another
/// pair's DEST.
fn selection(
    files: Vec<RemoteFile>,
    filter: &crate::cli::Filter,
    cfg: &Config,
) -> Result<select::Selection> {
    let s = select(files, filter, &cfg.source)?;
    select::refuse_nested(&s.files, &cfg.nested, &cfg.source)?;
    Ok(s)
}

fn say_group_shared(cfg: &Config, state: &StateDir, reporter: &dyn Reporter) {
    if state.group_shared() {
        reporter.info(&format!(
            "{} is shared with its group (group-writable or setgid, as on OpenShift): what this \
             run creates is group-writable, so another user of the group can rerun it",
            cfg.dest.display()
        ));
    }
}

/// Every file is in place: folders synced, names checked; the manifest to write last.
fn complete(
    cfg: &Config,
    state: &StateDir,
    selected: &[(RelPath, RemoteFile)],
    (source_text, revision): (String, Option<String>),
    done: &engine::Executed,
    local: plan::LocalState,
) -> Result<Manifest> {
    // Renames (and folders this run created) are durable only once their folders are synced.
    if cfg.fsync {
        state.sync_folders(selected.iter().map(|(p, _)| p))?;
    }
    state.check_case_distinct(selected.iter().map(|(p, _)| p))?;
    let manifest = manifest::build(manifest::Outcome {
        source: source_text,
        revision,
        selected,
        verified: &done.verified,
        earlier: &local
            .recorded
            .into_iter()
            .map(|(p, r)| (p, r.checked))
            .collect(),
        completed_at: manifest::now_rfc3339(),
    });
    // The manifest lists the selected files in order, each with the size it landed at.
    state.check_in_place(
        selected
            .iter()
            .zip(&manifest.files)
            .map(|((p, _), m)| (p, m.landed_size())),
    )?;
    Ok(manifest)
}

/// Direct or buffered writes for this DEST (`write_mode`), said once with the reason. The
/// whole model counts, not only what is fetched: the engine reads every file. (A file stored
/// gzip-encoded counts at its stored size; it lands larger.)
fn choose_write_mode(
    cfg: &Config,
    state: &StateDir,
    selected: &[(RelPath, RemoteFile)],
    reporter: &dyn Reporter,
) {
    let model: u64 = selected.iter().map(|(_, f)| f.size).sum();
    let (fs, room) = write_mode::probe(&cfg.dest);
    let chosen = write_mode::decide(cfg.write_mode, fs, model, room);
    reporter.info(&chosen.reason);
    state.set_direct(chosen.direct);
}

/// How many object requests crossed the P2P proxy and how many went direct (and why, first).
fn report_p2p(source: &AnySource, reporter: &dyn Reporter, summary: &mut Summary) {
    let Some(r) = source.p2p_report() else {
        return;
    };
    summary.p2p_through = r.through;
    summary.p2p_direct = r.direct;
    let why = r
        .first_fallback
        .map(|w| format!(" (first: {w})"))
        .unwrap_or_default();
    let line = format!(
        "p2p: {} through {}, {} direct{why}",
        progress::count(r.through as usize, "request"),
        r.proxy,
        r.direct
    );
    if r.direct > 0 {
        reporter.warn(&line);
    } else {
        reporter.info(&line);
    }
}

/// Opens the source (credentials, endpoint, revision) and lists it once, both retried.
async fn open_and_list(
    cfg: &Config,
    reporter: &Arc<dyn Reporter>,
) -> Result<(Arc<AnySource>, source::Listing)> {
    let client_opts = source::Options {
        p2p: cfg.p2p.clone(),
        http: source::http::ClientOptions {
            read_timeout: cfg.read_timeout,
            max_idle_per_host: cfg.concurrency.unwrap_or(32),
            ..Default::default()
        },
        oss_internal: cfg.oss_internal,
        requester_pays: cfg.requester_pays.clone(),
        write: false,
    };
    let source = Arc::new(
        retrying(&cfg.retry, reporter.as_ref(), "opening the source", || {
            AnySource::open(&cfg.source, &client_opts, reporter)
        })
        .await?,
    );
    let listing = retrying(&cfg.retry, reporter.as_ref(), "listing", || source.list()).await?;
    Ok((source, listing))
}

/// The plan line, and the summary's counts that the plan already knows.
fn report_plan(plan: &plan::Plan, reporter: &dyn Reporter) -> Summary {
    reporter.plan(&PlanSummary {
        upload: false,
        files: plan.fetch.len(),
        bytes: plan.bytes_to_fetch,
        resumed_bytes: plan.resumed_bytes,
        skipped_files: plan.skip.len(),
        skipped_bytes: plan.skip.iter().map(|(_, f)| f.size).sum(),
        removed_files: plan.remove.len(),
    });
    Summary {
        files_skipped: plan.skip.len(),
        files_removed: plan.remove.len(),
        ..Default::default()
    }
}

/// Before the first byte: no symlink on the way to any file, room for what is left, the
/// manifest withdrawn (DEST is about to change), files no longer selected removed.
fn prepare_dest(
    cfg: &Config,
    state: &StateDir,
    plan: &plan::Plan,
    previous: Option<&Manifest>,
) -> Result<()> {
    for f in &plan.fetch {
        state.check_no_symlinks(&f.path)?;
    }
    check_free_space(&cfg.dest, space_needed(state, &plan.fetch))?;
    state.begin_changes(previous)?;
    for p in &plan.remove {
        state.remove_file(p)?;
    }
    Ok(())
}

/// Runs the engine over `fetch`. A checksum mismatch is usually corruption in transit: the
/// failed file is planned and fetched once more, with what else is missing, before exit 6 (a
/// multipart-ETag mismatch is fetched in other ranges and judged by the two reads, see
/// `reread`). Something on the way that ignores `Range` (a CDN, a corporate proxy) switches
/// the run to one whole-body stream per file, once, instead of failing every ranged request.
async fn fetch_all(
    cfg: &Config,
    parties: &engine::Parties,
    mut fetch: Vec<plan::FilePlan>,
    selected: &[(RelPath, RemoteFile)],
    mut plan_options: PlanOptions,
) -> Result<engine::Executed> {
    let (auto, ramps) = auto_concurrency(&fetch);
    let exec = ExecOptions {
        concurrency: cfg.concurrency.unwrap_or(auto),
        adaptive: cfg.concurrency.is_none() && ramps,
        retry: cfg.retry,
        buffer_size: WRITE_BUFFER,
        fsync: cfg.fsync,
    };
    let mut done = engine::Executed::default();
    let mut refetched_unattributed = false;
    loop {
        keep_only_resumed_parts(&parties.state, &fetch)?;
        match engine::execute(parties, fetch, exec, &mut done).await {
            Ok(()) => break,
            Err(e)
                if e.condition() == Some(error::Condition::RangeIgnored)
                    && !plan_options.whole_files =>
            {
                parties.reporter.warn(&format!(
                    "{} (a CDN, or a proxy from HTTP(S)_PROXY); fetching each file whole, in \
                     one verified stream, from its first byte",
                    e.message().trim_end_matches('.')
                ));
                source::http::accept_whole_bodies();
                plan_options.whole_files = true;
            }
            Err(e) if e.kind() == error::Kind::Corrupt => {
                // Every file that failed a check gets one more read; a second failure is final.
                // Corruption found elsewhere (a part file that changed) gets one more pass.
                match parties.rereads.take_failed() {
                    reread::Failed::Again => {}
                    reread::Failed::Final(message) => {
                        return Err(Error::new(error::Kind::Corrupt, message))
                    }
                    reread::Failed::Elsewhere => {
                        if std::mem::replace(&mut refetched_unattributed, true) {
                            return Err(e);
                        }
                    }
                }
                parties.reporter.warn(&format!(
                    "{}; fetching it again, once",
                    e.message().trim_end_matches('.')
                ));
                // Not from the same P2P cache that may have served the bad bytes.
                parties
                    .source
                    .p2p_stop("a file failed verification; its refetch goes direct");
            }
            Err(e) => return Err(e),
        }
        let local = parties.state.local_state(selected)?;
        fetch = plan(selected.to_vec(), &local, plan_options).fetch;
        // Second reads of multipart-ETag mismatches first: what they find decides how every
        // other file with a multipart ETag is checked.
        if !plan_options.whole_files {
            for f in fetch.iter_mut() {
                if parties.rereads.cut_differently(&f.path) {
                    f.reread();
                }
            }
        }
        fetch.sort_by_key(|f| !parties.rereads.cut_differently(&f.path));
    }
    if done.in_order.total() > 0 {
        parties.reporter.info(&in_order_line(&done.in_order));
    }
    Ok(done)
}

/// DEST could not be taken (`e`, read-only say): success if it already holds this load.
fn already_complete(
    cfg: &Config,
    selected: &[(RelPath, RemoteFile)],
    revision: &Option<String>,
    e: Error,
    reporter: &dyn Reporter,
) -> Result<PlanSummary> {
    let Some(p) = complete_without_lock(cfg, selected, revision) else {
        return Err(e.note(format!(
            "and it does not already hold a complete copy of {}",
            cfg.source
        )));
    };
    reporter.info(&format!(
        "{} cannot be written ({}), but it already holds a complete copy of {}: nothing to do",
        cfg.dest.display(),
        e.message(),
        cfg.source
    ));
    Ok(p)
}

/// Opens DEST's state folder and takes its lock (waiting for another loader, or stopping
/// when the run is cancelled meanwhile).
async fn take_dest(
    cfg: &Config,
    source_text: &str,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<(Arc<StateDir>, DestLock)> {
    let state = Arc::new(StateDir::open(&cfg.dest)?);
    let acquire = DestLock::acquire(
        state.dir(),
        source_text,
        LockTimes {
            heartbeat: cfg.lock_stale / 6,
            stale: cfg.lock_stale,
            ..LockTimes::default()
        },
        reporter,
    );
    // A pod stopped while it waits for another loader stops at once.
    tokio::select! {
        l = acquire => Ok((state, l?)),
        _ = cancel.cancelled() => {
            let kind = cancel.reason().unwrap_or(error::Kind::Interrupted);
            Err(Error::new(kind, "stopped while waiting for the lock; nothing was written"))
        }
    }
}

/// When DEST cannot be written (`why`): does it already hold exactly this load — a manifest
/// for this source and revision, every selected file at its final path with its size,
/// nothing to remove? Then there is nothing to do and no lock to take.
fn complete_without_lock(
    cfg: &Config,
    selected: &[(RelPath, RemoteFile)],
    revision: &Option<String>,
) -> Option<PlanSummary> {
    let (local, manifest) = state::peek(&cfg.dest, selected)?;
    let m = manifest?;
    if !cfg.source.same_source(&m.source) || &m.revision != revision {
        return None;
    }
    let options = PlanOptions {
        chunk_size: cfg.chunk_size,
        whole_files: false,
        force: false,
    };
    let p = plan(selected.to_vec(), &local, options);
    if !p.is_noop() {
        return None;
    }
    Some(PlanSummary {
        skipped_files: p.skip.len(),
        skipped_bytes: p.skip.iter().map(|(_, f)| f.size).sum(),
        ..Default::default()
    })
}

fn finish_noop(p: PlanSummary, reporter: &dyn Reporter, started: Instant) -> Summary {
    reporter.plan(&p);
    let summary = Summary {
        files_skipped: p.skipped_files,
        elapsed: started.elapsed(),
        ..Default::default()
    };
    reporter.finish(&summary);
    summary
}

/// How much of the files hashed in order (SHA-256, single-part MD5) was hashed as it arrived.
fn in_order_line(s: &inorder::Stats) -> String {
    let pct = |n: u64| n as f64 * 100.0 / s.total().max(1) as f64;
    format!(
        "hashed in order: {} as it arrived ({:.0}%), {} from memory ({:.0}%), {} read back ({:.0}%)",
        progress::human(s.at_frontier),
        pct(s.at_frontier),
        progress::human(s.from_memory),
        pct(s.from_memory),
        progress::human(s.read_back),
        pct(s.read_back),
    )
}

/// Part files that no planned resume will use are left by crashed or corrupt attempts.
fn keep_only_resumed_parts(state: &StateDir, fetch: &[plan::FilePlan]) -> Result<()> {
    let keep: Vec<_> = fetch
        .iter()
        .filter(|f| f.resume)
        .map(|f| state.part_name(&f.path))
        .collect();
    state.remove_stray_parts(&keep)
}

/// The default streams, and whether the run ramps up to them (see [`ramp`]). Small files are
/// latency-bound: twice the requests in flight took 2,000 × 64 KiB files from 855 to ~1,200
/// files/s, so they get 32 from the start. Large files run the same at 16 and 32 (4 × 1 GiB
/// shards, BENCHMARKS.md), and on a host that is itself the limit better with fewer: up to 16,
/// ramped.
fn auto_concurrency(fetch: &[plan::FilePlan]) -> (usize, bool) {
    let bytes: u64 = fetch.iter().map(|f| f.file.size).sum();
    if fetch.len() >= 64 && bytes / fetch.len() as u64 <= 4 << 20 {
        (32, false)
    } else {
        (16, true)
    }
}

/// Room the volume must still find: each file's size, less what its part file already holds.
/// A part file is reserved whole when created, and a rerun either resumes it or starts it
/// afresh under the same name, so its blocks count either way (a run killed before its first
/// record leaves a whole reserved part file and nothing to resume). Part files of files this
/// run does not fetch are removed before its first byte, so the room they hold counts as free.
fn space_needed(state: &StateDir, fetch: &[plan::FilePlan]) -> u64 {
    let missing = fetch
        .iter()
        .map(|f| f.file.size.saturating_sub(state.part_allocated(&f.path)))
        .fold(0, u64::saturating_add);
    let mine: std::collections::HashSet<String> =
        fetch.iter().map(|f| state.part_name(&f.path)).collect();
    missing.saturating_sub(state.others_parts_allocated(&mine))
}

/// Fails fast, before any byte is fetched, when DEST's filesystem cannot hold what is left to
/// download.
fn check_free_space(dest: &std::path::Path, needed: u64) -> Result<()> {
    let Some(free) = free_space(dest) else {
        return Ok(());
    };
    if needed > free {
        return Err(Error::new(
            error::Kind::Local,
            format!(
                "{} has {} free but this download needs {} more ({} bytes vs {}): give DEST a larger volume or free space, then rerun",
                dest.display(),
                progress::human(free),
                progress::human(needed),
                free,
                needed
            ),
        ));
    }
    Ok(())
}

/// Bytes available to this user on the filesystem holding `path`.
fn free_space(path: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}
