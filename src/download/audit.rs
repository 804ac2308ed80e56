//! The offline modes: `--check` (is DEST a complete load of SRC, by its manifest and sizes?)
//! and `--verify` (do DEST's bytes still hash to what the manifest recorded?).

use crate::cli::Config;
use crate::error::{self, Error};
use crate::remote as source;
use crate::url::RelPath;

use super::manifest::Manifest;
use super::state;

/// Offline: does DEST hold a complete copy of SRC, as its manifest records it? Returns the
/// reason when it does not.
pub fn check(cfg: &Config) -> Result<String, String> {
    let m = manifest_for(cfg)?;
    let want = cfg.source.to_string();
    let Ok(root) = crate::confine::Dir::open(&cfg.dest) else {
        return Err(format!("{} cannot be opened", cfg.dest.display()));
    };
    for f in &m.files {
        let Ok(p) = RelPath::new(&f.path) else {
            return Err(format!("the manifest names an unsafe path {:?}", f.path));
        };
        match state::size_beneath(&root, &p) {
            Some(len) if len == f.landed_size() => {}
            Some(len) => {
                return Err(format!(
                    "{p} is {len} bytes, the manifest says {}",
                    f.landed_size()
                ))
            }
            None => return Err(format!("{p} is missing (or not a regular file below DEST)")),
        }
    }
    Ok(format!(
        "{} holds a complete copy of {want}: {}, loaded {}",
        cfg.dest.display(),
        crate::progress::count(m.files.len(), "file"),
        m.completed_at
    ))
}

/// Why `--verify` did not pass.
pub enum AuditFailure {
    /// DEST is not a complete load of SRC (no manifest, another source): exit 1, as `--check`.
    Incomplete(String),
    /// Files differ from what the manifest recorded: exit 6.
    Mismatch(Error),
}

/// `--verify`: re-hashes every file the manifest lists (through no-symlink handles) and
/// reports each one that differs.
pub fn audit(cfg: &Config) -> Result<String, AuditFailure> {
    use crate::confine::{split_parent, Dir};
    let m = manifest_for(cfg).map_err(AuditFailure::Incomplete)?;
    let root = Dir::open(&cfg.dest)
        .map_err(|e| AuditFailure::Incomplete(format!("{}: {e}", cfg.dest.display())))?;
    let (mut bad, mut hashed) = (Vec::new(), 0usize);
    for f in &m.files {
        let Ok(p) = RelPath::new(&f.path) else {
            bad.push(format!("{:?}: not a safe path", f.path));
            continue;
        };
        let (parent, base) = split_parent(p.as_str());
        let opened = root
            .subdir(parent, false)
            .ok()
            .and_then(|(d, _)| d.open_file(base, rustix::fs::OFlags::RDONLY, 0).ok());
        let Some(file) = opened else {
            bad.push(format!("{p}: missing (or reached through a symlink)"));
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len != f.landed_size() {
            bad.push(format!(
                "{p}: {len} bytes, the manifest says {}",
                f.landed_size()
            ));
            continue;
        }
        // A decoded file is re-hashed against what it was when it landed; the listed
        // checksum is of the stored (encoded) bytes.
        let want = match &f.decoded {
            Some(d) => format!("sha256:{}", d.sha256),
            None => f.checksum.clone().unwrap_or_default(),
        };
        let Some(want) = source::Checksum::from_tagged(&want) else {
            if f.decoded.is_some() {
                bad.push(format!(
                    "{p}: the manifest's sha256 of the decoded file is unreadable"
                ));
            }
            continue; // size only, as when it was loaded
        };
        hashed += 1;
        let path = cfg.dest.join(p.as_str());
        match crate::checksum::hash_file(&file, &path, &want, f.landed_size()) {
            Ok(got) if got == want => {}
            Ok(got) => bad.push(format!(
                "{p}: {} {} expected, {} found",
                want.algorithm(),
                want.hex(),
                got.hex()
            )),
            Err(e) => bad.push(format!("{p}: {}", e.message())),
        }
    }
    if bad.is_empty() {
        return Ok(format!(
            "{} matches its manifest: {}, {hashed} re-hashed, {} by size only",
            cfg.dest.display(),
            crate::progress::count(m.files.len(), "file"),
            m.files.len() - hashed
        ));
    }
    for b in &bad {
        eprintln!("mismatch: {b}");
    }
    Err(AuditFailure::Mismatch(Error::new(
        error::Kind::Corrupt,
        format!(
            "{} of {} files in {} do not match the manifest ({}); remove them and rerun the load (or rerun with --force) to fetch them again",
            bad.len(),
            m.files.len(),
            cfg.dest.display(),
            bad[0]
        ),
    )))
}

/// The manifest at DEST, if it records `cfg.source`.
fn manifest_for(cfg: &Config) -> Result<Manifest, String> {
    let Some(m) = state::read_manifest(&cfg.dest) else {
        return Err(format!(
            "{} has no manifest: not loaded, or not finished",
            cfg.dest.display()
        ));
    };
    let want = cfg.source.to_string();
    if !cfg.source.same_source(&m.source) {
        return Err(format!(
            "{} holds {}, not {want}",
            cfg.dest.display(),
            m.source
        ));
    }
    Ok(m)
}
