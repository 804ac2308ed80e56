//! `oci://` against the CNCF distribution registry (Debian's docker-registry, started by
//! scripts/test.sh), with artifacts pushed by an independent client (the ORAS Python client,
//! scripts/support/oci_push.py), a token service in front where auth matters
//! (scripts/support/oci_token_front.py: Bearer challenges and expiring tokens, as Docker Hub,
//! GHCR and Harbor answer), and the fault proxy where bytes must be damaged on the way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::support::*;

const USER: &str = "puller";
const PASSWORD: &str = "pull-secret-8f3a";

fn registry() -> String {
    required_env("MODEL_LOADER_TEST_REGISTRY")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/support")
        .join(name)
}

fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Files of a small model: shards a few MiB each, and a config in a sub-folder.
fn model(dir: &Path) -> BTreeMap<String, String> {
    let files: [(&str, Vec<u8>); 3] = [
        ("model-00001-of-00002.safetensors", data(1, 3 << 20)),
        (
            "model-00002-of-00002.safetensors",
            data(2, (2 << 20) + 12345),
        ),
        ("config.json", br#"{"model_type": "llama"}"#.to_vec()),
    ];
    let mut out = BTreeMap::new();
    for (name, body) in files {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), &body).unwrap();
        out.insert(name.to_string(), sha256(&body));
    }
    out
}

/// Runs `scripts/support/NAME ARGS…` with the tests' Python; its stdout, trimmed (it must
/// succeed).
fn python(name: &str, args: &[&str]) -> String {
    let out = Command::new(required_env("MODEL_LOADER_TEST_PYTHON"))
        .arg(script(name))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Pushes `dir` as `layout` to `repo:tag` on the test registry; returns the manifest digest.
fn push(layout: &str, repo_tag: &str, dir: &Path) -> String {
    let dir = dir.display().to_string();
    let digest = python("oci_push.py", &[layout, &registry(), repo_tag, &dir]);
    assert!(digest.starts_with("sha256:"), "{digest}");
    digest
}

/// A fresh folder with the test model, pushed as a ModelPack to `models/NAME-…:v1`: the folder,
/// the files by sha256, the repository.
fn pushed(name: &str) -> (tempfile::TempDir, BTreeMap<String, String>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let want = model(&tmp.path().join("m"));
    let repo = unique(&format!("models/{name}"));
    push("modelpack", &format!("{repo}:v1"), &tmp.path().join("m"));
    (tmp, want, repo)
}

/// Loads `repo_tag` from the registry itself (no auth) into `dest`: exit 0.
fn load_plain(home: &Path, repo_tag: &str, dest: &Path) {
    let out = run(oci_loader(home, "none", None)
        .arg(format!("oci://{}/{repo_tag}", registry()))
        .arg(dest));
    assert_eq!(out.status.code(), Some(0));
}

/// The tree a test expects: each path with the sha256 of its bytes.
fn sums(files: &[(&str, &[u8])]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(k, v)| (k.to_string(), sha256(v)))
        .collect()
}

/// The token service and Bearer gate in front of the registry; killed on drop.
struct Front {
    child: Child,
    host: String,
}

impl Front {
    fn start(expire_after_s: f64, announced_s: u64) -> Front {
        Self::start_with(expire_after_s, announced_s, None)
    }

    /// `redirect`: blob GETs are answered with a 307 to this origin.
    fn start_with(expire_after_s: f64, announced_s: u64, redirect: Option<&str>) -> Front {
        let spec = [USER, PASSWORD, redirect.unwrap_or_default(), "bearer"];
        Self::spawn(expire_after_s, announced_s, spec, &[])
    }

    /// A gate that takes `user`/`password`: by token, or with `basic` on every request as
    /// ECR does; reached through a TLS front, whose name its token realm then carries.
    fn start_for(user: &str, password: &str, basic: bool) -> Front {
        let mode = if basic { "basic" } else { "bearer" };
        let env = [("FRONT_REALM", "https-host")];
        Self::spawn(600.0, 600, [user, password, "", mode], &env)
    }

    /// A registry whose storage fails every blob upload's PUT (500).
    fn start_failing_uploads() -> Front {
        let env = [("FRONT_FAIL_BLOB_PUTS", "1")];
        Self::spawn(600.0, 600, [USER, PASSWORD, "", "bearer"], &env)
    }

    /// `[user, password, redirect origin or "", "basic" | "bearer"]`, and the front's own
    /// variables (scripts/support/oci_token_front.py).
    fn spawn(
        expire_after_s: f64,
        announced_s: u64,
        spec: [&str; 4],
        env: &[(&str, &str)],
    ) -> Front {
        let [user, password, redirect, mode] = spec;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(required_env("MODEL_LOADER_TEST_PYTHON"))
            .envs(env.iter().copied())
            .arg(script("oci_token_front.py"))
            .args([
                port.to_string(),
                format!("http://{}", registry()),
                user.into(),
                password.into(),
                expire_after_s.to_string(),
                announced_s.to_string(),
                redirect.to_string(),
                mode.to_string(),
            ])
            .spawn()
            .unwrap();
        let host = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&host).is_ok() {
                return Front { child, host };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the token front did not start");
    }

    fn stats(&self) -> serde_json::Value {
        let body = block_on(async {
            reqwest::get(format!("http://{}/_stats", self.host))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        });
        serde_json::from_slice(&body).unwrap()
    }

    fn blob_gets(&self) -> u64 {
        self.stats()["blob_gets"].as_u64().unwrap()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The loader with a docker config holding `password` for `host` (none when `None`).
fn oci_loader(home: &Path, host: &str, password: Option<&str>) -> Command {
    use base64::Engine as _;
    let mut c = loader("http://127.0.0.1:1", home);
    let config = home.join("docker");
    std::fs::create_dir_all(&config).unwrap();
    let auths = match password {
        Some(p) => {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{p}"));
            serde_json::json!({"auths": {host: {"auth": auth}}})
        }
        None => serde_json::json!({"auths": {}}),
    };
    std::fs::write(config.join("config.json"), auths.to_string()).unwrap();
    c.env("DOCKER_CONFIG", &config);
    c
}

#[test]
fn a_modelpack_lands_verified_pinned_and_a_rerun_fetches_no_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let want = model(&tmp.path().join("m"));
    let repo = unique("models/pack");
    let digest = push("modelpack", &format!("{repo}:v1"), &tmp.path().join("m"));
    let front = Front::start(600.0, 600);
    let dest = tmp.path().join("d");
    let url = format!("oci://{}/{repo}:v1", front.host);
    let out = run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
        .args(["--chunk-size", "1MiB"])
        .arg(&url)
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), want);
    let m = manifest(&dest);
    assert_eq!(
        m["revision"], digest,
        "the manifest digest pins the load: {m}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("user \"{USER}\" from")),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD));
    let gets = front.blob_gets();
    assert!(gets >= 3, "{gets}");
    // The tag still names the same manifest: no blob is fetched again.
    let out = run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
        .arg(&url)
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(front.blob_gets(), gets, "a rerun fetched blobs");
    assert_eq!(tree(&dest), want);
    // Pinned by digest, into a fresh DEST; then --verify, and a flipped byte on disk is exit 6.
    let pinned = tmp.path().join("p");
    let by_digest = format!("oci://{}/{repo}@{digest}", front.host);
    let out = run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
        .arg(&by_digest)
        .arg(&pinned));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&pinned), want);
    let verify = |dest: &Path| {
        run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
            .arg("--verify")
            .arg(&by_digest)
            .arg(dest))
    };
    assert_eq!(verify(&pinned).status.code(), Some(0));
    let shard = pinned.join("model-00002-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[777] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let line = error_line(&verify(&pinned), 6);
    assert!(line.contains("model-00002-of-00002.safetensors"), "{line}");
}

#[test]
fn oras_and_legacy_modelpack_layouts_land_at_their_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let want = model(&tmp.path().join("m"));
    for layout in ["oras", "legacy"] {
        let repo = unique(&format!("models/{layout}"));
        push(layout, &format!("{repo}:latest"), &tmp.path().join("m"));
        let dest = tmp.path().join(layout);
        // No tag: `latest`.
        let out = run(oci_loader(tmp.path(), "none", None)
            .arg(format!("oci://{}/{repo}", registry()))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{layout}");
        assert_eq!(tree(&dest), want, "{layout}");
    }
}

#[test]
fn an_index_resolves_to_this_machines_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let want = model(&tmp.path().join("m"));
    let repo = unique("models/multi");
    push("index", &format!("{repo}:v1"), &tmp.path().join("m"));
    let dest = tmp.path().join("d");
    load_plain(tmp.path(), &format!("{repo}:v1"), &dest);
    // The arm64 entry holds only the first file by name (config.json).
    let expect: BTreeMap<String, String> = if cfg!(target_arch = "aarch64") {
        want.into_iter()
            .filter(|(k, _)| k == "config.json")
            .collect()
    } else {
        want
    };
    assert_eq!(tree(&dest), expect);
}

#[test]
fn registry_auth_denies_with_exit_3_and_never_prints_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    model(&tmp.path().join("m"));
    let repo = unique("models/private");
    push("modelpack", &format!("{repo}:v1"), &tmp.path().join("m"));
    let front = Front::start(600.0, 600);
    let url = format!("oci://{}/{repo}:v1", front.host);
    // No credentials: the token service refuses anonymous pulls.
    let out = run(oci_loader(tmp.path(), &front.host, None)
        .arg(&url)
        .arg(tmp.path().join("a")));
    let line = error_line(&out, 3);
    assert!(line.contains("no credentials for 127.0.0.1"), "{line}");
    assert!(line.contains("config.json"), "{line}");
    // A wrong password: exit 3, naming the user and the file, never the password.
    let wrong = "wrong-pass-77";
    let out = run(oci_loader(tmp.path(), &front.host, Some(wrong))
        .arg(&url)
        .arg(tmp.path().join("b")));
    let line = error_line(&out, 3);
    assert!(line.contains(&format!("user \"{USER}\"")), "{line}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(wrong) && !all.contains(PASSWORD), "{all}");
    assert!(!tmp.path().join("b/.model-loader/manifest.json").exists());
}

/// The registry refuses the token long before the time it announced (revoked, or a clock
/// skew): every stream meets a 401 mid-download, one renews, the others reuse its token.
#[test]
fn a_token_refused_mid_download_is_renewed_and_the_load_completes() {
    use crate::support::proxy::{Fault, Proxy};
    let (tmp, want, repo) = pushed("expiring");
    let front = Front::start(1.0, 3600);
    // 5 MiB at 2 MiB/s: the first token dies well before the last byte.
    let slow = Proxy::with_fault(
        &format!("http://{}", front.host),
        Fault::Throttle {
            bytes_per_sec: 2 << 20,
        },
    );
    let host = slow.addr.to_string();
    let dest = tmp.path().join("d");
    let out = run(oci_loader(tmp.path(), &host, Some(PASSWORD))
        .args(["--chunk-size", "256KiB", "--concurrency", "4"])
        .arg(format!("oci://{host}/{repo}:v1"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), want);
    let stats = front.stats();
    let n = |k: &str| stats[k].as_u64().unwrap();
    assert!(n("expired") >= 1, "{stats}");
    assert!(n("tokens") >= 2, "never renewed: {stats}");
    // Renewals are shared: one per token the registry refused, however many streams met the
    // refusal (four streams renewing each on their own would make about four per token).
    assert!(n("tokens") <= n("expired_distinct") + 1, "{stats}");
}

#[test]
fn missing_repositories_and_tags_are_exit_4() {
    let tmp = tempfile::tempdir().unwrap();
    model(&tmp.path().join("m"));
    let repo = unique("models/tags");
    push("modelpack", &format!("{repo}:v1"), &tmp.path().join("m"));
    for url in [
        format!("oci://{}/{}:v1", registry(), unique("no/such-repo")),
        format!("oci://{}/{repo}:v2", registry()),
        format!("oci://{}/{repo}@sha256:{}", registry(), "0".repeat(64)),
    ] {
        let out = run(oci_loader(tmp.path(), "none", None)
            .arg(&url)
            .arg(tmp.path().join("d")));
        let line = error_line(&out, 4);
        assert!(
            line.contains("MANIFEST_UNKNOWN") || line.contains("NAME_UNKNOWN"),
            "{line}"
        );
    }
    assert!(!tmp.path().join("d/.model-loader/manifest.json").exists());
}

#[test]
fn unnamed_and_hostile_layers_are_refused_before_any_write() {
    let tmp = tempfile::tempdir().unwrap();
    model(&tmp.path().join("m"));
    for (layout, code, needle) in [
        (
            "unnamed",
            2,
            "no file name (1 × application/vnd.ollama.image.model)",
        ),
        ("hostile", 2, "../../escape.txt"),
    ] {
        let repo = unique(&format!("models/{layout}"));
        push(layout, &format!("{repo}:v1"), &tmp.path().join("m"));
        let dest = tmp.path().join("x/y").join(layout);
        let out = run(oci_loader(tmp.path(), "none", None)
            .arg(format!("oci://{}/{repo}:v1", registry()))
            .arg(&dest));
        let line = error_line(&out, code);
        assert!(line.contains(needle), "{layout}: {line}");
        assert!(!tmp.path().join("escape.txt").exists());
        assert!(!tmp.path().join("x/escape.txt").exists());
        assert!(!dest.join(".model-loader/manifest.json").exists());
    }
}

/// One tar entry, written with raw header fields (hostile names included: the tar crate's
/// own path setters refuse them).
enum T<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Dir(&'a str),
    CharDevice(&'a str),
}

fn tar_of(entries: &[T<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, link, data): (&str, tar::EntryType, &str, &[u8]) = match e {
            T::File(n, d) => (n, tar::EntryType::Regular, "", d),
            T::Symlink(n, l) => (n, tar::EntryType::Symlink, l, b""),
            T::HardLink(n, l) => (n, tar::EntryType::Link, l, b""),
            T::Dir(n) => (n, tar::EntryType::Directory, "", b""),
            T::CharDevice(n) => (n, tar::EntryType::Char, "", b""),
        };
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn zstd(b: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
}

/// Pushes `layers` (blob, media type, annotations) with the given config media type; the
/// manifest digest.
fn push_layers(
    repo_tag: &str,
    config: &str,
    layers: &[(Vec<u8>, &str, &str)],
    dir: &Path,
) -> String {
    let mut args = vec![
        "layers".to_string(),
        registry(),
        repo_tag.into(),
        config.into(),
    ];
    for (i, (blob, media, ann)) in layers.iter().enumerate() {
        let p = dir.join(format!("blob-{i}"));
        std::fs::write(&p, blob).unwrap();
        args.push(format!("{}|{media}|{ann}", p.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python("oci_push.py", &args)
}

const MODELPACK_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[test]
fn tar_gzip_and_zstd_layers_land_as_their_files_verified_and_rerun_for_free() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = data(7, (1 << 20) + 333);
    let docs = tar_of(&[
        T::Dir("docs/"),
        T::File("docs/README.md", b"# model"),
        T::File("./docs/sub/a.txt", b"a"),
    ]);
    let packed = tar_of(&[
        T::File("w/model.safetensors", &weights),
        T::Symlink("w/link.safetensors", "model.safetensors"),
        T::HardLink("w/hard.safetensors", "w/model.safetensors"),
    ]);
    let z = tar_of(&[T::File("z/data.bin", b"zstd bytes")]);
    let repo = unique("models/tars");
    push_layers(
        &format!("{repo}:v1"),
        MODELPACK_CONFIG,
        &[
            (
                docs,
                "application/vnd.cncf.model.doc.v1.tar",
                "org.cncf.model.filepath=docs",
            ),
            (
                gzip(&packed),
                "application/vnd.cncf.model.weight.v1.tar+gzip",
                "org.cncf.model.filepath=w",
            ),
            (
                zstd(&z),
                "application/vnd.cncf.model.weight.v1.tar+zstd",
                "",
            ),
            (
                b"{}".to_vec(),
                "application/vnd.cncf.model.weight.config.v1.raw",
                "org.cncf.model.filepath=config.json",
            ),
        ],
        tmp.path(),
    );
    let want = sums(&[
        ("docs/README.md", b"# model"),
        ("docs/sub/a.txt", b"a"),
        ("w/model.safetensors", &weights),
        ("w/link.safetensors", &weights),
        ("w/hard.safetensors", &weights),
        ("z/data.bin", b"zstd bytes"),
        ("config.json", b"{}"),
    ]);
    let front = Front::start(600.0, 600);
    let url = format!("oci://{}/{repo}:v1", front.host);
    let dest = tmp.path().join("d");
    let load = || {
        run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
            .arg(&url)
            .arg(&dest))
    };
    assert_eq!(load().status.code(), Some(0));
    assert_eq!(tree(&dest), want);
    let m = manifest(&dest);
    let listed: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed.len(),
        want.len(),
        "every member is in the manifest: {m}"
    );
    assert!(
        m["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["checksum"].as_str().unwrap().starts_with("sha256:")),
        "{m}"
    );
    let staged = dest.join(".model-loader/unpacked");
    assert!(
        std::fs::read_dir(&staged).map_or(true, |d| d
            .filter_map(|e| e.ok())
            .all(|e| e.path().is_file())),
        "the unpacked copies are cleaned up"
    );
    // A rerun knows the members from its index: no blob is fetched.
    let gets = front.blob_gets();
    assert_eq!(load().status.code(), Some(0));
    assert_eq!(front.blob_gets(), gets, "a rerun fetched layers");
    // --verify covers unpacked files; a member deleted is unpacked again on the next run.
    let verify = || {
        run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
            .arg("--verify")
            .arg(&url)
            .arg(&dest))
    };
    assert_eq!(verify().status.code(), Some(0));
    std::fs::write(dest.join("docs/sub/a.txt"), b"b").unwrap();
    let line = error_line(&verify(), 6);
    assert!(line.contains("docs/sub/a.txt"), "{line}");
    std::fs::remove_file(dest.join("w/link.safetensors")).unwrap();
    assert_eq!(load().status.code(), Some(0));
    assert!(
        front.blob_gets() > gets,
        "the layers were fetched again for the missing file"
    );
    let mut fixed = want.clone();
    fixed.insert("docs/sub/a.txt".into(), sha256(b"b"));
    assert_eq!(
        tree(&dest),
        fixed,
        "only the missing file came back; the edited one is the user's"
    );
}

/// Loads `repo:v1` through a proxy that flips the bit at body offset `at` of the first `first`
/// ranged replies, into `tmp/<name>`; the run's output and its DEST.
fn load_flipped(
    tmp: &Path,
    repo: &str,
    (at, first): (u64, usize),
    args: &[&str],
    name: &str,
) -> (std::process::Output, PathBuf) {
    use crate::support::proxy::{Fault, Proxy};
    let proxy = Proxy::with_fault(&format!("http://{}", registry()), Fault::Flip { at, first });
    let dest = tmp.join(name);
    let out = run(oci_loader(tmp, "none", None)
        .args(args)
        .arg(format!("oci://{}/{repo}:v1", proxy.addr))
        .arg(&dest));
    (out, dest)
}

/// A bit flipped in an archive layer on the way: its digest fails, nothing from it is kept, it
/// is fetched again and lands exact; flipped every time: exit 6, nothing in DEST.
#[test]
fn a_damaged_archive_layer_is_fetched_again_and_never_half_unpacked() {
    let tmp = tempfile::tempdir().unwrap();
    let body = data(9, 300_000);
    let repo = unique("models/tarflip");
    push_layers(
        &format!("{repo}:v1"),
        MODELPACK_CONFIG,
        &[(
            gzip(&tar_of(&[T::File("w.bin", &body)])),
            "application/vnd.cncf.model.weight.v1.tar+gzip",
            "",
        )],
        tmp.path(),
    );
    let (out, dest) = load_flipped(tmp.path(), &repo, (5000, 1), &[], "d");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged on the way"));
    assert_eq!(
        tree(&dest),
        [("w.bin".to_string(), sha256(&body))].into_iter().collect()
    );
    let (out, dest) = load_flipped(
        tmp.path(),
        &repo,
        (5000, usize::MAX),
        &["--retries", "2"],
        "d2",
    );
    assert!(error_line(&out, 6).contains("damaged on the way"));
    assert!(tree(&dest).is_empty());
    let staged = dest.join(".model-loader/unpacked");
    let left: Vec<_> = std::fs::read_dir(&staged)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a failed layer left staged files: {left:?}"
    );
}

#[test]
fn a_modelcar_image_lands_its_models_folder_with_whiteouts_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tar_of(&[
        T::File("etc/passwd", b"root:x:0:0"),
        T::CharDevice("dev/null"),
        T::Symlink("bin/sh", "/usr/bin/busybox"),
        T::File("models/config.json", b"old"),
        T::File("models/old.bin", b"gone"),
        T::File("models/dir/x", b"x"),
    ]);
    let upper = tar_of(&[
        T::File("models/.wh.old.bin", b""),
        T::File("models/dir/.wh..wh..opq", b""),
        T::File("models/dir/y", b"y"),
        T::File("models/config.json", b"new"),
    ]);
    let repo = unique("models/modelcar");
    push_layers(
        &format!("{repo}:v1"),
        IMAGE_CONFIG,
        &[
            (
                gzip(&lower),
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "",
            ),
            (upper, "application/vnd.oci.image.layer.v1.tar", ""),
        ],
        tmp.path(),
    );
    let dest = tmp.path().join("d");
    load_plain(tmp.path(), &format!("{repo}:v1"), &dest);
    let want = sums(&[("config.json", b"new"), ("dir/y", b"y")]);
    assert_eq!(tree(&dest), want);
    // An image with nothing under /models: exit 4, saying where the model was looked for.
    let repo = unique("models/nomodels");
    push_layers(
        &format!("{repo}:v1"),
        IMAGE_CONFIG,
        &[(
            gzip(&tar_of(&[T::File("etc/motd", b"hi")])),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "",
        )],
        tmp.path(),
    );
    let out = run(oci_loader(tmp.path(), "none", None)
        .arg(format!("oci://{}/{repo}:v1", registry()))
        .arg(tmp.path().join("e")));
    assert!(error_line(&out, 4).contains("/models"));
}

#[test]
fn an_oras_folder_lands_under_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("src/adapter");
    let want: BTreeMap<String, String> = model(&folder)
        .into_iter()
        .map(|(k, v)| (format!("adapter/{k}"), v))
        .collect();
    let repo = unique("models/orasdir");
    push("oras-dir", &format!("{repo}:v1"), &folder);
    let dest = tmp.path().join("d");
    load_plain(tmp.path(), &format!("{repo}:v1"), &dest);
    assert_eq!(tree(&dest), want);
}

#[test]
fn hostile_tar_members_are_refused_with_exit_2_and_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 6] = [
        (
            "dotdot",
            tar_of(&[T::File("ok", b"1"), T::File("../evil", b"x")]),
            "climbs out",
        ),
        (
            "absolute",
            tar_of(&[T::File("/etc/evil", b"x")]),
            "absolute path",
        ),
        (
            "symlink-out",
            tar_of(&[T::Symlink("l", "/etc/passwd")]),
            "absolute path, outside DEST",
        ),
        (
            "symlink-up",
            tar_of(&[T::File("a/f", b"1"), T::Symlink("a/l", "../../x")]),
            "leads outside DEST",
        ),
        (
            "device",
            tar_of(&[T::CharDevice("tty")]),
            "is not a file, folder or link",
        ),
        (
            "state",
            tar_of(&[T::File(".model-loader/manifest.json", b"{}")]),
            "refusing member",
        ),
    ];
    for (name, blob, needle) in cases {
        let repo = unique(&format!("models/evil-{name}"));
        push_layers(
            &format!("{repo}:v1"),
            MODELPACK_CONFIG,
            &[(
                gzip(&blob),
                "application/vnd.cncf.model.weight.v1.tar+gzip",
                "",
            )],
            tmp.path(),
        );
        let dest = tmp.path().join("in").join(name);
        let out = run(oci_loader(tmp.path(), "none", None)
            .arg(format!("oci://{}/{repo}:v1", registry()))
            .arg(&dest));
        let line = error_line(&out, 2);
        assert!(line.contains(needle), "{name}: {line}");
        assert!(!tmp.path().join("in/evil").exists() && !tmp.path().join("evil").exists());
        assert!(tree(&dest).is_empty(), "{name}: something landed");
        assert!(!dest.join(".model-loader/manifest.json").exists());
    }
}

#[test]
fn a_flipped_bit_in_a_blob_is_refetched_once_then_exit_6() {
    let (tmp, want, repo) = pushed("flip");
    let chunks = ["--chunk-size", "256KiB"];
    let (out, dest) = load_flipped(tmp.path(), &repo, (1000, 1), &chunks, "d");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sha256 mismatch"), "{stderr}");
    assert_eq!(tree(&dest), want);
    let (out, dest) = load_flipped(tmp.path(), &repo, (1000, usize::MAX), &chunks, "d2");
    let line = error_line(&out, 6);
    assert!(line.contains("sha256 mismatch"), "{line}");
    assert!(!dest.join(".model-loader/manifest.json").exists());
}

/// kill -9 mid-blob, then a rerun: it fetches what is missing, plus at most a chunk per stream
/// that was in flight, not the blobs again.
#[test]
fn a_killed_load_resumes_mid_blob() {
    use crate::support::proxy::{Fault, Proxy};
    let tmp = tempfile::tempdir().unwrap();
    let want = model(&tmp.path().join("m"));
    let total: u64 = std::fs::read_dir(tmp.path().join("m"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let repo = unique("models/killed");
    push("modelpack", &format!("{repo}:v1"), &tmp.path().join("m"));
    let slow = Proxy::with_fault(
        &format!("http://{}", registry()),
        Fault::Throttle {
            bytes_per_sec: 1 << 20,
        },
    );
    let dest = tmp.path().join("d");
    let journal = dest.join(".model-loader/journal.jsonl");
    let mut child = oci_loader(tmp.path(), "none", None)
        .args(["--chunk-size", "256KiB", "--concurrency", "2"])
        .arg(format!("oci://{}/{repo}:v1", slow.addr))
        .arg(&dest)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    kill_after_ranges(&mut child, &journal, 6);
    let counting = Proxy::start(&format!("http://{}", registry()));
    let out = run(oci_loader(tmp.path(), "none", None)
        .args(["--chunk-size", "256KiB", "--concurrency", "2"])
        .arg(format!("oci://{}/{repo}:v1", counting.addr))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), want);
    let again = counting.bytes_down();
    // At least five 256 KiB chunks were journaled before the kill (the sixth record may be the
    // small config); each of the two streams may have had one chunk in flight.
    let kept: u64 = 5 * (256 << 10);
    let in_flight: u64 = 2 * (256 << 10);
    assert!(
        again < total - kept + in_flight + (64 << 10),
        "the rerun fetched {again} of {total} bytes"
    );
}

/// Reads `repo:tag` back with the ORAS Python client (scripts/support/oci_pull.py): every
/// layer at its ModelPack path, each checked against its digest. Returns the manifest.
fn pull_independently(host: &str, repo_tag: &str, out: &Path) -> serde_json::Value {
    let out = out.display().to_string();
    serde_json::from_str(&python("oci_pull.py", &[host, repo_tag, &out])).unwrap()
}

#[test]
fn an_upload_is_a_modelpack_others_read_and_a_rerun_sends_no_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("m");
    let mut want = model(&src);
    std::fs::create_dir_all(src.join("tok")).unwrap();
    std::fs::write(src.join("tok/tokenizer.json"), b"{}").unwrap();
    want.insert("tok/tokenizer.json".into(), sha256(b"{}"));
    let repo = unique("models/pushed");
    let front = Front::start(600.0, 600);
    let url = format!("oci://{}/{repo}:v1", front.host);
    let push = |home: &Path| {
        run(oci_loader(home, &front.host, Some(PASSWORD))
            .arg(&src)
            .arg(&url))
    };
    let out = push(tmp.path());
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let digest = stderr
        .lines()
        .find_map(|l| {
            l.split_once(" as sha256:")
                .map(|(_, d)| format!("sha256:{d}"))
        })
        .unwrap_or_else(|| panic!("no pushed digest: {stderr}"));
    let stats = front.stats();
    assert_eq!(stats["uploads"], 5, "4 files and the config: {stats}");
    assert_eq!(stats["manifest_puts"], 1);
    // An independent reader finds a ModelPack with every file at its path.
    let pulled = tmp.path().join("pulled");
    let manifest = pull_independently(&registry(), &format!("{repo}:v1"), &pulled);
    assert_eq!(tree(&pulled), want);
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.cncf.model.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.cncf.model.config.v1+json"
    );
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"application/vnd.cncf.model.weight.v1.raw"),
        "{types:?}"
    );
    assert!(
        types.contains(&"application/vnd.cncf.model.weight.config.v1.raw"),
        "{types:?}"
    );
    // The loader reads it back too, pinned to what the push printed.
    let dest = tmp.path().join("d");
    let out = run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
        .arg(format!("oci://{}/{repo}@{digest}", front.host))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), want);
    // Unchanged files: nothing is sent, and the manifest is the same bytes.
    let out = push(tmp.path());
    assert_eq!(out.status.code(), Some(0));
    let stats = front.stats();
    assert_eq!(stats["uploads"], 5, "a rerun sent blobs: {stats}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&digest));
    // One file changed: only it is sent, under the same tag.
    std::fs::write(src.join("config.json"), br#"{"model_type": "qwen"}"#).unwrap();
    want.insert("config.json".into(), sha256(br#"{"model_type": "qwen"}"#));
    assert_eq!(push(tmp.path()).status.code(), Some(0));
    assert_eq!(
        front.stats()["uploads"],
        7,
        "the changed file and the new config"
    );
    let again = tmp.path().join("again");
    pull_independently(&registry(), &format!("{repo}:v1"), &again);
    assert_eq!(tree(&again), want);
}

/// An ingress before the registry with nginx's default 1 MiB body limit: the monolithic PUT
/// of a 3 MiB file is refused (413), and the file goes as a chunked upload (PATCHes with
/// `Content-Range`, each to the Location the last returned), halving the chunk until the way
/// takes it; an independent reader then finds every file.
#[test]
fn an_upload_through_a_body_limit_goes_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("m");
    let want = model(&src);
    let repo = unique("models/chunked");
    let upstream = registry();
    let ingress = nginx::Nginx::start(tmp.path(), |port, _| {
        format!(
            r#"  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 1m;
    location / {{
      proxy_pass http://{upstream};
      proxy_set_header Host $http_host;
      proxy_http_version 1.1;
    }}
  }}"#
        )
    });
    let host = format!("127.0.0.1:{}", ingress.port);
    let out = run(oci_loader(tmp.path(), &host, None)
        // One blob at a time, so that the second meets the limit the first learnt.
        .args(["--concurrency", "1"])
        .arg(&src)
        .arg(format!("oci://{host}/{repo}:v1")));
    assert_eq!(out.status.code(), Some(0));
    let log = std::fs::read_to_string(ingress.root.join("access.log")).unwrap();
    let count = |method: &str, status: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"{method} ")) && l.contains(&format!("\" {status} ")))
            .count()
    };
    // Two shards over the limit: the first is refused whole and sent in halving chunks until
    // one goes through; the second goes in chunks of that size straight away.
    assert_eq!(count("PUT", "413"), 1, "{log}");
    assert_eq!(count("PATCH", "413"), 1, "{log}");
    assert!(count("PATCH", "202") >= 7, "{log}");
    let pulled = tmp.path().join("pulled");
    pull_independently(&registry(), &format!("{repo}:v1"), &pulled);
    assert_eq!(tree(&pulled), want);
}

#[test]
fn an_upload_with_a_wrong_password_is_exit_3_and_moves_no_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("m");
    model(&src);
    let repo = unique("models/refused");
    let front = Front::start(600.0, 600);
    let out = run(oci_loader(tmp.path(), &front.host, Some("not-it"))
        .arg(&src)
        .arg(format!("oci://{}/{repo}:v1", front.host)));
    let line = error_line(&out, 3);
    assert!(!line.contains("not-it"), "{line}");
    assert_eq!(front.stats()["manifest_puts"], 0);
}

/// The tag moves only once every blob is in: a push whose blob uploads keep failing (the
/// registry's storage answers 500) ends with exit 5 and leaves the tag on its old files.
#[test]
fn a_push_that_fails_midway_leaves_the_tag_where_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("m");
    let want = model(&src);
    let repo = unique("models/halfpush");
    let good = Front::start(600.0, 600);
    let url = |host: &str| format!("oci://{host}/{repo}:v1");
    let out = run(oci_loader(tmp.path(), &good.host, Some(PASSWORD))
        .arg(&src)
        .arg(url(&good.host)));
    assert_eq!(out.status.code(), Some(0));
    // A new version of a shard, pushed while the registry's storage fails.
    std::fs::write(
        src.join("model-00001-of-00002.safetensors"),
        data(9, 3 << 20),
    )
    .unwrap();
    let failing = Front::start_failing_uploads();
    let out = run(oci_loader(tmp.path(), &failing.host, Some(PASSWORD))
        .env("MODEL_LOADER_RETRIES", "2")
        .arg(&src)
        .arg(url(&failing.host)));
    let line = error_line(&out, 5);
    assert!(line.contains("model-00001-of-00002.safetensors"), "{line}");
    assert_eq!(failing.stats()["manifest_puts"], 0);
    assert!(failing.stats()["uploads"].as_u64().unwrap() >= 1);
    let pulled = tmp.path().join("pulled");
    pull_independently(&registry(), &format!("{repo}:v1"), &pulled);
    assert_eq!(tree(&pulled), want, "the tag moved");
}

/// `--p2p-proxy`: blob GETs go through the node's P2P proxy (a recording forward proxy in place
/// of Dragonfly's dfdaemon), ranged and named by their digest; manifests stay direct.
#[test]
fn blob_reads_go_through_the_p2p_proxy_named_by_their_digest() {
    use crate::support::fwdproxy::{FwdProxy, Mode};
    let (tmp, want, repo) = pushed("p2p");
    let proxy = FwdProxy::start(Mode::Forward);
    let dest = tmp.path().join("d");
    let out = run(oci_loader(tmp.path(), "none", None)
        .args(["--chunk-size", "1MiB", "--p2p-proxy", &proxy.url])
        .arg(format!("oci://{}/{repo}:v1", registry()))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), want);
    let seen = proxy.seen();
    assert!(seen.len() >= 3, "{seen:?}");
    let digests: Vec<String> = want.values().map(|d| format!("oci:sha256:{d}")).collect();
    for s in &seen {
        assert_eq!(s.method, "GET", "{s:?}");
        assert!(s.url.contains("/blobs/sha256:"), "not a blob GET: {s:?}");
        assert!(s.header("range").is_some(), "not ranged: {s:?}");
        assert_eq!(s.header("x-dragonfly-use-p2p"), Some("true"));
        let task = s
            .header("x-dragonfly-content-for-calculating-task-id")
            .unwrap();
        assert!(digests.iter().any(|d| d == task), "{task}");
    }
}

/// A KitOps ModelKit: its tar layers unpacked at DEST's top and the Kitfile (the config, in
/// its JSON form, which is valid YAML) beside them, as `kit unpack` leaves them.
#[test]
fn a_modelkit_lands_with_its_kitfile() {
    let tmp = tempfile::tempdir().unwrap();
    let kitfile =
        br#"{"manifestVersion":"1.0","package":{"name":"demo"},"model":{"path":"model"}}"#;
    let kitfile_path = tmp.path().join("kitfile.json");
    std::fs::write(&kitfile_path, kitfile).unwrap();
    let weights = data(5, 70_000);
    let repo = unique("models/kit");
    push_layers(
        &format!("{repo}:v1"),
        &format!(
            "application/vnd.kitops.modelkit.config.v1+json@{}",
            kitfile_path.display()
        ),
        &[
            (
                gzip(&tar_of(&[T::File("model/weights.bin", &weights)])),
                "application/vnd.kitops.modelkit.model.v1.tar+gzip",
                "",
            ),
            (
                tar_of(&[T::File("README.md", b"# demo")]),
                "application/vnd.kitops.modelkit.docs.v1.tar",
                "",
            ),
        ],
        tmp.path(),
    );
    let dest = tmp.path().join("d");
    load_plain(tmp.path(), &format!("{repo}:v1"), &dest);
    let kit = std::fs::read(dest.join("Kitfile")).unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&kit).unwrap();
    assert_eq!(parsed["package"]["name"], "demo");
    let mut want = sums(&[("model/weights.bin", &weights), ("README.md", b"# demo")]);
    want.insert("Kitfile".into(), sha256(&kit));
    assert_eq!(tree(&dest), want);
}

/// A Docker Model Runner model (`docker model push`, config v0.2: each file a layer of DMR's
/// own media type with the ModelPack path annotation; a folder as `…dir.tar`), as
/// docker/model-runner's `pkg/distribution/types/config.go` names them.
#[test]
fn a_docker_model_runner_model_lands_at_its_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = data(6, 300_000);
    let license = b"Apache-2.0".to_vec();
    let tokenizer = br#"{"model": {"type": "BPE"}}"#.to_vec();
    let repo = unique("ai/dmr");
    push_layers(
        &format!("{repo}:v1"),
        "application/vnd.docker.ai.model.config.v0.2+json",
        &[
            (
                gguf.clone(),
                "application/vnd.docker.ai.gguf.v3",
                "org.cncf.model.filepath=model.gguf",
            ),
            (
                license.clone(),
                "application/vnd.docker.ai.license",
                "org.cncf.model.filepath=LICENSE",
            ),
            (
                tar_of(&[T::File("tokenizer/tokenizer.json", &tokenizer)]),
                "application/vnd.docker.ai.dir.tar",
                "org.cncf.model.filepath=tokenizer",
            ),
        ],
        tmp.path(),
    );
    let dest = tmp.path().join("d");
    load_plain(tmp.path(), &format!("{repo}:v1"), &dest);
    let want = sums(&[
        ("model.gguf", &gguf),
        ("LICENSE", &license),
        ("tokenizer/tokenizer.json", &tokenizer),
    ]);
    assert_eq!(tree(&dest), want);
}

/// Credentials from a credential helper (`credHelpers`, and `credsStore` behind docker's empty
/// entry): a `docker-credential-*` program on PATH, asked with the registry on stdin.
#[test]
fn credentials_come_from_a_credential_helper_program() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, want, repo) = pushed("helper");
    let front = Front::start(600.0, 600);
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let helper = bin_dir.join("docker-credential-testhelper");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r host\n[ \"$host\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$host\"\n",
            front.host
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for config in [
        serde_json::json!({"credHelpers": {front.host.as_str(): "testhelper"}}),
        serde_json::json!({"auths": {front.host.as_str(): {}}, "credsStore": "testhelper"}),
    ] {
        let home = tempfile::tempdir().unwrap();
        let mut cmd = oci_loader(home.path(), &front.host, None);
        std::fs::write(home.path().join("docker/config.json"), config.to_string()).unwrap();
        let dest = home.path().join("d");
        let out = run(cmd
            .env("PATH", &path)
            .arg(format!("oci://{}/{repo}:v1", front.host))
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{config}");
        assert_eq!(tree(&dest), want);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("from docker-credential-testhelper"),
            "{stderr}"
        );
        assert!(!stderr.contains(PASSWORD));
    }
}

/// A registry that redirects blob GETs to its storage (distribution on S3 or GCS, Docker Hub,
/// GHCR): the `Range` goes along, the registry's `Authorization` does not (the spec: "MUST NOT
/// forward Authorization headers across host boundaries").
#[test]
fn a_redirect_to_storage_keeps_the_range_and_drops_the_credentials() {
    use crate::support::proxy::Proxy;
    let (tmp, want, repo) = pushed("redirected");
    let storage = Proxy::start(&format!("http://{}", registry()));
    let front = Front::start_with(600.0, 600, Some(&storage.url()));
    let dest = tmp.path().join("d");
    let out = run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
        .args(["--chunk-size", "1MiB"])
        .arg(format!("oci://{}/{repo}:v1", front.host))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&dest), want);
    let heads = storage.heads();
    assert!(heads.len() >= 4, "{heads:?}");
    let mut manifests = 0;
    for h in &heads {
        let lower = h.to_ascii_lowercase();
        if lower.contains("/manifests/") {
            // Redirected too (registry.k8s.io does): the Accept list kept.
            assert!(
                lower.contains("application/vnd.oci.image.manifest.v1+json"),
                "{h}"
            );
            manifests += 1;
        } else {
            assert!(
                lower.contains("\r\nrange: bytes="),
                "the Range was lost: {h}"
            );
        }
        assert!(
            !lower.contains("authorization"),
            "credentials reached the storage: {h}"
        );
    }
    assert_eq!(manifests, 1, "{heads:?}");
    assert!(front.blob_gets() >= 3, "the registry was asked first");
}

/// `--dry-run` of an artifact with archive layers names the layers (their files are known only
/// once fetched) and the plain files the patterns keep, in text and JSON, fetching no blob;
/// `--check` after a load is exit 0.
#[test]
fn dry_run_and_check_of_an_archive_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = unique("models/drytar");
    push_layers(
        &format!("{repo}:v1"),
        MODELPACK_CONFIG,
        &[
            (
                tar_of(&[T::File("w.bin", b"w")]),
                "application/vnd.cncf.model.weight.v1.tar",
                "",
            ),
            (
                b"{}".to_vec(),
                "application/vnd.cncf.model.weight.config.v1.raw",
                "org.cncf.model.filepath=config.json",
            ),
            (
                b"# r".to_vec(),
                "application/vnd.cncf.model.doc.v1.raw",
                "org.cncf.model.filepath=README.md",
            ),
        ],
        tmp.path(),
    );
    let front = Front::start(600.0, 600);
    let url = format!("oci://{}/{repo}:v1", front.host);
    let dest = tmp.path().join("d");
    let out = run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
        .args(["--dry-run", "--exclude", "README.md"])
        .arg(&url)
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("config.json") && !text.contains("README.md"),
        "{text}"
    );
    assert!(
        text.contains("unpack") && text.contains("layer 1"),
        "{text}"
    );
    let out = run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
        .args(["--dry-run", "--progress", "json"])
        .arg(&url)
        .arg(&dest));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().any(|l| l["action"] == "unpack"));
    assert_eq!(front.blob_gets(), 0, "a dry run fetched a blob");
    assert!(!dest.exists());
    assert_eq!(
        run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
            .arg(&url)
            .arg(&dest))
        .status
        .code(),
        Some(0)
    );
    let check = run(oci_loader(tmp.path(), &front.host, Some(PASSWORD))
        .arg("--check")
        .arg(&url)
        .arg(&dest));
    assert_eq!(check.status.code(), Some(0));
}

/// `cmd` in a mount namespace whose `/etc/hosts` sends `names` to 127.0.0.1: a cloud
/// registry's real name, so that the loader's own recognition of it is what is tested, while
/// every byte still goes to loopback (root, as scripts/test.sh runs).
fn resolving(names: &[&str], cmd: &Command, dir: &Path) -> Command {
    let hosts = dir.join("hosts");
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    text.push_str(&format!("\n127.0.0.1 {}\n", names.join(" ")));
    std::fs::write(&hosts, text).unwrap();
    let mut argv = vec![cmd.get_program().to_string_lossy().into_owned()];
    argv.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let hosts = hosts.display().to_string();
    let mut args = vec![
        "-m",
        "--",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        hosts.as_str(),
    ];
    args.extend(argv.iter().map(String::as_str));
    wrap("unshare", &args, cmd)
}

/// Amazon ECR: no auth file knows the registry, so its password comes from
/// `GetAuthorizationToken` (moto's ECR API) signed with the AWS credential chain, asked for
/// the account in the registry's name; the registry (behind TLS under its real name) asks for
/// Basic credentials as ECR does. Never sent to a registry whose certificate is not checked.
#[test]
fn an_ecr_registry_is_entered_with_a_token_from_the_aws_credential_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let want = model(&tmp.path().join("m"));
    let repo = unique("models/ecr");
    push("modelpack", &format!("{repo}:v1"), &tmp.path().join("m"));
    // moto answers `AWS:<registry id>-auth-token` for the registry id asked.
    let account = "210987654321";
    let front = Front::start_for("AWS", &format!("{account}-auth-token"), true);
    let host = format!("{account}.dkr.ecr.us-west-2.amazonaws.com");
    let tls = nginx::tls_front_for(
        tmp.path(),
        &format!("http://{}", front.host),
        &format!("DNS:{host}"),
    );
    let registry = format!("{host}:{}", tls.port);
    let ecr = |api: &str, insecure: &str, dest: &str| {
        let mut c = oci_loader(tmp.path(), "elsewhere.example", None);
        c.env("AWS_ENDPOINT_URL_ECR", api)
            .env("SSL_CERT_FILE", tls.root.join("ca.pem"))
            .env("MODEL_LOADER_OCI_INSECURE_REGISTRIES", insecure)
            .arg(format!("oci://{registry}/{repo}:v1"))
            .arg(tmp.path().join(dest));
        run(&mut resolving(&[&host], &c, tmp.path()))
    };
    // `*` is for the cluster's own registries: ECR's certificate is still checked.
    let out = ecr(&s3_endpoint(), "*", "d");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&tmp.path().join("d")), want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "user \"AWS\" from ECR GetAuthorizationToken for account {account}"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("auth-token"),
        "the password was printed: {stderr}"
    );
    assert_eq!(front.stats()["denied"], 0);
    assert!(front.blob_gets() >= 3);
    // Named insecure: the pod's identity is not sent there, and the registry refuses (exit 3).
    let out = ecr(&s3_endpoint(), &registry, "i");
    let line = error_line(&out, 3);
    assert!(line.contains("no credentials"), "{line}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("identity is not sent"));
    assert_eq!(front.stats()["denied"], 0, "credentials went to it");
    // ECR's API out of reach: a network failure naming it (exit 5), nothing landed.
    let out = ecr("http://127.0.0.1:9", "", "e");
    let line = error_line(&out, 5);
    assert!(line.contains("ECR GetAuthorizationToken"), "{line}");
    assert!(!tmp.path().join("e/.model-loader/manifest.json").exists());
}

/// Google Artifact Registry: the access token of the identity the loader has on Google Cloud
/// (here GKE's metadata server, at GCE_METADATA_HOST) is the password of `oauth2accesstoken`,
/// traded for a registry token as Artifact Registry's realm does.
#[test]
fn an_artifact_registry_is_entered_with_a_google_access_token() {
    let tmp = tempfile::tempdir().unwrap();
    let want = model(&tmp.path().join("m"));
    let repo = unique("proj/models/gar");
    push("modelpack", &format!("{repo}:v1"), &tmp.path().join("m"));
    let token = "ya29.from-mds-for-gar";
    let (mds, seen) = metadata_server(token);
    let envs = [
        ("GCE_METADATA_HOST", mds.as_str()),
        ("GCE_METADATA_IP", &mds),
    ];
    let (front, out) =
        load_from_google(tmp.path(), ("oauth2accesstoken", token), &repo, &envs, "d");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&tmp.path().join("d")), want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("user \"oauth2accesstoken\" from Google credentials"),
        "{stderr}"
    );
    assert!(!stderr.contains(token), "the token was printed: {stderr}");
    assert_eq!(front.stats()["tokens"], 1);
    let asked = seen.lock().unwrap().join("\n");
    assert!(asked.contains("cloud-platform"), "{asked}");
    // A service-account key file goes as Google documents for its registries: user
    // `_json_key_base64`, the file base64-encoded as the password (no token minted here).
    use base64::Engine as _;
    let key = tmp.path().join("sa.json");
    let key_text = r#"{"type": "service_account", "client_email": "loader@p.iam.gserviceaccount.com", "private_key": "not used"}"#;
    std::fs::write(&key, key_text).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(key_text);
    let key_path = key.display().to_string();
    let envs = [
        ("GOOGLE_APPLICATION_CREDENTIALS", key_path.as_str()),
        ("GCE_METADATA_HOST", "127.0.0.1:9"),
    ];
    let (front, out) = load_from_google(
        tmp.path(),
        ("_json_key_base64", &encoded),
        &repo,
        &envs,
        "k",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&tmp.path().join("k")), want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("user \"_json_key_base64\" from the key of service account"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&encoded[..20]),
        "the key was printed: {stderr}"
    );
    assert_eq!(front.stats()["tokens"], 1);
}

/// Loads `repo:v1` from `us-docker.pkg.dev` (sent to loopback, behind TLS for that name) whose
/// token service takes `gate` (user, password), with `envs`, into `dest`; the gate, for its
/// counts, and the loader's output.
fn load_from_google(
    tmp: &Path,
    gate: (&str, &str),
    repo: &str,
    envs: &[(&str, &str)],
    dest: &str,
) -> (Front, std::process::Output) {
    let host = "us-docker.pkg.dev";
    let front = Front::start_for(gate.0, gate.1, false);
    let tls = nginx::tls_front_for(
        &tmp.join(format!("tls-{dest}")),
        &format!("http://{}", front.host),
        &format!("DNS:{host}"),
    );
    let mut c = oci_loader(tmp, "elsewhere.example", None);
    c.envs(envs.iter().copied())
        .env("SSL_CERT_FILE", tls.root.join("ca.pem"))
        .arg(format!("oci://{host}:{}/{repo}:v1", tls.port))
        .arg(tmp.join(dest));
    let out = run(&mut resolving(&[host], &c, tmp));
    (front, out)
}
