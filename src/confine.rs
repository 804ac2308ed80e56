//! A folder handle that cannot be led out of itself.
//!
//! Every create, write, rename and removal the loader makes inside DEST (and every read of an
//! upload's SRC_DIR) goes through a [`Dir`]: paths are resolved one component at a time with
//! `openat(…, O_NOFOLLOW | O_DIRECTORY)` from a descriptor of the root, so a symlink anywhere
//! below the root — there from the start or swapped in while the run is in progress — is
//! refused at the moment of the operation, not at a check made earlier. `RelPath` already
//! refuses `..`, so component-wise resolution is what `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` would do, and works on kernels and seccomp profiles without openat2.
//!
//! The root itself may be a symlink (the user named it); nothing below it may be.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::error::{Error, Kind, Result};

/// An open folder; operations take names or `/`-separated relative paths below it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages only.
    path: PathBuf,
}

/// What a symlink (or a file where a folder should be) met on the way looks like to the user.
fn not_beneath(path: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => Error::new(
            Kind::Local,
            format!(
                "refusing to follow {}: it is a symlink or not a folder, and following it could reach outside DEST; remove it and rerun",
                path.display()
            ),
        )
        .with_source(e),
        _ => Error::local("open the folder", path, e),
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Dir {
    /// Opens `path` (following a symlink at `path` itself, which the user chose).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sub-folder `rel` (`a/b/c`), never through a symlink. With `create`, missing
    /// folders are made and their names are returned (relative to `self`), so the caller can
    /// sync their parents before vouching for what they hold.
    pub fn subdir(&self, rel: &str, create: bool) -> Result<(Dir, Vec<String>)> {
        let mut cur = Dir {
            fd: self
                .fd
                .try_clone()
                .map_err(|e| Error::local("open", &self.path, e))?,
            path: self.path.clone(),
        };
        let mut made = Vec::new();
        let mut walked = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(comp);
            let path = cur.path.join(comp);
            let fd = match rustix::fs::openat(&cur.fd, comp, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur.fd, comp, Mode::from_raw_mode(0o775)) {
                        Ok(()) => made.push(walked.clone()),
                        Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(Error::local("create the folder", &path, e.into())),
                    }
                    rustix::fs::openat(&cur.fd, comp, DIR_FLAGS, Mode::empty())
                        .map_err(|e| not_beneath(&path, e.into()))?
                }
                Err(e) => return Err(not_beneath(&path, e.into())),
            };
            cur = Dir { fd, path };
        }
        Ok((cur, made))
    }

    /// Opens the file `name` in this folder (never a symlink).
    pub fn open_file(&self, name: &str, flags: OFlags, mode: u32) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// Reads the whole (small) file `name`.
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut f = self.open_file(name, OFlags::RDONLY, 0)?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Metadata of `name` itself (a symlink is reported as one, not followed).
    pub fn stat(&self, name: &str) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::statat(
            &self.fd,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Renames `from` in this folder to `to` in `dest` (a symlink at `to` is replaced, never
    /// followed).
    pub fn rename(&self, from: &str, dest: &Dir, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, from, &dest.fd, to)?)
    }

    /// Hard-links `from` to `to` in this folder; fails if `to` exists.
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::linkat(
            &self.fd,
            from,
            &self.fd,
            to,
            AtFlags::empty(),
        )?)
    }

    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?)
    }

    /// Names in this folder that are UTF-8 (every name the loader itself creates is).
    pub fn entries(&self) -> io::Result<Vec<String>> {
        Ok(self.entries_and_others()?.0)
    }

    /// Names in this folder: the UTF-8 ones, and the others shown lossily. A name that is not
    /// UTF-8 cannot be opened again from its lossy form, so callers skip it (with a word).
    pub fn entries_and_others(&self) -> io::Result<(Vec<String>, Vec<String>)> {
        let fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        let mut dir = rustix::fs::Dir::read_from(fd)?;
        let (mut names, mut others) = (Vec::new(), Vec::new());
        while let Some(e) = dir.read() {
            let e = e?;
            let raw = e.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            match std::str::from_utf8(raw) {
                Ok(name) => names.push(name.to_string()),
                Err(_) => others.push(String::from_utf8_lossy(raw).into_owned()),
            }
        }
        Ok((names, others))
    }

    /// Makes renames and removals in this folder durable.
    pub fn sync(&self) -> Result<()> {
        rustix::fs::fsync(&self.fd)
            .map_err(|e| Error::local("sync the folder", &self.path, e.into()))
    }
}

/// Splits `a/b/c` into (`a/b`, `c`).
pub fn split_parent(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_below_the_root_are_refused_and_folders_created() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let d = Dir::open(&root).unwrap();
        let e = d.subdir("link/x", true).unwrap_err();
        assert_eq!(e.kind(), Kind::Local);
        assert!(e.message().contains("symlink"), "{}", e.message());
        assert!(!outside.join("x").exists());
        let (sub, made) = d.subdir("a/b", true).unwrap();
        assert_eq!(made, ["a", "a/b"]);
        assert!(sub.path().ends_with("a/b"));
        let (_, made) = d.subdir("a/b", true).unwrap();
        assert!(made.is_empty());
        // A file that is a symlink is not opened either.
        std::fs::write(outside.join("f"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("f")).unwrap();
        assert!(d.read("f").is_err());
        assert!(d.stat("f").is_ok());
    }
}
