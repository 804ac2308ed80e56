//! Who GCS requests are from, through Google's own `google-cloud-auth`: the token flows
//! (service-account JWT, authorized user, workload identity federation, impersonation, the
//! metadata server), their token caches and refreshes are that crate's. What stays here is the
//! loader's policy on top: which credentials file applies (a path KubeAI sets for an absent
//! Secret warns and falls back), anonymous access for emulators and public buckets off Google
//! Cloud, and how failures are classified.

use std::path::{Path, PathBuf};

use google_cloud_auth::credentials::{
    external_account, impersonated, mds, service_account, user_account, CacheableResource,
    Credentials,
};
use reqwest::header::HeaderMap;

use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;

/// How requests are authorized.
pub enum Auth {
    Anonymous,
    Google {
        creds: Credentials,
        /// For log lines and errors: "service account a@b", "the metadata server at h", …
        what: String,
    },
}

impl Auth {
    pub fn describe(&self) -> String {
        match self {
            Auth::Anonymous => "anonymous (no credentials)".into(),
            Auth::Google { what, .. } => what.clone(),
        }
    }

    /// The headers that authorize a request now (`authorization`, and `x-goog-user-project`
    /// where a quota project is set); empty for anonymous access. Tokens are cached and
    /// refreshed by google-cloud-auth.
    pub async fn headers(&self) -> Result<HeaderMap> {
        let Auth::Google { creds, what } = self else {
            return Ok(HeaderMap::new());
        };
        match creds.headers(http_ext::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => Ok(data),
            Ok(CacheableResource::NotModified) => Ok(HeaderMap::new()),
            Err(e) if e.is_transient() => Err(Error::new(
                Kind::Network,
                format!("cannot get an access token for {what}: the token endpoint failed; retrying"),
            )
            .with_source(e)
            .transient(None)),
            Err(e) => Err(Error::new(
                Kind::Denied,
                format!("cannot get an access token for {what}: check the credentials file or the pod's service account binding"),
            )
            .with_source(e)),
        }
    }
}

/// `http::Extensions` under another name: `http` is our HTTP module's name here.
mod http_ext {
    pub use ::http::Extensions;
}

/// The credentials to use, with `scope` (read-only, or read-write for uploads): none for an
/// emulator; else the credentials file (`GOOGLE_APPLICATION_CREDENTIALS`, or gcloud's
/// well-known file); else the metadata server when one answers; else anonymous.
pub async fn discover(
    emulator: bool,
    scope: &'static str,
    reporter: &dyn Reporter,
) -> Result<Auth> {
    let file = credentials_file(reporter);
    if emulator {
        return Ok(Auth::Anonymous);
    }
    if let Some(path) = file {
        return from_file(&path, scope);
    }
    let host =
        crate::env::var("GCE_METADATA_HOST").unwrap_or_else(|| "metadata.google.internal".into());
    if !metadata_available(&host, reporter).await? {
        return Ok(Auth::Anonymous);
    }
    let creds = mds::Builder::default()
        .with_scopes([scope])
        .build()
        .map_err(|e| Error::usage("cannot use the metadata server's credentials").with_source(e))?;
    Ok(Auth::Google {
        creds,
        what: format!("the metadata server at {host} (GKE Workload Identity / GCE)"),
    })
}

/// The credentials file to use: `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's well-known
/// file. KubeAI sets the variable to a path even when its optional secret is absent, so a
/// missing file warns and falls back instead of failing.
pub(crate) fn credentials_file(reporter: &dyn Reporter) -> Option<PathBuf> {
    if let Some(p) = crate::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
        let path = PathBuf::from(&p);
        if path.is_file() {
            return Some(path);
        }
        reporter.warn(&format!(
            "GOOGLE_APPLICATION_CREDENTIALS={p} does not exist; falling back to the metadata server or anonymous access"
        ));
        return None;
    }
    let well_known = crate::env::var("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| crate::env::var("HOME").map(|h| Path::new(&h).join(".config/gcloud")))
        .map(|d| d.join("application_default_credentials.json"));
    well_known.filter(|p| p.is_file())
}

/// A Google credentials file: its bytes and its JSON (usage errors name the file, never
/// quote it: it holds a private key).
pub(crate) fn read_credentials(path: &Path) -> Result<(Vec<u8>, serde_json::Value)> {
    let shown = path.display();
    let text = std::fs::read(path).map_err(|e| {
        Error::usage(format!("cannot read the credentials file {shown}")).with_source(e)
    })?;
    let json = serde_json::from_slice(&text).map_err(|e| {
        Error::usage(format!("{shown} is not a Google credentials JSON file")).with_source(e)
    })?;
    Ok((text, json))
}

/// Builds the credentials a JSON file describes, by its `type`.
fn from_file(path: &Path, scope: &'static str) -> Result<Auth> {
    let shown = path.display();
    let (_, json) = read_credentials(path)?;
    let kind = json["type"].as_str().unwrap_or_default().to_string();
    let field = |name: &str| json[name].as_str().unwrap_or("?").to_string();
    let (built, what) = match kind.as_str() {
        "service_account" => (
            service_account::Builder::new(json.clone())
                .with_access_specifier(service_account::AccessSpecifier::from_scopes([scope]))
                .build(),
            format!("service account {}", field("client_email")),
        ),
        "authorized_user" => (
            user_account::Builder::new(json.clone())
                .with_scopes([scope])
                .build(),
            format!("authorized user (OAuth client {})", field("client_id")),
        ),
        "external_account" => (
            external_account::Builder::new(json.clone())
                .with_scopes([scope])
                .build(),
            format!("workload identity federation ({})", field("audience")),
        ),
        "impersonated_service_account" => (
            impersonated::Builder::new(json.clone())
                .with_scopes([scope])
                .build(),
            "an impersonated service account".to_string(),
        ),
        other => {
            return Err(Error::usage(format!(
                "{shown} holds {other:?} credentials; supported are \"service_account\", \"authorized_user\", \
                 \"external_account\" (workload identity federation) and \"impersonated_service_account\" files, \
                 the metadata server (GKE Workload Identity), and anonymous access"
            )))
        }
    };
    let creds = built.map_err(|e| {
        Error::usage(format!("{shown}: cannot use these {kind} credentials")).with_source(e)
    })?;
    Ok(Auth::Google {
        creds,
        what: format!("{what} from {shown}"),
    })
}

/// How long a metadata server that does not answer yet is waited for on Google Cloud: GKE's
/// takes "a few seconds" in a new pod (Google says to retry), 5–10 s typically
/// (googleapis/google-cloud-go#14349), and an init container is the first thing that runs.
const METADATA_WARMUP: std::time::Duration = std::time::Duration::from_secs(30);

/// Is a metadata server answering? Asked directly, never through `HTTP(S)_PROXY` (as the
/// SDKs and google-cloud-auth's own client do). On Google Cloud (the metadata host resolves, or
/// the machine says it is a Google Compute Engine one) a server that does not answer yet is
/// retried with backoff for [`METADATA_WARMUP`] (`MODEL_LOADER_METADATA_WAIT` seconds), so a
/// new pod does not go anonymous; elsewhere one short try, so nothing stalls off Google Cloud.
async fn metadata_available(host: &str, reporter: &dyn Reporter) -> Result<bool> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(1))
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .map_err(|e| Error::usage("cannot set up the metadata client").with_source(e))?;
    let wait = match crate::env::var("MODEL_LOADER_METADATA_WAIT") {
        Some(v) => std::time::Duration::from_secs(v.trim().parse().map_err(|_| {
            Error::usage(format!(
                "MODEL_LOADER_METADATA_WAIT={v:?} is not a number of seconds"
            ))
        })?),
        None if on_google_cloud(host).await => METADATA_WARMUP,
        None => std::time::Duration::ZERO,
    };
    let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/email");
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(250);
    let mut told = false;
    loop {
        let why = match client
            .get(&url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(true),
            // The server answers, and the pod has no service account bound: a definite no.
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Ok(false),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) if e.is_timeout() => "timed out".to_string(),
            Err(e) if e.is_connect() => "could not connect".to_string(),
            Err(_) => "connection failed".to_string(),
        };
        if started.elapsed() + pause > wait {
            if told {
                reporter.warn(&format!(
                    "gs: the metadata server at {host} did not answer within {}s ({why}): going on without credentials",
                    wait.as_secs()
                ));
            }
            return Ok(false);
        }
        if !told {
            reporter.info(&format!(
                "gs: the metadata server at {host} does not answer yet ({why}; GKE's takes a few seconds in a new pod): retrying for up to {}s",
                wait.as_secs()
            ));
            told = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(2));
    }
}

/// Whether this runs on Google Cloud: the machine's DMI product name says Google Compute
/// Engine (what Google's client libraries check), the metadata host is the link-local
/// address, or its name resolves (only Google's DNS knows `metadata.google.internal`). An
/// address given as another IP (a test's loopback server) is no evidence.
async fn on_google_cloud(host: &str) -> bool {
    let dmi = std::fs::read_to_string("/sys/class/dmi/id/product_name")
        .is_ok_and(|p| p.contains("Google"));
    if dmi {
        return true;
    }
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return matches!(ip, std::net::IpAddr::V4(v4) if v4.is_link_local());
    }
    let lookup = tokio::net::lookup_host((name.to_string(), 80));
    match tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await {
        Ok(Ok(addrs)) => addrs.count() > 0,
        _ => false,
    }
}
