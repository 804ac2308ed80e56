//! `hf://[datasets/|spaces/]ORG/REPO[@REVISION][/PATH]`: a small Hugging Face Hub client.
//!
//! The revision is resolved to a commit once; the tree is listed recursively at that commit
//! (following `Link: rel="next"`) and every file is read at that commit, so the snapshot is
//! consistent even if the branch moves mid-download. Regular files come from the Hub itself;
//! LFS/Xet files redirect to a signed CDN URL, which is cached per file and re-resolved when
//! it expires. The token goes only to the Hub's own origin, never to the CDN.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, ETAG, LOCATION, RANGE};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;

use super::http::{self, header, uri_encode, ClientOptions};
use super::types::{ByteRange, Checksum, Fetched, Listing, RemoteFile, Source};
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;
use crate::url::{HfRepoType, HfUrl};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Relative redirects (renamed repos) followed before giving up.
const MAX_REDIRECTS: usize = 5;

/// Where the token came from, for the log and for error hints; never the token itself.
#[derive(Clone)]
struct Token {
    value: String,
    source: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"***")
            .field("source", &self.source)
            .finish()
    }
}

pub struct Hf {
    client: reqwest::Client,
    endpoint: Url,
    token: Option<Token>,
    url: HfUrl,
    commit: String,
    /// Signed CDN URL per repo path, reused by every chunk of that file until it expires.
    cdn: Mutex<HashMap<String, Url>>,
    /// Per repo path: held while one range resolves the file, so the ranges that start with
    /// it wait for its CDN URL instead of each resolving (every `/resolve` counts against the
    /// Hub's per-IP quota).
    resolving: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// Repo paths the Hub (or a mirror) serves itself, without a redirect: every range must
    /// ask it, so they do not wait for one another.
    served: Mutex<std::collections::HashSet<String>>,
    /// CDN reads through a P2P proxy (`--p2p-proxy`); the token never goes there.
    pub(crate) p2p: Option<std::sync::Arc<super::p2p::P2p>>,
}

#[derive(Deserialize)]
struct RevisionInfo {
    sha: String,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    oid: String,
    lfs: Option<LfsInfo>,
}

#[derive(Deserialize)]
struct LfsInfo {
    oid: String,
    size: u64,
}

impl Hf {
    /// Builds the client, finds the token, and resolves the revision to a commit.
    pub async fn open(url: &HfUrl, opts: &ClientOptions, reporter: &dyn Reporter) -> Result<Self> {
        let raw = crate::env::var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let endpoint = Url::parse(raw.trim_end_matches('/')).map_err(|e| {
            Error::usage(format!(
                "HF_ENDPOINT={:?} is not a URL; write it like https://hf-mirror.com",
                crate::redact::userinfo(&raw)
            ))
            .with_source(e)
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(Error::usage(format!(
                "HF_ENDPOINT={:?} must be an http:// or https:// URL",
                crate::redact::userinfo(&raw)
            )));
        }
        let token = find_token()?;
        match &token {
            Some(t) => reporter.info(&format!(
                "hf: endpoint {}, token {} from {}",
                crate::redact::userinfo(endpoint.as_str().trim_end_matches('/')),
                crate::redact::secret(&t.value, 3),
                t.source
            )),
            None => reporter.info(&format!(
                "hf: endpoint {}, no token (HF_TOKEN, HF_TOKEN_PATH, $HF_HOME/token): anonymous",
                crate::redact::userinfo(endpoint.as_str().trim_end_matches('/'))
            )),
        }
        let mut hf = Hf {
            client: http::client(opts)?,
            endpoint,
            token,
            url: url.clone(),
            commit: String::new(),
            cdn: Mutex::new(HashMap::new()),
            resolving: Mutex::new(HashMap::new()),
            served: Mutex::new(Default::default()),
            p2p: None,
        };
        hf.commit = hf.resolve_revision().await?;
        if hf.commit != hf.url.revision {
            reporter.info(&format!(
                "hf: {}@{} is commit {}",
                hf.url.repo, hf.url.revision, hf.commit
            ));
        }
        Ok(hf)
    }

    fn kind_plural(&self) -> &'static str {
        match self.url.repo_type {
            HfRepoType::Model => "models",
            HfRepoType::Dataset => "datasets",
            HfRepoType::Space => "spaces",
        }
    }

    fn url_prefix(&self) -> &'static str {
        match self.url.repo_type {
            HfRepoType::Model => "",
            HfRepoType::Dataset => "datasets/",
            HfRepoType::Space => "spaces/",
        }
    }

    fn base(&self) -> String {
        self.endpoint.as_str().trim_end_matches('/').to_string()
    }

    /// How a repository file is named in messages: `hf://org/repo@rev/path`.
    fn display(&self, path: &str) -> String {
        let mut u = self.url.clone();
        u.path = path.to_string();
        crate::url::SourceUrl::Hf(u).to_string()
    }

    fn same_origin(&self, u: &Url) -> bool {
        u.scheme() == self.endpoint.scheme()
            && u.host_str() == self.endpoint.host_str()
            && u.port_or_known_default() == self.endpoint.port_or_known_default()
    }

    /// One GET or HEAD to the Hub. The token is attached only for the Hub's own origin;
    /// redirects are not followed here.
    async fn hub_request(
        &self,
        method: reqwest::Method,
        url: &Url,
        range: Option<ByteRange>,
        what: &str,
    ) -> Result<Response> {
        let mut req = self.client.request(method, url.clone());
        if let (Some(t), true) = (&self.token, self.same_origin(url)) {
            req = req.header(AUTHORIZATION, format!("Bearer {}", t.value));
        }
        if let Some(r) = range {
            req = req.header(RANGE, r.header());
        }
        req.send().await.map_err(|e| http::transport_error(what, e))
    }

    /// GET an API URL and parse its JSON, following relative redirects (renamed repos).
    async fn api_get(&self, url: Url, what: &str) -> Result<(HeaderMap, String)> {
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            let resp = self
                .hub_request(reqwest::Method::GET, &url, None, what)
                .await?;
            if resp.status().is_redirection() {
                url = self.redirect_target(&resp, &url, what)?;
                continue;
            }
            if !resp.status().is_success() {
                return Err(self.status_error(&resp, what));
            }
            let headers = resp.headers().clone();
            let body = http::capped_text(resp, what).await?;
            return Ok((headers, body));
        }
        Err(Error::new(
            Kind::Network,
            format!("{what}: too many redirects"),
        ))
    }

    fn redirect_target(&self, resp: &Response, from: &Url, what: &str) -> Result<Url> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::new(
                    Kind::Network,
                    format!("{what}: a redirect without a Location header"),
                )
                .transient(None)
            })?;
        from.join(loc).map_err(|e| {
            Error::new(
                Kind::Network,
                format!("{what}: the Hub redirected to an invalid URL"),
            )
            .with_source(e)
        })
    }

    async fn resolve_revision(&self) -> Result<String> {
        let rev = &self.url.revision;
        let what = format!("resolve revision {rev} of {}", self.display(""));
        let url = self.parse_url(format!(
            "{}/api/{}/{}/revision/{}",
            self.base(),
            self.kind_plural(),
            self.url.repo,
            uri_encode(rev, false)
        ))?;
        let (_, body) = self.api_get(url, &what).await?;
        let info: RevisionInfo = serde_json::from_str(&body).map_err(|e| {
            Error::new(
                Kind::Network,
                format!("{what}: the Hub's answer has no commit sha"),
            )
            .with_source(e)
        })?;
        if info.sha.len() != 40 || !info.sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::new(
                Kind::Network,
                format!(
                    "{what}: the Hub answered commit {:?}, which is not a sha",
                    info.sha
                ),
            ));
        }
        Ok(info.sha)
    }

    fn parse_url(&self, s: String) -> Result<Url> {
        Url::parse(&s)
            .map_err(|e| Error::usage(format!("cannot build a Hub URL from {s}")).with_source(e))
    }

    fn resolve_url(&self, path: &str) -> Result<Url> {
        self.parse_url(format!(
            "{}/{}{}/resolve/{}/{}",
            self.base(),
            self.url_prefix(),
            self.url.repo,
            self.commit,
            uri_encode(path, true)
        ))
    }

    /// Every file under `path` at the commit, following pagination.
    async fn list_tree(&self, path: &str) -> Result<Option<Vec<TreeEntry>>> {
        let what = format!("list {}", self.display(path));
        let mut url = self.parse_url(format!(
            "{}/api/{}/{}/tree/{}{}?recursive=true&expand=false",
            self.base(),
            self.kind_plural(),
            self.url.repo,
            self.commit,
            if path.is_empty() {
                String::new()
            } else {
                format!("/{}", uri_encode(path, false))
            }
        ))?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for page in 0.. {
            let (headers, body) = match self.api_get(url.clone(), &what).await {
                Ok(r) => r,
                // A PATH that names a file, not a folder.
                Err(e) if page == 0 && !path.is_empty() && e.kind() == Kind::NotFound => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            let entries: Vec<TreeEntry> = serde_json::from_str(&body).map_err(|e| {
                Error::new(
                    Kind::Network,
                    format!("{what}: the Hub's tree listing is not the expected JSON"),
                )
                .with_source(e)
            })?;
            out.extend(entries.into_iter().filter(|e| e.kind == "file"));
            match next_link(&headers) {
                Some(next) => {
                    let next = url.join(&next).map_err(|e| {
                        Error::new(Kind::Network, format!("{what}: bad pagination link"))
                            .with_source(e)
                    })?;
                    if !self.same_origin(&next) {
                        return Err(Error::new(
                            Kind::Network,
                            format!("{what}: the next page is on another host ({}); refusing to send the token there", next.host_str().unwrap_or("?")),
                        ));
                    }
                    super::types::next_page(&mut seen, next.to_string(), &what)?;
                    url = next;
                }
                None => break,
            }
        }
        Ok(Some(out))
    }

    /// HEAD the resolve URL of one file: the fallback when PATH names a single file.
    async fn head_file(&self, path: &str) -> Result<Option<RemoteFile>> {
        let what = format!("HEAD {}", self.display(path));
        let mut url = self.resolve_url(path)?;
        for _ in 0..=MAX_REDIRECTS {
            let resp = self
                .hub_request(reqwest::Method::HEAD, &url, None, &what)
                .await?;
            let h = resp.headers();
            let linked_size = header(h, "x-linked-size").and_then(|v| v.parse::<u64>().ok());
            if resp.status().is_redirection() && linked_size.is_none() {
                let next = self.redirect_target(&resp, &url, &what)?;
                if self.same_origin(&next) {
                    url = next;
                    continue;
                }
            }
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() && !resp.status().is_redirection() {
                return Err(self.status_error(&resp, &what));
            }
            let etag = header(h, "x-linked-etag")
                .or_else(|| header(h, ETAG.as_str()))
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
                .unwrap_or_default();
            let size = match linked_size {
                Some(s) => s,
                None => header(h, CONTENT_LENGTH.as_str())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        Error::new(Kind::Network, format!("{what}: no size in the reply"))
                    })?,
            };
            let lfs = linked_size.is_some();
            if let (true, Ok(loc)) = (
                resp.status().is_redirection(),
                self.redirect_target(&resp, &url, &what),
            ) {
                self.cdn
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.to_string(), loc);
            }
            let name = path.rsplit('/').next().unwrap_or(path).to_string();
            return Ok(Some(self.remote_file(
                path.to_string(),
                name,
                size,
                &etag,
                lfs,
            )));
        }
        Err(Error::new(
            Kind::Network,
            format!("{what}: too many redirects"),
        ))
    }

    fn remote_file(
        &self,
        key: String,
        path: String,
        size: u64,
        oid: &str,
        lfs: bool,
    ) -> RemoteFile {
        let checksum = if lfs {
            hex_array::<32>(oid).map(Checksum::Sha256)
        } else {
            hex_array::<20>(oid).map(Checksum::GitBlobSha1)
        };
        // Content-addressed: a branch that moves without touching a file keeps its version, so
        // a rerun does not fetch it again.
        let version = checksum.as_ref().map(Checksum::tagged);
        RemoteFile {
            path,
            key,
            size,
            checksum,
            version,
            archived: None,
            stored_gzip: false,
            archive: None,
            staged: None,
        }
    }

    /// Classifies a Hub or CDN error reply, the way huggingface_hub does (X-Error-Code).
    fn status_error(&self, resp: &Response, what: &str) -> Error {
        let status = resp.status();
        let h = resp.headers();
        let code = header(h, "x-error-code").unwrap_or_default();
        let message = header(h, "x-error-message").unwrap_or_default();
        let repo = &self.url.repo;
        let page = format!("{}/{}{repo}", self.base(), self.url_prefix());
        let token_hint = match &self.token {
            Some(t) => format!("the token from {}", t.source),
            None => "no token".to_string(),
        };
        let server_says = if message.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {message}")
        };
        let (kind, remedy) = match (status.as_u16(), code.as_str()) {
            (401, _) if message.contains("Invalid credentials") => (
                Kind::Denied,
                format!("the Hub rejected {token_hint}: it is invalid or revoked; set HF_TOKEN to a valid token (https://huggingface.co/settings/tokens)"),
            ),
            (401 | 403, "GatedRepo") => (
                Kind::Denied,
                format!("{repo} is gated: accept its terms on {page} with the account that owns the token, then set HF_TOKEN to that token ({token_hint} now)"),
            ),
            (401, _) if self.token.is_none() => (
                Kind::Denied,
                format!("{repo} does not exist, or it is private or gated and no token was given (the Hub answers 401 for all three): check the name, or set HF_TOKEN to a token with access"),
            ),
            (401 | 403, _) => (
                Kind::Denied,
                format!("{token_hint} has no access to {repo}: use a token with read access to it"),
            ),
            (404, "RevisionNotFound") => (
                Kind::NotFound,
                format!("revision {} does not exist in {repo}: check the branch, tag or sha", self.url.revision),
            ),
            (404, "EntryNotFound") => (
                Kind::NotFound,
                format!("no such file or folder at revision {}", self.url.revision),
            ),
            (404, _) => (
                Kind::NotFound,
                format!("{repo} does not exist (for a dataset write hf://datasets/{repo})"),
            ),
            (429, _) => {
                let after = http::retry_after(h).or_else(|| rate_limit_reset(h));
                return http::busy(
                    format!("{what}: {server_says}; rate limited by the Hub (a token raises the limit)"),
                    status,
                    after,
                );
            }
            _ if http::is_transient_status(status) => {
                return http::busy(format!("{what}: {server_says}"), status, http::retry_after(h));
            }
            _ => (Kind::Network, "unexpected answer from the Hub".into()),
        };
        Error::new(kind, format!("{what}: {server_says}; {remedy}"))
    }

    /// Fetches a range from a cached CDN URL; `None` when the URL has expired (403/401/404
    /// from the CDN) and must be re-resolved.
    async fn fetch_cdn(
        &self,
        cdn: &Url,
        file: &RemoteFile,
        range: ByteRange,
        what: &str,
    ) -> Result<Option<Fetched>> {
        if let Some(p2p) = &self.p2p {
            let mut headers = HeaderMap::new();
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&range.header()) {
                headers.insert(RANGE, v);
            }
            // An LFS file is its sha256 on every node and in every repo that holds it.
            let task = match &file.checksum {
                Some(Checksum::Sha256(d)) => Some(format!("hf-lfs:sha256:{}", hex::encode(d))),
                _ => None,
            };
            if let Some(resp) = p2p
                .get(cdn.as_str(), headers, task.as_deref(), &file.key)
                .await
            {
                // Only successes come through (anything else went direct).
                let fetched = http::ranged_body(resp, range, file.size, what).map(Fetched::plain);
                return p2p.watch(&file.key, fetched).map(Some);
            }
        }
        let resp = self
            .client
            .get(cdn.clone())
            .header(RANGE, range.header())
            .send()
            .await
            .map_err(|e| {
                let unreachable = e.is_connect() || e.is_timeout();
                let err = http::transport_error(what, e);
                if unreachable {
                    err.note(unreachable_cdn(cdn))
                } else {
                    err
                }
            })?;
        if matches!(resp.status().as_u16(), 401 | 403 | 404 | 410) {
            // Only this URL: another range may already have put a fresh one there.
            let mut cached = self.cdn.lock().unwrap_or_else(|p| p.into_inner());
            if cached.get(&file.key) == Some(cdn) {
                cached.remove(&file.key);
            }
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.status_error(&resp, what));
        }
        Ok(Some(Fetched::plain(http::ranged_body(
            resp, range, file.size, what,
        )?)))
    }
}

impl Source for Hf {
    async fn list(&self) -> Result<Listing> {
        let path = self.url.path.as_str();
        let files = match self.list_tree(path).await? {
            Some(entries) => {
                let folder = if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}/")
                };
                let what = format!("list {}", self.display(path));
                entries
                    .into_iter()
                    .map(|e| {
                        let rel = super::bucket::below(&folder, &e.path, &what)?;
                        Ok(match e.lfs {
                            Some(lfs) => self.remote_file(e.path, rel, lfs.size, &lfs.oid, true),
                            None => self.remote_file(e.path, rel, e.size, &e.oid, false),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None => match self.head_file(path).await? {
                Some(f) => vec![f],
                None => Vec::new(),
            },
        };
        if files.is_empty() {
            return Err(Error::new(
                Kind::NotFound,
                format!(
                    "nothing found at {} (commit {}): no such file or folder",
                    self.display(path),
                    self.commit
                ),
            ));
        }
        Ok(Listing {
            files,
            revision: Some(self.commit.clone()),
            exact: false,
        })
    }

    async fn fetch(&self, file: &RemoteFile, range: ByteRange) -> Result<Fetched> {
        let what = format!("GET {} ({range})", self.display(&file.key));
        let mut expired = None;
        if let Some(cdn) = self.cached_cdn(&file.key) {
            match self.fetch_cdn(&cdn, file, range, &what).await? {
                Some(fetched) => return Ok(fetched),
                None => expired = Some(cdn),
            }
        }
        // One range at a time resolves a file; the others then use the URL it learnt.
        let gate = std::sync::Arc::clone(
            self.resolving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(file.key.clone())
                .or_default(),
        );
        let served = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&file.key);
        let held = if served {
            None
        } else {
            Some(gate.lock().await)
        };
        // A URL another range resolved while this one waited (not the one that just expired).
        if let Some(cdn) = self
            .cached_cdn(&file.key)
            .filter(|c| Some(c) != expired.as_ref())
        {
            drop(held);
            if let Some(fetched) = self.fetch_cdn(&cdn, file, range, &what).await? {
                return Ok(fetched);
            }
            return Err(expired_at_once(&what));
        }
        let mut url = self.resolve_url(&file.key)?;
        for _ in 0..=MAX_REDIRECTS {
            let resp = self
                .hub_request(reqwest::Method::GET, &url, Some(range), &what)
                .await?;
            if resp.status().is_redirection() {
                let next = self.redirect_target(&resp, &url, &what)?;
                if self.same_origin(&next) {
                    url = next;
                    continue;
                }
                self.cdn
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(file.key.clone(), next.clone());
                drop(held);
                return match self.fetch_cdn(&next, file, range, &what).await? {
                    Some(fetched) => Ok(fetched),
                    None => Err(expired_at_once(&what)),
                };
            }
            if !resp.status().is_success() {
                return Err(self.status_error(&resp, &what));
            }
            self.served
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(file.key.clone());
            drop(held);
            return Ok(Fetched::plain(http::ranged_body(
                resp, range, file.size, &what,
            )?));
        }
        Err(Error::new(
            Kind::Network,
            format!("{what}: too many redirects"),
        ))
    }
}

impl Hf {
    fn cached_cdn(&self, key: &str) -> Option<Url> {
        self.cdn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
}

/// A CDN URL refused on its first use (it was just signed): retried after a second.
fn expired_at_once(what: &str) -> Error {
    Error::new(
        Kind::Network,
        format!("{what}: the CDN refused a freshly signed URL (check this machine's clock)"),
    )
    .transient(Some(Duration::from_secs(1)))
}

/// What to do when the CDN a file was redirected to cannot be reached: often a firewall or
/// proxy that lets the Hub (or a mirror) through but not the CDN it redirects to. Names the
/// CDN's host and port only: the rest of the URL is a signature.
fn unreachable_cdn(cdn: &Url) -> String {
    let host = cdn.host_str().unwrap_or("?");
    let host = match cdn.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    format!(
        "the Hub redirected this file to its CDN at {host}, which did not answer: allow {host} \
         through the firewall or proxy (HTTPS_PROXY) this pod uses, or use an HF_ENDPOINT that \
         serves the files itself"
    )
}

/// The token, from the same places huggingface_hub looks, in its order.
fn find_token() -> Result<Option<Token>> {
    for name in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Some(v) = crate::env::var(name) {
            return Ok(Some(Token {
                value: v.trim().to_string(),
                source: name.to_string(),
            }));
        }
    }
    let (path, explicit) = match crate::env::var("HF_TOKEN_PATH") {
        Some(p) => (std::path::PathBuf::from(p), true),
        None => {
            let home = crate::env::var("HF_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    crate::env::var("XDG_CACHE_HOME")
                        .map(|c| std::path::PathBuf::from(c).join("huggingface"))
                        .or_else(|| {
                            crate::env::var("HOME")
                                .map(|h| std::path::Path::new(&h).join(".cache/huggingface"))
                        })
                });
            match home {
                Some(h) => (h.join("token"), false),
                None => return Ok(None),
            }
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(Token {
            value: s.trim().to_string(),
            source: path.display().to_string(),
        })),
        Ok(_) => Ok(None),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::usage(format!(
            "cannot read the token file {} (HF_TOKEN_PATH): fix the path or unset it",
            path.display()
        ))
        .with_source(e)),
    }
}

/// `<https://…>; rel="next"` from a Link header.
fn next_link(h: &HeaderMap) -> Option<String> {
    for v in h.get_all("link") {
        for part in v.to_str().ok()?.split(',') {
            let (url, params) = part.split_once(';')?;
            if params
                .split(';')
                .any(|p| p.trim().trim_matches(' ') == "rel=\"next\"" || p.trim() == "rel=next")
            {
                return Some(
                    url.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string(),
                );
            }
        }
    }
    None
}

/// The Hub's `RateLimit: "api";r=0;t=55` header: seconds until the window resets.
fn rate_limit_reset(h: &HeaderMap) -> Option<Duration> {
    let v = header(h, "ratelimit")?;
    v.split(';')
        .find_map(|p| p.trim().strip_prefix("t="))
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            r#"<https://hf.co/api/models/a/b/tree/x?cursor=abc>; rel="next""#
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://hf.co/api/models/a/b/tree/x?cursor=abc")
        );
        h.insert(
            "link",
            r#"<https://x/prev>; rel="prev", <https://x/next>; rel="next""#
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("https://x/next"));
        h.insert("link", r#"<https://x/prev>; rel="prev""#.parse().unwrap());
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn rate_limit_header() {
        let mut h = HeaderMap::new();
        h.insert("ratelimit", r#""api";r=0;t=55"#.parse().unwrap());
        assert_eq!(rate_limit_reset(&h), Some(Duration::from_secs(55)));
    }

    #[test]
    fn tokens_are_redacted() {
        assert_eq!(crate::redact::secret("hf_abcdefghijklmnop", 3), "hf_…op");
        assert_eq!(crate::redact::secret("short", 3), "…");
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hostile_trees_never_panic(path in "\\PC{0,20}", size in any::<i64>(), junk in "\\PC{0,60}") {
            let body = format!(r#"[{{"type":"file","path":{},"size":{size},"oid":"x"}}]"#, serde_json::Value::from(path.clone()));
            if let Ok(entries) = serde_json::from_str::<Vec<TreeEntry>>(&body) {
                for e in entries {
                    let _ = super::super::bucket::below("sub/", &e.path, "list");
                }
            }
            let _ = serde_json::from_str::<Vec<TreeEntry>>(&junk);
        }
    }
}
