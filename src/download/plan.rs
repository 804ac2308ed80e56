//! The planner: a pure function from (listing, what DEST already holds, options) to what to
//! fetch, skip and remove. No I/O, so every skip/resume decision is unit-tested here.

use std::collections::{BTreeMap, HashMap};

use crate::remote::{ByteRange, RemoteFile};
use crate::url::RelPath;

/// A file the loader itself completed in an earlier run (manifest or journal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub size: u64,
    pub version: Option<String>,
    /// What it was verified against when it was completed; `None` for records written before
    /// this was kept (the manifest then says so rather than claim a check).
    pub checked: Option<super::manifest::Checked>,
}

/// Bytes of a partial file that an earlier run made durable, for one object version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub size: u64,
    pub version: Option<String>,
    pub done: Vec<ByteRange>,
}

/// What DEST holds, read by the caller before planning.
#[derive(Debug, Default, Clone)]
pub struct LocalState {
    /// Files the loader completed before, by path.
    pub recorded: BTreeMap<RelPath, Recorded>,
    /// Size of the file at its final path, for listed paths that exist.
    pub on_disk: HashMap<RelPath, u64>,
    /// Partial files whose part file still exists with the right length.
    pub partial: HashMap<RelPath, Partial>,
}

#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    pub chunk_size: u64,
    /// One request per file, from its first byte: something on the way ignores `Range`, so
    /// ranges would each cost the whole object, and resuming would too.
    pub whole_files: bool,
    /// Fetch everything again, trusting nothing on disk.
    pub force: bool,
}

/// One file to fetch, with the byte ranges still missing (all of it unless resuming). Chunks
/// are cut from `missing` lazily ([`FilePlan::chunks`]), so memory does not depend on the
/// size a listing claims.
#[derive(Debug, Clone)]
pub struct FilePlan {
    pub path: RelPath,
    pub file: RemoteFile,
    pub missing: Vec<ByteRange>,
    pub chunk_size: u64,
    /// Keep the existing part file and its journal records.
    pub resume: bool,
    /// Chunks are cut at `shift + k × chunk_size` (0 but for a second read, see [`FilePlan::reread`]).
    pub shift: u64,
}

impl FilePlan {
    /// The requests this file needs, in order.
    pub fn chunks(&self) -> impl Iterator<Item = ByteRange> + '_ {
        let t = self.translation();
        self.missing.iter().flat_map(move |r| {
            split_aligned(moved(*r, t, true), self.chunk_size).map(move |c| moved(c, t, false))
        })
    }

    /// How many chunks, without generating them.
    pub fn chunk_count(&self) -> u64 {
        let t = self.translation();
        self.missing
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| moved(*r, t, true))
            .map(|r| (r.end - 1) / self.chunk_size - r.start / self.chunk_size + 1)
            .sum()
    }

    /// The first chunk of `r` (a missing range, or what is left of one) as this plan cuts it.
    pub fn first_chunk(&self, r: ByteRange) -> Option<ByteRange> {
        let t = self.translation();
        split_aligned(moved(r, t, true), self.chunk_size)
            .next()
            .map(|c| moved(c, t, false))
    }

    /// How far ranges move so that `shift` lands on a multiple of the chunk size.
    fn translation(&self) -> u64 {
        let c = self.chunk_size.max(1);
        (c - self.shift % c) % c
    }

    /// Plans a second read of the whole file, cut into ranges that start at offsets other than
    /// the first read's: a first range of about half a chunk, then whole chunks (a file fetched
    /// in one request is cut in about two). Damage tied to a body offset of each reply then
    /// lands elsewhere in the file, so two damaged reads cannot agree (see `reread`). The shift
    /// is odd, so damage repeating every 2^n bytes of a reply (a buffer size) moves too.
    pub fn reread(&mut self) {
        let size = self.file.size;
        let chunk = self.chunk_size.min(size.div_ceil(2)).max(2);
        self.chunk_size = chunk;
        // A 1-byte file has one cut only: no shift, so its reads never vouch for each other.
        self.shift = if size >= 2 { (chunk / 2) | 1 } else { 0 };
        self.missing = missing_ranges(size, &[]);
        self.resume = false;
    }

    /// Fetched whole in one request (its hash can be computed as it streams in).
    pub fn is_single_request(&self) -> bool {
        self.missing.len() == 1
            && self.missing[0].start == 0
            && self.missing[0].end == self.file.size
            && self.file.size <= self.chunk_size
    }
}

#[derive(Debug, Default)]
pub struct Plan {
    /// Largest first, so the long poles start early and small files fill the gaps.
    pub fetch: Vec<FilePlan>,
    pub skip: Vec<(RelPath, RemoteFile)>,
    /// Files an earlier run wrote that the source no longer has (or that filters now exclude).
    pub remove: Vec<RelPath>,
    pub bytes_to_fetch: u64,
    pub resumed_bytes: u64,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.fetch.is_empty() && self.remove.is_empty()
    }
}

/// The longest single request a part of a multipart object may make (see `plan`).
const LARGEST_PART_REQUEST: u64 = 256 << 20;

pub fn plan(files: Vec<(RelPath, RemoteFile)>, local: &LocalState, opts: PlanOptions) -> Plan {
    let chunk = opts.chunk_size.max(1);
    let mut out = Plan::default();
    let listed: std::collections::HashSet<&RelPath> = files.iter().map(|(p, _)| p).collect();
    out.remove = local
        .recorded
        .keys()
        .filter(|p| !listed.contains(p))
        .cloned()
        .collect();

    for (path, file) in files {
        // A file without a version token cannot be told from another of its size: it is never
        // taken as the one on disk, nor resumed (`None` is "unknown", not "the same").
        let same = |size: u64, version: &Option<String>| {
            file.version.is_some() && size == file.size && *version == file.version
        };
        // A file that landed decoded (stored gzip) is on disk at its decoded size; one that
        // landed as stored when the source now says it is encoded (or the reverse) is not it.
        let up_to_date = !opts.force
            && local.recorded.get(&path).is_some_and(|r| {
                let decoded = r.checked.as_ref().and_then(|c| c.decoded.as_ref());
                let landed = decoded.map_or(r.size, |d| d.size);
                same(r.size, &r.version)
                    && decoded.is_some() == file.stored_gzip
                    && local.on_disk.get(&path) == Some(&landed)
            });
        if up_to_date {
            out.skip.push((path, file));
            continue;
        }
        let partial = local
            .partial
            .get(&path)
            .filter(|p| !opts.force && !opts.whole_files && same(p.size, &p.version));
        let done = partial.map(|p| p.done.as_slice()).unwrap_or(&[]);
        let missing = missing_ranges(file.size, done);
        let missing_bytes: u64 = missing.iter().map(ByteRange::len).sum();
        // Saturating: a hostile listing's sizes must not wrap around to a small total.
        out.bytes_to_fetch = out.bytes_to_fetch.saturating_add(file.size);
        out.resumed_bytes = out
            .resumed_bytes
            .saturating_add(file.size.saturating_sub(missing_bytes));
        // A part larger than a chunk and than LARGEST_PART_REQUEST (a `-1` multipart object,
        // 5 GiB parts) would be fetched as one request with nothing durable before its end and
        // no parallelism: such parts are hashed in order instead, and the file fetched in
        // ranges like any other. Smaller parts stay one request each, hashed as they stream.
        let file = match file
            .checksum
            .as_ref()
            .map(|c| (c, crate::checksum::part_layout(c)))
        {
            Some((c, Some((part, _)))) if part > chunk.max(LARGEST_PART_REQUEST) => RemoteFile {
                checksum: crate::checksum::as_uneven(c, file.size).or(file.checksum.clone()),
                ..file
            },
            _ => file,
        };
        // Checksums over parts are computed part by part as the bytes stream in: chunks are cut
        // at part boundaries (a whole number of parts each).
        // A checksum that needs the bytes in order (SHA-256, single-part MD5): short requests,
        // so the streams on the file stay close to the hashing frontier.
        let chunk_size = match file.checksum.as_ref() {
            Some(c) => match crate::checksum::part_layout(c) {
                Some((part, _)) if part > 0 => (chunk / part).max(1).saturating_mul(part),
                _ if crate::checksum::needs_in_order(c) => {
                    chunk.min(super::inorder::IN_ORDER_CHUNK)
                }
                _ => chunk,
            },
            None => chunk,
        };
        let chunk_size = if opts.whole_files {
            file.size.max(1)
        } else {
            chunk_size
        };
        out.fetch.push(FilePlan {
            path,
            file,
            missing,
            chunk_size,
            resume: partial.is_some(),
            shift: 0,
        });
    }
    // Largest first; ties by path so plans are deterministic.
    out.fetch.sort_by(|a, b| {
        b.file
            .size
            .cmp(&a.file.size)
            .then_with(|| a.path.cmp(&b.path))
    });
    out
}

/// `r` moved up (or back down) by `t` bytes.
fn moved(r: ByteRange, t: u64, up: bool) -> ByteRange {
    if up {
        ByteRange {
            start: r.start.saturating_add(t),
            end: r.end.saturating_add(t),
        }
    } else {
        ByteRange {
            start: r.start.saturating_sub(t),
            end: r.end.saturating_sub(t),
        }
    }
}

/// `[0, size)` minus the union of `done`, in order.
pub fn missing_ranges(size: u64, done: &[ByteRange]) -> Vec<ByteRange> {
    let mut done: Vec<ByteRange> = done
        .iter()
        .map(|r| ByteRange {
            start: r.start.min(size),
            end: r.end.min(size),
        })
        .filter(|r| !r.is_empty())
        .collect();
    done.sort_by_key(|r| r.start);
    let mut out = Vec::new();
    let mut pos = 0;
    for r in done {
        if r.start > pos {
            out.push(ByteRange {
                start: pos,
                end: r.start,
            });
        }
        pos = pos.max(r.end);
    }
    if pos < size {
        out.push(ByteRange {
            start: pos,
            end: size,
        });
    }
    out
}

/// Splits `r` at multiples of `chunk`, so the chunks of a resumed file line up with those of
/// the run that started it. Lazy, and safe up to `u64::MAX`.
pub fn split_aligned(r: ByteRange, chunk: u64) -> impl Iterator<Item = ByteRange> {
    let chunk = chunk.max(1);
    let mut start = r.start;
    std::iter::from_fn(move || {
        if start >= r.end {
            return None;
        }
        let boundary = (start / chunk).saturating_add(1).saturating_mul(chunk);
        let end = boundary.min(r.end);
        let out = ByteRange { start, end };
        start = end;
        Some(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rf(path: &str, size: u64, version: &str) -> (RelPath, RemoteFile) {
        (
            RelPath::new(path).unwrap(),
            RemoteFile {
                path: path.into(),
                key: format!("k/{path}"),
                size,
                checksum: None,
                version: Some(version.into()),
                archived: None,
                stored_gzip: false,
                archive: None,
                staged: None,
            },
        )
    }

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    const OPTS: PlanOptions = PlanOptions {
        chunk_size: 10,
        whole_files: false,
        force: false,
    };

    #[test]
    fn chunk_boundaries() {
        assert_eq!(
            split_aligned(r(0, 25), 10).collect::<Vec<_>>(),
            vec![r(0, 10), r(10, 20), r(20, 25)]
        );
        assert_eq!(
            split_aligned(r(0, 10), 10).collect::<Vec<_>>(),
            vec![r(0, 10)]
        );
        assert_eq!(
            split_aligned(r(7, 12), 10).collect::<Vec<_>>(),
            vec![r(7, 10), r(10, 12)]
        );
        assert_eq!(
            split_aligned(r(0, 1), 10).collect::<Vec<_>>(),
            vec![r(0, 1)]
        );
        let huge: Vec<_> = split_aligned(r(u64::MAX - 5, u64::MAX), 4).collect();
        assert_eq!(
            huge,
            vec![r(u64::MAX - 5, u64::MAX - 3), r(u64::MAX - 3, u64::MAX)]
        );
        assert!(split_aligned(r(5, 5), 10).next().is_none());
    }

    #[test]
    fn missing_is_the_complement() {
        assert_eq!(missing_ranges(30, &[]), vec![r(0, 30)]);
        assert_eq!(missing_ranges(30, &[r(10, 20)]), vec![r(0, 10), r(20, 30)]);
        assert_eq!(
            missing_ranges(30, &[r(20, 30), r(0, 10), r(5, 15)]),
            vec![r(15, 20)]
        );
        assert!(missing_ranges(30, &[r(0, 30)]).is_empty());
        assert!(missing_ranges(0, &[]).is_empty());
        // Records beyond the end (a shorter new version) are clipped, not trusted.
        assert_eq!(missing_ranges(5, &[r(3, 50)]), vec![r(0, 3)]);
    }

    #[test]
    fn fresh_dest_fetches_everything_largest_first() {
        let p = plan(
            vec![rf("small", 3, "a"), rf("big", 25, "b"), rf("empty", 0, "c")],
            &LocalState::default(),
            OPTS,
        );
        let order: Vec<&str> = p.fetch.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(order, ["big", "small", "empty"]);
        assert_eq!(
            p.fetch[0].chunks().collect::<Vec<_>>(),
            vec![r(0, 10), r(10, 20), r(20, 25)]
        );
        assert_eq!(p.fetch[0].chunk_count(), 3);
        assert!(
            p.fetch[2].chunks().next().is_none() && p.fetch[2].chunk_count() == 0,
            "a zero-byte file has no chunk but is still created"
        );
        assert_eq!(p.bytes_to_fetch, 28);
        assert!(!p.is_noop());
    }

    #[test]
    fn complete_files_are_skipped_only_when_recorded_and_same_size_and_version() {
        let mut local = LocalState::default();
        for (path, size, v) in [
            ("same", 5, "v1"),
            ("changed", 5, "old"),
            ("truncated", 5, "v1"),
        ] {
            let p = RelPath::new(path).unwrap();
            local.recorded.insert(
                p.clone(),
                Recorded {
                    size,
                    version: Some(v.into()),
                    checked: None,
                },
            );
            local
                .on_disk
                .insert(p, if path == "truncated" { 2 } else { 5 });
        }
        // On disk but never written by the loader: fetched (and overwritten).
        local.on_disk.insert(RelPath::new("foreign").unwrap(), 5);
        let files = vec![
            rf("same", 5, "v1"),
            rf("changed", 5, "new"),
            rf("truncated", 5, "v1"),
            rf("foreign", 5, "v1"),
        ];
        let p = plan(files.clone(), &local, OPTS);
        let skipped: Vec<&str> = p.skip.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(skipped, ["same"]);
        assert_eq!(p.fetch.len(), 3);
        let forced = plan(
            files,
            &local,
            PlanOptions {
                force: true,
                ..OPTS
            },
        );
        assert!(forced.skip.is_empty());
    }

    #[test]
    fn parts_larger_than_a_chunk_are_hashed_in_order_in_ranges_not_fetched_whole() {
        const G: u64 = 1 << 30;
        let opts = PlanOptions {
            chunk_size: 64 << 20,
            whole_files: false,
            force: false,
        };
        let mut f = rf("big", 50 * G, "v");
        f.1.checksum = Some(crate::remote::Checksum::MultipartMd5 {
            part_size: 50 * G,
            parts: 1,
            digest: [3; 16],
        });
        let out = plan(vec![f.clone()], &LocalState::default(), opts);
        let fp = &out.fetch[0];
        assert!(matches!(
            fp.file.checksum,
            Some(crate::remote::Checksum::UnevenParts { .. })
        ));
        assert_eq!(fp.chunk_size, 4 << 20, "in-order ranges");
        assert_eq!(fp.chunk_count(), 50 * 256, "in ranges, not one request");
        // Parts up to LARGEST_PART_REQUEST keep their per-part hashing, one request per part.
        f.1.checksum = Some(crate::remote::Checksum::MultipartMd5 {
            part_size: 100 << 20,
            parts: 512,
            digest: [3; 16],
        });
        let out = plan(vec![f], &LocalState::default(), opts);
        assert!(matches!(
            out.fetch[0].file.checksum,
            Some(crate::remote::Checksum::MultipartMd5 { .. })
        ));
        assert_eq!(out.fetch[0].chunk_size, 100 << 20);
    }

    #[test]
    fn a_file_without_a_version_is_never_skipped_nor_resumed() {
        // A server that lists no ETag (s3s-fs): two objects of one size are not "the same".
        let mut local = LocalState::default();
        let p = RelPath::new("w.bin").unwrap();
        local.recorded.insert(
            p.clone(),
            Recorded {
                size: 25,
                version: None,
                checked: None,
            },
        );
        local.on_disk.insert(p.clone(), 25);
        local.partial.insert(
            p,
            Partial {
                size: 25,
                version: None,
                done: vec![r(0, 10)],
            },
        );
        let mut file = rf("w.bin", 25, "x");
        file.1.version = None;
        let out = plan(vec![file], &local, OPTS);
        assert!(out.skip.is_empty(), "None == None is not the same version");
        assert_eq!(out.fetch.len(), 1);
        assert!(
            !out.fetch[0].resume,
            "nor is a part file of no version resumed"
        );
        assert_eq!(out.fetch[0].chunk_count(), 3);
    }

    #[test]
    fn everything_recorded_and_present_is_a_noop() {
        let mut local = LocalState::default();
        let p = RelPath::new("a").unwrap();
        local.recorded.insert(
            p.clone(),
            Recorded {
                size: 5,
                version: Some("v".into()),
                checked: None,
            },
        );
        local.on_disk.insert(p, 5);
        assert!(plan(vec![rf("a", 5, "v")], &local, OPTS).is_noop());
    }

    #[test]
    fn recorded_files_missing_from_the_listing_are_removed() {
        let mut local = LocalState::default();
        for path in ["keep", "gone"] {
            local.recorded.insert(
                RelPath::new(path).unwrap(),
                Recorded {
                    size: 1,
                    version: None,
                    checked: None,
                },
            );
        }
        let p = plan(vec![rf("keep", 1, "v")], &local, OPTS);
        assert_eq!(p.remove, vec![RelPath::new("gone").unwrap()]);
    }

    #[test]
    fn partial_files_resume_only_for_the_same_version_and_size() {
        let mut local = LocalState::default();
        let done = vec![r(0, 10), r(20, 25)];
        local.partial.insert(
            RelPath::new("f").unwrap(),
            Partial {
                size: 25,
                version: Some("v1".into()),
                done: done.clone(),
            },
        );
        let p = plan(vec![rf("f", 25, "v1")], &local, OPTS);
        assert!(p.fetch[0].resume);
        assert_eq!(p.fetch[0].chunks().collect::<Vec<_>>(), vec![r(10, 20)]);
        assert_eq!(p.fetch[0].chunk_count(), 1);
        assert_eq!(p.resumed_bytes, 15);

        let p = plan(vec![rf("f", 25, "v2")], &local, OPTS);
        assert!(!p.fetch[0].resume, "a new version starts over");
        assert_eq!(p.fetch[0].chunk_count(), 3);

        let p = plan(vec![rf("f", 30, "v1")], &local, OPTS);
        assert!(!p.fetch[0].resume, "a different size starts over");

        let p = plan(
            vec![rf("f", 25, "v1")],
            &local,
            PlanOptions {
                force: true,
                ..OPTS
            },
        );
        assert!(!p.fetch[0].resume, "--force starts over");
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    fn ranges() -> impl Strategy<Value = Vec<ByteRange>> {
        proptest::collection::vec((0u64..1000, 0u64..1000), 0..8).prop_map(|v| {
            v.into_iter()
                .map(|(a, b)| ByteRange {
                    start: a.min(b),
                    end: a.max(b),
                })
                .collect()
        })
    }

    proptest! {
        /// Missing ranges are sorted, disjoint, inside the file, and with `done` cover it.
        #[test]
        fn missing_is_the_exact_complement(size in 0u64..1000, done in ranges()) {
            let missing = missing_ranges(size, &done);
            let mut covered = vec![false; size as usize];
            for r in done.iter().chain(&missing) {
                for i in r.start..r.end.min(size) {
                    covered[i as usize] = true;
                }
            }
            prop_assert!(covered.iter().all(|&c| c));
            for w in missing.windows(2) {
                prop_assert!(w[0].end < w[1].start);
            }
            for r in &missing {
                prop_assert!(r.start < r.end && r.end <= size);
                for d in done.iter().filter(|d| !d.is_empty()) {
                    prop_assert!(d.end <= r.start || d.start >= r.end, "{:?} overlaps {:?}", r, d);
                }
            }
        }

        /// Chunks tile the missing ranges exactly, and their count is known without cutting them,
        /// up to sizes near u64::MAX.
        #[test]
        fn chunks_tile_and_count(start in any::<u64>(), len in 0u64..10_000, chunk in 1u64..5000) {
            let end = start.saturating_add(len);
            let fp = FilePlan {
                path: RelPath::new("f").unwrap(),
                file: RemoteFile { path: "f".into(), key: "f".into(), size: end, checksum: None, version: None, archived: None, stored_gzip: false, archive: None, staged: None },
                missing: vec![ByteRange { start, end }],
                chunk_size: chunk,
                resume: false,
                shift: 0,
            };
            let chunks: Vec<_> = fp.chunks().collect();
            prop_assert_eq!(chunks.len() as u64, fp.chunk_count());
            let mut pos = start;
            for c in &chunks {
                prop_assert_eq!(c.start, pos);
                prop_assert!(c.end > c.start && c.len() <= chunk);
                pos = c.end;
            }
            prop_assert_eq!(pos, end);
        }

        /// A second read tiles the whole file, and a proxy that damages body byte `k` of every
        /// reply long enough to have it damages other file offsets in it than in the first read
        /// (so the two reads cannot agree), whatever the chunk size and `k`.
        #[test]
        fn a_reread_is_damaged_elsewhere(size in 2u64..1_000_000, chunk in 2u64..100_000, k in any::<u64>(), period_log in 1u32..21) {
            let mut fp = FilePlan {
                path: RelPath::new("f").unwrap(),
                file: RemoteFile { path: "f".into(), key: "f".into(), size, checksum: None, version: None, archived: None, stored_gzip: false, archive: None, staged: None },
                missing: vec![ByteRange { start: 0, end: size }],
                chunk_size: chunk,
                resume: false,
                shift: 0,
            };
            let k = k % size;
            let damaged = |fp: &FilePlan, period: u64| -> std::collections::BTreeSet<u64> {
                fp.chunks()
                    .flat_map(|c| (k..c.len()).step_by(period as usize).map(move |o| c.start + o))
                    .collect()
            };
            // Damage at one body offset of each reply, and every 2^n bytes from it.
            let period = 1u64 << period_log;
            let first = (damaged(&fp, size), damaged(&fp, period));
            fp.reread();
            let chunks: Vec<_> = fp.chunks().collect();
            prop_assert_eq!(chunks.len() as u64, fp.chunk_count());
            let mut pos = 0;
            for c in &chunks {
                prop_assert_eq!(c.start, pos);
                prop_assert!(c.end > c.start);
                pos = c.end;
            }
            prop_assert_eq!(pos, size);
            prop_assert!(first.0.is_empty() || damaged(&fp, size) != first.0, "{:?}", chunks);
            prop_assert!(first.1.is_empty() || damaged(&fp, period) != first.1, "every {} bytes: {:?}", period, chunks);
            // The engine cuts them one at a time, the same way.
            let mut one_by_one = Vec::new();
            let mut start = 0;
            while let Some(c) = fp.first_chunk(ByteRange { start, end: size }) {
                one_by_one.push(c);
                start = c.end;
            }
            prop_assert_eq!(one_by_one, chunks);
        }
    }
}
