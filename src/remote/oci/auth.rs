//! Registry credentials, found where docker, podman and KServe put them, and the distribution
//! spec's token flow (a `401` with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`, then a
//! token from the realm). No secret is ever logged or put in an error: only where it came from.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Kind, Result};

/// Docker Hub's credentials are keyed by its old index URL; its API lives elsewhere.
const DOCKER_HUB_KEYS: [&str; 4] = [
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
];

/// How long a `docker-credential-*` helper may take to answer.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A user and secret for one registry, and where they were found.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub secret: String,
    /// `secret` is an identity (refresh) token, traded at the realm with an OAuth2 POST.
    pub identity_token: bool,
    /// "config.json at /path", "docker-credential-X": for the log and for error hints.
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("secret", &"***")
            .field("source", &self.source)
            .finish()
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: std::collections::HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

impl AuthEntry {
    fn is_empty(&self) -> bool {
        [&self.auth, &self.password, &self.identitytoken]
            .iter()
            .all(|v| v.as_deref().is_none_or(str::is_empty))
    }
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The auth files looked at, in order: KServe's (`KSERVE_OCI_DOCKER_CONFIG`, the projected
/// image pull secret), podman's (`REGISTRY_AUTH_FILE`), docker's (`$DOCKER_CONFIG/config.json`,
/// else `~/.docker/config.json`). The first that knows the registry wins.
pub fn auth_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for var in ["KSERVE_OCI_DOCKER_CONFIG", "REGISTRY_AUTH_FILE"] {
        if let Some(p) = crate::env::var(var) {
            out.push(PathBuf::from(p));
        }
    }
    match crate::env::var("DOCKER_CONFIG") {
        Some(dir) => out.push(Path::new(&dir).join("config.json")),
        None => {
            if let Some(home) = crate::env::var("HOME") {
                out.push(Path::new(&home).join(".docker/config.json"));
            }
        }
    }
    out
}

/// The credentials for `repository` on `registry` (`host[:port]`), from the first auth file
/// that has them.
pub fn find(registry: &str, repository: &str, files: &[PathBuf]) -> Result<Option<Credentials>> {
    for path in files {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::local("read the registry auth file", path, e)),
        };
        // Never quote the file: it holds secrets.
        let cfg: ConfigFile = serde_json::from_slice(&text).map_err(|e| {
            Error::usage(format!(
                "the registry auth file {} is not valid JSON (line {}, column {}): fix it or \
                 point the variable that names it elsewhere",
                path.display(),
                e.line(),
                e.column()
            ))
        })?;
        if let Some(c) = from_config(&cfg, registry, repository, path)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn from_config(
    cfg: &ConfigFile,
    registry: &str,
    repository: &str,
    path: &Path,
) -> Result<Option<Credentials>> {
    let keys = keys_for(registry);
    // Helpers key Docker Hub by its old index URL, as `docker login` stores it.
    let helper_key = if keys.len() > 1 {
        DOCKER_HUB_KEYS[0]
    } else {
        registry
    };
    if let Some(helper) = keys.iter().find_map(|k| cfg.cred_helpers.get(k)) {
        return helper_get(helper, helper_key).map(|c| c.filter(|c| !c.secret.is_empty()));
    }
    // With a credential store, `docker login` leaves an empty entry here: the store has it.
    // The most specific entry wins (podman keys `host/namespace` too), then the first key in
    // alphabetical order: never the hash map's order, which changes from run to run.
    let entry = cfg
        .auths
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .filter_map(|(k, v)| specificity(k, &keys, repository).map(|n| (n, k, v)))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, _, v)| v);
    match entry {
        Some(e) => decode_entry(e, registry, path).map(Some),
        None => match &cfg.creds_store {
            Some(store) if !store.is_empty() => helper_get(store, helper_key),
            _ => Ok(None),
        }
        .map(|c| c.filter(|c| !c.secret.is_empty())),
    }
}

/// The spellings a registry is keyed by: `host[:port]`, and Docker Hub's aliases.
fn keys_for(registry: &str) -> Vec<String> {
    if DOCKER_HUB_KEYS.iter().any(|k| normalize(k) == registry) {
        DOCKER_HUB_KEYS.iter().map(|k| normalize(k)).collect()
    } else {
        vec![registry.to_string()]
    }
}

/// How specifically the auth key `key` names `repository` on one of `hosts`: 0 for the host
/// alone (`reg`, `https://reg/v1/`), the namespace's length for `reg/ns` (containers-auth.json:
/// a key applies to its namespace and everything below), `None` when it does not apply.
fn specificity(key: &str, hosts: &[String], repository: &str) -> Option<usize> {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    if !hosts.contains(&host.to_ascii_lowercase()) {
        return None;
    }
    let path = path.trim_end_matches('/');
    if path.is_empty() || path == "v1" || path == "v2" {
        return Some(0);
    }
    let below = repository
        .strip_prefix(path)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    below.then_some(path.len())
}

/// `https://host:port/v1/` → `host:port` (docker writes keys with a scheme and a path).
fn normalize(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k).to_ascii_lowercase()
}

fn decode_entry(e: &AuthEntry, registry: &str, path: &Path) -> Result<Credentials> {
    let source = format!("{} ({registry})", path.display());
    let bad = |why: &str| {
        Error::usage(format!(
            "the entry for {registry} in {} {why}: log in again (docker login / podman login) \
             or fix the file",
            path.display()
        ))
    };
    let (user, secret) = match (&e.auth, &e.username, &e.password) {
        (Some(a), _, _) if !a.is_empty() => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| bad("has an \"auth\" that is not base64"))?;
            let raw =
                String::from_utf8(raw).map_err(|_| bad("has an \"auth\" that is not text"))?;
            let (u, p) = raw
                .split_once(':')
                .ok_or_else(|| bad("has an \"auth\" that is not user:password"))?;
            (u.to_string(), p.to_string())
        }
        (_, Some(u), Some(p)) => (u.clone(), p.clone()),
        _ => (String::new(), String::new()),
    };
    if let Some(t) = e.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Credentials {
            user,
            secret: t.clone(),
            identity_token: true,
            source,
        });
    }
    if secret.is_empty() {
        return Err(bad("has no password, auth or identity token"));
    }
    Ok(Credentials {
        user,
        secret,
        identity_token: false,
        source,
    })
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// `docker-credential-NAME get`, the registry on stdin (docker-credential-helpers' protocol).
/// A helper that knows nothing of the registry says so on stdout and exits non-zero: no
/// credentials, not an error.
fn helper_get(name: &str, registry: &str) -> Result<Option<Credentials>> {
    use std::io::Write as _;
    let program = format!("docker-credential-{name}");
    let spawned = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = spawned.map_err(|e| {
        Error::new(
            Kind::Denied,
            format!(
                "the registry auth file names the credential helper {program} for {registry}, \
                 which cannot be run: install it in the image or put the credentials in the \
                 auth file itself"
            ),
        )
        .with_source(e)
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits early closes its stdin; its exit status then says what happened.
        let _ = stdin.write_all(registry.as_bytes());
    }
    // A helper that hangs (a keychain waiting for a prompt no one sees), or a child of it
    // that keeps its output open, must not hang the pod: its output is read on a thread of
    // its own (so that a chatty helper never blocks on a full pipe) and waited for with a
    // deadline.
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(HELPER_TIMEOUT) {
        Ok(out) => out.map_err(|e| {
            Error::new(Kind::Denied, format!("{program} get failed")).with_source(e)
        })?,
        Err(_) => {
            if let Some(pid) = pid {
                // Not yet reaped: the reader thread waits on it still.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            drop(reader);
            return Err(Error::new(
                Kind::Denied,
                format!(
                    "{program} get did not answer within {} s: fix the helper, or put the \
                     credentials in the auth file itself",
                    HELPER_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    if !out.status.success() {
        return Ok(None);
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout).map_err(|_| {
        Error::new(
            Kind::Denied,
            format!("{program} get answered something that is not its JSON reply"),
        )
    })?;
    Ok(Some(Credentials {
        identity_token: reply.username == "<token>",
        user: reply.username,
        secret: reply.secret,
        source: program,
    }))
}

/// What a `401` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Reads `WWW-Authenticate` (RFC 7235 challenges; http-auth parses them). Bearer is preferred
/// when a registry offers both.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let all = http_auth::parse_challenges(header).ok()?;
    let param = |c: &http_auth::ChallengeRef<'_>, name: &str| {
        c.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_unescaped())
    };
    if let Some(c) = all.iter().find(|c| c.scheme.eq_ignore_ascii_case("bearer")) {
        return Some(Challenge::Bearer {
            realm: param(c, "realm")?,
            service: param(c, "service"),
            scope: param(c, "scope"),
        });
    }
    all.iter()
        .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
        .then_some(Challenge::Basic)
}

/// A token endpoint's reply (`token` or its OAuth2 alias `access_token`).
#[derive(Deserialize)]
pub struct TokenReply {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds; "when omitted, this defaults to 60" (distribution's token spec).
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenReply {
    pub fn value(self) -> Option<(String, u64)> {
        let ttl = self.expires_in.unwrap_or(60).max(1);
        self.token
            .or(self.access_token)
            .filter(|t| !t.is_empty())
            .map(|t| (t, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// containers-auth.json: `host/namespace` keys apply to their namespace and below, the
    /// most specific wins, and `host` and `https://host` are one key, chosen the same way on
    /// every run.
    #[test]
    fn the_most_specific_auth_entry_wins_on_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "auth.json",
            r#"{"auths": {"quay.io": {"username": "any", "password": "1"},
                "quay.io/orga": {"username": "a", "password": "2"},
                "quay.io/orgb/team": {"username": "b", "password": "3"},
                "https://reg.io": {"username": "first", "password": "4"},
                "reg.io": {"username": "second", "password": "5"}}}"#,
        );
        let files = [file];
        let user = |reg: &str, repo: &str| find(reg, repo, &files).unwrap().unwrap().user;
        for _ in 0..20 {
            assert_eq!(user("quay.io", "orga/model"), "a");
            assert_eq!(user("quay.io", "orgb/team/m"), "b");
            assert_eq!(user("quay.io", "orgb/other"), "any");
            assert_eq!(user("quay.io", "orgabc/m"), "any");
            assert_eq!(user("reg.io", "m"), "first");
        }
    }

    #[test]
    fn credentials_come_from_the_first_file_that_knows_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kserve = write(
            dir.path(),
            "kserve.json",
            &format!(
                r#"{{"auths": {{"other.io": {{"auth": "{}"}}}}}}"#,
                b64("o:p")
            ),
        );
        let docker = write(
            dir.path(),
            "config.json",
            &format!(
                r#"{{"auths": {{"https://reg.example:5000/v1/": {{"auth": "{}"}},
                    "https://index.docker.io/v1/": {{"auth": "{}"}},
                    "podman.io": {{"username": "u2", "password": "p2"}},
                    "id.io": {{"auth": "{}", "identitytoken": "refresh"}}}}}}"#,
                b64("alice:s3cr:et"),
                b64("hub:hubpw"),
                b64("x:")
            ),
        );
        let files = [dir.path().join("missing.json"), kserve, docker];
        let c = find("reg.example:5000", "m", &files).unwrap().unwrap();
        assert_eq!((c.user.as_str(), c.secret.as_str()), ("alice", "s3cr:et"));
        assert!(c.source.contains("config.json"));
        assert!(!format!("{c:?}").contains("s3cr"), "Debug hides the secret");
        assert_eq!(find("other.io", "m", &files).unwrap().unwrap().user, "o");
        assert_eq!(
            find("registry-1.docker.io", "library/x", &files)
                .unwrap()
                .unwrap()
                .user,
            "hub"
        );
        assert_eq!(
            find("podman.io", "m", &files).unwrap().unwrap().secret,
            "p2"
        );
        let id = find("id.io", "m", &files).unwrap().unwrap();
        assert!(id.identity_token && id.secret == "refresh");
        assert!(find("nowhere.io", "m", &files).unwrap().is_none());
        assert_eq!(c.basic_header(), format!("Basic {}", b64("alice:s3cr:et")));
    }

    #[test]
    fn a_broken_auth_file_is_a_usage_error_that_quotes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "c.json",
            r#"{"auths": {"r.io": {"auth": "hunter2 not base64"}}}"#,
        );
        let e = find("r.io", "m", std::slice::from_ref(&p)).unwrap_err();
        assert!(e.message().contains("not base64"), "{e}");
        assert!(!e.message().contains("hunter2"));
        let p = write(
            dir.path(),
            "d.json",
            r#"{"auths": {"r.io": {"auth": "hunter2"#,
        );
        let e = find("r.io", "m", &[p]).unwrap_err();
        assert!(e.message().contains("not valid JSON"), "{e}");
        assert!(!e.message().contains("hunter2"));
    }

    #[test]
    fn an_empty_entry_beside_a_credential_store_asks_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "c.json",
            r#"{"auths": {"ghcr.io": {}}, "credsStore": "nonexistent-store"}"#,
        );
        let e = find("ghcr.io", "m", &[p]).unwrap_err();
        assert!(
            e.message().contains("docker-credential-nonexistent-store"),
            "{e}"
        );
        let p = write(dir.path(), "d.json", r#"{"auths": {"ghcr.io": {}}}"#);
        assert!(
            find("ghcr.io", "m", &[p]).unwrap().is_none(),
            "no store: anonymous"
        );
    }

    #[test]
    fn a_missing_credential_helper_is_denied_with_a_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "c.json",
            r#"{"credHelpers": {"r.io": "nonexistent-xyz"}}"#,
        );
        let e = find("r.io", "m", &[p]).unwrap_err();
        assert_eq!(e.kind(), Kind::Denied);
        assert!(
            e.message().contains("docker-credential-nonexistent-xyz"),
            "{e}"
        );
    }

    #[test]
    fn challenges_are_parsed_bearer_first() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert!(matches!(
            parse_challenge(r#"Basic realm="x", Bearer realm="https://t/""#),
            Some(Challenge::Bearer { .. })
        ));
        assert_eq!(
            parse_challenge("Bearer service=\"x\""),
            None,
            "a realm is required"
        );
        assert_eq!(parse_challenge("garbage ,,, \""), None);
    }

    #[test]
    fn token_replies_default_to_sixty_seconds() {
        let r: TokenReply = serde_json::from_str(r#"{"access_token": "t"}"#).unwrap();
        assert_eq!(r.value(), Some(("t".into(), 60)));
        let r: TokenReply =
            serde_json::from_str(r#"{"token": "a", "access_token": "b", "expires_in": 300}"#)
                .unwrap();
        assert_eq!(r.value(), Some(("a".into(), 300)));
        let r: TokenReply = serde_json::from_str(r#"{"token": ""}"#).unwrap();
        assert_eq!(r.value(), None);
    }
}
