//! One S3-compatible service: the client, where it sends, and how a request is signed.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::{Method, Response};

use super::auth::{aws_signer, Signer};
use super::endpoint::{aws_endpoint, Endpoint, Redirect};
use crate::error::{Error, Kind, Result};
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
    /// The endpoint is AWS's own for the region (`Endpoint::aws`): a region learnt from a
    /// redirect moves it too. Custom endpoints stay; only the signing region changes.
    pub aws_hosted: bool,
    pub signer: Signer,
    /// The environment variables that hold the credentials, for error hints.
    pub credential_hint: &'static str,
    /// The environment variable that sets the region, for error hints.
    pub region_hint: &'static str,
}

/// Where requests go and the region they are signed for. Replaced whole when S3 says the
/// bucket lives in another region.
pub struct Place {
    pub endpoint: Endpoint,
    pub region: String,
}

pub struct S3 {
    pub(super) client: reqwest::Client,
    pub(super) place: RwLock<Arc<Place>>,
    pub(super) aws_hosted: bool,
    /// Seconds to add to this machine's clock when signing, learnt from a server that
    /// answered `RequestTimeTooSkewed` (its `Date`), as the AWS SDKs do.
    pub(super) skew: std::sync::atomic::AtomicI64,
    /// Requester-pays bucket: every request says this account pays (`--requester-pays`).
    pub(crate) requester_pays: bool,
    /// Where one-line notices go (a region learnt, a clock corrected).
    pub(super) reporter: Option<Arc<dyn Reporter>>,
    pub(super) signer: Signer,
    pub(super) bucket: String,
    /// The URL's path after the bucket, as given (may name a folder or one object).
    pub(super) prefix: String,
    pub(super) scheme: &'static str,
    pub(super) credential_hint: &'static str,
    pub(super) region_hint: &'static str,
    /// Object reads through a P2P proxy, as presigned URLs (`--p2p-proxy`).
    pub(crate) p2p: Option<Arc<crate::remote::p2p::P2p>>,
    /// [`S3::origin_facts`] by object key, asked once each.
    pub(super) origin_facts: std::sync::Mutex<OriginFacts>,
}

type OriginFacts = std::collections::HashMap<String, Arc<tokio::sync::OnceCell<ReplyFacts>>>;

impl S3 {
    pub fn new(client: reqwest::Client, service: Service, bucket: &str, prefix: &str) -> Self {
        S3 {
            client,
            place: RwLock::new(Arc::new(Place {
                endpoint: service.endpoint,
                region: service.region,
            })),
            aws_hosted: service.aws_hosted,
            skew: Default::default(),
            requester_pays: false,
            reporter: None,
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
        let kserve = super::kserve::Kserve::from_env();
        let mut opts = opts.clone();
        opts.ca_bundles
            .extend(crate::env::var("AWS_CA_BUNDLE").map(Into::into));
        opts.ca_bundles.extend(kserve.ca_bundle.clone());
        opts.ca_bundles.dedup();
        let (endpoint, region, aws_hosted) = aws_endpoint(bucket, &kserve).await?;
        if !kserve.verify_tls {
            opts.accept_invalid_certs = true;
            reporter.warn(&format!(
                "s3: S3_VERIFY_SSL is off: the certificate of {} is not checked, so anyone on \
                 the way can read and change what is fetched (checksums still apply)",
                endpoint.base
            ));
        }
        let client = http::client(&opts)?;
        let signer = if kserve.anonymous {
            reporter.info(&format!(
                "s3: awsAnonymousCredential is true: sending unsigned requests, region {region}, \
                 endpoint {}",
                endpoint.base
            ));
            Signer::Anonymous
        } else {
            aws_signer(
                &region,
                ("s3", &format!("endpoint {}", endpoint.base)),
                reporter,
            )
            .await?
        };
        let service = Service {
            scheme: "s3",
            endpoint,
            region,
            aws_hosted,
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

    /// Where notices go (`AnySource::open` sets it).
    pub fn set_reporter(&mut self, reporter: Arc<dyn Reporter>) {
        self.reporter = Some(reporter);
    }

    /// Where requests go now, and the region they are signed for.
    pub(super) fn place(&self) -> Arc<Place> {
        Arc::clone(&self.place.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sends one signed request; a body (uploads) goes unsigned, protected by Content-MD5.
    /// Like the AWS CLI and boto3 (the Rust SDK does not), a reply that names another region
    /// for the bucket (301 without Location, 400 AuthorizationHeaderMalformed) moves every
    /// later request there, and one that says the clock is off corrects it from the server's
    /// `Date`; the request is then sent once more (one with a body fails transiently instead,
    /// and its caller's retry sends it).
    pub(super) async fn send_body(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        extra: &[(reqwest::header::HeaderName, String)],
        body: Option<reqwest::Body>,
        what: &str,
    ) -> Result<Response> {
        let has_body = body.is_some();
        let mut body = body;
        // The path and query stay whatever the region: only the host and signature move.
        let q = sigv4::canonical_query(query);
        let target = if q.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{q}")
        };
        for attempt in 0..3 {
            let place = self.place();
            let (resp, key) = self
                .send_once(&place, &method, &target, extra, body.take(), what)
                .await?;
            if attempt == 2 || !matches!(resp.status().as_u16(), 301 | 307 | 400 | 403) {
                return Ok(resp);
            }
            let (resp, redirect) = super::endpoint::redirect(resp, self.scheme).await;
            let learnt = match redirect {
                Some(Redirect::Region(r)) if r != place.region => self.learn_region(&place, r),
                Some(Redirect::Skew(secs)) => self.learn_skew(secs),
                Some(Redirect::Expired) => match &key {
                    Some(key) => self.signer.expired(key, self.reporter.as_deref()).await,
                    None => false,
                },
                _ => false,
            };
            if !learnt {
                return Ok(resp);
            }
            if has_body {
                return Err(Error::new(
                    Kind::Network,
                    format!(
                        "{what}: sent to the wrong region, with a skewed clock or with expired \
                         credentials; sending it again"
                    ),
                )
                .transient(Some(std::time::Duration::ZERO)));
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// AWS itself: a multipart ETag there is always the MD5 of the parts' MD5s (unless SSE-KMS
    /// or SSE-C, which the replies say), so a mismatch is never a foreign ETag scheme.
    pub fn aws_hosted(&self) -> bool {
        self.aws_hosted
    }

    /// Moves every later request to `region`, once: true if this call moved it (or another
    /// request already did, so this one is sent again).
    fn learn_region(&self, seen: &Arc<Place>, region: String) -> bool {
        let mut place = self.place.write().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&place, seen) {
            return true;
        }
        let endpoint = if self.aws_hosted {
            Endpoint::aws(&self.bucket, &region)
        } else {
            place.endpoint.clone()
        };
        if let Some(r) = &self.reporter {
            r.info(&format!(
                "s3: bucket {} is in {region}, not {} (the server says so): sending every request there ({})",
                self.bucket, place.region, endpoint.base
            ));
        }
        *place = Arc::new(Place { endpoint, region });
        true
    }

    /// Signs with the server's clock from now on, `secs` ahead of (or behind) this machine's.
    fn learn_skew(&self, secs: i64) -> bool {
        use std::sync::atomic::Ordering;
        let before = self.skew.swap(secs, Ordering::SeqCst);
        if (before - secs).abs() < 60 {
            // Already corrected (by a concurrent request): one more try is all it gets.
            return before != 0;
        }
        if let Some(r) = &self.reporter {
            r.warn(&format!(
                "s3: this machine's clock is {}s {} the server's (RequestTimeTooSkewed): signing with the server's time; fix the clock (NTP)",
                secs.abs(),
                if secs > 0 { "behind" } else { "ahead of" }
            ));
        }
        true
    }

    /// `x-amz-request-payer: requester` (OSS: `x-oss-request-payer`) for a requester-pays
    /// bucket; S3 wants it on GET, HEAD and LIST alike (s3tools/s3cmd#849).
    pub(super) fn payer_header(&self) -> Option<(reqwest::header::HeaderName, String)> {
        let name = if self.scheme == "oss" {
            "x-oss-request-payer"
        } else {
            "x-amz-request-payer"
        };
        self.requester_pays.then(|| {
            (
                reqwest::header::HeaderName::from_static(name),
                "requester".into(),
            )
        })
    }

    /// The time requests are signed at: this machine's clock, corrected by a learnt skew.
    pub(super) fn now(&self) -> SystemTime {
        let skew = self.skew.load(std::sync::atomic::Ordering::SeqCst);
        let by = std::time::Duration::from_secs(skew.unsigned_abs());
        if skew >= 0 {
            SystemTime::now() + by
        } else {
            SystemTime::now() - by
        }
    }

    /// One signed request to `place`; `target` is the encoded path and canonical query.
    async fn send_once(
        &self,
        place: &Place,
        method: &Method,
        target: &str,
        extra: &[(reqwest::header::HeaderName, String)],
        body: Option<reqwest::Body>,
        what: &str,
    ) -> Result<(Response, Option<String>)> {
        let url = format!("{}{target}", place.endpoint.base);
        let payer = self.payer_header();
        let extra: Vec<&(reqwest::header::HeaderName, String)> =
            extra.iter().chain(payer.iter()).collect();
        let mut req = self.client.request(method.clone(), &url);
        for (k, v) in &extra {
            req = req.header(k, v);
        }
        let unsigned_body = body.is_some();
        if let Some(b) = body {
            req = req.body(b);
        }
        let creds = self.signer.credentials().await?;
        if let Some(creds) = &creds {
            let amz: Vec<(&str, &str)> = extra
                .iter()
                .filter(|(k, _)| k.as_str().starts_with("x-amz-"))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let signed = sigv4::sign_headers(
                creds,
                method.as_str(),
                &url,
                &place.region,
                unsigned_body,
                &amz,
                self.now(),
            )?;
            for (k, v) in signed {
                req = req.header(k, v);
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| http::transport_error(what, e))?;
        Ok((resp, creds.map(|c| c.access_key_id().to_string())))
    }

    /// The object key for a file `rel` uploaded under the URL's prefix.
    pub fn key_for(&self, rel: &str) -> String {
        join_key(&self.prefix, rel)
    }

    /// The path in front of every key does not change with the region: AWS hosts a bucket
    /// virtual-hosted (or path-style for dotted names) in every region alike.
    pub(super) fn list_path(&self) -> String {
        let place = self.place();
        if place.endpoint.base_path.is_empty() {
            "/".into()
        } else {
            place.endpoint.base_path.clone()
        }
    }

    pub(super) fn object_path(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.place().endpoint.base_path,
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
