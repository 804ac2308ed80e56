//! Where S3 requests go: the endpoint and region as the AWS CLI picks them.

use reqwest::Response;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::remote::{http, sigv4};

/// The endpoint and region, as the AWS CLI picks them: `AWS_ENDPOINT_URL_S3` /
/// `AWS_ENDPOINT_URL` (path-style, unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`), the region
/// from the environment or profile, else (on AWS only) from instance metadata, else
/// us-east-1. A bucket elsewhere is followed there from S3's first reply (`S3::send_body`).
/// The flag says whether the endpoint is AWS's own (moved with the region).
/// KServe's `S3_ENDPOINT` (with `S3_USE_HTTPS`) comes after AWS's own names, and its
/// virtual-hosted and acceleration settings apply (see `kserve`).
pub(super) async fn aws_endpoint(
    bucket: &str,
    kserve: &super::kserve::Kserve,
) -> Result<(Endpoint, String, bool)> {
    let endpoint_var = if crate::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        None
    } else {
        ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .into_iter()
            .find_map(|n| crate::env::var(n).map(|v| (n, v)))
            .or_else(|| kserve.endpoint.clone().map(|v| ("S3_ENDPOINT", v)))
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
    let region = configured_region.unwrap_or_else(|| "us-east-1".into());
    Ok(match &endpoint_var {
        Some((name, url)) if kserve.virtual_hosted => {
            (Endpoint::virtual_hosted(url, bucket, name)?, region, false)
        }
        Some((name, url)) => (Endpoint::path_style(url, bucket, name)?, region, false),
        // One global host, whatever the bucket's region.
        None if kserve.accelerate => (Endpoint::accelerated(bucket), region, false),
        None => (Endpoint::aws(bucket, &region), region, true),
    })
}

/// Where requests go: `base` is `scheme://host[:port]`, `base_path` the encoded path in front
/// of every key (`/bucket` for path-style, empty for virtual-hosted).
#[derive(Debug, Clone)]
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

    /// Virtual-hosted on a custom endpoint (KServe's `S3_USER_VIRTUAL_BUCKET`): the bucket is
    /// the first label of the host, e.g. `http://models.minio:9000`.
    pub fn virtual_hosted(endpoint: &str, bucket: &str, env_name: &str) -> Result<Self> {
        let path = Endpoint::path_style(endpoint, bucket, env_name)?;
        let prefix = path
            .base_path
            .rsplit_once('/')
            .map_or("", |(before, _)| before)
            .to_string();
        let host = format!("{bucket}.{}", path.host);
        let scheme = path.base.split("://").next().unwrap_or("https");
        Ok(Endpoint {
            base: format!("{scheme}://{host}"),
            host,
            base_path: prefix,
        })
    }

    /// S3 Transfer Acceleration (KServe's `S3_USE_ACCELERATE`): one global host per bucket.
    pub fn accelerated(bucket: &str) -> Self {
        let host = format!("{bucket}.s3-accelerate.amazonaws.com");
        Endpoint {
            base: format!("https://{host}"),
            host,
            base_path: String::new(),
        }
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

/// What a refusal says to do differently before sending again.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Redirect {
    /// The bucket lives in this region.
    Region(String),
    /// The server's clock is this many seconds ahead of this machine's.
    Skew(i64),
    /// The session credentials the request was signed with have expired (before the expiry
    /// their provider stated: a revoked session, a skewed clock): refresh them.
    Expired,
}

/// S3 rejects a signature more than 15 minutes off its clock; a HEAD's refusal has no body to
/// say so, so a 403 whose `Date` is this far off counts as that refusal.
const SKEW_SUSPECT: i64 = 5 * 60;

/// Reads a refusal (301, 307, 400, 403) for what to do differently: S3 names the bucket's
/// region in `x-amz-bucket-region` (301 PermanentRedirect has no Location) or in the body of
/// a 400 AuthorizationHeaderMalformed (MinIO with `MINIO_REGION` too); a clock too far off is
/// `RequestTimeTooSkewed`, corrected from the reply's `Date` as the AWS SDKs do. Returns the
/// reply unchanged for the caller (its body is read here and put back).
pub(super) async fn redirect(resp: Response, scheme: &str) -> (Response, Option<Redirect>) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let version = resp.version();
    let body = http::error_text(resp).await;
    let said: Refusal = quick_xml::de::from_str(&body).unwrap_or_default();
    let mut rebuilt = ::http::Response::new(body.clone());
    *rebuilt.status_mut() = status;
    *rebuilt.headers_mut() = headers.clone();
    *rebuilt.version_mut() = version;
    let resp = Response::from(rebuilt);
    let named_region = headers
        .get("x-amz-bucket-region")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(said.region)
        .filter(|r| valid_region(r));
    let found = match (status.as_u16(), said.code.as_deref()) {
        (301 | 307, _) | (400, Some("AuthorizationHeaderMalformed")) if scheme == "s3" => {
            named_region.map(Redirect::Region)
        }
        (400, None) if scheme == "s3" && named_region.is_some() => {
            named_region.map(Redirect::Region)
        }
        // A HEAD's refusal has no body: S3's 400 for an expired session token is bare there.
        // Only session credentials are refreshed on it (see `Signer::expired`).
        (400, None) if body.is_empty() => Some(Redirect::Expired),
        (403, Some("RequestTimeTooSkewed")) => skew(&headers).map(Redirect::Skew),
        // S3 says 400 ExpiredToken ("The provided token has expired.") or TokenRefreshRequired
        // (the codes the SDKs refresh on: aws/aws-sdk-go#253); OSS 403 SecurityTokenExpired.
        (
            400 | 403,
            Some(
                "ExpiredToken"
                | "ExpiredTokenException"
                | "TokenRefreshRequired"
                | "SecurityTokenExpired",
            ),
        ) => Some(Redirect::Expired),
        (403, None) => skew(&headers)
            .filter(|s| s.abs() > SKEW_SUSPECT)
            .map(Redirect::Skew),
        _ => None,
    };
    (resp, found)
}

/// The server's clock minus this machine's, in seconds, from the reply's `Date`.
fn skew(headers: &reqwest::header::HeaderMap) -> Option<i64> {
    let date = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    let server = httpdate::parse_http_date(date).ok()?;
    let now = std::time::SystemTime::now();
    Some(match server.duration_since(now) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    })
}

/// A region name as AWS and S3-compatible servers spell them (`eu-central-1`): it goes into
/// a host name and a signature, so nothing else is taken from a reply.
fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The fields of an S3 error body that say what to change.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Refusal {
    code: Option<String>,
    region: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        let mut b = ::http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        Response::from(b.body(body.to_string()).unwrap())
    }

    #[tokio::test]
    async fn refusals_name_the_region_or_the_skew() {
        let region = |r: &str| Some(Redirect::Region(r.into()));
        let moved = reply(301, &[("x-amz-bucket-region", "eu-west-1")], "");
        let (back, found) = redirect(moved, "s3").await;
        assert_eq!((back.status().as_u16(), found), (301, region("eu-west-1")));
        let body =
            "<Error><Code>AuthorizationHeaderMalformed</Code><Region>ap-south-1</Region></Error>";
        let (back, found) = redirect(reply(400, &[], body), "s3").await;
        assert_eq!(found, region("ap-south-1"));
        assert_eq!(back.text().await.unwrap(), body, "the body is put back");
        // Other 400s, OSS (no such redirects), and region names that are not names.
        let other = "<Error><Code>InvalidArgument</Code><Region>x</Region></Error>";
        assert_eq!(redirect(reply(400, &[], other), "s3").await.1, None);
        let moved = reply(301, &[("x-amz-bucket-region", "eu-west-1")], "");
        assert_eq!(redirect(moved, "oss").await.1, None);
        let evil = reply(301, &[("x-amz-bucket-region", "evil.com/x")], "");
        assert_eq!(redirect(evil, "s3").await.1, None);
        // A clock 20 minutes behind: from the body's code, or from a HEAD's Date alone.
        let later = httpdate::fmt_http_date(
            std::time::SystemTime::now() + std::time::Duration::from_secs(1200),
        );
        let skewed = "<Error><Code>RequestTimeTooSkewed</Code></Error>";
        let (_, found) = redirect(reply(403, &[("date", &later)], skewed), "oss").await;
        assert!(matches!(found, Some(Redirect::Skew(s)) if (1190..=1210).contains(&s)));
        let (_, found) = redirect(reply(403, &[("date", &later)], ""), "s3").await;
        assert!(matches!(found, Some(Redirect::Skew(_))));
        // A plain 403 from a server whose clock agrees is a refusal, nothing to correct.
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        assert_eq!(
            redirect(reply(403, &[("date", &now)], ""), "s3").await.1,
            None
        );
        // Expired session tokens: by code, and a HEAD's bare 400 (no region named).
        let expired = "<Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>";
        assert_eq!(
            redirect(reply(400, &[], expired), "s3").await.1,
            Some(Redirect::Expired)
        );
        assert_eq!(
            redirect(reply(400, &[], ""), "s3").await.1,
            Some(Redirect::Expired)
        );
        let head_moved = reply(400, &[("x-amz-bucket-region", "eu-west-1")], "");
        assert_eq!(redirect(head_moved, "s3").await.1, region("eu-west-1"));
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
        let e = Endpoint::virtual_hosted("http://minio.kubeflow:9000", "models", "S3_ENDPOINT")
            .unwrap();
        assert_eq!(
            (e.base.as_str(), e.host.as_str(), e.base_path.as_str()),
            (
                "http://models.minio.kubeflow:9000",
                "models.minio.kubeflow:9000",
                ""
            )
        );
        let e = Endpoint::accelerated("bkt");
        assert_eq!(e.base, "https://bkt.s3-accelerate.amazonaws.com");
        let e = Endpoint::aws("bkt", "eu-west-1");
        assert_eq!(
            (e.host.as_str(), e.base_path.as_str()),
            ("bkt.s3.eu-west-1.amazonaws.com", "")
        );
        assert_eq!(Endpoint::aws("a.b", "us-east-1").base_path, "/a.b");
    }
}
