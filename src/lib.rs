//! model-loader: puts ML models and adapters from object stores and the Hugging Face Hub onto
//! a local or shared volume — fast, with flat memory, and never half-written.
//!
//! Data flow: URL → source (list once) → select (filters, safe paths) → plan
//! (pure) → execute (one pool of ranged requests) → manifest, written last.

pub mod cancel;
pub mod cli;
pub mod error;
pub mod progress;
pub mod source;
pub mod transfer;
pub mod upload;
pub mod url;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use cancel::Cancel;
use cli::{Config, Filter};
use error::{Error, Result};
use progress::{PlanSummary, Reporter, Summary};
use source::{AnySource, RemoteFile, Source};
use transfer::lock::{DestLock, LockTimes};
use transfer::plan::{plan, PlanOptions};
use transfer::retry::retrying;
use transfer::state::{self, Manifest, ManifestFile, StateDir};
use transfer::ExecOptions;
use url::RelPath;

/// Bytes gathered per worker before one positional write. 1 MiB was measured faster on the hf
/// bench (fewer `block_in_place` hand-overs) but raised peak RSS past the 32 MiB target on the
/// s3 bench (BENCHMARKS.md), so it stays 256 KiB.
const WRITE_BUFFER: usize = 256 * 1024;

/// Loads `cfg.source` into `cfg.dest`. Returns what was done; every failure is classified.
pub async fn run(cfg: &Config, reporter: Arc<dyn Reporter>, cancel: Cancel) -> Result<Summary> {
    let started = Instant::now();
    let client_opts = source::Options {
        http: source::http::ClientOptions {
            read_timeout: cfg.read_timeout,
            max_idle_per_host: cfg.concurrency.unwrap_or(32),
            ..Default::default()
        },
        oss_internal: cfg.oss_internal,
        write: false,
    };
    let source = Arc::new(
        retrying(&cfg.retry, reporter.as_ref(), "opening the source", || {
            AnySource::open(&cfg.source, &client_opts, reporter.as_ref())
        })
        .await?,
    );
    let listing = retrying(&cfg.retry, reporter.as_ref(), "listing", || source.list()).await?;
    let selection = select(listing.files, &cfg.filter, &cfg.source)?;
    let plan_options = PlanOptions {
        chunk_size: cfg.chunk_size,
        force: cfg.force,
    };
    if cfg.dry_run {
        print_dry_run(cfg, &selection, plan_options);
        return Ok(Summary::default());
    }
    let selected = selection.files;
    let source_text = cfg.source.to_string();
    let (state, lock) = match take_dest(cfg, &source_text, reporter.as_ref(), &cancel).await {
        Ok(taken) => taken,
        // A pre-populated volume mounted read-only: fine when it already holds this load.
        Err(e) if e.kind() == error::Kind::Local && !cfg.force => {
            let Some(p) = complete_without_lock(cfg, &selected, &listing.revision) else {
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
            return Ok(finish_noop(p, reporter.as_ref(), started));
        }
        Err(e) => return Err(e),
    };
    state.set_lease(lock.held());
    let previous = state.read_manifest();
    let local = state.local_state(&selected)?;
    let plan = plan(selected.clone(), &local, plan_options);
    let manifest_current = previous
        .as_ref()
        .is_some_and(|m| cfg.source.same_source(&m.source) && m.revision == listing.revision);
    reporter.plan(&PlanSummary {
        upload: false,
        files: plan.fetch.len(),
        bytes: plan.bytes_to_fetch,
        resumed_bytes: plan.resumed_bytes,
        skipped_files: plan.skip.len(),
        skipped_bytes: plan.skip.iter().map(|(_, f)| f.size).sum(),
        removed_files: plan.remove.len(),
    });
    let mut summary = Summary {
        files_skipped: plan.skip.len(),
        files_removed: plan.remove.len(),
        ..Default::default()
    };
    if plan.is_noop() && manifest_current {
        summary.elapsed = started.elapsed();
        reporter.finish(&summary);
        return Ok(summary);
    }
    for f in &plan.fetch {
        state.check_no_symlinks(&f.path)?;
    }
    check_free_space(
        &cfg.dest,
        plan.bytes_to_fetch.saturating_sub(plan.resumed_bytes),
    )?;

    state.begin_changes(previous.as_ref())?;
    for p in &plan.remove {
        state.remove_file(p)?;
    }
    let concurrency = cfg
        .concurrency
        .unwrap_or_else(|| auto_concurrency(&plan.fetch));
    let mut done = transfer::Executed::default();
    let mut fetch = plan.fetch;
    // A checksum mismatch is usually corruption in transit: fetch what is missing (the file
    // that failed included) once more before giving up with exit 6.
    let parties = transfer::Parties {
        source: Arc::clone(&source),
        state: Arc::clone(&state),
        reporter: Arc::clone(&reporter),
        cancel: cancel.clone(),
        shown: source_text.clone(),
    };
    let exec = ExecOptions {
        concurrency,
        retry: cfg.retry,
        buffer_size: WRITE_BUFFER,
        fsync: cfg.fsync,
    };
    for attempt in 0.. {
        keep_only_resumed_parts(&state, &fetch);
        let result = transfer::execute(&parties, fetch, exec, &mut done).await;
        match result {
            Ok(()) => break,
            Err(e) if e.kind() == error::Kind::Corrupt && attempt == 0 => {
                reporter.warn(&format!(
                    "{}; fetching it again, once",
                    e.message().trim_end_matches('.')
                ));
                let local = state.local_state(&selected)?;
                fetch = transfer::plan::plan(selected.clone(), &local, plan_options).fetch;
            }
            Err(e) => return Err(e),
        }
    }

    if done.in_order.total() > 0 {
        reporter.info(&in_order_line(&done.in_order));
    }
    // Renames (and folders this run created) are durable only once their folders are synced.
    if cfg.fsync {
        state.sync_folders(selected.iter().map(|(p, _)| p))?;
    }
    let previous_checksums: std::collections::HashMap<&str, Option<String>> = previous
        .iter()
        .flat_map(|m| {
            m.files
                .iter()
                .map(|e| (e.path.as_str(), e.checksum.clone()))
        })
        .collect();
    lock.check()?;
    state.commit(&Manifest {
        format: 1,
        tool: concat!("model-loader ", env!("CARGO_PKG_VERSION")).into(),
        source: source_text,
        revision: listing.revision,
        completed_at: state::now_rfc3339(),
        files: selected
            .iter()
            .map(|(p, f)| {
                // Fetched now: what it was verified against. Up to date: what the previous
                // manifest recorded (the listing's checksum may never have applied).
                let checksum = match done.verified.get(p) {
                    Some(c) => c.as_ref().map(|c| c.tagged()),
                    None => match previous_checksums.get(p.as_str()) {
                        Some(c) => c.clone(),
                        None => f.checksum.as_ref().map(|c| c.tagged()),
                    },
                };
                let size_only = checksum.is_none().then(|| size_only_reason(f));
                ManifestFile {
                    path: p.to_string(),
                    size: f.size,
                    version: f.version.clone(),
                    checksum,
                    size_only,
                }
            })
            .collect(),
    })?;
    lock.release();
    summary.files_fetched = done.files;
    summary.bytes_fetched = done.bytes;
    summary.retries = done.retries;
    summary.elapsed = started.elapsed();
    reporter.finish(&summary);
    Ok(summary)
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
fn in_order_line(s: &transfer::inorder::Stats) -> String {
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

/// Offline: does DEST hold a complete copy of SRC, as its manifest records it? Returns the
/// reason when it does not.
pub fn check(cfg: &Config) -> std::result::Result<String, String> {
    let m = manifest_for(cfg)?;
    let want = cfg.source.to_string();
    let Ok(root) = transfer::confine::Dir::open(&cfg.dest) else {
        return Err(format!("{} cannot be opened", cfg.dest.display()));
    };
    for f in &m.files {
        let Ok(p) = RelPath::new(&f.path) else {
            return Err(format!("the manifest names an unsafe path {:?}", f.path));
        };
        match state::size_beneath(&root, &p) {
            Some(len) if len == f.size => {}
            Some(len) => return Err(format!("{p} is {len} bytes, the manifest says {}", f.size)),
            None => return Err(format!("{p} is missing (or not a regular file below DEST)")),
        }
    }
    Ok(format!(
        "{} holds a complete copy of {want}: {} files, loaded {}",
        cfg.dest.display(),
        m.files.len(),
        m.completed_at
    ))
}

/// The largest object any supported store holds (S3 and OSS ~50 TB, GCS 5 TiB), with margin.
/// A listing that claims more is refused before any per-file work.
pub const MAX_OBJECT_SIZE: u64 = 64 << 40;

/// Why `--verify` did not pass.
pub enum AuditFailure {
    /// DEST is not a complete load of SRC (no manifest, another source): exit 1, as `--check`.
    Incomplete(String),
    /// Files differ from what the manifest recorded: exit 6.
    Mismatch(Error),
}

/// `--verify`: re-hashes every file the manifest lists (through no-symlink handles) and
/// reports each one that differs.
pub fn audit(cfg: &Config) -> std::result::Result<String, AuditFailure> {
    use transfer::confine::{split_parent, Dir};
    let m = manifest_for(cfg).map_err(AuditFailure::Incomplete)?;
    let root = Dir::open(&cfg.dest)
        .map_err(|e| AuditFailure::Incomplete(format!("{}: {e}", cfg.dest.display())))?;
    let (mut bad, mut hashed) = (Vec::new(), 0usize);
    for f in &m.files {
        let Ok(p) = RelPath::new(&f.path) else {
            bad.push(format!("{:?}: not a safe path", f.path));
            continue;
        };
        let (parent, base) = split_parent(p.as_str());
        let opened = root
            .subdir(parent, false)
            .ok()
            .and_then(|(d, _)| d.open_file(base, rustix::fs::OFlags::RDONLY, 0).ok());
        let Some(file) = opened else {
            bad.push(format!("{p}: missing (or reached through a symlink)"));
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len != f.size {
            bad.push(format!("{p}: {len} bytes, the manifest says {}", f.size));
            continue;
        }
        let Some(want) = f
            .checksum
            .as_deref()
            .and_then(source::Checksum::from_tagged)
        else {
            continue; // size only, as when it was loaded
        };
        hashed += 1;
        let path = cfg.dest.join(p.as_str());
        match transfer::verify::hash_file(&file, &path, &want, f.size) {
            Ok(got) if got == want => {}
            Ok(got) => bad.push(format!(
                "{p}: {} {} expected, {} found",
                want.algorithm(),
                want.hex(),
                got.hex()
            )),
            Err(e) => bad.push(format!("{p}: {}", e.message())),
        }
    }
    if bad.is_empty() {
        return Ok(format!(
            "{} matches its manifest: {} files, {hashed} re-hashed, {} by size only",
            cfg.dest.display(),
            m.files.len(),
            m.files.len() - hashed
        ));
    }
    for b in &bad {
        eprintln!("mismatch: {b}");
    }
    Err(AuditFailure::Mismatch(Error::new(
        error::Kind::Corrupt,
        format!(
            "{} of {} files in {} do not match the manifest ({}); remove them and rerun the load (or rerun with --force) to fetch them again",
            bad.len(),
            m.files.len(),
            cfg.dest.display(),
            bad[0]
        ),
    )))
}

/// The manifest at DEST, if it records `cfg.source`.
fn manifest_for(cfg: &Config) -> std::result::Result<Manifest, String> {
    let Some(m) = state::read_manifest(&cfg.dest) else {
        return Err(format!(
            "{} has no manifest: not loaded, or not finished",
            cfg.dest.display()
        ));
    };
    let want = cfg.source.to_string();
    if !cfg.source.same_source(&m.source) {
        return Err(format!(
            "{} holds {}, not {want}",
            cfg.dest.display(),
            m.source
        ));
    }
    Ok(m)
}

/// What the filters kept, and what they left out and why (for `--dry-run`).
pub struct Selection {
    pub files: Vec<(RelPath, RemoteFile)>,
    /// Listed path → the pattern (or lack of one) that filtered it out.
    pub filtered: Vec<(String, String)>,
}

/// Applies --include/--exclude, then refuses any path that could escape DEST or collide: a
/// file and a folder of the same name, or two files with one path.
pub fn select(files: Vec<RemoteFile>, filter: &Filter, src: &url::SourceUrl) -> Result<Selection> {
    let mut out = Vec::with_capacity(files.len());
    let mut filtered = Vec::new();
    let mut seen = HashSet::new();
    let mut hint = None;
    for f in files {
        if let Some(why) = filter.why_not(&f.path) {
            if hint.is_none() {
                hint = filter.folder_hint(&f.path);
            }
            filtered.push((f.path, why));
            continue;
        }
        if f.size > MAX_OBJECT_SIZE {
            return Err(Error::new(
                error::Kind::Corrupt,
                format!(
                    "{src} lists {} as {} bytes, more than the {} any supported store allows; the listing cannot be trusted (a broken proxy or server?)",
                    f.path,
                    f.size,
                    progress::human(MAX_OBJECT_SIZE)
                ),
            ));
        }
        let p = RelPath::new(&f.path).map_err(|e| e.context(format!("in {src}")))?;
        if !seen.insert(p.as_str().to_string()) {
            return Err(Error::usage(format!(
                "{src} lists {p} twice; refusing to guess which one to keep"
            )));
        }
        out.push((p, f));
    }
    refuse_file_folder_clash(&out, &seen, src)?;
    if out.is_empty() {
        let remedy = match hint {
            Some(h) => format!("did you mean {h:?}? A folder pattern ends with '/'"),
            None => "check the patterns".into(),
        };
        return Err(Error::new(
            error::Kind::NotFound,
            format!("no file in {src} matches --include/--exclude; {remedy}"),
        ));
    }
    Ok(Selection {
        files: out,
        filtered,
    })
}

fn refuse_file_folder_clash(
    out: &[(RelPath, RemoteFile)],
    seen: &HashSet<String>,
    src: &url::SourceUrl,
) -> Result<()> {
    for (p, _) in out {
        let s = p.as_str();
        for (i, _) in s.match_indices('/') {
            if seen.contains(&s[..i]) {
                return Err(Error::usage(format!(
                    "{src} has both a file {} and a folder {0}/ (holding {s}); a local folder cannot be both. \
                     Skip one with --exclude",
                    &s[..i]
                )));
            }
        }
    }
    Ok(())
}

/// Why a file was checked by its size alone, for the manifest.
fn size_only_reason(f: &RemoteFile) -> String {
    if f.checksum.is_some() {
        "the listed checksum does not describe the bytes (an SSE-KMS or SSE-C object's ETag is not an MD5)".into()
    } else if f.size == 0 {
        "empty file".into()
    } else {
        "the source gave no checksum for it (for S3: a multipart object without an additional checksum whose part layout the server would not tell)".into()
    }
}

/// Part files that no planned resume will use are left by crashed or corrupt attempts.
fn keep_only_resumed_parts(state: &StateDir, fetch: &[transfer::plan::FilePlan]) {
    let keep: Vec<_> = fetch
        .iter()
        .filter(|f| f.resume)
        .map(|f| state.part_name(&f.path))
        .collect();
    state.remove_stray_parts(&keep);
}

/// Small files are latency-bound: twice the requests in flight took 2,000 × 64 KiB files from
/// 855 to ~1,200 files/s, while 4 × 1 GiB shards ran the same at 16 and 32 (BENCHMARKS.md).
fn auto_concurrency(fetch: &[transfer::plan::FilePlan]) -> usize {
    let bytes: u64 = fetch.iter().map(|f| f.file.size).sum();
    if fetch.len() >= 64 && bytes / fetch.len() as u64 <= 4 << 20 {
        32
    } else {
        16
    }
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

/// `--dry-run`: what a run would fetch, skip (up to date) and remove, from a read-only look
/// at DEST; with `--verbose` or `--progress json`, also what the patterns left out and why.
/// JSON mode prints one object per line.
fn print_dry_run(cfg: &Config, selection: &Selection, options: PlanOptions) {
    use std::io::Write;
    let (local, _) = state::peek(&cfg.dest, &selection.files).unwrap_or_default();
    let mut p = plan(selection.files.clone(), &local, options);
    // Planned largest first; read in path order.
    p.fetch.sort_by(|a, b| a.path.cmp(&b.path));
    p.skip.sort_by(|a, b| a.0.cmp(&b.0));
    p.remove.sort();
    let json = cfg.progress == progress::ProgressMode::Json;
    let mut out = std::io::stdout().lock();
    let mut line = |action: &str, size: Option<u64>, path: &str, why: Option<&str>| {
        let _ = if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"action": action, "path": path, "size": size, "reason": why})
            )
        } else {
            let size = size.map_or("-".to_string(), |s| s.to_string());
            let why = why.map(|w| format!("  ({w})")).unwrap_or_default();
            writeln!(out, "{action:<8}{size:>14}  {path}{why}")
        };
    };
    for f in &p.fetch {
        let missing: u64 = f.missing.iter().map(|r| r.end - r.start).sum();
        let on_disk = f.file.size - missing.min(f.file.size);
        let resumed =
            (f.resume && on_disk > 0).then(|| format!("resumes, {on_disk} bytes on disk"));
        line(
            "fetch",
            Some(f.file.size),
            f.path.as_str(),
            resumed.as_deref(),
        );
    }
    for (path, f) in &p.skip {
        line("skip", Some(f.size), path.as_str(), Some("up to date"));
    }
    for path in &p.remove {
        line(
            "remove",
            None,
            path.as_str(),
            Some("no longer selected or listed"),
        );
    }
    if cfg.verbose || json {
        for (path, why) in &selection.filtered {
            line("filtered", None, path, Some(why));
        }
    }
    let skipped: u64 = p.skip.iter().map(|(_, f)| f.size).sum();
    let summary = format!(
        "total: {} to fetch, {} ({} bytes); {} up to date ({}); {} to remove",
        progress::count(p.fetch.len(), "file"),
        progress::human(p.bytes_to_fetch),
        p.bytes_to_fetch,
        progress::count(p.skip.len(), "file"),
        progress::human(skipped),
        progress::count(p.remove.len(), "file"),
    );
    let _ = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"action": "total", "fetch_files": p.fetch.len(),
                "fetch_bytes": p.bytes_to_fetch, "skip_files": p.skip.len(),
                "skip_bytes": skipped, "remove_files": p.remove.len(),
                "filtered_files": selection.filtered.len()})
        )
    } else {
        writeln!(out, "{summary}")
    };
}
