//! Checks a finished file against the checksum the listing gave: inline while the bytes stream
//! in when a file arrives in order in one request, otherwise by reading the part file back
//! (from the page cache after buffered writes; from the device, with O_DIRECT, after direct
//! ones).

use std::fs::File;
use std::path::Path;

use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use crate::error::{Error, Kind, Result};
use crate::remote::{ByteRange, Checksum};

/// An incremental hash of the kind a checksum needs.
pub enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
    GitBlobSha1(Sha1),
    Crc32c(u32),
    Crc64Ecma(crc_fast::Digest),
    Crc32(crc_fast::Digest),
    Crc64Nvme(crc_fast::Digest),
    Sha1(Sha1),
    /// A multipart ETag or composite checksum: each part hashed, then the part checksums.
    Parts(Box<(Checksum, InlineParts)>),
}

/// The bytes S3 concatenates for a composite checksum: big-endian CRCs, raw digests.
pub fn raw(c: &Checksum) -> Vec<u8> {
    match c {
        Checksum::Crc32(v) | Checksum::Crc32c(v) => v.to_be_bytes().to_vec(),
        Checksum::Md5(d) => d.to_vec(),
        Checksum::Sha1(d) => d.to_vec(),
        Checksum::Sha256(d) => d.to_vec(),
        other => other.hex().into_bytes(),
    }
}

impl Hasher {
    /// A hasher for `want`; `size` is the file's length (git's blob header includes it).
    pub fn for_checksum(want: &Checksum, size: u64) -> Self {
        match want {
            Checksum::Md5(_) => Hasher::Md5(Md5::new()),
            Checksum::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Checksum::GitBlobSha1(_) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Hasher::GitBlobSha1(h)
            }
            Checksum::Crc32c(_) => Hasher::Crc32c(0),
            Checksum::Crc64Ecma(_) => {
                Hasher::Crc64Ecma(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Xz))
            }
            Checksum::Crc32(_) => {
                Hasher::Crc32(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc))
            }
            Checksum::Crc64Nvme(_) => {
                Hasher::Crc64Nvme(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme))
            }
            Checksum::Sha1(_) => Hasher::Sha1(Sha1::new()),
            Checksum::MultipartMd5 { .. } | Checksum::Composite { .. } => {
                let (part_size, kind) = part_layout(want).unwrap_or((1, Checksum::Md5([0; 16])));
                Hasher::Parts(Box::new((
                    want.clone(),
                    InlineParts::at(kind, part_size, 0),
                )))
            }
            Checksum::UnevenParts { lengths, .. } => {
                let kind = part_kind(want).unwrap_or(Checksum::Md5([0; 16]));
                let mut parts = InlineParts::at(kind, u64::MAX, 0);
                parts.lengths = Some(std::sync::Arc::clone(lengths));
                Hasher::Parts(Box::new((want.clone(), parts)))
            }
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => update_prefetched(h, data),
            Hasher::Sha256(h) => update_prefetched(h, data),
            Hasher::GitBlobSha1(h) => update_prefetched(h, data),
            Hasher::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            Hasher::Crc64Ecma(d) | Hasher::Crc32(d) | Hasher::Crc64Nvme(d) => d.update(data),
            Hasher::Sha1(h) => update_prefetched(h, data),
            Hasher::Parts(p) => p.1.update(data),
        }
    }

    pub fn finish(self) -> Checksum {
        match self {
            Hasher::Md5(h) => Checksum::Md5(h.finalize().into()),
            Hasher::Sha256(h) => Checksum::Sha256(h.finalize().into()),
            Hasher::GitBlobSha1(h) => Checksum::GitBlobSha1(h.finalize().into()),
            Hasher::Crc32c(c) => Checksum::Crc32c(c),
            Hasher::Crc64Ecma(d) => Checksum::Crc64Ecma(d.finalize()),
            Hasher::Crc32(d) => Checksum::Crc32(d.finalize() as u32),
            Hasher::Crc64Nvme(d) => Checksum::Crc64Nvme(d.finalize()),
            Hasher::Sha1(h) => Checksum::Sha1(h.finalize().into()),
            Hasher::Parts(p) => {
                let (want, parts) = *p;
                // Whatever is pending is the last part.
                let digests = parts.finish(0, 0).into_iter().map(|(_, d)| d);
                over_parts(&want, digests)
            }
        }
    }
}

/// How far ahead of the bytes being hashed their cache lines are requested, and in what steps.
const PREFETCH_AHEAD: usize = 4 << 10;
const PREFETCH_STEP: usize = 1 << 10;

/// Feeds a serial hash (SHA-256, SHA-1, MD5) with the lines a few KiB ahead requested from
/// memory first.
///
/// These hashes work through one 64-byte block after another, each depending on the last, so
/// the CPU cannot run ahead to the loads of the next blocks as it does in a copy: every line
/// that is not in the cache stalls the hash, and the hardware prefetcher does not cover it
/// here. Bytes hashed in order were mostly received a while before, on another core (held
/// ahead of the frontier), and are no longer in its caches. Measured on this project's 2-core
/// VM (SHA-NI), 1 GiB in 64 KiB pieces: SHA-256 of bytes already in the cache 0.57 s, of
/// bytes out of it 1.01 s plain and 0.58–0.61 s prefetched 4 KiB ahead in 1 KiB steps; SHA-1
/// 1.05 → 0.55 s, MD5 1.83 → 1.64 s; bytes in the cache cost the same either way.
fn update_prefetched(h: &mut impl Digest, data: &[u8]) {
    prefetch(data.get(..PREFETCH_AHEAD).unwrap_or(data));
    for (i, step) in data.chunks(PREFETCH_STEP).enumerate() {
        let ahead = i * PREFETCH_STEP + PREFETCH_AHEAD;
        if let Some(next) = data.get(ahead..) {
            prefetch(&next[..next.len().min(PREFETCH_STEP)]);
        }
        h.update(step);
    }
}

/// Asks for the cache lines of `d` without waiting for them (a hint: no fault, no effect on
/// what is computed).
fn prefetch(d: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in d.chunks(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch reads nothing the program sees and never faults; the address is
        // inside `d` anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = d;
}

/// For a checksum over equal parts (a multipart ETag, a composite checksum): the part size and
/// the kind of checksum each part has (an empty one, to build a hasher from).
pub fn part_layout(c: &Checksum) -> Option<(u64, Checksum)> {
    match c {
        Checksum::MultipartMd5 { part_size, .. } | Checksum::Composite { part_size, .. } => {
            Some((*part_size, part_kind(c)?))
        }
        _ => None,
    }
}

/// The same checksum over equal parts, spelt as one over parts of given lengths (hashed in
/// order, part by part): for parts too large to be fetched one request each. None when `c` is
/// not over equal parts or its parts do not add up to `size`.
pub fn as_uneven(c: &Checksum, size: u64) -> Option<Checksum> {
    let (of, part_size, parts, value) = match c {
        Checksum::MultipartMd5 {
            part_size,
            parts,
            digest,
        } => (None, *part_size, *parts, digest.to_vec()),
        Checksum::Composite {
            of,
            part_size,
            parts,
            value,
        } => (Some(*of), *part_size, *parts, value.clone()),
        _ => return None,
    };
    let full = u64::from(parts.checked_sub(1)?).checked_mul(part_size)?;
    let last = size
        .checked_sub(full)
        .filter(|&l| l > 0 && l <= part_size)?;
    let mut lengths = vec![part_size; parts as usize - 1];
    lengths.push(last);
    Some(Checksum::UnevenParts {
        of,
        lengths: lengths.into(),
        value,
    })
}

/// For any checksum over parts, equal or not: the kind of checksum each part has (an empty one).
fn part_kind(c: &Checksum) -> Option<Checksum> {
    match c {
        Checksum::MultipartMd5 { .. } | Checksum::UnevenParts { of: None, .. } => {
            Some(Checksum::Md5([0; 16]))
        }
        Checksum::Composite { of, .. } | Checksum::UnevenParts { of: Some(of), .. } => {
            Some(of.empty())
        }
        _ => None,
    }
}

/// Each whole part's checksum, computed as a range's bytes stream past. Only for ranges that
/// start on a part boundary; a part the range ends in the middle of is dropped (read back later).
pub struct InlineParts {
    part_size: u64,
    /// Each part's length, for parts that are not equal (hashed whole and in order only);
    /// bytes past the last listed part go into one more part, so they cannot match.
    lengths: Option<std::sync::Arc<[u64]>>,
    kind: Checksum,
    index: u32,
    in_part: u64,
    hasher: Box<Hasher>,
    pub done: Vec<(u32, Vec<u8>)>,
}

impl InlineParts {
    pub fn new(c: &Checksum, range: ByteRange) -> Option<InlineParts> {
        let (part_size, kind) = part_layout(c)?;
        if part_size == 0 || !range.start.is_multiple_of(part_size) {
            return None;
        }
        let index = u32::try_from(range.start / part_size).ok()?;
        Some(InlineParts::at(kind, part_size, index))
    }

    /// Parts of `kind`, `part_size` bytes each, the first being part `index`.
    fn at(kind: Checksum, part_size: u64, index: u32) -> InlineParts {
        InlineParts {
            part_size: part_size.max(1),
            lengths: None,
            index,
            in_part: 0,
            hasher: Box::new(Hasher::for_checksum(&kind, 0)),
            kind,
            done: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let len = self.part_len();
            let room = (len - self.in_part).min(data.len() as u64) as usize;
            self.hasher.update(&data[..room]);
            self.in_part += room as u64;
            data = &data[room..];
            if self.in_part == len {
                self.close();
            }
        }
    }

    /// The length of the part being hashed.
    fn part_len(&self) -> u64 {
        match &self.lengths {
            Some(l) => l.get(self.index as usize).copied().unwrap_or(u64::MAX),
            None => self.part_size,
        }
    }

    fn close(&mut self) {
        let fresh = Hasher::for_checksum(&self.kind, 0);
        let h = std::mem::replace(&mut *self.hasher, fresh).finish();
        self.done.push((self.index, raw(&h)));
        self.index += 1;
        self.in_part = 0;
    }

    /// At the end of the range: a short last part counts only if it is the file's end.
    pub fn finish(mut self, range_end: u64, size: u64) -> Vec<(u32, Vec<u8>)> {
        if self.in_part > 0 && range_end == size {
            self.close();
        }
        self.done
    }
}

/// The whole file's checksum over parts from the part checksums computed inline; parts no
/// range computed (an earlier run fetched them, or a range began mid-part) are read back with
/// `read`. Returns the checksum and how many bytes were read back.
pub fn combine_parts(
    want: &Checksum,
    size: u64,
    mut have: std::collections::HashMap<u32, Vec<u8>>,
    mut read: impl FnMut(ByteRange, &Checksum) -> Result<Vec<u8>>,
) -> Result<(Checksum, u64)> {
    let (part_size, kind) = part_layout(want)
        .ok_or_else(|| Error::new(Kind::Local, "combine_parts needs a checksum over parts"))?;
    let parts = size.div_ceil(part_size.max(1));
    let mut digests = Vec::new();
    let mut read_back = 0;
    for i in 0..parts {
        let r = ByteRange {
            start: i * part_size,
            end: ((i + 1) * part_size).min(size),
        };
        digests.push(match u32::try_from(i).ok().and_then(|i| have.remove(&i)) {
            Some(d) => d,
            None => {
                read_back += r.len();
                read(r, &kind)?
            }
        });
    }
    Ok((over_parts(want, digests.into_iter()), read_back))
}

/// The checksum of `want`'s kind over the given part checksums, in order.
fn over_parts(want: &Checksum, digests: impl Iterator<Item = Vec<u8>>) -> Checksum {
    let part_size = part_layout(want).map_or(1, |(size, _)| size);
    let kind = part_kind(want).unwrap_or(Checksum::Md5([0; 16]));
    let mut outer = Hasher::for_checksum(&kind, 0);
    let mut parts = 0u32;
    for d in digests {
        outer.update(&d);
        parts = parts.saturating_add(1);
    }
    let value = raw(&outer.finish());
    match want {
        Checksum::Composite { of, .. } => Checksum::Composite {
            of: *of,
            part_size,
            parts,
            value,
        },
        Checksum::UnevenParts { of, lengths, .. } => Checksum::UnevenParts {
            of: *of,
            lengths: std::sync::Arc::clone(lengths),
            value,
        },
        _ => Checksum::MultipartMd5 {
            part_size,
            parts,
            digest: value.try_into().unwrap_or([0; 16]),
        },
    }
}

/// Reads `r` of the open file `f` back in 1 MiB pieces, feeding each to `feed`.
fn read_back(f: &File, path: &Path, r: ByteRange, feed: &mut dyn FnMut(&[u8])) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (r.len() as usize).min(1 << 20)];
    let mut off = r.start;
    while off < r.end {
        let n = ((r.end - off) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], off)
            .map_err(|e| Error::local("read back", path, e))?;
        feed(&buf[..n]);
        off += n as u64;
    }
    Ok(())
}

/// The checksum of `kind` over `r` of the open file `f`, read back, as raw bytes.
pub fn digest_of_range(f: &File, path: &Path, kind: &Checksum, r: ByteRange) -> Result<Vec<u8>> {
    let mut h = Hasher::for_checksum(kind, r.len());
    read_back(f, path, r, &mut |d| h.update(d))?;
    Ok(raw(&h.finish()))
}

/// The CRC kind of a whole-object checksum, whose per-range values combine without re-reading.
pub fn crc_algorithm(c: &Checksum) -> Option<crc_fast::CrcAlgorithm> {
    use crc_fast::CrcAlgorithm as A;
    match c {
        Checksum::Crc32(_) => Some(A::Crc32IsoHdlc),
        Checksum::Crc32c(_) => Some(A::Crc32Iscsi),
        Checksum::Crc64Nvme(_) => Some(A::Crc64Nvme),
        Checksum::Crc64Ecma(_) => Some(A::Crc64Xz),
        _ => None,
    }
}

/// The whole file's CRC from the CRCs of the ranges computed as they streamed in; the parts of
/// `[0, size)` no range covers (fetched by an earlier run) are read back with `read`. Returns
/// the checksum of `want`'s kind and how many bytes had to be read back.
pub fn combine_ranges(
    want: &Checksum,
    size: u64,
    mut ranges: Vec<(ByteRange, u64)>,
    mut read: impl FnMut(ByteRange) -> Result<u64>,
) -> Result<(Checksum, u64)> {
    let algo = crc_algorithm(want)
        .ok_or_else(|| Error::new(Kind::Local, "combine_ranges needs a CRC checksum"))?;
    ranges.sort_by_key(|(r, _)| r.start);
    let (mut crc, mut pos, mut read_back) = (crc_fast::checksum(algo, b""), 0u64, 0u64);
    let add = |crc: &mut u64, value: u64, len: u64| {
        *crc = crc_fast::checksum_combine(algo, *crc, value, len);
    };
    for (r, value) in ranges {
        if r.start < pos || r.end > size {
            continue; // overlapping or stray: the gap logic below covers those bytes
        }
        if r.start > pos {
            let gap = ByteRange {
                start: pos,
                end: r.start,
            };
            add(&mut crc, read(gap)?, gap.len());
            read_back += gap.len();
        }
        add(&mut crc, value, r.len());
        pos = r.end;
    }
    if pos < size {
        let gap = ByteRange {
            start: pos,
            end: size,
        };
        add(&mut crc, read(gap)?, gap.len());
        read_back += gap.len();
    }
    let got = match want {
        Checksum::Crc32(_) => Checksum::Crc32(crc as u32),
        Checksum::Crc32c(_) => Checksum::Crc32c(crc as u32),
        Checksum::Crc64Nvme(_) => Checksum::Crc64Nvme(crc),
        _ => Checksum::Crc64Ecma(crc),
    };
    Ok((got, read_back))
}

/// The CRC of `r` of the open file `f`, read back.
pub fn crc_of_range(
    f: &File,
    path: &Path,
    algo: crc_fast::CrcAlgorithm,
    r: ByteRange,
) -> Result<u64> {
    let mut d = crc_fast::Digest::new(algo);
    read_back(f, path, r, &mut |b| d.update(b))?;
    Ok(d.finalize())
}

/// Hashes the open file `f` (named `path` in messages) for `want`, reading `size` bytes with
/// positional reads (the descriptor may be shared with writers).
pub fn hash_file(f: &File, path: &Path, want: &Checksum, size: u64) -> Result<Checksum> {
    use std::os::unix::fs::FileExt;
    let mut h = Hasher::for_checksum(want, size);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        let n = f
            .read_at(&mut buf, off)
            .map_err(|e| Error::local("read back", path, e))?;
        if n == 0 {
            return Err(Error::new(
                Kind::Corrupt,
                format!(
                    "{} is {off} bytes, shorter than the {size} expected",
                    path.display()
                ),
            ));
        }
        let n = (n as u64).min(size - off) as usize;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finish())
}

/// Neither combinable from range CRCs nor hashed part by part: the bytes must be hashed in
/// order (see `inorder`).
pub fn needs_in_order(c: &Checksum) -> bool {
    crc_algorithm(c).is_none() && part_layout(c).is_none()
}

/// Compares what was computed with what the listing promised.
pub fn check(got: &Checksum, want: &Checksum, shown: &str) -> Result<()> {
    if got != want {
        // Parts are taken as equal but the last once the first and last parts' lengths fit;
        // middle parts of other lengths cannot be told from corruption (the value repeats).
        let layout = if part_layout(want).is_some() {
            "; if every attempt gets the same value, the object's middle parts may differ in \
             length (see `aws s3api head-object --part-number N`)"
        } else {
            ""
        };
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "{shown}: {} mismatch (expected {}, got {}); the partial file was discarded, rerun to fetch it again{layout}",
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
    use crate::remote::PartChecksum;

    fn hex_arr<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    /// `data` hashed for `want`, fed in pieces of `split` bytes.
    fn hashed(want: &Checksum, data: &[u8], split: usize) -> Checksum {
        let mut h = Hasher::for_checksum(want, data.len() as u64);
        for c in data.chunks(split) {
            h.update(c);
        }
        h.finish()
    }

    #[test]
    fn equal_parts_respelt_as_lengths_keep_their_value_and_add_up() {
        let mp = Checksum::MultipartMd5 {
            part_size: 10,
            parts: 3,
            digest: [7; 16],
        };
        let Some(Checksum::UnevenParts { of, lengths, value }) = as_uneven(&mp, 25) else {
            panic!("respelt")
        };
        assert_eq!(
            (of, &lengths[..], value),
            (None, &[10, 10, 5][..], vec![7; 16])
        );
        // A `-1` object: one part, the whole object.
        let one = Checksum::MultipartMd5 {
            part_size: 100,
            parts: 1,
            digest: [1; 16],
        };
        assert!(
            matches!(as_uneven(&one, 100), Some(Checksum::UnevenParts { lengths, .. }) if lengths[..] == [100])
        );
        assert_eq!(as_uneven(&mp, 31), None, "parts that do not add up");
        assert_eq!(as_uneven(&Checksum::Md5([0; 16]), 5), None);
    }

    #[test]
    fn serial_hashes_fed_in_prefetched_steps_equal_the_whole_at_any_split() {
        // Lengths around the prefetch step and distance, fed whole and in pieces that cut
        // across them: what is hashed must not depend on how it was fed.
        let data: Vec<u8> = (0..3 * PREFETCH_AHEAD as u32 + 77)
            .map(|i| (i * 31 % 253) as u8)
            .collect();
        for len in [
            0,
            1,
            63,
            64,
            PREFETCH_STEP - 1,
            PREFETCH_STEP,
            PREFETCH_AHEAD + 1,
            data.len(),
        ] {
            let d = &data[..len];
            let sha = Checksum::Sha256(Sha256::digest(d).into());
            let md5 = Checksum::Md5(Md5::digest(d).into());
            let sha1 = Checksum::Sha1(Sha1::digest(d).into());
            let blob = [format!("blob {len}\0").as_bytes(), d].concat();
            let git = Checksum::GitBlobSha1(Sha1::digest(&blob).into());
            for want in [&sha, &md5, &sha1, &git] {
                for split in [1, 7, 64, 1000, PREFETCH_STEP + 1, PREFETCH_AHEAD, 1 << 20] {
                    assert_eq!(&hashed(want, d, split), want, "len {len}, split {split}");
                }
            }
        }
    }

    #[test]
    fn known_digests() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let text = b"The quick brown fox jumps over the lazy dog";
        std::fs::write(tmp.path(), text).unwrap();
        let md5 = Checksum::Md5(hex_arr("9e107d9d372bb6826bd81d3542a419d6"));
        let sha = Checksum::Sha256(hex_arr(
            "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592",
        ));
        for want in [&md5, &sha] {
            check(
                &hash_file(tmp.as_file(), tmp.path(), want, 43).unwrap(),
                want,
                "x",
            )
            .unwrap();
        }
        // RFC 3720 test vector: 32 bytes of zeros.
        let crc = Checksum::Crc32c(0x8a9136aa);
        let mut h = Hasher::for_checksum(&crc, 32);
        h.update(&[0u8; 32]);
        check(&h.finish(), &crc, "x").unwrap();
        // CRC-64/XZ check value.
        let crc64 = Checksum::Crc64Ecma(0x995D_C9BB_DF19_39FA);
        let mut h = Hasher::for_checksum(&crc64, 9);
        h.update(b"1234");
        h.update(b"56789");
        check(&h.finish(), &crc64, "x").unwrap();
        // `git hash-object` of "hello\n".
        let blob = Checksum::GitBlobSha1(hex_arr("ce013625030ba8dba906f756967f9e9ca394464a"));
        let mut h = Hasher::for_checksum(&blob, 6);
        h.update(b"hel");
        h.update(b"lo\n");
        check(&h.finish(), &blob, "x").unwrap();
    }

    #[test]
    fn multipart_etags_are_the_md5_of_the_part_md5s() {
        // 12 bytes in parts of 5: "hello world!" -> "hello", " worl", "d!".
        let parts: Vec<[u8; 16]> = ["hello", " worl", "d!"]
            .iter()
            .map(|p| Md5::digest(p.as_bytes()).into())
            .collect();
        let want = Checksum::MultipartMd5 {
            part_size: 5,
            parts: 3,
            digest: Md5::digest(parts.concat()).into(),
        };
        // However the bytes arrive, the parts are cut at the same places.
        for split in [1usize, 3, 5, 7, 12] {
            assert_eq!(hashed(&want, b"hello world!", split), want, "split {split}");
        }
        assert_eq!(want.hex().rsplit_once('-').unwrap().1, "3/5");
    }

    #[test]
    fn parts_of_unequal_lengths_are_cut_where_the_server_says() {
        // "hello world!" as 3, 6 and 3 bytes: "hel", "lo wor", "ld!".
        let md5s: Vec<[u8; 16]> = ["hel", "lo wor", "ld!"]
            .iter()
            .map(|p| Md5::digest(p.as_bytes()).into())
            .collect();
        let etag: [u8; 16] = Md5::digest(md5s.concat()).into();
        let want = Checksum::UnevenParts {
            of: None,
            lengths: vec![3, 6, 3].into(),
            value: etag.to_vec(),
        };
        for split in [1usize, 2, 5, 12] {
            assert_eq!(hashed(&want, b"hello world!", split), want, "split {split}");
        }
        // Taken as equal parts of 3 (what part 1 alone suggests), the same bytes do not match.
        let equal = Checksum::MultipartMd5 {
            part_size: 3,
            parts: 3,
            digest: etag,
        };
        assert_ne!(hashed(&equal, b"hello world!", 4), equal);
        // A byte too many or too few changes the value.
        assert_ne!(hashed(&want, b"hello world!!", 4), want);
        assert_ne!(hashed(&want, b"hello world", 4), want);
        // A composite CRC-32 over the same parts.
        let part = |b: &[u8]| crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, b) as u32;
        let joined: Vec<u8> = ["hel", "lo wor", "ld!"]
            .iter()
            .flat_map(|p| part(p.as_bytes()).to_be_bytes())
            .collect();
        let crc = Checksum::UnevenParts {
            of: Some(PartChecksum::Crc32),
            lengths: vec![3, 6, 3].into(),
            value: part(&joined).to_be_bytes().to_vec(),
        };
        assert_eq!(hashed(&crc, b"hello world!", 5), crc);
        assert_eq!(want.hex().rsplit_once('-').unwrap().1, "3/3,6,3");
    }

    #[test]
    fn crc_check_values_and_composites() {
        let hash = |want: &Checksum, data: &[u8]| hashed(want, data, 4);
        // The catalogue's check values (reveng CRC catalogue), input "123456789".
        assert_eq!(
            hash(&Checksum::Crc32(0), b"123456789"),
            Checksum::Crc32(0xcbf4_3926)
        );
        assert_eq!(
            hash(&Checksum::Crc64Nvme(0), b"123456789"),
            Checksum::Crc64Nvme(0xae8b_1486_0a79_9888)
        );
        assert_eq!(
            hash(&Checksum::Crc64Ecma(0), b"123456789"),
            Checksum::Crc64Ecma(0x995d_c9bb_df19_39fa)
        );
        // Composite CRC-32 over parts of 4: crc32(be(crc("1234")) ‖ be(crc("5678")) ‖ be(crc("9"))).
        let part = |b: &[u8]| crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, b) as u32;
        let joined: Vec<u8> = [&b"1234"[..], b"5678", b"9"]
            .iter()
            .flat_map(|p| part(p).to_be_bytes())
            .collect();
        let want = Checksum::Composite {
            of: PartChecksum::Crc32,
            part_size: 4,
            parts: 3,
            value: part(&joined).to_be_bytes().to_vec(),
        };
        assert_eq!(hash(&want, b"123456789"), want);
    }

    #[test]
    fn range_crcs_combine_to_the_whole_and_gaps_are_read_back() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for want in [
            Checksum::Crc32(0),
            Checksum::Crc32c(0),
            Checksum::Crc64Nvme(0),
            Checksum::Crc64Ecma(0),
        ] {
            let algo = crc_algorithm(&want).unwrap();
            let whole = {
                let mut h = Hasher::for_checksum(&want, data.len() as u64);
                h.update(&data);
                h.finish()
            };
            let crc = |a: u64, b: u64| crc_fast::checksum(algo, &data[a as usize..b as usize]);
            let r = |a, b| ByteRange { start: a, end: b };
            // Out of order, with a gap at 3000..4000 and at the end, and an overlapping stray.
            let ranges = vec![
                (r(4000, 10_000 - 10), crc(4000, 9990)),
                (r(0, 3000), crc(0, 3000)),
                (r(2000, 5000), crc(2000, 5000)),
            ];
            let mut asked = Vec::new();
            let (got, read_back) = combine_ranges(&want, 10_000, ranges, |g| {
                asked.push(g);
                Ok(crc(g.start, g.end))
            })
            .unwrap();
            assert_eq!(got, whole, "{}", want.algorithm());
            assert_eq!(asked, vec![r(3000, 4000), r(9990, 10_000)]);
            assert_eq!(read_back, 1010);
        }
        // An empty file: the CRC of nothing.
        let (got, _) = combine_ranges(&Checksum::Crc32c(0), 0, vec![], |_| unreachable!()).unwrap();
        assert_eq!(got, Checksum::Crc32c(0));
    }

    #[test]
    fn parts_hashed_inline_per_range_combine_to_the_etag() {
        let data: Vec<u8> = (0..23u8).collect();
        let whole = |want: &Checksum| {
            let mut h = Hasher::for_checksum(want, 23);
            h.update(&data);
            h.finish()
        };
        for probe in [
            Checksum::MultipartMd5 {
                part_size: 5,
                parts: 5,
                digest: [0; 16],
            },
            Checksum::Composite {
                of: PartChecksum::Crc32,
                part_size: 5,
                parts: 5,
                value: vec![],
            },
        ] {
            let want = whole(&probe);
            let r = |a, b| ByteRange { start: a, end: b };
            // Ranges of 10 (two parts each), one missing (5..10 is read back), and the last short.
            let mut have = std::collections::HashMap::new();
            for range in [r(0, 5), r(10, 20), r(20, 23)] {
                let mut p = InlineParts::new(&probe, range).unwrap();
                for c in data[range.start as usize..range.end as usize].chunks(3) {
                    p.update(c);
                }
                have.extend(p.finish(range.end, 23));
            }
            assert!(
                InlineParts::new(&probe, r(3, 10)).is_none(),
                "mid-part start"
            );
            let mut asked = Vec::new();
            let (got, read_back) = combine_parts(&want, 23, have, |g, kind| {
                asked.push(g);
                let mut h = Hasher::for_checksum(kind, g.len());
                h.update(&data[g.start as usize..g.end as usize]);
                Ok(raw(&h.finish()))
            })
            .unwrap();
            assert_eq!(got, want);
            assert_eq!((asked, read_back), (vec![r(5, 10)], 5));
        }
    }

    #[test]
    fn mismatch_is_corrupt_and_names_the_file() {
        let want = Checksum::Md5([0; 16]);
        let got = Checksum::Md5([1; 16]);
        let e = check(&got, &want, "s3://b/x").unwrap_err();
        assert_eq!(e.kind(), Kind::Corrupt);
        assert!(
            e.message().starts_with("s3://b/x: md5 mismatch"),
            "{}",
            e.message()
        );
    }
}
