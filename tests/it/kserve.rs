//! The loader driven exactly as KServe drives its storage initializer: the variables its
//! webhook injects (`pkg/credentials/s3/s3_secret.go`), with the meanings its Python
//! initializer gives them (`python/kserve/kserve/storage/storage.py`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::nginx;
use crate::support::proxy::Proxy;
use crate::support::*;

fn small_model(name: &str) -> (String, BTreeMap<String, Vec<u8>>) {
    let b = bucket(name);
    let mut objects = BTreeMap::new();
    objects.insert("m/model.safetensors".to_string(), data(91, (1 << 20) + 5));
    objects.insert("m/config.json".to_string(), b"{\"kserve\": true}".to_vec());
    seed_s3(&s3_endpoint(), &b, &objects);
    (b, objects)
}

/// The loader with KServe's variables only: no `AWS_ENDPOINT_URL`.
fn kserve_loader(home: &Path) -> Command {
    let mut c = loader("http://127.0.0.1:9", home);
    c.env_remove("AWS_ENDPOINT_URL");
    c
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// `S3_ENDPOINT` is a host without a scheme; `S3_USE_HTTPS=0` makes it plain http. With only
/// those two (older KServe setups, and users who set them by hand), the loader went to AWS.
#[test]
fn s3_endpoint_with_use_https_0_alone_is_the_endpoint() {
    let (b, objects) = small_model("ks-ep");
    let front = Proxy::start(&s3_endpoint());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(kserve_loader(tmp.path())
        .env("S3_ENDPOINT", host_port(&front.url()))
        .env("S3_USE_HTTPS", "0")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    assert!(!front.requests().is_empty());
}

/// `AWS_ENDPOINT_URL_S3` and `AWS_ENDPOINT_URL` (what the AWS CLI, and KServe's own Python,
/// read) win over `S3_ENDPOINT`.
#[test]
fn aws_endpoint_names_win_over_kserves() {
    let (b, objects) = small_model("ks-prec");
    let front = Proxy::start(&s3_endpoint());
    let tmp = tempfile::tempdir().unwrap();
    for name in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"] {
        let dest = tmp.path().join(name);
        let out = run(kserve_loader(tmp.path())
            .env(name, front.url())
            .env("S3_ENDPOINT", "127.0.0.1:9")
            .env("S3_USE_HTTPS", "0")
            .arg(format!("s3://{b}/m"))
            .arg(&dest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert_eq!(tree(&dest), expected(&objects, "m/"));
    }
}

/// `S3_USER_VIRTUAL_BUCKET=true` puts the bucket in the host; `awsAnonymousCredential=true`
/// sends unsigned requests (a public bucket), even with keys in the environment. Reached as
/// `BUCKET.s3.kserve.test` through HTTP_PROXY: the test proxy forwards to moto with the Host
/// untouched (no DNS involved).
#[test]
fn virtual_hosted_anonymous_requests_as_kserve_asks() {
    let (b, objects) = small_model("ks-virt");
    make_public(&b, &objects);
    let front = Proxy::start(&s3_endpoint());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(kserve_loader(tmp.path())
        .env("HTTP_PROXY", front.url())
        .env("S3_ENDPOINT", "s3.kserve.test")
        .env("S3_USE_HTTPS", "0")
        .env("S3_USER_VIRTUAL_BUCKET", "True")
        .env("awsAnonymousCredential", "true")
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(tree(&dest), expected(&objects, "m/"));
    let heads = front.heads();
    assert!(!heads.is_empty());
    for h in &heads {
        let lower = h.to_ascii_lowercase();
        assert!(lower.contains(&format!("host: {b}.s3.kserve.test")), "{h}");
        assert!(!lower.contains("authorization:"), "unsigned: {h}");
    }
}

/// Makes every object of `b` readable without credentials (`x-amz-acl: public-read`).
fn make_public(b: &str, objects: &BTreeMap<String, Vec<u8>>) {
    let ep = s3_endpoint();
    block_on(async {
        let client = reqwest::Client::new();
        // moto routes a request to S3 by its Authorization header; it does not check it.
        let auth = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
        for k in objects.keys() {
            let r = client
                .put(format!("{ep}/{b}/{k}?acl"))
                .header("authorization", auth)
                .header("x-amz-acl", "public-read")
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "acl {k}: {}", r.status());
        }
    });
}

/// The termination log the loader writes (it only writes an existing file).
fn termination_log(home: &Path) -> std::path::PathBuf {
    let p = home.join("no-termination-log");
    std::fs::write(&p, "").unwrap();
    p
}

/// KServe gives one init container every model of a pod as `SRC DEST` pairs
/// (`python/storage-initializer/scripts/initializer-entrypoint`), with mount paths under one
/// parent, nested ones included (`validateMultipleStorageURIsSpec` accepts `/mnt/models` with
/// `/mnt/models/model2`). Pair 2's prefix is missing: pairs 1 and 3 still load, the exit code
/// is pair 2's (4), the termination message names it; the rerun after the fix fetches only
/// pair 2. `--check` and `--verify` take the same pairs.
#[test]
fn several_pairs_load_in_turn_and_the_failed_one_is_named() {
    let (a, objects_a) = small_model("ks-pa");
    let (c, objects_c) = small_model("ks-pc");
    let b = bucket("ks-pb");
    let mut objects_b = BTreeMap::new();
    objects_b.insert("other/x.txt".to_string(), b"elsewhere".to_vec());
    seed_s3(&s3_endpoint(), &b, &objects_b);
    let front = Proxy::start(&s3_endpoint());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mnt/models");
    let (da, db, dc) = (root.clone(), root.join("adapter"), root.join("draft"));
    let pairs = [
        (format!("s3://{a}/m"), &da),
        (format!("s3://{b}/m"), &db),
        (format!("s3://{c}/m"), &dc),
    ];
    let call = |extra: &[&str]| {
        let mut cmd = loader(&front.url(), tmp.path());
        cmd.args(extra);
        for (src, dest) in &pairs {
            cmd.arg(src).arg(dest);
        }
        run(&mut cmd)
    };
    // The whole tree under the outer DEST: its own files, and each inner pair's under its
    // folder (state folders aside), so one pair touching another's files shows.
    let whole = |inner: &[(&str, &BTreeMap<String, Vec<u8>>)]| -> BTreeMap<String, String> {
        let mut want = expected(&objects_a, "m/");
        for (dir, objects) in inner {
            for (k, v) in expected(objects, "m/") {
                want.insert(format!("{dir}/{k}"), v);
            }
        }
        want
    };
    let outer = |t: BTreeMap<String, String>| -> BTreeMap<String, String> {
        t.into_iter()
            .filter(|(k, _)| !k.contains("/.model-loader/"))
            .collect()
    };
    let term = termination_log(tmp.path());

    let out = call(&[]);
    let first = error_line(&out, 4);
    let label = format!("pair 2 of 3 (s3://{b}/m → {})", db.display());
    assert!(first.contains(&label), "{first}");
    assert!(first.contains("the other 2 pairs loaded"), "{first}");
    let msg = std::fs::read_to_string(&term).unwrap();
    assert!(msg.contains(&label) && msg.lines().count() == 1, "{msg:?}");
    assert_eq!(outer(tree(&da)), whole(&[("draft", &objects_c)]));
    assert!(!db.join(".model-loader/manifest.json").exists());

    let out = call(&["--check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = |n: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_default()
    };
    assert!(
        line("pair 2 of 3").contains("): not complete: "),
        "{stderr}"
    );
    assert!(
        line("pair 1 of 3").contains("holds a complete copy"),
        "{stderr}"
    );
    assert!(stderr.ends_with("not complete: 1 of 3 pairs\n"), "{stderr}");

    let mut more = BTreeMap::new();
    more.insert("m/adapter.safetensors".to_string(), data(7, 300_000));
    seed_s3(&s3_endpoint(), &b, &more);
    front.clear();
    let out = call(&[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(front.object_requests(&a) + front.object_requests(&c), 0);
    assert_eq!(
        outer(tree(&da)),
        whole(&[("adapter", &more), ("draft", &objects_c)])
    );
    assert_eq!(call(&["--check"]).status.code(), Some(0));
    assert_eq!(call(&["--verify"]).status.code(), Some(0));

    let f = dc.join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let out = call(&["--verify"]);
    let first = error_line(&out, 6);
    assert!(
        first.contains("pair 3 of 3") && first.contains("model.safetensors"),
        "{first}"
    );
}

/// A file of the outer model inside an inner pair's DEST (`/mnt/models` holding `adapter/x`
/// while pair 2 loads into `/mnt/models/adapter`): the two would overwrite, then remove, each
/// other's files. Refused (exit 2) before any byte is fetched, whichever pair comes first; the
/// inner DEST's state folder is never part of the outer model.
#[test]
fn an_outer_model_with_files_in_an_inner_dest_is_refused() {
    let b = bucket("ks-nest");
    let mut objects = BTreeMap::new();
    objects.insert("m/config.json".to_string(), b"{}".to_vec());
    objects.insert("m/adapter/weights.bin".to_string(), data(3, 5000));
    seed_s3(&s3_endpoint(), &b, &objects);
    let (c, objects_c) = small_model("ks-nest2");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    let front = Proxy::start(&s3_endpoint());
    for order in [[0, 1], [1, 0]] {
        let pairs = [
            (format!("s3://{b}/m"), root.clone()),
            (format!("s3://{c}/m"), root.join("adapter")),
        ];
        let mut cmd = loader(&front.url(), tmp.path());
        for i in order {
            cmd.arg(&pairs[i].0).arg(&pairs[i].1);
        }
        front.clear();
        let out = run(&mut cmd);
        let first = error_line(&out, 2);
        assert!(
            first.contains("adapter/weights.bin, inside adapter/"),
            "{first}"
        );
        assert_eq!(
            front.object_requests(&b),
            0,
            "nothing of the outer model fetched"
        );
    }
    // Left out, the rest loads, and the inner pair is whole.
    let out = run(loader(&front.url(), tmp.path())
        .args(["--exclude", "adapter/"])
        .arg(format!("s3://{b}/m"))
        .arg(&root)
        .arg(format!("s3://{c}/m"))
        .arg(root.join("adapter")));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&root.join("adapter")), expected(&objects_c, "m/"));
    assert!(tree(&root).contains_key("config.json"));
}

/// The same DEST twice would have pair 2 replace pair 1's model: refused before anything runs.
#[test]
fn two_pairs_into_one_dest_are_refused_before_any_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let out = run(loader("http://127.0.0.1:9", tmp.path())
        .arg("s3://bkt-a/m")
        .arg(&dest)
        .arg("s3://bkt-b/m")
        .arg(format!("{}/", dest.display())));
    let first = error_line(&out, 2);
    assert!(first.contains("pairs 1 and 2 both load into"), "{first}");
    assert!(!dest.exists());
    let out = run(loader("http://127.0.0.1:9", tmp.path())
        .arg("s3://bkt-a/m")
        .arg(&dest)
        .arg("s3://bkt-b/m"));
    assert!(error_line(&out, 2).contains("SRC DEST pairs"));
}

/// Storage-spec mode: KServe's webhook passes the storage-config secret's JSON as
/// `STORAGE_CONFIG` and the InferenceService's parameters as `STORAGE_OVERRIDE_CONFIG`
/// (`pkg/credentials/service_account_credentials.go`); its initializer sets the AWS variables
/// from them, replacing what they held (`kserve_storage.py` `_update_with_storage_spec`). Here
/// the keys and endpoint come only from there, against a server that checks every signature.
#[test]
fn storage_config_supplies_endpoint_and_keys_and_never_shows_them() {
    let ep = required_env("MODEL_LOADER_TEST_S3_AUTH_ENDPOINT");
    let key = required_env("MODEL_LOADER_TEST_S3_AUTH_KEY_ID");
    let secret = required_env("MODEL_LOADER_TEST_S3_AUTH_SECRET");
    let b = required_env("MODEL_LOADER_TEST_S3_AUTH_BUCKET");
    let tmp = tempfile::tempdir().unwrap();
    let spec = |secret: &str| {
        serde_json::json!({"type": "s3", "access_key_id": key, "secret_access_key": secret,
            "endpoint_url": "http://127.0.0.1:9", "region": "us-east-1", "bucket": b,
            "anonymous": "False"})
        .to_string()
    };
    let with_spec = |config: &str, dest: &Path| {
        run(kserve_loader(tmp.path())
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_ACCESS_KEY_ID", "AKIAPODENVNOTUSED000")
            .env("STORAGE_CONFIG", config)
            .env(
                "STORAGE_OVERRIDE_CONFIG",
                format!("{{\"endpoint_url\": \"{ep}\"}}"),
            )
            .arg(format!("s3://{b}"))
            .arg(dest))
    };
    let dest = tmp.path().join("ok");
    let out = with_spec(&spec(&secret), &dest);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!tree(&dest).is_empty());
    assert!(stderr.contains("STORAGE_CONFIG"), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");

    let wrong = format!("{secret}WRONG");
    let dest = tmp.path().join("bad");
    let denied = with_spec(&spec(&wrong), &dest);
    error_line(&denied, 3);
    let broken = spec(&wrong).replace('}', "");
    let out = with_spec(&broken, &dest);
    assert!(error_line(&out, 2).contains("STORAGE_CONFIG is not valid JSON"));
    for out in [&denied, &out] {
        let all = String::from_utf8_lossy(&out.stderr);
        assert!(!all.contains(&wrong) && !all.contains(&secret), "{all}");
    }
    assert!(!dest.join(".model-loader/manifest.json").exists());
}

/// `STORAGE_ALLOW_PATTERNS`/`STORAGE_IGNORE_PATTERNS` (kserve-storage 0.21): a JSON array or
/// commas, fnmatch (`*` crosses `/`); the loader's own `--include`/`--exclude` win where given.
#[test]
fn storage_patterns_filter_files_and_flags_win() {
    let (b, objects) = small_model("ks-pat");
    let tmp = tempfile::tempdir().unwrap();
    let only = |name: &str| -> BTreeMap<String, String> {
        expected(&objects, "m/")
            .into_iter()
            .filter(|(k, _)| k == name)
            .collect()
    };
    let load = |envs: &[(&str, &str)], args: &[&str], dest: &Path| {
        let mut cmd = loader(&s3_endpoint(), tmp.path());
        cmd.envs(envs.iter().copied()).args(args);
        run(cmd.arg(format!("s3://{b}/m")).arg(dest))
    };
    let d1 = tmp.path().join("allow");
    let out = load(&[("STORAGE_ALLOW_PATTERNS", r#"["*.json"]"#)], &[], &d1);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&d1), only("config.json"));
    let d2 = tmp.path().join("ignore");
    let out = load(&[("STORAGE_IGNORE_PATTERNS", "*.json, *.md")], &[], &d2);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&d2), only("model.safetensors"));
    let d3 = tmp.path().join("flag");
    let envs = [("STORAGE_ALLOW_PATTERNS", "*.json")];
    let out = load(&envs, &["--include", "*.safetensors"], &d3);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&d3), only("model.safetensors"));
    let d4 = tmp.path().join("none");
    let out = load(&[("STORAGE_ALLOW_PATTERNS", r#"["*.gguf"]"#)], &[], &d4);
    assert!(error_line(&out, 4).contains("STORAGE_ALLOW_PATTERNS"));
    // fnmatch, not globs: `**/` needs a folder, braces are literal.
    let d5 = tmp.path().join("fnmatch");
    let out = load(
        &[(
            "STORAGE_ALLOW_PATTERNS",
            r#"["**/*.json", "{model}.safetensors"]"#,
        )],
        &[],
        &d5,
    );
    assert!(error_line(&out, 4).contains("STORAGE_ALLOW_PATTERNS"));
    // A URL naming one object is fetched whatever KServe's patterns say (`exact_obj_found`).
    let d6 = tmp.path().join("exact");
    let mut cmd = loader(&s3_endpoint(), tmp.path());
    cmd.env("STORAGE_ALLOW_PATTERNS", "*.safetensors");
    let out = run(cmd.arg(format!("s3://{b}/m/config.json")).arg(&d6));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&d6), only("config.json"));
}

/// With several pairs, `--progress json` events say which pair they belong to, so a consumer
/// does not take pair 1's `done` for the end of the call.
#[test]
fn json_events_name_their_pair() {
    let (b, _) = small_model("ks-json");
    let tmp = tempfile::tempdir().unwrap();
    let out = run(loader(&s3_endpoint(), tmp.path())
        .args(["--progress", "json"])
        .arg(format!("s3://{b}/m"))
        .arg(tmp.path().join("one"))
        .arg(format!("s3://{b}/m"))
        .arg(tmp.path().join("two")));
    assert_eq!(out.status.code(), Some(0));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stderr line is JSON"))
        .collect();
    let done: Vec<_> = events.iter().filter(|e| e["event"] == "done").collect();
    assert_eq!(done.len(), 2);
    assert_eq!(
        (done[0]["pair"].as_u64(), done[1]["pair"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(events
        .iter()
        .filter(|e| e["event"] == "plan")
        .all(|e| e["pair"].is_u64()));
}

/// Kubernetes stops a pod with SIGTERM: the pair being loaded keeps what it wrote, and the
/// pairs after it are not started (exit 143, the pair named); a rerun finishes both.
#[test]
fn sigterm_during_one_pair_stops_the_call_and_starts_no_other() {
    use crate::support::proxy::Fault;
    let b = bucket("ks-term");
    let mut objects = BTreeMap::new();
    objects.insert("m/big.bin".to_string(), data(5, 6 << 20));
    seed_s3(&s3_endpoint(), &b, &objects);
    let (c, objects_c) = small_model("ks-term2");
    let front = Proxy::with_fault(
        &s3_endpoint(),
        Fault::Throttle {
            bytes_per_sec: 2 << 20,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("models/a"), tmp.path().join("models/b"));
    let cmd = || {
        let mut cmd = loader(&front.url(), tmp.path());
        cmd.args(["--chunk-size", "1MiB"])
            .arg(format!("s3://{b}/m"))
            .arg(&d1)
            .arg(format!("s3://{c}/m"))
            .arg(&d2);
        cmd
    };
    let child = cmd().stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t = std::time::Instant::now();
    while front.bytes_down() < 1 << 20 {
        assert!(t.elapsed().as_secs() < 30, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let first = error_line(&out, 143);
    assert!(first.contains("pair 1 of 2"), "{first}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("pair 2 of 2"), "{stderr}");
    assert!(!d2.exists());
    assert_eq!(front.object_requests(&c), 0);
    let out = run(&mut cmd());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&d1), expected(&objects, "m/"));
    assert_eq!(tree(&d2), expected(&objects_c, "m/"));
}

/// `S3_VERIFY_SSL=0` (KServe's `serving.kserve.io/s3-verifyssl: "0"`) for an endpoint whose
/// certificate no trusted CA signed: refused by default (exit 5, naming the certificate and
/// both remedies), loaded with `AWS_CA_BUNDLE` naming its CA, and loaded unchecked with
/// `S3_VERIFY_SSL=0`, said in a warning. A TLS front (nginx) before moto.
#[test]
fn s3_verify_ssl_0_accepts_an_unknown_certificate_with_a_warning() {
    let (b, objects) = small_model("ks-tls");
    let tmp = tempfile::tempdir().unwrap();
    let front = nginx::tls_front(tmp.path(), &s3_endpoint());
    let load = |envs: &[(&str, &str)], dest: &str| {
        let mut cmd = kserve_loader(tmp.path());
        cmd.env("S3_ENDPOINT", format!("127.0.0.1:{}", front.port))
            .env("MODEL_LOADER_RETRIES", "2")
            .envs(envs.iter().copied());
        run(cmd.arg(format!("s3://{b}/m")).arg(tmp.path().join(dest)))
    };
    let out = load(&[], "refused");
    let first = error_line(&out, 5);
    assert!(
        first.to_ascii_lowercase().contains("certificate"),
        "{first}"
    );
    assert!(!tmp.path().join("refused/model.safetensors").exists());

    let ca = front.root.join("ca.pem");
    let out = load(&[("AWS_CA_BUNDLE", ca.to_str().unwrap())], "ca");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&tmp.path().join("ca")), expected(&objects, "m/"));

    // The system's variable for extra roots works for every scheme's client.
    let out = load(&[("SSL_CERT_FILE", ca.to_str().unwrap())], "ssl-cert-file");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        tree(&tmp.path().join("ssl-cert-file")),
        expected(&objects, "m/")
    );

    let out = load(&[("S3_VERIFY_SSL", "0")], "unchecked");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: s3: S3_VERIFY_SSL is off"),
        "{stderr}"
    );
    assert_eq!(
        tree(&tmp.path().join("unchecked")),
        expected(&objects, "m/")
    );
}
