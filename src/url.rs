//! Source URLs and safe relative paths: pure parsing, so every malformed input fails here,
//! offline, before a client is built or a byte is written.

use std::fmt;

use crate::error::{Error, Result};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUrl {
    /// `s3://`, `gs://` and `oss://` share one grammar: a bucket and an optional prefix (a
    /// folder) or object key.
    Bucket {
        scheme: BucketScheme,
        bucket: String,
        /// Without leading `/`; may be empty (the whole bucket) or end in `/`.
        prefix: String,
    },
    Hf(HfUrl),
    Oci(OciUrl),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketScheme {
    S3,
    Gs,
    Oss,
}

impl BucketScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketScheme::S3 => "s3",
            BucketScheme::Gs => "gs",
            BucketScheme::Oss => "oss",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfRepoType {
    Model,
    Dataset,
    Space,
}

/// `hf://[datasets/|spaces/]ORG/REPO[@REVISION][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfUrl {
    pub repo_type: HfRepoType,
    /// `ORG/REPO`.
    pub repo: String,
    /// Branch, tag, sha, `refs/pr/N` or `refs/convert/NAME`; `main` when the URL has none.
    pub revision: String,
    /// A sub-folder or one file inside the repository; empty for the whole repository.
    pub path: String,
}

/// `oci://REGISTRY[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST]` (the distribution spec's
/// reference grammar; the tag defaults to `latest`; a digest pins the manifest and wins over a
/// tag given with it, as in docker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciUrl {
    /// `host[:port]`, lowercase.
    pub registry: String,
    /// `path/to/repo`: lowercase components.
    pub repository: String,
    /// `latest` when the URL has neither tag nor digest.
    pub tag: String,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl OciUrl {
    /// What the manifest is asked for by: the digest when pinned, else the tag.
    pub fn reference(&self) -> &str {
        self.digest.as_deref().unwrap_or(&self.tag)
    }

    /// Host without the port.
    pub fn host(&self) -> &str {
        match self.registry.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => self.registry.split(':').next().unwrap_or(&self.registry),
        }
    }
}

const SCHEMES_HELP: &str = "expected hf://ORG/REPO[@REVISION][/PATH], s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], oss://BUCKET[/PREFIX] or oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]";

impl SourceUrl {
    /// Parses a source URL (the remote side of a download, `--check` or `--verify`).
    pub fn parse(input: &str) -> Result<Self> {
        Self::parse_as(input, "source")
    }

    /// Parses the remote side of a run; `role` ("source" or "destination") names it in errors.
    /// The result is canonical: one value, and one printed spelling, per source.
    pub fn parse_as(input: &str, role: &str) -> Result<Self> {
        let bad = |why: &str| Error::usage(format!("invalid {role} URL {input:?}: {why}"));
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(bad(&format!("no scheme; {SCHEMES_HELP}")));
        };
        // Schemes are case-insensitive (RFC 3986); `gcs://` is gsutil's other spelling.
        let bucket_scheme = match scheme.to_ascii_lowercase().as_str() {
            "s3" => BucketScheme::S3,
            "gs" | "gcs" => BucketScheme::Gs,
            "oss" => BucketScheme::Oss,
            "hf" => return parse_hf(rest).map(SourceUrl::Hf).map_err(|w| bad(&w)),
            "oci" => return parse_oci(rest).map(SourceUrl::Oci).map_err(|w| bad(&w)),
            other => {
                return Err(bad(&format!("unknown scheme {other:?}; {SCHEMES_HELP}")));
            }
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is empty"));
        }
        check_bucket_name(bucket_scheme, bucket).map_err(|w| bad(&w))?;
        if prefix.starts_with('/') {
            return Err(bad(
                "the path after the bucket starts with '/' (an empty folder name)",
            ));
        }
        refuse_dot_segments(prefix).map_err(|w| bad(&w))?;
        // `s3://b/p` and `s3://b/p/` name the same folder: one spelling, without the slash.
        Ok(SourceUrl::Bucket {
            scheme: bucket_scheme,
            bucket: bucket.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    /// Whether `recorded` (a manifest's or lock's source text, perhaps written with another
    /// spelling or by an older version) names this same source. Hub repository ids are
    /// case-insensitive (the Hub redirects `Org/Repo` to `org/repo`); bucket names and object
    /// keys are not.
    pub fn same_source(&self, recorded: &str) -> bool {
        let Ok(other) = SourceUrl::parse(recorded) else {
            return false;
        };
        match (self, &other) {
            (SourceUrl::Hf(a), SourceUrl::Hf(b)) => {
                a.repo_type == b.repo_type
                    && a.repo.eq_ignore_ascii_case(&b.repo)
                    && a.revision == b.revision
                    && a.path == b.path
            }
            _ => *self == other,
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            SourceUrl::Bucket { scheme, .. } => scheme.as_str(),
            SourceUrl::Hf(_) => "hf",
            SourceUrl::Oci(_) => "oci",
        }
    }
}

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceUrl::Bucket {
                scheme,
                bucket,
                prefix,
            } => {
                write!(f, "{}://{bucket}", scheme.as_str())?;
                if !prefix.is_empty() {
                    write!(f, "/{prefix}")?;
                }
                Ok(())
            }
            SourceUrl::Hf(h) => {
                f.write_str("hf://")?;
                match h.repo_type {
                    HfRepoType::Model => {}
                    HfRepoType::Dataset => f.write_str("datasets/")?,
                    HfRepoType::Space => f.write_str("spaces/")?,
                }
                write!(f, "{}@{}", h.repo, h.revision)?;
                if !h.path.is_empty() {
                    write!(f, "/{}", h.path)?;
                }
                Ok(())
            }
            SourceUrl::Oci(o) => {
                write!(f, "oci://{}/{}:{}", o.registry, o.repository, o.tag)?;
                if let Some(d) = &o.digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
        }
    }
}

/// Each service's bucket naming rules, checked offline so a typo is a usage error (exit 2)
/// instead of a server's 400 or 404 after credentials were looked up.
fn check_bucket_name(scheme: BucketScheme, b: &str) -> std::result::Result<(), String> {
    let (max, extra, rules): (usize, &[u8], &str) = match scheme {
        // S3 allows names of up to 63 characters; GCS up to 222 when dotted (63 per part).
        BucketScheme::S3 => (63, b".-", "S3 bucket names are 3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"),
        BucketScheme::Gs => (222, b".-_", "GCS bucket names are 3-63 lowercase letters, digits, '-', '_' and '.' (up to 222 with dots, 63 between them), starting and ending with a letter or digit"),
        BucketScheme::Oss => (63, b"-", "OSS bucket names are 3-63 lowercase letters, digits and '-', starting and ending with a letter or digit"),
    };
    let fits = (3..=max).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !b.contains("..")
        && b.split('.').all(|part| part.len() <= 63);
    if !fits {
        return Err(format!("{b:?} is not a valid bucket name: {rules}"));
    }
    if b.split('.').count() == 4 && b.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return Err(format!(
            "{b:?} is not a valid bucket name: it has the form of an IP address"
        ));
    }
    Ok(())
}

/// `.` and `..` segments (also percent-encoded, `%2e%2E`): HTTP libraries normalise them away
/// after a request is signed, so what is fetched would not be what was asked or signed.
fn refuse_dot_segments(path: &str) -> std::result::Result<(), String> {
    for seg in path.split('/') {
        let decoded = seg.to_ascii_lowercase().replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Err(format!(
                "the path has a {seg:?} segment; object names are taken literally and a dot segment would be rewritten by HTTP libraries, so name the object or folder without it"
            ));
        }
    }
    Ok(())
}

fn parse_hf(rest: &str) -> std::result::Result<HfUrl, String> {
    refuse_dot_segments(rest)?;
    let (repo_type, rest) = if let Some(r) = rest.strip_prefix("datasets/") {
        (HfRepoType::Dataset, r)
    } else if let Some(r) = rest.strip_prefix("spaces/") {
        (HfRepoType::Space, r)
    } else if let Some(r) = rest.strip_prefix("models/") {
        (HfRepoType::Model, r)
    } else {
        (HfRepoType::Model, rest)
    };
    let (org, rest) = rest
        .split_once('/')
        .ok_or("expected hf://ORG/REPO (the repository id has two parts)")?;
    // KServe's spelling, `hf://ORG/REPO:REVISION` (its storage initializer splits the name
    // at ':'), is `@REVISION`: neither repository names nor git refs may contain ':'.
    let respelt;
    let rest = match rest.split_once(':') {
        Some((name, rev)) if !name.contains(['/', '@']) && !rest.contains('@') => {
            respelt = format!("{name}@{rev}");
            respelt.as_str()
        }
        _ => rest,
    };
    let (name_and_rev, mut path) = match rest.split_once('@') {
        // The revision may itself contain '/', so split off the name first.
        Some((name, rev_and_path)) if !name.contains('/') => {
            let (rev, path) = split_revision(rev_and_path)?;
            return finish_hf(repo_type, org, name, rev, path);
        }
        _ => rest.split_once('/').unwrap_or((rest, "")),
    };
    path = path.trim_end_matches('/');
    finish_hf(repo_type, org, name_and_rev, "main", path)
}

/// `refs/pr/N` and `refs/convert/NAME` contain slashes; anything else ends at the first `/`.
fn split_revision(s: &str) -> std::result::Result<(&str, &str), String> {
    let cut = if s.starts_with("refs/pr/") || s.starts_with("refs/convert/") {
        let after = s.splitn(4, '/').take(3).map(|p| p.len() + 1).sum::<usize>() - 1;
        after.min(s.len())
    } else {
        s.find('/').unwrap_or(s.len())
    };
    let rev = &s[..cut];
    let path = s[cut..].trim_start_matches('/').trim_end_matches('/');
    if rev.is_empty() || rev.ends_with('/') {
        return Err("the revision after '@' is empty".into());
    }
    Ok((rev, path))
}

fn finish_hf(
    repo_type: HfRepoType,
    org: &str,
    name: &str,
    revision: &str,
    path: &str,
) -> std::result::Result<HfUrl, String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 96
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !s.starts_with(['.', '-'])
    };
    if !valid(org) || !valid(name) {
        return Err(format!(
            "{org}/{name} is not a repository id (ORG/REPO: letters, digits, '.', '-', '_')"
        ));
    }
    if !path.is_empty() {
        RelPath::new(path).map_err(|e| e.message().to_string())?;
    }
    Ok(HfUrl {
        repo_type,
        repo: format!("{org}/{name}"),
        revision: revision.to_string(),
        path: path.to_string(),
    })
}

/// The distribution spec's reference grammar, checked offline so that a typo is exit 2 and not
/// a registry's 400 after credentials were looked up.
fn parse_oci(rest: &str) -> std::result::Result<OciUrl, String> {
    const FORM: &str = "expected oci://REGISTRY[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST], e.g. oci://ghcr.io/org/model:v1";
    let (registry, name) = rest
        .split_once('/')
        .ok_or_else(|| format!("no repository after the registry; {FORM}"))?;
    check_registry(registry)?;
    let (name, digest) = match name.split_once('@') {
        Some((n, d)) => (n, Some(check_digest(d)?)),
        None => (name, None),
    };
    // A ':' after the last '/' starts the tag (a port belongs to the registry, before the first '/').
    let (repository, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    check_repository(repository)?;
    let tag = match tag {
        Some(t) => {
            let ok = (1..=128).contains(&t.len())
                && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(format!(
                    "{t:?} is not a tag: 1-128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
                ));
            }
            t.to_string()
        }
        None => "latest".to_string(),
    };
    Ok(OciUrl {
        registry: registry.to_ascii_lowercase(),
        repository: repository.to_string(),
        tag,
        digest,
    })
}

fn check_registry(r: &str) -> std::result::Result<(), String> {
    let (host, port) = match r.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{r:?} is not a registry: an IPv6 address needs its ']'"))?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "{r:?} is not a registry: {addr:?} is no IPv6 address"
                ));
            }
            if !after.is_empty() && !after.starts_with(':') {
                return Err(format!(
                    "{r:?} is not a registry: text after the IPv6 address's ']'"
                ));
            }
            (None, after.strip_prefix(':'))
        }
        None => match r.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        },
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "{h:?} is not a registry host name (letters, digits, '-' and '.')"
            ));
        }
    }
    if let Some(p) = port {
        if !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{p:?} is not a port (1-65535)"));
        }
    }
    Ok(())
}

/// Path components of lowercase letters and digits joined by `.`, `_`, `__` or dashes.
fn check_repository(repo: &str) -> std::result::Result<(), String> {
    let component = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(&x))
            && !c.contains("..")
            && !c.contains("___")
            && !c.contains("._")
            && !c.contains("_.")
            && !c.contains(".-")
            && !c.contains("-.")
            && !c.contains("_-")
            && !c.contains("-_")
    };
    if repo.is_empty() || repo.len() > 255 || !repo.split('/').all(component) {
        return Err(format!(
            "{repo:?} is not a repository name: '/'-separated parts of lowercase letters and \
             digits, joined inside by '.', '_', '__' or '-'"
        ));
    }
    Ok(())
}

/// `sha256:` and 64 lowercase hex digits (the only digests read).
pub fn check_digest(d: &str) -> std::result::Result<String, String> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(d.to_string())
        }
        _ => Err(format!(
            "{d:?} is not a digest: write @sha256: and 64 lowercase hex digits (other algorithms are not supported)"
        )),
    }
}

/// Name of the loader's own state folder inside DEST; never a source path.
pub const STATE_DIR: &str = ".model-loader";

/// A relative path that stays under DEST: no leading `/`, no empty, `.` or `..` segment,
/// no NUL or backslash, no segment over 255 bytes, and not inside the loader's state folder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn new(path: &str) -> Result<Self> {
        let refuse = |why: &str| {
            Error::usage(format!(
                "refusing source path {path:?}: {why}; it could land outside DEST. \
                 Rename the object, or skip it with --exclude"
            ))
        };
        if path.is_empty() {
            return Err(refuse("it is empty"));
        }
        if path.starts_with('/') {
            return Err(refuse("it is absolute"));
        }
        if path.contains('\0') {
            return Err(refuse("it contains a NUL byte"));
        }
        if path.contains('\\') {
            return Err(refuse("it contains a backslash"));
        }
        for seg in path.split('/') {
            match seg {
                "" => {
                    return Err(refuse(
                        "it has an empty folder name ('//' or a trailing '/')",
                    ))
                }
                "." | ".." => return Err(refuse("it has a '.' or '..' segment")),
                s if s.len() > 255 => {
                    return Err(refuse("a name in it is longer than 255 bytes"));
                }
                _ => {}
            }
        }
        // Case-insensitively: on a volume that folds case (SMB/Azure Files, CIFS, ext4
        // casefold folders) `.Model-Loader/lock` is the loader's own lock file. At any depth:
        // `sub/.model-loader/…` is the state of a DEST loaded inside this one (KServe nests
        // `/mnt/models/adapter` in `/mnt/models`), or was uploaded from one.
        if path
            .split('/')
            .any(|segment| segment.eq_ignore_ascii_case(STATE_DIR))
        {
            return Err(refuse(
                "it is inside the loader's own state folder .model-loader",
            ));
        }
        Ok(RelPath(path.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(s: &str) -> (BucketScheme, String, String) {
        match SourceUrl::parse(s).unwrap() {
            SourceUrl::Bucket {
                scheme,
                bucket,
                prefix,
            } => (scheme, bucket, prefix),
            other => panic!("{other:?}"),
        }
    }

    fn hf(s: &str) -> HfUrl {
        match SourceUrl::parse(s).unwrap() {
            SourceUrl::Hf(h) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bucket_urls() {
        assert_eq!(
            bucket("s3://bkt"),
            (BucketScheme::S3, "bkt".into(), "".into())
        );
        assert_eq!(
            bucket("s3://bkt/"),
            (BucketScheme::S3, "bkt".into(), "".into())
        );
        assert_eq!(
            bucket("s3://my.bucket-1/models/llama/"),
            (
                BucketScheme::S3,
                "my.bucket-1".into(),
                "models/llama".into()
            )
        );
        assert_eq!(
            bucket("gs://bkt/a b/ü.json"),
            (BucketScheme::Gs, "bkt".into(), "a b/ü.json".into())
        );
        assert_eq!(bucket("oss://bkt/x").0, BucketScheme::Oss);
        assert_eq!(bucket("GCS://bkt/x").0, BucketScheme::Gs);
        assert_eq!(bucket("S3://bkt/x").0, BucketScheme::S3);
    }

    #[test]
    fn one_spelling_per_source() {
        for (a, b) in [
            ("s3://bkt/p", "s3://bkt/p/"),
            ("s3://bkt/p", "s3://bkt/p//"),
            ("s3://bkt", "s3://bkt/"),
            ("gs://bkt/m", "gcs://bkt/m/"),
            ("hf://org/repo", "hf://org/repo@main"),
            ("hf://org/repo", "hf://models/org/repo/"),
            ("hf://Org/Repo/sub", "hf://org/repo@main/sub/"),
        ] {
            let (ua, ub) = (SourceUrl::parse(a).unwrap(), SourceUrl::parse(b).unwrap());
            assert!(ua.same_source(b) && ub.same_source(a), "{a} vs {b}");
            assert!(ua.same_source(&ub.to_string()), "{a} vs {ub}");
        }
        assert_eq!(
            SourceUrl::parse("s3://bkt/p/").unwrap().to_string(),
            "s3://bkt/p"
        );
        for (a, b) in [
            ("s3://bkt/p", "s3://bkt/P"),
            ("s3://bkt/p", "gs://bkt/p"),
            ("s3://bkt/p", "s3://bkt/p/q"),
            ("hf://org/repo", "hf://org/repo@v1"),
            ("hf://org/repo", "hf://datasets/org/repo"),
            ("s3://bkt/p", "not a url"),
        ] {
            assert!(!SourceUrl::parse(a).unwrap().same_source(b), "{a} vs {b}");
        }
    }

    #[test]
    fn bucket_names_follow_each_service() {
        for ok in [
            "s3://abc/x",
            "s3://my.bucket-1",
            "gs://my_bucket",
            "oss://a-1-b",
        ] {
            assert!(SourceUrl::parse(ok).is_ok(), "{ok}");
        }
        let long_gcs = format!("gs://{}.{}", "a".repeat(63), "b".repeat(63));
        assert!(SourceUrl::parse(&long_gcs).is_ok());
        for bad in [
            "s3://Bad_Bucket/x",
            "s3://ab",
            "s3://my_bucket",
            "s3://-abc",
            "s3://abc-",
            "s3://a..b",
            "s3://192.168.1.1",
            "oss://my.bucket",
            "oss://my_bucket",
            "gs://UPPER",
        ] {
            let e = SourceUrl::parse(bad).unwrap_err();
            assert!(
                e.message().contains("not a valid bucket name"),
                "{bad}: {}",
                e.message()
            );
        }
        let e = SourceUrl::parse_as("s3://Bad_Bucket", "destination").unwrap_err();
        assert!(e.message().starts_with("invalid destination URL"));
    }

    #[test]
    fn oci_references_follow_the_distribution_grammar() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let ok = |u: &str| match SourceUrl::parse(u).unwrap() {
            SourceUrl::Oci(o) => o,
            other => panic!("{u}: {other:?}"),
        };
        let o = ok("oci://ghcr.io/org/team/model");
        assert_eq!(
            (
                o.registry.as_str(),
                o.repository.as_str(),
                o.tag.as_str(),
                o.digest.as_deref()
            ),
            ("ghcr.io", "org/team/model", "latest", None)
        );
        assert_eq!(o.reference(), "latest");
        let o = ok("oci://127.0.0.1:5000/m:v1.2_x");
        assert_eq!((o.host(), o.tag.as_str()), ("127.0.0.1", "v1.2_x"));
        assert_eq!(
            SourceUrl::Oci(o).to_string(),
            "oci://127.0.0.1:5000/m:v1.2_x"
        );
        let o = ok(&format!("oci://Reg.Example.com:443/a/b__c@{d}"));
        assert_eq!(o.registry, "reg.example.com:443");
        assert_eq!(o.reference(), d);
        assert_eq!(
            SourceUrl::Oci(o.clone()).to_string(),
            format!("oci://reg.example.com:443/a/b__c:latest@{d}")
        );
        // A digest wins over a tag given with it; the tag is kept for the log.
        let o = ok(&format!("oci://localhost:5000/m:v2@{d}"));
        assert_eq!((o.tag.as_str(), o.reference()), ("v2", d.as_str()));
        let o = ok("oci://[::1]:5000/m-x--y:1");
        assert_eq!((o.host(), o.repository.as_str()), ("::1", "m-x--y"));
        // Round trip: the printed form parses back to the same value.
        let printed = SourceUrl::Oci(o.clone()).to_string();
        assert_eq!(SourceUrl::parse(&printed).unwrap(), SourceUrl::Oci(o));
        for (bad, why) in [
            ("oci://ghcr.io", "no repository"),
            ("oci://ghcr.io/", "not a repository name"),
            ("oci://ghcr.io/Org/model", "not a repository name"),
            ("oci://ghcr.io/org//model", "not a repository name"),
            ("oci://ghcr.io/org/model-", "not a repository name"),
            ("oci://ghcr.io/a._b", "not a repository name"),
            ("oci://ghcr.io/a___b", "not a repository name"),
            ("oci://ghcr.io/m:", "not a tag"),
            ("oci://ghcr.io/m:.x", "not a tag"),
            ("oci://ghcr.io/m:a+b", "not a tag"),
            ("oci://ghcr.io/m@sha256:abc", "not a digest"),
            ("oci://ghcr.io/m@sha512:00", "not a digest"),
            ("oci://gh_cr.io/m", "not a registry host"),
            ("oci://ghcr.io:0/m", "not a port"),
            ("oci://ghcr.io:99999/m", "not a port"),
            ("oci://ghcr.io:+500/m", "not a port"),
            ("oci://[::1]x/m", "after the IPv6"),
            ("oci://[::1/m", "needs its ']'"),
        ] {
            let e = SourceUrl::parse(bad).unwrap_err();
            assert!(e.message().contains(why), "{bad}: {}", e.message());
            assert_eq!(e.kind(), crate::error::Kind::Usage);
        }
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for bad in [
            "",
            "bucket/key",
            "/local/path",
            "ftp://b/k",
            "s3://",
            "s3:///key",
            "s3://bad bucket/k",
            "s3://bkt//k",
            "hf://onlyname",
            "hf://org/repo@",
            "hf://org/re po",
            "hf://../repo",
            "hf://org/repo/../../etc",
        ] {
            let e = SourceUrl::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::Kind::Usage, "{bad}");
            assert!(e.message().contains("source"), "{bad}: {}", e.message());
        }
    }

    #[test]
    fn dot_segments_are_refused_by_name_also_percent_encoded() {
        for (bad, seg) in [
            ("s3://bkt/a/../m", "\"..\""),
            ("s3://bkt/./m", "\".\""),
            ("gs://bkt/a/%2e%2E/m", "\"%2e%2E\""),
            ("oss://bkt/m/..", "\"..\""),
            ("hf://org/repo/sub/%2E/x", "\"%2E\""),
            ("hf://org/repo@main/..", "\"..\""),
        ] {
            let e = SourceUrl::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::Kind::Usage, "{bad}");
            assert!(e.message().contains(seg), "{bad}: {}", e.message());
        }
        // Dots inside a name are fine.
        assert!(SourceUrl::parse("s3://bkt/a..b/.hidden/x.").is_ok());
    }

    #[test]
    fn hf_urls() {
        let h = hf("hf://org/repo");
        assert_eq!(
            (h.repo.as_str(), h.revision.as_str(), h.path.as_str()),
            ("org/repo", "main", "")
        );
        assert_eq!(h.repo_type, HfRepoType::Model);
        let h = hf("hf://org/repo@v1.0/sub/dir/");
        assert_eq!((h.revision.as_str(), h.path.as_str()), ("v1.0", "sub/dir"));
        let h = hf("hf://org/repo@refs/pr/12/adapter_config.json");
        assert_eq!(
            (h.revision.as_str(), h.path.as_str()),
            ("refs/pr/12", "adapter_config.json")
        );
        let h = hf("hf://org/repo@refs/convert/parquet");
        assert_eq!(
            (h.revision.as_str(), h.path.as_str()),
            ("refs/convert/parquet", "")
        );
        let h = hf("hf://datasets/org/data@abc1234/train");
        assert_eq!(h.repo_type, HfRepoType::Dataset);
        assert_eq!((h.revision.as_str(), h.path.as_str()), ("abc1234", "train"));
        let h = hf("hf://org/repo/config.json");
        assert_eq!(
            (h.revision.as_str(), h.path.as_str()),
            ("main", "config.json")
        );
        assert_eq!(hf("hf://spaces/o/s").repo_type, HfRepoType::Space);
        // KServe's `:REVISION`, the same URL as `@REVISION` (printed canonically).
        let h = hf("hf://org/repo:v1.0");
        assert_eq!((h.repo.as_str(), h.revision.as_str()), ("org/repo", "v1.0"));
        assert_eq!(h, hf("hf://org/repo@v1.0"));
        let h = hf("hf://org/repo:refs/pr/3/adapter");
        assert_eq!(
            (h.revision.as_str(), h.path.as_str()),
            ("refs/pr/3", "adapter")
        );
        assert!(
            SourceUrl::parse("hf://org/repo:").is_err(),
            "empty revision"
        );
        assert!(SourceUrl::parse("hf://org/repo:a@b").is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "s3://bkt/p",
            "gs://bkt",
            "hf://org/repo@main",
            "hf://datasets/o/d@refs/pr/1/x",
        ] {
            assert_eq!(SourceUrl::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn relpath_refuses_escapes() {
        for ok in [
            "a",
            "a/b c/ü.json",
            "..a/b..",
            ".hidden",
            "a/.model-loaders",
        ] {
            assert_eq!(RelPath::new(ok).unwrap().as_str(), ok);
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            "/abs",
            "../x",
            "a/../../b",
            "a/./b",
            "a//b",
            "dir/",
            "a\\b",
            "nul\0x",
            ".model-loader/manifest.json",
            ".Model-Loader/lock",
            ".MODEL-LOADER/journal.jsonl",
            "adapter/.model-loader/manifest.json",
            long.as_str(),
        ] {
            let e = RelPath::new(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::Kind::Usage, "{bad:?}");
            assert!(e.message().contains("--exclude"), "{}", e.message());
        }
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text: an error or a URL that prints back to itself (modulo the default revision).
        #[test]
        fn any_text_parses_or_fails_cleanly(s in "\\PC{0,60}", t in "(s3|gs|oss|hf)://[a-z0-9./%_-]{0,40}") {
            for input in [s.as_str(), t.as_str()] {
                if let Ok(u) = SourceUrl::parse(input) {
                    let again = SourceUrl::parse(&u.to_string()).unwrap();
                    prop_assert_eq!(again, u);
                }
            }
        }

        /// A RelPath never escapes: no empty, '.' or '..' segment, never absolute.
        #[test]
        fn relpaths_stay_below(s in "[a-z./\\\\%]{0,30}") {
            if let Ok(p) = RelPath::new(&s) {
                prop_assert!(!p.as_str().starts_with('/'));
                for seg in p.as_str().split('/') {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                }
            }
        }
    }
}
