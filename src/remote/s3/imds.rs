//! IMDSv1, only as the fallback for an IMDSv2 token that never arrives. EC2's default hop limit
//! is 1 ("Default: 1", the Auto Scaling `InstanceMetadataOptions` reference), so inside a
//! container the reply to the token `PUT` is dropped (smithy-lang/smithy-rs#1449); aws-cli and
//! the other SDKs then fall back to IMDSv1, aws-config "will NOT fallback" and fails after a
//! timeout. The fallback is safe here: IMDSv1's risk is a server-side request forgery, and the
//! loader fetches no URL a user can choose through it. An instance that requires tokens
//! (`HttpTokens=required`) refuses it, and `AWS_EC2_METADATA_V1_DISABLED=true` turns it off.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{self, future, ProvideCredentials};
use aws_credential_types::Credentials;

/// What the instance role's credentials look like from IMDS.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    code: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<String>,
}

/// Credentials of the instance role through IMDSv1, asked again when they expire.
#[derive(Debug, Clone)]
pub(super) struct Imdsv1 {
    client: reqwest::Client,
    base: String,
}

impl Imdsv1 {
    /// The fallback, unless metadata (or its v1 form) is turned off.
    pub(super) fn configured() -> Option<Self> {
        let off =
            |name: &str| crate::env::var(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if off("AWS_EC2_METADATA_DISABLED") || off("AWS_EC2_METADATA_V1_DISABLED") {
            return None;
        }
        let base = crate::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|| "http://169.254.169.254".into());
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        Some(Imdsv1 {
            client,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// Where credentials are asked, for the log line.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    async fn get(&self, path: &str) -> Result<String, String> {
        let url = format!(
            "{}/latest/meta-data/iam/security-credentials/{path}",
            self.base
        );
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        crate::remote::http::capped_text(resp, "IMDS")
            .await
            .map_err(|e| e.message().to_string())
    }

    /// The role's current credentials.
    pub(super) async fn fetch(&self) -> Result<Credentials, String> {
        let role = self.get("").await?;
        let role = role.lines().next().unwrap_or_default().trim().to_string();
        if role.is_empty() || role.contains('/') {
            return Err("the instance has no IAM role".into());
        }
        let body = self.get(&role).await?;
        let c: RoleCredentials =
            serde_json::from_str(&body).map_err(|e| format!("the role's credentials: {e}"))?;
        if c.code.as_deref().is_some_and(|code| code != "Success") {
            return Err(format!("IMDS says {:?}", c.code));
        }
        let expiry = c.expiration.as_deref().and_then(expiry_time);
        Ok(Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            c.token,
            expiry,
            "Ec2InstanceMetadataV1",
        ))
    }
}

impl ProvideCredentials for Imdsv1 {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.fetch()
                .await
                .map_err(provider::error::CredentialsError::provider_error)
        })
    }
}

/// `2026-12-05T16:00:00Z` as a time (IMDS's `Expiration`), by aws-smithy-types.
fn expiry_time(t: &str) -> Option<SystemTime> {
    use aws_smithy_types::date_time::{DateTime, Format};
    SystemTime::try_from(DateTime::from_str(t.trim(), Format::DateTime).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations_parse() {
        let t = expiry_time("2026-12-05T16:00:00Z").unwrap();
        assert_eq!(httpdate::fmt_http_date(t), "Sat, 05 Dec 2026 16:00:00 GMT");
        assert_eq!(
            httpdate::fmt_http_date(expiry_time("2024-02-29T00:00:01Z").unwrap()),
            "Thu, 29 Feb 2024 00:00:01 GMT"
        );
        assert!(expiry_time("soon").is_none());
        assert!(expiry_time("2026-13-05T16:00:00Z").is_none());
    }
}
