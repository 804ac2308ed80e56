//! `gs://BUCKET[/PREFIX]`: the GCS JSON API (list objects, `alt=media` ranged reads pinned to
//! the listed generation), with Application Default Credentials: a service-account or
//! authorized-user JSON (`GOOGLE_APPLICATION_CREDENTIALS` or gcloud's well-known file), else the
//! metadata server (GKE Workload Identity), else anonymous. `STORAGE_EMULATOR_HOST` points at
//! an emulator and implies anonymous, as Google's own clients do.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use reqwest::header::{ACCEPT_ENCODING, AUTHORIZATION, RANGE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use super::body::FileRange;
use super::http::{self, uri_encode, ClientOptions};
use super::{ByteRange, Checksum, Fetched, Listing, RemoteFile, Source};
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;

const GCS: &str = "https://storage.googleapis.com";
/// Downloads ask for the least they need; uploads need to create objects.
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const SCOPE_WRITE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// How requests are authorized.
enum Auth {
    Anonymous,
    ServiceAccount {
        email: String,
        key_id: Option<String>,
        key: aws_lc_rs::signature::RsaKeyPair,
        token_uri: String,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    Metadata {
        host: String,
    },
}

impl Auth {
    fn describe(&self) -> String {
        match self {
            Auth::Anonymous => "anonymous (no credentials)".into(),
            Auth::ServiceAccount { email, .. } => format!("service account {email}"),
            Auth::AuthorizedUser { client_id, .. } => {
                format!("authorized user (OAuth client {client_id})")
            }
            Auth::Metadata { host } => {
                format!("the metadata server at {host} (GKE Workload Identity / GCE)")
            }
        }
    }
}

#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectList {
    #[serde(default)]
    items: Vec<Object>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    name: String,
    /// The JSON API sends 64-bit numbers as strings.
    size: String,
    generation: String,
    md5_hash: Option<String>,
    crc32c: Option<String>,
}

pub struct Gcs {
    client: reqwest::Client,
    base: String,
    auth: Auth,
    token: tokio::sync::Mutex<Option<(String, SystemTime)>>,
    bucket: String,
    prefix: String,
    /// The OAuth scope tokens are asked for: read-only, or read-write for uploads.
    scope: &'static str,
}

impl Gcs {
    pub async fn open(
        bucket: &str,
        prefix: &str,
        opts: &ClientOptions,
        write: bool,
        reporter: &dyn Reporter,
    ) -> Result<Self> {
        let client = http::client(opts)?;
        let emulator = crate::env::var("STORAGE_EMULATOR_HOST").map(|h| {
            let h = h.trim_end_matches('/');
            if h.contains("://") {
                h.to_string()
            } else {
                format!("http://{h}")
            }
        });
        let creds_file = credentials_file(reporter)?;
        let auth = match (&emulator, creds_file) {
            (Some(_), _) => Auth::Anonymous,
            (None, Some(path)) => load_credentials(&path)?,
            (None, None) => {
                let host = crate::env::var("GCE_METADATA_HOST")
                    .unwrap_or_else(|| "metadata.google.internal".into());
                if metadata_available(&client, &host).await {
                    Auth::Metadata { host }
                } else {
                    Auth::Anonymous
                }
            }
        };
        // gcloud's override for private endpoints (Private Service Connect, restricted VIPs):
        // e.g. `https://storage-myendpoint.p.googleapis.com/storage/v1/`. Credentials still apply.
        let override_base = crate::env::var("CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE").map(|u| {
            u.trim_end_matches('/')
                .trim_end_matches("/storage/v1")
                .to_string()
        });
        let base = emulator
            .clone()
            .or(override_base)
            .unwrap_or_else(|| GCS.to_string());
        reporter.info(&format!(
            "gs: {}, endpoint {}{}",
            auth.describe(),
            crate::redact::userinfo(&base),
            if emulator.is_some() {
                " (STORAGE_EMULATOR_HOST)"
            } else {
                ""
            }
        ));
        Ok(Gcs {
            client,
            base,
            auth,
            token: tokio::sync::Mutex::new(None),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            scope: if write { SCOPE_WRITE } else { SCOPE },
        })
    }

    fn display(&self, name: &str) -> String {
        format!("gs://{}/{name}", self.bucket)
    }

    /// A bearer token, cached until five minutes before it expires.
    async fn bearer(&self) -> Result<Option<String>> {
        if matches!(self.auth, Auth::Anonymous) {
            return Ok(None);
        }
        let mut cache = self.token.lock().await;
        if let Some((t, exp)) = cache.as_ref() {
            if *exp > SystemTime::now() + Duration::from_secs(300) {
                return Ok(Some(t.clone()));
            }
        }
        let what = format!("get an access token for {}", self.auth.describe());
        let resp = match &self.auth {
            Auth::Anonymous => return Ok(None),
            Auth::ServiceAccount { email, key_id, key, token_uri } => {
                let jwt = service_account_jwt(email, key_id.as_deref(), key, token_uri, self.scope, SystemTime::now())?;
                let body = format!(
                    "grant_type={}&assertion={}",
                    uri_encode("urn:ietf:params:oauth:grant-type:jwt-bearer", false),
                    jwt
                );
                self.post_form(token_uri, body, &what).await?
            }
            Auth::AuthorizedUser { client_id, client_secret, refresh_token, token_uri } => {
                let body = format!(
                    "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                    uri_encode(client_id, false),
                    uri_encode(client_secret, false),
                    uri_encode(refresh_token, false)
                );
                self.post_form(token_uri, body, &what).await?
            }
            Auth::Metadata { host } => self
                .client
                .get(format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token?scopes={}", uri_encode(self.scope, false)))
                .header("Metadata-Flavor", "Google")
                .send()
                .await
                .map_err(|e| http::transport_error(&what, e))?,
        };
        let status = resp.status();
        if !status.is_success() {
            let kind = if http::is_transient_status(status) {
                Kind::Network
            } else {
                Kind::Denied
            };
            let e = Error::new(kind, format!("{what}: HTTP {status}; check the credentials file or the pod's service account binding"));
            return Err(if kind == Kind::Network {
                e.transient(http::retry_after(resp.headers()))
            } else {
                e
            });
        }
        let body = resp
            .text()
            .await
            .map_err(|e| http::transport_error(&what, e))?;
        let t: TokenResponse = serde_json::from_str(&body).map_err(|e| {
            Error::new(
                Kind::Denied,
                format!("{what}: the token endpoint's answer has no access_token"),
            )
            .with_source(e)
        })?;
        let exp = SystemTime::now() + Duration::from_secs(t.expires_in.unwrap_or(3600));
        *cache = Some((t.access_token.clone(), exp));
        Ok(Some(t.access_token))
    }

    async fn post_form(&self, url: &str, body: String, what: &str) -> Result<Response> {
        self.client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| http::transport_error(what, e))
    }

    async fn get(&self, url: String, range: Option<ByteRange>, what: &str) -> Result<Response> {
        // Stored gzip objects would otherwise be decompressed on the fly, ignoring Range.
        let mut req = self.client.get(url).header(ACCEPT_ENCODING, "gzip");
        if let Some(t) = self.bearer().await? {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(r) = range {
            req = req.header(RANGE, r.header());
        }
        req.send().await.map_err(|e| http::transport_error(what, e))
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            uri_encode(&self.bucket, false),
            uri_encode(name, false)
        )
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<RemoteFile>> {
        let what = format!("list {}", self.display(folder));
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/storage/v1/b/{}/o?prefix={}&maxResults=1000&fields={}",
                self.base,
                uri_encode(&self.bucket, false),
                uri_encode(folder, false),
                uri_encode(
                    "items(name,size,generation,md5Hash,crc32c),nextPageToken",
                    false
                )
            );
            if let Some(p) = &page {
                url.push_str(&format!("&pageToken={}", uri_encode(p, false)));
            }
            let resp = self.get(url, None, &what).await?;
            if !resp.status().is_success() {
                return Err(self.status_error(resp, &what, None).await);
            }
            let body = resp
                .text()
                .await
                .map_err(|e| http::transport_error(&what, e))?;
            let list: ObjectList = serde_json::from_str(&body).map_err(|e| {
                Error::new(
                    Kind::Network,
                    format!("{what}: unexpected JSON from the server"),
                )
                .with_source(e)
            })?;
            for o in list.items {
                if o.name.ends_with('/') && o.size == "0" {
                    continue; // folder placeholder
                }
                let path = super::below(folder, &o.name, &what)?;
                out.push(self.remote_file(o, path, &what)?);
            }
            match list.next_page_token {
                Some(t) if !t.is_empty() => page = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    fn remote_file(&self, o: Object, path: String, what: &str) -> Result<RemoteFile> {
        let size = o.size.parse().map_err(|_| {
            Error::new(
                Kind::Network,
                format!("{what}: size {:?} of {} is not a number", o.size, o.name),
            )
        })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        // CRC32C first: hardware-accelerated, so verifying costs almost nothing. Composite
        // objects have no MD5.
        let checksum = o
            .crc32c
            .as_deref()
            .and_then(|c| b64.decode(c).ok())
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(|b| Checksum::Crc32c(u32::from_be_bytes(b)))
            .or_else(|| {
                o.md5_hash
                    .as_deref()
                    .and_then(|m| b64.decode(m).ok())
                    .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
                    .map(Checksum::Md5)
            });
        Ok(RemoteFile {
            path,
            key: o.name,
            size,
            checksum,
            version: Some(o.generation),
        })
    }

    async fn head(&self, name: &str) -> Result<Option<RemoteFile>> {
        let what = format!("stat {}", self.display(name));
        let resp = self.get(self.object_url(name), None, &what).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let e = self.status_error(resp, &what, Some(name)).await;
            // A missing bucket stays an error; a missing object just means "not a file".
            return if e.message().contains("bucket") {
                Err(e)
            } else {
                Ok(None)
            };
        }
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &what, Some(name)).await);
        }
        let body = resp
            .text()
            .await
            .map_err(|e| http::transport_error(&what, e))?;
        let o: Object = serde_json::from_str(&body).map_err(|e| {
            Error::new(
                Kind::Network,
                format!("{what}: unexpected JSON from the server"),
            )
            .with_source(e)
        })?;
        let fname = name.rsplit('/').next().unwrap_or(name).to_string();
        Ok(Some(self.remote_file(o, fname, &what)?))
    }

    async fn status_error(&self, resp: Response, what: &str, object: Option<&str>) -> Error {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        let says = if message.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {message}")
        };
        let bucket = &self.bucket;
        let who = self.auth.describe();
        let (kind, remedy) = match status.as_u16() {
            401 => (Kind::Denied, format!("the credentials were rejected ({who}): check GOOGLE_APPLICATION_CREDENTIALS")),
            403 if matches!(self.auth, Auth::Anonymous) => (
                Kind::Denied,
                format!("bucket {bucket} is not public and no credentials were found: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key, or bind a Workload Identity"),
            ),
            403 if self.scope == SCOPE_WRITE => (Kind::Denied, format!("{who} may not write to bucket {bucket}: grant roles/storage.objectCreator (roles/storage.objectUser to overwrite)")),
            403 => (Kind::Denied, format!("{who} may not read bucket {bucket}: grant roles/storage.objectViewer")),
            404 if message.to_ascii_lowercase().contains("bucket") || object.is_none() => {
                (Kind::NotFound, format!("bucket {bucket} does not exist (check the URL)"))
            }
            404 => (Kind::NotFound, "the object (or this generation of it) no longer exists: it changed during the download; rerun".into()),
            412 => (Kind::Network, "the object changed during the download; rerun".into()),
            _ if http::is_transient_status(status) => {
                return Error::new(Kind::Network, format!("{what}: {says}")).transient(http::retry_after(&headers));
            }
            _ => (Kind::Network, "unexpected answer from the server".into()),
        };
        Error::new(kind, format!("{what}: {says}; {remedy}"))
    }
}

impl Gcs {
    /// The object name for a file `rel` uploaded under the URL's prefix.
    pub fn key_for(&self, rel: &str) -> String {
        super::s3::join_key(&self.prefix, rel)
    }

    /// Uploads a file: one media upload when small, a resumable upload in `chunk`-sized
    /// pieces otherwise. The object GCS reports must carry the CRC32C computed here, or the
    /// upload fails (exit 6).
    pub async fn upload(&self, name: &str, file: &FileRange, crc: u32, chunk: u64) -> Result<()> {
        let what = format!("upload {}", self.display(name));
        let base = format!(
            "{}/upload/storage/v1/b/{}/o?name={}",
            self.base,
            uri_encode(&self.bucket, false),
            uri_encode(name, false)
        );
        let auth = self.bearer().await?;
        let reply = if file.len <= chunk {
            self.authorized(self.client.post(format!("{base}&uploadType=media")), &auth)
                .header("content-type", "application/octet-stream")
                .header("content-length", file.len)
                .body(file.clone().into_body())
                .send()
                .await
                .map_err(|e| http::transport_error(&what, e))?
        } else {
            let session = self.start_resumable(&base, file.len, &auth, &what).await?;
            self.send_chunks(&session, file, chunk, &auth, &what)
                .await?
        };
        if !reply.status().is_success() {
            return Err(self.status_error(reply, &what, None).await);
        }
        self.check_stored(reply, file.len, crc, &what).await
    }

    fn authorized(
        &self,
        r: reqwest::RequestBuilder,
        auth: &Option<String>,
    ) -> reqwest::RequestBuilder {
        match auth {
            Some(t) => r.header(AUTHORIZATION, format!("Bearer {t}")),
            None => r,
        }
    }

    /// Opens a resumable upload session; returns its URL.
    async fn start_resumable(
        &self,
        base: &str,
        len: u64,
        auth: &Option<String>,
        what: &str,
    ) -> Result<String> {
        let start = self
            .authorized(
                self.client.post(format!("{base}&uploadType=resumable")),
                auth,
            )
            .header("x-upload-content-length", len)
            .header("content-length", 0)
            .send()
            .await
            .map_err(|e| http::transport_error(what, e))?;
        if !start.status().is_success() {
            return Err(self.status_error(start, what, None).await);
        }
        start
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| Error::new(Kind::Network, format!("{what}: no resumable session URL")))
    }

    /// Sends `file` to a session in chunks (multiples of 256 KiB but the last); returns the
    /// reply to the last one, which describes the stored object.
    async fn send_chunks(
        &self,
        session: &str,
        file: &FileRange,
        chunk: u64,
        auth: &Option<String>,
        what: &str,
    ) -> Result<Response> {
        let step = (chunk / (256 * 1024)).max(1) * 256 * 1024;
        let mut offset = 0;
        loop {
            let len = step.min(file.len - offset);
            let resp = self
                .authorized(self.client.put(session), auth)
                .header("content-length", len)
                .header(
                    "content-range",
                    format!("bytes {}-{}/{}", offset, offset + len - 1, file.len),
                )
                .body(file.slice(offset, len).into_body())
                .send()
                .await
                .map_err(|e| http::transport_error(what, e))?;
            offset += len;
            if offset >= file.len {
                return Ok(resp);
            }
            if resp.status().as_u16() != 308 && !resp.status().is_success() {
                return Err(self.status_error(resp, what, None).await);
            }
        }
    }

    /// The object GCS stored must have the file's size and CRC32C.
    async fn check_stored(&self, reply: Response, len: u64, crc: u32, what: &str) -> Result<()> {
        let body = reply
            .text()
            .await
            .map_err(|e| http::transport_error(what, e))?;
        let obj: Object = serde_json::from_str(&body).map_err(|e| {
            Error::new(
                Kind::Network,
                format!("{what}: unexpected JSON from the server"),
            )
            .with_source(e)
        })?;
        let stored = self.remote_file(obj, String::new(), what)?;
        match stored.checksum {
            Some(Checksum::Crc32c(c)) if c != crc => Err(Error::new(
                Kind::Corrupt,
                format!("{what}: the server stored CRC32C {c:08x} but the file has {crc:08x}; upload it again"),
            )),
            _ if stored.size != len => Err(Error::new(
                Kind::Corrupt,
                format!("{what}: the server stored {} bytes of {len}", stored.size),
            )),
            _ => Ok(()),
        }
    }
}

impl super::BucketListing for Gcs {
    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn display(&self, key: &str) -> String {
        Gcs::display(self, key)
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<RemoteFile>> {
        Gcs::list_folder(self, folder).await
    }

    async fn head(&self, key: &str) -> Result<Option<RemoteFile>> {
        Gcs::head(self, key).await
    }
}

impl Source for Gcs {
    async fn list(&self) -> Result<Listing> {
        super::list_bucket(self).await
    }

    async fn fetch(&self, file: &RemoteFile, range: ByteRange) -> Result<Fetched> {
        let what = format!("GET {} ({range})", self.display(&file.key));
        let mut url = format!("{}?alt=media", self.object_url(&file.key));
        if let Some(g) = &file.version {
            url.push_str(&format!("&generation={}", uri_encode(g, false)));
        }
        let resp = self.get(url, Some(range), &what).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &what, Some(&file.key)).await);
        }
        Ok(Fetched {
            body: http::ranged_body(resp, range, file.size, &what)?,
            checksum_applies: true,
            object_checksum: None,
        })
    }
}

/// The credentials file to use: `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's well-known
/// file. KubeAI sets the variable to a path even when its optional secret is absent, so a
/// missing file warns and falls back instead of failing.
fn credentials_file(reporter: &dyn Reporter) -> Result<Option<PathBuf>> {
    if let Some(p) = crate::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
        let path = PathBuf::from(&p);
        if path.is_file() {
            return Ok(Some(path));
        }
        reporter.warn(&format!(
            "GOOGLE_APPLICATION_CREDENTIALS={p} does not exist; falling back to the metadata server or anonymous access"
        ));
        return Ok(None);
    }
    let well_known = crate::env::var("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| crate::env::var("HOME").map(|h| Path::new(&h).join(".config/gcloud")))
        .map(|d| d.join("application_default_credentials.json"));
    Ok(well_known.filter(|p| p.is_file()))
}

fn load_credentials(path: &Path) -> Result<Auth> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::usage(format!("cannot read the credentials file {shown}")).with_source(e)
    })?;
    let f: CredentialsFile = serde_json::from_str(&text).map_err(|e| {
        Error::usage(format!("{shown} is not a Google credentials JSON file")).with_source(e)
    })?;
    let missing = |field: &str| {
        Error::usage(format!(
            "{shown}: a {} credentials file needs {field:?}",
            f.kind
        ))
    };
    match f.kind.as_str() {
        "service_account" => {
            let pem = f.private_key.as_deref().ok_or_else(|| missing("private_key"))?;
            let der = pem_to_der(pem).ok_or_else(|| Error::usage(format!("{shown}: private_key is not a PEM \"PRIVATE KEY\"")))?;
            let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
                .map_err(|e| Error::usage(format!("{shown}: private_key is not an RSA PKCS#8 key ({e})")))?;
            Ok(Auth::ServiceAccount {
                email: f.client_email.clone().ok_or_else(|| missing("client_email"))?,
                key_id: f.private_key_id.clone(),
                key,
                token_uri: f.token_uri.clone().unwrap_or_else(|| DEFAULT_TOKEN_URI.into()),
            })
        }
        "authorized_user" => Ok(Auth::AuthorizedUser {
            client_id: f.client_id.clone().ok_or_else(|| missing("client_id"))?,
            client_secret: f.client_secret.clone().ok_or_else(|| missing("client_secret"))?,
            refresh_token: f.refresh_token.clone().ok_or_else(|| missing("refresh_token"))?,
            token_uri: f.token_uri.clone().unwrap_or_else(|| DEFAULT_TOKEN_URI.into()),
        }),
        other => Err(Error::usage(format!(
            "{shown} holds {other:?} credentials; supported are \"service_account\" and \"authorized_user\" files, \
             the metadata server (GKE Workload Identity), and anonymous access. For workload identity federation, \
             run on GKE with Workload Identity or mint a service-account key"
        ))),
    }
}

/// A signed JWT asking for a Storage token of `scope` (RFC 7523, as Google's clients do).
fn service_account_jwt(
    email: &str,
    key_id: Option<&str>,
    key: &aws_lc_rs::signature::RsaKeyPair,
    token_uri: &str,
    scope: &str,
    now: SystemTime,
) -> Result<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let iat = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(k) = key_id {
        header["kid"] = k.into();
    }
    let claims = serde_json::json!({"iss": email, "scope": scope, "aud": token_uri, "iat": iat, "exp": iat + 3600});
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| {
        Error::usage("cannot sign the service-account JWT with the key from the credentials file")
    })?;
    Ok(format!("{signing_input}.{}", b64.encode(sig)))
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
}

/// Is a metadata server answering? Short timeouts: off Google Cloud this must not stall.
async fn metadata_available(client: &reqwest::Client, host: &str) -> bool {
    let req = client
        .get(format!(
            "http://{host}/computeMetadata/v1/instance/service-accounts/default/email"
        ))
        .header("Metadata-Flavor", "Google")
        .timeout(Duration::from_secs(2));
    matches!(req.send().await, Ok(r) if r.status().is_success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_account_files_get_a_clear_error() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            tmp.path(),
            r#"{"type": "external_account", "audience": "x"}"#,
        )
        .unwrap();
        let e = load_credentials(tmp.path()).err().unwrap();
        assert_eq!(e.kind(), Kind::Usage);
        assert!(
            e.message().contains("\"external_account\"") && e.message().contains("service_account"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn service_account_jwt_is_signed_rs256() {
        // A throwaway 2048-bit key generated for this test.
        let key = aws_lc_rs::rsa::KeySize::Rsa2048;
        let pair = aws_lc_rs::signature::RsaKeyPair::generate(key).unwrap();
        let jwt = service_account_jwt(
            "sa@p.iam.gserviceaccount.com",
            Some("kid1"),
            &pair,
            "http://127.0.0.1:1/token",
            SCOPE,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
        )
        .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "sa@p.iam.gserviceaccount.com");
        assert_eq!(claims["exp"], 4600);
        assert_eq!(claims["scope"], SCOPE);
        use aws_lc_rs::signature::KeyPair;
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            pair.public_key().as_ref(),
        );
        public
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &b64.decode(parts[2]).unwrap(),
            )
            .unwrap();
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hostile_object_lists_never_panic(name in "\\PC{0,20}", size in "\\PC{0,25}", junk in "\\PC{0,60}") {
            let body = serde_json::json!({"items": [{"name": name, "size": size, "generation": "1"}]}).to_string();
            if let Ok(list) = serde_json::from_str::<ObjectList>(&body) {
                for o in list.items {
                    let _ = super::super::below("m/", &o.name, "list");
                    let _ = o.size.parse::<u64>();
                }
            }
            let _ = serde_json::from_str::<ObjectList>(&junk);
        }
    }
}
