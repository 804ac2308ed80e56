//! Transient failures are retried and resumed; what cannot be fixed fails with exit 5 and
//! leaves no file looking complete. Faults come from the proxy in front of moto.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::proxy::{Fault, Proxy};
use crate::support::*;

/// A bucket with one 4-chunk file (64 KiB chunks) and one small file.
fn seeded(name: &str) -> (String, String, BTreeMap<String, Vec<u8>>) {
    let ep = s3_endpoint();
    let b = bucket(name);
    let mut objects = BTreeMap::new();
    objects.insert("m/weights.bin".to_string(), data(11, 4 * 65536 - 100));
    objects.insert("m/config.json".to_string(), b"{\"layers\": 2}".to_vec());
    seed_s3(&ep, &b, &objects);
    (ep, b, objects)
}

fn load_via(
    proxy: &Proxy,
    b: &str,
    dest: &std::path::Path,
    home: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    run(loader(&proxy.url(), home)
        .args(["--chunk-size", "64KiB", "--concurrency", "4"])
        .args(extra)
        .arg(format!("s3://{b}/m"))
        .arg(dest))
}

fn ranged_gets(proxy: &Proxy, b: &str) -> usize {
    proxy.object_requests(b)
}

#[test]
fn server_errors_and_429_are_retried_until_they_pass() {
    for (code, retry_after) in [(503, true), (500, false), (429, true), (502, false)] {
        let (ep, b, objects) = seeded("status");
        let proxy = Proxy::with_fault(
            &ep,
            Fault::Status {
                code,
                retry_after,
                first: 3,
            },
        );
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let out = load_via(&proxy, &b, &dest, tmp.path(), &[]);
        assert_eq!(out.status.code(), Some(0), "{code}");
        assert_eq!(tree(&dest), expected(&objects, "m/"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if matches!(code, 429 | 503) {
            // Asked to slow down: one wave of refusals is one cut, said once.
            assert_eq!(stderr.matches("asks to slow down").count(), 1, "{stderr}");
            assert!(
                (1..=3).contains(&stderr.matches("retry ").count()),
                "{stderr}"
            );
        } else {
            assert_eq!(stderr.matches("retry ").count(), 3, "{code}: {stderr}");
        }
        assert!(
            stderr.contains(", 3 retries"),
            "the summary counts retries: {stderr}"
        );
    }
}

#[test]
fn a_body_cut_mid_chunk_resumes_from_the_last_byte_written() {
    let (ep, b, objects) = seeded("cut");
    let proxy = Proxy::with_fault(
        &ep,
        Fault::Cut {
            bytes: 20_000,
            first: 3,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = load_via(&proxy, &b, &dest, tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    // 4 chunks + 1 small file, plus one resumed request per cut.
    assert_eq!(ranged_gets(&proxy, &b), 5 + 3, "{:?}", proxy.requests());
}

#[test]
fn a_stalled_body_is_cut_by_the_read_timeout_and_resumed() {
    let (ep, b, objects) = seeded("stall");
    let proxy = Proxy::with_fault(
        &ep,
        Fault::Stall {
            bytes: 20_000,
            first: 1,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let t = Instant::now();
    let out = load_via(
        &proxy,
        &b,
        &dest,
        tmp.path(),
        &["--read-timeout", "1", "--progress-interval", "0.2"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the stall was not cut: {:?}",
        t.elapsed()
    );
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(
        stderr.contains("progress: ") && stderr.contains("ETA"),
        "periodic log lines: {stderr}"
    );
}

/// CDNs and corporate proxies answer a ranged GET with 200 and the whole object: CloudFront
/// when the client accepts gzip (huggingface/huggingface_hub#3778, confirmed with curl against
/// the Hub's CDN), proxies that advertise `Accept-Ranges` but drop `Range` (GopeedLab/gopeed#1458).
/// The run switches to one whole-body stream per file, logged once, and lands every file
/// verified; a whole-body stream that breaks resumes by passing over the bytes it has.
#[test]
fn a_proxy_that_ignores_range_gets_whole_body_streams_verified() {
    for fault in [
        Fault::StripRange,
        Fault::StripRangeCut {
            bytes: 700_000,
            first: 6,
        },
    ] {
        let ep = s3_endpoint();
        let b = bucket("norange");
        let mut objects = BTreeMap::new();
        objects.insert("m/weights.bin".to_string(), data(11, 3 << 20));
        objects.insert("m/sub/more.bin".to_string(), data(12, (1 << 20) + 7));
        objects.insert("m/config.json".to_string(), b"{\"layers\": 2}".to_vec());
        seed_s3(&ep, &b, &objects);
        let proxy = Proxy::with_fault(&ep, fault);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let out = load_via(&proxy, &b, &dest, tmp.path(), &[]);
        assert_eq!(out.status.code(), Some(0), "{fault:?}");
        assert_eq!(tree(&dest), expected(&objects, "m/"), "{fault:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.matches("fetching each file whole").count(),
            1,
            "logged once: {stderr}"
        );
        assert!(stderr.contains("ignores Range"), "{stderr}");
        // Each file is asked for whole once (plus a retry per cut), never once per chunk:
        // 3 MiB in 64 KiB chunks would be 48 requests of the whole object.
        let gets = |name: &str| {
            proxy
                .requests()
                .iter()
                .filter(|l| l.starts_with("GET ") && l.contains(name))
                .count()
        };
        let cuts = if matches!(fault, Fault::StripRange) {
            0
        } else {
            6
        };
        assert!(
            gets("weights.bin") <= 4 + 1 + cuts,
            "{:?}",
            proxy.requests()
        );
        assert!(gets("more.bin") <= 4 + 1 + cuts, "{:?}", proxy.requests());
        if cuts > 0 {
            assert!(stderr.contains("retry 1"), "{stderr}");
        }
        // A rerun through the same proxy: nothing to fetch.
        let out = load_via(&proxy, &b, &dest, tmp.path(), &[]);
        assert_eq!(out.status.code(), Some(0));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("plan: fetch 0 files"), "{stderr}");
    }
}

#[test]
fn retries_that_run_out_exit_5_with_the_last_cause_and_no_manifest() {
    // A failing server counts attempts (--retries); one that asks to slow down is waited for
    // by the clock (--throttle-patience), and then given up on the same way.
    for (code, flags, says) in [
        (500, ["--retries", "3"], "after 3 attempts"),
        (
            503,
            ["--throttle-patience", "2"],
            "kept asking to slow down for over 2 s",
        ),
    ] {
        let (ep, b, _) = seeded("giveup");
        let proxy = Proxy::with_fault(
            &ep,
            Fault::Status {
                code,
                retry_after: true,
                first: usize::MAX,
            },
        );
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let out = load_via(&proxy, &b, &dest, tmp.path(), &flags);
        assert_eq!(out.status.code(), Some(5));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().find(|l| l.starts_with("error: ")).unwrap();
        assert!(
            first.contains("giving up on")
                && first.contains(says)
                && first.contains(&code.to_string()),
            "{first}"
        );
        assert!(!dest.join(".model-loader/manifest.json").exists());
        assert!(tree(&dest).is_empty(), "nothing at a final path");
    }
}

#[test]
fn an_interrupted_run_resumes_without_refetching_finished_ranges() {
    // The first run dies on a chunk of the large file after the others landed; the rerun
    // fetches only the missing chunk.
    let ep = s3_endpoint();
    let b = bucket("resume");
    let mut objects = BTreeMap::new();
    objects.insert("m/weights.bin".to_string(), data(12, 8 * 65536));
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    // One request at a time; after 6 chunks every request fails and the run gives up.
    let failing = Proxy::with_fault(&ep, Fault::FailAfter { ok: 6 });
    let out = run(loader(&failing.url(), tmp.path())
        .args([
            "--chunk-size",
            "64KiB",
            "--concurrency",
            "1",
            "--retries",
            "1",
        ])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(5));
    assert!(
        !dest.join("weights.bin").exists() && !dest.join(".model-loader/manifest.json").exists()
    );

    let proxy = Proxy::start(&ep);
    let out = run(loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", "64KiB", "--concurrency", "1"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        ranged_gets(&proxy, &b),
        2,
        "only the 2 missing chunks: {:?}",
        proxy.requests()
    );
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("384.0 KiB already on disk"), "{stderr}");
}

#[test]
fn json_progress_is_one_event_per_line() {
    let (ep, b, _) = seeded("json");
    let tmp = tempfile::tempdir().unwrap();
    let out = run(loader(&ep, tmp.path())
        .args(["--progress", "json", "--chunk-size", "64KiB"])
        .arg(format!("s3://{b}/m"))
        .arg(tmp.path().join("d")));
    assert_eq!(out.status.code(), Some(0));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "file_done").count(),
        2,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"plan") && kinds.last() == Some(&"done"),
        "{kinds:?}"
    );
    assert_eq!(
        events.last().unwrap()["bytes_fetched"],
        4 * 65536 - 100 + 13
    );
}

#[test]
fn sigterm_and_sigint_stop_the_run_with_143_and_130_and_no_manifest() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let (ep, b, _) = seeded("signal");
        let proxy = Proxy::with_fault(
            &ep,
            Fault::Stall {
                bytes: 20_000,
                first: usize::MAX,
            },
        );
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let child = loader(&proxy.url(), tmp.path())
            .args(["--chunk-size", "64KiB", "--read-timeout", "60"])
            .arg(format!("s3://{b}/m"))
            .arg(&dest)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let t = Instant::now();
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?} to stop",
            t.elapsed()
        );
        assert_eq!(out.status.code(), Some(code));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error: stopped: ") && stderr.contains("a rerun resumes"),
            "{stderr}"
        );
        assert!(!dest.join(".model-loader/manifest.json").exists());
    }
}

#[test]
fn bars_on_a_terminal_leave_only_the_error_line_when_stopped() {
    let python = required_env("MODEL_LOADER_TEST_PYTHON");
    let ep = s3_endpoint();
    let b = bucket("bars");
    let mut objects = BTreeMap::new();
    objects.insert("m/a.bin".to_string(), data(121, 6 << 20));
    objects.insert("m/b.bin".to_string(), data(122, 3 << 20));
    seed_s3(&ep, &b, &objects);
    let slow = Proxy::with_fault(
        &ep,
        Fault::Throttle {
            bytes_per_sec: 1 << 20,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    // `script` gives the loader a terminal (160 × 60); `timeout` sends SIGINT after `secs`.
    let on_terminal = |secs: u32, rec: &std::path::Path| -> Vec<String> {
        let inner = format!(
            "stty cols 160 rows 60; timeout -s INT {secs} {} --progress bar --chunk-size 1MiB s3://{b}/m {}",
            bin().display(),
            dest.display()
        );
        let mut cmd = wrap(
            "script",
            &["-qfec", &inner],
            &loader(&slow.url(), tmp.path()),
        );
        cmd.arg(rec).env("TERM", "xterm-256color");
        run(&mut cmd);
        let screen = run(Command::new(&python)
            .arg("scripts/support/screen.py")
            .arg(rec));
        let screen = String::from_utf8_lossy(&screen.stdout).to_string();
        // A bar shows `done/total` sizes: "B/" followed by a digit (not "MiB/s").
        let is_bar = |l: &str| {
            l.match_indices("B/")
                .any(|(i, _)| l[i + 2..].starts_with(|c: char| c.is_ascii_digit()))
        };
        assert!(
            !screen.lines().any(is_bar),
            "a progress bar was left on screen:\n{screen}"
        );
        assert!(screen.lines().any(|l| l.starts_with("plan: ")), "{screen}");
        screen.lines().map(str::to_string).collect()
    };
    // Stopped mid-download: the error line is the last thing on screen.
    let lines = on_terminal(2, &tmp.path().join("stopped"));
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("error: stopped: ")),
        "{lines:?}"
    );
    // Resumed to the end: the summary is.
    let lines = on_terminal(60, &tmp.path().join("done"));
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("done: fetched 2 files")),
        "{lines:?}"
    );
    assert_eq!(tree(&dest), expected(&objects, "m/"));
}
