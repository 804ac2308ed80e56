//! Command line and environment: clap parses, `into_config` validates into a [`Config`] with no
//! I/O. Every option has an environment twin `MODEL_LOADER_<OPTION>` so a pod spec can set
//! options without changing args (KubeAI passes only `SRC DEST`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::progress::ProgressMode;
use crate::transfer::retry::RetryPolicy;
use crate::url::SourceUrl;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Puts a model or adapter from hf://, s3://, gs:// or oss:// onto a local volume: \
             parallel ranged downloads, verified, resumable, never half-written.",
    after_help = "Exit codes: 0 ok, 1 (--check/--verify) not complete, 2 usage or bad URL, 3 access denied, 4 not found, \
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
    #[arg(long, env = "MODEL_LOADER_VERIFY", conflicts_with = "check")]
    pub verify: bool,

    /// Print a shell completion script and exit.
    #[arg(long, value_name = "SHELL", exclusive = true)]
    pub completions: Option<clap_complete::Shell>,

    /// Only fetch files whose path (relative to SRC) matches one of these globs; `*` also
    /// matches `/`, as in `hf download`. Repeatable; the env twin is comma-separated.
    #[arg(
        long,
        env = "MODEL_LOADER_INCLUDE",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub include: Vec<String>,

    /// Skip files whose relative path matches one of these globs. Repeatable.
    #[arg(
        long,
        env = "MODEL_LOADER_EXCLUDE",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub exclude: Vec<String>,

    /// Requests in flight at once, over all files. Default: 16, or 32 when the files are
    /// small on average (more requests hide per-file latency; large files gain nothing and
    /// would only hold more buffers).
    #[arg(long, env = "MODEL_LOADER_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Size of one ranged request, e.g. 64MiB, 8M, 1048576.
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

    /// Seconds a response body may stall before the request is cut and retried.
    #[arg(long, env = "MODEL_LOADER_READ_TIMEOUT", default_value_t = 30.0)]
    pub read_timeout: f64,
}

/// Which relative paths to fetch: `hf download` semantics.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(Filter {
            include: glob_set(include, "--include")?,
            exclude: glob_set(exclude, "--exclude")?,
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(path))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(path))
    }
}

fn glob_set(patterns: &[String], flag: &str) -> Result<Option<GlobSet>> {
    let patterns: Vec<&String> = patterns.iter().filter(|p| !p.trim().is_empty()).collect();
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
    pub force: bool,
    pub retry: RetryPolicy,
    pub read_timeout: Duration,
    pub oss_internal: bool,
    pub lock_stale: Duration,
    pub fsync: bool,
}

impl Args {
    pub fn into_config(self) -> Result<Config> {
        let (src, dest) = (self.src.unwrap_or_default(), self.dest.unwrap_or_default());
        if dest.is_empty() {
            return Err(Error::usage("DEST is empty: give a directory to load into"));
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
        let source = SourceUrl::parse(&remote)?;
        if self.concurrency.is_some_and(|c| !(1..=1024).contains(&c)) {
            return Err(Error::usage("--concurrency must be between 1 and 1024"));
        }
        if self.chunk_size < 64 * 1024 {
            return Err(Error::usage("--chunk-size must be at least 64KiB"));
        }
        let secs = |v: f64, flag: &str| {
            if v.is_finite() && v > 0.0 && v < 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(Error::usage(format!(
                    "{flag} must be a positive number of seconds"
                )))
            }
        };
        if self.retries == 0 {
            return Err(Error::usage(
                "--retries must be at least 1 (the first attempt)",
            ));
        }
        Ok(Config {
            mode,
            source,
            filter: Filter::new(&self.include, &self.exclude)?,
            dest: PathBuf::from(local),
            concurrency: self.concurrency,
            chunk_size: self.chunk_size,
            progress: self.progress,
            progress_interval: secs(self.progress_interval, "--progress-interval")?,
            dry_run: self.dry_run,
            force: self.force,
            retry: RetryPolicy {
                max_attempts: self.retries,
                base: Duration::from_millis(self.retry_base_ms),
                ..RetryPolicy::default()
            },
            read_timeout: secs(self.read_timeout, "--read-timeout")?,
            oss_internal: self.oss_internal,
            lock_stale: secs(self.lock_stale, "--lock-stale")?,
            fsync: self.fsync,
        })
    }
}

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

/// `64MiB`, `8M`, `512k`, `1G`, `1048576`: binary units, case-insensitive, optional `B`/`iB`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
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
        for fine in ["s3://b/p", "/models/x", "./s3", "c:/x", "my:dir", "models"] {
            assert_eq!(mistyped_url(fine), None, "{fine}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
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
        let folder = Filter::new(&["onnx/".into()], &[]).unwrap();
        assert!(folder.matches("onnx/model.onnx") && !folder.matches("model.onnx"));
        assert!(Filter::default().matches("anything"));
        assert!(Filter::new(&["a[".into()], &[]).is_err());
    }

    #[test]
    fn env_twins_and_validation() {
        let parse = |args: &[&str]| {
            Args::try_parse_from(args.iter().copied())
                .unwrap()
                .into_config()
        };
        let c = parse(&[
            "load",
            "s3://b/p",
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
            parse(&["m", "s3://b", "/d", "--concurrency", "0"])
                .unwrap_err()
                .kind(),
            crate::error::Kind::Usage
        );
        assert_eq!(
            parse(&["m", "s3://b", "s3://c"]).unwrap_err().kind(),
            crate::error::Kind::Usage
        );
        assert_eq!(
            parse(&["m", "./dir", "/d"]).unwrap_err().kind(),
            crate::error::Kind::Usage
        );
        let up = parse(&["load", "./model", "s3://b/p"]).unwrap();
        assert_eq!(
            (up.mode, up.dest.to_str().unwrap()),
            (Mode::Upload, "./model")
        );
        assert_eq!(
            parse(&["load", "--check", "s3://b/p", "/d"]).unwrap().mode,
            Mode::Check
        );
    }
}
