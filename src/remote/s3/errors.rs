//! S3 and OSS error replies → classified errors with a remedy.

use reqwest::{Response, StatusCode};
use serde::Deserialize;

use super::auth::Signer;
use super::client::S3;
use crate::error::{Error, Kind};
use crate::remote::http;

impl S3 {
    /// Turns a non-success reply into a classified error with a remedy. Only the S3 error
    /// `Code` and `Message` are used: the rest of an error body (StringToSign,
    /// CanonicalRequest) can echo a session token.
    pub(super) async fn status_error(
        &self,
        resp: Response,
        what: &str,
        key: Option<&str>,
    ) -> Error {
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
                    format!("bucket {bucket} is in {region}, not {}, and following it did not help: check the endpoint, or set {}={region}", self.place().region, self.region_hint),
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
                format!(
                    "these credentials may not read bucket {bucket}: grant s3:ListBucket and s3:GetObject, or use other credentials{}",
                    if self.requester_pays {
                        ""
                    } else {
                        "; if the bucket is requester-pays, add --requester-pays (MODEL_LOADER_REQUESTER_PAYS=true)"
                    }
                ),
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
            (_, c) if http::is_transient_status(status) || c == "SlowDown" || c == "InternalError" => {
                let after = http::retry_after(&headers);
                // SlowDown comes as 503 (S3) or 400/429 elsewhere: it is a request to slow down.
                let as_status = if c == "SlowDown" { StatusCode::SERVICE_UNAVAILABLE } else { status };
                return http::busy(format!("{what}: {server_says}"), as_status, after);
            }
            _ => (Kind::Network, "unexpected answer from the server".into()),
        };
        Error::new(kind, format!("{what}: {server_says}; {remedy}"))
    }
}

/// What S3 and OSS error bodies say. Only `Code` and `Message` are read: the rest of an error
/// body (StringToSign, CanonicalRequest) can echo a session token.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub(super) code: String,
    #[serde(default)]
    pub(super) message: String,
}

impl ErrorBody {
    /// Empty fields when the body is not an S3 error document (a proxy's HTML page).
    pub(super) fn parse(body: &str) -> ErrorBody {
        let mut e: ErrorBody = quick_xml::de::from_str(body).unwrap_or_default();
        e.code = e.code.trim().to_string();
        e.message = e.message.trim().to_string();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields() {
        let b = "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>x</BucketName></Error>";
        let e = ErrorBody::parse(b);
        assert_eq!(e.code, "NoSuchBucket");
        assert_eq!(e.message, "The specified bucket does not exist");
        let html = ErrorBody::parse("<html><body>502 Bad Gateway</body></html>");
        assert_eq!((html.code.as_str(), html.message.as_str()), ("", ""));
    }
}
