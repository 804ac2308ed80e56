//! Test support: the servers scripts/test.sh started (found through environment variables; a
//! missing one fails the test loudly, never skips it), S3 seeding, a request-counting proxy,
//! running the real binary, and hashing trees.

pub mod etags;
pub mod fwdproxy;
pub mod liar;
pub mod nginx;
pub mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

/// An environment variable scripts/test.sh sets; panics with a remedy when it is missing.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through ./scripts/test.sh, which starts the servers they need")
    })
}

/// The moto server without authentication (signatures are not checked).
pub fn s3_endpoint() -> String {
    required_env("MODEL_LOADER_TEST_S3_ENDPOINT")
}

/// A bucket name unique to this test run.
pub fn bucket(name: &str) -> String {
    format!("{name}-{:08x}", fastrand::u32(..))
}

/// Deterministic incompressible bytes.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Creates `bucket` on the open moto server and uploads `objects` (key → bytes).
/// An Authorization header moto takes as S3 (the open server does not check the signature).
pub const MOTO_AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

/// PUTs one object into moto with one extra header (an encryption, a storage class).
pub fn put_with(endpoint: &str, bucket: &str, key: &str, body: Vec<u8>, header: (&str, &str)) {
    let status = block_on(async {
        reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}/{key}"))
            .header("authorization", MOTO_AUTH)
            .header("content-type", "application/octet-stream")
            .header(header.0, header.1)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "put {key}: {status}");
}

/// PUTs one object into moto as SSE-KMS (`x-amz-server-side-encryption: aws:kms`).
pub fn put_kms(endpoint: &str, bucket: &str, key: &str, body: Vec<u8>) {
    put_with(
        endpoint,
        bucket,
        key,
        body,
        ("x-amz-server-side-encryption", "aws:kms"),
    );
}

pub fn seed_s3(endpoint: &str, bucket: &str, objects: &BTreeMap<String, Vec<u8>>) {
    block_on(async {
        let client = reqwest::Client::new();
        // moto routes a request to S3 by its Authorization header; the open server does not
        // check the signature.
        let auth = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
        let r = client
            .put(format!("{endpoint}/{bucket}"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create bucket {bucket}: {}",
            r.status()
        );
        let puts = objects.iter().map(|(k, v)| {
            let client = client.clone();
            let url = format!(
                "{endpoint}/{bucket}/{}",
                model_loader::remote::sigv4::uri_encode(k, true)
            );
            async move {
                let r = client
                    .put(url)
                    .header("authorization", auth)
                    .header("content-type", "application/octet-stream")
                    .body(v.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "put {k}: {}", r.status());
            }
        });
        futures_util::stream::iter(puts)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    });
}

/// Uploads `files` (name → bytes) under `s3://b/m/` with the loader's own upload, whose part size
/// is `--chunk-size` (at least 5 MiB): a file larger than that becomes a multipart object.
pub fn upload_multipart(
    ep: &str,
    b: &str,
    files: &BTreeMap<String, Vec<u8>>,
    part: &str,
    home: &Path,
) {
    seed_s3(ep, b, &BTreeMap::new());
    let src = home.join("src");
    for (k, v) in files {
        std::fs::create_dir_all(src.join(k).parent().unwrap()).unwrap();
        std::fs::write(src.join(k), v).unwrap();
    }
    let out = run(loader(ep, home)
        .args(["--chunk-size", part])
        .arg(&src)
        .arg(format!("s3://{b}/m")));
    assert_eq!(out.status.code(), Some(0));
}

/// Uploads (or overwrites) objects in an existing bucket.
pub fn seed_s3_objects(endpoint: &str, bucket: &str, objects: &BTreeMap<String, Vec<u8>>) {
    for (k, v) in objects {
        let status = block_on(async {
            reqwest::Client::new()
                .put(format!(
                    "{endpoint}/{bucket}/{}",
                    model_loader::remote::sigv4::uri_encode(k, true)
                ))
                .header("authorization", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0")
                .header("content-type", "application/octet-stream")
                .body(v.clone())
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "put {k}: {status}");
    }
}

/// Creates `bucket` on fake-gcs-server.
pub fn create_gcs_bucket(endpoint: &str, bucket: &str) {
    block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{endpoint}/storage/v1/b"))
            .header("content-type", "application/json")
            .body(format!("{{\"name\":\"{bucket}\"}}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create {bucket}: {}", r.status());
    });
}

pub fn delete_s3(endpoint: &str, bucket: &str, key: &str) {
    block_on(async {
        let r = reqwest::Client::new()
            .delete(format!(
                "{endpoint}/{bucket}/{}",
                model_loader::remote::sigv4::uri_encode(key, true)
            ))
            .header("authorization", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "delete {key}: {}", r.status());
    });
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_model-loader"))
}

/// The binary with a clean environment: static test keys, the endpoint, no metadata server,
/// fast retries, log-style progress, and no write to the real /dev/termination-log.
pub fn loader(endpoint: &str, home: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("MODEL_LOADER_PROGRESS", "log")
        .env("MODEL_LOADER_RETRY_BASE_MS", "10")
        .env(
            "MODEL_LOADER_TERMINATION_LOG",
            home.join("no-termination-log"),
        );
    // scripts/test.sh runs the safety and verification tests a second time with O_DIRECT
    // writes: `auto` writes these small models through the page cache.
    if let Ok(mode) = std::env::var("MODEL_LOADER_TEST_WRITE_MODE") {
        c.env("MODEL_LOADER_WRITE_MODE", mode);
    }
    c
}

/// `program args…` with exactly the environment `base` was given (for wrappers such as
/// `unshare` or `script` around the loader).
pub fn wrap(program: &str, args: &[&str], base: &Command) -> Command {
    let mut c = Command::new(program);
    c.args(args).env_clear();
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the binary runs");
    eprintln!(
        "--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Every regular file under `root` (relative path → sha256), state folder excluded.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
        if rel == ".model-loader" {
            continue;
        }
        let ft = e.file_type().unwrap();
        assert!(
            !ft.is_symlink(),
            "{rel} is a symlink; DEST must hold plain files"
        );
        if ft.is_dir() {
            walk(root, &p, out);
        } else {
            out.insert(rel, sha256(&std::fs::read(&p).unwrap()));
        }
    }
}

/// What `tree` should return for `objects` under `prefix`.
pub fn expected(objects: &BTreeMap<String, Vec<u8>>, prefix: &str) -> BTreeMap<String, String> {
    objects
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), sha256(v))))
        .collect()
}

pub fn manifest(dest: &Path) -> serde_json::Value {
    let body =
        std::fs::read(dest.join(".model-loader/manifest.json")).expect("manifest.json exists");
    serde_json::from_slice(&body).unwrap()
}

/// Asserts the exit code and returns the `error: …` line, which must exist.
pub fn error_line(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
        .to_string()
}

/// Sends `sig` to a child process of the test.
pub fn signal(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: kill takes any pid and signal number; this pid is our own unreaped child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Waits until `journal` holds `ranges` range records (the child made that much durable
/// progress; 30 s at most, and the child must still be running), then kill -9s it.
pub fn kill_after_ranges(child: &mut std::process::Child, journal: &Path, ranges: usize) {
    use std::time::{Duration, Instant};
    let t = Instant::now();
    while std::fs::read_to_string(journal)
        .unwrap_or_default()
        .matches("\"t\":\"range\"")
        .count()
        < ranges
    {
        assert!(t.elapsed() < Duration::from_secs(30), "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child, libc::SIGKILL);
    child.wait().unwrap();
}

/// A local HTTP endpoint answering every request with `reply(request line, body)` (status
/// line, JSON); returns its URL and the request lines and bodies it received.
pub fn form_endpoint(
    reply: impl Fn(&str, &str) -> (&'static str, String) + Send + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    // Connections are served one at a time, each closed after its reply.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
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
            let (status, json) = reply(request_line.trim(), &body);
            seen2
                .lock()
                .unwrap()
                .push(format!("{} {body}", request_line.trim()));
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}", json.len());
        }
    });
    (url, seen)
}

/// What GKE's metadata server answers a workload: `token` as its access token, the service
/// account's email, 404 for anything else.
pub fn metadata_reply(line: &str, token: &str) -> (&'static str, String) {
    if line.contains("/service-accounts/default/token") {
        let reply =
            format!(r#"{{"access_token":"{token}","expires_in":3600,"token_type":"Bearer"}}"#);
        ("200 OK", reply)
    } else if line.contains("/service-accounts/default/email") {
        ("200 OK", "\"loader@p.iam.gserviceaccount.com\"".into())
    } else {
        ("404 Not Found", "{}".into())
    }
}

/// A metadata server on loopback answering [`metadata_reply`]: its `host:port` (for
/// GCE_METADATA_HOST) and the requests it saw.
pub fn metadata_server(
    token: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let (url, seen) = form_endpoint(move |line, _| metadata_reply(line, token));
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    (host, seen)
}
