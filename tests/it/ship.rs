//! Shipping features: the upload direction (`load DIR URL`) round-tripped through every bucket
//! backend, `--check` for probes, shell completions.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::proxy::Proxy;
use crate::support::*;

/// A local model: a file large enough for several upload parts, nested folders, an empty file.
fn local_model(root: &Path) -> BTreeMap<String, String> {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("model.safetensors", data(91, 12 * 1024 * 1024 + 77)),
        ("config.json", b"{\"model_type\": \"llama\"}".to_vec()),
        ("tokenizer/tokenizer.json", data(92, 100_000)),
        ("empty.txt", Vec::new()),
    ];
    let mut want = BTreeMap::new();
    for (p, d) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &d).unwrap();
        want.insert(p.to_string(), sha256(&d));
    }
    // The loader's own state folder is never uploaded.
    std::fs::create_dir_all(root.join(".model-loader")).unwrap();
    std::fs::write(root.join(".model-loader/manifest.json"), "{}").unwrap();
    want
}

fn create_bucket(ep: &str, b: &str) {
    seed_s3(ep, b, &BTreeMap::new());
}

#[test]
fn upload_to_s3_then_download_round_trips() {
    let ep = s3_endpoint();
    let b = bucket("up");
    create_bucket(&ep, &b);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let want = local_model(&model);
    let proxy = Proxy::start(&ep);
    let out = run(loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", "5MiB"])
        .arg(&model)
        .arg(format!("s3://{b}/models/tiny")));
    assert_eq!(out.status.code(), Some(0));
    let reqs = proxy.requests();
    assert!(
        reqs.iter()
            .any(|l| l.starts_with("POST") && l.contains("uploads")),
        "multipart for the large file: {reqs:?}"
    );
    assert_eq!(
        reqs.iter()
            .filter(|l| l.starts_with("PUT") && l.contains("partNumber"))
            .count(),
        3,
        "{reqs:?}"
    );
    assert!(
        proxy
            .heads()
            .iter()
            .filter(|h| h.starts_with("PUT"))
            .all(|h| h.to_ascii_lowercase().contains("content-md5:")),
        "every upload carries Content-MD5"
    );
    let dest = tmp.path().join("back");
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/models/tiny"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), want);
}

#[test]
fn upload_to_oss_virtual_hosted_round_trips() {
    let ep = s3_endpoint();
    let b = bucket("ossup");
    create_bucket(&ep, &b);
    let proxy = Proxy::start(&ep);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let want = local_model(&model);
    let oss = |args: &[&str]| {
        run(loader(&ep, tmp.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HTTP_PROXY", proxy.url())
            .env("OSS_ENDPOINT", "http://oss-test-1.aliyuncs.test")
            .env("OSS_ACCESS_KEY_ID", "LTAIuploadkey")
            .env("OSS_ACCESS_KEY_SECRET", "upload-secret")
            .env("MODEL_LOADER_TERMINATION_LOG", tmp.path().join("tl"))
            .args(args))
    };
    let out = oss(&[
        "--chunk-size",
        "5MiB",
        model.to_str().unwrap(),
        &format!("oss://{b}/qwen"),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(proxy
        .requests()
        .iter()
        .all(|l| l.contains(&format!("http://{b}.oss-test-1.aliyuncs.test/"))));
    let dest = tmp.path().join("back");
    let out = oss(&[&format!("oss://{b}/qwen"), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), want);
}

#[test]
fn upload_to_gcs_resumable_round_trips() {
    let gcs = required_env("MODEL_LOADER_TEST_GCS_ENDPOINT");
    let b = bucket("gup");
    create_gcs_bucket(&gcs, &b);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let want = local_model(&model);
    let proxy = Proxy::start(&gcs);
    let gs = |args: &[&str], via: &str| {
        run(loader(&ep_unused(), tmp.path())
            .env("STORAGE_EMULATOR_HOST", via)
            .env("GCE_METADATA_HOST", "127.0.0.1:9")
            .args(args))
    };
    let out = gs(
        &[
            "--chunk-size",
            "4MiB",
            model.to_str().unwrap(),
            &format!("gs://{b}/m"),
        ],
        &proxy.url(),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        proxy
            .requests()
            .iter()
            .any(|l| l.contains("uploadType=resumable")),
        "{:?}",
        proxy.requests()
    );
    let dest = tmp.path().join("back");
    let out = gs(&[&format!("gs://{b}/m"), dest.to_str().unwrap()], &gcs);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), want);
}

fn ep_unused() -> String {
    "http://127.0.0.1:9".into()
}

#[test]
fn uploading_to_the_hub_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    local_model(&model);
    let out = run(loader(&ep_unused(), tmp.path())
        .arg(&model)
        .arg("hf://org/repo"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use `hf upload`"));
}

#[test]
fn check_tells_whether_dest_is_a_complete_copy() {
    let ep = s3_endpoint();
    let b = bucket("check");
    let mut objects = BTreeMap::new();
    objects.insert("m/a.json".to_string(), b"{}".to_vec());
    objects.insert("m/w.bin".to_string(), data(93, 5000));
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let src = format!("s3://{b}/m");
    let check = |src: &str| {
        run(loader(&ep_unused(), tmp.path())
            .args(["--check", src])
            .arg(&dest))
    };
    assert_eq!(check(&src).status.code(), Some(1), "nothing loaded yet");
    assert_eq!(
        run(loader(&ep, tmp.path()).arg(&src).arg(&dest))
            .status
            .code(),
        Some(0)
    );
    let ok = check(&src);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "offline: the endpoint is a dead port"
    );
    assert!(String::from_utf8_lossy(&ok.stderr).contains("holds a complete copy"));
    assert_eq!(
        check(&format!("s3://{b}/other")).status.code(),
        Some(1),
        "another source"
    );
    std::fs::write(dest.join("w.bin"), b"short").unwrap();
    let bad = check(&src);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("w.bin is 5 bytes, the manifest says 5000")
    );
}

#[test]
fn shell_completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(bin())
            .args(["--completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("model-loader") && text.contains("include"),
            "{shell}"
        );
    }
}

#[test]
fn an_upload_dry_run_sends_nothing_and_names_what_it_would_overwrite() {
    let ep = s3_endpoint();
    let b = bucket("updry");
    create_bucket(&ep, &b);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let want = local_model(&model);
    let proxy = Proxy::start(&ep);
    let dry = |proxy: &Proxy| {
        let out = run(loader(&proxy.url(), tmp.path())
            .env("MODEL_LOADER_DRY_RUN", "true")
            .arg(&model)
            .arg(format!("s3://{b}/m")));
        assert_eq!(out.status.code(), Some(0));
        let writes: Vec<String> = proxy
            .requests()
            .into_iter()
            .filter(|l| l.starts_with("PUT") || l.starts_with("POST") || l.starts_with("DELETE"))
            .collect();
        assert!(writes.is_empty(), "a dry run wrote: {writes:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = dry(&proxy);
    assert!(first.contains("nothing was sent"), "{first}");
    assert!(first.contains("overwriting 0"), "{first}");
    for rel in want.keys() {
        assert!(first.contains(rel.as_str()), "{rel} not listed: {first}");
    }
    let out = run(loader(&ep, tmp.path())
        .arg(&model)
        .arg(format!("s3://{b}/m")));
    assert_eq!(out.status.code(), Some(0));
    proxy.clear();
    let second = dry(&proxy);
    assert!(
        second.contains(&format!("{} identical files already there", want.len())),
        "{second}"
    );
    assert!(second.contains("would upload 0 files"), "{second}");
    // A file that differs from its object is named as an overwrite.
    std::fs::write(model.join("config.json"), "{\"model_type\": \"mistral\"}").unwrap();
    proxy.clear();
    let third = dry(&proxy);
    assert!(third.contains("overwriting 1"), "{third}");
    assert!(
        third.contains("config.json  (overwrites an object of 23 bytes)"),
        "{third}"
    );
}

#[test]
fn a_mistyped_url_or_a_dot_segment_is_refused_before_anything_is_written() {
    let ep = s3_endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let out = run(loader(&ep, tmp.path())
        .current_dir(tmp.path())
        .arg("s3://models/m2")
        .arg("s3:/uploads/x"));
    let line = error_line(&out, 2);
    assert!(line.contains("\"s3://uploads/x\""), "{line}");
    assert!(!tmp.path().join("s3:").exists(), "no folder named s3:");
    let out = run(loader(&ep, tmp.path())
        .arg("s3://bkt/a/../m")
        .arg(tmp.path().join("d")));
    let line = error_line(&out, 2);
    assert!(line.contains("\"..\" segment"), "{line}");
    assert!(!tmp.path().join("d").exists());
}
