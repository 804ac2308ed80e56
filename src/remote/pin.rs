//! What identifies one version of an S3 or OSS object, and how a ranged read is pinned to it.
//!
//! The version token is the object's ETag when the server gives one. Some S3-compatible
//! servers list objects without an ETag (s3s-fs, some gateways): then it is the object's
//! Last-Modified time and key, which change when the object is rewritten — so a rewrite with
//! other bytes of the same size, or another source's file of the same name and size, is never
//! taken for the file on disk. With neither, there is no token (`None`): the planner never
//! skips nor resumes such a file, and P2P mode fetches it direct. Pure, no I/O.

use aws_smithy_types::date_time::{DateTime, Format};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ETAG, IF_MATCH, LAST_MODIFIED};

/// Tokens made from Last-Modified start with this. The space makes them impossible as ETags
/// (an entity tag has no space, RFC 9110 §8.8.3), so no server's ETag is ever taken for one.
const MODIFIED: &str = "last-modified ";

/// The version token for an object listed with `etag` and `modified` (ISO 8601, as in
/// ListObjectsV2, or an HTTP date, as in a HEAD reply).
pub fn token(etag: Option<String>, modified: Option<&str>, key: &str) -> Option<String> {
    if let Some(e) = etag.filter(|e| !e.trim_matches('"').is_empty()) {
        return Some(e);
    }
    let at = parse_time(modified?)?;
    Some(format!("{MODIFIED}{} {key}", at.to_millis().ok()?))
}

/// How a version token pins a read.
#[derive(Debug, PartialEq, Eq)]
pub enum Pin<'a> {
    /// A strong ETag: sent as `If-Match`, compared with the reply's.
    Etag(&'a str),
    /// A weak ETag (`W/"…"`): `If-Match` compares strongly (RFC 9110 §13.1.1) and never
    /// matches one, so it is only compared with the reply's.
    WeakEtag(&'a str),
    /// Last-Modified in milliseconds since the epoch: `If-Unmodified-Since`, and the reply's
    /// Last-Modified compared.
    Modified(i64),
}

pub fn pin(version: &str) -> Pin<'_> {
    if let Some(ms) = version
        .strip_prefix(MODIFIED)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|m| m.parse().ok())
    {
        return Pin::Modified(ms);
    }
    if version.starts_with("W/") {
        return Pin::WeakEtag(version);
    }
    Pin::Etag(version)
}

/// The precondition header a ranged GET carries for `version`.
pub fn precondition(version: &str) -> Option<(HeaderName, HeaderValue)> {
    match pin(version) {
        Pin::Etag(e) => Some((IF_MATCH, HeaderValue::from_str(e).ok()?)),
        Pin::WeakEtag(_) => None,
        // HTTP dates have whole seconds: the listing's time rounded up, so an object not
        // modified since is never refused.
        Pin::Modified(ms) => {
            let secs = ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) > 0);
            let date = DateTime::from_secs(secs).fmt(Format::HttpDate).ok()?;
            Some((
                reqwest::header::IF_UNMODIFIED_SINCE,
                HeaderValue::from_str(&date).ok()?,
            ))
        }
    }
}

/// Whether a reply's headers show another version than `version`; `Some(what it shows)`
/// when they do. A server that ignores the precondition must still not mix two versions.
pub fn changed(version: &str, h: &HeaderMap) -> Option<String> {
    let header = |n: HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    match pin(version) {
        Pin::Etag(want) | Pin::WeakEtag(want) => {
            let got = header(ETAG)?;
            (bare(&got) != bare(want)).then(|| format!("ETag {got}, listed {want}"))
        }
        Pin::Modified(ms) => {
            let got = header(LAST_MODIFIED)?;
            let at = parse_time(&got)?.to_millis().ok()?;
            // HTTP dates drop the listing's milliseconds; servers round or truncate them.
            (at.abs_diff(ms) > 1000).then(|| format!("Last-Modified {got}"))
        }
    }
}

/// An ETag without quotes or weakness marker.
fn bare(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}

fn parse_time(s: &str) -> Option<DateTime> {
    let s = s.trim();
    DateTime::from_str(s, Format::DateTime)
        .or_else(|_| DateTime::from_str(s, Format::HttpDate))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_the_token_else_the_modification_time_and_key_else_none() {
        assert_eq!(
            token(
                Some("\"abc\"".into()),
                Some("2026-01-01T00:00:00.000Z"),
                "k"
            ),
            Some("\"abc\"".into())
        );
        let t = token(None, Some("2026-01-01T00:00:01.500Z"), "m/a.bin").unwrap();
        assert_eq!(t, "last-modified 1767225601500 m/a.bin");
        assert_ne!(
            t,
            token(None, Some("2026-01-01T00:00:01.500Z"), "n/a.bin").unwrap(),
            "another key, another version"
        );
        assert_ne!(
            t,
            token(None, Some("2026-01-01T00:00:02.000Z"), "m/a.bin").unwrap(),
            "rewritten, another version"
        );
        assert_eq!(
            token(None, Some("Thu, 01 Jan 2026 00:00:01 GMT"), "k"),
            Some("last-modified 1767225601000 k".into())
        );
        assert_eq!(token(Some("\"\"".into()), None, "k"), None);
        assert_eq!(token(None, Some("yesterday"), "k"), None);
        assert_eq!(token(None, None, "k"), None);
    }

    #[test]
    fn reads_are_pinned_strongly_never_with_a_weak_etag() {
        assert_eq!(
            precondition("\"abc\"").map(|(n, v)| (n, v.to_str().unwrap().to_string())),
            Some((IF_MATCH, "\"abc\"".into()))
        );
        assert_eq!(precondition("W/\"abc\""), None);
        let (n, v) = precondition("last-modified 1767225601500 k").unwrap();
        assert_eq!(n, reqwest::header::IF_UNMODIFIED_SINCE);
        assert_eq!(v, "Thu, 01 Jan 2026 00:00:02 GMT", "rounded up");
    }

    #[test]
    fn a_reply_of_another_version_is_told() {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("\"abc\""));
        assert_eq!(changed("abc", &h), None);
        assert_eq!(changed("W/\"abc\"", &h), None);
        assert!(changed("\"abd\"", &h).is_some());
        let mut h = HeaderMap::new();
        h.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Thu, 01 Jan 2026 00:00:01 GMT"),
        );
        assert_eq!(changed("last-modified 1767225601500 k", &h), None);
        assert!(changed("last-modified 1767225605000 k", &h).is_some());
        assert_eq!(
            changed("last-modified 1767225601500 k", &HeaderMap::new()),
            None
        );
        // A server's ETag that looks like a token is an ETag: compared, never a panic.
        assert_eq!(pin("modified:x"), Pin::Etag("modified:x"));
        assert_eq!(pin("last-modified x"), Pin::Etag("last-modified x"));
        assert!(changed("last-modified -9223372036854775808 k", &h).is_some());
    }
}
