//! Where S3 requests go: the endpoint and region as the AWS CLI picks them.

use crate::error::{Error, Result};
use crate::remote::sigv4;

/// The endpoint and region, as the AWS CLI picks them: `AWS_ENDPOINT_URL_S3` /
/// `AWS_ENDPOINT_URL` (path-style, unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`), the region
/// from the environment or profile, else (on AWS only) from instance metadata or the bucket.
pub(super) async fn aws_endpoint(
    client: &reqwest::Client,
    bucket: &str,
) -> Result<(Endpoint, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
