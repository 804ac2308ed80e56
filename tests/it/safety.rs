//! Crash-safety: kill -9 and resume, several loaders on one DEST, a full disk, hostile object
//! names, symlinks inside DEST, an object replaced mid-download, and secrets in every failure.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::proxy::{Fault, Proxy};
use crate::support::*;

fn journal_ranges(dest: &Path) -> usize {
    std::fs::read_to_string(dest.join(".model-loader/journal.jsonl"))
        .map(|j| j.lines().filter(|l| l.contains("\"t\":\"range\"")).count())
        .unwrap_or(0)
}

/// Bytes the journal records as durable (the union of its ranges; torn lines skipped).
fn journal_bytes(dest: &Path) -> u64 {
    let text =
        std::fs::read_to_string(dest.join(".model-loader/journal.jsonl")).unwrap_or_default();
    let mut ranges: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["t"] == "range")
        .map(|v| (v["start"].as_u64().unwrap(), v["end"].as_u64().unwrap()))
        .collect();
    ranges.sort();
    let (mut total, mut reach) = (0, 0);
    for (a, b) in ranges {
        let a = a.max(reach);
        if b > a {
            total += b - a;
            reach = b;
        }
    }
    total
}

#[test]
fn kill_9_mid_file_then_a_rerun_fetches_only_what_is_missing() {
    let ep = s3_endpoint();
    let b = bucket("kill9");
    let size = 40 * 65536;
    let mut objects = BTreeMap::new();
    objects.insert("m/big.bin".to_string(), data(41, size));
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    // Slow replies (each cut after 20 KB and resumed) keep the run going long enough to kill it.
    let slow = Proxy::with_fault(
        &ep,
        Fault::Cut {
            bytes: 20_000,
            first: usize::MAX,
        },
    );
    let mut child = loader(&slow.url(), tmp.path())
        .args([
            "--chunk-size",
            "64KiB",
            "--concurrency",
            "2",
            "--retries",
            "100",
        ])
        .arg(format!("s3://{b}/m"))
        .arg(&dest)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while journal_ranges(&dest) < 12 {
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let done = journal_bytes(&dest);
    assert!(!dest.join("big.bin").exists() && !dest.join(".model-loader/manifest.json").exists());

    let proxy = Proxy::start(&ep);
    let out = run(loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", "64KiB", "--concurrency", "2"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let missing = size as u64 - done;
    let allowance = missing + 2 * 65536 + 64 * 1024; // one chunk per request in flight, plus headers
    assert!(
        proxy.bytes_down() <= allowance,
        "rerun fetched {} bytes, {missing} were missing",
        proxy.bytes_down()
    );
    assert!(
        proxy.bytes_down() >= missing,
        "{} < {missing}",
        proxy.bytes_down()
    );
}

#[test]
fn four_loaders_into_one_dest_download_it_once() {
    let ep = s3_endpoint();
    let b = bucket("shared");
    let mut objects = BTreeMap::new();
    objects.insert("m/a.bin".to_string(), data(51, 20 * 65536));
    objects.insert("m/b.bin".to_string(), data(52, 7 * 65536));
    objects.insert("m/config.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    let total: usize = objects.values().map(Vec::len).sum();
    let proxy = Proxy::start(&ep);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("shared-volume/model");
    let children: Vec<_> = (0..4)
        .map(|_| {
            loader(&proxy.url(), tmp.path())
                .args(["--chunk-size", "64KiB"])
                .arg(format!("s3://{b}/m"))
                .arg(&dest)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut waited = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if String::from_utf8_lossy(&out.stderr).contains("waiting: ") {
            waited += 1;
        }
    }
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    assert!(waited >= 1, "the others waited for the lock holder");
    let served = proxy.bytes_down() as f64;
    assert!(
        served <= 1.2 * total as f64,
        "served {served} bytes for a {total}-byte model"
    );
    assert!(
        !dest.join(".model-loader/lock").exists(),
        "the lock is released"
    );
}

#[test]
fn a_lock_left_by_a_dead_loader_is_taken_over() {
    let ep = s3_endpoint();
    let b = bucket("stale");
    let mut objects = BTreeMap::new();
    objects.insert("m/x.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    std::fs::create_dir_all(dest.join(".model-loader")).unwrap();
    std::fs::write(
        dest.join(".model-loader/lock"),
        r#"{"owner":"old-pod-1-x","host":"old-pod","pid":1,"source":"s3://x","started":1,"heartbeat":1}"#,
    )
    .unwrap();
    let out = run(loader(&ep, tmp.path())
        .env("MODEL_LOADER_LOCK_STALE", "2")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("took over the lock"),
        "logs the take-over"
    );
    assert_eq!(tree(&dest), expected(&objects, "m/"));
}

#[test]
fn a_model_larger_than_the_free_space_fails_before_fetching() {
    let ep = s3_endpoint();
    let b = bucket("full");
    let mut objects = BTreeMap::new();
    objects.insert("m/weights.bin".to_string(), data(61, 3 << 20));
    seed_s3(&ep, &b, &objects);
    let proxy = Proxy::start(&ep);
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    // A 1 MiB tmpfs in a private mount namespace: nothing to clean up, nothing leaks.
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {0} && exec {1} s3://{b}/m {0}/dest",
        mnt.display(),
        bin().display()
    );
    let mut cmd = loader(&proxy.url(), tmp.path());
    let out = run(std::process::Command::new("unshare")
        .args(["--mount", "--map-root-user", "sh", "-c", &script])
        .env_clear()
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        ));
    let _ = &mut cmd;
    assert_eq!(
        out.status.code(),
        Some(7),
        "needs root or user namespaces for a tmpfs; see stderr"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("free but this download needs") && stderr.contains("3.0 MiB"),
        "{stderr}"
    );
    assert_eq!(proxy.object_requests(&b), 0, "not one object byte fetched");
}

/// PUT with a raw request line, so the key reaches the server exactly as written (HTTP
/// clients normalise `..`).
fn raw_put(endpoint: &str, bucket: &str, raw_key: &str, body: &[u8]) {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "PUT /{bucket}/{raw_key} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "PUT {raw_key}: {reply}");
}

#[test]
fn hostile_object_names_never_write_outside_dest() {
    let ep = s3_endpoint();
    let tmp = tempfile::tempdir().unwrap();
    // DEST sits inside a sentinel folder: nothing may appear in the sentinel but DEST.
    let sentinel = tmp.path().join("sentinel");
    let dest = sentinel.join("inner/dest");
    std::fs::create_dir_all(&dest).unwrap();
    let long = "n".repeat(300);
    for (key, needle) in [
        ("m/..%2Fescape.txt", "'.' or '..'"),
        ("m/a/..%2F..%2F..%2Fescape2.txt", "'.' or '..'"),
        ("m/%2Fabs.txt", "absolute"),
        ("m/back%5Cslash.txt", "backslash"),
        (&format!("m/{long}"), "longer than 255 bytes"),
    ] {
        let b = bucket("hostile");
        let mut ok = BTreeMap::new();
        ok.insert("m/fine.json".to_string(), b"{}".to_vec());
        ok.insert("m/marker/".to_string(), Vec::new()); // a console folder marker: skipped
        seed_s3(&ep, &b, &ok);
        raw_put(&ep, &b, key, b"evil");
        let out = run(loader(&ep, tmp.path())
            .arg(format!("s3://{b}/m"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(2), "{key}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("refusing source path") && stderr.contains(needle),
            "{key}: {stderr}"
        );
        assert!(stderr.contains("--exclude"), "says how to skip it");
        let names: Vec<_> = walk_all(&sentinel);
        assert!(
            names
                .iter()
                .all(|n| n == "inner" || n.starts_with("inner/dest")),
            "{key}: wrote outside DEST: {names:?}"
        );
        assert!(
            tree(&dest).is_empty(),
            "{key}: nothing lands when a key is refused"
        );

        // The hostile key can be skipped: the rest loads, the marker is not a file.
        let out = run(loader(&ep, tmp.path())
            .args([
                "--exclude",
                "*escape*",
                "--exclude",
                "*abs*",
                "--exclude",
                "*slash*",
                "--exclude",
                "nnn*",
            ])
            .arg(format!("s3://{b}/m"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{key}");
        assert_eq!(tree(&dest).into_keys().collect::<Vec<_>>(), ["fine.json"]);
        std::fs::remove_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&dest).unwrap();
    }

    // A file and a folder with one name.
    let b = bucket("clash");
    let mut objects = BTreeMap::new();
    objects.insert("m/clash".to_string(), b"file".to_vec());
    objects.insert("m/clash/inner.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("both a file clash and a folder clash/"));
}

fn walk_all(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn a_symlink_inside_dest_is_not_followed() {
    let ep = s3_endpoint();
    let b = bucket("symlink");
    let mut objects = BTreeMap::new();
    objects.insert("m/sub/x.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    let dest = tmp.path().join("d");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("sub")).unwrap();
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a symlink"));
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through the link"
    );
}

#[test]
fn an_object_replaced_mid_download_never_mixes_versions() {
    let ep = s3_endpoint();
    let b = bucket("replaced");
    let mut objects = BTreeMap::new();
    objects.insert("m/w.bin".to_string(), data(71, 6 * 65536));
    seed_s3(&ep, &b, &objects);
    let (ep2, b2) = (ep.clone(), b.clone());
    let proxy = Proxy::with_hook(
        &ep,
        Box::new(move || {
            let mut new = BTreeMap::new();
            new.insert("m/w.bin".to_string(), data(72, 6 * 65536));
            seed_s3_objects(&ep2, &b2, &new);
        }),
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", "64KiB"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("changed on the server during the download") && stderr.contains("rerun"),
        "{stderr}"
    );
    assert!(!dest.join("w.bin").exists() && !dest.join(".model-loader/manifest.json").exists());
    // The rerun lists the new version and loads it whole.
    let out = run(loader(&ep, tmp.path())
        .args(["--chunk-size", "64KiB"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest)["w.bin"], sha256(&data(72, 6 * 65536)));
}

#[test]
fn no_failure_prints_a_secret() {
    let ep = s3_endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let secret = "S3CR3T/wJalrXUtnFEMI/K7MDENG+bPxRfiCYzzzzz";
    let token = "SESSION-TOKEN-IQoJb3JpZ2luX2VjEHIaCXVz";
    let hf_token = "hf_SECRETTOKENabcdefghijklmnopqrstu";
    let cases: Vec<Vec<String>> = vec![
        vec!["s3://no-such-bucket-xyz/m".into()],
        vec!["s3://b-b-b/m".into(), "--retries".into(), "1".into()],
        vec!["gs://no-such-bucket/m".into()],
        vec!["hf://org/private".into()],
        vec!["oss://bucket/m".into()],
        vec!["ftp://x".into()],
    ];
    // Passwords in endpoint URLs: user info must never be echoed, in logs or errors.
    let with_password = ep.replace("http://", "http://s3user:S3PASSWORD@");
    for (i, args) in cases.into_iter().enumerate() {
        let endpoint = match i {
            0 => with_password.clone(),
            1 => "http://u:S3PASSWORD@[not-a-url".to_string(),
            _ => ep.clone(),
        };
        let out = run(loader(&endpoint, tmp.path())
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_SESSION_TOKEN", token)
            .env("HF_TOKEN", hf_token)
            .env("OSS_ACCESS_KEY_ID", "LTAIkey")
            .env("OSS_ACCESS_KEY_SECRET", secret)
            .env("OSS_REGION", "cn-test")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HF_ENDPOINT", "http://hfuser:HFPASSWORD@127.0.0.1:9")
            .env(
                "STORAGE_EMULATOR_HOST",
                "http://gcsuser:GCSPASSWORD@127.0.0.1:9",
            )
            .env("MODEL_LOADER_RETRIES", "2")
            .args(&args)
            .arg(&d));
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for s in [
            secret,
            token,
            hf_token,
            "S3PASSWORD",
            "HFPASSWORD",
            "GCSPASSWORD",
        ] {
            assert!(!all.contains(s), "{args:?} printed a secret: {all}");
        }
    }
}

/// A proxy whose every reply stalls after 50,000 bytes, so a test can act mid-download.
fn stalling(ep: &str) -> Proxy {
    Proxy::with_fault(
        ep,
        Fault::Stall {
            bytes: 50_000,
            first: usize::MAX,
        },
    )
}

/// Runs `script(MNT, BIN)` with `sh` in a private mount namespace where MNT is a fresh 2 MiB
/// tmpfs, with the loader's test environment pointed at `proxy`.
fn in_a_small_tmpfs(
    proxy: &Proxy,
    tmp: &Path,
    script: impl Fn(&str, &str) -> String,
) -> std::process::Output {
    let mnt = tmp.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt = mnt.display().to_string();
    let script = format!(
        "mount -t tmpfs -o size=2m tmpfs {mnt} || exit 99\n{}",
        script(&mnt, &bin().display().to_string())
    );
    let cmd = loader(&proxy.url(), tmp);
    let out = run(std::process::Command::new("unshare")
        .args(["--mount", "--map-root-user", "sh", "-c", &script])
        .env_clear()
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        ));
    assert_ne!(
        out.status.code(),
        Some(99),
        "cannot mount a tmpfs (needs root or user namespaces)"
    );
    out
}

#[test]
fn running_out_of_space_mid_download_exits_7_and_keeps_the_partial_file() {
    let ep = s3_endpoint();
    let b = bucket("enospc");
    let mut objects = BTreeMap::new();
    objects.insert("m/weights.bin".to_string(), data(81, 1536 * 1024));
    seed_s3(&ep, &b, &objects);
    // Slow replies, so the disk can be filled while the download runs.
    let slow = stalling(&ep);
    let tmp = tempfile::tempdir().unwrap();
    let out = in_a_small_tmpfs(&slow, tmp.path(), |mnt, bin| {
        format!(
            "{bin} --chunk-size 64KiB --concurrency 2 --retries 1000 --read-timeout 0.3 s3://{b}/m {mnt}/dest & pid=$!
         for i in $(seq 1 200); do ls {mnt}/dest/.model-loader/parts/*.part >/dev/null 2>&1 && break; sleep 0.05; done
         sleep 0.3; dd if=/dev/zero of={mnt}/filler bs=64k 2>/dev/null
         wait $pid; code=$?
         ls {mnt}/dest/.model-loader/parts/*.part >/dev/null 2>&1 && echo partial-kept
         test -e {mnt}/dest/.model-loader/manifest.json && echo manifest-written
         exit $code"
        )
    });
    assert_eq!(out.status.code(), Some(7));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the volume is full") && stderr.contains("weights.bin"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("partial-kept") && !stdout.contains("manifest-written"),
        "{stdout}"
    );
}

#[test]
fn part_files_the_rerun_will_remove_count_as_free_room() {
    // A load killed after reserving a.bin's part file, then rerun for b.bin only (the patterns
    // changed): a.bin's part file is removed before the first byte, so its room is free for
    // b.bin even though the volume shows less free space than b.bin needs.
    let ep = s3_endpoint();
    let b = bucket("stray-room");
    let mut objects = BTreeMap::new();
    let (a, bb) = (data(83, 1280 * 1024), data(84, 1280 * 1024));
    objects.insert("m/a.bin".to_string(), a);
    objects.insert("m/b.bin".to_string(), bb.clone());
    seed_s3(&ep, &b, &objects);
    let slow = stalling(&ep);
    let tmp = tempfile::tempdir().unwrap();
    let out = in_a_small_tmpfs(&slow, tmp.path(), |mnt, bin| {
        killed_then_rerun(
            &format!(
                "{bin} --include a.bin --chunk-size 64KiB --concurrency 2 s3://{b}/m {mnt}/dest"
            ),
            &format!("AWS_ENDPOINT_URL={ep} {bin} --include b.bin s3://{b}/m {mnt}/dest"),
            mnt,
            &format!(
                "sha256sum {mnt}/dest/b.bin | sed 's/^/sha=/'
         echo parts=$(ls {mnt}/dest/.model-loader/parts | wc -l)
         test -e {mnt}/dest/a.bin && echo a-present"
            ),
        )
    });
    let stdout = rerun_fitted(&out, &bb);
    assert!(stdout.contains("parts=0"), "a part file was left: {stdout}");
    assert!(!stdout.contains("a-present"), "{stdout}");
}

#[test]
fn a_rerun_after_a_kill_resumes_on_a_volume_with_less_free_space_than_what_is_missing() {
    // The part file is reserved whole when created, so after a kill the volume's free space is
    // less than the bytes still missing; the rerun needs no more room and must not refuse.
    let ep = s3_endpoint();
    let b = bucket("resume-room");
    let mut objects = BTreeMap::new();
    let body = data(82, 1280 * 1024);
    objects.insert("m/weights.bin".to_string(), body.clone());
    seed_s3(&ep, &b, &objects);
    let slow = stalling(&ep);
    let tmp = tempfile::tempdir().unwrap();
    let out = in_a_small_tmpfs(&slow, tmp.path(), |mnt, bin| {
        killed_then_rerun(
            &format!("{bin} --chunk-size 64KiB --concurrency 2 s3://{b}/m {mnt}/dest"),
            &format!("AWS_ENDPOINT_URL={ep} {bin} s3://{b}/m {mnt}/dest"),
            mnt,
            &format!("sha256sum {mnt}/dest/weights.bin | sed 's/^/sha=/'"),
        )
    });
    rerun_fitted(&out, &body);
}

/// A script for [`in_a_small_tmpfs`]: `first` is killed -9 once its part file exists, the free
/// space left is printed (`avail=`), then `rerun` runs, `after` prints what the test checks,
/// and the script exits with the rerun's code.
fn killed_then_rerun(first: &str, rerun: &str, mnt: &str, after: &str) -> String {
    format!(
        "{first} & pid=$!
         for i in $(seq 1 200); do ls {mnt}/dest/.model-loader/parts/*.part >/dev/null 2>&1 && break; sleep 0.05; done
         sleep 0.5; kill -9 $pid; wait $pid
         echo avail=$(df -B1 --output=avail {mnt} | tail -1)
         {rerun}; code=$?
         {after}
         exit $code"
    )
}

/// Checks a [`killed_then_rerun`] script: the kill left less room than `body` needs, yet the
/// rerun succeeded with `body`'s exact bytes (printed as `sha=` by `after`). Returns stdout.
fn rerun_fitted(out: &std::process::Output, body: &[u8]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let avail: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("avail="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        avail < body.len() as u64 - 200_000,
        "the killed run should have left less room than the file needs: {avail} free; {stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("sha={}", sha256(body))),
        "{stdout}"
    );
    stdout
}
