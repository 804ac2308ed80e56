//! One error type for the whole tool, classified where it arises.
//!
//! The kind decides the exit code, so a pod stuck in `Init:Error` says *why* through its exit
//! status alone; the retry hint decides whether the transfer engine tries again. Nothing here
//! decides late by walking source chains: whoever creates the error knows what it means.

use std::fmt;
use std::time::Duration;

/// What went wrong, from the user's point of view. Each kind has one stable exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad flags, a malformed URL, or a source key that cannot be a safe local path.
    Usage,
    /// Missing, wrong or insufficient credentials; a gated or private repository.
    Denied,
    /// Bucket, key, prefix, repository or revision does not exist.
    NotFound,
    /// The network or the server failed, and kept failing through the retries.
    Network,
    /// Bytes on disk do not match the size or checksum the source announced.
    Corrupt,
    /// The local filesystem refused: no space, permission, read-only volume.
    Local,
    /// SIGINT; partial state is kept for a resume.
    Interrupted,
    /// SIGTERM; partial state is kept for a resume.
    Terminated,
    /// A bug (a panic): reported with a request to file it.
    Internal,
}

impl Kind {
    /// The documented exit code (README "Exit codes").
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Usage => 2,
            Kind::Denied => 3,
            Kind::NotFound => 4,
            Kind::Network => 5,
            Kind::Corrupt => 6,
            Kind::Local => 7,
            Kind::Interrupted => 130,
            Kind::Terminated => 143,
            Kind::Internal => 70,
        }
    }

    /// A stable name for machine-readable output.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::Denied => "denied",
            Kind::NotFound => "not_found",
            Kind::Network => "network",
            Kind::Corrupt => "corrupt",
            Kind::Local => "local",
            Kind::Interrupted => "interrupted",
            Kind::Terminated => "terminated",
            Kind::Internal => "internal",
        }
    }
}

/// Whether trying the same request again can help, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Never,
    /// Transient; the server may have said how long to wait (Retry-After).
    After(Option<Duration>),
}

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A condition the download as a whole answers differently from a plain failure, named where
/// it is found so nobody has to guess it from a message later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// A ranged GET was answered 200 with the whole object: something on the way (a CDN, a
    /// corporate proxy) ignores `Range`. The run switches to one whole-body stream per file.
    RangeIgnored,
    /// The server asks to slow down (429, 503, S3's SlowDown): retried with patience measured
    /// in time, not attempts, and fewer requests in flight (`retry::Throttle`).
    Throttled,
}

/// An error with its kind, a one-line message that names the file or URL and the remedy,
/// and the underlying causes (rendered as `caused by:` lines).
pub struct Error {
    kind: Kind,
    retry: Retry,
    message: String,
    source: Option<Cause>,
    condition: Option<Condition>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            retry: Retry::Never,
            message: message.into(),
            source: None,
            condition: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }

    /// A local filesystem failure on `path`. ENOSPC, EACCES and EROFS get their remedy here so
    /// every caller names the path and nobody forgets the hint.
    pub fn local(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        let hint = match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                "; the volume is full: free space or give DEST a larger volume, then rerun to resume"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                "; check that DEST is writable by this user (fsGroup / runAsUser in a pod)"
            }
            Some(libc::EROFS) => "; DEST is on a read-only filesystem: mount it read-write",
            Some(libc::EMFILE) | Some(libc::ENFILE) => {
                "; too many open files: raise the limit (ulimit -n) or lower --concurrency"
            }
            _ => "",
        };
        Self::new(
            Kind::Local,
            format!("cannot {what} {}{hint}", path.display()),
        )
        .with_source(err)
    }

    /// Marks the error transient (retried by the transfer engine).
    pub fn transient(mut self, after: Option<Duration>) -> Self {
        self.retry = Retry::After(after);
        self
    }

    pub fn with_condition(mut self, condition: Condition) -> Self {
        self.condition = Some(condition);
        self
    }

    /// The same failure, with no condition: what a proxy says of itself (it is busy, it
    /// strips Range) is no reason for the whole run to change course.
    pub fn without_condition(mut self) -> Self {
        self.condition = None;
        self
    }

    pub fn condition(&self) -> Option<Condition> {
        self.condition
    }

    pub fn with_source(mut self, source: impl Into<Cause>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Puts more context in front of the message, keeping kind, retry hint and causes.
    pub fn context(mut self, prefix: impl fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    /// Adds `note` after the message: what else was tried, or what else holds.
    pub fn note(mut self, note: impl fmt::Display) -> Self {
        self.message = format!("{}; {note}", self.message);
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn retry(&self) -> Retry {
        self.retry
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `caused by:` chain, outermost first, with consecutive duplicates removed (reqwest
    /// and hyper often repeat the same text one level down).
    pub fn causes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as _);
        while let Some(e) = next {
            let text = e.to_string();
            if out.last() != Some(&text) && !self.message.contains(&text) {
                out.push(text);
            }
            next = e.source();
        }
        out
    }

    /// The full text shown to users: `error: …` then `caused by: …` lines.
    /// The error as one JSON event (`--progress json`), redacted as [`Error::render`] is.
    pub fn to_json(&self) -> String {
        let redact = crate::redact::userinfo;
        serde_json::json!({
            "event": "error",
            "kind": self.kind.name(),
            "exit_code": self.kind.exit_code(),
            "message": redact(&self.message),
            "causes": self.causes().iter().map(|c| redact(c)).collect::<Vec<_>>(),
        })
        .to_string()
    }

    pub fn render(&self) -> String {
        let mut s = format!("error: {}", self.message);
        for c in self.causes() {
            s.push_str("\ncaused by: ");
            s.push_str(&c);
        }
        // Last line of defence: no `user:password@` of any URL reaches the user's terminal.
        crate::redact::userinfo(&s)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("retry", &self.retry)
            .field("message", &self.message)
            .field("causes", &self.causes())
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let codes: Vec<u8> = [
            Kind::Usage,
            Kind::Denied,
            Kind::NotFound,
            Kind::Network,
            Kind::Corrupt,
            Kind::Local,
            Kind::Interrupted,
            Kind::Terminated,
            Kind::Internal,
        ]
        .iter()
        .map(|k| k.exit_code())
        .collect();
        assert_eq!(codes, [2, 3, 4, 5, 6, 7, 130, 143, 70]);
    }

    #[test]
    fn render_lists_causes_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = Error::local("write", std::path::Path::new("/d/x.bin"), io);
        assert_eq!(e.kind(), Kind::Local);
        let r = e.render();
        assert!(r.starts_with("error: cannot write /d/x.bin; the volume is full"));
        assert_eq!(r.matches("caused by:").count(), 1, "{r}");
    }
}
