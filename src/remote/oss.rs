//! `oss://BUCKET[/PREFIX]`: Alibaba Cloud OSS through its S3-compatible API (SigV4), always
//! virtual-hosted with the bucket in the host — OSS refuses path-style requests. Credentials
//! come only from `OSS_*` / `ALIBABA_CLOUD_*` variables: `AWS_*` in the same pod never leak in.

use super::http::{self, ClientOptions};
use super::s3::{Endpoint, Service, Signer, S3};
use super::sigv4;
use crate::error::{Error, Result};
use crate::progress::Reporter;

/// The endpoint and SigV4 region for `bucket`, from `OSS_ENDPOINT` (any of `oss-cn-hangzhou.aliyuncs.com`,
/// `https://…`, `http://…`, `…-internal…`, `bucket.…`, a custom domain) and/or `OSS_REGION`
/// (`cn-hangzhou` or `oss-cn-hangzhou`). With neither, there is nothing to connect to.
pub fn endpoint(
    bucket: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
    internal: bool,
) -> Result<(Endpoint, String)> {
    let region = region.map(|r| {
        r.trim()
            .trim_start_matches("oss-")
            .trim_end_matches("-internal")
            .to_string()
    });
    let (scheme, host) = match endpoint {
        Some(e) => {
            let e = e.trim().trim_end_matches('/');
            let (scheme, rest) = match e.split_once("://") {
                Some((s @ ("http" | "https"), r)) => (s, r),
                Some(_) => {
                    return Err(Error::usage(format!(
                        "OSS_ENDPOINT={e:?} must be a host name or an http(s):// URL"
                    )));
                }
                None => ("https", e),
            };
            if rest.is_empty() || rest.contains('/') {
                return Err(Error::usage(format!(
                    "OSS_ENDPOINT={e:?} must be just a host, like oss-cn-hangzhou.aliyuncs.com"
                )));
            }
            let mut host = rest.to_string();
            if internal && !host.contains("-internal.") {
                if let Some(r) = host_region(&host) {
                    host = host.replacen(&format!("oss-{r}."), &format!("oss-{r}-internal."), 1);
                }
            }
            (scheme, host)
        }
        None => {
            let Some(r) = region.as_deref().filter(|r| !r.is_empty()) else {
                return Err(Error::usage(
                    "oss:// needs OSS_REGION (e.g. cn-hangzhou) or OSS_ENDPOINT (e.g. oss-cn-hangzhou.aliyuncs.com)",
                ));
            };
            let suffix = if internal { "-internal" } else { "" };
            ("https", format!("oss-{r}{suffix}.aliyuncs.com"))
        }
    };
    let region = match region.filter(|r| !r.is_empty()).or_else(|| host_region(&host)) {
        Some(r) => r,
        None => {
            return Err(Error::usage(format!(
                "cannot tell the OSS region from OSS_ENDPOINT={host}: set OSS_REGION (e.g. cn-hangzhou)"
            )))
        }
    };
    let host = if host.starts_with(&format!("{bucket}.")) {
        host
    } else {
        format!("{bucket}.{host}")
    };
    Ok((
        Endpoint {
            base: format!("{scheme}://{host}"),
            host,
            base_path: String::new(),
        },
        region,
    ))
}

/// `cn-hangzhou` from `[bucket.][s3.]oss-cn-hangzhou[-internal].aliyuncs.com`.
fn host_region(host: &str) -> Option<String> {
    let name = host.split(':').next()?;
    let label = name.split('.').find(|l| {
        l.starts_with("oss-") && *l != "oss-accelerate" && *l != "oss-accelerate-overseas"
    })?;
    Some(
        label
            .trim_start_matches("oss-")
            .trim_end_matches("-internal")
            .to_string(),
    )
}

pub async fn open(
    bucket: &str,
    prefix: &str,
    opts: &ClientOptions,
    internal: bool,
    reporter: &dyn Reporter,
) -> Result<S3> {
    let (endpoint, region) = endpoint(
        bucket,
        crate::env::first(&["OSS_ENDPOINT", "ALIBABA_CLOUD_OSS_ENDPOINT"]).as_deref(),
        crate::env::first(&[
            "OSS_REGION",
            "ALIBABA_CLOUD_REGION_ID",
            "ALIBABA_CLOUD_REGION",
        ])
        .as_deref(),
        internal,
    )?;
    let key = crate::env::first(&["OSS_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_ID"]);
    let secret = crate::env::first(&["OSS_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"]);
    let token = crate::env::first(&["OSS_SESSION_TOKEN", "ALIBABA_CLOUD_SECURITY_TOKEN"]);
    let signer = match (key, secret) {
        (Some(key_id), Some(secret)) => {
            reporter.info(&format!(
                "oss: signing as access key {} from OSS_ACCESS_KEY_ID{}, region {region}, endpoint {}",
                crate::redact::secret(&key_id, 4),
                if token.is_some() { " with a session token" } else { "" },
                endpoint.base
            ));
            Signer::Static(sigv4::credentials(key_id, secret, token))
        }
        (None, None) => {
            reporter.info(&format!("oss: no OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET: anonymous requests, endpoint {}", endpoint.base));
            Signer::Anonymous
        }
        _ => {
            return Err(Error::usage(
                "only one of OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET is set: set both (or neither, for a public bucket)",
            ))
        }
    };
    let service = Service {
        scheme: "oss",
        endpoint,
        region,
        aws_hosted: false,
        signer,
        credential_hint: "OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET",
        region_hint: "OSS_REGION",
    };
    Ok(S3::new(http::client(opts)?, service, bucket, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(e: Option<&str>, r: Option<&str>, internal: bool) -> (String, String) {
        let (e, r) = endpoint("models", e, r, internal).unwrap();
        assert_eq!(
            e.base,
            format!("{}://{}", e.base.split("://").next().unwrap(), e.host)
        );
        assert!(e.base_path.is_empty(), "always virtual-hosted");
        (e.base, r)
    }

    #[test]
    fn every_accepted_form() {
        let want = (
            "https://models.oss-cn-hangzhou.aliyuncs.com".to_string(),
            "cn-hangzhou".to_string(),
        );
        assert_eq!(ep(None, Some("cn-hangzhou"), false), want);
        assert_eq!(ep(None, Some("oss-cn-hangzhou"), false), want);
        assert_eq!(ep(Some("oss-cn-hangzhou.aliyuncs.com"), None, false), want);
        assert_eq!(
            ep(Some("https://oss-cn-hangzhou.aliyuncs.com/"), None, false),
            want
        );
        assert_eq!(
            ep(Some("models.oss-cn-hangzhou.aliyuncs.com"), None, false),
            want
        );
        assert_eq!(
            ep(
                Some("oss-cn-hangzhou.aliyuncs.com"),
                Some("oss-cn-hangzhou"),
                false
            ),
            want
        );
        assert_eq!(
            ep(Some("http://oss-cn-hangzhou.aliyuncs.com"), None, false).0,
            "http://models.oss-cn-hangzhou.aliyuncs.com"
        );
        let internal = (
            "https://models.oss-cn-beijing-internal.aliyuncs.com".to_string(),
            "cn-beijing".to_string(),
        );
        assert_eq!(ep(None, Some("cn-beijing"), true), internal);
        assert_eq!(
            ep(Some("oss-cn-beijing-internal.aliyuncs.com"), None, false),
            internal
        );
        assert_eq!(
            ep(Some("oss-cn-beijing.aliyuncs.com"), None, true),
            internal
        );
        assert_eq!(ep(None, Some("oss-cn-beijing-internal"), true), internal);
        assert_eq!(
            ep(Some("s3.oss-ap-southeast-1.aliyuncs.com"), None, false),
            (
                "https://models.s3.oss-ap-southeast-1.aliyuncs.com".into(),
                "ap-southeast-1".into()
            )
        );
        assert_eq!(
            ep(Some("cdn.example.com"), Some("cn-shanghai"), false),
            (
                "https://models.cdn.example.com".into(),
                "cn-shanghai".into()
            )
        );
    }

    #[test]
    fn refused_forms() {
        for (e, r) in [
            (None, None),
            (Some("cdn.example.com"), None),
            (Some("ftp://oss-cn-hangzhou.aliyuncs.com"), None),
            (Some("https://oss-cn-hangzhou.aliyuncs.com/path"), None),
        ] {
            let err = endpoint("models", e, r, false).err().unwrap();
            assert_eq!(err.kind(), crate::error::Kind::Usage, "{e:?} {r:?}");
            assert!(err.message().contains("OSS_"), "{}", err.message());
        }
    }
}
