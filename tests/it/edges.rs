//! The edges a user touches: spellings of one source, env values as the ecosystem writes them,
//! patterns, sizes, help and completions — each through the real binary.

use std::collections::BTreeMap;
use std::process::Output;

use crate::support::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small model under `m/` in a fresh bucket: config, tokenizer, two shards in `sub/`.
fn seeded(name: &str) -> (String, String, BTreeMap<String, Vec<u8>>) {
    let ep = s3_endpoint();
    let b = bucket(name);
    let mut objects = BTreeMap::new();
    objects.insert("m/config.json".to_string(), b"{}".to_vec());
    objects.insert("m/tok,en.txt".to_string(), data(1, 1000));
    objects.insert("m/sub/a.bin".to_string(), data(2, 3000));
    objects.insert("m/sub/b.bin".to_string(), data(3, 5000));
    seed_s3(&ep, &b, &objects);
    (ep, b, objects)
}

#[test]
fn either_spelling_of_a_source_is_one_source_for_check_and_rerun() {
    let (ep, b, objects) = seeded("spell");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/m/"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    assert_eq!(manifest(&dest)["source"], format!("s3://{b}/m"));
    let before = std::fs::read(dest.join(".model-loader/manifest.json")).unwrap();
    for spelling in [
        format!("s3://{b}/m"),
        format!("s3://{b}/m/"),
        format!("S3://{b}/m//"),
    ] {
        let out = run(loader(&ep, tmp.path())
            .arg("--check")
            .arg(&spelling)
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{spelling}: {}", stderr(&out));
        let out = run(loader(&ep, tmp.path()).arg(&spelling).arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{spelling}: {}", stderr(&out));
    }
    let after = std::fs::read(dest.join(".model-loader/manifest.json")).unwrap();
    assert_eq!(
        before, after,
        "a rerun with another spelling rewrote the manifest"
    );
    // A different source is still a different source.
    let out = run(loader(&ep, tmp.path())
        .arg("--check")
        .arg(format!("s3://{b}/m/sub"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn an_empty_bucket_is_named_once() {
    let ep = s3_endpoint();
    let b = bucket("empty");
    seed_s3(&ep, &b, &BTreeMap::new());
    let tmp = tempfile::tempdir().unwrap();
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/"))
        .arg(tmp.path().join("d")));
    let line = error_line(&out, 4);
    assert!(
        line.contains(&format!("the bucket s3://{b} is empty")),
        "{line}"
    );
    assert!(!line.contains(&format!("{b}//")), "{line}");
}

#[test]
fn boolean_env_values_as_manifests_write_them_and_the_command_line_overrides() {
    let (ep, b, objects) = seeded("bools");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    // MODEL_LOADER_DRY_RUN=1 lists and writes nothing.
    let out = run(loader(&ep, tmp.path())
        .env("MODEL_LOADER_DRY_RUN", "1")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sub/a.bin"));
    assert!(!dest.exists(), "a dry run wrote DEST");
    // ... and --dry-run=false on the command line overrides it.
    for (var, value) in [
        ("MODEL_LOADER_DRY_RUN", "On"),
        ("MODEL_LOADER_FORCE", "yes"),
    ] {
        let out = run(loader(&ep, tmp.path())
            .env(var, value)
            .args(["--dry-run=false", "--force=no"])
            .arg(format!("s3://{b}/m"))
            .arg(&dest));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{var}={value}: {}",
            stderr(&out)
        );
        assert_eq!(tree(&dest), expected(&objects, "m/"));
        if var == "MODEL_LOADER_FORCE" {
            assert!(
                stderr(&out).contains("plan: fetch 0 files"),
                "--force=no still forced: {}",
                stderr(&out)
            );
        }
    }
    // MODEL_LOADER_FORCE=TRUE re-fetches everything.
    let out = run(loader(&ep, tmp.path())
        .env("MODEL_LOADER_FORCE", "TRUE")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("plan: fetch 4 files"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_env_value_is_blamed_on_its_variable_also_in_the_termination_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = "http://127.0.0.1:9";
    for (var, value, needle) in [
        (
            "MODEL_LOADER_FORCE",
            "maybe",
            "MODEL_LOADER_FORCE=\"maybe\"",
        ),
        (
            "MODEL_LOADER_PROGRESS",
            "fancy",
            "MODEL_LOADER_PROGRESS=\"fancy\"",
        ),
        (
            "MODEL_LOADER_CONCURRENCY",
            "0",
            "MODEL_LOADER_CONCURRENCY must be",
        ),
        (
            "MODEL_LOADER_CHUNK_SIZE",
            "64GiB",
            "MODEL_LOADER_CHUNK_SIZE must be",
        ),
        (
            "MODEL_LOADER_READ_TIMEOUT",
            "-1",
            "MODEL_LOADER_READ_TIMEOUT must be",
        ),
    ] {
        let term = tmp.path().join("term");
        std::fs::write(&term, "").unwrap();
        let out = run(loader(dead, tmp.path())
            .env("MODEL_LOADER_TERMINATION_LOG", &term)
            .env(var, value)
            .arg("s3://bkt/m")
            .arg(tmp.path().join("d")));
        let line = error_line(&out, 2);
        assert!(line.contains(needle), "{var}: {line}");
        let logged = std::fs::read_to_string(&term).unwrap();
        assert!(logged.contains(needle), "termination log: {logged:?}");
        // The same value given on the command line names the flag.
        let flag = format!(
            "--{}={value}",
            var.trim_start_matches("MODEL_LOADER_")
                .to_ascii_lowercase()
                .replace('_', "-")
        );
        let out = run(loader(dead, tmp.path())
            .arg(&flag)
            .arg("s3://bkt/m")
            .arg(tmp.path().join("d")));
        let line = error_line(&out, 2);
        assert!(!line.contains(var), "{flag}: {line}");
    }
}

#[test]
fn argument_errors_reach_the_termination_log() {
    let tmp = tempfile::tempdir().unwrap();
    let term = tmp.path().join("term");
    std::fs::write(&term, "").unwrap();
    let out = run(loader("http://127.0.0.1:9", tmp.path())
        .env("MODEL_LOADER_TERMINATION_LOG", &term)
        .args(["--no-such-flag", "s3://bkt/m", "/tmp/x"]));
    let line = error_line(&out, 2);
    assert!(line.contains("--no-such-flag"), "{line}");
    assert_eq!(std::fs::read_to_string(&term).unwrap().trim(), line);
}

#[test]
fn patterns_are_trimmed_split_outside_braces_and_escape_commas() {
    let (ep, b, objects) = seeded("pattern");
    let tmp = tempfile::tempdir().unwrap();
    for (env, flags, want) in [
        (
            "*.json, sub/",
            vec![],
            vec!["config.json", "sub/a.bin", "sub/b.bin"],
        ),
        ("", vec!["--include", "tok\\,en.txt"], vec!["tok,en.txt"]),
        (
            "",
            vec!["--include", "*.{json,txt}"],
            vec!["config.json", "tok,en.txt"],
        ),
        (
            "",
            vec!["--include", " sub/a.bin , config.json "],
            vec!["config.json", "sub/a.bin"],
        ),
    ] {
        let dest = tempfile::tempdir().unwrap();
        let mut cmd = loader(&ep, tmp.path());
        if !env.is_empty() {
            cmd.env("MODEL_LOADER_INCLUDE", env);
        }
        let out = run(cmd.args(&flags).arg(format!("s3://{b}/m")).arg(dest.path()));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{env:?} {flags:?}: {}",
            stderr(&out)
        );
        let got: Vec<String> = tree(dest.path()).into_keys().collect();
        assert_eq!(got, want, "{env:?} {flags:?}");
        for p in &got {
            assert_eq!(tree(dest.path())[p], sha256(&objects[&format!("m/{p}")]));
        }
    }
}

#[test]
fn a_pattern_naming_a_folder_suggests_the_folder_form() {
    let (ep, b, _) = seeded("folderhint");
    let tmp = tempfile::tempdir().unwrap();
    let out = run(loader(&ep, tmp.path())
        .args(["--include", "sub"])
        .arg(format!("s3://{b}/m"))
        .arg(tmp.path().join("d")));
    let line = error_line(&out, 4);
    assert!(line.contains("did you mean \"sub/\""), "{line}");
}

#[test]
fn sizes_take_decimal_si_and_iec_units_within_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let (ep, b, objects) = seeded("sizes");
    for ok in ["1.5MiB", "8MB", "64k", "4GiB"] {
        let dest = tempfile::tempdir().unwrap();
        let out = run(loader(&ep, tmp.path())
            .args(["--chunk-size", ok])
            .arg(format!("s3://{b}/m"))
            .arg(dest.path()));
        assert_eq!(out.status.code(), Some(0), "{ok}: {}", stderr(&out));
        assert_eq!(tree(dest.path()), expected(&objects, "m/"));
    }
    for (bad, needle) in [
        ("64GiB", "between 64KiB and 4GiB"),
        ("1k", "between 64KiB and 4GiB"),
        ("1.5parsec", "unknown unit"),
        ("0.1k", "whole number of bytes"),
    ] {
        let out = run(loader("http://127.0.0.1:9", tmp.path())
            .args(["--chunk-size", bad, "s3://bkt/m"])
            .arg(tmp.path().join("d")));
        let line = error_line(&out, 2);
        assert!(line.contains(needle), "{bad}: {line}");
    }
}

#[test]
fn bucket_names_are_checked_per_service_before_any_request() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("x"), "x").unwrap();
    for (args, needle) in [
        (
            vec!["s3://Bad_Bucket/m".to_string(), "D".into()],
            "invalid source URL",
        ),
        (
            vec!["oss://my.bucket/m".into(), "D".into()],
            "OSS bucket names",
        ),
        (vec!["gs://ab/m".into(), "D".into()], "GCS bucket names"),
        (
            vec![src.display().to_string(), "s3://Bad_Bucket/m".into()],
            "invalid destination URL",
        ),
    ] {
        let out = run(loader("http://127.0.0.1:9", tmp.path())
            .current_dir(tmp.path())
            .args(&args));
        let line = error_line(&out, 2);
        assert!(line.contains(needle), "{args:?}: {line}");
        assert!(line.contains("not a valid bucket name"), "{args:?}: {line}");
    }
}

#[test]
fn help_shows_required_positionals_and_completions_cover_load() {
    let out = run(std::process::Command::new(bin()).arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("model-loader [OPTIONS] <SRC> <DEST>"),
        "{help}"
    );
    assert!(help.contains("--force[=<BOOL>]"), "{help}");
    for (shell, needles) in [
        ("bash", vec!["-o default model-loader", "-o default load"]),
        ("zsh", vec!["#compdef model-loader load"]),
        ("fish", vec!["complete -c model-loader", "complete -c load"]),
    ] {
        // A pod's env twins (here MODEL_LOADER_FORCE) must not get in the way.
        let out = run(std::process::Command::new(bin())
            .env("MODEL_LOADER_FORCE", "1")
            .args(["--completions", shell]));
        assert_eq!(out.status.code(), Some(0));
        let script = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(script.contains(n), "{shell}: no {n:?}");
        }
    }
}

#[test]
fn dry_run_says_what_would_be_fetched_skipped_removed_and_filtered() {
    let (ep, b, _) = seeded("dryplan");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let src = format!("s3://{b}/m");
    let out = run(loader(&ep, tmp.path()).arg(&src).arg(&dest));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dry = |extra: &[&str]| {
        let out = run(loader(&ep, tmp.path())
            .arg("--dry-run")
            .args(extra)
            .arg(&src)
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = tree(&dest);
    // Complete: nothing to fetch, every file up to date.
    let text = dry(&[]);
    assert!(text.contains("total: 0 files to fetch"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("skip ")).count(),
        4,
        "{text}"
    );
    // One file gone, one excluded from now on: fetch one, remove one, say why with -v.
    std::fs::remove_file(dest.join("sub/a.bin")).unwrap();
    let text = dry(&["-v", "--exclude", "*.txt"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("fetch") && l.ends_with("sub/a.bin")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("remove") && l.contains("tok,en.txt")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("filtered") && l.contains("tok,en.txt  (--exclude *.txt)")),
        "{text}"
    );
    assert!(text.contains("total: 1 file to fetch"), "{text}");
    assert!(text.contains("1 file to remove"), "{text}");
    // Without -v the filtered files are not listed; JSON mode lists them as objects.
    assert!(!dry(&["--exclude", "*.txt"]).contains("filtered"));
    let json = dry(&["--progress", "json", "--exclude", "*.txt"]);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(events.iter().any(|e| e["action"] == "filtered"
        && e["path"] == "tok,en.txt"
        && e["reason"] == "--exclude *.txt"));
    assert_eq!(events.last().unwrap()["action"], "total");
    assert_eq!(events.last().unwrap()["fetch_files"], 1);
    // A dry run wrote nothing: the deleted file is still missing, nothing else changed.
    let mut after = before.clone();
    after.remove("sub/a.bin");
    assert_eq!(tree(&dest), after);
}

#[test]
fn json_mode_ends_a_failing_run_with_a_json_error_event() {
    let ep = s3_endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let out = run(loader(&ep, tmp.path())
        .args(["--progress", "json", "--retries", "1"])
        .arg(format!("s3://{}/m", bucket("nosuch")))
        .arg(tmp.path().join("d")));
    assert_eq!(out.status.code(), Some(4));
    let text = stderr(&out);
    let last = text.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|_| panic!("{text}"));
    assert_eq!(v["event"], "error");
    assert_eq!(v["kind"], "not_found");
    assert_eq!(v["exit_code"], 4);
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|_| panic!("not JSON: {line:?}"));
    }
    // --check in JSON mode: a check event, exit 1.
    let out = run(loader(&ep, tmp.path())
        .args(["--progress", "json", "--check", "s3://bkt/m"])
        .arg(tmp.path().join("d")));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(
        (v["event"].as_str(), v["complete"].as_bool()),
        (Some("check"), Some(false))
    );
}

#[test]
fn bar_mode_without_a_terminal_falls_back_to_log_lines_and_says_so() {
    let (ep, b, objects) = seeded("bar");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader(&ep, tmp.path())
        .args(["--progress", "bar"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let text = stderr(&out);
    assert_eq!(text.matches("bars need a terminal").count(), 1, "{text}");
    assert!(text.contains("plan: fetch 4 files"), "{text}");
    assert!(text.contains("done: fetched 4 files"), "{text}");
    assert_eq!(tree(&dest), expected(&objects, "m/"));
}

/// Runs the loader with DEST bind-mounted read-only in a private mount namespace.
fn run_read_only(ep: &str, home: &std::path::Path, src: &str, dest: &std::path::Path) -> Output {
    let base = loader(ep, home);
    let script =
        r#"mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && exec "$2" "$3" "$1""#;
    run(&mut wrap(
        "unshare",
        &[
            "-m",
            "sh",
            "-c",
            script,
            "sh",
            dest.to_str().unwrap(),
            bin().to_str().unwrap(),
            src,
        ],
        &base,
    ))
}

#[test]
fn a_complete_dest_on_a_read_only_volume_is_a_success_and_an_incomplete_one_is_not() {
    let (ep, b, objects) = seeded("rodest");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let src = format!("s3://{b}/m");
    let out = run(loader(&ep, tmp.path()).arg(&src).arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let out = run_read_only(&ep, tmp.path(), &format!("{src}/"), &dest);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already holds a complete copy"),
        "{}",
        stderr(&out)
    );
    assert!(!dest.join(".model-loader/lock").exists());
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    // A file missing: the read-only volume cannot be completed, exit 7 saying why.
    std::fs::remove_file(dest.join("config.json")).unwrap();
    let out = run_read_only(&ep, tmp.path(), &src, &dest);
    let line = error_line(&out, 7);
    assert!(line.contains("read-only"), "{line}");
}

/// PUT and POST requests an upload made through the proxy.
fn writes(proxy: &proxy::Proxy) -> Vec<String> {
    proxy
        .requests()
        .into_iter()
        .filter(|l| l.starts_with("PUT") || l.starts_with("POST"))
        .collect()
}

#[test]
fn an_upload_rerun_sends_nothing_a_changed_file_is_sent_and_force_sends_all() {
    let ep = s3_endpoint();
    let b = bucket("sync");
    seed_s3(&ep, &b, &BTreeMap::new());
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let files = [
        ("big.bin", data(7, 12 * 1024 * 1024 + 5)),
        ("config.json", b"{}".to_vec()),
        ("sub/t.json", data(8, 70_000)),
        ("empty", Vec::new()),
    ];
    for (p, d) in &files {
        let path = model.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, d).unwrap();
    }
    let proxy = proxy::Proxy::start(&ep);
    let up = |extra: &[&str]| {
        proxy.clear();
        let out = run(loader(&proxy.url(), tmp.path())
            .args(["--chunk-size", "5MiB"])
            .args(extra)
            .arg(&model)
            .arg(format!("s3://{b}/m/")));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stderr(&out)
    };
    let first = up(&[]);
    assert!(first.contains("plan: send 4 files"), "{first}");
    assert!(!writes(&proxy).is_empty());
    // The same files again: zero object bytes sent (multipart big.bin included).
    let again = up(&[]);
    assert_eq!(writes(&proxy), Vec::<String>::new(), "{again}");
    assert!(again.contains("plan: send 0 files"), "{again}");
    assert!(again.contains("4 already at the destination"), "{again}");
    // Same size, one byte different: sent again, alone.
    let mut changed = files[2].1.clone();
    changed[100] ^= 1;
    std::fs::write(model.join("sub/t.json"), &changed).unwrap();
    let third = up(&[]);
    assert!(third.contains("plan: send 1 file "), "{third}");
    assert!(
        writes(&proxy).iter().all(|l| l.contains("sub/t.json")),
        "{:?}",
        writes(&proxy)
    );
    // --force sends everything.
    let forced = up(&["--force"]);
    assert!(forced.contains("plan: send 4 files"), "{forced}");
    // What is there is exactly the local folder.
    let dest = tmp.path().join("back");
    let out = run(loader(&ep, tmp.path())
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let mut want = BTreeMap::new();
    for (p, d) in &files {
        want.insert(p.to_string(), sha256(d));
    }
    want.insert("sub/t.json".into(), sha256(&changed));
    assert_eq!(tree(&dest), want);
}

#[test]
fn an_upload_rerun_to_gcs_sends_nothing() {
    let gcs = required_env("MODEL_LOADER_TEST_GCS_ENDPOINT");
    let b = bucket("gsync");
    let tmp = tempfile::tempdir().unwrap();
    create_gcs_bucket(&gcs, &b);
    let model = tmp.path().join("model");
    std::fs::create_dir_all(model.join("sub")).unwrap();
    std::fs::write(model.join("a.bin"), data(9, 300_000)).unwrap();
    std::fs::write(model.join("sub/b.json"), b"{\"x\":1}").unwrap();
    let proxy = proxy::Proxy::start(&gcs);
    let up = || {
        proxy.clear();
        let out = run(loader("http://127.0.0.1:9", tmp.path())
            .env("STORAGE_EMULATOR_HOST", proxy.url())
            .env("GCE_METADATA_HOST", "127.0.0.1:9")
            .arg(&model)
            .arg(format!("gs://{b}/m")));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stderr(&out)
    };
    assert!(up().contains("plan: send 2 files"));
    let again = up();
    assert!(again.contains("plan: send 0 files"), "{again}");
    assert_eq!(writes(&proxy), Vec::<String>::new());
}
