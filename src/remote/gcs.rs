//! `gs://BUCKET[/PREFIX]`: the GCS JSON API (list objects, `alt=media` ranged reads pinned to
//! the listed generation; media and resumable uploads), authorized by `gcs_auth` (Application
//! Default Credentials through google-cloud-auth). `STORAGE_EMULATOR_HOST` points at an
//! emulator and implies anonymous, as Google's own clients do. Hand-written rather than
//! google-cloud-storage: that crate brings gRPC and a second HTTP stack for the few JSON calls
//! a loader makes, and no ranged reads pinned to a generation with our retry policy.

use base64::Engine;
use reqwest::header::{HeaderMap, ACCEPT_ENCODING, RANGE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use super::body::FileRange;
use super::gcs_auth::{self, Auth};
use super::http::{self, uri_encode, ClientOptions};
use super::types::{ByteRange, Checksum, Fetched, Listing, RemoteFile, Source};
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;

const GCS: &str = "https://storage.googleapis.com";
/// Downloads ask for the least they need; uploads need to create objects.
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const SCOPE_WRITE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

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
    /// `gzip` for an object stored compressed (`gsutil cp -Z`).
    content_encoding: Option<String>,
}

pub struct Gcs {
    client: reqwest::Client,
    base: String,
    auth: Auth,
    /// The OAuth scope tokens are asked for: read-only, or read-write for uploads.
    scope: &'static str,
    bucket: String,
    prefix: String,
    /// Object reads through a P2P proxy (`--p2p-proxy`).
    pub(crate) p2p: Option<std::sync::Arc<super::p2p::P2p>>,
    /// Requester-pays bucket: the project billed, sent as `userProject` on every request
    /// (googleapis/google-cloud-python#4674).
    pub(crate) user_project: Option<String>,
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
        let scope = if write { SCOPE_WRITE } else { SCOPE };
        let auth = gcs_auth::discover(emulator.is_some(), scope, reporter).await?;
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
            scope,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            p2p: None,
            user_project: None,
        })
    }

    fn display(&self, name: &str) -> String {
        format!("gs://{}/{name}", self.bucket)
    }

    /// `url` with `userProject` for a requester-pays bucket.
    fn billed(&self, url: String) -> String {
        match &self.user_project {
            Some(p) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}userProject={}", uri_encode(p, false))
            }
            None => url,
        }
    }

    async fn get(&self, url: String, range: Option<ByteRange>, what: &str) -> Result<Response> {
        // Stored gzip objects would otherwise be decompressed on the fly, ignoring Range.
        let url = self.billed(url);
        let mut req = self.client.get(url).header(ACCEPT_ENCODING, "gzip");
        req = req.headers(self.auth.headers().await?);
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
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut url = format!(
                "{}/storage/v1/b/{}/o?prefix={}&maxResults=1000&fields={}",
                self.base,
                uri_encode(&self.bucket, false),
                uri_encode(folder, false),
                uri_encode(
                    "items(name,size,generation,md5Hash,crc32c,contentEncoding),nextPageToken",
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
            let body = http::capped_text(resp, &what).await?;
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
                let path = super::bucket::below(folder, &o.name, &what)?;
                out.push(self.remote_file(o, path, &what)?);
            }
            match list.next_page_token {
                Some(t) if !t.is_empty() => {
                    page = Some(super::types::next_page(&mut seen, t, &what)?)
                }
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
            archived: None,
            // Fetched as stored (`Accept-Encoding: gzip`), verified, then decompressed.
            stored_gzip: o
                .content_encoding
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip")),
            archive: None,
            staged: None,
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
        let body = http::capped_text(resp, &what).await?;
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
        let body = http::error_text(resp).await;
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
        // "Bucket is a requester pays bucket but no user project provided." (400, reason
        // `required`: googleapis/google-cloud-python#4674).
        let requester_pays = message.to_ascii_lowercase().contains("requester pays");
        let (kind, remedy) = match status.as_u16() {
            400 | 403 if requester_pays && self.user_project.is_none() => (
                Kind::Usage,
                format!("bucket {bucket} is requester-pays: add --requester-pays --billing-project PROJECT (MODEL_LOADER_REQUESTER_PAYS, MODEL_LOADER_BILLING_PROJECT) naming the project to bill"),
            ),
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
                return http::busy(format!("{what}: {says}"), status, http::retry_after(&headers));
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
        let base = self.billed(format!(
            "{}/upload/storage/v1/b/{}/o?name={}",
            self.base,
            uri_encode(&self.bucket, false),
            uri_encode(name, false)
        ));
        let auth = self.auth.headers().await?;
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

    fn authorized(&self, r: reqwest::RequestBuilder, auth: &HeaderMap) -> reqwest::RequestBuilder {
        r.headers(auth.clone())
    }

    /// Opens a resumable upload session; returns its URL.
    async fn start_resumable(
        &self,
        base: &str,
        len: u64,
        auth: &HeaderMap,
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
        auth: &HeaderMap,
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
        let body = http::capped_text(reply, what).await?;
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

impl super::bucket::BucketListing for Gcs {
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
        super::bucket::list_bucket(self).await
    }

    async fn fetch(&self, file: &RemoteFile, range: ByteRange) -> Result<Fetched> {
        let what = format!("GET {} ({range})", self.display(&file.key));
        let mut url = format!("{}?alt=media", self.object_url(&file.key));
        if let Some(g) = &file.version {
            url.push_str(&format!("&generation={}", uri_encode(g, false)));
        }
        if let Some((p2p, resp)) = self
            .fetch_p2p(&self.billed(url.clone()), file, range)
            .await?
        {
            let fetched = self.fetched(resp, file, range, &what).await;
            return p2p.watch(&file.key, fetched);
        }
        let resp = self.get(url, Some(range), &what).await?;
        self.fetched(resp, file, range, &what).await
    }
}

impl Gcs {
    /// The ranged GET through the P2P proxy: the same URL (pinned to the generation) with the
    /// bearer header, which the daemon replays for its back-to-source pieces within the
    /// token's hour; the task is bucket/object#generation. `None`: no proxy, or go direct.
    async fn fetch_p2p(
        &self,
        url: &str,
        file: &RemoteFile,
        range: ByteRange,
    ) -> Result<Option<(&std::sync::Arc<super::p2p::P2p>, Response)>> {
        let Some(p2p) = &self.p2p else {
            return Ok(None);
        };
        let mut headers = self.auth.headers().await?;
        // Stored gzip objects would otherwise be decompressed on the fly, ignoring Range.
        headers.insert(
            ACCEPT_ENCODING,
            reqwest::header::HeaderValue::from_static("gzip"),
        );
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&range.header()) {
            headers.insert(RANGE, v);
        }
        let task = file
            .version
            .as_ref()
            .map(|g| format!("gs://{}/{}#{g}", self.bucket, file.key));
        Ok(p2p
            .get(url, headers, task.as_deref(), &file.key)
            .await
            .map(|r| (p2p, r)))
    }

    /// Checks a reply to a ranged GET and turns it into the fetched body.
    async fn fetched(
        &self,
        resp: Response,
        file: &RemoteFile,
        range: ByteRange,
        what: &str,
    ) -> Result<Fetched> {
        if !resp.status().is_success() {
            return Err(self.status_error(resp, what, Some(&file.key)).await);
        }
        // Asked with `Accept-Encoding: gzip`: a stored-gzip object's reply says gzip, and
        // its bytes are the stored ones, which the listing's size and checksums describe.
        Ok(Fetched::plain(http::ranged_body_as_stored(
            resp, range, file.size, what,
        )?))
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
                    let _ = super::super::bucket::below("m/", &o.name, "list");
                    let _ = o.size.parse::<u64>();
                }
            }
            let _ = serde_json::from_str::<ObjectList>(&junk);
        }
    }
}
