//! Credentials for the clouds' own registries, from the identity the loader already has for
//! their storage, as crane's keychains and the clouds' credential helpers do: Amazon ECR
//! through the AWS credential chain (`GetAuthorizationToken`, a 12-hour `AWS:password`), and
//! Google Artifact Registry / Container Registry through Google's credentials (an access token
//! as the password of user `oauth2accesstoken`). Used only when no auth file knows the
//! registry: a `docker login` or a pull secret always wins.

use std::time::SystemTime;

use base64::Engine as _;
use serde::Deserialize;

use super::auth::Credentials;
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;
use crate::remote::http::{self, ClientOptions};

/// The scope docker-credential-gcr and gcloud ask for registry tokens.
const GOOGLE_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// ECR's JSON API operation that hands out registry passwords.
const ECR_TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";

/// A registry whose credentials come from its cloud's identity.
#[derive(Debug, PartialEq, Eq)]
pub enum Cloud {
    /// `ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]` (or the dual-stack
    /// `ACCOUNT.dkr-ecr[-fips].REGION.on.aws`).
    Ecr {
        account: String,
        region: String,
        fips: bool,
        china: bool,
    },
    /// `gcr.io`, `*.gcr.io`, `*-docker.pkg.dev`.
    Google,
}

/// Which cloud's registry `registry` (`host[:port]`) is, by its name alone.
pub fn classify(registry: &str) -> Option<Cloud> {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(h, _)| h)
        .to_ascii_lowercase();
    if host == "gcr.io" || host.ends_with(".gcr.io") || host.ends_with("-docker.pkg.dev") {
        return Some(Cloud::Google);
    }
    ecr(&host)
}

/// The parts of an ECR registry name (the pattern of amazon-ecr-credential-helper's
/// `api/registry.go`, for the commercial, China and dual-stack partitions).
fn ecr(host: &str) -> Option<Cloud> {
    let (rest, china) = if let Some(r) = host.strip_suffix(".amazonaws.com.cn") {
        (r, true)
    } else if let Some(r) = host.strip_suffix(".amazonaws.com") {
        (r, false)
    } else {
        (host.strip_suffix(".on.aws")?, false)
    };
    let account = rest.split('.').next()?;
    ecr_dotted(account, rest, china)
}

/// `ACCOUNT.dkr.ecr[-fips].REGION` or `ACCOUNT.dkr-ecr[-fips].REGION`.
fn ecr_dotted(account: &str, rest: &str, china: bool) -> Option<Cloud> {
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let after = rest.strip_prefix(account)?.strip_prefix('.')?;
    let after = after
        .strip_prefix("dkr.ecr")
        .or_else(|| after.strip_prefix("dkr-ecr"))?;
    let (fips, after) = match after.strip_prefix("-fips") {
        Some(a) => (true, a),
        None => (false, after),
    };
    let region = after.strip_prefix('.')?;
    is_region(region).then(|| Cloud::Ecr {
        account: account.to_string(),
        region: region.to_string(),
        fips,
        china,
    })
}

/// An AWS region name: letters, then `-word`s, then `-digits` (`us-east-1`, `us-gov-west-1`,
/// `eu-isoe-west-1`): nothing else under `amazonaws.com` (an S3 website's
/// `s3-website-us-east-1`) passes for one.
fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    parts.len() >= 3
        && first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// Where a cloud registry's password comes from, kept for the run so that it can be minted
/// again: a registry token renewed after the Google access token or ECR's 12-hour password
/// expired needs a fresh one.
pub struct Minter {
    how: How,
    opts: ClientOptions,
}

enum How {
    /// A service-account key file, sent as it is (Google's `_json_key_base64` user): the
    /// registry's token service trades it. google-cloud-auth would sign its own JWT from it,
    /// which Google's registries are not documented to take in place of an access token.
    KeyFile(Credentials),
    Google(crate::remote::gcs_auth::Auth),
    Ecr {
        account: String,
        region: String,
        api: String,
        signer: crate::remote::s3::auth::Signer,
    },
}

impl Minter {
    /// The identity this process has in the registry's cloud, or `None` when it has none
    /// (the registry then says what it needs).
    pub async fn find(
        cloud: &Cloud,
        opts: &ClientOptions,
        reporter: &dyn Reporter,
    ) -> Result<Option<Minter>> {
        let how = match cloud {
            Cloud::Google => {
                let file = crate::remote::gcs_auth::credentials_file(reporter);
                if let Some(key) = file.as_deref().map(json_key).transpose()?.flatten() {
                    return Ok(Some(Minter {
                        how: How::KeyFile(key),
                        opts: opts.clone(),
                    }));
                }
                let auth = crate::remote::gcs_auth::discover(false, GOOGLE_SCOPE, reporter).await?;
                if matches!(auth, crate::remote::gcs_auth::Auth::Anonymous) {
                    return Ok(None);
                }
                How::Google(auth)
            }
            Cloud::Ecr {
                account,
                region,
                fips,
                china,
            } => {
                let api = ecr_api(region, *fips, *china);
                let target = format!("ECR API at {}", crate::redact::userinfo(&api));
                let signer =
                    crate::remote::s3::auth::aws_signer(region, ("oci", &target), reporter).await?;
                if matches!(signer, crate::remote::s3::auth::Signer::Anonymous) {
                    return Ok(None);
                }
                How::Ecr {
                    account: account.clone(),
                    region: region.clone(),
                    api,
                    signer,
                }
            }
        };
        Ok(Some(Minter {
            how,
            opts: opts.clone(),
        }))
    }

    /// A password now: the Google access token (cached and refreshed by google-cloud-auth),
    /// or ECR's `GetAuthorizationToken`.
    pub async fn mint(&self) -> Result<Credentials> {
        match &self.how {
            How::KeyFile(c) => Ok(c.clone()),
            How::Google(auth) => google(auth).await,
            How::Ecr {
                account,
                region,
                api,
                signer,
            } => ecr_token(account, region, api, signer, &self.opts).await,
        }
    }
}

/// ECR's API endpoint for `region`, or the one `AWS_ENDPOINT_URL_ECR` names (the SDKs'
/// per-service variable: a VPC endpoint, tests). Not the generic `AWS_ENDPOINT_URL`: KServe
/// and MinIO setups point that at their S3 server.
fn ecr_api(region: &str, fips: bool, china: bool) -> String {
    if let Some(url) = crate::env::var("AWS_ENDPOINT_URL_ECR") {
        return url.trim_end_matches('/').to_string();
    }
    let suffix = if china {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    // AWS's endpoint table: `api.ecr.REGION…`, but the FIPS one is `ecr-fips.REGION…`.
    if fips {
        format!("https://ecr-fips.{region}.{suffix}")
    } else {
        format!("https://api.ecr.{region}.{suffix}")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenReply {
    #[serde(default)]
    authorization_data: Vec<AuthorizationData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationData {
    authorization_token: String,
}

/// `GetAuthorizationToken` for `account`'s registry, signed with the chain's credentials.
async fn ecr_token(
    account: &str,
    region: &str,
    api: &str,
    signer: &crate::remote::s3::auth::Signer,
    opts: &ClientOptions,
) -> Result<Credentials> {
    let shown = crate::redact::userinfo(api);
    let Some(creds) = signer.credentials().await? else {
        return Err(Error::new(
            Kind::Denied,
            format!(
                "ECR GetAuthorizationToken for account {account} ({shown}): no AWS credentials"
            ),
        ));
    };
    let key = crate::redact::secret(creds.access_key_id(), 4);
    let what =
        format!("ECR GetAuthorizationToken for account {account} ({shown}, access key {key})");
    let body = serde_json::json!({ "registryIds": [account] }).to_string();
    let url = format!("{api}/");
    let content_type = "application/x-amz-json-1.1";
    let signed = crate::remote::sigv4::sign_api(
        &creds,
        &url,
        region,
        "ecr",
        &[("content-type", content_type), ("x-amz-target", ECR_TARGET)],
        body.as_bytes(),
        SystemTime::now(),
    )?;
    let mut req = http::client(opts)?
        .post(&url)
        .header("content-type", content_type)
        .header("x-amz-target", ECR_TARGET)
        .body(body);
    for (k, v) in signed {
        req = req.header(k, v);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| http::transport_error(&what, e))?;
    let status = resp.status();
    let text = http::capped_text(resp, &what).await?;
    if !status.is_success() {
        return Err(ecr_error(status, &text, &what));
    }
    let reply: TokenReply = serde_json::from_str(&text).map_err(|e| {
        Error::new(
            Kind::Network,
            format!("{what}: the reply is not what ECR sends"),
        )
        .with_source(e)
    })?;
    let token = reply
        .authorization_data
        .into_iter()
        .next()
        .and_then(|d| {
            base64::engine::general_purpose::STANDARD
                .decode(d.authorization_token)
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((user, secret)) = token.as_deref().and_then(|t| t.split_once(':')) else {
        return Err(Error::new(
            Kind::Network,
            format!("{what}: the reply holds no user:password token"),
        ));
    };
    Ok(Credentials {
        user: user.to_string(),
        secret: secret.to_string(),
        identity_token: false,
        source: what,
    })
}

/// A refusal is exit 3 with what the role needs; throttling and server errors are transient.
fn ecr_error(status: reqwest::StatusCode, text: &str, what: &str) -> Error {
    // AWS JSON errors: {"__type": "…#AccessDeniedException", "message": "…"}; the message
    // names the principal and action, never a secret.
    let json: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let code = json["__type"]
        .as_str()
        .unwrap_or_default()
        .rsplit('#')
        .next()
        .unwrap_or_default()
        .to_string();
    let message = json["message"]
        .as_str()
        .or_else(|| json["Message"].as_str())
        .unwrap_or_default();
    if status.is_server_error() || status.as_u16() == 429 || code.contains("Throttl") {
        return http::busy(format!("{what}: HTTP {status} {code}"), status, None);
    }
    Error::new(
        Kind::Denied,
        format!(
            "{what} was refused (HTTP {status} {code}: {message}): the identity needs \
             ecr:GetAuthorizationToken (e.g. the AmazonEC2ContainerRegistryReadOnly policy), \
             or log in with docker login / a pull secret"
        ),
    )
}

/// A service-account key file as Artifact Registry and Container Registry take one: user
/// `_json_key_base64`, the file base64-encoded as the password; `None` for other credential
/// types (an authorized user or workload identity federation yields a real access token).
fn json_key(path: &std::path::Path) -> Result<Option<Credentials>> {
    let shown = path.display();
    let (text, json) = crate::remote::gcs_auth::read_credentials(path)?;
    if json["type"] != "service_account" {
        return Ok(None);
    }
    let email = json["client_email"].as_str().unwrap_or("?");
    Ok(Some(Credentials {
        user: "_json_key_base64".into(),
        secret: base64::engine::general_purpose::STANDARD.encode(&text),
        identity_token: false,
        source: format!("the key of service account {email} in {shown}"),
    }))
}

/// An access token from Google's credentials (a key file, gcloud's, or the metadata server:
/// GKE Workload Identity) as the password of `oauth2accesstoken`.
async fn google(auth: &crate::remote::gcs_auth::Auth) -> Result<Credentials> {
    let what = auth.describe();
    let headers = auth.headers().await?;
    let token = headers
        .get(reqwest::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Error::new(
                Kind::Denied,
                format!("{what} gave no access token for the registry"),
            )
        })?;
    Ok(Credentials {
        user: "oauth2accesstoken".into(),
        secret: token.to_string(),
        identity_token: false,
        source: format!("Google credentials ({what})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ecr_of(account: &str, region: &str, fips: bool, china: bool) -> Option<Cloud> {
        Some(Cloud::Ecr {
            account: account.into(),
            region: region.into(),
            fips,
            china,
        })
    }

    #[test]
    fn cloud_registries_are_known_by_their_names() {
        let a = "123456789012";
        assert_eq!(
            classify("123456789012.dkr.ecr.us-east-1.amazonaws.com"),
            ecr_of(a, "us-east-1", false, false)
        );
        assert_eq!(
            classify("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com:443"),
            ecr_of(a, "us-gov-west-1", true, false)
        );
        assert_eq!(
            classify("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            ecr_of(a, "cn-north-1", false, true)
        );
        assert_eq!(
            classify("123456789012.dkr.ecr.eu-isoe-west-1.amazonaws.com"),
            ecr_of(a, "eu-isoe-west-1", false, false)
        );
        assert_eq!(
            classify("123456789012.dkr-ecr.eu-west-1.on.aws"),
            ecr_of(a, "eu-west-1", false, false)
        );
        assert_eq!(
            classify("123456789012.DKR.ECR.us-east-1.amazonaws.com"),
            ecr_of(a, "us-east-1", false, false)
        );
        for google in [
            "gcr.io",
            "eu.gcr.io",
            "us-central1-docker.pkg.dev",
            "us-docker.pkg.dev:443",
        ] {
            assert_eq!(classify(google), Some(Cloud::Google), "{google}");
        }
        for other in [
            "public.ecr.aws",
            "12345678901.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.amazonaws.com",
            "123456789012.dkr.ecr.us.east.amazonaws.com",
            "123456789012.dkr.ecr.s3-website-us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.useast1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-x.amazonaws.com",
            "123456789012.s3.us-east-1.amazonaws.com",
            "evil-gcr.io",
            "pkg.dev",
            "ghcr.io",
            "127.0.0.1:5000",
            "docker.io",
        ] {
            assert_eq!(classify(other), None, "{other}");
        }
    }
}
