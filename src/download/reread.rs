//! What a checksum mismatch means, and what to do about it. Most mismatches are corruption on
//! the way: the file is fetched once more and must then match. A multipart ETag is different:
//! several S3-compatible servers give `"<hex>-N"` ETags that are not the MD5 of the parts' MD5s
//! (Cloudflare R2 objects uploaded before 2023-06-21, Apache Ozone, Riak CS, some gateways;
//! rclone distrusts multipart ETags on R2, Alibaba and unknown providers for this reason). An
//! intact object from such a server fails the check on every read, so refetching alone would
//! fail every run.
//!
//! So a multipart-ETag mismatch is judged by a second read, cut into ranges at other offsets
//! (see [`super::plan::FilePlan::reread`]): corruption on the way (a bad NIC, a broken proxy,
//! even one that damages the same body offset of every reply) gives the two reads different
//! values; a server whose ETags mean something else gives the same value twice. Two reads that
//! agree with each other but not with the ETag are kept, checked by size only and recorded as
//! such; from then on the run takes this server's multipart ETags as no checksum at all, so
//! the extra cost is one more read of the files that failed before that was known — never a
//! double download of every object.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::manifest::Checked;
use crate::checksum as verify;
use crate::error::Error;
use crate::remote::Checksum;
use crate::url::RelPath;

/// What a finished file's bytes are, once compared with what the source promised.
#[derive(Debug)]
pub enum Verdict {
    /// Keep it; the manifest records this.
    Keep(Checked),
    /// Discard it: corrupt (exit 6 unless it can be fetched once more).
    Corrupt(Error),
}

/// The run's memory of mismatches, shared by every pass over the files.
#[derive(Debug, Default)]
pub struct Rereads {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// A multipart ETag's check value each file's failed read gave.
    first_reads: HashMap<RelPath, Checksum>,
    /// Files that failed a check since the last [`Rereads::take_failed`].
    failed: Vec<RelPath>,
    /// Files fetched a second time after a mismatch.
    refetched: HashSet<RelPath>,
    /// The first file whose two reads agreed with each other but not with its multipart ETag:
    /// this server's multipart ETags are not MD5s of the parts.
    distrusted: Option<String>,
}

impl Rereads {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Judges `got`, computed over a finished file's bytes, against `want`. `shown` names the
    /// file in messages; `first` is set when this verdict is the first to find that the
    /// server's multipart ETags mean something else (to be said once).
    pub fn judge(
        &self,
        path: &RelPath,
        got: &Checksum,
        want: &Checksum,
        shown: &str,
    ) -> (Verdict, bool) {
        let Err(mismatch) = verify::check(got, want, shown) else {
            return (Verdict::Keep(Checked::verified(want)), false);
        };
        let mut inner = self.lock();
        if !etag_over_parts(want) {
            inner.failed.push(path.clone());
            return (Verdict::Corrupt(mismatch), false);
        }
        match inner.first_reads.get(path) {
            Some(first) if first == got => {
                let first_time = inner.distrusted.is_none();
                inner.distrusted.get_or_insert_with(|| shown.to_string());
                let why = "not checked: the server's multipart ETag is not an MD5 of the \
                           parts' MD5s (two reads, cut differently, agreed with each other \
                           and not with it)";
                (Verdict::Keep(Checked::size_only(why)), first_time)
            }
            Some(first) => {
                let note = format!(
                    "a second read, in ranges cut elsewhere, gave {} where the first gave {}: \
                     the bytes are being damaged on the way (a proxy, a network card), or the \
                     object changed",
                    got.hex(),
                    first.hex()
                );
                inner.failed.push(path.clone());
                (Verdict::Corrupt(mismatch.note(note)), false)
            }
            None => match &inner.distrusted {
                Some(seen) => {
                    let why = format!(
                        "not checked: this server's multipart ETags are not MD5s of the \
                         parts' MD5s (found on {seen})"
                    );
                    (Verdict::Keep(Checked::size_only(&why)), false)
                }
                None => {
                    inner.first_reads.insert(path.clone(), got.clone());
                    inner.failed.push(path.clone());
                    (Verdict::Corrupt(mismatch), false)
                }
            },
        }
    }

    /// After a pass that failed on corruption: whether to fetch again. `None` when no file
    /// failed a check (the corruption was found elsewhere, say a part file that changed);
    /// `Some(true)` when each file that failed was a first read (the next pass gives them their
    /// second); `Some(false)` when one was already a second read: the run must stop.
    pub fn take_failed(&self) -> Option<bool> {
        let mut inner = self.lock();
        let failed = std::mem::take(&mut inner.failed);
        if failed.is_empty() {
            return None;
        }
        let mut again = true;
        for p in failed {
            again &= inner.refetched.insert(p);
        }
        Some(again)
    }

    /// Whether `path`'s next read must be cut differently (a multipart ETag failed on it).
    pub fn cut_differently(&self, path: &RelPath) -> bool {
        self.lock().first_reads.contains_key(path)
    }
}

/// A multipart ETag's check (MD5 over the parts' MD5s), as opposed to a whole-object MD5 or an
/// additional checksum, which every server computes the one way.
fn etag_over_parts(c: &Checksum) -> bool {
    matches!(
        c,
        Checksum::MultipartMd5 { .. } | Checksum::UnevenParts { of: None, .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(digest: u8) -> Checksum {
        Checksum::MultipartMd5 {
            part_size: 8 << 20,
            parts: 3,
            digest: [digest; 16],
        }
    }

    fn path(p: &str) -> RelPath {
        RelPath::new(p).unwrap()
    }

    fn is_corrupt(v: &Verdict) -> bool {
        matches!(v, Verdict::Corrupt(e) if e.kind() == crate::error::Kind::Corrupt)
    }

    #[test]
    fn a_match_is_verified_against_what_was_promised() {
        let r = Rereads::default();
        let (v, first) = r.judge(&path("a"), &mp(1), &mp(1), "s3://b/a");
        assert!(!first);
        match v {
            Verdict::Keep(c) => assert_eq!(c.checksum, Some(mp(1).tagged())),
            Verdict::Corrupt(e) => panic!("{e}"),
        }
        assert_eq!(r.take_failed(), None);
    }

    #[test]
    fn two_agreeing_reads_against_a_foreign_etag_are_kept_by_size_and_the_server_distrusted() {
        let r = Rereads::default();
        let (a, b) = (path("a"), path("b"));
        let (v, _) = r.judge(&a, &mp(2), &mp(1), "s3://b/a");
        assert!(is_corrupt(&v));
        assert!(r.cut_differently(&a));
        assert_eq!(r.take_failed(), Some(true));
        let (v, first) = r.judge(&a, &mp(2), &mp(1), "s3://b/a");
        assert!(first, "said once");
        match v {
            Verdict::Keep(c) => {
                assert_eq!(c.checksum, None);
                assert!(c.size_only.unwrap().contains("two reads"));
            }
            Verdict::Corrupt(e) => panic!("{e}"),
        }
        // Another file with a multipart ETag is now taken by size, without a second read.
        let (v, first) = r.judge(&b, &mp(7), &mp(9), "s3://b/b");
        assert!(!first);
        match v {
            Verdict::Keep(c) => assert!(c.size_only.unwrap().contains("found on s3://b/a")),
            Verdict::Corrupt(e) => panic!("{e}"),
        }
        // A whole-object MD5 stays a check.
        let (v, _) = r.judge(&b, &Checksum::Md5([1; 16]), &Checksum::Md5([2; 16]), "x");
        assert!(is_corrupt(&v));
    }

    #[test]
    fn two_reads_that_disagree_are_corruption_and_there_is_no_third() {
        let r = Rereads::default();
        let a = path("a");
        let (v, _) = r.judge(&a, &mp(2), &mp(1), "s3://b/a");
        assert!(is_corrupt(&v));
        assert_eq!(r.take_failed(), Some(true));
        let (v, _) = r.judge(&a, &mp(3), &mp(1), "s3://b/a");
        match v {
            Verdict::Corrupt(e) => {
                assert!(e.to_string().contains("md5-of-parts mismatch"), "{e}");
                assert!(e.to_string().contains("damaged on the way"), "{e}");
            }
            Verdict::Keep(_) => panic!("kept"),
        }
        assert_eq!(r.take_failed(), Some(false), "no third read");
    }

    #[test]
    fn any_other_mismatch_gets_one_more_read_per_file() {
        let r = Rereads::default();
        let (a, b) = (path("a"), path("b"));
        let want = Checksum::Crc32c(1);
        let _ = r.judge(&a, &Checksum::Crc32c(2), &want, "a");
        assert!(!r.cut_differently(&a));
        assert_eq!(r.take_failed(), Some(true));
        let _ = r.judge(&a, &Checksum::Crc32c(2), &want, "a");
        assert_eq!(r.take_failed(), Some(false), "a had its second read");
        let _ = r.judge(&b, &Checksum::Crc32c(2), &want, "b");
        let _ = r.judge(&a, &Checksum::Crc32c(2), &want, "a");
        assert_eq!(r.take_failed(), Some(false), "a failed its second read");
    }
}
