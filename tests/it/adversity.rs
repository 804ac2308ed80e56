//! Trying to break the promises: a server that lies about sizes and ranges, a second loader in
//! another PID namespace, a folder of DEST swapped for a symlink (before a removal, and in the
//! middle of a run), a kill -9 at 30 % of a 200 MiB file, and a panic.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::liar::{self, Liar};
use crate::support::proxy::{Fault, Proxy};
use crate::support::*;

/// Runs the loader against a lying S3 server and checks that it fails cleanly and quickly.
pub(crate) fn against_liar(name: &str, handler: Box<liar::Handler>) -> (i32, String) {
    against_liar_requests(name, handler).0
}

/// Also returns the request lines the server saw.
pub(crate) fn against_liar_requests(
    name: &str,
    handler: Box<liar::Handler>,
) -> ((i32, String), Vec<String>) {
    let server = Liar::start(handler);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let t = Instant::now();
    let out = run(loader(&server.url, tmp.path())
        .args(["--retries", "3", "--read-timeout", "5"])
        .arg("s3://bkt/m")
        .arg(&dest));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "{name}: took {:?}",
        t.elapsed()
    );
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    let code = out.status.code().expect("exited, not killed by a signal");
    assert!((2..=7).contains(&code), "{name}: exit {code}: {stderr}");
    let line = error_line(&out, code);
    // Nothing that looks complete: no manifest, no file at its final path.
    assert!(!dest.join(".model-loader/manifest.json").exists(), "{name}");
    assert!(tree_if_any(&dest).is_empty(), "{name}: files left in DEST");
    ((code, line), server.requests())
}

fn tree_if_any(dest: &Path) -> BTreeMap<String, String> {
    if dest.exists() {
        tree(dest)
    } else {
        BTreeMap::new()
    }
}

fn is_list(first: &str) -> bool {
    first.contains("list-type=2")
}

/// A listing of `objects`, and `get` as the answer to every object read.
fn liar_with(objects: &[(&str, &str)], get: Vec<u8>) -> Box<liar::Handler> {
    let list = liar::listing(objects);
    Box::new(move |first, _| {
        if is_list(first) {
            list.clone()
        } else {
            get.clone()
        }
    })
}

#[test]
fn impossible_sizes_in_a_listing_are_refused_before_any_work() {
    // 501: a definite "not told" to the checksum HEAD of a large object (a 500 would be retried
    // and end the run with exit 5, as it should).
    let none = liar::raw("501 Not Implemented", &[], b"", None);
    for size in ["9223372036854775808", "18446744073709551615"] {
        let (code, line) = against_liar(size, liar_with(&[("m/huge.bin", size)], none.clone()));
        assert_eq!(code, 6, "{line}");
        assert!(line.contains("cannot be trusted"), "{line}");
    }
    for size in ["-5", "18446744073709551616", "1e3", ""] {
        let (code, line) = against_liar(size, liar_with(&[("m/x.bin", size)], none.clone()));
        assert_eq!(code, 5, "{size}: {line}");
        assert!(line.contains("not valid ListObjectsV2 XML"), "{line}");
    }
}

#[test]
fn a_listing_with_a_key_twice_or_outside_the_prefix_is_refused() {
    let none = liar::raw("500 Internal Server Error", &[], b"", None);
    let (code, line) = against_liar(
        "twice",
        liar_with(&[("m/a.bin", "3"), ("m/a.bin", "4")], none.clone()),
    );
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("twice"), "{line}");
    // Shorter than the prefix (a blind slice would panic), and a multi-byte name across it.
    for key in ["x", "é", "other/a.bin"] {
        let (code, line) = against_liar(key, liar_with(&[(key, "3")], none.clone()));
        assert_eq!(code, 5, "{key}: {line}");
        assert!(line.contains("not under"), "{line}");
    }
}

#[test]
fn bodies_that_lie_about_their_length_or_range_never_land() {
    let body = vec![7u8; 1000];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "shorter than promised",
            liar::raw(
                "206 Partial Content",
                &[("Content-Range", "bytes 0-999/1000"), ("ETag", "\"v1\"")],
                &body[..500],
                Some(1000),
            ),
        ),
        (
            "total disagrees",
            liar::raw(
                "206 Partial Content",
                &[("Content-Range", "bytes 0-999/5000"), ("ETag", "\"v1\"")],
                &body,
                None,
            ),
        ),
        (
            "range at u64::MAX",
            liar::raw(
                "206 Partial Content",
                &[
                    (
                        "Content-Range",
                        "bytes 0-18446744073709551615/18446744073709551615",
                    ),
                    ("ETag", "\"v1\""),
                ],
                &body,
                None,
            ),
        ),
        (
            "other range",
            liar::raw(
                "206 Partial Content",
                &[("Content-Range", "bytes 10-1009/1000"), ("ETag", "\"v1\"")],
                &body,
                None,
            ),
        ),
        (
            "longer than asked",
            liar::raw("200 OK", &[("ETag", "\"v1\"")], &vec![7u8; 1500], None),
        ),
        (
            "cut on every try",
            liar::raw("200 OK", &[("ETag", "\"v1\"")], &body[..10], Some(1000)),
        ),
    ];
    for (name, get) in cases {
        let ((code, line), requests) =
            against_liar_requests(name, liar_with(&[("m/a.bin", "1000")], get));
        assert_eq!(code, 5, "{name}: {line}");
        let reads = requests.iter().filter(|r| !is_list(r)).count();
        // A 200 to `bytes=10-999` is a server that ignores Range: the run switches to
        // whole-body streams once (two reads before, --retries after).
        let expected = if name == "cut on every try" { 2 + 3 } else { 3 };
        assert_eq!(
            reads, expected,
            "{name}: retried up to --retries, then gave up: {requests:?}"
        );
    }
}

#[test]
fn a_panic_still_ends_with_an_error_line_exit_70_and_the_termination_message() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("termination-log");
    std::fs::write(&log, b"").unwrap();
    let out = run(loader("http://127.0.0.1:9", tmp.path())
        .env("MODEL_LOADER_DEBUG_PANIC", "1")
        .env("MODEL_LOADER_TERMINATION_LOG", &log)
        .arg("s3://bkt/m")
        .arg(tmp.path().join("d")));
    let line = error_line(&out, 70);
    assert!(line.starts_with("error: internal error: "), "{line}");
    assert!(line.contains("please report"), "{line}");
    let written = std::fs::read_to_string(&log).unwrap();
    assert_eq!(written.trim_end(), line);
}

/// `cmd`, run as PID 1 of a new PID namespace with its own /proc (what a second container
/// sharing the node's hostname looks like).
fn in_new_pid_namespace(cmd: &Command) -> Command {
    let mut c = wrap("unshare", &["--pid", "--fork", "--mount-proc", "--"], cmd);
    c.arg(cmd.get_program()).args(cmd.get_args());
    c
}

#[test]
fn two_loaders_in_different_pid_namespaces_share_one_dest() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root for unshare --pid (scripts/test.sh runs as root in CI)"
    );
    let ep = s3_endpoint();
    let b = bucket("pidns");
    let mut objects = BTreeMap::new();
    objects.insert("m/a.bin".to_string(), data(81, 6 << 20));
    objects.insert("m/b.bin".to_string(), data(82, 3 << 20));
    objects.insert("m/config.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    let total: usize = objects.values().map(Vec::len).sum();
    // Slow enough (about 3 s) that the second loader starts while the first holds the lock.
    let proxy = Proxy::with_fault(
        &ep,
        Fault::Throttle {
            bytes_per_sec: 3 << 20,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("shared/model");
    let spawn = || {
        let mut base = loader(&proxy.url(), tmp.path());
        base.env("HOSTNAME", "node-1")
            .args(["--chunk-size", "1MiB"])
            .arg(format!("s3://{b}/m"))
            .arg(&dest);
        in_new_pid_namespace(&base)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    let t = Instant::now();
    while proxy.bytes_down() < 1 << 20 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the first loader made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dest.join(".model-loader/lock").exists());
    let second = spawn();
    let (a, b2) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    for out in [&a, &b2] {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let second_log = String::from_utf8_lossy(&b2.stderr);
    assert!(second_log.contains("waiting: "), "{second_log}");
    assert!(!second_log.contains("took over"), "{second_log}");
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let served = proxy.bytes_down() as f64;
    assert!(
        served <= 1.2 * total as f64,
        "served {served} bytes for a {total}-byte model"
    );
}

#[test]
fn a_removal_through_a_folder_swapped_for_a_symlink_leaves_the_outside_alone() {
    let ep = s3_endpoint();
    let b = bucket("rmlink");
    let mut objects = BTreeMap::new();
    objects.insert("m/sub/gone.json".to_string(), b"{\"v\":1}".to_vec());
    objects.insert("m/keep.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    // The source drops sub/gone.json; an operator (or attacker) swaps DEST/sub for a link to a
    // folder outside DEST that holds a file of the same name.
    delete_s3(&ep, &b, "m/sub/gone.json");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("gone.json"), b"precious").unwrap();
    std::fs::remove_dir_all(dest.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("sub")).unwrap();
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let line = error_line(&out, 7);
    assert!(line.contains("symlink"), "{line}");
    assert_eq!(
        std::fs::read(outside.join("gone.json")).unwrap(),
        b"precious"
    );
    assert!(!dest.join(".model-loader/manifest.json").exists());
}

#[test]
fn a_folder_swapped_for_a_symlink_mid_run_is_not_followed() {
    let ep = s3_endpoint();
    let b = bucket("midswap");
    let mut objects = BTreeMap::new();
    objects.insert("m/sub/deep/w.bin".to_string(), data(91, 300_000));
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // After planning (which saw no symlink), before the first byte: DEST/sub becomes a link.
    let (d2, o2) = (dest.clone(), outside.clone());
    let proxy = Proxy::with_hook(
        &ep,
        Box::new(move || {
            std::os::unix::fs::symlink(&o2, d2.join("sub")).unwrap();
        }),
    );
    let out = run(loader(&proxy.url(), tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let line = error_line(&out, 7);
    assert!(line.contains("symlink"), "{line}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing created through the link"
    );
}

/// Bytes of `want` already in the one part file under `parts`, counted in 4 KiB blocks.
pub(crate) fn written_bytes(parts: &Path, want: &[u8]) -> u64 {
    // The part file of that object: the one reserved at its length.
    let entries: Vec<_> = std::fs::read_dir(parts)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.len() == want.len() as u64))
        .collect();
    if entries.is_empty() {
        return 0;
    }
    assert_eq!(
        entries.len(),
        1,
        "one part file of {} bytes expected in {}",
        want.len(),
        parts.display()
    );
    let got = std::fs::read(entries[0].path()).unwrap_or_default();
    got.chunks(4096)
        .zip(want.chunks(4096))
        .filter(|(g, w)| g == w)
        .map(|(g, _)| g.len() as u64)
        .sum()
}

#[test]
fn kill_9_at_30_percent_of_a_200_mib_file_loses_at_most_8_mib_per_stream() {
    let ep = s3_endpoint();
    let b = bucket("kill30");
    let size: u64 = 200 << 20;
    let mut objects = BTreeMap::new();
    objects.insert("m/model.safetensors".to_string(), data(101, size as usize));
    seed_s3(&ep, &b, &objects);
    let proxy = Proxy::with_fault(
        &ep,
        Fault::Throttle {
            bytes_per_sec: 40 << 20,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    // Default chunk size (64 MiB): four requests in flight, none of which completes a chunk
    // before the kill — exactly the case that used to lose everything.
    let mut child = loader(&proxy.url(), tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while proxy.bytes_down() < size * 3 / 10 {
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let received = proxy.bytes_down();
    // What the killed loader had written, read from its part file (random data: a 4 KiB block
    // equal to the source's was written; an unwritten one reads as zeros). Not what the proxy
    // sent: under load, megabytes of that sit in socket buffers the loader never read.
    let written = written_bytes(
        &dest.join(".model-loader/parts"),
        &objects["m/model.safetensors"],
    );
    let streams = 4;
    assert!(written < size / 2, "killed too late to mean anything");

    let again = Proxy::start(&ep);
    let out = run(loader(&again.url(), tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let missing = size - written.min(size);
    let refetched = again.bytes_down();
    let lost = refetched.saturating_sub(missing);
    eprintln!(
        "proxy sent {received} and the loader wrote {written} before the kill; rerun fetched {refetched}; lost {lost} ({:.1} MiB per stream)",
        lost as f64 / streams as f64 / (1 << 20) as f64
    );
    assert!(
        lost <= streams * (8 << 20) + (1 << 20),
        "lost {lost} bytes over {streams} streams"
    );
}

#[test]
fn a_loader_stopped_while_waiting_exits_at_once_and_leaves_the_holder_s_lease() {
    let ep = s3_endpoint();
    let b = bucket("waitstop");
    let mut objects = BTreeMap::new();
    objects.insert("m/x.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    std::fs::create_dir_all(dest.join(".model-loader")).unwrap();
    // A live holder on another host: fresh mtime, never judged by pid.
    let lease = r#"{"owner":"other-1-x","host":"other-node","pid":1,"source":"s3://x","started":1,"heartbeat":1}"#;
    std::fs::write(dest.join(".model-loader/lock"), lease).unwrap();
    let child = loader(&ep, tmp.path())
        .env("MODEL_LOADER_LOCK_STALE", "600")
        .arg(format!("s3://{b}/m"))
        .arg(&dest)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    let line = error_line(&out, 143);
    assert!(line.contains("waiting for the lock"), "{line}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting: "));
    assert_eq!(
        std::fs::read_to_string(dest.join(".model-loader/lock")).unwrap(),
        lease,
        "the holder's lease is untouched"
    );
    assert!(tree(&dest).is_empty());
}

#[test]
fn a_frozen_holder_that_was_taken_over_stops_without_touching_dest() {
    let ep = s3_endpoint();
    let b = bucket("frozen");
    let mut objects = BTreeMap::new();
    objects.insert("m/w.bin".to_string(), data(111, 8 << 20));
    objects.insert("m/config.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    let slow = Proxy::with_fault(
        &ep,
        Fault::Throttle {
            bytes_per_sec: 2 << 20,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let frozen = loader(&slow.url(), tmp.path())
        .env("MODEL_LOADER_LOCK_STALE", "2")
        .args(["--chunk-size", "1MiB"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while slow.bytes_down() < 1 << 20 {
        assert!(t.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGSTOP: alive (its pid exists) but silent, like a node under memory pressure.
    signal(&frozen, libc::SIGSTOP);
    let out = run(loader(&ep, tmp.path())
        .env("MODEL_LOADER_LOCK_STALE", "2")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("took over the lock"));
    let done = tree(&dest);
    assert_eq!(done, expected(&objects, "m/"));
    let manifest_before = std::fs::read(dest.join(".model-loader/manifest.json")).unwrap();
    signal(&frozen, libc::SIGCONT);
    let out = frozen.wait_with_output().unwrap();
    let line = error_line(&out, 7);
    assert!(line.contains("no longer ours"), "{line}");
    assert_eq!(tree(&dest), done, "the superseded holder changed DEST");
    assert_eq!(
        std::fs::read(dest.join(".model-loader/manifest.json")).unwrap(),
        manifest_before
    );
    assert!(!dest.join(".model-loader/journal.jsonl").exists());
}
