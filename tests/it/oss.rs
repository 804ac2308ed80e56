//! `oss://` against moto reached virtual-hosted: the loader talks to `BUCKET.oss-…` through
//! HTTP_PROXY, and the test proxy forwards to moto with the Host header untouched (moto takes
//! the bucket from the Host). No DNS and no test hook in the loader are involved.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::proxy::Proxy;
use crate::support::*;

const ENDPOINT: &str = "http://oss-test-1.aliyuncs.test";

fn oss_loader(proxy: &Proxy, home: &Path, key: &str, secret: &str) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("HTTP_PROXY", proxy.url())
        .env("OSS_ENDPOINT", ENDPOINT)
        .env("OSS_ACCESS_KEY_ID", key)
        .env("OSS_ACCESS_KEY_SECRET", secret)
        // Present in the same pod, and must not be used for OSS.
        .env("AWS_ACCESS_KEY_ID", "AKIAAWSMUSTNOTLEAK")
        .env("AWS_SECRET_ACCESS_KEY", "aws-secret-must-not-leak")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("MODEL_LOADER_PROGRESS", "log")
        .env("MODEL_LOADER_RETRY_BASE_MS", "10")
        .env(
            "MODEL_LOADER_TERMINATION_LOG",
            home.join("no-termination-log"),
        );
    c
}

#[test]
fn a_tree_lands_through_virtual_hosted_requests() {
    let ep = s3_endpoint();
    let b = bucket("osstree");
    let mut objects = BTreeMap::new();
    objects.insert("qwen/config.json".to_string(), b"{\"a\": 1}".to_vec());
    objects.insert(
        "qwen/model.safetensors".to_string(),
        data(31, 3 * 65536 + 5),
    );
    objects.insert("qwen/tok/vocab ü.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    let proxy = Proxy::start(&ep);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(
        oss_loader(&proxy, tmp.path(), "LTAIosstestkey", "oss-test-secret")
            .args(["--chunk-size", "64KiB"])
            .arg(format!("oss://{b}/qwen"))
            .arg(&dest),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "qwen/"));
    let host = format!("{b}.oss-test-1.aliyuncs.test");
    let heads = proxy.heads();
    assert!(heads.len() >= 5);
    for h in &heads {
        let first = h.lines().next().unwrap();
        assert!(
            first.contains(&format!("http://{host}/")),
            "not virtual-hosted: {first}"
        );
        assert!(!first.contains(&format!("/{b}/")), "path-style: {first}");
        assert!(
            h.to_ascii_lowercase().contains(&format!("host: {host}")),
            "{h}"
        );
        assert!(
            h.contains("Credential=LTAIosstestkey/"),
            "signed with the OSS key: {h}"
        );
        assert!(
            !h.contains("AKIAAWSMUSTNOTLEAK"),
            "AWS credentials leaked into OSS: {h}"
        );
        assert!(
            h.contains("/test-1/s3/aws4_request"),
            "SigV4 scope uses the OSS region: {h}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("oss: signing as access key LTAI…ey from OSS_ACCESS_KEY_ID, region test-1"));
}

#[test]
fn a_wrong_secret_exits_3_without_printing_it() {
    let ep = required_env("MODEL_LOADER_TEST_S3_AUTH_ENDPOINT");
    let key = required_env("MODEL_LOADER_TEST_S3_AUTH_KEY_ID");
    let secret = required_env("MODEL_LOADER_TEST_S3_AUTH_SECRET");
    let b = required_env("MODEL_LOADER_TEST_S3_AUTH_BUCKET");
    let proxy = Proxy::start(&ep);
    let tmp = tempfile::tempdir().unwrap();

    // The right key works virtual-hosted against a server that checks signatures.
    let out = run(oss_loader(&proxy, tmp.path(), &key, &secret)
        .arg(format!("oss://{b}"))
        .arg(tmp.path().join("ok")));
    assert_eq!(out.status.code(), Some(0));

    let wrong = "oss-wrong-secret-value";
    let out = run(oss_loader(&proxy, tmp.path(), &key, wrong)
        .arg(format!("oss://{b}"))
        .arg(tmp.path().join("bad")));
    assert_eq!(out.status.code(), Some(3));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET"),
        "{all}"
    );
    assert!(
        !all.contains(wrong) && !all.contains(&secret),
        "a secret leaked: {all}"
    );
}

#[test]
fn missing_region_and_endpoint_is_a_usage_error() {
    let proxy = Proxy::start(&s3_endpoint());
    let tmp = tempfile::tempdir().unwrap();
    let out = run(oss_loader(&proxy, tmp.path(), "k", "s")
        .env_remove("OSS_ENDPOINT")
        .arg("oss://bkt/x")
        .arg(tmp.path().join("d")));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs OSS_REGION"));
}

#[test]
fn a_flipped_bit_in_an_oss_multipart_object_is_refetched_or_caught() {
    use crate::support::proxy::Fault;
    let ep = s3_endpoint();
    let b = bucket("ossmp");
    seed_s3(&ep, &b, &BTreeMap::new());
    let tmp = tempfile::tempdir().unwrap();
    // A 12 MiB multipart object (5 MiB parts), written through the S3 API of the same server.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bytes = data(171, (12 << 20) + 3);
    std::fs::write(src.join("w.bin"), &bytes).unwrap();
    let out = run(loader(&ep, tmp.path())
        .args(["--chunk-size", "5MiB"])
        .arg(&src)
        .arg(format!("s3://{b}/m")));
    assert_eq!(out.status.code(), Some(0));
    for (first, code) in [(1, 0), (usize::MAX, 6)] {
        let proxy = Proxy::with_fault(&ep, Fault::Flip { at: 777, first });
        let dest = tmp.path().join(format!("d{code}"));
        let out = run(
            oss_loader(&proxy, tmp.path(), "LTAIosstestkey", "oss-test-secret")
                .args(["--chunk-size", "2MiB"])
                .arg(format!("oss://{b}/m"))
                .arg(&dest),
        );
        assert_eq!(out.status.code(), Some(code));
        if code == 0 {
            assert_eq!(tree(&dest)["w.bin"], sha256(&bytes));
        } else {
            let line = error_line(&out, 6);
            assert!(line.contains("md5-of-parts mismatch"), "{line}");
            assert!(!dest.join("w.bin").exists());
        }
    }
}
