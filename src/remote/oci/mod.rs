//! `oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]`: models in container registries, read per
//! the OCI distribution spec on our own HTTP client, so that blob reads are the same ranged,
//! retried, P2P-capable GETs as every other scheme's (ARCHITECTURE.md, "oci://").
//!
//! The tag is resolved once to a manifest digest (an index to this platform's manifest); every
//! manifest's bytes are checked against their digest. Each layer that is a file is listed with
//! its blob digest as both checksum (sha256, verified as the bytes stream in) and version, so a
//! rerun against the same blobs fetches nothing. Blob GETs may be redirected to object storage:
//! `Range` is kept and `Authorization` sent only to the registry's own origin.

mod auth;
mod cloud;
pub mod layout;
mod push;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, AUTHORIZATION, LOCATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;
use sha2::Digest as _;

use super::http::{self, header, ClientOptions};
use super::types::{ByteRange, Checksum, Fetched, Listing, RemoteFile, Source};
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;
use crate::url::OciUrl;

use auth::{Challenge, Credentials};

/// The spec's limit on a manifest a registry must accept; more is no manifest.
const MAX_MANIFEST: usize = 4 << 20;
/// Redirects followed for one request (registry → storage, storage → CDN).
const MAX_REDIRECTS: usize = 5;
/// A cloud registry's password is minted again at a renewal past this age.
const REMINT_AFTER: Duration = Duration::from_secs(60);
/// A token is renewed this long before the registry would refuse it.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

/// Registries that may be spoken to over plain HTTP: `host[:port]`, comma-separated, `*` for
/// all (docker's `insecure-registries`). Loopback registries always may.
const INSECURE_VAR: &str = "MODEL_LOADER_OCI_INSECURE_REGISTRIES";

pub struct Oci {
    /// For the registry's own origin: certificates unchecked when it is listed insecure.
    registry_client: reqwest::Client,
    /// For every other origin (token realms, the storage blobs are redirected to): checked,
    /// unless that host is the insecure registry's own or is named insecure itself.
    client: reqwest::Client,
    /// The registry may be reached without a checked certificate (see [`plain_http_allowed`]).
    insecure: bool,
    /// `http(s)://registry`.
    base: Url,
    url: OciUrl,
    creds: Mutex<Option<Credentials>>,
    /// A cloud registry's password source, and when it last minted one.
    /// Boxed: rarely there, and large (a credential provider and its cache).
    minter: Option<Box<(cloud::Minter, Mutex<Instant>)>>,
    /// Where credentials were looked for, for hints.
    looked_in: String,
    auth: Mutex<Auth>,
    /// Held while one request renews the token, so that the others wait for it.
    renewing: tokio::sync::Mutex<()>,
    /// Blob reads through a P2P proxy (`--p2p-proxy`).
    pub(crate) p2p: Option<std::sync::Arc<super::p2p::P2p>>,
    /// Tokens are asked for push as well as pull (an upload).
    push: bool,
    /// What an upload sent or found, by path: the layers of the manifest it ends with.
    pushed: Mutex<std::collections::BTreeMap<String, layout::Descriptor>>,
    /// A chunk size a body limit on the way let through (0: none met yet): larger blobs go
    /// in chunks of it without trying a whole PUT first.
    chunk_limit: std::sync::atomic::AtomicU64,
}

/// What the registry asked for, learnt from its first 401.
#[derive(Clone, Default)]
enum Auth {
    /// Nothing asked yet (or nothing needed).
    #[default]
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        token: String,
        until: Instant,
    },
}

#[derive(Deserialize)]
struct RegistryErrors {
    #[serde(default)]
    errors: Vec<RegistryError>,
}

#[derive(Deserialize)]
struct RegistryError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl Oci {
    /// Builds the client and finds credentials; the registry is first asked in [`Source::list`].
    pub async fn open(
        url: &OciUrl,
        opts: &ClientOptions,
        push: bool,
        reporter: &dyn Reporter,
    ) -> Result<Self> {
        let insecure = plain_http_allowed(url);
        let client = http::client(opts)?;
        // As docker does for its insecure registries: their certificates are not checked.
        let registry_client = http::client(&ClientOptions {
            accept_invalid_certs: opts.accept_invalid_certs || insecure,
            ..opts.clone()
        })?;
        let base = base_url(&registry_client, url, insecure).await?;
        let files = auth::auth_files();
        let looked_in = files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let (registry, repository) = (url.registry.clone(), api_repository(url));
        // Credential helpers are programs: run off the async threads.
        let lookup = files.clone();
        let creds =
            tokio::task::spawn_blocking(move || auth::find(&registry, &repository, &lookup))
                .await
                .map_err(|e| {
                    Error::new(Kind::Internal, "the credential lookup failed").with_source(e)
                })??;
        let (creds, minter) = match creds {
            Some(c) => (Some(c), None),
            None => cloud_credentials(url, &base, insecure, opts, reporter).await?,
        };
        match &creds {
            Some(c) => reporter.info(&format!(
                "oci: {}, user {:?} from {}",
                base.origin().ascii_serialization(),
                c.user,
                c.source
            )),
            None => reporter.info(&format!(
                "oci: {}, no credentials for {} (looked in: {}): anonymous",
                base.origin().ascii_serialization(),
                url.registry,
                if looked_in.is_empty() {
                    "nothing"
                } else {
                    &looked_in
                }
            )),
        }
        Ok(Oci {
            registry_client,
            client,
            insecure,
            base,
            url: url.clone(),
            creds: Mutex::new(creds),
            minter: minter.map(|m| Box::new((m, Mutex::new(Instant::now())))),
            looked_in,
            auth: Mutex::new(Auth::None),
            renewing: tokio::sync::Mutex::new(()),
            p2p: None,
            push,
            pushed: Mutex::new(std::collections::BTreeMap::new()),
            chunk_limit: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The client for `url`: certificates unchecked on the insecure registry's own host
    /// (any port: its token service) and on hosts named insecure; checked everywhere else.
    fn client_for(&self, url: &Url) -> &reqwest::Client {
        let same_host = url.host_str() == self.base.host_str();
        let lax = url.origin() == self.base.origin()
            || (self.insecure && (same_host || url.host_str().is_some_and(host_may_be_plain)));
        if lax {
            &self.registry_client
        } else {
            &self.client
        }
    }

    fn creds(&self) -> Option<Credentials> {
        self.creds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A cloud registry's password minted again when the last is a minute old: a renewal
    /// comes when a registry token expired or was refused, and the password behind it may
    /// have expired too (a Google access token lasts an hour, ECR's twelve).
    async fn remint_if_due(&self) {
        let Some((minter, minted)) = self.minter.as_deref() else {
            return;
        };
        if minted.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < REMINT_AFTER {
            return;
        }
        // A mint that fails (ECR throttling GetAuthorizationToken) keeps the password there
        // is, which may well still be good (ECR's last twelve hours): the registry says if
        // not. The attempt counts, so the waiting streams do not each try again.
        if let Ok(fresh) = minter.mint().await {
            *self.creds.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        }
        *minted.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// The repository as the registry's API names it: Docker Hub's official images live
    /// under `library/`.
    fn repository(&self) -> String {
        api_repository(&self.url)
    }

    fn shown(&self) -> String {
        crate::url::SourceUrl::Oci(self.url.clone()).to_string()
    }

    fn endpoint(&self, kind: &str, reference: &str) -> Result<Url> {
        self.base
            .join(&format!("/v2/{}/{kind}/{reference}", self.repository()))
            .map_err(|e| Error::usage(format!("{}: bad reference", self.shown())).with_source(e))
    }

    /// The `Authorization` the next request carries.
    fn auth_header(&self) -> Option<String> {
        match &*self.auth.lock().unwrap_or_else(|p| p.into_inner()) {
            Auth::None => None,
            Auth::Basic => self.creds().as_ref().map(Credentials::basic_header),
            Auth::Bearer { token, .. } => Some(format!("Bearer {token}")),
        }
    }

    /// A GET to the registry, authenticated as it asks (see [`Oci::registry_send`]).
    async fn registry_get(&self, url: &Url, headers: HeaderMap, what: &str) -> Result<Response> {
        self.registry_send(reqwest::Method::GET, url, headers, None, what)
            .await
    }

    /// A request to the registry, authenticated as it asks: on a 401 the challenge is answered
    /// (a token fetched or renewed, or Basic credentials sent) and the request sent once more.
    /// `body` makes the request's body afresh for each send.
    async fn registry_send(
        &self,
        method: reqwest::Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<&(dyn Fn() -> reqwest::Body + Sync)>,
        what: &str,
    ) -> Result<Response> {
        // Credentials go to the registry's own origin only (an upload session's Location or
        // a redirect may name another host).
        let ours = url.origin() == self.base.origin();
        if ours {
            self.renew_if_due(what).await?;
        }
        let client = self.client_for(url);
        for attempt in 0..2 {
            let sent = self.auth_header().filter(|_| ours);
            let mut req = client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = &sent {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(b) = body {
                req = req.body(b());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| http::transport_error(what, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 || !ours {
                return Ok(resp);
            }
            // Registries may send Basic and Bearer as two headers: read them all.
            let offered: Vec<&str> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let challenge = auth::parse_challenge(&offered.join(", "));
            let Some(challenge) = challenge else {
                return Ok(resp);
            };
            self.answer(challenge, sent, what).await?;
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Renews a token that is about to expire, before a request is refused with it.
    async fn renew_if_due(&self, what: &str) -> Result<()> {
        let due = match &*self.auth.lock().unwrap_or_else(|p| p.into_inner()) {
            Auth::Bearer {
                realm,
                service,
                until,
                token,
            } if Instant::now() >= *until => Some((
                Challenge::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                    scope: None,
                },
                format!("Bearer {token}"),
            )),
            _ => None,
        };
        match due {
            Some((c, sent)) => self.answer(c, Some(sent), what).await,
            None => Ok(()),
        }
    }

    /// Answers a challenge once for every request that met it: a request whose credentials
    /// another one already replaced just retries.
    async fn answer(&self, challenge: Challenge, sent: Option<String>, what: &str) -> Result<()> {
        let _one = self.renewing.lock().await;
        if self.auth_header() != sent {
            return Ok(());
        }
        self.remint_if_due().await;
        let next = match challenge {
            Challenge::Basic => {
                if self.creds().is_none() {
                    return Err(self.denied(what, "it asks for a user and password"));
                }
                Auth::Basic
            }
            Challenge::Bearer { realm, service, .. } => {
                let (token, ttl) = self.fetch_token(&realm, service.as_deref(), what).await?;
                // Renewed a little before the registry would refuse it (half the life of a
                // short-lived token), so that no request is refused for it.
                let ttl = Duration::from_secs(ttl.min(86_400));
                let until = Instant::now() + ttl - TOKEN_MARGIN.min(ttl / 2);
                Auth::Bearer {
                    realm,
                    service,
                    token,
                    until,
                }
            }
        };
        *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// A pull token for this repository from the realm: Basic credentials when there are
    /// some (an identity token is traded with an OAuth2 POST), else anonymous.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        what: &str,
    ) -> Result<(String, u64)> {
        let mut realm_url = Url::parse(realm).map_err(|e| {
            Error::new(
                Kind::Network,
                format!("{what}: the registry named a token realm that is not a URL"),
            )
            .with_source(e)
        })?;
        let creds = self.creds();
        // Credentials go in clear text only where plain HTTP was allowed: to a realm on the
        // plain-HTTP registry's own host, or one itself loopback or listed insecure.
        let same_host = realm_url.host_str() == self.base.host_str();
        let clear_ok = self.base.scheme() == "http"
            && (same_host || realm_url.host_str().is_some_and(host_may_be_plain));
        if realm_url.scheme() != "https" && creds.is_some() && !clear_ok {
            return Err(Error::new(
                Kind::Denied,
                format!(
                    "{what}: the registry sends credentials to a token service over plain HTTP \
                     ({}); refused: fix the registry's token realm, or list that host in {INSECURE_VAR}",
                    origin(realm)
                ),
            ));
        }
        let client = self.client_for(&realm_url);
        let scope = format!(
            "repository:{}:{}",
            self.repository(),
            if self.push { "pull,push" } else { "pull" }
        );
        let req = match &creds {
            Some(c) if c.identity_token => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", c.secret.as_str()),
                    ("client_id", "model-loader"),
                    ("scope", scope.as_str()),
                ];
                if let Some(s) = service {
                    form.push(("service", s));
                }
                client.post(realm_url).form(&form)
            }
            creds => {
                {
                    let mut q = realm_url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &scope);
                }
                let req = client.get(realm_url);
                match creds {
                    Some(c) => req.header(AUTHORIZATION, c.basic_header()),
                    None => req,
                }
            }
        };
        let what_token = format!("{what}: token from {}", origin(realm));
        let resp = req
            .send()
            .await
            .map_err(|e| http::transport_error(&what_token, e))?;
        let status = resp.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(self.denied(what, "its token service refused"));
        }
        if !status.is_success() {
            return Err(self.status_error(resp, &what_token).await);
        }
        let body = http::capped_text(resp, &what_token).await?;
        serde_json::from_str::<auth::TokenReply>(&body)
            .ok()
            .and_then(auth::TokenReply::value)
            .ok_or_else(|| {
                Error::new(
                    Kind::Network,
                    format!("{what_token}: the reply holds no token"),
                )
            })
    }

    /// Denied: which credentials were refused (never the secret), or where none were found.
    fn denied(&self, what: &str, why: &str) -> Error {
        let remedy =
            match &self.creds() {
                Some(c) => format!(
                "{why} the credentials of user {:?} from {}: check them (docker login {}), and \
                 that they may {} {}",
                c.user, c.source, self.url.registry,
                if self.push { "push to" } else { "pull" },
                self.url.repository
            ),
                None => {
                    format!(
                        "{}, and no credentials for {} were found (looked in: {}): log in (docker \
                 login), or mount the image pull secret and set DOCKER_CONFIG or \
                 REGISTRY_AUTH_FILE",
                        why.trim_end_matches(':'),
                        self.url.registry,
                        if self.looked_in.is_empty() {
                            "nothing"
                        } else {
                            &self.looked_in
                        }
                    )
                }
            };
        Error::new(Kind::Denied, format!("{what}: access denied: {remedy}"))
    }

    /// A failed reply that came from where the registry redirected (storage, a mirror) is
    /// not about our credentials, which never go there: it is retried, as the storage refuses
    /// an expired signature (403) or a busy moment and asking the registry again gets a
    /// fresh redirect. The registry's own replies are classified by [`Oci::status_error`].
    async fn elsewhere_error(&self, resp: Response, what: &str) -> Error {
        if resp.url().origin() == self.base.origin() {
            return self.status_error(resp, what).await;
        }
        http::busy(
            format!(
                "{what}: the server the registry redirected to ({}) answered HTTP {}",
                resp.url().origin().ascii_serialization(),
                resp.status()
            ),
            resp.status(),
            http::retry_after(resp.headers()),
        )
    }

    /// A registry reply that is not a success, classified by its status and error code.
    async fn status_error(&self, resp: Response, what: &str) -> Error {
        let status = resp.status();
        let after = http::retry_after(resp.headers());
        let text = http::error_text(resp).await;
        let first = serde_json::from_str::<RegistryErrors>(&text)
            .ok()
            .and_then(|e| e.errors.into_iter().next());
        let (code, message) = first.map_or((String::new(), String::new()), |e| (e.code, e.message));
        let says = if code.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status} {code}: {message}")
        };
        if http::is_transient_status(status) || code == "TOOMANYREQUESTS" {
            return http::busy(format!("{what}: {says}"), status, after);
        }
        match (status.as_u16(), code.as_str()) {
            (401 | 403, _) | (_, "DENIED" | "UNAUTHORIZED") => {
                self.denied(what, &format!("the registry answered {says}:"))
            }
            (404, _) | (_, "NAME_UNKNOWN" | "MANIFEST_UNKNOWN" | "BLOB_UNKNOWN") => Error::new(
                Kind::NotFound,
                format!(
                    "{what}: {says}: {} has no {} (check the repository and tag; a private \
                     repository may also answer this without credentials)",
                    self.url.registry,
                    if code == "BLOB_UNKNOWN" {
                        "such blob".to_string()
                    } else {
                        format!("{}:{}", self.url.repository, self.url.reference())
                    }
                ),
            ),
            _ => Error::new(Kind::Network, format!("{what}: {says}")),
        }
    }
}

/// `scheme://host[:port]` of a URL, for messages (its path and query may carry signatures).
fn origin(u: &str) -> String {
    Url::parse(u).map_or_else(|_| "?".into(), |u| u.origin().ascii_serialization())
}

/// Loopback registries, the ones listed in [`INSECURE_VAR`], and all when KServe says its
/// registry is insecure (`KSERVE_OCI_INSECURE_REGISTRY=true`) — but a cloud's registry
/// (ECR, Artifact Registry) or a public one (Docker Hub, GHCR, Quay…) only when named: `*` is
/// for the cluster's own registries, and those are never reached unchecked by accident.
fn plain_http_allowed(url: &OciUrl) -> bool {
    let host = url.host();
    let named =
        listed_insecure(|h| h.eq_ignore_ascii_case(&url.registry) || h.eq_ignore_ascii_case(host));
    if cloud::classify(&url.registry).is_some() || is_public(&url.registry) {
        return named;
    }
    let kserve = crate::env::var("KSERVE_OCI_INSECURE_REGISTRY")
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    is_loopback(host) || named || listed_insecure(|h| h == "*") || kserve
}

/// The public registries, which always serve a valid certificate: `*` never means them.
fn is_public(registry: &str) -> bool {
    is_docker_hub(registry)
        || matches!(
            registry,
            "ghcr.io"
                | "quay.io"
                | "registry.k8s.io"
                | "public.ecr.aws"
                | "mcr.microsoft.com"
                | "nvcr.io"
        )
}

/// Whether an entry of [`INSECURE_VAR`] passes `matches`.
fn listed_insecure(matches: impl Fn(&str) -> bool) -> bool {
    crate::env::var(INSECURE_VAR).is_some_and(|v| v.split(',').map(str::trim).any(&matches))
}

/// A host other than the registry (a token realm) that may be spoken to in clear text:
/// loopback, or named in [`INSECURE_VAR`] (not by `*`).
fn host_may_be_plain(host: &str) -> bool {
    // `Url::host_str` keeps an IPv6 address's brackets; entries are written either way.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let named = |h: &str| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case(bare)
    };
    is_loopback(bare)
        || listed_insecure(|h| named(h) || h.rsplit_once(':').is_some_and(|(n, _)| named(n)))
}

/// The password a cloud registry (ECR, Artifact Registry) takes, from the identity this
/// process has in that cloud, when no auth file knew it; never for a registry reached
/// without a checked certificate, and anonymous (with a warning) when that identity is
/// refused: a public repository needs none.
async fn cloud_credentials(
    url: &OciUrl,
    base: &Url,
    insecure: bool,
    opts: &ClientOptions,
    reporter: &dyn Reporter,
) -> Result<(Option<Credentials>, Option<cloud::Minter>)> {
    let Some(c) = cloud::classify(&url.registry) else {
        return Ok((None, None));
    };
    if insecure || base.scheme() != "https" || opts.accept_invalid_certs {
        reporter.warn(&format!(
            "oci: {} is reached without a checked certificate ({INSECURE_VAR}): the pod's cloud \
             identity is not sent to it; anonymous",
            url.registry
        ));
        return Ok((None, None));
    }
    let Some(minter) = cloud::Minter::find(&c, opts, reporter).await? else {
        return Ok((None, None));
    };
    match minter.mint().await {
        Ok(creds) => Ok((Some(creds), Some(minter))),
        Err(e) if e.kind() == Kind::Denied => {
            reporter.warn(&format!("oci: {e}; going on anonymous"));
            Ok((None, None))
        }
        Err(e) => Err(e),
    }
}

impl Oci {
    /// The manifest `reference` names, its bytes checked against their digest: the one asked
    /// for when pinned, and the one the registry states otherwise (the body's own sha256 is
    /// what pins the rest of the load).
    async fn manifest(&self, reference: &str) -> Result<(layout::Document, String)> {
        let what = format!("GET manifest {}", self.shown());
        let url = self.endpoint("manifests", reference)?;
        let headers = HeaderMap::from_iter([(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static(layout::ACCEPT),
        )]);
        // Some registries redirect manifests too (registry.k8s.io to its regional mirrors):
        // the bytes are checked against the digest wherever they come from.
        let resp = self.get_following(url, headers, &what).await?;
        if !resp.status().is_success() {
            return Err(self.elsewhere_error(resp, &what).await);
        }
        let content_type = header(resp.headers(), "content-type").unwrap_or_default();
        let stated = header(resp.headers(), "docker-content-digest");
        let body = manifest_body(resp, &what).await?;
        let digest = digest_of(&sha2::Sha256::digest(&body));
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_string())
        } else {
            stated
        };
        if let Some(e) = expected.filter(|e| *e != digest) {
            return Err(Error::new(
                Kind::Corrupt,
                format!(
                    "{what}: the manifest's bytes hash to {digest}, not {e}: it was changed on \
                     the way (a proxy?) or the registry is broken; nothing was loaded"
                ),
            )
            .transient(None));
        }
        let doc = layout::Document::parse(&body, &content_type)
            .map_err(|why| Error::new(Kind::Network, format!("{what}: {why}")))?;
        Ok((doc, digest))
    }

    /// The manifest to load, and its digest: an index resolved to this platform's entry.
    async fn resolve(&self) -> Result<(layout::Document, String)> {
        let (doc, digest) = self.manifest(self.url.reference()).await?;
        if !doc.is_index() {
            return Ok((doc, digest));
        }
        let entry = layout::pick_platform(&doc, layout::this_arch())
            .map_err(|why| Error::new(Kind::NotFound, format!("{}: {why}", self.shown())))?;
        let pinned = crate::url::check_digest(&entry.digest).map_err(|why| {
            Error::new(
                Kind::Usage,
                format!(
                    "{}: the index names an entry it cannot pin: {why}",
                    self.shown()
                ),
            )
        })?;
        let (inner, inner_digest) = self.manifest(&pinned).await?;
        if inner.is_index() {
            return Err(Error::new(
                Kind::Usage,
                format!(
                    "{}: the index's entry {} is itself an index; pin a manifest with @sha256:…",
                    self.shown(),
                    entry.digest
                ),
            ));
        }
        Ok((inner, inner_digest))
    }

    /// GETs one range of a blob, following the registry's redirect to storage with the same
    /// `Range` and no `Authorization` off the registry's origin (the spec's MUST NOT).
    async fn get_blob(&self, file: &RemoteFile, range: ByteRange, what: &str) -> Result<Response> {
        let url = self.endpoint("blobs", &file.key)?;
        let mut headers = HeaderMap::new();
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&range.header()) {
            headers.insert(RANGE, v);
        }
        self.get_following(url, headers, what).await
    }

    /// A GET that follows redirects itself, with the same headers (`Range`, `Accept`) on
    /// every hop and credentials only on the registry's origin.
    async fn get_following(
        &self,
        mut url: Url,
        headers: HeaderMap,
        what: &str,
    ) -> Result<Response> {
        let mut resp = self.registry_get(&url, headers.clone(), what).await?;
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let next = header(resp.headers(), LOCATION.as_str())
                .and_then(|l| url.join(&l).ok())
                .ok_or_else(|| {
                    Error::new(
                        Kind::Network,
                        format!("{what}: a redirect without a usable Location"),
                    )
                })?;
            // From TLS to plain HTTP only where plain HTTP was allowed: a tag's manifest is
            // checked against the digest its own reply states, which a party on a clear-text
            // hop could forge along with it.
            let plain_ok = next.host_str().is_some_and(host_may_be_plain);
            if url.scheme() == "https" && next.scheme() == "http" && !plain_ok {
                return Err(Error::new(
                    Kind::Usage,
                    format!(
                        "{what}: the registry redirects to plain HTTP ({}): refused; list that \
                         host in {INSECURE_VAR} if it is meant",
                        next.origin().ascii_serialization()
                    ),
                ));
            }
            url = next;
            // registry_send sends credentials to the registry's origin only.
            resp = self.registry_get(&url, headers.clone(), what).await?;
        }
        Err(Error::new(
            Kind::Network,
            format!("{what}: too many redirects"),
        ))
    }
}

impl Source for Oci {
    async fn list(&self) -> Result<Listing> {
        let (doc, digest) = self.resolve().await?;
        let files = layout::files(&doc).map_err(|why| {
            Error::new(
                Kind::Usage,
                format!("{} (manifest {digest}): {why}", self.shown()),
            )
        })?;
        let files = files
            .into_iter()
            .map(|f| {
                let sha = f
                    .digest
                    .strip_prefix("sha256:")
                    .and_then(|h| {
                        let mut d = [0u8; 32];
                        hex::decode_to_slice(h, &mut d).ok().map(|()| d)
                    })
                    .ok_or_else(|| {
                        Error::new(
                            Kind::Usage,
                            format!(
                                "{}: layer {} has the digest {:?}; only sha256 digests are read",
                                self.shown(),
                                f.path,
                                f.digest
                            ),
                        )
                    })?;
                Ok(RemoteFile {
                    path: f.path,
                    key: f.digest.clone(),
                    size: f.size,
                    checksum: Some(Checksum::Sha256(sha)),
                    version: Some(f.digest),
                    archived: None,
                    stored_gzip: false,
                    archive: f.archive,
                    staged: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Listing {
            files,
            revision: Some(digest),
            exact: false,
        })
    }

    async fn fetch(&self, file: &RemoteFile, range: ByteRange) -> Result<Fetched> {
        let what = format!("GET {} blob {} ({range})", self.shown(), file.path);
        if let Some(p2p) = &self.p2p {
            let mut headers = HeaderMap::new();
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&range.header()) {
                headers.insert(RANGE, v);
            }
            self.renew_if_due(&what).await?;
            if let Some(v) = self
                .auth_header()
                .and_then(|a| reqwest::header::HeaderValue::from_str(&a).ok())
            {
                headers.insert(AUTHORIZATION, v);
            }
            // A blob is its digest in every registry and repository that holds it.
            let task = format!("oci:{}", file.key);
            let url = self.endpoint("blobs", &file.key)?;
            if let Some(resp) = p2p.get(url.as_str(), headers, Some(&task), &file.key).await {
                let fetched = http::ranged_body(resp, range, file.size, &what).map(Fetched::plain);
                return p2p.watch(&file.key, fetched);
            }
        }
        let resp = self.get_blob(file, range, &what).await?;
        if !resp.status().is_success() {
            return Err(self.elsewhere_error(resp, &what).await);
        }
        Ok(Fetched::plain(http::ranged_body(
            resp, range, file.size, &what,
        )?))
    }
}

/// A manifest's bytes, refused past the spec's 4 MiB.
async fn manifest_body(mut resp: Response, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| http::transport_error(what, e))?
    {
        if out.len() + chunk.len() > MAX_MANIFEST {
            return Err(Error::new(
                Kind::Network,
                format!(
                    "{what}: the manifest is larger than {} MiB, which no registry accepts; \
                     check the registry address",
                    MAX_MANIFEST >> 20
                ),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `sha256:<hex>`, a blob's or manifest's digest from its sha256.
fn digest_of(sha256: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha256))
}

/// `https://REGISTRY`, or for a registry that may use plain HTTP (loopback, listed insecure)
/// `http://` when it does not answer TLS: HTTPS is tried first, as docker does.
async fn base_url(client: &reqwest::Client, url: &OciUrl, insecure: bool) -> Result<Url> {
    let parse = |scheme: &str| {
        Url::parse(&format!("{scheme}://{}", url.registry)).map_err(|e| {
            Error::usage(format!("oci://{}: not a registry address", url.registry)).with_source(e)
        })
    };
    // Docker Hub's registry API is not at the name images are known by.
    if is_docker_hub(&url.registry) {
        return Ok(Url::parse("https://registry-1.docker.io").expect("a fixed URL parses"));
    }
    let https = parse("https")?;
    if !insecure {
        return Ok(https);
    }
    let probe = client
        .get(https.join("/v2/").expect("a fixed path joins"))
        // A TLS server answers a handshake at once; a plain one refuses it or says nothing.
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    match probe {
        Ok(_) => Ok(https),
        // A slow name lookup or a slow TLS registry is no reason to speak plain HTTP; on
        // loopback there is no lookup, and a plain server may just wait for more bytes.
        Err(e) if e.is_timeout() && !is_loopback(url.host()) => Ok(https),
        Err(_) => parse("http"),
    }
}

/// The repository as the registry's API names it: Docker Hub's official images live under
/// `library/`.
fn api_repository(url: &OciUrl) -> String {
    if is_docker_hub(&url.registry) && !url.repository.contains('/') {
        format!("library/{}", url.repository)
    } else {
        url.repository.clone()
    }
}

fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
