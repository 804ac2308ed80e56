//! Files the source stores encoded and that land decoded: GCS objects uploaded with
//! `contentEncoding: gzip` (`gsutil cp -Z`). Their listed size and checksums are of the stored
//! bytes, so those are fetched (ranged, resumable) and verified as they are; then, as gsutil
//! and `gcloud storage` do, decompressed locally. The decoded file is hashed (SHA-256) as it is
//! written, which the manifest records so `--verify` can re-hash what landed.

use std::io::{BufReader, BufWriter, Read, Write};

use rustix::fs::OFlags;
use sha2::{Digest, Sha256};

use super::manifest::Decoded;
use super::writer::PartFile;
use crate::confine::Dir;
use crate::error::{Error, Kind, Result};

/// Read and write buffers: the decoder's window is 32 KiB, so a few hundred KiB keep the
/// system calls large without adding to the loader's memory per file being finished.
const BUF: usize = 256 * 1024;

/// Decompresses the verified part file `stored` into `name` in `parts` (created afresh,
/// synced when `fsync`). Several concatenated gzip members decode as one file, as gunzip does.
pub fn gunzip(
    stored: &PartFile,
    parts: &Dir,
    name: &str,
    shown: &str,
    fsync: bool,
) -> Result<Decoded> {
    let path = parts.path().join(name);
    match parts.remove_file(name) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::local("remove the old decoded file", &path, e).context(shown))
        }
        _ => {}
    }
    let out = parts
        .open_file(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o664)
        .map_err(|e| Error::local("create the decoded file", &path, e).context(shown))?;
    let result = copy_decoded(stored, &out, &path, shown, fsync);
    if result.is_err() {
        let _ = parts.remove_file(name);
    }
    result
}

fn copy_decoded(
    stored: &PartFile,
    out: &std::fs::File,
    path: &std::path::Path,
    shown: &str,
    fsync: bool,
) -> Result<Decoded> {
    let reader = BufReader::with_capacity(
        BUF,
        Positional {
            part: stored,
            at: 0,
        },
    );
    let mut gz = flate2::read::MultiGzDecoder::new(reader);
    let mut w = BufWriter::with_capacity(BUF, out);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut size = 0u64;
    loop {
        let n = match gz.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // The decoder's own errors carry no OS error number.
            Err(e) if e.raw_os_error().is_none() => return Err(not_gzip(shown).with_source(e)),
            Err(e) => return Err(Error::local("read back", stored.path(), e).context(shown)),
        };
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])
            .map_err(|e| Error::local("write the decoded file", path, e).context(shown))?;
        size += n as u64;
    }
    w.flush()
        .map_err(|e| Error::local("write the decoded file", path, e).context(shown))?;
    if fsync {
        out.sync_all()
            .map_err(|e| Error::local("sync the decoded file", path, e).context(shown))?;
    }
    Ok(Decoded {
        from: "gzip".into(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// The stored bytes passed the listed checksum, so they are what the bucket holds: a
/// decoding failure is the object's own (metadata that says gzip over other bytes).
fn not_gzip(shown: &str) -> Error {
    Error::new(
        Kind::Corrupt,
        format!(
            "{shown}: the bucket says it is stored gzip-encoded (contentEncoding: gzip), but \
             its bytes, which match the stored checksum, are not gzip: fix the object's \
             metadata (gsutil setmeta -h Content-Encoding:), or --exclude it"
        ),
    )
}

/// Reads a part file from the start with positional reads (its descriptor's offset is not
/// used by anyone else, but positional reads make that not matter).
struct Positional<'a> {
    part: &'a PartFile,
    at: u64,
}

impl Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.part.file().read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn part_with(dir: &Dir, bytes: &[u8]) -> PartFile {
        let p = PartFile::open(dir, "s.part", bytes.len() as u64, false, "t").unwrap();
        p.write_at(bytes, 0).unwrap();
        p
    }

    #[test]
    fn gzip_members_decode_into_one_hashed_file_and_other_bytes_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let plain: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut stored = gz(&plain[..1_000_000]);
        stored.extend(gz(&plain[1_000_000..]));
        let part = part_with(&dir, &stored);
        let d = gunzip(&part, &dir, "s.decoded", "gs://b/f", false).unwrap();
        assert_eq!(d.size, plain.len() as u64);
        assert_eq!(d.sha256, hex::encode(Sha256::digest(&plain)));
        assert_eq!(std::fs::read(tmp.path().join("s.decoded")).unwrap(), plain);

        let part = part_with(&dir, b"plain text, not gzip");
        let e = gunzip(&part, &dir, "s.decoded", "gs://b/f", false).unwrap_err();
        assert_eq!(e.kind(), Kind::Corrupt);
        assert!(e.message().contains("not gzip"), "{}", e.message());
        assert!(
            !tmp.path().join("s.decoded").exists(),
            "nothing left behind"
        );
    }
}
