//! "Verified" tried the hard way: one bit flipped in transit (length unchanged) inside objects of
//! every kind. Never exit 0 with wrong bytes: either the automatic refetch brings the exact bytes
//! (exit 0), or exit 6 with no file at its final path and no manifest.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::proxy::{Fault, Proxy};
use crate::support::*;

fn flipping(ep: &str, at: u64, first: usize) -> Proxy {
    Proxy::with_fault(ep, Fault::Flip { at, first })
}

/// One multipart object, flipped once then served clean: the refetch brings the exact bytes.
/// Flipped on every reply: exit 6, nothing at the final path, no manifest, a message with both
/// values. `flip_at` is a body offset inside one reply. `chunk` decides whether the file comes in one request (hashed inline) or several
/// (hashed on read-back).
fn multipart_case(name: &str, size: usize, part: &str, chunk: &str, parts: u32, flip_at: u64) {
    let ep = s3_endpoint();
    let b = bucket(name);
    let tmp = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    files.insert("w.bin".to_string(), data(131, size));
    upload_multipart(&ep, &b, &files, part, tmp.path());

    let dest = tmp.path().join("once");
    let proxy = flipping(&ep, flip_at, 1);
    let out = run(loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", chunk])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: refetched after one flip"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("md5-of-parts mismatch"), "{stderr}");
    assert!(stderr.contains("fetching it again, once"), "{stderr}");
    assert_eq!(tree(&dest)["w.bin"], sha256(&files["w.bin"]));
    let m = manifest(&dest);
    let recorded = m["files"][0]["checksum"].as_str().unwrap().to_string();
    assert!(
        recorded.starts_with("md5-of-parts:") && recorded.contains(&format!("-{parts}/")),
        "{recorded}"
    );

    let dest = tmp.path().join("always");
    let proxy = flipping(&ep, flip_at, usize::MAX);
    let out = run(loader(&proxy.url(), tmp.path())
        .args(["--chunk-size", chunk])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let line = error_line(&out, 6);
    assert!(
        line.contains("w.bin") && line.contains("md5-of-parts mismatch (expected "),
        "{line}"
    );
    assert!(
        line.contains(&format!("s3://{b}/m")),
        "names the source: {line}"
    );
    assert!(!dest.join("w.bin").exists());
    assert!(!dest.join(".model-loader/manifest.json").exists());
}

#[test]
fn a_flipped_bit_in_a_multipart_object_with_8_mib_parts_is_caught() {
    // 24 MiB in 8 MiB parts, fetched in one request: the part MD5s are computed inline.
    multipart_case("mp8", 24 << 20, "8MiB", "64MiB", 3, 10 << 20);
}

#[test]
fn a_flipped_bit_in_a_multipart_object_with_a_short_last_part_is_caught_on_read_back() {
    // 5 MiB parts and a short last one, fetched in 1 MiB ranges: hashed when read back.
    // The flip lands in whichever 1 MiB range the proxy forwards first.
    multipart_case("mp5", (12 << 20) + 100, "5MiB", "1MiB", 3, 1000);
}

#[test]
fn a_flipped_bit_in_a_single_part_object_is_refetched_or_caught() {
    let ep = s3_endpoint();
    let b = bucket("sp");
    let mut objects = BTreeMap::new();
    objects.insert("m/a.bin".to_string(), data(141, 3 << 20));
    seed_s3(&ep, &b, &objects);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&flipping(&ep, 12345, 1).url(), tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let dest = tmp.path().join("d2");
    let out = run(loader(&flipping(&ep, 12345, usize::MAX).url(), tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let line = error_line(&out, 6);
    assert!(line.contains("md5 mismatch"), "{line}");
    assert!(!dest.join("a.bin").exists());
}

#[test]
fn a_flipped_bit_in_a_multipart_object_with_an_s3_checksum_is_caught() {
    let python = required_env("MODEL_LOADER_TEST_PYTHON");
    let ep = s3_endpoint();
    let b = bucket("ck");
    let tmp = tempfile::tempdir().unwrap();
    let bytes = data(151, (20 << 20) + 17);
    let path = tmp.path().join("w.bin");
    std::fs::write(&path, &bytes).unwrap();
    for (algorithm, tag) in [("CRC32", "crc32-of-parts:"), ("SHA256", "sha256-of-parts:")] {
        let key = format!("{algorithm}/w.bin");
        let out = run(std::process::Command::new(&python)
            .arg("scripts/support/seed_checksums.py")
            .args([&ep, &b, &format!("m/{key}")])
            .arg(&path)
            .arg(algorithm));
        assert_eq!(out.status.code(), Some(0));

        // Flipped once: refetched, exact bytes, the manifest names the checksum it checked.
        let dest = tmp.path().join(format!("{algorithm}-once"));
        let out = run(loader(&flipping(&ep, 5 << 20, 1).url(), tmp.path())
            .arg(format!("s3://{b}/m/{algorithm}"))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{algorithm}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("fetching it again, once"), "{stderr}");
        assert_eq!(tree(&dest)["w.bin"], sha256(&bytes));
        let m = manifest(&dest);
        let recorded = m["files"][0]["checksum"].as_str().unwrap();
        assert!(recorded.starts_with(tag), "{recorded}");

        // Flipped on every reply: exit 6, nothing that looks complete.
        let dest = tmp.path().join(format!("{algorithm}-always"));
        let out = run(
            loader(&flipping(&ep, 5 << 20, usize::MAX).url(), tmp.path())
                .arg(format!("s3://{b}/m/{algorithm}"))
                .arg(&dest),
        );
        let line = error_line(&out, 6);
        assert!(line.contains(&tag[..tag.len() - 1]), "{line}");
        assert!(!dest.join("w.bin").exists());
        assert!(!dest.join(".model-loader/manifest.json").exists());
    }
}

#[test]
fn verify_re_hashes_dest_and_names_every_file_that_changed() {
    let ep = s3_endpoint();
    let b = bucket("audit");
    let tmp = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    files.insert("w.bin".to_string(), data(181, (10 << 20) + 1));
    files.insert("sub/config.json".to_string(), b"{\"a\":1}".to_vec());
    upload_multipart(&ep, &b, &files, "5MiB", tmp.path());
    let dest = tmp.path().join("d");
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));

    let audit = |dest: &Path| {
        run(loader(&ep, tmp.path())
            .env("MODEL_LOADER_VERIFY", "true")
            .arg(format!("s3://{b}/m"))
            .arg(dest))
    };
    let out = audit(&dest);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 files, 2 re-hashed"), "{stderr}");

    // One bit of each file changed on disk, sizes unchanged: both named, exit 6.
    for (name, at) in [("w.bin", 7 << 20), ("sub/config.json", 2)] {
        let p = dest.join(name);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[at] ^= 0x10;
        std::fs::write(&p, bytes).unwrap();
    }
    let out = audit(&dest);
    let line = error_line(&out, 6);
    assert!(line.contains("2 of 2 files"), "{line}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mismatch: w.bin: md5-of-parts")
            && stderr.contains("mismatch: sub/config.json: md5"),
        "{stderr}"
    );
    // Not a complete load: exit 1, as --check.
    let out = audit(&tmp.path().join("nothing-here"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_large_single_part_object_with_a_crc_is_verified_by_it() {
    let python = required_env("MODEL_LOADER_TEST_PYTHON");
    let ep = s3_endpoint();
    let b = bucket("bigcrc");
    let tmp = tempfile::tempdir().unwrap();
    // Larger than the default 64 MiB chunk: fetched in several ranges, so the CRC (combined
    // per range) is used instead of the MD5 ETag (which would need a read-back).
    let bytes = data(201, (65 << 20) + 9);
    let path = tmp.path().join("w.bin");
    std::fs::write(&path, &bytes).unwrap();
    let out = run(std::process::Command::new(&python)
        .arg("scripts/support/seed_checksums.py")
        .args([&ep, &b, "m/w.bin"])
        .arg(&path)
        .args(["CRC32", "single"]));
    assert_eq!(out.status.code(), Some(0));
    for (first, code) in [(1, 0), (usize::MAX, 6)] {
        let dest = tmp.path().join(format!("d{code}"));
        let out = run(loader(&flipping(&ep, 4 << 20, first).url(), tmp.path())
            .arg(format!("s3://{b}/m"))
            .arg(&dest));
        if code == 0 {
            assert_eq!(out.status.code(), Some(0));
            assert_eq!(tree(&dest)["w.bin"], sha256(&bytes));
            let m = manifest(&dest);
            let recorded = m["files"][0]["checksum"].as_str().unwrap();
            assert!(recorded.starts_with("crc32:"), "{recorded}");
        } else {
            let line = error_line(&out, 6);
            assert!(line.contains("crc32 mismatch"), "{line}");
        }
    }
}

/// Parts that are not equal but the last, as some writers cut them: 6, 5, 6 and 2 MiB. Part 1
/// alone suggests 6, 6, 6 and 1 MiB, against which the ETag (or composite checksum) would fail
/// on every attempt: a valid object failed as corrupt. The last part's length shows the layout
/// is something else, every part's length is asked for, and the object is verified against its
/// ETag or checksum with them: exit 0 and the exact bytes, then a flipped bit refetched once,
/// and one flipped on every reply caught (exit 6, nothing at the final path, no manifest).
/// The same bytes in equal parts (6, 6, 6, 1 MiB) are verified as before.
#[test]
fn a_multipart_object_with_parts_of_unequal_sizes_is_verified_by_every_part() {
    const M: usize = 1 << 20;
    let python = required_env("MODEL_LOADER_TEST_PYTHON");
    let ep = s3_endpoint();
    let b = bucket("uneq");
    let tmp = tempfile::tempdir().unwrap();
    let bytes = data(161, 19 * M);
    let path = tmp.path().join("w.bin");
    std::fs::write(&path, &bytes).unwrap();
    let unequal = "6291456,5242880,6291456,2097152";
    let cases = [
        ("md5-unequal", "6,5,6,2", None, "md5-of-parts:", unequal),
        (
            "crc32-unequal",
            "6,5,6,2",
            Some("CRC32"),
            "crc32-of-parts:",
            unequal,
        ),
        ("md5-equal", "6,6,6,1", None, "md5-of-parts:", "6291456"),
        (
            "crc32-equal",
            "6,6,6,1",
            Some("CRC32"),
            "crc32-of-parts:",
            "6291456",
        ),
    ];
    for (name, mib, algorithm, tag, layout) in cases {
        let sizes: Vec<String> = mib
            .split(',')
            .map(|n| (n.parse::<usize>().unwrap() * M).to_string())
            .collect();
        let out = run(std::process::Command::new(&python)
            .arg("scripts/support/seed_parts.py")
            .args([&ep, &b, &format!("m/{name}/w.bin")])
            .arg(&path)
            .arg(sizes.join(","))
            .args(algorithm));
        assert_eq!(out.status.code(), Some(0), "{name}: seeding");

        // In 4 MiB ranges: several requests per file, parts hashed as they stream in. (A flip
        // lands in whichever reply the proxy forwards first, so at an offset every reply has.)
        let load = |dest: &Path, proxy: &str| {
            run(loader(proxy, tmp.path())
                .args(["--chunk-size", "4MiB"])
                .arg(format!("s3://{b}/m/{name}"))
                .arg(dest))
        };
        let dest = tmp.path().join(name);
        let out = load(&dest, &ep);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert_eq!(tree(&dest)["w.bin"], sha256(&bytes), "{name}");
        let recorded = manifest(&dest)["files"][0]["checksum"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            recorded.starts_with(tag) && recorded.ends_with(&format!("-4/{layout}")),
            "{name}: {recorded}"
        );
        // The audit re-hashes DEST with the layout the manifest recorded.
        let out = run(loader(&ep, tmp.path())
            .env("MODEL_LOADER_VERIFY", "true")
            .arg(format!("s3://{b}/m/{name}"))
            .arg(&dest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(stderr.contains("1 file, 1 re-hashed"), "{name}: {stderr}");

        let dest = tmp.path().join(format!("{name}-once"));
        let out = load(&dest, &flipping(&ep, 1000, 1).url());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(
            stderr.contains("fetching it again, once"),
            "{name}: {stderr}"
        );
        assert_eq!(tree(&dest)["w.bin"], sha256(&bytes), "{name}");

        let dest = tmp.path().join(format!("{name}-always"));
        let out = load(&dest, &flipping(&ep, 1000, usize::MAX).url());
        let line = error_line(&out, 6);
        assert!(
            line.contains(&format!("{} mismatch", &tag[..tag.len() - 1])),
            "{name}: {line}"
        );
        assert!(!dest.join("w.bin").exists(), "{name}");
        assert!(!dest.join(".model-loader/manifest.json").exists(), "{name}");
    }
}
