//! Command line and environment: clap parses, `into_config` validates into a [`Config`] with no
//! I/O. Every option has an environment twin `MODEL_LOADER_<OPTION>` so a pod spec can set
//! options without changing args (KubeAI passes only `SRC DEST`).

use std::path::PathBuf;
use std::time::Duration;

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::progress::ProgressMode;
use crate::retry::RetryPolicy;
use crate::url::SourceUrl;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Puts a model or adapter from hf://, s3://, gs:// or oss:// onto a local volume: \
             parallel ranged downloads, verified, resumable, never half-written.",
    override_usage = "model-loader [OPTIONS] <SRC> <DEST>\n       model-loader --completions <SHELL>",
    after_help = "Boolean options take --flag, --flag=true or --flag=false; their MODEL_LOADER_* twins take \
                  1/0, true/false, yes/no or on/off (any case). Patterns are comma-separated (spaces around \
                  each trimmed, commas inside {a,b} kept, \\, for a literal comma). Sizes: 64MiB, 1.5GiB, \
                  8M (binary), 8MB (decimal).\n\n\
                  Exit codes: 0 ok, 1 (--check/--verify) not complete, 2 usage or bad URL, 3 access denied, 4 not found, \
                  5 network/server errors after retries, 6 checksum or size mismatch, \
                  7 local filesystem, 130/143 interrupted (state kept for resume)."
)]
pub struct Args {
    /// What to load: hf://ORG/REPO[@REV][/PATH], s3://BUCKET[/PREFIX], gs://…, oss://… — or a
    /// local directory to upload when DEST is a URL.
    #[arg(value_name = "SRC", required_unless_present = "completions")]
    pub src: Option<String>,

    /// The directory to load into (created if missing) — or, to upload SRC, an s3://, gs:// or
    /// oss:// URL.
    #[arg(value_name = "DEST", required_unless_present = "completions")]
    pub dest: Option<String>,

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

    /// Requests in flight at once, over all files. Default: 16, or 32 when the files are
    /// small on average (more requests hide per-file latency; large files gain nothing and
    /// would only hold more buffers).
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
pub fn parse_args(argv: Vec<OsString>) -> std::result::Result<Args, ArgsFailure> {
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

/// `1/0`, `true/false`, `yes/no`, `on/off`, any case: what Kubernetes manifests and shells
/// commonly write for a boolean.
pub fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "{s:?} is not a boolean (use 1/0, true/false, yes/no or on/off)"
        )),
    }
}

/// Splits a pattern list at commas: spaces around each pattern are trimmed, a comma inside
/// `{a,b}` belongs to the glob's alternation, and `\,` is a literal comma.
pub fn split_patterns(values: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        let (mut cur, mut depth, mut chars) = (String::new(), 0usize, v.chars());
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(',') => cur.push(','),
                    Some(n) => {
                        cur.push('\\');
                        cur.push(n);
                    }
                    None => cur.push('\\'),
                },
                '{' => {
                    depth += 1;
                    cur.push(c);
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    cur.push(c);
                }
                ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        out.push(cur);
    }
    out.into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Which relative paths to fetch: `hf download` semantics.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// The patterns as given, for hints and explanations.
    include_text: Vec<String>,
    exclude_text: Vec<String>,
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(Filter {
            include: glob_set(include, "--include")?,
            exclude: glob_set(exclude, "--exclude")?,
            include_text: nonblank(include),
            exclude_text: nonblank(exclude),
        })
    }

    /// Why `path` is filtered out (None: it is selected): the first --exclude pattern that
    /// matches it, or that no --include pattern does.
    pub fn why_not(&self, path: &str) -> Option<String> {
        if let Some(set) = &self.exclude {
            if let Some(&i) = set.matches(path).first() {
                return Some(format!("--exclude {}", self.exclude_text[i]));
            }
        }
        match &self.include {
            Some(set) if !set.is_match(path) => Some("matches no --include".into()),
            _ => None,
        }
    }

    /// An include pattern that names a folder of `path` without the trailing '/' (`sub` for
    /// `sub/a.bin`): what the user most likely meant when nothing matched.
    pub fn folder_hint(&self, path: &str) -> Option<String> {
        self.include_text.iter().find_map(|p| {
            let folder = p.trim_end_matches('*');
            (!folder.is_empty()
                && !folder.ends_with('/')
                && path.starts_with(folder)
                && path[folder.len()..].starts_with('/'))
            .then(|| format!("{folder}/"))
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(path))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(path))
    }
}

fn nonblank(patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .filter(|p| !p.trim().is_empty())
        .cloned()
        .collect()
}

fn glob_set(patterns: &[String], flag: &str) -> Result<Option<GlobSet>> {
    let patterns = nonblank(patterns);
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        // A folder pattern means everything inside it, as in huggingface_hub.
        let p = if p.ends_with('/') {
            format!("{p}*")
        } else {
            p.clone()
        };
        let g = Glob::new(&p).map_err(|e| {
            Error::usage(format!("{flag} {p:?} is not a valid glob")).with_source(e)
        })?;
        b.add(g);
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::usage(format!("{flag}: invalid globs")).with_source(e))
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Remote `source` → local `dest`.
    Download,
    /// Local `dest` → remote `source` (KubeAI's loader accepts a URL as DEST).
    Upload,
    /// Is local `dest` a complete copy of `source`? Offline.
    Check,
    /// Do `dest`'s bytes still match what its manifest recorded? Offline, reads everything.
    Verify,
}

/// Validated settings for one run. `source` is always the remote side and `dest` the local
/// directory, whichever way the bytes go.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub source: SourceUrl,
    pub dest: PathBuf,
    pub filter: Filter,
    /// `None`: chosen from the plan (see `--concurrency`).
    pub concurrency: Option<usize>,
    pub chunk_size: u64,
    pub progress: ProgressMode,
    pub progress_interval: Duration,
    pub dry_run: bool,
    pub verbose: bool,
    pub force: bool,
    pub retry: RetryPolicy,
    pub read_timeout: Duration,
    pub oss_internal: bool,
    /// Requester-pays: `Some(None)` for S3/OSS, `Some(Some(project))` for GCS.
    pub requester_pays: Option<Option<String>>,
    pub lock_stale: Duration,
    pub fsync: bool,
    pub p2p: Option<crate::remote::p2p::P2pOptions>,
}

impl Args {
    /// How the user set option `id`: its variable when the value came from the environment,
    /// else the flag.
    fn named(&self, id: &str) -> String {
        if self.from_env.iter().any(|e| e == id) {
            format!("MODEL_LOADER_{}", id.to_ascii_uppercase())
        } else {
            format!("--{}", id.replace('_', "-"))
        }
    }

    /// `--requester-pays` for the source's scheme: GCS bills a named project; the Hub has no
    /// such thing.
    fn requester_pays(&self, source: &SourceUrl) -> Result<Option<Option<String>>> {
        use crate::url::BucketScheme;
        let project = self
            .billing_project
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        if !self.requester_pays {
            if project.is_some() {
                return Err(Error::usage(format!(
                    "{} is set but {} is not: set both for a requester-pays gs:// bucket",
                    self.named("billing_project"),
                    self.named("requester_pays")
                )));
            }
            return Ok(None);
        }
        match source {
            SourceUrl::Bucket {
                scheme: BucketScheme::Gs,
                ..
            } => match project {
                Some(p) => Ok(Some(Some(p))),
                None => Err(Error::usage(format!(
                    "{} on gs:// needs the project to bill: set --billing-project \
                     (MODEL_LOADER_BILLING_PROJECT), e.g. my-project",
                    self.named("requester_pays"),
                ))),
            },
            SourceUrl::Bucket { .. } => Ok(Some(None)),
            SourceUrl::Hf(_) => Err(Error::usage(format!(
                "{} applies to s3://, oss:// and gs:// buckets, not to the Hub",
                self.named("requester_pays")
            ))),
        }
    }

    pub fn into_config(self) -> Result<Config> {
        let (src, dest) = (
            self.src.clone().unwrap_or_default(),
            self.dest.clone().unwrap_or_default(),
        );
        if dest.is_empty() {
            return Err(Error::usage("DEST is empty: give a directory to load into"));
        }
        if self.check && self.verify {
            return Err(Error::usage(format!(
                "{} and {} ask for two different things; give one",
                self.named("check"),
                self.named("verify")
            )));
        }
        for (side, value) in [("SRC", &src), ("DEST", &dest)] {
            if let Some(url) = mistyped_url(value) {
                return Err(Error::usage(format!(
                    "{side} {value:?} looks like a mistyped URL (no '//' after the scheme); did you mean {url:?}? A local folder with that name would be created otherwise"
                )));
            }
        }
        let (mode, remote, local) = match (src.contains("://"), dest.contains("://")) {
            (true, false) if self.check => (Mode::Check, src, dest),
            (true, false) if self.verify => (Mode::Verify, src, dest),
            (true, false) => (Mode::Download, src, dest),
            (false, true) if !self.check && !self.verify => (Mode::Upload, dest, src),
            (true, true) => {
                return Err(Error::usage(
                    "SRC and DEST are both URLs: one side must be a local directory",
                ))
            }
            _ => {
                return Err(Error::usage(format!(
                    "SRC {src:?} is not a URL: give hf://, s3://, gs:// or oss:// (or a URL as DEST to upload a directory)"
                )))
            }
        };
        let role = if mode == Mode::Upload {
            "destination"
        } else {
            "source"
        };
        let source = SourceUrl::parse_as(&remote, role)?;
        self.check_ranges()?;
        let requester_pays = self.requester_pays(&source)?;
        let secs = |v: f64, id: &str| {
            if v.is_finite() && v > 0.0 && v < 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(Error::usage(format!(
                    "{} must be a positive number of seconds (below a day), not {v}",
                    self.named(id)
                )))
            }
        };
        Ok(Config {
            mode,
            source,
            filter: Filter::new(
                &split_patterns(&self.include),
                &split_patterns(&self.exclude),
            )?,
            dest: PathBuf::from(local),
            concurrency: self.concurrency,
            chunk_size: self.chunk_size,
            progress: self.progress,
            progress_interval: secs(self.progress_interval, "progress_interval")?,
            dry_run: self.dry_run,
            verbose: self.verbose,
            force: self.force,
            retry: RetryPolicy {
                max_attempts: self.retries,
                base: Duration::from_millis(self.retry_base_ms),
                throttle_patience: Duration::from_secs(self.throttle_patience),
                ..RetryPolicy::default()
            },
            read_timeout: secs(self.read_timeout, "read_timeout")?,
            oss_internal: self.oss_internal,
            requester_pays,
            lock_stale: secs(self.lock_stale, "lock_stale")?,
            fsync: self.fsync,
            p2p: self.p2p_options()?,
        })
    }

    /// `--p2p-proxy` checked offline: an http(s) URL; `--p2p-ca` only with a proxy.
    fn p2p_options(&self) -> Result<Option<crate::remote::p2p::P2pOptions>> {
        let Some(proxy) = self.p2p_proxy.as_deref().filter(|p| !p.trim().is_empty()) else {
            if self.p2p_ca.is_some() {
                return Err(Error::usage(format!(
                    "{} is set but {} is not: the CA is for the P2P proxy",
                    self.named("p2p_ca"),
                    self.named("p2p_proxy")
                )));
            }
            return Ok(None);
        };
        if !(proxy.starts_with("http://") || proxy.starts_with("https://")) {
            return Err(Error::usage(format!(
                "{} {:?} is not an http:// or https:// URL (e.g. http://$(HOST_IP):4001)",
                self.named("p2p_proxy"),
                crate::redact::userinfo(proxy)
            )));
        }
        Ok(Some(crate::remote::p2p::P2pOptions {
            proxy: proxy.trim().to_string(),
            ca: self.p2p_ca.clone(),
        }))
    }

    /// Integer options outside what the loader can use.
    fn check_ranges(&self) -> Result<()> {
        if let Some(c) = self.concurrency.filter(|c| !(1..=1024).contains(c)) {
            return Err(Error::usage(format!(
                "{} must be between 1 and 1024, not {c}",
                self.named("concurrency")
            )));
        }
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size) {
            return Err(Error::usage(format!(
                "{} must be between 64KiB and 4GiB, not {} bytes",
                self.named("chunk_size"),
                self.chunk_size
            )));
        }
        if self.retries == 0 {
            return Err(Error::usage(format!(
                "{} must be at least 1 (the first attempt)",
                self.named("retries")
            )));
        }
        Ok(())
    }
}

/// Smaller requests spend more on round trips than on bytes.
const MIN_CHUNK: u64 = 64 << 10;
/// Larger ones gain nothing (each is one streamed request) and lose more to a cut connection.
const MAX_CHUNK: u64 = 4 << 30;

/// `s3:/b/p`, `s3:b/p`, `hf:org/repo`: a known scheme without `//`, which would otherwise be
/// taken as a local folder named `s3:`. Returns the URL the user most likely meant.
pub fn mistyped_url(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(':')?;
    let known = ["s3", "gs", "gcs", "oss", "hf", "http", "https"];
    if !known.contains(&scheme.to_ascii_lowercase().as_str()) || rest.starts_with("//") {
        return None;
    }
    let scheme = if scheme.eq_ignore_ascii_case("gcs") {
        "gs".to_string()
    } else {
        scheme.to_ascii_lowercase()
    };
    Some(format!("{scheme}://{}", rest.trim_start_matches('/')))
}

/// `64MiB`, `1.5GiB`, `8M`, `512k`, `1048576`: IEC units (`KiB`, `MiB`, `GiB`, `TiB`) and the
/// bare letters (`k`, `M`, `G`, `T`) are binary, as in rclone and Docker; SI units (`kB`, `MB`,
/// `GB`, `TB`) are decimal. Case-insensitive; fractions allowed when the result is whole bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a size (e.g. 64MiB, 1.5GiB, 8MB, 1048576)");
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use KiB, MiB, GiB, TiB, or kB, MB, GB, TB)"
            ))
        }
    };
    let bytes = n * mult as f64;
    if bytes >= 2f64.powi(53) {
        return Err(format!("{s:?} is too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("{s:?} is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistyped_urls_are_caught_and_real_paths_are_not() {
        assert_eq!(
            mistyped_url("s3:/uploads/x").as_deref(),
            Some("s3://uploads/x")
        );
        assert_eq!(mistyped_url("s3:uploads").as_deref(), Some("s3://uploads"));
        assert_eq!(mistyped_url("GCS:/b").as_deref(), Some("gs://b"));
        assert_eq!(
            mistyped_url("hf:org/repo").as_deref(),
            Some("hf://org/repo")
        );
        for fine in [
            "s3://bkt/p",
            "/models/x",
            "./s3",
            "c:/x",
            "my:dir",
            "models",
        ] {
            assert_eq!(mistyped_url(fine), None, "{fine}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("8mb"), Ok(8_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        for bad in [
            "MiB",
            "5 parsecs",
            "1.5",
            "0.3k",
            ".5M",
            "5.M",
            "1..2M",
            "9999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }

    #[test]
    fn booleans_take_what_manifests_write() {
        for t in ["1", "true", "TRUE", "yes", "On", " on "] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "false", "False", "no", "OFF"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["", "2", "maybe", "y"] {
            assert!(parse_bool(bad).unwrap_err().contains("1/0"), "{bad}");
        }
    }

    #[test]
    fn patterns_split_at_commas_outside_braces() {
        let split =
            |v: &[&str]| split_patterns(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(split(&["*.json, sub/"]), ["*.json", "sub/"]);
        assert_eq!(split(&["*.{json,txt}", " a "]), ["*.{json,txt}", "a"]);
        assert_eq!(split(&["a\\,b.txt,c"]), ["a,b.txt", "c"]);
        assert_eq!(split(&["x\\*y"]), ["x\\*y"]);
        assert_eq!(split(&[",, ,"]), Vec::<String>::new());
        let f = Filter::new(&split(&["*.{json,txt}", "a\\,b"]), &[]).unwrap();
        assert!(f.matches("c.json") && f.matches("d.txt") && f.matches("a,b"));
        assert!(!f.matches("e.bin"));
    }

    #[test]
    fn filters_follow_hf_download() {
        let f = Filter::new(
            &["*.safetensors".into(), "*.json".into()],
            &["*/optimizer*".into()],
        )
        .unwrap();
        assert!(f.matches("model.safetensors"));
        assert!(
            f.matches("sub/dir/model.safetensors"),
            "* crosses folders, as fnmatch does"
        );
        assert!(f.matches("config.json"));
        assert!(!f.matches("README.md"));
        assert!(!f.matches("ckpt/optimizer.json"));
        assert_eq!(f.why_not("a.json"), None);
        assert_eq!(
            f.why_not("README.md").as_deref(),
            Some("matches no --include")
        );
        assert_eq!(
            f.why_not("ckpt/optimizer.json").as_deref(),
            Some("--exclude */optimizer*")
        );
        let folder = Filter::new(&["onnx/".into()], &[]).unwrap();
        assert!(folder.matches("onnx/model.onnx") && !folder.matches("model.onnx"));
        assert!(Filter::default().matches("anything"));
        let f = Filter::new(&["sub".into(), "x*".into()], &[]).unwrap();
        assert_eq!(f.folder_hint("sub/a.bin").as_deref(), Some("sub/"));
        assert_eq!(f.folder_hint("x/a.bin").as_deref(), Some("x/"));
        assert_eq!(f.folder_hint("subway/a.bin"), None);
        assert!(Filter::new(&["a[".into()], &[]).is_err());
    }

    #[test]
    fn env_twins_and_validation() {
        let parse = |args: &[&str]| {
            let argv = args.iter().map(OsString::from).collect();
            match parse_args(argv) {
                Ok(a) => a.into_config(),
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
}
