//! `s3://BUCKET[/PREFIX]`: ListObjectsV2 and ranged GETs, signed with SigV4, credentials from
//! aws-config's full chain (env keys, profiles, IRSA, EKS Pod Identity / ECS, IMDSv2).
//!
//! Any S3-compatible server works: a custom endpoint (MinIO, Ceph, SeaweedFS, moto) gets
//! path-style addressing and may be plain `http://`. OSS reuses this client with the bucket in
//! the host.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{error::CredentialsError, ProvideCredentials};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, ETAG, LAST_MODIFIED};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;

use super::http::{self, ClientOptions};
use super::pin;
use super::sigv4::{self, Credentials};
use super::types::{
    ByteRange, Checksum, Fetched, Listing, PartChecksum, RemoteFile, Source, MAX_PARTS,
};
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;

/// How requests are signed.
pub enum Signer {
    /// No Authorization header: public buckets.
    Anonymous,
    /// A provider from aws-config, cached here because aws-config's own providers are not
    /// (one STS/IMDS call per request otherwise).
    Aws {
        provider: aws_credential_types::provider::SharedCredentialsProvider,
        cache: tokio::sync::Mutex<Option<(Credentials, Option<SystemTime>)>>,
    },
    /// Fixed keys (OSS, tests).
    Static(Credentials),
}

/// A refresh that timed out or met a failing STS/IMDS/SSO endpoint is transient (retried with
/// backoff like any request, exit 5 if it outlasts them); missing or invalid configuration is
/// access denied (exit 3).
fn credentials_error(e: CredentialsError) -> Error {
    use aws_credential_types::provider::error::CredentialsError as E;
    match &e {
        E::ProviderTimedOut(_) | E::ProviderError(_) | E::Unhandled(_) => Error::new(
            Kind::Network,
            "cannot refresh AWS credentials (aws-config chain): the credential provider failed; retrying",
        )
        .with_source(e)
        .transient(None),
        _ => Error::new(
            Kind::Denied,
            "cannot refresh AWS credentials (aws-config chain): check the credential configuration",
        )
        .with_source(e),
    }
}

impl Signer {
    async fn credentials(&self) -> Result<Option<Credentials>> {
        match self {
            Signer::Anonymous => Ok(None),
            Signer::Static(c) => Ok(Some(c.clone())),
            Signer::Aws { provider, cache } => {
                let mut guard = cache.lock().await;
                if let Some(c) = guard.as_ref() {
                    let fresh =
                        c.1.is_none_or(|exp| exp > SystemTime::now() + Duration::from_secs(300));
                    if fresh {
                        return Ok(Some(c.0.clone()));
                    }
                }
                let c = provider
                    .provide_credentials()
                    .await
                    .map_err(credentials_error)?;
                *guard = Some((c.clone(), c.expiry()));
                Ok(Some(c))
            }
        }
    }
}

/// The endpoint and region, as the AWS CLI picks them: `AWS_ENDPOINT_URL_S3` /
/// `AWS_ENDPOINT_URL` (path-style, unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`), the region
/// from the environment or profile, else (on AWS only) from instance metadata or the bucket.
async fn aws_endpoint(client: &reqwest::Client, bucket: &str) -> Result<(Endpoint, String)> {
    let endpoint_var = if crate::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        None
    } else {
        ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .into_iter()
            .find_map(|n| crate::env::var(n).map(|v| (n, v)))
    };
    let configured_region = match crate::env::first(&["AWS_REGION", "AWS_DEFAULT_REGION"]) {
        Some(r) => Some(r),
        // A custom endpoint (MinIO, Ceph) rarely cares about the region: read the profile,
        // but do not wait for instance metadata, which off AWS only times out.
        None if endpoint_var.is_some() => {
            use aws_config::meta::region::ProvideRegion;
            aws_config::profile::region::ProfileFileRegionProvider::new()
                .region()
                .await
                .map(|r| r.to_string())
        }
        None => aws_config::default_provider::region::DefaultRegionChain::builder()
            .build()
            .region()
            .await
            .map(|r| r.to_string()),
    };
    Ok(match &endpoint_var {
        Some((name, url)) => (
            Endpoint::path_style(url, bucket, name)?,
            configured_region.unwrap_or_else(|| "us-east-1".into()),
        ),
        None => {
            let region = match configured_region {
                Some(r) => r,
                None => discover_region(client, bucket)
                    .await
                    .unwrap_or_else(|| "us-east-1".into()),
            };
            (Endpoint::aws(bucket, &region), region)
        }
    })
}

/// Credentials from aws-config's default chain (env, profile, web identity, container, IMDS),
/// or anonymous requests when no source is configured at all.
async fn aws_signer(region: &str, endpoint: &Endpoint, reporter: &dyn Reporter) -> Result<Signer> {
    let provider = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .region(aws_config::Region::new(region.to_string()))
        .build()
        .await;
    match provider.provide_credentials().await {
        Ok(c) => {
            reporter.info(&format!(
                "s3: signing as access key {} from {} (aws-config chain), region {region}, endpoint {}",
                crate::redact::secret(c.access_key_id(), 4),
                provider_name(&c),
                endpoint.base
            ));
            Ok(Signer::Aws {
                provider: aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                cache: tokio::sync::Mutex::new(None),
            })
        }
        Err(CredentialsError::CredentialsNotLoaded(_)) => {
            reporter.info(&format!(
                "s3: no AWS credentials found (env, profile, web identity, container, IMDS): \
                 sending anonymous requests, region {region}, endpoint {}",
                endpoint.base
            ));
            Ok(Signer::Anonymous)
        }
        Err(e) => Err(Error::new(
            Kind::Denied,
            "cannot load AWS credentials: a source in the chain is configured but \
             failed (check AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE/AWS_ROLE_ARN, or the \
             container credentials endpoint)",
        )
        .with_source(e)),
    }
}

/// Where requests go: `base` is `scheme://host[:port]`, `base_path` the encoded path in front
/// of every key (`/bucket` for path-style, empty for virtual-hosted).
pub struct Endpoint {
    pub base: String,
    pub host: String,
    pub base_path: String,
}

impl Endpoint {
    /// Path-style on a custom endpoint, e.g. `http://minio:9000` + bucket `models`.
    pub fn path_style(endpoint: &str, bucket: &str, env_name: &str) -> Result<Self> {
        let url = reqwest::Url::parse(endpoint).map_err(|e| {
            Error::usage(format!(
                "{env_name}={:?} is not a URL; write it like http://minio:9000",
                crate::redact::userinfo(endpoint)
            ))
            .with_source(e)
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::usage(format!(
                "{env_name}={:?} must be an http:// or https:// URL with a host",
                crate::redact::userinfo(endpoint)
            )));
        }
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let path = url.path().trim_end_matches('/');
        Ok(Endpoint {
            base: format!("{}://{host}", url.scheme()),
            host,
            base_path: format!("{path}/{}", sigv4::uri_encode(bucket, false)),
        })
    }

    /// AWS itself: virtual-hosted, except for bucket names with dots (TLS wildcard mismatch).
    pub fn aws(bucket: &str, region: &str) -> Self {
        if bucket.contains('.') {
            let host = format!("s3.{region}.amazonaws.com");
            Endpoint {
                base: format!("https://{host}"),
                host,
                base_path: format!("/{bucket}"),
            }
        } else {
            let host = format!("{bucket}.s3.{region}.amazonaws.com");
            Endpoint {
                base: format!("https://{host}"),
                host,
                base_path: String::new(),
            }
        }
    }
}

/// How to reach and sign for one S3-compatible service.
pub struct Service {
    /// `s3` or `oss`: how URLs are shown in messages.
    pub scheme: &'static str,
    pub endpoint: Endpoint,
    pub region: String,
    pub signer: Signer,
    /// The environment variables that hold the credentials, for error hints.
    pub credential_hint: &'static str,
    /// The environment variable that sets the region, for error hints.
    pub region_hint: &'static str,
}

pub struct S3 {
    client: reqwest::Client,
    endpoint: Endpoint,
    region: String,
    signer: Signer,
    bucket: String,
    /// The URL's path after the bucket, as given (may name a folder or one object).
    prefix: String,
    scheme: &'static str,
    credential_hint: &'static str,
    region_hint: &'static str,
    /// Object reads through a P2P proxy, as presigned URLs (`--p2p-proxy`).
    pub(crate) p2p: Option<std::sync::Arc<super::p2p::P2p>>,
    /// [`S3::origin_facts`] by object key, asked once each.
    origin_facts: std::sync::Mutex<OriginFacts>,
}

type OriginFacts =
    std::collections::HashMap<String, std::sync::Arc<tokio::sync::OnceCell<ReplyFacts>>>;

impl S3 {
    pub fn new(client: reqwest::Client, service: Service, bucket: &str, prefix: &str) -> Self {
        S3 {
            client,
            endpoint: service.endpoint,
            region: service.region,
            signer: service.signer,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            scheme: service.scheme,
            credential_hint: service.credential_hint,
            region_hint: service.region_hint,
            p2p: None,
            origin_facts: Default::default(),
        }
    }

    /// An `s3://` source configured from the AWS environment the way the AWS CLI reads it.
    pub async fn open_aws(
        bucket: &str,
        prefix: &str,
        opts: &ClientOptions,
        reporter: &dyn Reporter,
    ) -> Result<Self> {
        let mut opts = opts.clone();
        if let Some(ca) = crate::env::var("AWS_CA_BUNDLE") {
            opts.ca_bundles.push(ca.into());
        }
        let client = http::client(&opts)?;
        let (endpoint, region) = aws_endpoint(&client, bucket).await?;
        let signer = aws_signer(&region, &endpoint, reporter).await?;
        let service = Service {
            scheme: "s3",
            endpoint,
            region,
            signer,
            credential_hint: "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            region_hint: "AWS_REGION",
        };
        Ok(S3::new(client, service, bucket, prefix))
    }

    fn display(&self, key: &str) -> String {
        format!("{}://{}/{key}", self.scheme, self.bucket)
    }

    /// Sends one signed request without a body; `path` is encoded, `query` raw.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        extra: &[(reqwest::header::HeaderName, String)],
        what: &str,
    ) -> Result<Response> {
        self.send_body(method, path, query, extra, None, what).await
    }

    /// Sends one signed request; a body (uploads) goes unsigned, protected by Content-MD5.
    async fn send_body(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        extra: &[(reqwest::header::HeaderName, String)],
        body: Option<reqwest::Body>,
        what: &str,
    ) -> Result<Response> {
        let q = sigv4::canonical_query(query);
        let url = if q.is_empty() {
            format!("{}{path}", self.endpoint.base)
        } else {
            format!("{}{path}?{q}", self.endpoint.base)
        };
        let mut req = self.client.request(method.clone(), &url);
        for (k, v) in extra {
            req = req.header(k, v);
        }
        let unsigned_body = body.is_some();
        if let Some(b) = body {
            req = req.body(b);
        }
        if let Some(creds) = self.signer.credentials().await? {
            let amz: Vec<(&str, &str)> = extra
                .iter()
                .filter(|(k, _)| k.as_str().starts_with("x-amz-"))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let signed = sigv4::sign_headers(
                &creds,
                method.as_str(),
                &url,
                &self.region,
                unsigned_body,
                &amz,
                SystemTime::now(),
            )?;
            for (k, v) in signed {
                req = req.header(k, v);
            }
        }
        req.send().await.map_err(|e| http::transport_error(what, e))
    }

    /// Uploads `len` bytes of `path` from `offset` as one object, or as part `part` of the
    /// multipart upload `upload_id`. Returns the ETag. `md5` goes in Content-MD5, so the
    /// server rejects a body that was damaged on the way.
    pub async fn put(
        &self,
        key: &str,
        body: super::body::FileRange,
        md5: [u8; 16],
        part: Option<(&str, u32)>,
    ) -> Result<String> {
        use base64::Engine;
        let what = match part {
            Some((_, n)) => format!("upload part {n} of {}", self.display(key)),
            None => format!("upload {}", self.display(key)),
        };
        let n = part.map(|(_, n)| n.to_string());
        let query: Vec<(&str, &str)> = match (&part, &n) {
            (Some((id, _)), Some(n)) => vec![("partNumber", n.as_str()), ("uploadId", id)],
            _ => vec![],
        };
        let extra = [
            (CONTENT_LENGTH, body.len.to_string()),
            (
                reqwest::header::HeaderName::from_static("content-md5"),
                base64::engine::general_purpose::STANDARD.encode(md5),
            ),
            (
                reqwest::header::CONTENT_TYPE,
                "application/octet-stream".into(),
            ),
        ];
        let resp = self
            .send_body(
                Method::PUT,
                &self.object_path(key),
                &query,
                &extra,
                Some(body.into_body()),
                &what,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &what, None).await);
        }
        header_str(resp.headers(), ETAG)
            .ok_or_else(|| Error::new(Kind::Network, format!("{what}: the reply has no ETag")))
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_multipart(&self, key: &str) -> Result<String> {
        let what = format!("start a multipart upload of {}", self.display(key));
        let body = self
            .post(key, &[("uploads", "")], &[], String::new(), &what)
            .await?;
        quick_xml::de::from_str::<InitiateMultipartUploadResult>(&body)
            .map(|r| r.upload_id)
            .ok()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::new(Kind::Network, format!("{what}: no UploadId in the reply")))
    }

    /// Completes a multipart upload from its parts' ETags, in order.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<()> {
        let what = format!("complete the multipart upload of {}", self.display(key));
        let xml = complete_multipart_xml(etags).map_err(|e| {
            Error::new(
                Kind::Internal,
                format!("{what}: cannot encode the part list"),
            )
            .with_source(e)
        })?;
        let extra = [(CONTENT_LENGTH, xml.len().to_string())];
        let body = self
            .post(key, &[("uploadId", upload_id)], &extra, xml, &what)
            .await?;
        // S3 can answer 200 and still fail: the error is then in the body.
        if body.contains("<Error>") {
            let code = ErrorBody::parse(&body).code;
            return Err(Error::new(Kind::Network, format!("{what}: {code}")).transient(None));
        }
        Ok(())
    }

    /// A signed POST to an object for the multipart calls; returns the reply's body.
    async fn post(
        &self,
        key: &str,
        query: &[(&str, &str)],
        extra: &[(reqwest::header::HeaderName, String)],
        body: String,
        what: &str,
    ) -> Result<String> {
        let resp = self
            .send_body(
                Method::POST,
                &self.object_path(key),
                query,
                extra,
                Some(reqwest::Body::from(body)),
                what,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, what, None).await);
        }
        http::capped_text(resp, what).await
    }

    /// Best effort: a failed multipart upload should not leave billable parts behind.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) {
        let _ = self
            .send(
                Method::DELETE,
                &self.object_path(key),
                &[("uploadId", upload_id)],
                &[],
                "abort",
            )
            .await;
    }

    /// The object key for a file `rel` uploaded under the URL's prefix.
    pub fn key_for(&self, rel: &str) -> String {
        join_key(&self.prefix, rel)
    }

    fn list_path(&self) -> String {
        if self.endpoint.base_path.is_empty() {
            "/".into()
        } else {
            self.endpoint.base_path.clone()
        }
    }

    fn object_path(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.endpoint.base_path,
            sigv4::uri_encode(key, true)
        )
    }

    /// Every object under `prefix` (a folder), following continuation tokens.
    async fn list_folder(&self, folder: &str) -> Result<Vec<RemoteFile>> {
        let mut files = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        let what = format!("list {}", self.display(folder));
        loop {
            let mut query = vec![
                ("list-type", "2"),
                ("prefix", folder),
                ("encoding-type", "url"),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            // Archived objects show whether a restore completed only when asked.
            let restore = (
                reqwest::header::HeaderName::from_static("x-amz-optional-object-attributes"),
                "RestoreStatus".to_string(),
            );
            let resp = self
                .send(Method::GET, &self.list_path(), &query, &[restore], &what)
                .await?;
            if !resp.status().is_success() {
                return Err(self.status_error(resp, &what, None).await);
            }
            let body = http::capped_text(resp, &what).await?;
            let page: ListBucketResult = quick_xml::de::from_str(&body).map_err(|e| {
                Error::new(
                    Kind::Network,
                    format!("{what}: the server's listing is not valid ListObjectsV2 XML"),
                )
                .with_source(e)
            })?;
            let encoded = page.encoding_type.as_deref() == Some("url");
            for obj in page.contents {
                let key = if encoded {
                    percent_decode(&obj.key).ok_or_else(|| {
                        Error::new(
                            Kind::Network,
                            format!("{what}: key {:?} is not valid URL-encoded UTF-8", obj.key),
                        )
                    })?
                } else {
                    obj.key
                };
                // Folder markers created by consoles: zero bytes, name ending in '/'.
                if key.ends_with('/') && obj.size == 0 {
                    continue;
                }
                let path = super::bucket::below(folder, &key, &what)?;
                let restored = obj.restore_status.as_ref().is_some_and(RestoreStatus::done);
                let mut f =
                    self.remote_file(key, path, obj.size, obj.e_tag, obj.last_modified.as_deref());
                f.archived = archived(obj.storage_class.as_deref(), restored);
                files.push(f);
            }
            match (page.is_truncated, page.next_continuation_token) {
                (true, Some(t)) => token = Some(super::types::next_page(&mut seen, t, &what)?),
                (true, None) => {
                    return Err(Error::new(
                        Kind::Network,
                        format!("{what}: the server says the listing is truncated but gives no continuation token"),
                    ))
                }
                _ => break,
            }
        }
        Ok(files)
    }

    fn remote_file(
        &self,
        key: String,
        path: String,
        size: u64,
        etag: Option<String>,
        modified: Option<&str>,
    ) -> RemoteFile {
        let checksum = etag.as_deref().and_then(md5_from_etag).map(Checksum::Md5);
        let version = pin::token(etag, modified, &key);
        RemoteFile {
            path,
            key,
            size,
            checksum,
            version,
            archived: None,
        }
    }

    /// Multipart objects: verified against their S3 additional checksum when they have one
    /// (`HEAD` with `x-amz-checksum-mode: ENABLED`: full-object CRC-64/NVME, CRC-32, CRC-32C,
    /// SHA-1, SHA-256, or composite per-part ones), else against their ETag, the MD5 of their
    /// part MD5s. Per-part checksums need the parts' lengths (see `layout`);
    /// objects whose layout the server will not tell keep a size-only check.
    async fn learn_checksums(&self, files: &mut [RemoteFile]) -> Result<()> {
        use futures_util::StreamExt;
        let todo: Vec<(usize, [u8; 16], u32, RemoteFile)> = files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                if let Some((digest, parts)) = f.version.as_deref().and_then(multipart_etag) {
                    return Some((i, digest, parts, f.clone()));
                }
                // A large single-part object is fetched in several ranges: a CRC it carries
                // (S3 adds CRC-64/NVME to new objects) combines per range, an MD5 is read back.
                (f.size > HEAD_CHECKSUM_ABOVE).then(|| (i, [0; 16], 0, f.clone()))
            })
            .collect();
        let learnt: Vec<_> =
            futures_util::stream::iter(todo.into_iter().map(|(i, digest, parts, f)| async move {
                let (extra, layout) = futures_util::future::join(
                    self.additional_checksum(&f, parts),
                    self.layout(&f, parts),
                )
                .await;
                (i, digest, parts, extra, layout)
            }))
            .buffer_unordered(16)
            .collect()
            .await;
        for (i, digest, parts, extra, layout) in learnt {
            let f = &mut files[i];
            let (extra, etag) = extra?;
            // A whole-object checksum needs no layout: one the server describes impossibly
            // (or not at all) does not matter then.
            let layout = match (&extra, layout) {
                (Some(Additional::Whole(_)), _) => None,
                (_, layout) => layout?,
            };
            if parts == 0 {
                // Single part: a whole-object CRC replaces the MD5 ETag; anything else keeps it.
                // A listing without ETags (s3s-fs) takes the HEAD's: as the version that pins
                // every read, and as the checksum if it is a plain MD5.
                if let Some(e) = etag.as_ref().filter(|_| !listed_etag(f)) {
                    f.version = Some(e.clone());
                }
                if let Some(Additional::Whole(
                    c @ (Checksum::Crc32(_) | Checksum::Crc32c(_) | Checksum::Crc64Nvme(_)),
                )) = extra
                {
                    f.checksum = Some(c);
                } else if f.checksum.is_none() {
                    f.checksum = etag.as_deref().and_then(md5_from_etag).map(Checksum::Md5);
                }
                continue;
            }
            // `layout` confirmed an equal layout for the ETag's part count; a composite checksum
            // over another count cannot be checked with it.
            f.checksum = match (extra, layout) {
                (Some(Additional::Whole(c)), _) => Some(c),
                (
                    Some(Additional::Composite {
                        of,
                        parts: n,
                        value,
                    }),
                    Some(Layout::Equal(p)),
                ) if n == parts => Some(Checksum::Composite {
                    of,
                    part_size: p,
                    parts,
                    value,
                }),
                (None, Some(Layout::Equal(p))) => Some(Checksum::MultipartMd5 {
                    part_size: p,
                    parts,
                    digest,
                }),
                (
                    Some(Additional::Composite {
                        of,
                        parts: n,
                        value,
                    }),
                    Some(Layout::Uneven(lengths)),
                ) if n == parts => Some(Checksum::UnevenParts {
                    of: Some(of),
                    lengths,
                    value,
                }),
                (None, Some(Layout::Uneven(lengths))) => Some(Checksum::UnevenParts {
                    of: None,
                    lengths,
                    value: digest.to_vec(),
                }),
                _ => None,
            };
        }
        Ok(())
    }

    /// The object's S3 additional checksum, if it has one and the server tells.
    /// Also returns the HEAD's ETag: some servers (s3s-fs) list objects without one.
    async fn additional_checksum(
        &self,
        f: &RemoteFile,
        parts: u32,
    ) -> Result<(Option<Additional>, Option<String>)> {
        let what = format!("HEAD {} (checksums)", self.display(&f.key));
        let mode = (
            reqwest::header::HeaderName::from_static("x-amz-checksum-mode"),
            "ENABLED".to_string(),
        );
        let resp = self.verification_head(&f.key, &[], &[mode], &what).await?;
        if !resp.status().is_success() {
            return Ok((None, None));
        }
        let etag = header_str(resp.headers(), ETAG);
        Ok((parse_additional(resp.headers(), parts), etag))
    }

    /// How a multipart object is cut (None: the server would not say). Equal parts but the last
    /// is what aws-cli, boto3, s5cmd, rclone and this tool upload: part 1's length gives the
    /// size, the last part's length confirms it, and ranges are cut at part boundaries so each
    /// part is hashed by the stream that fetched it. Other writers cut other layouts: then
    /// every part's length is asked for (one `HEAD` each, only for such objects), and the
    /// object is hashed in order, part by part, rather than failed as corrupt on every attempt.
    async fn layout(&self, f: &RemoteFile, parts: u32) -> Result<Option<Layout>> {
        use futures_util::StreamExt;
        if parts <= 1 {
            return Ok((f.size > 0).then_some(Layout::Equal(f.size)));
        }
        // Every part holds a byte at least, and S3 allows 10,000: an ETag claiming more is no
        // reason to send thousands of HEADs, nor to hash that many parts.
        if parts > MAX_PARTS || u64::from(parts) > f.size {
            return Err(self.impossible_layout(f, parts, None));
        }
        let (first, last) = futures_util::future::join(
            self.part_length(f, 1, parts),
            self.part_length(f, parts, parts),
        )
        .await;
        let (Some(first), Some(last)) = (first?, last?) else {
            return Ok(None);
        };
        if last_part_fits(f.size, first, parts, last) {
            // Each part is hashed on its own as it streams in: parts below what any S3 or OSS
            // upload makes would cost a digest (and memory) per few bytes.
            if first < MIN_PART_SIZE {
                return Err(self.impossible_layout(f, parts, Some(first)));
            }
            return Ok(Some(Layout::Equal(first)));
        }
        let middle: Vec<Result<Option<u64>>> = futures_util::stream::iter(2..parts)
            .map(|n| self.part_length(f, n, parts))
            .buffered(16)
            .collect()
            .await;
        let mut lengths = vec![first];
        for len in middle {
            match len? {
                Some(len) => lengths.push(len),
                None => return Ok(None),
            }
        }
        lengths.push(last);
        let total = lengths.iter().try_fold(0u64, |a, &n| a.checked_add(n));
        Ok((lengths.iter().all(|&n| n > 0) && total == Some(f.size))
            .then(|| Layout::Uneven(lengths.into())))
    }

    /// A part layout no S3 or OSS upload can make: refused rather than hashed part by part.
    fn impossible_layout(&self, f: &RemoteFile, parts: u32, part_size: Option<u64>) -> Error {
        let parts_of = match part_size {
            Some(p) => format!("{parts} parts of {p} bytes"),
            None => format!("{parts} parts"),
        };
        Error::new(
            Kind::Network,
            format!(
                "{}: the server describes this {}-byte object as {parts_of}, which no S3 or OSS \
                 upload makes (at most {MAX_PARTS} parts, each at least {} KiB but the last); \
                 refusing to verify against it: check that the endpoint is the storage service",
                self.display(&f.key),
                f.size,
                MIN_PART_SIZE >> 10
            ),
        )
    }

    /// The length of part `n` of an object of `parts` parts (`HEAD ?partNumber=n`); None when
    /// the reply does not describe such a part.
    async fn part_length(&self, f: &RemoteFile, n: u32, parts: u32) -> Result<Option<u64>> {
        let what = format!("HEAD {} (part {n})", self.display(&f.key));
        let number = n.to_string();
        // No If-Match: some servers (moto) compare it with the part's own ETag. The ranged GETs
        // carry it, so an object replaced since the listing is still caught.
        let resp = self
            .verification_head(&f.key, &[("partNumber", number.as_str())], &[], &what)
            .await?;
        let count = header_u64(
            resp.headers(),
            "x-amz-mp-parts-count".parse().expect("valid"),
        );
        let len = header_u64(resp.headers(), CONTENT_LENGTH);
        Ok(match (resp.status().is_success(), count, len) {
            (true, Some(c), Some(len)) if c == u64::from(parts) => Some(len),
            _ => None,
        })
    }

    /// A HEAD that decides how an object is verified. Only a definite answer counts: a
    /// success, or a refusal that says the server will not tell (4xx, 501). Throttling and
    /// server errors (5xx, 429, 408) and broken connections are retried here, a few times
    /// with backoff, then end the listing with a transient error (itself retried, then exit 5)
    /// — never read as "no checksum", which would switch verification off silently.
    async fn verification_head(
        &self,
        key: &str,
        query: &[(&str, &str)],
        extra: &[(reqwest::header::HeaderName, String)],
        what: &str,
    ) -> Result<Response> {
        let policy = crate::retry::RetryPolicy::default();
        let mut failures = 0;
        loop {
            let err = match self
                .send(Method::HEAD, &self.object_path(key), query, extra, what)
                .await
            {
                Ok(r) if r.status() == StatusCode::NOT_IMPLEMENTED => return Ok(r),
                Ok(r) if http::is_transient_status(r.status()) => {
                    self.status_error(r, what, Some(key)).await
                }
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let crate::error::Retry::After(server_wait) = err.retry() else {
                return Err(err);
            };
            failures += 1;
            if failures >= VERIFICATION_HEAD_TRIES {
                return Err(err);
            }
            tokio::time::sleep(policy.wait(failures, server_wait, fastrand::f64())).await;
        }
    }

    /// HEAD one object: the fallback when the URL names a single object.
    async fn head(&self, key: &str) -> Result<Option<RemoteFile>> {
        let what = format!("HEAD {}", self.display(key));
        let resp = self
            .send(Method::HEAD, &self.object_path(key), &[], &[], &what)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &what, None).await);
        }
        let size = header_u64(resp.headers(), CONTENT_LENGTH).ok_or_else(|| {
            Error::new(
                Kind::Network,
                format!("{what}: the reply has no Content-Length"),
            )
        })?;
        let etag = header_str(resp.headers(), ETAG);
        let modified = header_str(resp.headers(), LAST_MODIFIED);
        let name = key.rsplit('/').next().unwrap_or(key).to_string();
        let mut f = self.remote_file(key.to_string(), name, size, etag, modified.as_deref());
        // `x-amz-restore: ongoing-request="false", expiry-date="…"`: a restored copy to read.
        let restored = header_str(resp.headers(), "x-amz-restore".parse().expect("valid"))
            .is_some_and(|r| r.contains("ongoing-request=\"false\""));
        let class = header_str(
            resp.headers(),
            "x-amz-storage-class".parse().expect("valid"),
        );
        f.archived = archived(class.as_deref(), restored);
        Ok(Some(f))
    }

    /// Turns a non-success reply into a classified error with a remedy. Only the S3 error
    /// `Code` and `Message` are used: the rest of an error body (StringToSign,
    /// CanonicalRequest) can echo a session token.
    async fn status_error(&self, resp: Response, what: &str, key: Option<&str>) -> Error {
        let status = resp.status();
        let headers = resp.headers().clone();
        // A HEAD reply has no body; reading it returns empty at once.
        let body = http::error_text(resp).await;
        let ErrorBody { code, message } = ErrorBody::parse(&body);
        let server_says = match (code.is_empty(), message.is_empty()) {
            (true, _) => format!("HTTP {status}"),
            (false, true) => format!("HTTP {status} {code}"),
            (false, false) => format!("HTTP {status} {code}: {message}"),
        };
        let anonymous = matches!(self.signer, Signer::Anonymous);
        let hint = self.credential_hint;
        let bucket = &self.bucket;
        let (kind, remedy) = match (status.as_u16(), code.as_str()) {
            (301 | 307, _) | (400, "AuthorizationHeaderMalformed") => {
                let region = headers
                    .get("x-amz-bucket-region")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("another region");
                (
                    Kind::Usage,
                    format!("bucket {bucket} is in {region}, not {}: set {}={region}", self.region, self.region_hint),
                )
            }
            (_, "InvalidAccessKeyId") => (
                Kind::Denied,
                format!("the server does not know this access key: check {hint}"),
            ),
            (_, "SignatureDoesNotMatch") => (
                Kind::Denied,
                format!("the signature does not match: check the secret in {hint}"),
            ),
            (_, "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired") => (
                Kind::Denied,
                "the session token is expired or invalid: refresh the credentials".into(),
            ),
            (_, "InvalidObjectState") => (
                Kind::Denied,
                format!("{} is archived (an archive storage class or tier) and must be restored before it can be read: restore it (aws s3api restore-object) or leave it out with --exclude", key.map_or_else(|| "the object".into(), |k| self.display(k))),
            ),
            (_, "RequestTimeTooSkewed") => (
                Kind::Denied,
                "this machine's clock is too far off the server's: fix the clock (NTP)".into(),
            ),
            (401 | 403, _) if anonymous => (
                Kind::Denied,
                format!("no credentials were found, so the request was anonymous: set {hint} (or use IRSA / a profile)"),
            ),
            (401 | 403, _) => (
                Kind::Denied,
                format!("these credentials may not read bucket {bucket}: grant s3:ListBucket and s3:GetObject, or use other credentials"),
            ),
            (404, "NoSuchBucket") => (
                Kind::NotFound,
                format!("bucket {bucket} does not exist (check the URL, the endpoint and the region)"),
            ),
            (404, _) => (
                Kind::NotFound,
                match key {
                    Some(k) => format!("{} no longer exists: it was deleted after the listing; rerun", self.display(k)),
                    None => "not found: check the bucket and prefix".into(),
                },
            ),
            (412, _) => (
                Kind::Network,
                "the object changed on the server during the download (its ETag no longer matches the listing): rerun to fetch the new version".into(),
            ),
            (416, _) => (
                Kind::Network,
                "the object is shorter than the listing said: it changed during the download; rerun".into(),
            ),
            (s, c) if http::is_transient_status(status) || c == "SlowDown" || c == "InternalError" => {
                let after = http::retry_after(&headers);
                let _ = s;
                return Error::new(Kind::Network, format!("{what}: {server_says}"))
                    .transient(after);
            }
            _ => (Kind::Network, "unexpected answer from the server".into()),
        };
        Error::new(kind, format!("{what}: {server_says}; {remedy}"))
    }
}

/// Whether the listed version is an ETag (not a Last-Modified token, nor none).
fn listed_etag(f: &RemoteFile) -> bool {
    f.version
        .as_deref()
        .is_some_and(|v| !matches!(pin::pin(v), pin::Pin::Modified(_)))
}

impl super::bucket::BucketListing for S3 {
    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn display(&self, key: &str) -> String {
        S3::display(self, key)
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<RemoteFile>> {
        S3::list_folder(self, folder).await
    }

    async fn head(&self, key: &str) -> Result<Option<RemoteFile>> {
        S3::head(self, key).await
    }
}

impl Source for S3 {
    async fn list(&self) -> Result<Listing> {
        let mut listing = super::bucket::list_bucket(self).await?;
        // OSS too: its replies' whole-object CRC-64 takes precedence where it is sent
        // (transfer::finalize), the multipart ETag covers servers that do not send it.
        self.learn_checksums(&mut listing.files).await?;
        Ok(listing)
    }

    async fn fetch(&self, file: &RemoteFile, range: ByteRange) -> Result<Fetched> {
        let what = format!("GET {} ({range})", self.display(&file.key));
        if let Some((p2p, resp, facts)) = self.fetch_p2p(file, range).await? {
            let fetched = self.fetched(resp, file, range, &what, Some(facts)).await;
            return p2p.watch(&file.key, fetched);
        }
        let mut extra = vec![(reqwest::header::RANGE, range.header())];
        extra.extend(precondition(file));
        let resp = self
            .send(
                Method::GET,
                &self.object_path(&file.key),
                &[],
                &extra,
                &what,
            )
            .await?;
        self.fetched(resp, file, range, &what, None).await
    }
}

/// The precondition header pinning a read of `file` to its listed version, as `send` takes it.
fn precondition(file: &RemoteFile) -> Option<(reqwest::header::HeaderName, String)> {
    let (name, value) = file.version.as_deref().and_then(pin::precondition)?;
    Some((name, value.to_str().ok()?.to_string()))
}

impl S3 {
    /// The ranged GET through the P2P proxy, as a presigned URL (SignedHeaders=host) that the
    /// daemon can replay later with its own ranges; `None` when there is no proxy or it should
    /// go direct. The task is the object's content identity, the same on every node. Only
    /// bytes that will be verified cross the proxy: an object with no version token (no task
    /// id would change with its bytes) or nothing to check it against but its size goes direct.
    async fn fetch_p2p(
        &self,
        file: &RemoteFile,
        range: ByteRange,
    ) -> Result<Option<(&std::sync::Arc<super::p2p::P2p>, Response, ReplyFacts)>> {
        let Some(p2p) = &self.p2p else {
            return Ok(None);
        };
        let Some(version) = &file.version else {
            p2p.bypass("an object without a version token goes direct");
            return Ok(None);
        };
        let facts = self.origin_facts_if_needed(file).await?;
        let checked = super::types::authority(
            file.checksum.clone(),
            facts.checksum.clone(),
            facts.etag_is_md5,
        );
        if checked.is_none() {
            p2p.bypass("an object with no checksum to verify it by goes direct");
            return Ok(None);
        }
        let url = format!("{}{}", self.endpoint.base, self.object_path(&file.key));
        let url = match self.signer.credentials().await? {
            Some(creds) => {
                sigv4::presign(&creds, &url, &self.region, PRESIGNED_FOR, SystemTime::now())?
            }
            None => url,
        };
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RANGE, header_value(&range.header()));
        if let Some((name, value)) = pin::precondition(version) {
            headers.insert(name, value);
        }
        let task = format!(
            "{}://{}/{}@{}",
            self.scheme,
            self.bucket,
            file.key,
            version.trim_matches('"')
        );
        Ok(p2p
            .get(&url, headers, Some(&task), &file.key)
            .await
            .map(|r| (p2p, r, facts)))
    }

    /// Checks a reply to a ranged GET and turns it into the fetched body. What the reply says of
    /// the checksum (an ETag that is no MD5, OSS's CRC-64) is believed only from the origin:
    /// a reply through a P2P proxy comes with `origin` (what the origin said, or nothing to
    /// ask), and its own headers are ignored, so a proxy can neither switch verification off
    /// nor supply the value it is checked against.
    async fn fetched(
        &self,
        resp: Response,
        file: &RemoteFile,
        range: ByteRange,
        what: &str,
        origin: Option<ReplyFacts>,
    ) -> Result<Fetched> {
        let what = what.to_string();
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &what, Some(&file.key)).await);
        }
        // A server that ignores the precondition must still not mix two versions.
        if let Some(got) = file
            .version
            .as_deref()
            .and_then(|v| pin::changed(v, resp.headers()))
        {
            return Err(Error::new(
                Kind::Network,
                format!("{what}: the object changed on the server during the download ({got}); rerun to fetch the new version"),
            ));
        }
        let facts = origin.unwrap_or_else(|| self.reply_facts(resp.headers()));
        let body = http::ranged_body(resp, range, file.size, &what)?;
        Ok(Fetched {
            body,
            checksum_applies: facts.etag_is_md5,
            object_checksum: facts.checksum,
        })
    }

    /// What an origin's reply headers say of the bytes beyond the listing.
    fn reply_facts(&self, h: &HeaderMap) -> ReplyFacts {
        // SSE-KMS and SSE-C objects have ETags that are not the MD5 of their bytes.
        let etag_is_md5 = !h
            .get("x-amz-server-side-encryption")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("aws:kms"))
            && !h.contains_key("x-amz-server-side-encryption-customer-algorithm");
        // OSS's whole-object CRC-64; no S3 server sends it, so `s3://` never reads it.
        let crc64 = (self.scheme == "oss")
            .then(|| header_str(h, "x-oss-hash-crc64ecma".parse().expect("valid name")))
            .flatten()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Checksum::Crc64Ecma);
        ReplyFacts {
            etag_is_md5,
            checksum: crc64,
        }
    }

    /// In P2P mode, before an object's bytes come through the proxy: what the origin says of
    /// them, when the checksum to verify them by depends on it (one read from the ETag, none
    /// at all, or OSS's CRC-64); else nothing to ask. Errors are the origin's, not the proxy's.
    async fn origin_facts_if_needed(&self, file: &RemoteFile) -> Result<ReplyFacts> {
        let depends =
            self.scheme == "oss" || file.checksum.as_ref().is_none_or(Checksum::from_etag);
        if !depends {
            return Ok(ReplyFacts {
                etag_is_md5: true,
                checksum: None,
            });
        }
        self.origin_facts(file).await
    }

    /// [`S3::reply_facts`] from a direct HEAD to the origin (pinned to the listed version, with
    /// `x-amz-checksum-mode`), asked once per object: for bytes that come through a P2P proxy.
    async fn origin_facts(&self, file: &RemoteFile) -> Result<ReplyFacts> {
        let cell = {
            let mut cache = self.origin_facts.lock().unwrap_or_else(|p| p.into_inner());
            std::sync::Arc::clone(cache.entry(file.key.clone()).or_default())
        };
        let facts = cell
            .get_or_try_init(|| async {
                let what = format!(
                    "HEAD {} (direct, for its checksum)",
                    self.display(&file.key)
                );
                let mode = (
                    reqwest::header::HeaderName::from_static("x-amz-checksum-mode"),
                    "ENABLED".to_string(),
                );
                let extra: Vec<_> = precondition(file).into_iter().chain([mode]).collect();
                let resp = self
                    .send(
                        Method::HEAD,
                        &self.object_path(&file.key),
                        &[],
                        &extra,
                        &what,
                    )
                    .await?;
                if !resp.status().is_success() {
                    return Err(self.status_error(resp, &what, Some(&file.key)).await);
                }
                let mut facts = self.reply_facts(resp.headers());
                // The whole-object additional checksum it was asked for: of the plaintext, so
                // valid under SSE-KMS too (S3 adds CRC-64/NVME to new objects).
                let parts = file
                    .version
                    .as_deref()
                    .and_then(multipart_etag)
                    .map_or(0, |(_, n)| n);
                if let Some(Additional::Whole(c)) = parse_additional(resp.headers(), parts) {
                    facts.checksum = facts.checksum.or(Some(c));
                }
                Ok(facts)
            })
            .await?;
        Ok(facts.clone())
    }
}

/// What an origin says of an object's bytes beyond the listing.
#[derive(Debug, Clone)]
struct ReplyFacts {
    /// False for SSE-KMS and SSE-C objects: a checksum read from the ETag does not apply.
    etag_is_md5: bool,
    /// A whole-object checksum the origin sent: OSS's `x-oss-hash-crc64ecma`, or an S3
    /// additional checksum when asked for (P2P mode's direct HEAD).
    checksum: Option<Checksum>,
}

/// The region a bucket lives in, from an unauthenticated HEAD on the global endpoint (S3
/// answers with `x-amz-bucket-region` even on 403/301). Only used when nothing configures a
/// region, so a pod without AWS_REGION still reaches a bucket outside us-east-1.
async fn discover_region(client: &reqwest::Client, bucket: &str) -> Option<String> {
    let url = format!("https://{bucket}.s3.amazonaws.com/");
    let resp = client.head(url).send().await.ok()?;
    resp.headers()
        .get("x-amz-bucket-region")?
        .to_str()
        .ok()
        .map(str::to_string)
}

/// A plain 32-hex ETag is the MD5 of a single-part upload; multipart ETags end in `-N`.
/// Single-part objects larger than this (the default chunk size: fetched in several ranges) are
/// asked for an additional checksum too.
const HEAD_CHECKSUM_ABOVE: u64 = 64 << 20;

/// The smallest part but the last that an upload makes: OSS's minimum (S3's is 5 MiB).
const MIN_PART_SIZE: u64 = 100 << 10;

/// Tries of one verification HEAD before the listing as a whole fails (and is retried).
const VERIFICATION_HEAD_TRIES: u32 = 4;

/// An S3 additional checksum from `x-amz-checksum-*` headers.
#[derive(Debug, PartialEq, Eq)]
enum Additional {
    Whole(Checksum),
    Composite {
        of: PartChecksum,
        parts: u32,
        value: Vec<u8>,
    },
}

/// Reads the first `x-amz-checksum-{crc64nvme,crc32,crc32c,sha1,sha256}` header: base64 of the
/// value, with `-N` when it is composite over N parts. For an object of `parts` parts, a value
/// without `-N` is still composite unless `x-amz-checksum-type: FULL_OBJECT` says otherwise
/// (multipart checksums were composite-only until S3 added full-object ones with that header;
/// moto 5 omits the suffix).
fn parse_additional(h: &HeaderMap, parts: u32) -> Option<Additional> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for (name, of) in [
        ("x-amz-checksum-crc64nvme", None),
        ("x-amz-checksum-crc32", Some(PartChecksum::Crc32)),
        ("x-amz-checksum-crc32c", Some(PartChecksum::Crc32c)),
        ("x-amz-checksum-sha1", Some(PartChecksum::Sha1)),
        ("x-amz-checksum-sha256", Some(PartChecksum::Sha256)),
    ] {
        let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let full = h
            .get("x-amz-checksum-type")
            .and_then(|t| t.to_str().ok())
            .is_some_and(|t| t.eq_ignore_ascii_case("FULL_OBJECT"));
        let (value, parts) = match v.trim().split_once('-') {
            Some((value, n)) => (value, Some(n.parse::<u32>().ok()?)),
            None if parts > 1 && !full => (v.trim(), Some(parts)),
            None => (v.trim(), None),
        };
        let bytes = b64.decode(value).ok()?;
        return match (of, parts) {
            (Some(of), Some(parts)) => Some(Additional::Composite {
                of,
                parts,
                value: bytes,
            }),
            // CRC-64/NVME is always full-object, whatever the part count.
            (None, Some(_)) => Some(Additional::Whole(Checksum::Crc64Nvme(u64::from_be_bytes(
                bytes.try_into().ok()?,
            )))),
            (of, None) => Some(Additional::Whole(match of {
                None => Checksum::Crc64Nvme(u64::from_be_bytes(bytes.try_into().ok()?)),
                Some(PartChecksum::Crc32) => {
                    Checksum::Crc32(u32::from_be_bytes(bytes.try_into().ok()?))
                }
                Some(PartChecksum::Crc32c) => {
                    Checksum::Crc32c(u32::from_be_bytes(bytes.try_into().ok()?))
                }
                Some(PartChecksum::Sha1) => Checksum::Sha1(bytes.try_into().ok()?),
                Some(PartChecksum::Sha256) => Checksum::Sha256(bytes.try_into().ok()?),
            })),
        };
    }
    None
}

/// `"hex-N"`: the MD5 of the N part MD5s of a multipart upload (N ≥ 1).
fn multipart_etag(etag: &str) -> Option<([u8; 16], u32)> {
    let (digest, parts) = etag.trim_matches('"').split_once('-')?;
    let parts: u32 = parts.parse().ok().filter(|&n| n >= 1)?;
    let mut out = [0u8; 16];
    hex::decode_to_slice(digest, &mut out).ok()?;
    Some((out, parts))
}

fn md5_from_etag(etag: &str) -> Option<[u8; 16]> {
    let t = etag.trim_matches('"');
    if t.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(t, &mut out).ok()?;
    Some(out)
}

/// The provider that produced the credentials, e.g. `Environment`, `ProfileFile`,
/// `WebIdentityToken`, `EcsContainer`, `Ec2InstanceMetadata`. aws-config has no getter, but
/// its redacting Debug prints the name first.
fn provider_name(c: &aws_credential_types::Credentials) -> String {
    let d = format!("{c:?}");
    d.split("provider_name: \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("the default chain")
        .to_string()
}

fn header_str(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_string)
}

/// How a multipart object's bytes are cut into parts.
enum Layout {
    /// Parts of this size but the last, which holds what remains.
    Equal(u64),
    /// Each part's length, in order.
    Uneven(std::sync::Arc<[u64]>),
}

/// Whether `parts` parts of `part` bytes but the last, whose length the server gave as `last`,
/// make up `size` bytes: the last part is what remains after the others, and not empty.
fn last_part_fits(size: u64, part: u64, parts: u32, last: u64) -> bool {
    let before = u64::from(parts.saturating_sub(1)).checked_mul(part);
    last > 0 && last <= part && before.and_then(|b| b.checked_add(last)) == Some(size)
}

fn header_u64(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

/// How long a presigned URL handed to the P2P proxy stays valid: the daemon replays it for
/// later pieces of the task.
const PRESIGNED_FOR: Duration = Duration::from_secs(3600);

fn header_value(v: &str) -> reqwest::header::HeaderValue {
    reqwest::header::HeaderValue::from_str(v)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""))
}

/// What S3 and OSS error bodies say. Only `Code` and `Message` are read: the rest of an error
/// body (StringToSign, CanonicalRequest) can echo a session token.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl ErrorBody {
    /// Empty fields when the body is not an S3 error document (a proxy's HTML page).
    fn parse(body: &str) -> ErrorBody {
        let mut e: ErrorBody = quick_xml::de::from_str(body).unwrap_or_default();
        e.code = e.code.trim().to_string();
        e.message = e.message.trim().to_string();
        e
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateMultipartUploadResult {
    upload_id: String,
}

/// `<CompleteMultipartUpload>` with the parts' numbers (from 1) and ETags, in order.
fn complete_multipart_xml(etags: &[String]) -> std::result::Result<String, quick_xml::SeError> {
    #[derive(serde::Serialize)]
    #[serde(rename = "CompleteMultipartUpload")]
    struct Complete<'a> {
        #[serde(rename = "Part")]
        parts: Vec<Part<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Part<'a> {
        #[serde(rename = "PartNumber")]
        number: usize,
        #[serde(rename = "ETag")]
        etag: &'a str,
    }
    let parts = etags
        .iter()
        .enumerate()
        .map(|(i, etag)| Part {
            number: i + 1,
            etag,
        })
        .collect();
    quick_xml::se::to_string(&Complete { parts })
}

/// `prefix` (a folder, with or without a trailing '/') joined with a relative path.
pub fn join_key(prefix: &str, rel: &str) -> String {
    match prefix.trim_end_matches('/') {
        "" => rel.to_string(),
        p => format!("{p}/{rel}"),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    // ListObjectsV2 with encoding-type=url encodes like application/x-www-form-urlencoded
    // in some servers ('+' for space); real S3 uses %20. A literal '+' is always %2B.
    let s = s.replace('+', "%20");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
    #[serde(default)]
    contents: Vec<ListedObject>,
    encoding_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedObject {
    key: String,
    size: u64,
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
    last_modified: Option<String>,
    storage_class: Option<String>,
    /// Only when asked for (`x-amz-optional-object-attributes: RestoreStatus`).
    restore_status: Option<RestoreStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RestoreStatus {
    #[serde(default)]
    is_restore_in_progress: bool,
    restore_expiry_date: Option<String>,
}

impl RestoreStatus {
    /// A restored copy is there to read.
    fn done(&self) -> bool {
        !self.is_restore_in_progress && self.restore_expiry_date.is_some()
    }
}

/// The storage class of an object that cannot be read until it is restored (S3 Glacier
/// Flexible Retrieval and Deep Archive; Glacier Instant Retrieval reads at once), unless a
/// restore has completed (`restored`). S3 answers a read of one with 403 InvalidObjectState.
fn archived(class: Option<&str>, restored: bool) -> Option<String> {
    let class = class?.trim();
    (matches!(class, "GLACIER" | "DEEP_ARCHIVE") && !restored).then(|| class.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_part_confirms_equal_parts() {
        const M: u64 = 1 << 20;
        // 6, 6, 6, 2 MiB: equal but the last.
        assert!(last_part_fits(20 * M, 6 * M, 4, 2 * M));
        // 6, 5, 6, 2 MiB (19 MiB): part 1 alone suggests 6, 6, 6, 1; the last part says no.
        assert!(!last_part_fits(19 * M, 6 * M, 4, 2 * M));
        // A last part as long as the others, and one longer than part 1.
        assert!(last_part_fits(24 * M, 8 * M, 3, 8 * M));
        assert!(!last_part_fits(25 * M, 8 * M, 3, 9 * M));
        // An empty last part, and sizes that overflow.
        assert!(!last_part_fits(16 * M, 8 * M, 3, 0));
        assert!(!last_part_fits(u64::MAX, u64::MAX, 3, 1));
    }

    #[test]
    fn additional_checksum_headers() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        // The reveng check value of CRC-32 for "123456789", base64 of its big-endian bytes.
        let crc = "y/Q5Jg==";
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc32", crc)]), 1),
            Some(Additional::Whole(Checksum::Crc32(0xcbf4_3926)))
        );
        let composite = Some(Additional::Composite {
            of: PartChecksum::Crc32,
            parts: 3,
            value: vec![0xcb, 0xf4, 0x39, 0x26],
        });
        let suffixed = format!("{crc}-3");
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc32", &suffixed)]), 3),
            composite
        );
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc32", crc)]), 3),
            composite,
            "a multipart object without -N (moto) is composite"
        );
        assert_eq!(
            parse_additional(
                &h(&[
                    ("x-amz-checksum-crc32", crc),
                    ("x-amz-checksum-type", "FULL_OBJECT")
                ]),
                3
            ),
            Some(Additional::Whole(Checksum::Crc32(0xcbf4_3926)))
        );
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc64nvme", "rosUhgp5mIg=")]), 3),
            Some(Additional::Whole(Checksum::Crc64Nvme(
                0xae8b_1486_0a79_9888
            )))
        );
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc32", "%%%")]), 1),
            None
        );
        assert_eq!(parse_additional(&h(&[]), 3), None);
    }

    #[test]
    fn a_failing_credential_refresh_is_retried_but_bad_configuration_is_denied() {
        use aws_credential_types::provider::error::CredentialsError as E;
        let e = credentials_error(E::provider_timed_out(Duration::from_secs(5)));
        assert_eq!(
            (e.kind(), e.retry()),
            (Kind::Network, crate::error::Retry::After(None))
        );
        let e = credentials_error(E::provider_error("sts unreachable"));
        assert_eq!(e.kind(), Kind::Network);
        let e = credentials_error(E::not_loaded("no profile"));
        assert_eq!(
            (e.kind(), e.retry()),
            (Kind::Denied, crate::error::Retry::Never)
        );
    }

    #[test]
    fn etag_md5_only_for_single_part() {
        assert!(md5_from_etag("\"9e107d9d372bb6826bd81d3542a419d6\"").is_some());
        assert!(md5_from_etag("\"9e107d9d372bb6826bd81d3542a419d6-3\"").is_none());
        assert!(md5_from_etag("W/\"abc\"").is_none());
    }

    #[test]
    fn archived_objects_are_told_from_the_listing_unless_restored() {
        let xml = r#"<ListBucketResult><IsTruncated>false</IsTruncated>
<Contents><Key>m/a</Key><Size>1</Size><StorageClass>DEEP_ARCHIVE</StorageClass></Contents>
<Contents><Key>m/b</Key><Size>1</Size><StorageClass>GLACIER</StorageClass><RestoreStatus><IsRestoreInProgress>false</IsRestoreInProgress><RestoreExpiryDate>2026-12-12T00:00:00.000Z</RestoreExpiryDate></RestoreStatus></Contents>
<Contents><Key>m/c</Key><Size>1</Size><StorageClass>GLACIER</StorageClass><RestoreStatus><IsRestoreInProgress>true</IsRestoreInProgress></RestoreStatus></Contents>
<Contents><Key>m/d</Key><Size>1</Size><StorageClass>GLACIER_IR</StorageClass></Contents>
</ListBucketResult>"#;
        let page: ListBucketResult = quick_xml::de::from_str(xml).unwrap();
        let got: Vec<Option<String>> = page
            .contents
            .iter()
            .map(|o| {
                let restored = o.restore_status.as_ref().is_some_and(RestoreStatus::done);
                archived(o.storage_class.as_deref(), restored)
            })
            .collect();
        assert_eq!(
            got,
            [
                Some("DEEP_ARCHIVE".into()),
                None,
                Some("GLACIER".into()),
                None
            ],
            "restored, and instant retrieval, read at once; a restore in progress does not"
        );
        assert_eq!(archived(Some("STANDARD"), false), None);
        assert_eq!(archived(None, false), None);
    }

    #[test]
    fn list_xml_parses() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>m/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<Contents><Key>m/a%20b.json</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>&quot;9e107d9d372bb6826bd81d3542a419d6&quot;</ETag><Size>43</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>m/sub/</Key><Size>0</Size></Contents>
<NextContinuationToken>tok/1=</NextContinuationToken></ListBucketResult>"#;
        let page: ListBucketResult = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("tok/1="));
        assert_eq!(page.contents.len(), 2);
        assert_eq!(percent_decode(&page.contents[0].key).unwrap(), "m/a b.json");
        assert_eq!(
            page.contents[0].e_tag.as_deref(),
            Some("\"9e107d9d372bb6826bd81d3542a419d6\"")
        );
        assert_eq!(percent_decode("%C3%BC+x%2By").unwrap(), "ü x+y");
    }

    #[test]
    fn endpoints() {
        let e =
            Endpoint::path_style("http://localhost:9000/", "models", "AWS_ENDPOINT_URL").unwrap();
        assert_eq!(
            (e.base.as_str(), e.host.as_str(), e.base_path.as_str()),
            ("http://localhost:9000", "localhost:9000", "/models")
        );
        let e = Endpoint::path_style("https://minio.example.com", "b", "X").unwrap();
        assert_eq!(e.host, "minio.example.com");
        assert!(Endpoint::path_style("minio:9000", "b", "X").is_err());
        assert!(Endpoint::path_style("ftp://h", "b", "X").is_err());
        let e = Endpoint::aws("bkt", "eu-west-1");
        assert_eq!(
            (e.host.as_str(), e.base_path.as_str()),
            ("bkt.s3.eu-west-1.amazonaws.com", "")
        );
        assert_eq!(Endpoint::aws("a.b", "us-east-1").base_path, "/a.b");
    }

    #[test]
    fn error_fields() {
        let b = "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>x</BucketName></Error>";
        let e = ErrorBody::parse(b);
        assert_eq!(e.code, "NoSuchBucket");
        assert_eq!(e.message, "The specified bucket does not exist");
        let html = ErrorBody::parse("<html><body>502 Bad Gateway</body></html>");
        assert_eq!((html.code.as_str(), html.message.as_str()), ("", ""));
        let xml = complete_multipart_xml(&["\"a&b\"".into(), "\"c\"".into()]).unwrap();
        assert_eq!(
            xml,
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a&amp;b\"</ETag></Part><Part><PartNumber>2</PartNumber><ETag>\"c\"</ETag></Part></CompleteMultipartUpload>"
        );
        assert_eq!(crate::redact::secret("AKIAIOSFODNN7EXAMPLE", 4), "AKIA…LE");
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Listings and error bodies from a server we do not trust: parsed or refused, never a
        /// panic, whatever the sizes and names say.
        #[test]
        fn hostile_listings_and_errors_never_panic(
            key in "\\PC{0,20}",
            size in "-?[0-9]{0,25}",
            junk in "\\PC{0,80}",
        ) {
            let xml = format!(
                "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>{}</Key><Size>{size}</Size></Contents></ListBucketResult>",
                quick_xml::escape::escape(key.as_str())
            );
            if let Ok(page) = quick_xml::de::from_str::<ListBucketResult>(&xml) {
                for o in page.contents {
                    let _ = super::super::bucket::below("m/", &o.key, "list");
                    let _ = percent_decode(&o.key);
                }
            }
            let _ = quick_xml::de::from_str::<ListBucketResult>(&junk);
            let _ = ErrorBody::parse(&junk);
            let _ = md5_from_etag(&junk);
        }
    }
}
