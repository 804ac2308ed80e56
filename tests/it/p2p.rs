//! `--p2p-proxy`: object reads through a node's P2P proxy (a recording forward proxy here, in
//! place of Dragonfly's dfdaemon), everything else direct, and a proxy that fails never makes a
//! load fail.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::fwdproxy::{FwdProxy, Mode, Seen};
use crate::support::nginx::Nginx;
use crate::support::*;

/// A model under `m/` with one file large enough for several ranges at `--chunk-size 1MiB`.
fn seeded(name: &str) -> (String, String, BTreeMap<String, Vec<u8>>) {
    let ep = s3_endpoint();
    let b = bucket(name);
    let mut objects = BTreeMap::new();
    objects.insert("m/config.json".to_string(), b"{\"a\":1}".to_vec());
    objects.insert("m/w.bin".to_string(), data(71, 3 * 1024 * 1024 + 11));
    seed_s3(&ep, &b, &objects);
    (ep, b, objects)
}

fn query_names(url: &str) -> Vec<String> {
    url.split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter_map(|kv| kv.split('=').next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Every request the proxy saw is a Dragonfly-ready ranged GET of an object of `bucket`.
fn assert_object_gets(seen: &[Seen], bucket: &str, task_prefix: &str) {
    assert!(!seen.is_empty(), "nothing went through the proxy");
    for s in seen {
        assert_eq!(s.method, "GET", "{s:?}");
        assert!(s.url.contains(&format!("/{bucket}/")), "{s:?}");
        assert!(s.header("range").is_some(), "not ranged: {s:?}");
        assert_eq!(s.header("x-dragonfly-use-p2p"), Some("true"));
        let filtered: Vec<&str> = s
            .header("x-dragonfly-filtered-query-params")
            .unwrap_or_default()
            .split(',')
            .collect();
        for name in query_names(&s.url) {
            if name.starts_with("X-Amz-") {
                assert!(
                    filtered.contains(&name.as_str()),
                    "{name} not filtered: {s:?}"
                );
            }
        }
        let task = s
            .header("x-dragonfly-content-for-calculating-task-id")
            .unwrap_or_default();
        assert!(task.starts_with(task_prefix), "task id {task:?}");
    }
}

#[test]
fn s3_object_reads_go_through_the_proxy_presigned_and_nothing_else_does() {
    let (ep, b, objects) = seeded("p2ps3");
    let proxy = FwdProxy::start(Mode::Forward);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&ep, tmp.path())
        .args(["--chunk-size", "1MiB", "--p2p-proxy", &proxy.url])
        .env("AWS_SESSION_TOKEN", "SESSIONTOKEN123")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let seen = proxy.seen();
    assert_object_gets(&seen, &b, &format!("s3://{b}/m/"));
    // 4 ranges of w.bin and 1 of config.json: all of them, none twice.
    assert_eq!(seen.len(), 5, "{seen:?}");
    for s in &seen {
        assert!(
            s.url.contains("X-Amz-Signature="),
            "not presigned: {}",
            s.url
        );
        assert!(s.url.contains("X-Amz-SignedHeaders=host"), "{}", s.url);
        assert!(
            s.header("authorization").is_none(),
            "a signed header would break replays"
        );
        assert!(
            s.header("if-match").is_some(),
            "reads stay pinned to the listed ETag"
        );
        let task = s
            .header("x-dragonfly-content-for-calculating-task-id")
            .unwrap();
        assert!(task.contains('@'), "task id carries the ETag: {task}");
        assert!(
            !s.url.contains("list-type"),
            "a listing went through the proxy"
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("p2p: 5 requests through {}, 0 direct", proxy.url)),
        "{stderr}"
    );
    assert!(!stderr.contains("SESSIONTOKEN123"));
}

#[test]
fn a_proxy_that_is_down_or_erroring_sends_requests_direct_and_the_load_succeeds() {
    let (ep, b, objects) = seeded("p2pdown");
    let tmp = tempfile::tempdir().unwrap();
    let erroring = FwdProxy::start(Mode::DaemonError);
    for (proxy, why) in [
        ("http://127.0.0.1:9".to_string(), "the proxy is unreachable"),
        (erroring.url.clone(), "dfdaemon error"),
    ] {
        let dest = tmp.path().join(format!("d{}", proxy.len()));
        let out = run(loader(&ep, tmp.path())
            .args([
                "--chunk-size",
                "1MiB",
                "--p2p-proxy",
                &proxy,
                "--retries",
                "1",
            ])
            .arg(format!("s3://{b}/m"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{proxy}");
        assert_eq!(tree(&dest), expected(&objects, "m/"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("warning: p2p: 0 requests through") && stderr.contains("5 direct"),
            "{stderr}"
        );
        assert!(stderr.contains(why), "{stderr}");
    }
    // After three failures in a row the run stops asking the proxy; requests already in flight
    // (up to 16 at once) still reach it, so 3 to all 5 of them do.
    let tried = erroring.seen().len();
    assert!((3..=5).contains(&tried), "{tried} requests tried the proxy");
}

#[test]
fn gcs_media_reads_go_through_the_proxy_pinned_to_the_generation() {
    let gcs = required_env("MODEL_LOADER_TEST_GCS_ENDPOINT");
    let b = bucket("p2pgs");
    create_gcs_bucket(&gcs, &b);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let w = data(72, 2 * 1024 * 1024 + 5);
    std::fs::write(model.join("w.bin"), &w).unwrap();
    let gs = |args: &[&str]| {
        run(loader("http://127.0.0.1:9", tmp.path())
            .env("STORAGE_EMULATOR_HOST", &gcs)
            .env("GCE_METADATA_HOST", "127.0.0.1:9")
            .args(args))
    };
    assert_eq!(
        gs(&[model.to_str().unwrap(), &format!("gs://{b}/m")])
            .status
            .code(),
        Some(0)
    );
    let proxy = FwdProxy::start(Mode::Forward);
    let dest = tmp.path().join("d");
    let out = gs(&[
        "--chunk-size",
        "1MiB",
        "--p2p-proxy",
        &proxy.url,
        &format!("gs://{b}/m"),
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest)["w.bin"], sha256(&w));
    let seen = proxy.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for s in &seen {
        assert!(
            s.url.contains("alt=media") && s.url.contains("generation="),
            "{}",
            s.url
        );
        let task = s
            .header("x-dragonfly-content-for-calculating-task-id")
            .unwrap();
        assert!(task.starts_with(&format!("gs://{b}/m/w.bin#")), "{task}");
        assert_eq!(s.header("x-dragonfly-use-p2p"), Some("true"));
    }
}

fn hub() -> String {
    required_env("MODEL_LOADER_TEST_HF_ENDPOINT")
}

#[test]
fn hub_cdn_reads_go_through_the_proxy_and_the_token_never_does() {
    let token = "hf_fake_token_0123456789"; // the one the fake Hub accepts
    let repo = format!("gen/p2p-{:08x}", fastrand::u32(..));
    let proxy = FwdProxy::start(Mode::Forward);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(std::process::Command::new(bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", tmp.path())
        .env("HF_ENDPOINT", hub())
        .env("HF_TOKEN", token)
        .env("MODEL_LOADER_PROGRESS", "log")
        .env("MODEL_LOADER_TERMINATION_LOG", tmp.path().join("t"))
        .args(["--chunk-size", "256KiB", "--p2p-proxy", &proxy.url])
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let truth: serde_json::Value = serde_json::from_slice(&block_on(async {
        reqwest::get(format!("{}/_truth/model/{repo}@main", hub()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    }))
    .unwrap();
    let want: BTreeMap<String, String> = truth["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(tree(&dest), want);
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    let hub_host = hub().trim_start_matches("http://").to_string();
    for s in &seen {
        assert!(
            !s.url.contains(&hub_host),
            "a Hub API call went through the proxy: {}",
            s.url
        );
        assert!(
            s.headers.iter().all(|(_, v)| !v.contains(token)) && !s.url.contains(token),
            "the token reached the proxy: {s:?}"
        );
        let task = s
            .header("x-dragonfly-content-for-calculating-task-id")
            .unwrap();
        let digest = task.strip_prefix("hf-lfs:sha256:").expect("an LFS task id");
        assert!(want.values().any(|d| d == digest), "{task}");
    }
}

/// Four "nodes" (four DESTs) load one model through one caching proxy (nginx `proxy_cache`
/// with the slice module, keyed without the query, as a P2P daemon keys tasks without their
/// signature): the origin serves the model about once, not four times.
#[test]
fn four_nodes_through_one_caching_proxy_cost_the_origin_one_model() {
    let (ep, b, objects) = seeded("p2pfleet");
    let origin = proxy::Proxy::start(&ep);
    let tmp = tempfile::tempdir().unwrap();
    let cache = CachingProxy::start(tmp.path());
    let model: u64 = objects.values().map(|v| v.len() as u64).sum();
    let mut handles = Vec::new();
    for node in 0..4 {
        let mut cmd = loader(&origin.url(), tmp.path());
        cmd.args(["--chunk-size", "1MiB", "--p2p-proxy", &cache.url])
            .arg(format!("s3://{b}/m"))
            .arg(tmp.path().join(format!("node{node}")));
        handles.push(std::thread::spawn(move || run(&mut cmd)));
    }
    for h in handles {
        assert_eq!(h.join().unwrap().status.code(), Some(0));
    }
    for node in 0..4 {
        assert_eq!(
            tree(&tmp.path().join(format!("node{node}"))),
            expected(&objects, "m/")
        );
    }
    let served = origin.bytes_down();
    eprintln!("origin served {served} bytes for 4 nodes of a {model}-byte model");
    assert!(
        (served as f64) <= model as f64 * 1.1 + 64.0 * 1024.0,
        "the origin served {served} bytes for a {model}-byte model (headers and listings included)"
    );
}

/// nginx as a forward caching proxy for plain http (the origin is a loopback IP), 1 MiB slices.
struct CachingProxy {
    url: String,
    _nginx: Nginx,
}

impl CachingProxy {
    fn start(dir: &Path) -> CachingProxy {
        let nginx = Nginx::start(dir, |port, root| {
            std::fs::create_dir_all(root.join("cache")).unwrap();
            format!(
                r#"  proxy_cache_path {root}/cache levels=1:2 keys_zone=models:10m max_size=1g inactive=10m use_temp_path=off;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      slice 1m;
      proxy_cache models;
      proxy_cache_key $http_host$uri$slice_range;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 30s;
      proxy_cache_valid 200 206 10m;
      proxy_set_header Range $slice_range;
      proxy_set_header If-Match "";
      proxy_http_version 1.1;
      proxy_pass http://$http_host$uri$is_args$args;
    }}
  }}"#,
                root = root.display()
            )
        });
        CachingProxy {
            url: format!("http://127.0.0.1:{}", nginx.port),
            _nginx: nginx,
        }
    }
}

#[test]
fn bad_p2p_settings_exit_2_before_any_request() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (
            vec!["--p2p-proxy", "ftp://10.0.0.1:4001"],
            "is not an http:// or https:// URL",
        ),
        (
            vec!["--p2p-ca", "/no/such/ca.crt"],
            "--p2p-ca is set but --p2p-proxy is not",
        ),
        (
            vec![
                "--p2p-proxy",
                "http://127.0.0.1:9",
                "--p2p-ca",
                "/no/such/ca.crt",
            ],
            "cannot read the CA bundle /no/such/ca.crt",
        ),
    ] {
        let out = run(loader("http://127.0.0.1:9", tmp.path())
            .args(&args)
            .arg("s3://bkt/m")
            .arg(tmp.path().join("d")));
        let line = error_line(&out, 2);
        assert!(line.contains(needle), "{args:?}: {line}");
    }
}
