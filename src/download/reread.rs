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
    /// The source's multipart ETags are known to be MD5s of the parts (AWS itself): a
    /// mismatch is damage, never judged by two reads.
    etags_are_md5s: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// A multipart ETag's check value each file's failed read gave.
    first_reads: HashMap<RelPath, Checksum>,
    /// Files that failed a check since the last [`Rereads::take_failed`].
    failed: Vec<RelPath>,
    /// Files fetched a second time after a mismatch.
    refetched: HashSet<RelPath>,
    /// The message of a file's second failed read (the one to exit with).
    last_straw: Option<String>,
    /// The first file whose two reads agreed with each other but not with its multipart ETag:
    /// this server's multipart ETags are not MD5s of the parts.
    distrusted: Option<String>,
}

impl Rereads {
    /// For a source whose multipart ETags are (`true`) or may not be MD5s of the parts.
    pub fn new(etags_are_md5s: bool) -> Rereads {
        Rereads {
            etags_are_md5s,
            ..Rereads::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Judges `got`, computed over a finished file's bytes, against `want`. `shown` names the
    /// file in messages; `recut`: this read was cut at other offsets than the first (see
    /// [`super::plan::FilePlan::reread`]) — two reads cut alike can be damaged alike, so only
    /// then does agreement count. The flag returned is set when this verdict is the first to
    /// find that the server's multipart ETags mean something else (to be said once).
    pub fn judge(
        &self,
        path: &RelPath,
        got: &Checksum,
        want: &Checksum,
        shown: &str,
        recut: bool,
    ) -> (Verdict, bool) {
        let Err(mismatch) = verify::check(got, want, shown) else {
            return (Verdict::Keep(Checked::verified(want)), false);
        };
        let mut inner = self.lock();
        if !etag_over_parts(want) || self.etags_are_md5s {
            return inner.corrupt(path, mismatch);
        }
        match inner.first_reads.get(path) {
            Some(first) if first == got && !recut => {
                let note = "the second read was cut like the first (one stream per file: \
                            something on the way ignores Range), so the two cannot tell a \
                            foreign ETag from damage";
                inner.corrupt(path, mismatch.note(note))
            }
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
                inner.corrupt(path, mismatch.note(note))
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
                    inner.corrupt(path, mismatch)
                }
            },
        }
    }

    /// After a pass that failed on corruption: what to do next. `Failed::Elsewhere` when no
    /// file failed a check (the corruption was found elsewhere, say a part file that changed);
    /// `Failed::Again` when each file that failed was a first read (the next pass gives them
    /// their second); `Failed::Final` with the message of a file whose second read failed too.
    pub fn take_failed(&self) -> Failed {
        let mut inner = self.lock();
        let failed = std::mem::take(&mut inner.failed);
        if let Some(message) = inner.last_straw.take() {
            return Failed::Final(message);
        }
        if failed.is_empty() {
            return Failed::Elsewhere;
        }
        inner.refetched.extend(failed);
        Failed::Again
    }

    /// Whether `path`'s next read must be cut differently (a multipart ETag failed on it).
    pub fn cut_differently(&self, path: &RelPath) -> bool {
        self.lock().first_reads.contains_key(path)
    }
}

impl Inner {
    /// A failed check: the file gets a second read, unless this was it.
    fn corrupt(&mut self, path: &RelPath, e: Error) -> (Verdict, bool) {
        if self.refetched.contains(path) {
            self.last_straw
                .get_or_insert_with(|| e.message().to_string());
        } else {
            self.failed.push(path.clone());
        }
        (Verdict::Corrupt(e), false)
    }
}

/// What a pass that failed on corruption leaves to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Failed {
    /// No file failed a check.
    Elsewhere,
    /// Fetch again: each file that failed gets its second read.
    Again,
    /// A file failed its second read: stop, with this message.
    Final(String),
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

    fn kept(v: Verdict) -> Checked {
        match v {
            Verdict::Keep(c) => c,
            Verdict::Corrupt(e) => panic!("{e}"),
        }
    }

    fn corrupt(v: Verdict) -> String {
        match v {
            Verdict::Corrupt(e) => {
                assert_eq!(e.kind(), crate::error::Kind::Corrupt);
                e.to_string()
            }
            Verdict::Keep(c) => panic!("kept: {c:?}"),
        }
    }

    #[test]
    fn a_match_is_verified_against_what_was_promised() {
        let r = Rereads::new(false);
        let (v, first) = r.judge(&path("a"), &mp(1), &mp(1), "s3://b/a", false);
        assert!(!first);
        assert_eq!(kept(v).checksum, Some(mp(1).tagged()));
        assert_eq!(r.take_failed(), Failed::Elsewhere);
    }

    #[test]
    fn two_agreeing_reads_cut_apart_keep_the_file_by_size_and_distrust_the_server() {
        let r = Rereads::new(false);
        let (a, b) = (path("a"), path("b"));
        corrupt(r.judge(&a, &mp(2), &mp(1), "s3://b/a", false).0);
        assert!(r.cut_differently(&a));
        assert_eq!(r.take_failed(), Failed::Again);
        let (v, first) = r.judge(&a, &mp(2), &mp(1), "s3://b/a", true);
        assert!(first, "said once");
        let c = kept(v);
        assert_eq!(c.checksum, None);
        assert!(c.size_only.unwrap().contains("two reads"));
        // Another file with a multipart ETag is now taken by size, without a second read.
        let (v, first) = r.judge(&b, &mp(7), &mp(9), "s3://b/b", false);
        assert!(!first);
        assert!(kept(v).size_only.unwrap().contains("found on s3://b/a"));
        // A whole-object MD5 stays a check.
        let md5 = |d| Checksum::Md5([d; 16]);
        corrupt(r.judge(&b, &md5(1), &md5(2), "x", false).0);
    }

    #[test]
    fn reads_cut_alike_or_from_aws_never_vouch_for_each_other() {
        // One stream per file both times: a proxy damaging body byte k damages both alike.
        let r = Rereads::new(false);
        let a = path("a");
        corrupt(r.judge(&a, &mp(2), &mp(1), "s3://b/a", false).0);
        assert_eq!(r.take_failed(), Failed::Again);
        let e = corrupt(r.judge(&a, &mp(2), &mp(1), "s3://b/a", false).0);
        assert!(e.contains("cut like the first"), "{e}");
        assert!(matches!(r.take_failed(), Failed::Final(m) if m.contains("cut like the first")));
        // AWS computes multipart ETags one way: a mismatch there is damage, however read.
        let r = Rereads::new(true);
        corrupt(r.judge(&a, &mp(2), &mp(1), "s3://b/a", false).0);
        assert!(!r.cut_differently(&a), "no recut on AWS");
        assert_eq!(r.take_failed(), Failed::Again);
        corrupt(r.judge(&a, &mp(2), &mp(1), "s3://b/a", true).0);
        assert!(matches!(r.take_failed(), Failed::Final(_)));
    }

    #[test]
    fn two_reads_that_disagree_are_corruption_and_there_is_no_third() {
        let r = Rereads::new(false);
        let a = path("a");
        corrupt(r.judge(&a, &mp(2), &mp(1), "s3://b/a", false).0);
        assert_eq!(r.take_failed(), Failed::Again);
        let e = corrupt(r.judge(&a, &mp(3), &mp(1), "s3://b/a", true).0);
        assert!(e.contains("md5-of-parts mismatch"), "{e}");
        assert!(e.contains("damaged on the way"), "{e}");
        assert!(matches!(r.take_failed(), Failed::Final(m) if m.contains("damaged on the way")));
    }

    #[test]
    fn the_run_stops_on_the_file_whose_second_read_failed() {
        let r = Rereads::new(false);
        let (a, b) = (path("a"), path("b"));
        let want = Checksum::Crc32c(1);
        corrupt(r.judge(&a, &Checksum::Crc32c(2), &want, "a", false).0);
        assert!(!r.cut_differently(&a), "only multipart ETags are recut");
        assert_eq!(r.take_failed(), Failed::Again);
        // b's first failure comes first in the pass; a's second is the one to stop on.
        corrupt(r.judge(&b, &Checksum::Crc32c(2), &want, "b", false).0);
        corrupt(r.judge(&a, &Checksum::Crc32c(3), &want, "a", false).0);
        match r.take_failed() {
            Failed::Final(m) => assert!(m.starts_with("a:"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
