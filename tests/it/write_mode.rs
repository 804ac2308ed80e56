//! The write mode chosen per DEST (`--write-mode auto`): buffered on filesystems where
//! O_DIRECT is refused or ignored (tmpfs, FUSE) and when the model fits in the memory free
//! here; direct when it does not, which a memory cgroup's limit decides, not the host's RAM.
//! Each run's log says which mode and why; the files are exact whichever it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::support::*;

fn model(name: &str) -> (String, BTreeMap<String, Vec<u8>>) {
    let b = bucket(name);
    let mut objects = BTreeMap::new();
    objects.insert("m/model.safetensors".to_string(), data(41, (3 << 20) + 77));
    objects.insert(
        "m/config.json".to_string(),
        b"{\"write\": \"mode\"}".to_vec(),
    );
    seed_s3(&s3_endpoint(), &b, &objects);
    (b, objects)
}

fn mode_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find(|l| l.starts_with("write mode: "))
        .unwrap_or_else(|| panic!("no write mode line: {stderr}"))
        .to_string()
}

/// A mount that is undone when dropped (lazily, so a test that failed mid-way leaves none).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str], at: &Path) -> Mount {
    std::fs::create_dir_all(at).unwrap();
    let st = Command::new(args[0])
        .args(&args[1..])
        .arg(at)
        .status()
        .unwrap_or_else(|e| panic!("{} runs (scripts/test.sh installs it): {e}", args[0]));
    assert!(st.success(), "{args:?} {}", at.display());
    Mount(at.to_path_buf())
}

/// tmpfs ignores O_DIRECT's meaning (and refuses the flag on older kernels): buffered, said so.
#[test]
fn on_tmpfs_the_load_is_buffered_and_exact() {
    let (b, objects) = model("wm-tmpfs");
    let tmp = tempfile::tempdir().unwrap();
    let _m = mount(
        &["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs"],
        &tmp.path().join("mem"),
    );
    loads_buffered_on(&b, &objects, &tmp.path().join("mem/model"), "tmpfs");
}

/// Loads `s3://b/m` into `dest`, on a filesystem named `fs`: exit 0, buffered said, exact files.
fn loads_buffered_on(b: &str, objects: &BTreeMap<String, Vec<u8>>, dest: &Path, fs: &str) {
    let out = run(loader(&s3_endpoint(), dest.parent().unwrap())
        .arg(format!("s3://{b}/m"))
        .arg(dest));
    assert_eq!(out.status.code(), Some(0));
    let line = mode_line(&out);
    let want = format!("write mode: buffered (DEST is on {fs}");
    assert!(line.starts_with(&want), "{line}");
    assert_eq!(tree(dest), expected(objects, "m/"));
}

/// A FUSE filesystem (bindfs, a passthrough of a local folder, as gcsfuse or JuiceFS mounts
/// look to the loader): buffered, and the files land exact in the folder beneath it too.
#[test]
fn on_fuse_the_load_is_buffered_and_exact() {
    let (b, objects) = model("wm-fuse");
    let tmp = tempfile::tempdir().unwrap();
    let under = tmp.path().join("under");
    std::fs::create_dir_all(&under).unwrap();
    let _m = mount(
        &["bindfs", under.to_str().unwrap()],
        &tmp.path().join("fuse"),
    );
    loads_buffered_on(&b, &objects, &tmp.path().join("fuse/model"), "fuse");
    assert_eq!(tree(&under.join("model")), expected(&objects, "m/"));
    // Asked for, O_DIRECT is tried there too, and the files are still exact.
    let dest = tmp.path().join("fuse/direct");
    let out = run(loader(&s3_endpoint(), tmp.path())
        .args(["--write-mode", "direct"])
        .arg(format!("s3://{b}/m"))
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert!(mode_line(&out).starts_with("write mode: direct (--write-mode direct"));
    assert_eq!(tree(&dest), expected(&objects, "m/"));
}

/// A memory cgroup, v1 (this machine) or v2 (current Kubernetes nodes), removed when dropped.
struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    fn limited(bytes: u64) -> Cgroup {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let root = if v2 {
            "/sys/fs/cgroup"
        } else {
            "/sys/fs/cgroup/memory"
        };
        let dir = PathBuf::from(format!(
            "{root}/model-loader-test-{:08x}",
            fastrand::u32(..)
        ));
        std::fs::create_dir(&dir).expect("a memory cgroup (the tests run as root)");
        let cg = Cgroup { dir, v2 };
        let limit = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cg.dir.join(limit), bytes.to_string()).unwrap();
        cg
    }

    /// `cmd` run inside the cgroup: a shell joins it, then execs the loader.
    fn wrap(&self, cmd: &Command) -> Command {
        let mut argv = vec![cmd.get_program().to_string_lossy().into_owned()];
        argv.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            self.dir.display()
        );
        let mut args = vec!["-c", script.as_str(), "sh"];
        args.extend(argv.iter().map(String::as_str));
        wrap("sh", &args, cmd)
    }

    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let control = std::fs::read_to_string(self.dir.join(file)).unwrap();
        control
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    /// The loader has exited (its cgroup is empty), so the folder goes.
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("could not remove the cgroup {}: {e}", self.dir.display());
        }
    }
}

/// The share of `path`'s bytes in the page cache (util-linux `fincore`).
fn resident(path: &Path) -> f64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    let res: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    res / std::fs::metadata(path).unwrap().len() as f64
}

/// A 2 GiB model into a container limited to 256 MiB: the limit, not the host's free memory,
/// makes the mode direct; exit 0, exact files, no OOM kill. Forced buffered there, the page
/// cache is reclaimed under the limit and the load still completes. Wall times are printed
/// beside the unlimited run's (this is not a timed test: the bench measures speed).
#[test]
fn a_2_gib_model_in_a_256_mib_memory_cgroup_loads_without_oom() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut want = BTreeMap::new();
    for i in 0..2u64 {
        let name = format!("shard-{i}.bin");
        want.insert(name.clone(), write_gib(&src.join(&name), i));
    }
    let (_, b, prefix) = crate::promises::s3s(tmp.path());
    let url = format!("s3://{b}/{prefix}");
    let s3s = || crate::promises::s3s(tmp.path()).0;
    assert_eq!(
        run(s3s().arg(&src).arg(&url)).status.code(),
        Some(0),
        "upload"
    );
    std::fs::remove_dir_all(&src).unwrap();

    let mut times = Vec::new();
    for (name, limited, extra) in [
        ("unlimited", false, None),
        ("256 MiB limit", true, None),
        (
            "256 MiB limit, --write-mode buffered",
            true,
            Some("buffered"),
        ),
    ] {
        let dest = tmp.path().join(name.replace([' ', ','], "-"));
        let mut cmd = s3s();
        if let Some(m) = extra {
            cmd.args(["--write-mode", m]);
        }
        cmd.arg(&url).arg(&dest);
        let cg = limited.then(|| Cgroup::limited(256 << 20));
        let mut cmd = match &cg {
            Some(cg) => cg.wrap(&cmd),
            None => cmd,
        };
        let t = Instant::now();
        let out = run(&mut cmd);
        times.push(format!("{name}: {:.1} s", t.elapsed().as_secs_f64()));
        assert_eq!(out.status.code(), Some(0), "{name}");
        let line = mode_line(&out);
        match (limited, extra) {
            (false, _) => assert!(
                line.starts_with("write mode: buffered (the model"),
                "{line}"
            ),
            (true, None) => assert!(line.starts_with("write mode: direct (the model"), "{line}"),
            (true, Some(_)) => assert!(
                line.starts_with("write mode: buffered (--write-mode"),
                "{line}"
            ),
        }
        if let Some(cg) = &cg {
            assert_eq!(cg.oom_kills(), 0, "{name}: OOM-killed");
        }
        // What the mode is for: buffered writes leave the model in the page cache for the
        // engine, direct ones leave it out (so O_DIRECT did happen).
        let cached = resident(&dest.join("shard-1.bin"));
        match (limited, extra) {
            (false, _) => assert!(cached > 0.9, "{name}: {cached:.2} of the file cached"),
            (true, None) => assert!(cached < 0.1, "{name}: {cached:.2} of the file cached"),
            (true, Some(_)) => {}
        }
        assert_eq!(tree(&dest), want, "{name}");
        std::fs::remove_dir_all(&dest).unwrap();
    }
    eprintln!("2 GiB load, wall time: {}", times.join("; "));
}

/// A 1 GiB file of varied bytes, written without holding it in memory; returns its sha256.
fn write_gib(path: &Path, seed: u64) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let block = data(seed + 900, 1 << 20);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = Sha256::new();
    for i in 0..1024u64 {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        h.update(&b);
        f.write_all(&b).unwrap();
    }
    f.flush().unwrap();
    hex::encode(h.finalize())
}
