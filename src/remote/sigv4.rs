//! AWS Signature Version 4 through AWS's own `aws-sigv4` crate (already in the tree through
//! aws-config), configured as S3 needs it: the path encoded once and never normalised (an
//! object key is taken literally), the payload hash in `x-amz-content-sha256`, the session
//! token signed. What stays here is only the wire form of our requests.

use std::time::SystemTime;

use aws_sigv4::http_request::{
    sign as aws_sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;

use crate::error::{Error, Kind, Result};

pub use super::http::uri_encode;

/// Static or temporary keys; aws-credential-types' Debug never shows the secret or token.
pub type Credentials = aws_credential_types::Credentials;

/// Keys from their parts, as read from OSS's or a test's environment.
pub fn credentials(key_id: String, secret: String, token: Option<String>) -> Credentials {
    Credentials::new(key_id, secret, token, None, "model-loader")
}

/// The wire form of a query, which is also its canonical form: pairs encoded (RFC 3986) and
/// sorted by key, then value.
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The headers that sign a request for `url` (path already encoded, query in the form
/// [`canonical_query`] makes): `x-amz-date`, `x-amz-content-sha256`, the session token if any,
/// and `authorization`. A body is sent unsigned (`UNSIGNED-PAYLOAD`): uploads protect it with
/// Content-MD5 instead of hashing it twice.
pub fn sign(
    creds: &Credentials,
    method: &str,
    url: &str,
    region: &str,
    unsigned_body: bool,
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>> {
    sign_headers(creds, method, url, region, unsigned_body, &[], time)
}

/// [`sign`], with `amz` — the request's own `x-amz-*` headers (`x-amz-checksum-mode`,
/// `x-amz-optional-object-attributes`, `x-amz-request-payer`) — among the signed headers: S3
/// refuses a request carrying an `x-amz-*` header that is not signed.
pub fn sign_headers(
    creds: &Credentials,
    method: &str,
    url: &str,
    region: &str,
    unsigned_body: bool,
    amz: &[(&str, &str)],
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>> {
    let mut settings = s3_settings();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let body = if unsigned_body {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Bytes(&[])
    };
    let instructions = sign_with(creds, method, url, region, "s3", amz, body, settings, time)?;
    Ok(instructions
        .headers()
        .filter_map(|(k, v)| Some((known_header(k)?, v.to_string())))
        .collect())
}

/// `url` (path encoded, query in [`canonical_query`] form) presigned for a GET: the signature
/// in the query (`X-Amz-*`, SignedHeaders=host, UNSIGNED-PAYLOAD), valid for `expires`. What
/// a P2P daemon can replay later, with ranges of its own, from any node.
pub fn presign(
    creds: &Credentials,
    url: &str,
    region: &str,
    expires: std::time::Duration,
    time: SystemTime,
) -> Result<String> {
    let mut settings = s3_settings();
    settings.signature_location = aws_sigv4::http_request::SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    let instructions = sign_with(
        creds,
        "GET",
        url,
        region,
        "s3",
        &[],
        SignableBody::UnsignedPayload,
        settings,
        time,
    )?;
    let mut out = url.to_string();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    for (k, v) in instructions.params() {
        out.push(sep);
        out.push_str(&uri_encode(k, false));
        out.push('=');
        out.push_str(&uri_encode(v, false));
        sep = '&';
    }
    Ok(out)
}

/// S3's rules: the path encoded once (it already is) and never normalised, as object keys are
/// taken literally.
fn s3_settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings
}

/// The headers that sign a POST of `body` to an AWS JSON API (ECR's `GetAuthorizationToken`)
/// of `service`: the standard rules, the body hashed into the signature; `headers` (the
/// request's `x-amz-target` and `content-type`) are signed with it.
pub fn sign_api(
    creds: &Credentials,
    url: &str,
    region: &str,
    service: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>> {
    let body = SignableBody::Bytes(body);
    let settings = SigningSettings::default();
    let instructions = sign_with(
        creds, "POST", url, region, service, headers, body, settings, time,
    )?;
    Ok(instructions
        .headers()
        .filter_map(|(k, v)| Some((known_header(k)?, v.to_string())))
        .collect())
}

/// Signs one request for `service` (`s3`, `ecr`) in `region` with `settings`; what to add to
/// it (headers or query).
#[allow(clippy::too_many_arguments)]
fn sign_with(
    creds: &Credentials,
    method: &str,
    url: &str,
    region: &str,
    service: &str,
    headers: &[(&str, &str)],
    body: SignableBody<'_>,
    settings: SigningSettings,
    time: SystemTime,
) -> Result<aws_sigv4::http_request::SigningInstructions> {
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| signing_error(url, e))?
        .into();
    let request = SignableRequest::new(method, url, headers.iter().copied(), body)
        .map_err(|e| signing_error(url, e))?;
    let (instructions, _) = aws_sign(request, &params)
        .map_err(|e| signing_error(url, e))?
        .into_parts();
    Ok(instructions)
}

/// Header names as `'static` (the instructions borrow theirs).
fn known_header(name: &str) -> Option<&'static str> {
    [
        "authorization",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-security-token",
    ]
    .into_iter()
    .find(|k| k.eq_ignore_ascii_case(name))
}

fn signing_error(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(
        Kind::Usage,
        format!(
            "cannot sign the request for {}",
            crate::redact::userinfo(url)
        ),
    )
    .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> Credentials {
        credentials(
            "AKIAIOSFODNN7EXAMPLE".into(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            None,
        )
    }

    fn signature(headers: &[(&'static str, String)]) -> String {
        let auth = &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        auth.rsplit("Signature=").next().unwrap().to_string()
    }

    fn may_24_2013() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600)
    }

    /// "Example: GET Bucket (List Objects)" in AWS's "Signature Calculations for the
    /// Authorization Header": the settings above reproduce AWS's own signature.
    #[test]
    fn aws_example_list_objects() {
        let url = format!(
            "https://examplebucket.s3.amazonaws.com/?{}",
            canonical_query(&[("prefix", "J"), ("max-keys", "2")])
        );
        let h = sign(
            &example_creds(),
            "GET",
            &url,
            "us-east-1",
            false,
            may_24_2013(),
        )
        .unwrap();
        assert_eq!(
            signature(&h),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
        let names: Vec<&str> = h.iter().map(|(k, _)| *k).collect();
        assert!(names.contains(&"x-amz-date") && names.contains(&"x-amz-content-sha256"));
    }

    /// The request's own `x-amz-*` headers are signed (S3 refuses them unsigned), and they
    /// change the signature.
    #[test]
    fn a_request_s_own_amz_headers_are_signed() {
        let (creds, t) = (example_creds(), may_24_2013());
        let url = "https://h/b/k";
        let mode = [("x-amz-checksum-mode", "ENABLED")];
        let h = sign_headers(&creds, "HEAD", url, "us-east-1", false, &mode, t).unwrap();
        let auth = &h.iter().find(|(k, _)| *k == "authorization").unwrap().1;
        assert!(
            auth.contains("SignedHeaders=host;x-amz-checksum-mode;x-amz-content-sha256;x-amz-date"),
            "{auth}"
        );
        let plain = sign(&creds, "HEAD", url, "us-east-1", false, t).unwrap();
        assert_ne!(signature(&h), signature(&plain));
    }

    /// Keys are signed literally: no dot-segment or double-slash normalisation, one encoding.
    #[test]
    fn paths_are_encoded_once_and_not_normalised() {
        let creds = example_creds();
        let t = may_24_2013();
        let a = sign(&creds, "GET", "https://h/b/a//x", "us-east-1", false, t).unwrap();
        let b = sign(&creds, "GET", "https://h/b/a/x", "us-east-1", false, t).unwrap();
        assert_ne!(signature(&a), signature(&b), "'//' was normalised away");
        let key = uri_encode("m/a b+c~%ü=&.bin", true);
        assert_eq!(key, "m/a%20b%2Bc~%25%C3%BC%3D%26.bin");
        let url = format!("https://h/b/{key}");
        assert!(sign(&creds, "PUT", &url, "us-east-1", true, t).is_ok());
    }

    #[test]
    fn session_tokens_are_signed_and_sent() {
        let creds = credentials("AKID".into(), "secret".into(), Some("TOKEN".into()));
        let h = sign(
            &creds,
            "GET",
            "https://h/b/k",
            "eu-west-1",
            false,
            may_24_2013(),
        )
        .unwrap();
        assert!(h
            .iter()
            .any(|(k, v)| *k == "x-amz-security-token" && v == "TOKEN"));
        let auth = &h.iter().find(|(k, _)| *k == "authorization").unwrap().1;
        assert!(auth.contains("x-amz-security-token"), "{auth}");
        assert!(auth.contains("/eu-west-1/s3/aws4_request"), "{auth}");
    }

    /// AWS's "Example: Presigned URL" (Authenticating Requests: Using Query Parameters).
    #[test]
    fn aws_example_presigned_url() {
        let url = presign(
            &example_creds(),
            "https://examplebucket.s3.amazonaws.com/test.txt",
            "us-east-1",
            std::time::Duration::from_secs(86_400),
            may_24_2013(),
        )
        .unwrap();
        assert!(
            url.ends_with(
                "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{url}"
        );
        assert!(url.contains("X-Amz-SignedHeaders=host"), "{url}");
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            canonical_query(&[("prefix", "x/y"), ("list-type", "2")]),
            "list-type=2&prefix=x%2Fy"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let c = credentials(
            "AKID".into(),
            "EXAMPLEKEY".into(),
            Some("TOKENVALUE".into()),
        );
        let d = format!("{c:?}");
        assert!(
            !d.contains("EXAMPLEKEY") && !d.contains("TOKENVALUE"),
            "{d}"
        );
    }
}
