//! The write side of the remote layer: one object from a local file, in the pieces each service
//! takes. S3 and OSS: a single PUT with Content-MD5, or a multipart upload (begin, parts each
//! with Content-MD5, complete; abort on failure) within S3's rules (at most 10,000 parts, each
//! at least 5 MiB but the last). GCS: one media upload, or a resumable session in multiples of
//! 256 KiB; the CRC32C GCS stored is compared with the file's. Registries: a blob per file
//! (not sent when the registry has its digest), the manifest at the end (`finish_upload`).

use super::any::AnySource;
use super::body::FileRange;
use super::s3::S3;
use super::types::MAX_PARTS;
use crate::cancel::Cancel;
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;
use crate::retry::{retrying, RetryPolicy};
use crate::url::RelPath;

/// … each at least this large, but the last.
const MIN_PART: u64 = 5 << 20;

impl AnySource {
    /// Writes `whole` as the object for `rel` under the URL's prefix, each request retried
    /// under `retry`. `part_size` is the wanted piece size; each service's rules adjust it.
    pub async fn put_file(
        &self,
        rel: &RelPath,
        whole: FileRange,
        part_size: u64,
        retry: &RetryPolicy,
        reporter: &dyn Reporter,
        cancel: &Cancel,
    ) -> Result<()> {
        let what = format!("upload {rel}");
        match self {
            AnySource::S3(s3) | AnySource::Oss(s3) => {
                let key = s3.key_for(rel.as_str());
                let part = s3_part_size(part_size, whole.len);
                if whole.len <= part {
                    put_single(s3, &key, whole, retry, reporter, &what).await
                } else {
                    put_multipart(s3, &key, whole, part, (retry, reporter, cancel), &what).await
                }
            }
            AnySource::Gcs(gcs) => {
                let name = gcs.key_for(rel.as_str());
                let w = whole.clone();
                let crc = blocking(move || w.crc32c()).await?;
                retrying(retry, reporter, &what, || {
                    gcs.upload(&name, &whole, crc, part_size)
                })
                .await
            }
            AnySource::Hf(_) => Err(Error::usage("uploading to hf:// is not supported")),
            AnySource::Oci(oci) => {
                let w = whole.clone();
                let sha = blocking(move || w.sha256()).await?;
                retrying(retry, reporter, &what, || oci.push_file(rel, &whole, sha)).await
            }
        }
    }
}

impl AnySource {
    /// A file the destination already holds (same size and checksum): registries need it
    /// named in the manifest they end with; buckets need nothing.
    pub fn keep_file(&self, rel: &RelPath, size: u64, listed: Option<&super::Checksum>) {
        if let (AnySource::Oci(oci), Some(super::Checksum::Sha256(d))) = (self, listed) {
            oci.keep_file(rel, size, *d);
        }
    }

    /// After every file is in: a registry's manifest (returns its digest); nothing for buckets.
    pub async fn finish_upload(
        &self,
        retry: &RetryPolicy,
        reporter: &dyn Reporter,
    ) -> Result<Option<String>> {
        match self {
            AnySource::Oci(oci) => {
                retrying(retry, reporter, "push the manifest", || oci.finish_push())
                    .await
                    .map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// The part size for an object of `len` bytes: what was asked, grown so the object fits in
/// 10,000 parts, and at least 5 MiB.
pub fn s3_part_size(wanted: u64, len: u64) -> u64 {
    wanted.max(len.div_ceil(u64::from(MAX_PARTS))).max(MIN_PART)
}

async fn put_single(
    s3: &S3,
    key: &str,
    whole: FileRange,
    retry: &RetryPolicy,
    reporter: &dyn Reporter,
    what: &str,
) -> Result<()> {
    let body = whole.clone();
    let md5 = blocking(move || whole.md5()).await?;
    retrying(retry, reporter, what, || {
        s3.put(key, body.clone(), md5, None)
    })
    .await?;
    Ok(())
}

async fn put_multipart(
    s3: &S3,
    key: &str,
    whole: FileRange,
    part: u64,
    (retry, reporter, cancel): (&RetryPolicy, &dyn Reporter, &Cancel),
    what: &str,
) -> Result<()> {
    let id = retrying(retry, reporter, what, || s3.create_multipart(key)).await?;
    let work = async {
        let mut etags = Vec::new();
        let mut offset = 0;
        while offset < whole.len {
            let piece = whole.slice(offset, part.min(whole.len - offset));
            let p = piece.clone();
            let md5 = blocking(move || p.md5()).await?;
            let n = etags.len() as u32 + 1;
            let etag = retrying(retry, reporter, what, || {
                s3.put(key, piece.clone(), md5, Some((&id, n)))
            })
            .await?;
            etags.push(etag);
            offset += piece.len;
        }
        retrying(retry, reporter, what, || {
            s3.complete_multipart(key, &id, &etags)
        })
        .await
    };
    // A stop request ends the parts in flight, so the abort below runs within the grace.
    let result: Result<()> = tokio::select! {
        r = work => r,
        _ = cancel.cancelled() => Err(Error::new(
            cancel.reason().unwrap_or(Kind::Interrupted),
            format!("{what}: stopped; the multipart upload was aborted"),
        )),
    };
    // An upload left open would keep its parts (and their storage bill) until a lifecycle rule
    // removes them.
    if result.is_err() {
        s3.abort_multipart(key, &id).await;
    }
    result
}

/// Hashing reads the file: off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(Kind::Local, "a checksum task failed").with_source(e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_follow_s3_rules() {
        assert_eq!(s3_part_size(64 << 20, 1 << 30), 64 << 20);
        assert_eq!(s3_part_size(1 << 20, 100 << 20), MIN_PART, "at least 5 MiB");
        // 1 TiB at 64 MiB would be 16,384 parts: grown to fit 10,000.
        let big = 1u64 << 40;
        let p = s3_part_size(64 << 20, big);
        assert!(big.div_ceil(p) <= u64::from(MAX_PARTS) && p > 64 << 20);
    }
}
