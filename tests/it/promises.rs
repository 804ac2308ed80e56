//! The promises a line-by-line review found broken (its findings F1–F15), each tried the way it
//! broke: a server without ETags, verification HEADs throttled while a bit flips, a P2P proxy
//! that tampers with bytes and headers, a superseded holder woken mid-run, too few file
//! descriptors, absurd part layouts, a pager that repeats itself, weak ETags. Never exit 0 with
//! a wrong file, never a manifest that claims a check that did not happen.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::adversity::against_liar;
use crate::support::fwdproxy::{FwdProxy, Mode};
use crate::support::liar::{self, Liar};
use crate::support::proxy::{Fault, Proxy};
use crate::support::*;

/// The loader signed for s3s-fs, which lists objects without an ETag.
pub(crate) fn s3s(home: &Path) -> (std::process::Command, String, String) {
    let ep = required_env("MODEL_LOADER_TEST_S3S_ENDPOINT");
    let b = required_env("MODEL_LOADER_TEST_S3S_BUCKET");
    let mut c = loader(&ep, home);
    c.env(
        "AWS_ACCESS_KEY_ID",
        required_env("MODEL_LOADER_TEST_S3S_KEY_ID"),
    )
    .env(
        "AWS_SECRET_ACCESS_KEY",
        required_env("MODEL_LOADER_TEST_S3S_SECRET"),
    );
    (c, b, format!("p{:08x}", fastrand::u32(..)))
}

/// Uploads `bytes` as `url` with the loader itself.
fn put_s3s(home: &Path, url: &str, name: &str, bytes: &[u8]) {
    let src = home.join(format!("src-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join(name), bytes).unwrap();
    let (mut up, _, _) = s3s(home);
    let out = run(up.arg(&src).arg(url));
    assert_eq!(out.status.code(), Some(0), "upload to {url}");
}

/// F1. s3s-fs lists no ETags: an object rewritten with other bytes of the same size, and
/// another source's file of the same name and size loaded into the same DEST, are fetched —
/// not taken for what DEST holds because "no version" equals "no version".
#[test]
fn without_etags_a_same_size_rewrite_or_another_source_is_fetched_not_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, b, p) = s3s(tmp.path());
    let (a, b_bytes) = (data(201, 1 << 20), data(202, 1 << 20));
    put_s3s(tmp.path(), &format!("s3://{b}/{p}/m"), "w.bin", &a);
    let dest = tmp.path().join("d");
    let load = |src: &str| {
        let (mut c, _, _) = s3s(tmp.path());
        run(c.arg(src).arg(&dest))
    };
    assert_eq!(load(&format!("s3://{b}/{p}/m")).status.code(), Some(0));
    assert_eq!(tree(&dest)["w.bin"], sha256(&a));
    // Rewritten in place (a later second, so its Last-Modified moves) with other bytes.
    std::thread::sleep(Duration::from_millis(1100));
    put_s3s(tmp.path(), &format!("s3://{b}/{p}/m"), "w.bin", &b_bytes);
    let out = load(&format!("s3://{b}/{p}/m"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        tree(&dest)["w.bin"],
        sha256(&b_bytes),
        "the old bytes were kept"
    );
    let (mut check, _, _) = s3s(tmp.path());
    let out = run(check
        .arg("--verify")
        .arg(format!("s3://{b}/{p}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    // Adapter B into the DEST that holds adapter A: same name, same size, another source.
    let (lora_a, lora_b) = (data(203, 70_000), data(204, 70_000));
    put_s3s(
        tmp.path(),
        &format!("s3://{b}/{p}/a"),
        "adapter.bin",
        &lora_a,
    );
    put_s3s(
        tmp.path(),
        &format!("s3://{b}/{p}/b"),
        "adapter.bin",
        &lora_b,
    );
    let dest = tmp.path().join("lora");
    let load = |src: &str| {
        let (mut c, _, _) = s3s(tmp.path());
        run(c.arg(src).arg(&dest))
    };
    assert_eq!(load(&format!("s3://{b}/{p}/a")).status.code(), Some(0));
    assert_eq!(tree(&dest)["adapter.bin"], sha256(&lora_a));
    assert_eq!(load(&format!("s3://{b}/{p}/b")).status.code(), Some(0));
    assert_eq!(
        tree(&dest)["adapter.bin"],
        sha256(&lora_b),
        "adapter A's weights under adapter B's manifest"
    );
}

/// Uploads one multipart object (12 MiB + 100 in 5 MiB parts) under `s3://b/m/w.bin` with the
/// loader, so it has a multipart ETag (and whatever checksum our upload adds).
fn multipart_object(name: &str, home: &Path) -> (String, String, Vec<u8>) {
    let ep = s3_endpoint();
    let b = bucket(name);
    seed_s3(&ep, &b, &BTreeMap::new());
    let bytes = data(205, (12 << 20) + 100);
    let src = home.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("w.bin"), &bytes).unwrap();
    let out = run(loader(&ep, home)
        .args(["--chunk-size", "5MiB"])
        .arg(&src)
        .arg(format!("s3://{b}/m")));
    assert_eq!(out.status.code(), Some(0));
    (ep, b, bytes)
}

/// F6. Throttled verification HEADs (S3's 503 SlowDown) are retried, never read as "the server
/// will not tell" — which made the object size-only and let a flipped bit land with exit 0.
#[test]
fn throttled_checksum_heads_never_switch_verification_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (ep, b, bytes) = multipart_object("slowheads", tmp.path());
    // Two HEADs throttled, then answered; the first body flipped: refetched, exact bytes,
    // and the manifest names a real checksum.
    let proxy = Proxy::with_fault(
        &ep,
        Fault::SlowDownHeads {
            heads: 2,
            flip_at: 1000,
            flips: 1,
        },
    );
    let dest = tmp.path().join("d");
    let out = run(loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", "5MiB"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest)["w.bin"], sha256(&bytes));
    let entry = &manifest(&dest)["files"][0];
    assert!(entry.get("size_only").is_none(), "{entry}");
    assert!(entry["checksum"].as_str().is_some(), "{entry}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("mismatch"));
    // Throttled for good, every body flipped: exit 5, nothing that looks complete.
    let proxy = Proxy::with_fault(
        &ep,
        Fault::SlowDownHeads {
            heads: usize::MAX,
            flip_at: 1000,
            flips: usize::MAX,
        },
    );
    let dest = tmp.path().join("d2");
    let out = run(loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", "5MiB", "--retries", "2"])
        .args(["--throttle-patience", "2"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let line = error_line(&out, 5);
    assert!(line.contains("503"), "{line}");
    assert!(!dest.join("w.bin").exists());
    assert!(!dest.join(".model-loader/manifest.json").exists());
}

/// F5. SSE-KMS: a file completed by an interrupted run was checked by size only; the rerun's
/// manifest must say so, not record the listing's ETag as an MD5 it never checked.
#[test]
fn an_interrupted_run_never_lets_the_manifest_claim_a_check_it_did_not_make() {
    let ep = s3_endpoint();
    let b = bucket("kmsint");
    let mut objects = BTreeMap::new();
    objects.insert("m/small.bin".to_string(), data(206, 100));
    seed_s3(&ep, &b, &objects);
    put_kms(&ep, &b, "m/secret.bin", data(207, 3000));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    // One request at a time, largest first: secret.bin lands, then small.bin fails for good.
    let failing = Proxy::with_fault(&ep, Fault::FailAfter { ok: 1 });
    let out = run(loader(&failing.url(), tmp.path())
        .args(["--concurrency", "1", "--retries", "2"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(5));
    assert!(dest.join("secret.bin").exists(), "the first file completed");
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let m = manifest(&dest);
    let entry = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "secret.bin")
        .unwrap()
        .clone();
    assert!(entry.get("checksum").is_none(), "{entry}");
    assert!(
        entry["size_only"].as_str().unwrap().contains("SSE-KMS"),
        "{entry}"
    );
    let out = run(loader(&ep, tmp.path())
        .arg("--verify")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0), "--verify on correct files");
}

/// F3, F4. A P2P proxy that flips a byte and adds `x-amz-server-side-encryption: aws:kms` and
/// an `x-oss-hash-crc64ecma` of its altered body: the checksum still comes from the listing
/// and the origin, the mismatch is caught, and the refetch goes direct (not to the same
/// cache): exact bytes, checked against the listed MD5.
#[test]
fn a_p2p_proxy_can_neither_switch_verification_off_nor_supply_the_checksum() {
    let ep = s3_endpoint();
    let b = bucket("tamper");
    let mut objects = BTreeMap::new();
    objects.insert("m/w.bin".to_string(), data(208, 1 << 20));
    seed_s3(&ep, &b, &objects);
    // An SSE-KMS object has nothing to be checked by but its size: it must not come through.
    let secret = data(212, 3000);
    put_kms(&ep, &b, "m/secret.bin", secret.clone());
    objects.insert("m/secret.bin".to_string(), secret);
    let proxy = FwdProxy::start(Mode::Tamper);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&ep, tmp.path())
        .args(["--p2p-proxy", &proxy.url])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let m = manifest(&dest);
    let entry = |name: &str| {
        m["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == name)
            .unwrap()
            .clone()
    };
    let w = entry("w.bin");
    assert!(w["checksum"].as_str().unwrap().starts_with("md5:"), "{w}");
    assert!(entry("secret.bin").get("size_only").is_some());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("md5 mismatch"), "{stderr}");
    let gets: Vec<String> = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET")
        .map(|s| s.url.clone())
        .collect();
    assert_eq!(gets.len(), 1, "the refetch went direct: {gets:?}");
    assert!(
        gets[0].contains("w.bin"),
        "secret.bin went direct: {gets:?}"
    );
}

/// F4. A proxy that answers an unmarked 404, or cuts every body: the origin is asked direct
/// and the load completes.
#[test]
fn an_unmarked_error_or_a_broken_body_from_the_p2p_proxy_goes_direct() {
    for mode in [Mode::NotFound, Mode::CutBody] {
        let ep = s3_endpoint();
        let b = bucket("p2pdirect");
        let mut objects = BTreeMap::new();
        objects.insert("m/w.bin".to_string(), data(209, 3 << 20));
        seed_s3(&ep, &b, &objects);
        let proxy = FwdProxy::start(mode);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        let out = run(loader(&ep, tmp.path())
            .args(["--p2p-proxy", &proxy.url, "--chunk-size", "1MiB"])
            .args(["--retries", "3"])
            .arg(format!("s3://{b}/m"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(tree(&dest), expected(&objects, "m/"));
        assert!(String::from_utf8_lossy(&out.stderr).contains("direct"));
    }
}

/// F2, F7. A holder frozen past `--lock-stale`, taken over, and woken while the new holder is
/// still writing: it stops at its next write, never touches the new holder's part files or
/// lease, and the new holder finishes with the exact bytes.
#[test]
fn a_superseded_holder_woken_mid_run_never_disturbs_the_new_holder() {
    let ep = s3_endpoint();
    let b = bucket("wokenmid");
    let mut objects = BTreeMap::new();
    for i in 0..24 {
        objects.insert(format!("m/f{i:02}.bin"), data(300 + i, 1 << 20));
    }
    seed_s3(&ep, &b, &objects);
    let slow_h = Proxy::with_fault(
        &ep,
        Fault::Throttle {
            bytes_per_sec: 2 << 20,
        },
    );
    let slow_n = Proxy::with_fault(
        &ep,
        Fault::Throttle {
            bytes_per_sec: 3 << 20,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let start = |url: &str| {
        loader(url, tmp.path())
            .env("MODEL_LOADER_LOCK_STALE", "2")
            .args(["--concurrency", "4"])
            .arg(format!("s3://{b}/m"))
            .arg(&dest)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_for = |p: &Proxy, bytes: u64| {
        let t = Instant::now();
        while p.bytes_down() < bytes {
            assert!(t.elapsed() < Duration::from_secs(60), "no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let holder = start(&slow_h.url());
    wait_for(&slow_h, 3 << 20);
    signal(&holder, libc::SIGSTOP);
    let newer = start(&slow_n.url());
    // The new holder took over and is writing; wake the old one in the middle of that.
    wait_for(&slow_n, 4 << 20);
    signal(&holder, libc::SIGCONT);
    let old = holder.wait_with_output().unwrap();
    let new = newer.wait_with_output().unwrap();
    eprintln!("old: {}", String::from_utf8_lossy(&old.stderr));
    eprintln!("new: {}", String::from_utf8_lossy(&new.stderr));
    assert_eq!(new.status.code(), Some(0), "the new holder was disturbed");
    assert!(String::from_utf8_lossy(&new.stderr).contains("took over the lock"));
    let line = error_line(&old, 7);
    assert!(line.contains("no longer ours"), "{line}");
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    assert!(dest.join(".model-loader/manifest.json").exists());
    assert!(!dest.join(".model-loader/lock").exists());
    let out = run(loader(&ep, tmp.path())
        .arg("--verify")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
}

/// F8. Too few file descriptors: a soft limit is raised; a hard one ends the run saying what
/// ran out — never "another loader took it over", which sends an operator hunting for a
/// second loader that does not exist.
#[test]
fn too_few_file_descriptors_are_said_as_such_never_as_a_lost_lock() {
    let ep = s3_endpoint();
    let b = bucket("emfile");
    let mut objects = BTreeMap::new();
    for i in 0..40 {
        objects.insert(format!("m/f{i:02}.bin"), data(400 + i, 200_000));
    }
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let base = loader(&ep, tmp.path());
    let limited = |limit: &str, dest: &Path| {
        let script = format!(
            "ulimit {limit} && exec \"$0\" --concurrency 32 --retries 2 s3://{b}/m {}",
            dest.display()
        );
        let bin = bin();
        run(&mut wrap(
            "sh",
            &["-c", &script, bin.to_str().unwrap()],
            &base,
        ))
    };
    let dest = tmp.path().join("soft");
    let out = limited("-Sn 24", &dest);
    assert_eq!(out.status.code(), Some(0), "the soft limit is raised");
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let dest = tmp.path().join("hard");
    let out = limited("-n 24", &dest);
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!stderr.contains("no longer ours"), "{stderr}");
    assert!(!stderr.contains("took it over"), "{stderr}");
    if out.status.code() != Some(0) {
        assert!(
            stderr.contains("too many open files") || stderr.contains("os error 24"),
            "{stderr}"
        );
        assert!(!dest.join(".model-loader/manifest.json").exists());
    }
}

/// A liar's ranged GET: 206 with the bytes of `body` the Range asks for.
fn ranged(lines: &[String], body: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
    let range = lines
        .iter()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("0-{}", body.len() - 1));
    let (a, z) = range.split_once('-').unwrap();
    let (a, z): (usize, usize) = (a.parse().unwrap(), z.parse().unwrap());
    let cr = format!("bytes {a}-{z}/{}", body.len());
    let mut h = headers.to_vec();
    h.push(("Content-Range", &cr));
    liar::raw("206 Partial Content", &h, &body[a..=z], None)
}

/// F10. An ETag claiming 1-byte parts (the HEADs agreeing) would cost a digest and an entry
/// per byte: refused with a clear error, before a byte is fetched.
#[test]
fn a_layout_of_one_byte_parts_is_refused_not_hashed_per_byte() {
    let listing = liar::raw(
        "200 OK",
        &[("Content-Type", "application/xml")],
        br#"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>m/x.bin</Key><ETag>"0123456789abcdef0123456789abcdef-5000"</ETag><Size>5000</Size></Contents></ListBucketResult>"#,
        None,
    );
    let (code, line) = against_liar(
        "1-byte parts",
        Box::new(move |first, _| {
            if first.contains("list-type=2") {
                listing.clone()
            } else if first.starts_with("HEAD ") && first.contains("partNumber") {
                liar::raw(
                    "206 Partial Content",
                    &[("x-amz-mp-parts-count", "5000")],
                    b"",
                    Some(1),
                )
            } else if first.starts_with("HEAD ") {
                liar::raw("200 OK", &[], b"", Some(5000))
            } else {
                liar::raw("500 Unexpected", &[], b"", None)
            }
        }),
    );
    assert_eq!(code, 5, "{line}");
    assert!(line.contains("5000 parts of 1 bytes"), "{line}");
    // More parts than S3 allows: refused without a HEAD per part.
    let listing = liar::raw(
        "200 OK",
        &[("Content-Type", "application/xml")],
        br#"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>m/x.bin</Key><ETag>"0123456789abcdef0123456789abcdef-1073741824"</ETag><Size>1073741824</Size></Contents></ListBucketResult>"#,
        None,
    );
    let (code, line) = against_liar(
        "a billion parts",
        Box::new(move |first, _| {
            if first.contains("list-type=2") {
                listing.clone()
            } else {
                liar::raw("200 OK", &[], b"", Some(0))
            }
        }),
    );
    assert_eq!(code, 5, "{line}");
    assert!(line.contains("1073741824 parts"), "{line}");
}

/// F10. A pager whose continuation token never advances would list for ever.
#[test]
fn a_listing_whose_continuation_token_repeats_ends_with_an_error() {
    let page = liar::raw(
        "200 OK",
        &[("Content-Type", "application/xml")],
        br#"<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>again</NextContinuationToken><Contents><Key>m/x.bin</Key><ETag>"v1"</ETag><Size>5</Size></Contents></ListBucketResult>"#,
        None,
    );
    let (code, line) = against_liar(
        "repeated token",
        Box::new(move |first, _| {
            if first.contains("list-type=2") {
                page.clone()
            } else {
                liar::raw("500 Unexpected", &[], b"", None)
            }
        }),
    );
    assert_eq!(code, 5, "{line}");
    assert!(line.contains("same continuation token"), "{line}");
}

/// F13. A weak ETag is never sent as If-Match (strong comparison never matches one, RFC 9110
/// §13.1.1: a conforming server answers 412 to every read, for ever).
#[test]
fn a_weak_etag_is_not_sent_as_if_match() {
    let body = data(210, 70_000);
    let listing = liar::raw(
        "200 OK",
        &[("Content-Type", "application/xml")],
        br#"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>m/w.bin</Key><ETag>W/"abc"</ETag><Size>70000</Size></Contents></ListBucketResult>"#,
        None,
    );
    let served = body.clone();
    let server = Liar::start(Box::new(move |first, lines| {
        if first.contains("list-type=2") {
            return listing.clone();
        }
        if lines
            .iter()
            .any(|l| l.to_ascii_lowercase().starts_with("if-match:"))
        {
            return liar::raw("412 Precondition Failed", &[], b"", None);
        }
        ranged(lines, &served, &[("ETag", "W/\"abc\"")])
    }));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&server.url, tmp.path())
        .args(["--retries", "2"])
        .arg("s3://bkt/m")
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest)["w.bin"], sha256(&body));
}

/// F11. SIGTERM during a multipart upload: the open upload is aborted, not left to be billed
/// until a lifecycle rule removes its parts.
#[test]
fn a_stopped_upload_leaves_no_multipart_upload_open() {
    let ep = s3_endpoint();
    let b = bucket("upstop");
    seed_s3(&ep, &b, &BTreeMap::new());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("w.bin"), data(211, 200 << 20)).unwrap();
    let proxy = Proxy::start(&ep);
    let child = loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", "5MiB"])
        .arg(&src)
        .arg(format!("s3://{b}/m"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !proxy.requests().iter().any(|l| l.contains("partNumber=2")) {
        assert!(t.elapsed() < Duration::from_secs(60), "no part sent");
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(143),
        "stopped before the upload completed"
    );
    let listing = block_on(async {
        reqwest::Client::new()
            .get(format!("{ep}/{b}?uploads"))
            .header("authorization", MOTO_AUTH)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(listing.contains("ListMultipartUploadsResult"), "{listing}");
    assert!(!listing.contains("<UploadId>"), "left open: {listing}");
}

/// Issue 24: archived objects (S3 Glacier Flexible Retrieval, Deep Archive) are found from the
/// listing's `StorageClass` and refused before any byte is fetched, naming them and the remedy;
/// excluded, the rest loads. S3 answers a read of one with 403 `InvalidObjectState`, which was
/// reported as a credentials problem after other files were fetched (aws/aws-cli#748, #4039;
/// s5cmd#734). moto stores the storage class it is given and lists it.
#[test]
fn archived_objects_are_refused_before_any_byte_with_the_remedy() {
    let ep = s3_endpoint();
    let b = bucket("glacier");
    let mut objects = BTreeMap::new();
    objects.insert("m/config.json".to_string(), b"{}".to_vec());
    seed_s3(&ep, &b, &objects);
    put_with(
        &ep,
        &b,
        "m/old/w.bin",
        data(213, 5000),
        ("x-amz-storage-class", "DEEP_ARCHIVE"),
    );
    let proxy = Proxy::start(&ep);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&proxy.url(), tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let line = error_line(&out, 3);
    assert!(line.contains("old/w.bin (DEEP_ARCHIVE)"), "{line}");
    assert!(
        line.contains("restore") && line.contains("--exclude"),
        "{line}"
    );
    assert!(!line.contains("credentials"), "{line}");
    assert_eq!(proxy.object_requests(&b), 0, "no object was read");
    assert!(!dest.join("config.json").exists());
    let out = run(loader(&ep, tmp.path())
        .args(["--exclude", "old/"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    // Named directly, the object's HEAD says the same.
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/m/old/w.bin"))
        .arg(tmp.path().join("one")));
    let line = error_line(&out, 3);
    assert!(line.contains("DEEP_ARCHIVE"), "{line}");
}
