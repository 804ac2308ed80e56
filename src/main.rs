//! Entry point: parse, run, map the error to its exit code and message. Also installed as
//! `load` (KubeAI execs `load SRC DEST`), which behaves identically. KServe passes
//! `SRC DEST [SRC DEST …]`: each pair is loaded in turn (`run_pairs`).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model_loader::cancel::Cancel;
use model_loader::cli::{self, ArgsFailure, Config, Mode};
use model_loader::error::{Error, Kind};
use model_loader::progress::{self, ProgressMode, Reporter};
use model_loader::{upload, AuditFailure};

fn main() -> ExitCode {
    install_panic_hook();
    // Debug builds only: lets the tests check what a bug looks like to the user.
    #[cfg(debug_assertions)]
    if std::env::var_os("MODEL_LOADER_DEBUG_PANIC").is_some() {
        panic!("MODEL_LOADER_DEBUG_PANIC is set");
    }
    let args = match cli::parse_args(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(ArgsFailure::Display(e)) => e.exit(),
        Err(ArgsFailure::Usage(e)) => return fail(&e, false),
    };
    if let Some(shell) = args.completions {
        print!("{}", completions(shell));
        return ExitCode::SUCCESS;
    }
    let json = args.progress == ProgressMode::Json;
    // Before any thread: it sets the variables KServe's storage spec stands for.
    let spec_note = match cli::kserve::apply_storage_spec() {
        Ok(n) => n,
        Err(e) => return fail(&e, json),
    };
    let cfgs = match args.into_configs() {
        Ok(c) => c,
        Err(e) => return fail(&e, json),
    };
    match cfgs[0].mode {
        Mode::Verify => return verify_pairs(&cfgs, json),
        Mode::Check => return check_pairs(&cfgs, json),
        _ => {}
    }
    raise_open_files_limit();
    // glibc gives every thread its own malloc arena (up to 8 per core); with the runtime's
    // worker and blocking threads that alone grew peak RSS from 28 to 52 MiB at 16 requests
    // (BENCHMARKS.md). One arena keeps memory flat; the hot path allocates little.
    #[cfg(target_env = "gnu")]
    // SAFETY: called before any other thread exists; mallopt only sets an allocator limit.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &Error::new(Kind::Local, "cannot start the async runtime").with_source(e),
                json,
            )
        }
    };
    let cancel = Cancel::default();
    let current = Current::default();
    let result = rt.block_on(async {
        let work = run_pairs(&cfgs, &current, &cancel, spec_note);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            kind = interrupted() => {
                // Workers stop at their next await, record what they wrote and are joined
                // before the lock is released (an upload aborts its open multipart uploads).
                cancel.cancel(kind);
                let stopped = tokio::time::timeout(STOP_GRACE, &mut work).await;
                let timed_out = stopped.is_err();
                let e = match stopped {
                    Ok(Err(e)) if e.kind() == kind => e,
                    _ => Error::new(kind, "stopped; what was written is kept and a rerun resumes"),
                };
                if timed_out {
                    // Still not stopped: exit now, without dropping the run — dropping would
                    // release the lock while a verify, rename or write may still be running on
                    // a blocking thread. The exit stops every writer; the lease it leaves is
                    // taken over at once by the next loader in this PID namespace, or once
                    // stale elsewhere.
                    current.stop();
                    std::process::exit(i32::from(report(&e, json)));
                }
                Err(e)
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            current.stop();
            fail(&e, json)
        }
    }
}

/// The reporter of the pair being loaded, so that an exit can clear its progress bars.
#[derive(Default)]
struct Current(Mutex<Option<Arc<dyn Reporter>>>);

impl Current {
    fn set(&self, r: Arc<dyn Reporter>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }
    fn stop(&self) {
        if let Some(r) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            r.stop();
        }
    }
}

/// Loads (or uploads) each pair in turn, as KServe's own initializer does: one pair's
/// requests in flight at a time, so `--concurrency` bounds the whole call. A pair that fails
/// does not stop the next ones (what they load is kept, so the init container's retry only
/// has the failed pair left), except when the run is stopped. The first failure decides the
/// exit code; its message names the pair and the other failures.
async fn run_pairs(
    cfgs: &[Config],
    current: &Current,
    cancel: &Cancel,
    note: Option<String>,
) -> Result<(), Error> {
    let n = cfgs.len();
    let mut failed: Vec<(usize, Error)> = Vec::new();
    for (i, cfg) in cfgs.iter().enumerate() {
        let label = label(cfgs, i);
        // A stop between two pairs: the next one is not started (listing it, or creating its
        // DEST, would race the stop).
        if let Some(kind) = cancel.reason() {
            return Err(Error::new(
                kind,
                "stopped before this pair was started; a rerun loads it",
            )
            .context(label));
        }
        let pair = (n > 1).then_some(i + 1);
        let reporter = progress::reporter_for(cfg.progress, cfg.progress_interval, pair);
        current.set(reporter.clone());
        if let (0, Some(note)) = (i, &note) {
            reporter.info(note);
        }
        if n > 1 {
            reporter.info(&format!("{label}: loading"));
        }
        let r = match cfg.mode {
            Mode::Upload => upload::upload(cfg, reporter.clone(), cancel.clone()).await,
            _ => model_loader::run(cfg, reporter.clone(), cancel.clone()).await,
        };
        let Err(e) = r else { continue };
        if n == 1 {
            return Err(e);
        }
        if matches!(e.kind(), Kind::Interrupted | Kind::Terminated) || cancel.reason().is_some() {
            return Err(e.context(label));
        }
        reporter.stop();
        reporter.warn(&format!(
            "{label} failed (exit {}): {}{}",
            e.kind().exit_code(),
            e.message(),
            if i + 1 < n {
                "; going on with the next pair"
            } else {
                ""
            }
        ));
        failed.push((i, e));
    }
    let Some((first, e)) = failed.first() else {
        return Ok(());
    };
    let others: Vec<String> = failed[1..]
        .iter()
        .map(|(j, e)| format!("pair {} (exit {})", j + 1, e.kind().exit_code()))
        .collect();
    let also = if others.is_empty() {
        String::new()
    } else {
        format!("; {} also failed", others.join(", "))
    };
    let e = Error::new(
        e.kind(),
        format!(
            "{}: {}{also}; the other {} loaded, and a rerun resumes the failed ones",
            label(cfgs, *first),
            e.message(),
            progress::count(n - failed.len(), "pair")
        ),
    );
    Err(e)
}

/// `pair 2 of 3 (SRC → DEST)`, in the order they were given.
fn label(cfgs: &[Config], i: usize) -> String {
    let c = &cfgs[i];
    let (src, dest) = (c.source.to_string(), c.dest.display().to_string());
    let (src, dest) = if c.mode == Mode::Upload {
        (dest, src)
    } else {
        (src, dest)
    };
    cli::pair_label(i, cfgs.len(), &src, &dest)
}

/// `--check` over every pair: complete only if each is. With several pairs, one line per pair
/// says which are not.
fn check_pairs(cfgs: &[Config], json: bool) -> ExitCode {
    if let [cfg] = cfgs {
        return match model_loader::check(cfg) {
            Ok(msg) => offline_result(json, true, &msg),
            Err(why) => offline_result(json, false, &why),
        };
    }
    let mut lines = Vec::new();
    let mut missing = 0;
    for (i, cfg) in cfgs.iter().enumerate() {
        let line = match model_loader::check(cfg) {
            Ok(msg) => format!("{}: {msg}", label(cfgs, i)),
            Err(why) => {
                missing += 1;
                format!("{}: not complete: {why}", label(cfgs, i))
            }
        };
        lines.push(line);
    }
    offline_pairs(json, cfgs.len(), missing, lines)
}

/// The result of `--check`/`--verify` over several pairs: one line each, then the verdict.
fn offline_pairs(json: bool, n: usize, missing: usize, lines: Vec<String>) -> ExitCode {
    if json {
        return offline_result(json, missing == 0, &lines.join("; "));
    }
    for l in &lines {
        eprintln!("{l}");
    }
    if missing == 0 {
        offline_result(json, true, &format!("all {n} pairs complete"))
    } else {
        offline_result(json, false, &format!("{missing} of {n} pairs"))
    }
}

/// `--verify` over every pair: a mismatch in any (exit 6) outranks an incomplete one (exit 1).
fn verify_pairs(cfgs: &[Config], json: bool) -> ExitCode {
    if let [cfg] = cfgs {
        return match model_loader::audit(cfg) {
            Ok(msg) => offline_result(json, true, &msg),
            Err(AuditFailure::Incomplete(why)) => offline_result(json, false, &why),
            Err(AuditFailure::Mismatch(e)) => fail(&e, json),
        };
    }
    let (mut lines, mut missing, mut mismatch) = (Vec::new(), 0, None);
    for (i, cfg) in cfgs.iter().enumerate() {
        match model_loader::audit(cfg) {
            Ok(m) => lines.push(format!("{}: {m}", label(cfgs, i))),
            Err(AuditFailure::Incomplete(why)) => {
                missing += 1;
                lines.push(format!("{}: not complete: {why}", label(cfgs, i)));
            }
            Err(AuditFailure::Mismatch(e)) => {
                lines.push(format!("{}: {}", label(cfgs, i), e.message()));
                mismatch.get_or_insert(e.context(label(cfgs, i)));
            }
        }
    }
    match mismatch {
        Some(e) => {
            if !json {
                lines.iter().for_each(|l| eprintln!("{l}"));
            }
            fail(&e, json)
        }
        None => offline_pairs(json, cfgs.len(), missing, lines),
    }
}

/// The outcome of `--check` (or an incomplete `--verify`): exit 0 or 1, said as a line or, with
/// `--progress json`, as a `check` event.
fn offline_result(json: bool, complete: bool, msg: &str) -> ExitCode {
    if json {
        let event = serde_json::json!({"event": "check", "complete": complete, "message": msg});
        eprintln!("{event}");
    } else if complete {
        eprintln!("{msg}");
    } else {
        eprintln!("not complete: {msg}");
    }
    ExitCode::from(if complete { 0 } else { 1 })
}

/// Completion scripts for both names the binary is installed under (`load` is KubeAI's).
fn completions(shell: clap_complete::Shell) -> String {
    use clap_complete::Shell;
    let script = |name: &str| {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cli::command(), name, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    match shell {
        // One zsh file serves several commands through its #compdef line.
        Shell::Zsh => script("model-loader")
            .replacen("#compdef model-loader", "#compdef model-loader load", 1)
            .replace(
                "compdef _model-loader model-loader",
                "compdef _model-loader model-loader load",
            ),
        _ => script("model-loader") + &script("load"),
    }
}

/// Up to 1,024 requests in flight, each with a socket and a part file (two descriptors with
/// O_DIRECT), plus the pool's idle connections, exceed the soft limit of 1,024 that many
/// runtimes still set: raise it to the hard limit, as Go's runtime does for every program.
/// What remains of an EMFILE says so and names `ulimit -n` (see `Error::local`).
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed; no other state.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// How long a stop request waits for workers to record their progress and exit. Kubernetes
/// waits 30 s (terminationGracePeriodSeconds) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A bug must still end with an `error:` line, the termination message and a documented exit
/// code (70), never a bare abort: the release profile aborts on panic, after this hook runs.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let e = Error::new(
            Kind::Internal,
            format!(
                "internal error: {what}{at}; this is a bug in model-loader {}: please report it with the command line (secrets removed); a rerun resumes",
                env!("CARGO_PKG_VERSION")
            ),
        );
        std::process::exit(i32::from(report(&e, false)));
    }));
}

/// Resolves on SIGINT or SIGTERM (Kubernetes stops a pod with SIGTERM).
async fn interrupted() -> Kind {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => Kind::Interrupted,
        _ = term.recv() => Kind::Terminated,
    }
}

fn fail(e: &Error, json: bool) -> ExitCode {
    ExitCode::from(report(e, json))
}

/// Prints `error: …` / `caused by: …` (or, with `--progress json`, one `error` event) and
/// writes the first line to the termination log so `kubectl describe pod` shows it; returns
/// the exit code.
fn report(e: &Error, json: bool) -> u8 {
    let text = e.render();
    if json {
        eprintln!("{}", e.to_json());
    } else {
        eprintln!("{text}");
    }
    let path = std::env::var("MODEL_LOADER_TERMINATION_LOG")
        .unwrap_or_else(|_| "/dev/termination-log".into());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
    {
        use std::io::Write;
        let _ = writeln!(f, "{}", text.lines().next().unwrap_or_default());
    }
    e.kind().exit_code()
}
