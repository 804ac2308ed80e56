//! One S3-compatible service: the client, where it sends, and how a request is signed.

use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::{Method, Response};

use super::auth::{aws_signer, Signer};
use super::endpoint::{aws_endpoint, Endpoint};
use crate::error::Result;
use crate::progress::Reporter;
use crate::remote::http::{self, ClientOptions};
use crate::remote::sigv4;
use crate::remote::types::Checksum;

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
    pub(super) client: reqwest::Client,
    pub(super) endpoint: Endpoint,
    pub(super) region: String,
    pub(super) signer: Signer,
    pub(super) bucket: String,
    /// The URL's path after the bucket, as given (may name a folder or one object).
    pub(super) prefix: String,
    pub(super) scheme: &'static str,
    pub(super) credential_hint: &'static str,
    pub(super) region_hint: &'static str,
    /// Object reads through a P2P proxy, as presigned URLs (`--p2p-proxy`).
    pub(crate) p2p: Option<std::sync::Arc<crate::remote::p2p::P2p>>,
    /// [`S3::origin_facts`] by object key, asked once each.
    pub(super) origin_facts: std::sync::Mutex<OriginFacts>,
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

    pub(super) fn display(&self, key: &str) -> String {
        format!("{}://{}/{key}", self.scheme, self.bucket)
    }

    /// Sends one signed request without a body; `path` is encoded, `query` raw.
    pub(super) async fn send(
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
    pub(super) async fn send_body(
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

    /// The object key for a file `rel` uploaded under the URL's prefix.
    pub fn key_for(&self, rel: &str) -> String {
        join_key(&self.prefix, rel)
    }

    pub(super) fn list_path(&self) -> String {
        if self.endpoint.base_path.is_empty() {
            "/".into()
        } else {
            self.endpoint.base_path.clone()
        }
    }

    pub(super) fn object_path(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.endpoint.base_path,
            sigv4::uri_encode(key, true)
        )
    }
}

/// What an origin says of an object's bytes beyond the listing.
#[derive(Debug, Clone)]
pub(super) struct ReplyFacts {
    /// False for SSE-KMS and SSE-C objects: a checksum read from the ETag does not apply.
    pub(super) etag_is_md5: bool,
    /// A whole-object checksum the origin sent: OSS's `x-oss-hash-crc64ecma`, or an S3
    /// additional checksum when asked for (P2P mode's direct HEAD).
    pub(super) checksum: Option<Checksum>,
}

pub(super) fn header_str(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_string)
}

pub(super) fn header_u64(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

/// `prefix` (a folder, with or without a trailing '/') joined with a relative path.
pub fn join_key(prefix: &str, rel: &str) -> String {
    match prefix.trim_end_matches('/') {
        "" => rel.to_string(),
        p => format!("{p}/{rel}"),
    }
}
