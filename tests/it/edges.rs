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
        let out = run(std::process::Command::new(bin()).args(["--completions", shell]));
        assert_eq!(out.status.code(), Some(0));
        let script = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(script.contains(n), "{shell}: no {n:?}");
        }
    }
}
