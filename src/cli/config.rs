//! `Args` validated into one [`Config`] per SRC DEST pair, offline: no I/O here.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::progress::ProgressMode;
use crate::retry::RetryPolicy;
use crate::url::SourceUrl;

use super::{mistyped_url, split_patterns, Args, Filter};

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
    pub write_mode: super::WriteMode,
    pub p2p: Option<crate::remote::p2p::P2pOptions>,
    /// Folders inside `dest` that other pairs of the call load into (relative, `/`-separated):
    /// this pair's files may not land there.
    pub nested: Vec<String>,
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
            SourceUrl::Hf(_) | SourceUrl::Oci(_) => Err(Error::usage(format!(
                "{} applies to s3://, oss:// and gs:// buckets, not to {}",
                self.named("requester_pays"),
                source.scheme()
            ))),
        }
    }

    /// One [`Config`] per SRC DEST pair, all validated before anything runs: a mistake in the
    /// third pair fails the call before the first is loaded.
    pub fn into_configs(self) -> Result<Vec<Config>> {
        if !self.pairs.len().is_multiple_of(2) {
            return Err(Error::usage(format!(
                "arguments come in SRC DEST pairs, but {} were given ({}); the last one has no DEST",
                self.pairs.len(),
                self.pairs
                    .iter()
                    .map(|a| format!("{:?}", crate::redact::userinfo(a)))
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        if self.check && self.verify {
            return Err(Error::usage(format!(
                "{} and {} ask for two different things; give one",
                self.named("check"),
                self.named("verify")
            )));
        }
        self.check_ranges()?;
        let n = self.pairs.len() / 2;
        let mut out: Vec<Config> = Vec::with_capacity(n);
        for (i, pair) in self.pairs.chunks(2).enumerate() {
            let cfg = self.pair_config(&pair[0], &pair[1]).map_err(|e| {
                if n > 1 {
                    e.context(pair_label(i, n, &pair[0], &pair[1]))
                } else {
                    e
                }
            })?;
            if let Some(j) = out.iter().position(|c| same_dir(&c.dest, &cfg.dest)) {
                return Err(Error::usage(format!(
                    "pairs {} and {} both load into {}: give each pair its own DEST (one DEST \
                     holds one model; a folder inside another pair's DEST is fine)",
                    j + 1,
                    i + 1,
                    cfg.dest.display()
                )));
            }
            out.push(cfg);
        }
        let dests: Vec<PathBuf> = out.iter().map(|c| c.dest.clone()).collect();
        for c in out.iter_mut() {
            c.nested = dests.iter().filter_map(|d| inside(d, &c.dest)).collect();
        }
        Ok(out)
    }

    /// The [`Config`] of one pair.
    fn pair_config(&self, src: &str, dest: &str) -> Result<Config> {
        let (src, dest) = (src.to_string(), dest.to_string());
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
                    "SRC {src:?} is not a URL: give hf://, s3://, gs://, oss:// or oci:// (or a URL as DEST to upload a directory)"
                )))
            }
        };
        let role = if mode == Mode::Upload {
            "destination"
        } else {
            "source"
        };
        let source = SourceUrl::parse_as(&remote, role)?;
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
            filter: self.filter()?,
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
            write_mode: self.write_mode,
            p2p: self.p2p_options()?,
            nested: Vec::new(),
        })
    }

    /// `--include`/`--exclude` (or their twins); where one is not given, KServe's
    /// `STORAGE_ALLOW_PATTERNS`/`STORAGE_IGNORE_PATTERNS` stand in for it.
    fn filter(&self) -> Result<Filter> {
        use super::filter::{Patterns, Syntax};
        let pick = |given: &[String], id: &str, kserve: &'static str| {
            let given = split_patterns(given);
            if !given.is_empty() {
                return (given, self.named(id), Syntax::Hf);
            }
            match super::kserve::patterns(kserve) {
                Some(p) => (p, kserve.to_string(), Syntax::Fnmatch),
                None => (Vec::new(), self.named(id), Syntax::Hf),
            }
        };
        let (inc, inc_name, inc_syntax) = pick(&self.include, "include", "STORAGE_ALLOW_PATTERNS");
        let (exc, exc_name, exc_syntax) = pick(&self.exclude, "exclude", "STORAGE_IGNORE_PATTERNS");
        Filter::named(
            Patterns {
                list: &inc,
                name: &inc_name,
                syntax: inc_syntax,
            },
            Patterns {
                list: &exc,
                name: &exc_name,
                syntax: exc_syntax,
            },
        )
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

/// `pair 2 of 3 (s3://b/m → /mnt/models/b)`: how errors and the log name a pair.
pub fn pair_label(i: usize, n: usize, src: &str, dest: &str) -> String {
    format!(
        "pair {} of {n} ({} → {})",
        i + 1,
        crate::redact::userinfo(src),
        crate::redact::userinfo(dest)
    )
}

/// `inner` relative to `outer` when it is strictly inside it (by text, as [`same_dir`]).
fn inside(inner: &std::path::Path, outer: &std::path::Path) -> Option<String> {
    let (inner, outer) = (absolute(inner), absolute(outer));
    let rel = inner.strip_prefix(&outer).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The same folder, however spelled (`./m`, `m/`, `/abs/m`), judged by text alone: the
/// folders may not exist yet. Symlinks are not followed; each DEST's lock still keeps two
/// loaders out of one folder, but not two pairs of one call from replacing each other's model.
fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    absolute(a).components().eq(absolute(b).components())
}

/// `p` made absolute against the working directory, by text (`std::path::absolute`).
fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
