//! Files the source stores encoded and that land decoded: GCS objects uploaded with
//! `contentEncoding: gzip` (`gsutil cp -Z`). Their listed size and checksums are of the stored
//! bytes, so those are fetched (ranged, resumable) and verified as they are; then, as gsutil
//! and `gcloud storage` do, decompressed locally. The decoded file is hashed (SHA-256) as it is
//! written, which the manifest records so `--verify` can re-hash what landed.

use std::io::{BufRead, BufReader, Read, Write};

use sha2::{Digest, Sha256};

use super::manifest::Decoded;
use super::writer::PartFile;
use crate::error::{Error, Kind, Result};

/// Read buffer: the decoder's window is 32 KiB; a larger read keeps system calls few without
/// adding much to the memory of each file being finished.
const BUF: usize = 64 * 1024;

/// Decompresses the verified part file `stored` (`stored_size` bytes) into `out`, a file
/// created afresh, at most `room` bytes (the free space: a small object that expands without
/// end is stopped there, not when the volume is full), calling `fenced` every few MiB (the
/// lease). Concatenated gzip members decode as one file, as gunzip does; an empty object is an
/// empty file.
pub fn gunzip(
    stored: &PartFile,
    stored_size: u64,
    out: &mut std::fs::File,
    room: u64,
    shown: &str,
    fenced: &dyn Fn() -> Result<()>,
) -> Result<Decoded> {
    let path = stored.path();
    let mut reader = BufReader::with_capacity(
        BUF,
        Positional {
            part: stored,
            at: 0,
        },
    );
    let has_bytes = stored_size > 0
        && !reader
            .fill_buf()
            .map_err(|e| Error::local("read back", path, e).context(shown))?
            .is_empty();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    if has_bytes {
        let mut gz = flate2::bufread::MultiGzDecoder::new(reader);
        let mut buf = vec![0u8; BUF];
        let mut next_fence = 0u64;
        loop {
            let n = match gz.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                // The decoder's own errors carry no OS error number.
                Err(e) if e.raw_os_error().is_none() => return Err(not_gzip(shown, &e)),
                Err(e) => return Err(Error::local("read back", path, e).context(shown)),
            };
            size += n as u64;
            if size > room {
                return Err(no_room(shown, stored_size, room));
            }
            if size >= next_fence {
                fenced()?;
                next_fence = size + (64 << 20);
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| Error::local("write the decoded file of", path, e).context(shown))?;
        }
    }
    Ok(Decoded {
        from: "gzip".into(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// The stored bytes passed the listed checksum (or, without one, their size), so they are
/// what the bucket holds: bytes that do not decode are the object's own (metadata that says
/// gzip over other bytes, or a truncated upload). Refused, not fetched again.
fn not_gzip(shown: &str, e: &std::io::Error) -> Error {
    Error::new(
        Kind::Usage,
        format!(
            "{shown}: the bucket says it is stored gzip-encoded (contentEncoding: gzip), but \
             its stored bytes do not decode as gzip ({e}): fix the object's metadata (gsutil \
             setmeta -h Content-Encoding:) or upload it again, or --exclude it"
        ),
    )
}

fn no_room(shown: &str, stored: u64, room: u64) -> Error {
    Error::new(
        Kind::Local,
        format!(
            "{shown}: stored gzip-encoded in {stored} bytes, it decodes to more than the {room} \
             bytes free in DEST: make room (or --exclude it); its stored bytes are kept, so a \
             rerun only decodes"
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
    use crate::confine::Dir;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(stored: &[u8], room: u64) -> (Result<Decoded>, Vec<u8>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let part = PartFile::open(&dir, "s.part", stored.len() as u64, false, "t", true).unwrap();
        if !stored.is_empty() {
            part.write_at(stored, 0).unwrap();
        }
        let out_path = tmp.path().join("out");
        let mut out = std::fs::File::create(&out_path).unwrap();
        let fenced = || Ok(());
        let r = gunzip(
            &part,
            stored.len() as u64,
            &mut out,
            room,
            "gs://b/f",
            &fenced,
        );
        (r, std::fs::read(&out_path).unwrap())
    }

    #[test]
    fn gzip_members_decode_into_one_hashed_file() {
        let plain: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut stored = gz(&plain[..1_000_000]);
        stored.extend(gz(&plain[1_000_000..]));
        let (d, bytes) = decode(&stored, u64::MAX);
        let d = d.unwrap();
        assert_eq!(d.size, plain.len() as u64);
        assert_eq!(d.sha256, hex::encode(Sha256::digest(&plain)));
        assert_eq!(bytes, plain);
        let (d, bytes) = decode(&[], u64::MAX);
        assert_eq!((d.unwrap().size, bytes.len()), (0, 0), "an empty object");
    }

    #[test]
    fn other_bytes_are_refused_and_expansion_stops_at_the_free_space() {
        let (e, _) = decode(b"plain text, not gzip", u64::MAX);
        let e = e.unwrap_err();
        assert_eq!(e.kind(), Kind::Usage, "not fetched again");
        assert!(
            e.message().contains("do not decode as gzip"),
            "{}",
            e.message()
        );
        // 64 MiB of zeros is a few dozen KiB stored.
        let stored = gz(&vec![0u8; 64 << 20]);
        let (e, written) = decode(&stored, 1 << 20);
        let e = e.unwrap_err();
        assert_eq!(e.kind(), Kind::Local);
        assert!(
            e.message().contains("decodes to more than"),
            "{}",
            e.message()
        );
        assert!(
            written.len() <= 1 << 20,
            "stopped at the room: {}",
            written.len()
        );
    }
}
