//! What an upload sends: the regular files below SRC_DIR, reached through folder handles (no
//! symlink followed anywhere), each opened once.

use rustix::fs::OFlags;

use crate::confine::{split_parent, Dir};
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;
use crate::remote::body::FileRange;
use crate::url::{RelPath, STATE_DIR};

/// Opens `rel` below `root` (no symlink anywhere on the way) as a whole-file range; refuses a
/// file that is no longer a regular file of the size the walk saw.
pub(super) fn open_range(root: &Dir, rel: &RelPath, len: u64) -> Result<FileRange> {
    let path = root.path().join(rel.as_str());
    let (parent, base) = split_parent(rel.as_str());
    let (dir, _) = root.subdir(parent, false)?;
    // O_NONBLOCK: a FIFO swapped in since the walk must not block the open for ever (it is
    // then refused as no regular file below).
    let file = dir
        .open_file(base, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, 0)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::new(
                Kind::Local,
                format!(
                    "{} became a symlink during the upload; refusing to follow it",
                    path.display()
                ),
            ),
            _ => Error::local("open", &path, e),
        })?;
    let md = file
        .metadata()
        .map_err(|e| Error::local("stat", &path, e))?;
    if !md.is_file() || md.len() != len {
        return Err(Error::new(
            Kind::Local,
            format!(
                "{} changed during the upload (now {} bytes, was {len}); rerun once it is stable",
                path.display(),
                md.len()
            ),
        ));
    }
    Ok(FileRange::whole(file, path, len))
}

/// Every regular file under `root` (the loader's state folder excluded), as safe relative
/// paths, read through folder handles: a symlink is skipped (with a warning), never followed.
pub(super) fn walk(root: &Dir, reporter: &dyn Reporter) -> Result<Vec<(RelPath, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel_dir) = stack.pop() {
        let (dir, _) = root.subdir(&rel_dir, false)?;
        let (names, others) = dir
            .entries_and_others()
            .map_err(|e| Error::local("read the folder", dir.path(), e))?;
        for name in others {
            reporter.warn(&format!(
                "skipping {}: its name is not UTF-8, which no object key can hold",
                dir.path().join(name).display()
            ));
        }
        for name in names {
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            // The state folder of DIR, and of any DEST loaded inside it (a nested pair).
            if name == STATE_DIR {
                continue;
            }
            let p = dir.path().join(&name);
            let st = dir.stat(&name).map_err(|e| Error::local("stat", &p, e))?;
            match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                rustix::fs::FileType::Symlink => {
                    reporter.warn(&format!("skipping the symlink {}", p.display()))
                }
                rustix::fs::FileType::Directory => stack.push(rel),
                rustix::fs::FileType::RegularFile => {
                    out.push((RelPath::new(&rel)?, st.st_size as u64))
                }
                _ => reporter.warn(&format!("skipping {}: not a regular file", p.display())),
            }
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::QuietReporter;

    #[test]
    fn a_fifo_swapped_in_and_a_name_that_is_not_utf8_never_stop_the_upload() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("w.bin"), b"weights").unwrap();
        std::fs::write(
            tmp.path().join(std::ffi::OsStr::from_bytes(b"bad\xff.bin")),
            b"x",
        )
        .unwrap();
        let root = Dir::open(tmp.path()).unwrap();
        let files = walk(&root, &QuietReporter).unwrap();
        let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["w.bin"], "the non-UTF-8 name is skipped, not fatal");
        // w.bin becomes a FIFO after the walk: refused at once, not blocked on for ever.
        std::fs::remove_file(tmp.path().join("w.bin")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tmp.path().join("w.bin").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let root2 = Dir::open(tmp.path()).unwrap();
        std::thread::spawn(move || {
            let r = open_range(&root2, &RelPath::new("w.bin").unwrap(), 7);
            tx.send(r.is_err()).unwrap();
        });
        let refused = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(refused, Ok(true), "opening a FIFO must not block");
    }

    #[test]
    fn symlinks_in_src_dir_are_skipped_and_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"do not upload").unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/w.bin"), b"weights").unwrap();
        std::os::unix::fs::symlink(&outside, src.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), src.join("link.bin")).unwrap();
        let root = Dir::open(&src).unwrap();
        let files = walk(&root, &QuietReporter).unwrap();
        let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["sub/w.bin"]);
        assert!(open_range(&root, &RelPath::new("link.bin").unwrap(), 13).is_err());
        assert!(open_range(&root, &RelPath::new("linkdir/secret").unwrap(), 13).is_err());
    }

    #[test]
    fn a_file_swapped_for_a_symlink_after_opening_is_still_read_from_the_original() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("w.bin"), b"original").unwrap();
        std::fs::write(tmp.path().join("evil"), b"EVILEVIL").unwrap();
        let root = Dir::open(&src).unwrap();
        let r = open_range(&root, &RelPath::new("w.bin").unwrap(), 8).unwrap();
        std::fs::remove_file(src.join("w.bin")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("evil"), src.join("w.bin")).unwrap();
        use md5::Digest;
        assert_eq!(
            r.md5().unwrap(),
            <[u8; 16]>::from(md5::Md5::digest(b"original"))
        );
        assert_eq!(
            r.slice(4, 4).crc32c().unwrap(),
            crc32c::crc32c(b"inal"),
            "slices read the same open file"
        );
        // A file that changed size since the walk is refused.
        std::fs::remove_file(src.join("w.bin")).unwrap();
        std::fs::write(src.join("w.bin"), b"longer now").unwrap();
        let e = open_range(&root, &RelPath::new("w.bin").unwrap(), 8).unwrap_err();
        assert!(
            e.message().contains("changed during the upload"),
            "{}",
            e.message()
        );
    }
}
