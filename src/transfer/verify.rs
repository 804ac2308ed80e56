//! Checks a finished part file against the checksum the listing gave.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use md5::{Digest, Md5};

use crate::error::{Error, Kind, Result};
use crate::source::Checksum;

/// Hashes `path` and compares it with `want`. Reads in 1 MiB blocks: the file was just written,
/// so this reads the page cache, not the disk.
pub fn verify_file(path: &Path, want: &Checksum, shown: &str) -> Result<()> {
    let got = match want {
        Checksum::Md5(_) => {
            let mut f = File::open(path).map_err(|e| Error::local("read back", path, e))?;
            let mut h = Md5::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| Error::local("read back", path, e))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Checksum::Md5(h.finalize().into())
        }
    };
    if &got != want {
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "{shown}: {} mismatch (expected {}, got {}); the partial file was discarded, rerun to fetch it again",
                want.algorithm(),
                want.hex(),
                got.hex()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_match_and_mismatch() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), b"The quick brown fox jumps over the lazy dog").unwrap();
        let mut want = [0u8; 16];
        hex::decode_to_slice("9e107d9d372bb6826bd81d3542a419d6", &mut want).unwrap();
        verify_file(tmp.path(), &Checksum::Md5(want), "x").unwrap();
        want[0] ^= 1;
        let e = verify_file(tmp.path(), &Checksum::Md5(want), "s3://b/x").unwrap_err();
        assert_eq!(e.kind(), Kind::Corrupt);
        assert!(
            e.message().starts_with("s3://b/x: md5 mismatch"),
            "{}",
            e.message()
        );
    }
}
