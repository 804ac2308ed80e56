//! What every client speaks: listed files, their checksums, byte ranges, fetched bodies and
//! the read interface ([`Source`]). No I/O here.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use crate::error::Result;

/// What a fetched file is verified against. The listing's (and the origin's HEADs') checksum is
/// the authority; `etag_is_md5` false (an SSE-KMS or SSE-C object, as the origin says) drops
/// only a checksum read from the ETag. A whole-object checksum the origin sent with the bytes
/// (OSS's CRC-64) stands in for an ETag reading, which OSS does not promise to be an MD5, and
/// for no checksum at all — never for an additional checksum from a HEAD.
pub fn authority(
    listed: Option<Checksum>,
    from_reply: Option<Checksum>,
    etag_is_md5: bool,
) -> Option<Checksum> {
    match listed {
        Some(c) if !c.from_etag() => Some(c),
        Some(c) => from_reply.or_else(|| etag_is_md5.then_some(c)),
        None => from_reply,
    }
}

/// Follows a listing's continuation: `token` is the next page's token (or link), refused when
/// an earlier page already gave it — a server that repeats one would loop for ever.
pub fn next_page(
    seen: &mut std::collections::HashSet<String>,
    token: String,
    what: &str,
) -> Result<String> {
    if !seen.insert(token.clone()) {
        return Err(crate::error::Error::new(
            crate::error::Kind::Network,
            format!(
                "{what}: the server gave the same continuation token twice, so its listing \
                 would never end; this is a server bug: retry later or report it to its operator"
            ),
        ));
    }
    Ok(token)
}

/// S3 and OSS accept at most this many parts per object.
pub const MAX_PARTS: u32 = 10_000;

/// One file as the source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Path relative to the URL's folder, as the source spells it (validated later, after
    /// --include/--exclude, so a user can exclude a hostile key).
    pub path: String,
    /// The source's own address for it (object key, repo path).
    pub key: String,
    pub size: u64,
    pub checksum: Option<Checksum>,
    /// Pins every ranged read to the listed bytes: the S3 ETag, a GCS generation, a commit.
    pub version: Option<String>,
    /// The storage class of an object that must be restored before it can be read (S3
    /// `GLACIER`, `DEEP_ARCHIVE`, not restored); None when it can be read now.
    pub archived: Option<String>,
    /// The source stores it gzip-encoded (GCS `contentEncoding: gzip`, `gsutil cp -Z`): its
    /// size and checksum are of the stored bytes, which are fetched and verified as they are,
    /// then decompressed into the file that lands, as gsutil and gcloud do.
    pub stored_gzip: bool,
    /// A registry layer that is a tar archive: it lands as the files inside it (unpacked
    /// after its digest is checked), not as a file of its own.
    pub archive: Option<Archive>,
    /// A member of an archive layer, unpacked and checked: read from this file in the state
    /// folder, not from the source. Set only by the unpacking step, never from a listing
    /// (a key is the source's to choose).
    pub staged: Option<String>,
}

/// How an archive layer unpacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub compression: Compression,
    /// Container image layers: only the files under this folder land (a KServe modelcar's
    /// `models`), at paths relative to it, and whiteouts hide earlier layers' files.
    pub image_root: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A checksum the listing gives for free, used to verify the bytes on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// S3 single-part ETags.
    Md5([u8; 16]),
    /// Hub LFS files (`lfs.oid`).
    Sha256([u8; 32]),
    /// Hub regular files: git's blob id, `sha1("blob <len>\0" + bytes)`.
    GitBlobSha1([u8; 20]),
    /// GCS objects (Castagnoli).
    Crc32c(u32),
    /// OSS objects: `x-oss-hash-crc64ecma` (CRC-64/XZ, the ECMA-182 polynomial reflected).
    Crc64Ecma(u64),
    /// S3 multipart ETags, `hex(md5(md5(part 1) ‖ … ‖ md5(part N)))-N`, with the part size
    /// learnt from `HEAD ?partNumber=1`. Parts are taken as equal but the last, as every common
    /// uploader (aws-cli, boto3, s5cmd, rclone, this tool) makes them.
    MultipartMd5 {
        part_size: u64,
        parts: u32,
        digest: [u8; 16],
    },
    /// S3 additional checksums of the whole object (`x-amz-checksum-type: FULL_OBJECT`, or a
    /// single-part object): CRC-32 (ISO-HDLC), CRC-64/NVME, SHA-1.
    Crc32(u32),
    Crc64Nvme(u64),
    Sha1([u8; 20]),
    /// S3 composite checksums (`…-N`): the checksum of the concatenated part checksums, each
    /// part `part_size` bytes but the last.
    Composite {
        of: PartChecksum,
        part_size: u64,
        parts: u32,
        value: Vec<u8>,
    },
    /// A multipart ETag (`of` None) or composite checksum over parts that are not equal but the
    /// last, as some writers cut them: each part's length from `HEAD ?partNumber=n`. Hashed in
    /// order, part by part (ranges cannot be cut at boundaries a part size does not give).
    UnevenParts {
        of: Option<PartChecksum>,
        lengths: std::sync::Arc<[u64]>,
        value: Vec<u8>,
    },
}

/// What each part of a composite checksum is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartChecksum {
    Crc32,
    Crc32c,
    Sha1,
    Sha256,
}

impl PartChecksum {
    /// The algorithm's name in the manifest for a checksum over parts of this kind.
    pub fn over_parts(self) -> &'static str {
        match self {
            PartChecksum::Crc32 => "crc32-of-parts",
            PartChecksum::Crc32c => "crc32c-of-parts",
            PartChecksum::Sha1 => "sha1-of-parts",
            PartChecksum::Sha256 => "sha256-of-parts",
        }
    }

    /// A whole-object checksum of this kind with an empty value, to build a hasher from.
    pub fn empty(self) -> Checksum {
        match self {
            PartChecksum::Crc32 => Checksum::Crc32(0),
            PartChecksum::Crc32c => Checksum::Crc32c(0),
            PartChecksum::Sha1 => Checksum::Sha1([0; 20]),
            PartChecksum::Sha256 => Checksum::Sha256([0; 32]),
        }
    }
}

impl Checksum {
    /// Read from an S3/OSS ETag (a single-part MD5, or MD5 over parts), which is no digest of
    /// the bytes for SSE-KMS and SSE-C objects; every other checksum is valid whatever the
    /// encryption (S3's additional checksums are of the plaintext).
    pub fn from_etag(&self) -> bool {
        matches!(
            self,
            Checksum::Md5(_)
                | Checksum::MultipartMd5 { .. }
                | Checksum::UnevenParts { of: None, .. }
        )
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Md5(_) => "md5",
            Checksum::Sha256(_) => "sha256",
            Checksum::GitBlobSha1(_) => "git-sha1",
            Checksum::Crc32c(_) => "crc32c",
            Checksum::Crc64Ecma(_) => "crc64ecma",
            Checksum::MultipartMd5 { .. } => "md5-of-parts",
            Checksum::Crc32(_) => "crc32",
            Checksum::Crc64Nvme(_) => "crc64nvme",
            Checksum::Sha1(_) => "sha1",
            Checksum::Composite { of, .. } => of.over_parts(),
            Checksum::UnevenParts { of, .. } => of.map_or("md5-of-parts", PartChecksum::over_parts),
        }
    }

    pub fn hex(&self) -> String {
        match self {
            Checksum::Md5(d) => hex::encode(d),
            Checksum::Sha256(d) => hex::encode(d),
            Checksum::GitBlobSha1(d) => hex::encode(d),
            Checksum::Crc32c(c) => format!("{c:08x}"),
            Checksum::Crc64Ecma(c) => format!("{c:016x}"),
            Checksum::MultipartMd5 {
                part_size,
                parts,
                digest,
            } => format!("{}-{parts}/{part_size}", hex::encode(digest)),
            Checksum::Crc32(c) => format!("{c:08x}"),
            Checksum::Crc64Nvme(c) => format!("{c:016x}"),
            Checksum::Sha1(d) => hex::encode(d),
            Checksum::Composite {
                part_size,
                parts,
                value,
                ..
            } => format!("{}-{parts}/{part_size}", hex::encode(value)),
            // Every part's length where equal parts have the one size.
            Checksum::UnevenParts { lengths, value, .. } => {
                let lengths: Vec<String> = lengths.iter().map(u64::to_string).collect();
                format!(
                    "{}-{}/{}",
                    hex::encode(value),
                    lengths.len(),
                    lengths.join(",")
                )
            }
        }
    }

    /// `algorithm:hex`, as stored in the manifest.
    pub fn tagged(&self) -> String {
        format!("{}:{}", self.algorithm(), self.hex())
    }

    /// Reads back what [`Checksum::tagged`] wrote (None: unknown or malformed).
    pub fn from_tagged(s: &str) -> Option<Checksum> {
        fn arr<const N: usize>(h: &str) -> Option<[u8; N]> {
            let mut out = [0u8; N];
            hex::decode_to_slice(h, &mut out).ok()?;
            Some(out)
        }
        let (algo, value) = s.split_once(':')?;
        // `hex-N/size` for equal parts, `hex-N/len1,…,lenN` for others.
        let over_parts = |of: Option<PartChecksum>| -> Option<Checksum> {
            let (digest, rest) = value.split_once('-')?;
            let (parts, sizes) = rest.split_once('/')?;
            let (value, parts) = (hex::decode(digest).ok()?, parts.parse::<u32>().ok()?);
            let sizes: Vec<u64> = sizes
                .split(',')
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            Some(match (of, sizes.as_slice()) {
                (None, &[part_size]) => Checksum::MultipartMd5 {
                    part_size,
                    parts,
                    digest: value.try_into().ok()?,
                },
                (Some(of), &[part_size]) => Checksum::Composite {
                    of,
                    part_size,
                    parts,
                    value,
                },
                _ if sizes.len() == parts as usize => Checksum::UnevenParts {
                    of,
                    lengths: sizes.into(),
                    value,
                },
                _ => return None,
            })
        };
        Some(match algo {
            "md5" => Checksum::Md5(arr(value)?),
            "sha256" => Checksum::Sha256(arr(value)?),
            "git-sha1" => Checksum::GitBlobSha1(arr(value)?),
            "sha1" => Checksum::Sha1(arr(value)?),
            "crc32c" => Checksum::Crc32c(u32::from_str_radix(value, 16).ok()?),
            "crc32" => Checksum::Crc32(u32::from_str_radix(value, 16).ok()?),
            "crc64ecma" => Checksum::Crc64Ecma(u64::from_str_radix(value, 16).ok()?),
            "crc64nvme" => Checksum::Crc64Nvme(u64::from_str_radix(value, 16).ok()?),
            "md5-of-parts" => over_parts(None)?,
            "crc32-of-parts" => over_parts(Some(PartChecksum::Crc32))?,
            "crc32c-of-parts" => over_parts(Some(PartChecksum::Crc32c))?,
            "sha1-of-parts" => over_parts(Some(PartChecksum::Sha1))?,
            "sha256-of-parts" => over_parts(Some(PartChecksum::Sha256))?,
            _ => return None,
        })
    }
}

/// A half-open byte range `[start, end)`; never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The `Range` header value (inclusive end, as HTTP wants it).
    pub fn header(&self) -> String {
        format!("bytes={}-{}", self.start, self.end.saturating_sub(1))
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes {}-{}", self.start, self.end.saturating_sub(1))
    }
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// What a fetch returns: the body, and what the origin said of its checksum.
pub struct Fetched {
    pub body: ByteStream,
    /// False when the origin says the ETag is no MD5 of the bytes (SSE-KMS, SSE-C): checksums
    /// read from the ETag do not apply; every other one still does.
    pub checksum_applies: bool,
    /// A whole-object checksum only the origin's reply carries (OSS's CRC-64): it stands in
    /// for an ETag reading, or for no checksum.
    pub object_checksum: Option<Checksum>,
}

impl Fetched {
    /// A body with nothing to say about its checksum.
    pub fn plain(body: ByteStream) -> Fetched {
        Fetched {
            body,
            checksum_applies: true,
            object_checksum: None,
        }
    }
}

/// What one listing found: every file, plus the resolved revision where the source has one.
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<RemoteFile>,
    pub revision: Option<String>,
    /// The URL named one object (nothing was under it as a folder): KServe's file patterns do
    /// not apply to it, as in its initializer.
    pub exact: bool,
}

/// The one interface every scheme implements.
pub trait Source: Send + Sync {
    /// Every file under the URL, with size, checksum and version token, in one logical call
    /// (paginating inside). A URL naming one object yields that object.
    fn list(&self) -> impl Future<Output = Result<Listing>> + Send;

    /// Exactly the bytes of `range` of `file`, pinned to the listed version. Fails unless the
    /// reply is a 206 with the matching Content-Range.
    fn fetch(
        &self,
        file: &RemoteFile,
        range: ByteRange,
    ) -> impl Future<Output = Result<Fetched>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_kms_drops_only_the_etag_reading_and_a_reply_never_overrides_an_additional_checksum() {
        let md5 = Checksum::Md5([1; 16]);
        let nvme = Checksum::Crc64Nvme(7);
        let oss = Checksum::Crc64Ecma(9);
        // SSE-KMS: the ETag is no MD5, the CRC-64/NVME from the HEAD still holds.
        assert_eq!(
            authority(Some(nvme.clone()), None, false),
            Some(nvme.clone())
        );
        assert_eq!(authority(Some(md5.clone()), None, false), None);
        assert_eq!(authority(Some(md5.clone()), None, true), Some(md5.clone()));
        // A reply's CRC-64 replaces an ETag reading, never an additional checksum.
        assert_eq!(
            authority(Some(md5), Some(oss.clone()), true),
            Some(oss.clone())
        );
        assert_eq!(
            authority(Some(nvme.clone()), Some(oss.clone()), true),
            Some(nvme)
        );
        assert_eq!(authority(None, Some(oss.clone()), true), Some(oss));
        let uneven = Checksum::UnevenParts {
            of: Some(PartChecksum::Crc32),
            lengths: vec![2, 1].into(),
            value: vec![0; 4],
        };
        assert!(!uneven.from_etag(), "a composite CRC over parts is no ETag");
        assert_eq!(authority(Some(uneven.clone()), None, false), Some(uneven));
    }

    #[test]
    fn a_repeated_continuation_token_ends_the_listing_with_an_error() {
        let mut seen = std::collections::HashSet::new();
        assert_eq!(next_page(&mut seen, "a".into(), "list").unwrap(), "a");
        assert_eq!(next_page(&mut seen, "b".into(), "list").unwrap(), "b");
        let e = next_page(&mut seen, "a".into(), "list x").unwrap_err();
        assert!(e.message().contains("same continuation token"), "{e}");
    }

    #[test]
    fn tagged_checksums_read_back() {
        let all = [
            Checksum::Md5([1; 16]),
            Checksum::Sha256([2; 32]),
            Checksum::GitBlobSha1([3; 20]),
            Checksum::Sha1([4; 20]),
            Checksum::Crc32c(5),
            Checksum::Crc32(0xdead_beef),
            Checksum::Crc64Ecma(u64::MAX),
            Checksum::Crc64Nvme(7),
            Checksum::MultipartMd5 {
                part_size: 8 << 20,
                parts: 3,
                digest: [9; 16],
            },
            Checksum::Composite {
                of: PartChecksum::Crc32,
                part_size: 5 << 20,
                parts: 2,
                value: vec![1, 2, 3, 4],
            },
            Checksum::Composite {
                of: PartChecksum::Sha256,
                part_size: 1,
                parts: 1,
                value: vec![7; 32],
            },
            Checksum::UnevenParts {
                of: None,
                lengths: vec![6, 5, 6, 2].into(),
                value: vec![8; 16],
            },
            Checksum::UnevenParts {
                of: Some(PartChecksum::Crc32),
                lengths: vec![5, 6].into(),
                value: vec![1, 2, 3, 4],
            },
        ];
        for c in all {
            assert_eq!(
                Checksum::from_tagged(&c.tagged()),
                Some(c.clone()),
                "{}",
                c.tagged()
            );
        }
        for bad in [
            "",
            "md5",
            "md5:zz",
            "crc32:",
            "md5-of-parts:00-x/1",
            "md5-of-parts:00-3/1,2",
            "crc32-of-parts:00-2/1,x",
            "nope:00",
        ] {
            assert_eq!(Checksum::from_tagged(bad), None, "{bad}");
        }
    }
}
