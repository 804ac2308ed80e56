//! Command line and environment: clap parses the flags (here), `config` validates them into
//! one [`Config`] per SRC DEST pair with no I/O. Every option has an environment twin
//! `MODEL_LOADER_<OPTION>` so a pod spec can set options without changing args (KubeAI passes
//! only `SRC DEST`; KServe passes `SRC DEST [SRC DEST …]` and its own variables, `kserve`).

mod config;
mod filter;
pub mod kserve;
mod values;

use std::path::PathBuf;

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser};

use crate::error::Error;
use crate::progress::ProgressMode;

pub use config::{pair_label, Config, Mode};
pub use filter::{split_patterns, Filter};
pub use values::{mistyped_url, parse_bool, parse_size, WriteMode};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Puts a model or adapter from hf://, s3://, gs://, oss:// or oci:// onto a local volume: \
             parallel ranged downloads, verified, resumable, never half-written.",
    override_usage = "model-loader [OPTIONS] <SRC> <DEST> [<SRC> <DEST>...]\n       model-loader --completions <SHELL>",
    after_help = "Boolean options take --flag, --flag=true or --flag=false; their MODEL_LOADER_* twins take \
                  1/0, true/false, yes/no or on/off (any case). Patterns are comma-separated (spaces around \
                  each trimmed, commas inside {a,b} kept, \\, for a literal comma). Sizes: 64MiB, 1.5GiB, \
                  8M (binary), 8MB (decimal).\n\n\
                  Exit codes: 0 ok, 1 (--check/--verify) not complete, 2 usage or bad URL, 3 access denied, 4 not found, \
                  5 network/server errors after retries, 6 checksum or size mismatch, \
                  7 local filesystem, 130/143 interrupted (state kept for resume).\n\n\
                  Registries (oci://): credentials from KSERVE_OCI_DOCKER_CONFIG, REGISTRY_AUTH_FILE or \
                  $DOCKER_CONFIG/config.json; MODEL_LOADER_OCI_INSECURE_REGISTRIES=host[:port],… (or *) \
                  lets those use plain HTTP or unchecked TLS."
)]
pub struct Args {
    /// SRC DEST, or several pairs (KServe loads several models in one init container): each
    /// pair is loaded in turn into its own DEST, with its own lock and manifest. SRC is what to
    /// load: hf://ORG/REPO[@REV][/PATH], s3://BUCKET[/PREFIX], gs://…, oss://…,
    /// oci://REGISTRY/REPOSITORY[:TAG|@sha256:…]; DEST the directory to load into (created if
    /// missing). To upload, SRC is a local directory and DEST an s3://, gs://, oss:// or
    /// oci://…:TAG URL (a registry gets a CNCF ModelPack artifact).
    #[arg(
        value_names = ["SRC", "DEST"],
        num_args = 2..,
        required_unless_present = "completions"
    )]
    pub pairs: Vec<String>,

    /// Check, offline, that DEST holds a complete copy of SRC (its manifest names SRC and every
    /// file is there with its size); exit 0 if so, 1 if not. For readiness probes.
    #[arg(long, env = "MODEL_LOADER_CHECK")]
    pub check: bool,

    /// Audit, offline: re-hash every file in DEST against the checksum its manifest records
    /// (the size, where none was available) and report each mismatch; exit 0 if all match,
    /// 6 if any does not, 1 if DEST is not a complete load of SRC. Reads every byte.
    #[arg(long, env = "MODEL_LOADER_VERIFY")]
    pub verify: bool,

    /// Print a shell completion script and exit.
    #[arg(long, value_name = "SHELL")]
    pub completions: Option<clap_complete::Shell>,

    /// Only fetch files whose path (relative to SRC) matches one of these globs; `*` also
    /// matches `/`, as in `hf download`, and `sub/` means everything in it. Repeatable, and
    /// comma-separated (flag and env twin alike).
    #[arg(long, env = "MODEL_LOADER_INCLUDE", value_name = "GLOBS")]
    pub include: Vec<String>,

    /// Skip files whose relative path matches one of these globs. Repeatable, comma-separated.
    #[arg(long, env = "MODEL_LOADER_EXCLUDE", value_name = "GLOBS")]
    pub exclude: Vec<String>,

    /// Requests in flight at once, over all files, as given. Default: up to 16, ramped (2 to
    /// start; all 16 if each stream moves less than 150 MB/s in the first 150 ms of bytes, else
    /// doubled while that raises the throughput: a host that is itself the limit keeps fewer),
    /// or 32 from the start when the files are small on average (more requests hide per-file
    /// latency).
    #[arg(long, env = "MODEL_LOADER_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Size of one ranged request, 64KiB to 4GiB: e.g. 64MiB, 1.5GiB, 8M, 1048576.
    #[arg(long, env = "MODEL_LOADER_CHUNK_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub chunk_size: u64,

    /// Progress output on stderr: bars on a terminal, log lines in a pod (auto), JSON events.
    #[arg(long, env = "MODEL_LOADER_PROGRESS", value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Seconds between progress lines in log and json modes.
    #[arg(long, env = "MODEL_LOADER_PROGRESS_INTERVAL", default_value_t = 5.0)]
    pub progress_interval: f64,

    /// List what would be fetched (files, sizes, total) on stdout; write nothing.
    #[arg(long, env = "MODEL_LOADER_DRY_RUN")]
    pub dry_run: bool,

    /// More detail: `--dry-run` also lists what the patterns left out, and why.
    #[arg(short, long, env = "MODEL_LOADER_VERBOSE")]
    pub verbose: bool,

    /// Fetch every file again, ignoring what DEST holds.
    #[arg(long, env = "MODEL_LOADER_FORCE")]
    pub force: bool,

    /// Attempts per request before giving up (transient errors only).
    #[arg(long, env = "MODEL_LOADER_RETRIES", default_value_t = 8)]
    pub retries: u32,

    /// First retry delay in milliseconds; doubles per attempt with jitter, up to 30 s.
    #[arg(
        long,
        env = "MODEL_LOADER_RETRY_BASE_MS",
        default_value_t = 250,
        hide = true
    )]
    pub retry_base_ms: u64,

    /// How long a server that keeps asking to slow down (429, 503 SlowDown) is waited for
    /// before the run gives up, in seconds; such replies do not count against --retries.
    #[arg(
        long,
        env = "MODEL_LOADER_THROTTLE_PATIENCE",
        default_value_t = 600,
        value_name = "SECS"
    )]
    pub throttle_patience: u64,

    /// Seconds after which another loader's lock on DEST, without a heartbeat, counts as dead.
    #[arg(
        long,
        env = "MODEL_LOADER_LOCK_STALE",
        default_value_t = 30.0,
        hide = true
    )]
    pub lock_stale: f64,

    /// fsync each file before its rename (and each chunk before its journal record). `false`
    /// is faster on slow disks but a power loss (not a crash or kill) may then lose data the
    /// manifest vouches for.
    #[arg(long, env = "MODEL_LOADER_FSYNC", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub fsync: bool,

    /// How files are written: `auto` chooses per DEST — through the page cache when the model
    /// fits in the memory free here, so the engine that reads it next finds it in memory;
    /// around it (O_DIRECT) when it does not; never O_DIRECT on network, FUSE, tmpfs or overlay
    /// filesystems. The choice and its reason are logged.
    #[arg(long, env = "MODEL_LOADER_WRITE_MODE", value_enum, default_value_t = WriteMode::Auto)]
    pub write_mode: WriteMode,

    /// oss:// only: use the `-internal` (VPC) endpoint derived from OSS_REGION/OSS_ENDPOINT.
    #[arg(long, env = "MODEL_LOADER_OSS_INTERNAL")]
    pub oss_internal: bool,

    /// The bucket is requester-pays: this account pays for the reads (S3
    /// `x-amz-request-payer`, OSS `x-oss-request-payer`; gs:// needs --billing-project).
    #[arg(long, env = "MODEL_LOADER_REQUESTER_PAYS")]
    pub requester_pays: bool,

    /// gs:// with --requester-pays: the Google Cloud project billed (`userProject`).
    #[arg(long, env = "MODEL_LOADER_BILLING_PROJECT", value_name = "PROJECT")]
    pub billing_project: Option<String>,

    /// Send object reads (S3/OSS presigned GETs, GCS media reads, the Hub's CDN) through this
    /// P2P proxy, a node's Dragonfly dfdaemon (e.g. http://$(HOST_IP):4001). Listings, tokens
    /// and API calls stay direct; a proxy that fails has its requests sent direct.
    #[arg(long, env = "MODEL_LOADER_P2P_PROXY", value_name = "URL")]
    pub p2p_proxy: Option<String>,

    /// The CA certificate (PEM) the P2P proxy signs intercepted HTTPS with.
    #[arg(long, env = "MODEL_LOADER_P2P_CA", value_name = "FILE")]
    pub p2p_ca: Option<PathBuf>,

    /// Seconds a response body may stall before the request is cut and retried.
    #[arg(long, env = "MODEL_LOADER_READ_TIMEOUT", default_value_t = 30.0)]
    pub read_timeout: f64,

    /// Ids of the options whose value came from their `MODEL_LOADER_*` variable, so that an
    /// error names what the user actually set.
    #[arg(skip)]
    pub from_env: Vec<String>,
}

/// Why the command line did not yield [`Args`].
pub enum ArgsFailure {
    /// `--help` or `--version`: print it (stdout) and exit 0.
    Display(clap::Error),
    /// A usage error (exit 2), naming the environment variable when that was the culprit.
    Usage(Error),
}

/// The clap command with the project's conventions applied: every boolean option takes an
/// optional `=BOOL` so the command line can override an env twin set to true.
pub fn command() -> clap::Command {
    Args::command().mut_args(boolean_flag)
}

fn boolean_flag(a: Arg) -> Arg {
    let set_true = matches!(a.get_action(), ArgAction::SetTrue);
    let named_bool = a
        .get_value_names()
        .is_some_and(|v| v.iter().any(|n| n == "BOOL"));
    if !set_true && !named_bool {
        return a;
    }
    let a = a
        .action(ArgAction::Set)
        .num_args(0..=1)
        .require_equals(true)
        .default_missing_value("true")
        .value_name("BOOL")
        .value_parser(parse_bool);
    if set_true {
        a.default_value("false")
    } else {
        a
    }
}

/// Parses `argv` and the `MODEL_LOADER_*` variables.
pub fn parse_args(argv: Vec<OsString>) -> Result<Args, ArgsFailure> {
    use clap::error::ErrorKind;
    let cmd = command();
    let matches = match cmd.clone().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return Err(ArgsFailure::Display(e))
        }
        Err(e) => return Err(ArgsFailure::Usage(blame_env(&cmd, &argv, e))),
    };
    let mut args =
        Args::from_arg_matches(&matches).map_err(|e| ArgsFailure::Usage(clap_usage(&e)))?;
    args.from_env = cmd
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| matches.value_source(id) == Some(ValueSource::EnvVariable))
        .map(str::to_string)
        .collect();
    Ok(args)
}

/// A clap error as our usage error: clap's own text (usage and hint included), exit 2.
fn clap_usage(e: &clap::Error) -> Error {
    let text = e.render().to_string();
    Error::usage(text.trim_start_matches("error: ").trim_end().to_string())
}

/// When the command line parses on its own, an invalid value came from an env twin: name the
/// variable, its value and the accepted form, instead of the flag the user never typed.
fn blame_env(cmd: &clap::Command, argv: &[OsString], e: clap::Error) -> Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return clap_usage(&e);
    }
    let bare = cmd.clone().mut_args(|a| a.env(None));
    if bare.try_get_matches_from(argv).is_err() {
        return clap_usage(&e);
    }
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return clap_usage(&e);
    };
    let culprit = cmd.get_arguments().find_map(|a| {
        let long = a.get_long()?;
        let var = a.get_env()?.to_str()?;
        let rest = shown.strip_prefix("--")?.strip_prefix(long)?;
        (rest.is_empty() || rest.starts_with([' ', '['])).then_some((long, var))
    });
    let Some((long, var)) = culprit else {
        return clap_usage(&e);
    };
    let value = std::env::var_os(var).unwrap_or_default();
    let why = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
        _ => std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "not a valid value".into()),
    };
    Error::usage(format!(
        "environment variable {var}={value:?} is not valid for --{long}: {why}; fix or unset it (--{long} on the command line overrides it)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_twins_and_validation() {
        let parse = |args: &[&str]| {
            let argv = args.iter().map(OsString::from).collect();
            match parse_args(argv) {
                Ok(a) => a.into_configs().map(|mut c| c.remove(0)),
                Err(ArgsFailure::Usage(e)) => Err(e),
                Err(ArgsFailure::Display(e)) => panic!("{e}"),
            }
        };
        let c = parse(&[
            "load",
            "s3://bkt/p",
            "/tmp/x",
            "--include",
            "*.json",
            "--chunk-size",
            "8MiB",
        ])
        .unwrap();
        assert_eq!(c.chunk_size, 8 << 20);
        assert!(c.filter.matches("a.json") && !c.filter.matches("a.bin"));
        assert_eq!(
            parse(&["m", "ftp://x", "/d"]).unwrap_err().kind(),
            crate::error::Kind::Usage
        );
        assert_eq!(
            parse(&["m", "s3://bkt", "/d", "--concurrency", "0"])
                .unwrap_err()
                .kind(),
            crate::error::Kind::Usage
        );
        assert_eq!(
            parse(&["m", "s3://bkt", "s3://ckt"]).unwrap_err().kind(),
            crate::error::Kind::Usage
        );
        assert_eq!(
            parse(&["m", "./dir", "/d"]).unwrap_err().kind(),
            crate::error::Kind::Usage
        );
        let up = parse(&["load", "./model", "s3://bkt/p"]).unwrap();
        assert_eq!(
            (up.mode, up.dest.to_str().unwrap()),
            (Mode::Upload, "./model")
        );
        assert_eq!(
            parse(&["load", "--check", "s3://bkt/p", "/d"])
                .unwrap()
                .mode,
            Mode::Check
        );
        assert_eq!(
            parse(&["load", "--check=false", "s3://bkt/p", "/d"])
                .unwrap()
                .mode,
            Mode::Download
        );
        let c = parse(&[
            "m",
            "--force",
            "--dry-run=yes",
            "--fsync=0",
            "s3://bkt",
            "/d",
        ])
        .unwrap();
        assert!(c.force && c.dry_run && !c.fsync);
        let e = parse(&["m", "--check", "--verify", "s3://bkt", "/d"]).unwrap_err();
        assert!(
            e.message().contains("--check and --verify"),
            "{}",
            e.message()
        );
        let e = parse(&["m", "--chunk-size", "64GiB", "s3://bkt", "/d"]).unwrap_err();
        assert!(
            e.message().contains("--chunk-size must be between"),
            "{}",
            e.message()
        );
        let e = parse(&["m", "--force=maybe", "s3://bkt", "/d"]).unwrap_err();
        assert!(e.message().contains("1/0"), "{}", e.message());
    }

    #[test]
    fn pairs_like_kserve_passes_them() {
        let parse = |args: &[&str]| match parse_args(args.iter().map(OsString::from).collect()) {
            Ok(a) => a.into_configs(),
            Err(ArgsFailure::Usage(e)) => Err(e),
            Err(ArgsFailure::Display(e)) => panic!("{e}"),
        };
        let c = parse(&[
            "m",
            "s3://bkt/x",
            "/mnt/models",
            "hf://o/r:v1",
            "/mnt/models/lora",
        ])
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].source.to_string(), "s3://bkt/x");
        assert_eq!(c[1].source.to_string(), "hf://o/r@v1");
        assert_eq!(c[1].dest, std::path::Path::new("/mnt/models/lora"));
        let e = parse(&["m", "s3://bkt", "/d", "s3://ckt"]).unwrap_err();
        assert!(e.message().contains("SRC DEST pairs"), "{}", e.message());
        let e = parse(&["m", "s3://bkt", "/d"]).map(|c| c.len()).unwrap();
        assert_eq!(e, 1);
        let e = parse(&["m", "s3://bkt", "/d", "ftp://b", "/e"]).unwrap_err();
        assert!(
            e.message().starts_with("pair 2 of 2 (ftp://b → /e): "),
            "{}",
            e.message()
        );
        for same in ["/d/", "/d/.", "/x/../d"] {
            let r = parse(&["m", "s3://bkt", "/d", "s3://ckt", same]);
            if same.contains("..") {
                assert!(r.is_ok(), "'..' is not resolved without I/O");
                continue;
            }
            let e = r.unwrap_err();
            assert!(
                e.message().contains("pairs 1 and 2 both load into"),
                "{}",
                e.message()
            );
        }
        let c = parse(&["m", "--check", "s3://bkt", "/d", "s3://ckt", "/e"]).unwrap();
        assert!(c.iter().all(|c| c.mode == Mode::Check));
    }
}
