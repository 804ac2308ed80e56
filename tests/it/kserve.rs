//! The loader driven exactly as KServe drives its storage initializer: the variables its
//! webhook injects (`pkg/credentials/s3/s3_secret.go`), with the meanings its Python
//! initializer gives them (`python/kserve/kserve/storage/storage.py`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::proxy::Proxy;
use crate::support::*;

fn small_model(name: &str) -> (String, BTreeMap<String, Vec<u8>>) {
    let b = bucket(name);
    let mut objects = BTreeMap::new();
    objects.insert("m/model.safetensors".to_string(), data(91, (1 << 20) + 5));
    objects.insert("m/config.json".to_string(), b"{\"kserve\": true}".to_vec());
    seed_s3(&s3_endpoint(), &b, &objects);
    (b, objects)
}

/// The loader with KServe's variables only: no `AWS_ENDPOINT_URL`.
fn kserve_loader(home: &Path) -> Command {
    let mut c = loader("http://127.0.0.1:9", home);
    c.env_remove("AWS_ENDPOINT_URL");
    c
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// `S3_ENDPOINT` is a host without a scheme; `S3_USE_HTTPS=0` makes it plain http. With only
/// those two (older KServe setups, and users who set them by hand), the loader went to AWS.
#[test]
fn s3_endpoint_with_use_https_0_alone_is_the_endpoint() {
    let (b, objects) = small_model("ks-ep");
    let front = Proxy::start(&s3_endpoint());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(kserve_loader(tmp.path())
        .env("S3_ENDPOINT", host_port(&front.url()))
        .env("S3_USE_HTTPS", "0")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    assert!(!front.requests().is_empty());
}

/// `AWS_ENDPOINT_URL_S3` and `AWS_ENDPOINT_URL` (what the AWS CLI, and KServe's own Python,
/// read) win over `S3_ENDPOINT`.
#[test]
fn aws_endpoint_names_win_over_kserves() {
    let (b, objects) = small_model("ks-prec");
    let front = Proxy::start(&s3_endpoint());
    let tmp = tempfile::tempdir().unwrap();
    for name in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"] {
        let dest = tmp.path().join(name);
        let out = run(kserve_loader(tmp.path())
            .env(name, front.url())
            .env("S3_ENDPOINT", "127.0.0.1:9")
            .env("S3_USE_HTTPS", "0")
            .arg(format!("s3://{b}/m"))
            .arg(&dest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert_eq!(tree(&dest), expected(&objects, "m/"));
    }
}

/// `S3_USER_VIRTUAL_BUCKET=true` puts the bucket in the host; `awsAnonymousCredential=true`
/// sends unsigned requests (a public bucket), even with keys in the environment. Reached as
/// `BUCKET.s3.kserve.test` through HTTP_PROXY: the test proxy forwards to moto with the Host
/// untouched (no DNS involved).
#[test]
fn virtual_hosted_anonymous_requests_as_kserve_asks() {
    let (b, objects) = small_model("ks-virt");
    make_public(&b, &objects);
    let front = Proxy::start(&s3_endpoint());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(kserve_loader(tmp.path())
        .env("HTTP_PROXY", front.url())
        .env("S3_ENDPOINT", "s3.kserve.test")
        .env("S3_USE_HTTPS", "0")
        .env("S3_USER_VIRTUAL_BUCKET", "True")
        .env("awsAnonymousCredential", "true")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let heads = front.heads();
    assert!(!heads.is_empty());
    for h in &heads {
        let lower = h.to_ascii_lowercase();
        assert!(lower.contains(&format!("host: {b}.s3.kserve.test")), "{h}");
        assert!(!lower.contains("authorization:"), "unsigned: {h}");
    }
}

/// Makes every object of `b` readable without credentials (`x-amz-acl: public-read`).
fn make_public(b: &str, objects: &BTreeMap<String, Vec<u8>>) {
    let ep = s3_endpoint();
    block_on(async {
        let client = reqwest::Client::new();
        // moto routes a request to S3 by its Authorization header; it does not check it.
        let auth = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
        for k in objects.keys() {
            let r = client
                .put(format!("{ep}/{b}/{k}?acl"))
                .header("authorization", auth)
                .header("x-amz-acl", "public-read")
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "acl {k}: {}", r.status());
        }
    });
}
