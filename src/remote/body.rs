//! Request bodies read from local files: the upload direction's unit of work, defined here so
//! that the per-service write calls take it without knowing where it came from.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};

/// Bytes `[offset, offset + len)` of a local file, streamed as a request body. The file was
/// opened once, through SRC_DIR's folder handle with no symlink followed; every range of it
/// reads that same open file, so swapping a path for a symlink mid-upload changes nothing.
#[derive(Debug, Clone)]
pub struct FileRange {
    file: Arc<std::fs::File>,
    /// For messages only.
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl FileRange {
    /// All `len` bytes of an open file.
    pub fn whole(file: std::fs::File, path: PathBuf, len: u64) -> Self {
        FileRange {
            file: Arc::new(file),
            path,
            offset: 0,
            len,
        }
    }

    /// `[offset, offset + len)` of the same open file, relative to this range's start.
    pub fn slice(&self, offset: u64, len: u64) -> FileRange {
        FileRange {
            file: Arc::clone(&self.file),
            path: self.path.clone(),
            offset: self.offset + offset,
            len,
        }
    }

    /// A body that reads the range in 256 KiB blocks as the request goes out.
    pub fn into_body(self) -> reqwest::Body {
        reqwest::Body::wrap_stream(self.into_stream())
    }

    /// The range's bytes in 256 KiB blocks, each read off the async threads.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(
            (self.file, self.offset, self.len),
            |(file, off, left)| async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(256 * 1024) as usize;
                let f = Arc::clone(&file);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, off).map(|_| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match read {
                    Ok(b) => Some((Ok(b), (file, off + n as u64, left - n as u64))),
                    Err(e) => Some((Err(e), (file, off, 0))),
                }
            },
        )
    }

    fn hash<H>(&self, mut update: H) -> Result<()>
    where
        H: FnMut(&[u8]),
    {
        let mut buf = vec![0u8; 1 << 20];
        let mut off = self.offset;
        let end = self.offset + self.len;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            self.file
                .read_exact_at(&mut buf[..n], off)
                .map_err(|e| Error::local("read", &self.path, e))?;
            update(&buf[..n]);
            off += n as u64;
        }
        Ok(())
    }

    /// MD5 of the range (Content-MD5 of S3 and OSS uploads).
    pub fn md5(&self) -> Result<[u8; 16]> {
        use md5::Digest;
        let mut h = md5::Md5::new();
        self.hash(|b| h.update(b))?;
        Ok(h.finalize().into())
    }

    /// SHA-256 of the range (a registry blob's digest).
    pub fn sha256(&self) -> Result<[u8; 32]> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        self.hash(|b| h.update(b))?;
        Ok(h.finalize().into())
    }

    /// CRC32C of the range (what GCS stores for an object).
    pub fn crc32c(&self) -> Result<u32> {
        let mut c = 0;
        self.hash(|b| c = crc32c::crc32c_append(c, b))?;
        Ok(c)
    }

    /// The open file the range reads.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }
}
