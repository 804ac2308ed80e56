//! KServe's S3 settings, so the loader can be KServe's storage initializer as it is injected.
//! KServe's webhook (`pkg/credentials/s3/s3_secret.go`) turns the annotations and secret of an
//! InferenceService into these variables, and its Python initializer
//! (`python/kserve/kserve/storage/storage.py`, `get_S3_config` and `_download_s3`) reads them
//! with the meanings kept here:
//!
//! - `S3_ENDPOINT` (a host, no scheme) with `S3_USE_HTTPS` (`0` for plain http; https by
//!   default): the endpoint when neither `AWS_ENDPOINT_URL_S3` nor `AWS_ENDPOINT_URL` is set
//!   (the webhook sets `AWS_ENDPOINT_URL` too; older setups only these two).
//! - `S3_VERIFY_SSL`: `0` or `false` turns TLS verification off for the endpoint.
//! - `S3_USER_VIRTUAL_BUCKET` (sic): `true` for virtual-hosted addressing on a custom endpoint.
//! - `S3_USE_ACCELERATE`: `true` for S3 Transfer Acceleration (AWS itself only).
//! - `awsAnonymousCredential`: `true` for unsigned requests (public buckets).
//! - With `CA_BUNDLE_CONFIGMAP_NAME` set: the CA bundle `AWS_CA_BUNDLE`, else
//!   `CA_BUNDLE_VOLUME_MOUNT_POINT/cabundle.crt` (a missing file is an error, as there).

use std::path::PathBuf;

/// What KServe's variables ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Kserve {
    /// `http(s)://S3_ENDPOINT`.
    pub endpoint: Option<String>,
    pub verify_tls: bool,
    pub virtual_hosted: bool,
    pub accelerate: bool,
    pub anonymous: bool,
    /// A CA bundle from KServe's global CA config map.
    pub ca_bundle: Option<PathBuf>,
}

/// As KServe's Python compares them: `"true" == value.lower()`.
fn is_true(name: &str, get: &dyn Fn(&str) -> Option<String>) -> bool {
    get(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl Kserve {
    pub fn from_env() -> Kserve {
        Kserve::from(&|n: &str| crate::env::var(n))
    }

    /// Read through `get` (the environment; a map in tests).
    pub fn from(get: &dyn Fn(&str) -> Option<String>) -> Kserve {
        let endpoint = get("S3_ENDPOINT").map(|host| {
            let host = host.trim().trim_end_matches('/');
            if host.contains("://") {
                host.to_string()
            } else {
                // The webhook writes "0" for http; anything else (and unset) is https.
                let http = get("S3_USE_HTTPS").is_some_and(|v| v.trim() == "0");
                format!("{}://{host}", if http { "http" } else { "https" })
            }
        });
        let verify_tls = !get("S3_VERIFY_SSL")
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false"));
        let ca_bundle = get("CA_BUNDLE_CONFIGMAP_NAME").map(|_| match get("AWS_CA_BUNDLE") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(get("CA_BUNDLE_VOLUME_MOUNT_POINT").unwrap_or_default())
                .join("cabundle.crt"),
        });
        Kserve {
            endpoint,
            verify_tls,
            virtual_hosted: is_true("S3_USER_VIRTUAL_BUCKET", get),
            accelerate: is_true("S3_USE_ACCELERATE", get),
            anonymous: is_true("awsAnonymousCredential", get),
            ca_bundle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Kserve {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Kserve::from(&move |n: &str| map.get(n).cloned())
    }

    #[test]
    fn kserves_variables_mean_what_kserve_means() {
        assert_eq!(
            read(&[]),
            Kserve {
                verify_tls: true,
                ..Kserve::default()
            }
        );
        let k = read(&[
            ("S3_ENDPOINT", "minio.kubeflow:9000"),
            ("S3_USE_HTTPS", "0"),
        ]);
        assert_eq!(k.endpoint.as_deref(), Some("http://minio.kubeflow:9000"));
        let k = read(&[
            ("S3_ENDPOINT", "minio.kubeflow:9000"),
            ("S3_USE_HTTPS", "1"),
        ]);
        assert_eq!(k.endpoint.as_deref(), Some("https://minio.kubeflow:9000"));
        let k = read(&[("S3_ENDPOINT", "minio.kubeflow:9000")]);
        assert_eq!(k.endpoint.as_deref(), Some("https://minio.kubeflow:9000"));
        let k = read(&[("S3_ENDPOINT", "http://minio:9000/")]);
        assert_eq!(k.endpoint.as_deref(), Some("http://minio:9000"));
        for off in ["0", "false", "False"] {
            assert!(!read(&[("S3_VERIFY_SSL", off)]).verify_tls, "{off}");
        }
        assert!(read(&[("S3_VERIFY_SSL", "1")]).verify_tls);
        let k = read(&[
            ("S3_USER_VIRTUAL_BUCKET", "True"),
            ("S3_USE_ACCELERATE", "true"),
            ("awsAnonymousCredential", "TRUE"),
        ]);
        assert!(k.virtual_hosted && k.accelerate && k.anonymous);
        assert!(
            !read(&[("awsAnonymousCredential", "1")]).anonymous,
            "Python's == \"true\""
        );
        // KServe reads a CA bundle only when its global CA config map is set.
        assert_eq!(read(&[("AWS_CA_BUNDLE", "/x.pem")]).ca_bundle, None);
        let k = read(&[
            ("CA_BUNDLE_CONFIGMAP_NAME", "cabundle"),
            ("CA_BUNDLE_VOLUME_MOUNT_POINT", "/etc/ssl/custom-certs"),
        ]);
        assert_eq!(
            k.ca_bundle,
            Some(PathBuf::from("/etc/ssl/custom-certs/cabundle.crt"))
        );
    }
}
