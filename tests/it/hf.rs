//! `hf://` against the fake Hub (scripts/support/fake_hub.py, checked against huggingface_hub
//! by scripts/test.sh): revisions, sub-folders, single files, datasets, tokens, CDN expiry,
//! the Hub's error classes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::*;

const TOKEN: &str = "hf_fake_token_0123456789";

fn hub() -> String {
    required_env("MODEL_LOADER_TEST_HF_ENDPOINT")
}

fn hf_loader(home: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("HF_ENDPOINT", hub())
        .env("MODEL_LOADER_PROGRESS", "log")
        .env("MODEL_LOADER_RETRY_BASE_MS", "10")
        .env(
            "MODEL_LOADER_TERMINATION_LOG",
            home.join("no-termination-log"),
        );
    c
}

fn get_json(url: &str) -> serde_json::Value {
    let body = block_on(async { reqwest::get(url).await.unwrap().bytes().await.unwrap() });
    serde_json::from_slice(&body).unwrap()
}

/// (commit, path → sha256) of a repo at a revision, from the fake's ground truth.
fn truth(kind: &str, repo: &str, rev: &str) -> (String, BTreeMap<String, String>) {
    let v = get_json(&format!("{}/_truth/{kind}/{repo}@{rev}", hub()));
    let files = v["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    (v["sha"].as_str().unwrap().to_string(), files)
}

/// Requests the fake saw whose path mentions `needle`.
fn hub_log(needle: &str) -> Vec<serde_json::Value> {
    get_json(&format!("{}/_log", hub()))
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["path"].as_str().unwrap().starts_with("/_"))
        .filter(|e| {
            e["path"].as_str().unwrap().contains(needle)
                || e["query"].as_str().unwrap().contains(needle)
        })
        .cloned()
        .collect()
}

fn cdn_requests_for(files: &BTreeMap<String, String>) -> Vec<serde_json::Value> {
    let digests: Vec<&String> = files.values().collect();
    get_json(&format!("{}/_log", hub()))
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["server"] == "cdn"
                && digests
                    .iter()
                    .any(|d| e["path"].as_str().unwrap().ends_with(d.as_str()))
        })
        .cloned()
        .collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

#[test]
fn a_model_lands_verified_the_cdn_never_sees_the_token_and_a_rerun_fetches_nothing() {
    let repo = format!("gen/{}", unique("model"));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(hf_loader(tmp.path())
        .env("HF_TOKEN", TOKEN)
        .args(["--chunk-size", "256KiB"])
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let (sha, files) = truth("model", &repo, "main");
    assert_eq!(tree(&dest), files);
    let m = manifest(&dest);
    assert_eq!(
        m["revision"],
        sha.as_str(),
        "the manifest records the commit"
    );
    assert!(!dest.join(".cache").exists(), "no huggingface cache layout");

    let cdn = cdn_requests_for(&files);
    assert!(
        cdn.len() > 16,
        "LFS files come from the CDN in ranges: {}",
        cdn.len()
    );
    assert!(
        cdn.iter().all(|e| e["auth"].is_null()),
        "the token reached the CDN: {cdn:?}"
    );
    assert!(cdn.iter().all(|e| e["range"].is_string()));
    let hub_calls = hub_log(&repo);
    assert!(hub_calls
        .iter()
        .filter(|e| e["server"] == "hub")
        .all(|e| e["auth"] == format!("Bearer {TOKEN}")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token hf_…89 from HF_TOKEN"), "{stderr}");
    // The sha256 of each LFS file followed its ranges as they arrived: nothing was read back.
    assert!(
        stderr.contains("hashed in order:") && stderr.contains("0 B read back (0%)"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "the token leaked into the log");

    let before = hub_log(&repo).len();
    let cdn_before = cdn_requests_for(&files).len();
    let out = run(hf_loader(tmp.path())
        .env("HF_TOKEN", TOKEN)
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let after = hub_log(&repo);
    let new: Vec<_> = after[before..]
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cdn_requests_for(&files).len(),
        cdn_before,
        "a rerun makes zero CDN requests"
    );
    assert!(
        new.iter().all(|p| p.starts_with("/api/")),
        "a rerun only resolves and lists: {new:?}"
    );
}

#[test]
fn branches_tags_shas_and_pull_requests() {
    let repo = format!("gen/{}", unique("revs"));
    let (dev_sha, _) = truth("model", &repo, "dev");
    for rev in ["dev", "v1.0", "refs/pr/1", &dev_sha[..10], dev_sha.as_str()] {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let out = run(hf_loader(tmp.path())
            .arg(format!("hf://{repo}@{rev}"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{rev}");
        let (sha, files) = truth("model", &repo, rev);
        assert_eq!(tree(&dest), files, "{rev}");
        assert_eq!(manifest(&dest)["revision"], sha.as_str(), "{rev}");
    }
}

#[test]
fn a_sub_folder_an_adapter_and_single_files() {
    let repo = format!("gen/{}", unique("parts"));
    let (_, all) = truth("model", &repo, "main");
    let tmp = tempfile::tempdir().unwrap();

    let dest = tmp.path().join("adapter");
    let out = run(hf_loader(tmp.path())
        .arg(format!("hf://{repo}/adapter"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let want: BTreeMap<String, String> = all
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("adapter/")?.to_string(), v.clone())))
        .collect();
    assert_eq!(want.len(), 2);
    assert_eq!(tree(&dest), want);

    for (path, name) in [
        ("sub/nested/with space ü.json", "with space ü.json"),
        (
            "model-00002-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ),
    ] {
        let dest = tmp.path().join(format!("one-{}", name.len()));
        let out = run(hf_loader(tmp.path())
            .arg(format!("hf://{repo}@main/{path}"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{path}");
        let mut want = BTreeMap::new();
        want.insert(name.to_string(), all[path].clone());
        assert_eq!(tree(&dest), want);
    }
}

#[test]
fn a_dataset() {
    let repo = format!("gen/{}", unique("data"));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(hf_loader(tmp.path())
        .arg(format!("hf://datasets/{repo}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), truth("dataset", &repo, "main").1);
}

#[test]
fn an_expired_cdn_url_is_resolved_again_mid_download() {
    // Every signed URL of gen-expiring/* is refused after two requests.
    let repo = format!("gen-expiring/{}", unique("exp"));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(hf_loader(tmp.path())
        .args(["--chunk-size", "256KiB", "--concurrency", "4"])
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let (_, files) = truth("model", &repo, "main");
    assert_eq!(tree(&dest), files);
    let resolves = hub_log(&repo)
        .iter()
        .filter(|e| {
            e["path"].as_str().unwrap().contains("/resolve/")
                && e["path"].as_str().unwrap().ends_with(".safetensors")
        })
        .count();
    assert!(
        resolves > 3,
        "expired URLs were re-resolved ({resolves} resolves for 3 LFS files)"
    );
}

#[test]
fn include_patterns_fetch_exactly_the_matching_files() {
    let repo = format!("gen/{}", unique("incl"));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(hf_loader(tmp.path())
        .args(["--include", "*.safetensors", "--include", "*.json"])
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let (_, all) = truth("model", &repo, "main");
    let want: BTreeMap<String, String> = all
        .into_iter()
        .filter(|(k, _)| k.ends_with(".safetensors") || k.ends_with(".json"))
        .collect();
    assert_eq!(tree(&dest), want);
}

#[test]
fn tokens_from_files_are_found_like_huggingface_hub_does() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("tok");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let out = run(hf_loader(tmp.path())
        .env("HF_TOKEN_PATH", &token_file)
        .arg("hf://org/private/config.json")
        .arg(tmp.path().join("a")));
    assert_eq!(out.status.code(), Some(0));
    let hf_home = tmp.path().join("hfhome");
    std::fs::create_dir_all(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), TOKEN).unwrap();
    let out = run(hf_loader(tmp.path())
        .env("HF_HOME", &hf_home)
        .arg("hf://org/private/config.json")
        .arg(tmp.path().join("b")));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hfhome/token"));
}

fn assert_fails(out: &std::process::Output, code: i32, needles: &[&str]) {
    let first = error_line(out, code);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(first.contains(n), "{first:?} should mention {n:?}");
    }
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr);
    assert!(
        !all.contains(TOKEN) && !all.contains("hf_not_a_real_token_999"),
        "a token leaked: {all}"
    );
}

#[test]
fn hub_errors_map_to_exit_codes_with_remedies() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let no_token = |url: &str| run(hf_loader(tmp.path()).arg(url).arg(&d));
    let with = |token: &str, url: &str| {
        run(hf_loader(tmp.path())
            .env("HF_TOKEN", token)
            .arg(url)
            .arg(&d))
    };

    assert_fails(
        &no_token("hf://org/private"),
        3,
        &["private or gated", "HF_TOKEN"],
    );
    assert_fails(
        &with(TOKEN, "hf://org/gated"),
        3,
        &["gated", "accept its terms"],
    );
    assert_fails(&no_token("hf://org/gated"), 3, &["gated", "HF_TOKEN"]);
    assert_fails(
        &with("hf_not_a_real_token_999", "hf://gen/whatever"),
        3,
        &["invalid", "HF_TOKEN"],
    );
    assert_fails(
        &no_token("hf://gen/errs@no-such-branch"),
        4,
        &["revision no-such-branch does not exist"],
    );
    assert_fails(
        &no_token("hf://gen/errs/no/such/file.bin"),
        4,
        &["nothing found at", "no/such/file.bin"],
    );
    assert_fails(
        &with(TOKEN, "hf://org/does-not-exist"),
        4,
        &["does not exist"],
    );
    assert!(!d.join(".model-loader/manifest.json").exists());
}

/// A repo whose LFS redirects go through a fault-injecting proxy in front of the fake CDN.
fn via_cdn_proxy(fault: proxy::Fault) -> (proxy::Proxy, String) {
    let cdn = get_json(&format!("{}/_cdn", hub()))["url"]
        .as_str()
        .unwrap()
        .to_string();
    let proxy = proxy::Proxy::with_fault(&cdn, fault);
    let repo = format!("cdn-{}/{}", proxy.addr.port(), unique("faults"));
    (proxy, repo)
}

#[test]
fn cdn_faults_are_retried_and_resumed_and_never_corrupt() {
    use crate::support::proxy::Fault;
    for fault in [
        Fault::Status {
            code: 503,
            retry_after: true,
            first: 3,
        },
        Fault::Cut {
            bytes: 30_000,
            first: 4,
        },
        Fault::Stall {
            bytes: 30_000,
            first: 1,
        },
    ] {
        let (proxy, repo) = via_cdn_proxy(fault);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let out = run(hf_loader(tmp.path())
            .args(["--chunk-size", "256KiB", "--read-timeout", "1"])
            .arg(format!("hf://{repo}"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{fault:?}");
        assert_eq!(tree(&dest), truth("model", &repo, "main").1, "{fault:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("retry 1"),
            "{fault:?}"
        );
        assert!(proxy.object_requests("lfs") > 0);
    }
    // A CDN that ignores Range (CloudFront does when gzip is accepted: huggingface_hub#3778):
    // each file is fetched whole, once, and lands verified.
    let (proxy, repo) = via_cdn_proxy(Fault::StripRange);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(hf_loader(tmp.path())
        .args(["--chunk-size", "256KiB", "--retries", "2"])
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ignores Range") && stderr.contains("fetching each file whole"),
        "{stderr}"
    );
    assert_eq!(tree(&dest), truth("model", &repo, "main").1);
    assert!(proxy.object_requests("lfs") > 0);
}

#[test]
fn a_flipped_bit_from_the_cdn_is_refetched_or_caught() {
    use crate::support::proxy::Fault;
    // Once: the sha256 of the LFS file fails, it is fetched again and lands exact.
    let (proxy, repo) = via_cdn_proxy(Fault::Flip { at: 1000, first: 1 });
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(hf_loader(tmp.path())
        .args(["--chunk-size", "256KiB"])
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sha256 mismatch") && stderr.contains("fetching it again, once"),
        "{stderr}"
    );
    assert_eq!(tree(&dest), truth("model", &repo, "main").1);
    assert!(proxy.object_requests("lfs") > 0);
    // Always: exit 6, no manifest.
    let (_proxy, repo) = via_cdn_proxy(Fault::Flip {
        at: 1000,
        first: usize::MAX,
    });
    let dest = tmp.path().join("d2");
    let out = run(hf_loader(tmp.path())
        .args(["--chunk-size", "256KiB"])
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    let line = error_line(&out, 6);
    assert!(line.contains("sha256 mismatch (expected "), "{line}");
    assert!(!dest.join(".model-loader/manifest.json").exists());
}

#[test]
fn a_killed_download_resumes_and_its_sha256_covers_the_bytes_of_both_runs() {
    use crate::support::proxy::Fault;
    let (proxy, repo) = via_cdn_proxy(Fault::Throttle {
        bytes_per_sec: 1 << 20,
    });
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let journal = dest.join(".model-loader/journal.jsonl");
    let mut child = hf_loader(tmp.path())
        .args(["--chunk-size", "256KiB", "--concurrency", "2"])
        .arg(format!("hf://{repo}"))
        .arg(&dest)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    kill_after_ranges(&mut child, &journal, 4);
    let out = run(hf_loader(tmp.path())
        .args(["--chunk-size", "256KiB"])
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), truth("model", &repo, "main").1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("hashed in order:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        !line.contains("0 B read back"),
        "what the first run fetched was read back into the hash: {line}"
    );
    assert!(proxy.object_requests("lfs") > 0);
}

/// A Hub mirror whose LFS redirects point at a CDN host the pod cannot reach (a firewall that
/// allows the mirror but not `cas-bridge.xethub.hf.co` or `cdn-lfs.hf.co`; padeoe/hf-mirror-site#50
/// shows mirrors redirecting there): connection refused, or a host that accepts and never
/// answers. Either way the run must end within bounded time with exit 5, naming the CDN host
/// and what to do — never hang, never blame the Hub.
#[test]
fn an_unreachable_cdn_host_ends_in_a_bounded_clear_error() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = refused.local_addr().unwrap().port();
    drop(refused);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    // Accepts and keeps every connection open, never answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    for port in [refused_port, silent_port] {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let repo = format!("cdn-{port}/{}", unique("unreachable"));
        let started = std::time::Instant::now();
        let out = run(hf_loader(tmp.path())
            .args(["--read-timeout", "1"])
            .arg(format!("hf://{repo}"))
            .arg(&dest));
        let took = started.elapsed();
        let line = error_line(&out, 5);
        assert!(
            took < std::time::Duration::from_secs(60),
            "bounded: {took:?}"
        );
        assert!(
            line.contains(&format!("127.0.0.1:{port}")),
            "names the CDN host: {line}"
        );
        assert!(line.contains("CDN"), "says it is the CDN: {line}");
        assert!(!dest.join(".model-loader/manifest.json").exists());
    }
}

/// The Hub counts every `/resolve` against a per-IP quota (anonymous: 3,000 per 5 minutes,
/// huggingface.co/docs/hub/rate-limits; 429s for repos of many files: huggingface/huggingface_hub#3342),
/// shared by every pod behind one NAT. So each LFS file is resolved once, however many ranges
/// fetch it at once, and once more per expiry of its signed URL — never once per range.
#[test]
fn each_lfs_file_is_resolved_once_plus_once_per_expiry() {
    for (org, expiring) in [("gen", false), ("gen-expiring", true)] {
        let repo = format!("{org}/{}", unique("resolves"));
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let out = run(hf_loader(tmp.path())
            .args(["--chunk-size", "256KiB", "--concurrency", "16"])
            .arg(format!("hf://{repo}"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{org}");
        let (_, files) = truth("model", &repo, "main");
        let mut got = tree(&dest);
        got.retain(|k, _| !k.starts_with(".model-loader"));
        assert_eq!(got, files, "{org}");
        let log = get_json(&format!("{}/_log", hub()));
        let log = log.as_array().unwrap();
        for (path, digest) in files.iter().filter(|(p, _)| p.ends_with(".safetensors")) {
            let resolves = log
                .iter()
                .filter(|e| e["server"] == "hub")
                .filter(|e| {
                    let p = e["path"].as_str().unwrap();
                    p.contains(&repo) && p.contains("/resolve/") && p.ends_with(path.as_str())
                })
                .count();
            // Each signed URL (its `id`) serves two requests when expiring; more are refused.
            let mut per_url: BTreeMap<String, usize> = BTreeMap::new();
            for e in log
                .iter()
                .filter(|e| e["server"] == "cdn" && e["path"] == format!("/lfs/{digest}"))
            {
                *per_url
                    .entry(e["query"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            let expiries: usize = if expiring {
                per_url.values().map(|n| n.saturating_sub(2)).sum()
            } else {
                0
            };
            assert!(
                resolves >= 1 && resolves <= 1 + expiries,
                "{org}: {path} resolved {resolves} times with {expiries} expiries ({} ranges)",
                per_url.values().sum::<usize>()
            );
        }
    }
}

/// The Hub's resolve quota runs out (429 with `RateLimit: "resolvers";r=0;t=…`, see
/// `Fault::HubRateLimit`): the run waits as the header says and completes, without hammering
/// the Hub meanwhile.
#[test]
fn a_hub_rate_limit_is_waited_out_as_its_header_says() {
    let front = proxy::Proxy::with_fault(&hub(), proxy::Fault::HubRateLimit { ms: 2500 });
    let repo = format!("gen/{}", unique("ratelimit"));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let started = std::time::Instant::now();
    let out = run(hf_loader(tmp.path())
        .env("HF_ENDPOINT", front.url())
        .args(["--concurrency", "16"])
        .arg(format!("hf://{repo}"))
        .arg(&dest));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (_, files) = truth("model", &repo, "main");
    let mut got = tree(&dest);
    got.retain(|k, _| !k.starts_with(".model-loader"));
    assert_eq!(got, files);
    assert!(stderr.contains("rate limited by the Hub"), "said: {stderr}");
    assert!(
        took >= std::time::Duration::from_secs(2),
        "waited: {took:?}"
    );
    assert!(
        front.refused() <= 12,
        "{} requests refused during a 2.5 s window: hammering",
        front.refused()
    );
}

/// KServe spells a revision `hf://ORG/REPO:REVISION` (kserve `storage.py` `_download_hf`
/// splits the model name at ':'); the loader takes it as `@REVISION` and records the canonical
/// spelling, so either spelling reruns as a no-op.
#[test]
fn kserves_colon_revision_is_the_at_revision() {
    let repo = format!("gen/{}", unique("colon"));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(hf_loader(tmp.path())
        .arg(format!("hf://{repo}:v1.0"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let (sha, files) = truth("model", &repo, "v1.0");
    let mut got = tree(&dest);
    got.retain(|k, _| !k.starts_with(".model-loader"));
    assert_eq!(got, files);
    let m = manifest(&dest);
    assert_eq!(m["source"], format!("hf://{repo}@v1.0"));
    assert_eq!(m["revision"], sha);
    let out = run(hf_loader(tmp.path())
        .arg(format!("hf://{repo}@v1.0"))
        .arg(&dest));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("fetch 0 files"),
        "the other spelling is the same load: {stderr}"
    );
}
