//! Entry point: parse, run, map the error to its exit code and message. Also installed as
//! `load` (KubeAI execs `load SRC DEST`), which behaves identically.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use model_loader::cli::{Args, Mode};
use model_loader::error::{Error, Kind};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(shell) = args.completions {
        let mut cmd = <Args as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "model-loader", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if cfg.mode == Mode::Check {
        return match model_loader::check(&cfg) {
            Ok(msg) => {
                eprintln!("{msg}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("not complete: {why}");
                ExitCode::from(1)
            }
        };
    }
    let reporter = model_loader::progress::reporter(cfg.progress, cfg.progress_interval);
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
            return fail(&Error::new(Kind::Local, "cannot start the async runtime").with_source(e))
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = async {
                match cfg.mode {
                    Mode::Upload => model_loader::upload::upload(&cfg, reporter.clone()).await,
                    _ => model_loader::run(&cfg, reporter.clone()).await,
                }
            } => r.map(|_| ()),
            kind = interrupted() => Err(Error::new(kind, "interrupted; finished ranges are kept and a rerun resumes")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
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

/// Prints `error: …` / `caused by: …` and writes the first line to the termination log so
/// `kubectl describe pod` shows it.
fn fail(e: &Error) -> ExitCode {
    let text = e.render();
    eprintln!("{text}");
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
    ExitCode::from(e.kind().exit_code())
}
