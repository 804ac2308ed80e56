//! What an S3 object is verified against: its additional checksum, its ETag, its part layout.

use reqwest::header::{HeaderMap, CONTENT_LENGTH, ETAG};
use reqwest::{Method, Response, StatusCode};

use super::client::{header_str, header_u64, S3};
use crate::error::{Error, Kind, Result};
use crate::remote::types::{Checksum, PartChecksum, RemoteFile, MAX_PARTS};
use crate::remote::{http, pin};

impl S3 {
    /// Multipart objects: verified against their S3 additional checksum when they have one
    /// (`HEAD` with `x-amz-checksum-mode: ENABLED`: full-object CRC-64/NVME, CRC-32, CRC-32C,
    /// SHA-1, SHA-256, or composite per-part ones), else against their ETag, the MD5 of their
    /// part MD5s. Per-part checksums need the parts' lengths (see `layout`);
    /// objects whose layout the server will not tell keep a size-only check.
    pub(super) async fn learn_checksums(&self, files: &mut [RemoteFile]) -> Result<()> {
        use futures_util::StreamExt;
        let todo: Vec<(usize, [u8; 16], u32, RemoteFile)> = files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                if let Some((digest, parts)) = f.version.as_deref().and_then(multipart_etag) {
                    return Some((i, digest, parts, f.clone()));
                }
                // A large single-part object is fetched in several ranges: a CRC it carries
                // (S3 adds CRC-64/NVME to new objects) combines per range, an MD5 is read back.
                (f.size > HEAD_CHECKSUM_ABOVE).then(|| (i, [0; 16], 0, f.clone()))
            })
            .collect();
        let learnt: Vec<_> =
            futures_util::stream::iter(todo.into_iter().map(|(i, digest, parts, f)| async move {
                let (extra, layout) = futures_util::future::join(
                    self.additional_checksum(&f, parts),
                    self.layout(&f, parts),
                )
                .await;
                (i, digest, parts, extra, layout)
            }))
            .buffer_unordered(16)
            .collect()
            .await;
        for (i, digest, parts, extra, layout) in learnt {
            let f = &mut files[i];
            let (extra, etag) = extra?;
            // A whole-object checksum needs no layout: one the server describes impossibly
            // (or not at all) does not matter then.
            let layout = match (&extra, layout) {
                (Some(Additional::Whole(_)), _) => None,
                (_, layout) => layout?,
            };
            if parts == 0 {
                // Single part: a whole-object CRC replaces the MD5 ETag; anything else keeps it.
                // A listing without ETags (s3s-fs) takes the HEAD's: as the version that pins
                // every read, and as the checksum if it is a plain MD5.
                if let Some(e) = etag.as_ref().filter(|_| !listed_etag(f)) {
                    f.version = Some(e.clone());
                }
                if let Some(Additional::Whole(
                    c @ (Checksum::Crc32(_) | Checksum::Crc32c(_) | Checksum::Crc64Nvme(_)),
                )) = extra
                {
                    f.checksum = Some(c);
                } else if f.checksum.is_none() {
                    f.checksum = etag.as_deref().and_then(md5_from_etag).map(Checksum::Md5);
                }
                continue;
            }
            // `layout` confirmed an equal layout for the ETag's part count; a composite checksum
            // over another count cannot be checked with it.
            f.checksum = match (extra, layout) {
                (Some(Additional::Whole(c)), _) => Some(c),
                (
                    Some(Additional::Composite {
                        of,
                        parts: n,
                        value,
                    }),
                    Some(Layout::Equal(p)),
                ) if n == parts => Some(Checksum::Composite {
                    of,
                    part_size: p,
                    parts,
                    value,
                }),
                (None, Some(Layout::Equal(p))) => Some(Checksum::MultipartMd5 {
                    part_size: p,
                    parts,
                    digest,
                }),
                (
                    Some(Additional::Composite {
                        of,
                        parts: n,
                        value,
                    }),
                    Some(Layout::Uneven(lengths)),
                ) if n == parts => Some(Checksum::UnevenParts {
                    of: Some(of),
                    lengths,
                    value,
                }),
                (None, Some(Layout::Uneven(lengths))) => Some(Checksum::UnevenParts {
                    of: None,
                    lengths,
                    value: digest.to_vec(),
                }),
                _ => None,
            };
        }
        Ok(())
    }

    /// The object's S3 additional checksum, if it has one and the server tells.
    /// Also returns the HEAD's ETag: some servers (s3s-fs) list objects without one.
    pub(super) async fn additional_checksum(
        &self,
        f: &RemoteFile,
        parts: u32,
    ) -> Result<(Option<Additional>, Option<String>)> {
        let what = format!("HEAD {} (checksums)", self.display(&f.key));
        let mode = (
            reqwest::header::HeaderName::from_static("x-amz-checksum-mode"),
            "ENABLED".to_string(),
        );
        let resp = self.verification_head(&f.key, &[], &[mode], &what).await?;
        if !resp.status().is_success() {
            return Ok((None, None));
        }
        let etag = header_str(resp.headers(), ETAG);
        Ok((parse_additional(resp.headers(), parts), etag))
    }

    /// How a multipart object is cut (None: the server would not say). Equal parts but the last
    /// is what aws-cli, boto3, s5cmd, rclone and this tool upload: part 1's length gives the
    /// size, the last part's length confirms it, and ranges are cut at part boundaries so each
    /// part is hashed by the stream that fetched it. Other writers cut other layouts: then
    /// every part's length is asked for (one `HEAD` each, only for such objects), and the
    /// object is hashed in order, part by part, rather than failed as corrupt on every attempt.
    pub(super) async fn layout(&self, f: &RemoteFile, parts: u32) -> Result<Option<Layout>> {
        use futures_util::StreamExt;
        if parts <= 1 {
            return Ok((f.size > 0).then_some(Layout::Equal(f.size)));
        }
        // Every part holds a byte at least, and S3 allows 10,000: an ETag claiming more is no
        // reason to send thousands of HEADs, nor to hash that many parts.
        if parts > MAX_PARTS || u64::from(parts) > f.size {
            return Err(self.impossible_layout(f, parts, None));
        }
        let (first, last) = futures_util::future::join(
            self.part_length(f, 1, parts),
            self.part_length(f, parts, parts),
        )
        .await;
        let (Some(first), Some(last)) = (first?, last?) else {
            return Ok(None);
        };
        if last_part_fits(f.size, first, parts, last) {
            // Each part is hashed on its own as it streams in: parts below what any S3 or OSS
            // upload makes would cost a digest (and memory) per few bytes.
            if first < MIN_PART_SIZE {
                return Err(self.impossible_layout(f, parts, Some(first)));
            }
            return Ok(Some(Layout::Equal(first)));
        }
        let middle: Vec<Result<Option<u64>>> = futures_util::stream::iter(2..parts)
            .map(|n| self.part_length(f, n, parts))
            .buffered(16)
            .collect()
            .await;
        let mut lengths = vec![first];
        for len in middle {
            match len? {
                Some(len) => lengths.push(len),
                None => return Ok(None),
            }
        }
        lengths.push(last);
        let total = lengths.iter().try_fold(0u64, |a, &n| a.checked_add(n));
        Ok((lengths.iter().all(|&n| n > 0) && total == Some(f.size))
            .then(|| Layout::Uneven(lengths.into())))
    }

    /// A part layout no S3 or OSS upload can make: refused rather than hashed part by part.
    pub(super) fn impossible_layout(
        &self,
        f: &RemoteFile,
        parts: u32,
        part_size: Option<u64>,
    ) -> Error {
        let parts_of = match part_size {
            Some(p) => format!("{parts} parts of {p} bytes"),
            None => format!("{parts} parts"),
        };
        Error::new(
            Kind::Network,
            format!(
                "{}: the server describes this {}-byte object as {parts_of}, which no S3 or OSS \
                 upload makes (at most {MAX_PARTS} parts, each at least {} KiB but the last); \
                 refusing to verify against it: check that the endpoint is the storage service",
                self.display(&f.key),
                f.size,
                MIN_PART_SIZE >> 10
            ),
        )
    }

    /// The length of part `n` of an object of `parts` parts (`HEAD ?partNumber=n`); None when
    /// the reply does not describe such a part.
    pub(super) async fn part_length(
        &self,
        f: &RemoteFile,
        n: u32,
        parts: u32,
    ) -> Result<Option<u64>> {
        let what = format!("HEAD {} (part {n})", self.display(&f.key));
        let number = n.to_string();
        // No If-Match: some servers (moto) compare it with the part's own ETag. The ranged GETs
        // carry it, so an object replaced since the listing is still caught.
        let resp = self
            .verification_head(&f.key, &[("partNumber", number.as_str())], &[], &what)
            .await?;
        let count = header_u64(
            resp.headers(),
            "x-amz-mp-parts-count".parse().expect("valid"),
        );
        let len = header_u64(resp.headers(), CONTENT_LENGTH);
        Ok(match (resp.status().is_success(), count, len) {
            (true, Some(c), Some(len)) if c == u64::from(parts) => Some(len),
            _ => None,
        })
    }

    /// A HEAD that decides how an object is verified. Only a definite answer counts: a
    /// success, or a refusal that says the server will not tell (4xx, 501). Throttling and
    /// server errors (5xx, 429, 408) and broken connections are retried here, a few times
    /// with backoff, then end the listing with a transient error (itself retried, then exit 5)
    /// — never read as "no checksum", which would switch verification off silently.
    pub(super) async fn verification_head(
        &self,
        key: &str,
        query: &[(&str, &str)],
        extra: &[(reqwest::header::HeaderName, String)],
        what: &str,
    ) -> Result<Response> {
        let policy = crate::retry::RetryPolicy::default();
        let mut failures = 0;
        loop {
            let err = match self
                .send(Method::HEAD, &self.object_path(key), query, extra, what)
                .await
            {
                Ok(r) if r.status() == StatusCode::NOT_IMPLEMENTED => return Ok(r),
                Ok(r) if http::is_transient_status(r.status()) => {
                    self.status_error(r, what, Some(key)).await
                }
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let crate::error::Retry::After(server_wait) = err.retry() else {
                return Err(err);
            };
            failures += 1;
            if failures >= VERIFICATION_HEAD_TRIES {
                return Err(err);
            }
            tokio::time::sleep(policy.wait(failures, server_wait, fastrand::f64())).await;
        }
    }
}

/// Whether the listed version is an ETag (not a Last-Modified token, nor none).
fn listed_etag(f: &RemoteFile) -> bool {
    f.version
        .as_deref()
        .is_some_and(|v| !matches!(pin::pin(v), pin::Pin::Modified(_)))
}

/// A plain 32-hex ETag is the MD5 of a single-part upload; multipart ETags end in `-N`.
/// Single-part objects larger than this (the default chunk size: fetched in several ranges) are
/// asked for an additional checksum too.
const HEAD_CHECKSUM_ABOVE: u64 = 64 << 20;

/// The smallest part but the last that an upload makes: OSS's minimum (S3's is 5 MiB).
const MIN_PART_SIZE: u64 = 100 << 10;

/// Tries of one verification HEAD before the listing as a whole fails (and is retried).
const VERIFICATION_HEAD_TRIES: u32 = 4;

/// An S3 additional checksum from `x-amz-checksum-*` headers.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Additional {
    Whole(Checksum),
    Composite {
        of: PartChecksum,
        parts: u32,
        value: Vec<u8>,
    },
}

/// Reads the first `x-amz-checksum-{crc64nvme,crc32,crc32c,sha1,sha256}` header: base64 of the
/// value, with `-N` when it is composite over N parts. For an object of `parts` parts, a value
/// without `-N` is still composite unless `x-amz-checksum-type: FULL_OBJECT` says otherwise
/// (multipart checksums were composite-only until S3 added full-object ones with that header;
/// moto 5 omits the suffix).
pub(super) fn parse_additional(h: &HeaderMap, parts: u32) -> Option<Additional> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for (name, of) in [
        ("x-amz-checksum-crc64nvme", None),
        ("x-amz-checksum-crc32", Some(PartChecksum::Crc32)),
        ("x-amz-checksum-crc32c", Some(PartChecksum::Crc32c)),
        ("x-amz-checksum-sha1", Some(PartChecksum::Sha1)),
        ("x-amz-checksum-sha256", Some(PartChecksum::Sha256)),
    ] {
        let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let full = h
            .get("x-amz-checksum-type")
            .and_then(|t| t.to_str().ok())
            .is_some_and(|t| t.eq_ignore_ascii_case("FULL_OBJECT"));
        let (value, parts) = match v.trim().split_once('-') {
            Some((value, n)) => (value, Some(n.parse::<u32>().ok()?)),
            None if parts > 1 && !full => (v.trim(), Some(parts)),
            None => (v.trim(), None),
        };
        let bytes = b64.decode(value).ok()?;
        return match (of, parts) {
            (Some(of), Some(parts)) => Some(Additional::Composite {
                of,
                parts,
                value: bytes,
            }),
            // CRC-64/NVME is always full-object, whatever the part count.
            (None, Some(_)) => Some(Additional::Whole(Checksum::Crc64Nvme(u64::from_be_bytes(
                bytes.try_into().ok()?,
            )))),
            (of, None) => Some(Additional::Whole(match of {
                None => Checksum::Crc64Nvme(u64::from_be_bytes(bytes.try_into().ok()?)),
                Some(PartChecksum::Crc32) => {
                    Checksum::Crc32(u32::from_be_bytes(bytes.try_into().ok()?))
                }
                Some(PartChecksum::Crc32c) => {
                    Checksum::Crc32c(u32::from_be_bytes(bytes.try_into().ok()?))
                }
                Some(PartChecksum::Sha1) => Checksum::Sha1(bytes.try_into().ok()?),
                Some(PartChecksum::Sha256) => Checksum::Sha256(bytes.try_into().ok()?),
            })),
        };
    }
    None
}

/// `"hex-N"`: the MD5 of the N part MD5s of a multipart upload (N ≥ 1).
pub(super) fn multipart_etag(etag: &str) -> Option<([u8; 16], u32)> {
    let (digest, parts) = etag.trim_matches('"').split_once('-')?;
    let parts: u32 = parts.parse().ok().filter(|&n| n >= 1)?;
    let mut out = [0u8; 16];
    hex::decode_to_slice(digest, &mut out).ok()?;
    Some((out, parts))
}

pub(super) fn md5_from_etag(etag: &str) -> Option<[u8; 16]> {
    let t = etag.trim_matches('"');
    if t.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(t, &mut out).ok()?;
    Some(out)
}

/// How a multipart object's bytes are cut into parts.
pub(super) enum Layout {
    /// Parts of this size but the last, which holds what remains.
    Equal(u64),
    /// Each part's length, in order.
    Uneven(std::sync::Arc<[u64]>),
}

/// Whether `parts` parts of `part` bytes but the last, whose length the server gave as `last`,
/// make up `size` bytes: the last part is what remains after the others, and not empty.
fn last_part_fits(size: u64, part: u64, parts: u32, last: u64) -> bool {
    let before = u64::from(parts.saturating_sub(1)).checked_mul(part);
    last > 0 && last <= part && before.and_then(|b| b.checked_add(last)) == Some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_part_confirms_equal_parts() {
        const M: u64 = 1 << 20;
        // 6, 6, 6, 2 MiB: equal but the last.
        assert!(last_part_fits(20 * M, 6 * M, 4, 2 * M));
        // 6, 5, 6, 2 MiB (19 MiB): part 1 alone suggests 6, 6, 6, 1; the last part says no.
        assert!(!last_part_fits(19 * M, 6 * M, 4, 2 * M));
        // A last part as long as the others, and one longer than part 1.
        assert!(last_part_fits(24 * M, 8 * M, 3, 8 * M));
        assert!(!last_part_fits(25 * M, 8 * M, 3, 9 * M));
        // An empty last part, and sizes that overflow.
        assert!(!last_part_fits(16 * M, 8 * M, 3, 0));
        assert!(!last_part_fits(u64::MAX, u64::MAX, 3, 1));
    }

    #[test]
    fn additional_checksum_headers() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        // The reveng check value of CRC-32 for "123456789", base64 of its big-endian bytes.
        let crc = "y/Q5Jg==";
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc32", crc)]), 1),
            Some(Additional::Whole(Checksum::Crc32(0xcbf4_3926)))
        );
        let composite = Some(Additional::Composite {
            of: PartChecksum::Crc32,
            parts: 3,
            value: vec![0xcb, 0xf4, 0x39, 0x26],
        });
        let suffixed = format!("{crc}-3");
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc32", &suffixed)]), 3),
            composite
        );
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc32", crc)]), 3),
            composite,
            "a multipart object without -N (moto) is composite"
        );
        assert_eq!(
            parse_additional(
                &h(&[
                    ("x-amz-checksum-crc32", crc),
                    ("x-amz-checksum-type", "FULL_OBJECT")
                ]),
                3
            ),
            Some(Additional::Whole(Checksum::Crc32(0xcbf4_3926)))
        );
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc64nvme", "rosUhgp5mIg=")]), 3),
            Some(Additional::Whole(Checksum::Crc64Nvme(
                0xae8b_1486_0a79_9888
            )))
        );
        assert_eq!(
            parse_additional(&h(&[("x-amz-checksum-crc32", "%%%")]), 1),
            None
        );
        assert_eq!(parse_additional(&h(&[]), 3), None);
    }

    #[test]
    fn etag_md5_only_for_single_part() {
        assert!(md5_from_etag("\"9e107d9d372bb6826bd81d3542a419d6\"").is_some());
        assert!(md5_from_etag("\"9e107d9d372bb6826bd81d3542a419d6-3\"").is_none());
        assert!(md5_from_etag("W/\"abc\"").is_none());
    }
}
