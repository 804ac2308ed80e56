//! Entry point: parse, run, map the error to its exit code and message. Also installed as
//! `load` (KubeAI execs `load SRC DEST`), which behaves identically.

use std::process::ExitCode;
use std::time::Duration;

use model_loader::cancel::Cancel;
use model_loader::cli::{self, ArgsFailure, Mode};
use model_loader::error::{Error, Kind};
use model_loader::progress::ProgressMode;

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
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => return fail(&e, json),
    };
    if cfg.mode == Mode::Verify {
        return match model_loader::audit(&cfg) {
            Ok(msg) => offline_result(json, true, &msg),
            Err(model_loader::AuditFailure::Incomplete(why)) => offline_result(json, false, &why),
            Err(model_loader::AuditFailure::Mismatch(e)) => fail(&e, json),
        };
    }
    if cfg.mode == Mode::Check {
        return match model_loader::check(&cfg) {
            Ok(msg) => offline_result(json, true, &msg),
            Err(why) => offline_result(json, false, &why),
        };
    }
    let reporter = model_loader::progress::reporter(cfg.progress, cfg.progress_interval);
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
    let result = rt.block_on(async {
        let work = async {
            match cfg.mode {
                Mode::Upload => {
                    model_loader::upload::upload(&cfg, reporter.clone(), cancel.clone()).await
                }
                _ => model_loader::run(&cfg, reporter.clone(), cancel.clone()).await,
            }
        };
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r.map(|_| ()),
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
                    reporter.stop();
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
            reporter.stop();
            fail(&e, json)
        }
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
