//! Who signs S3 requests: aws-config's credential chain (cached here), fixed keys, or nobody.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{error::CredentialsError, ProvideCredentials};

use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;
use crate::remote::sigv4::Credentials;

/// How requests are signed.
pub enum Signer {
    /// No Authorization header: public buckets.
    Anonymous,
    /// A provider from aws-config, cached here because aws-config's own providers are not
    /// (one STS/IMDS call per request otherwise).
    Aws {
        provider: aws_credential_types::provider::SharedCredentialsProvider,
        /// The credentials, and when to refresh them.
        cache: tokio::sync::Mutex<Option<(Credentials, Option<SystemTime>)>>,
    },
    /// Fixed keys (OSS, tests).
    Static(Credentials),
}

/// When to refresh credentials that expire at `expiry`: 5 minutes before, as the SDKs do, or
/// halfway through what is left of a shorter life (so short-lived sessions are not fetched
/// again for every request).
fn refresh_at(expiry: SystemTime) -> SystemTime {
    let left = expiry
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    expiry - left.div_f64(2.0).min(Duration::from_secs(300))
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
    pub(crate) async fn credentials(&self) -> Result<Option<Credentials>> {
        match self {
            Signer::Anonymous => Ok(None),
            Signer::Static(c) => Ok(Some(c.clone())),
            Signer::Aws { provider, cache } => {
                let mut guard = cache.lock().await;
                if let Some((c, refresh_at)) = guard.as_ref() {
                    if refresh_at.is_none_or(|at| SystemTime::now() < at) {
                        return Ok(Some(c.clone()));
                    }
                }
                let c = provider
                    .provide_credentials()
                    .await
                    .map_err(credentials_error)?;
                *guard = Some((c.clone(), c.expiry().map(refresh_at)));
                Ok(Some(c))
            }
        }
    }
}

impl Signer {
    /// The server refused `key` as expired: drop it from the cache (unless a concurrent
    /// refusal already replaced it) so the next request gets fresh credentials. True when a
    /// request signed with `key` is worth sending again: credentials with no expiry (keys
    /// from the environment) are not refreshed.
    pub(super) async fn expired(&self, key: &str, reporter: Option<&dyn Reporter>) -> bool {
        let Signer::Aws { cache, .. } = self else {
            return false;
        };
        let mut guard = cache.lock().await;
        let Some((cached, refresh_at)) = guard.as_ref() else {
            return true;
        };
        if cached.access_key_id() != key {
            return true;
        }
        if refresh_at.is_none() {
            return false;
        }
        *guard = None;
        if let Some(r) = reporter {
            r.info(&format!(
                "s3: the server says the credentials of access key {} expired (before the \
                 expiry their source stated): refreshing them",
                crate::redact::secret(key, 4)
            ));
        }
        true
    }
}

/// Credentials from aws-config's default chain (env, profile, web identity, container, IMDS),
/// or anonymous requests when no source is configured at all. `who` names the caller and
/// where it sends (`s3` … `endpoint https://…`) in the log.
pub(crate) async fn aws_signer(
    region: &str,
    who: (&str, &str),
    reporter: &dyn Reporter,
) -> Result<Signer> {
    let (scheme, target) = who;
    let provider = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .region(aws_config::Region::new(region.to_string()))
        .build()
        .await;
    match provider.provide_credentials().await {
        Ok(c) => {
            reporter.info(&format!(
                "{scheme}: signing as access key {} from {} (aws-config chain), region {region}, {target}",
                crate::redact::secret(c.access_key_id(), 4),
                provider_name(&c),
            ));
            Ok(Signer::Aws {
                provider: aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                cache: tokio::sync::Mutex::new(None),
            })
        }
        Err(CredentialsError::CredentialsNotLoaded(_)) => {
            // aws-config reads a token request that timed out as "no IMDS here".
            if let Some(signer) = imds_v1_fallback(region, who, reporter).await {
                return Ok(signer);
            }
            reporter.info(&format!(
                "{scheme}: no AWS credentials found (env, profile, web identity, container, IMDS): \
                 sending anonymous requests, region {region}, {target}"
            ));
            Ok(Signer::Anonymous)
        }
        Err(e) => Err(Error::new(
            Kind::Denied,
            "cannot load AWS credentials: a source in the chain is configured but \
                 failed (check AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE/AWS_ROLE_ARN, the \
                 container credentials endpoint, or, on EC2, the instance metadata hop limit: \
                 containers need HttpPutResponseHopLimit 2 for IMDSv2)",
        )
        .with_source(e)),
    }
}

/// When the chain found nothing and nothing but instance metadata can be the source (no
/// keys, profile, web identity or container endpoint configured; a source that is configured
/// and fails is an error, never replaced by another identity), the instance role through
/// IMDSv1: what a dropped IMDSv2 token reply (hop limit 1) leaves (see `imds`). Warned once.
async fn imds_v1_fallback(
    region: &str,
    (scheme, target): (&str, &str),
    reporter: &dyn Reporter,
) -> Option<Signer> {
    let other_source = [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|n| crate::env::var(n).is_some());
    if other_source {
        return None;
    }
    let v1 = super::imds::Imdsv1::configured()?;
    let c = v1.fetch().await.ok()?;
    reporter.warn(&format!(
        "{scheme}: instance metadata at {} gave no IMDSv2 token (in a container, the EC2 default hop \
         limit of 1 drops its reply: set HttpPutResponseHopLimit to 2); using the instance role \
         through IMDSv1 (access key {}), region {region}, {target} \
         (AWS_EC2_METADATA_V1_DISABLED=true turns this off)",
        v1.base(),
        crate::redact::secret(c.access_key_id(), 4),
    ));
    Some(Signer::Aws {
        provider: aws_credential_types::provider::SharedCredentialsProvider::new(v1),
        cache: tokio::sync::Mutex::new(None),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_key_is_shown_redacted() {
        assert_eq!(crate::redact::secret("AKIAIOSFODNN7EXAMPLE", 4), "AKIA…LE");
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
}
