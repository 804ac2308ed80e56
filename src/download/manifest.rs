//! `DEST/.model-loader/manifest.json`: what a complete load holds and what each file was
//! verified against. Written last (by `state`), read by reruns, `--check` and `--verify`.
//! Building it from the run's results is pure, so every rule of what it records is tested here.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::remote::{Checksum, RemoteFile};
use crate::url::RelPath;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `algorithm:hex` (md5, md5-of-parts, crc32, crc32c, crc64nvme, crc64ecma, sha1, sha256,
    /// git-sha1, …-of-parts) it was verified against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// When there is no checksum: why only the size was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_only: Option<String>,
    /// The file landed decoded from what the source stores: `size` and `checksum` are of the
    /// stored bytes (what was fetched and verified), this says what is on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<Decoded>,
}

impl ManifestFile {
    /// The size of the file on disk.
    pub fn landed_size(&self) -> u64 {
        self.decoded.as_ref().map_or(self.size, |d| d.size)
    }
}

/// A file decoded after its stored bytes were verified (GCS `contentEncoding: gzip`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Decoded {
    /// The stored encoding: `gzip`.
    pub from: String,
    /// Size of the decoded file, as it landed.
    pub size: u64,
    /// Its sha256 (hex), computed as it was written: what `--verify` re-hashes it against.
    pub sha256: String,
}

/// What a completed file was checked against: a tagged checksum, or why only its size. Kept in
/// the manifest and in the journal's file records, so a file completed by an earlier (perhaps
/// interrupted) run is described by what that run did, never by today's listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checked {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_only: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<Decoded>,
}

impl Checked {
    /// The size on disk of a file whose source lists `listed` bytes.
    pub fn landed_size(&self, listed: u64) -> u64 {
        self.decoded.as_ref().map_or(listed, |d| d.size)
    }

    /// What a run that fetched `f` and verified it against `verified` (None: size only) did.
    pub fn of(f: &RemoteFile, verified: Option<&Checksum>) -> Checked {
        Checked {
            checksum: verified.map(Checksum::tagged),
            size_only: verified.is_none().then(|| size_only_reason(f)),
            decoded: None,
        }
    }

    /// Verified against `c`.
    pub fn verified(c: &Checksum) -> Checked {
        Checked {
            checksum: Some(c.tagged()),
            size_only: None,
            decoded: None,
        }
    }

    /// Checked by size only, for the reason given.
    pub fn size_only(why: &str) -> Checked {
        Checked {
            checksum: None,
            size_only: Some(why.to_string()),
            decoded: None,
        }
    }
}

impl From<&ManifestFile> for Checked {
    fn from(e: &ManifestFile) -> Checked {
        Checked {
            checksum: e.checksum.clone(),
            size_only: e.size_only.clone(),
            decoded: e.decoded.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub tool: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub completed_at: String,
    pub files: Vec<ManifestFile>,
}

/// What a run knows when it writes the manifest.
pub struct Outcome<'a> {
    /// The canonical source text.
    pub source: String,
    pub revision: Option<String>,
    /// Every selected file, fetched now or already in place.
    pub selected: &'a [(RelPath, RemoteFile)],
    /// Files fetched by this run → what they were checked against.
    pub verified: &'a HashMap<RelPath, Checked>,
    /// Files left in place → what the run that completed them recorded (previous manifest or
    /// journal); None when that record predates this field.
    pub earlier: &'a HashMap<RelPath, Option<Checked>>,
    pub completed_at: String,
}

/// The manifest for `o`. A file fetched now records what it was verified against; a file
/// left in place keeps what the run that completed it recorded — never the listing's checksum,
/// which may never have applied to it (an interrupted run's SSE-KMS file was checked by size
/// only); a file with no checksum says why only its size was checked.
pub fn build(o: Outcome<'_>) -> Manifest {
    let files = o
        .selected
        .iter()
        .map(|(p, f)| {
            let checked = match o.verified.get(p) {
                Some(c) => c.clone(),
                None => o.earlier.get(p).cloned().flatten().unwrap_or_else(|| {
                    Checked::size_only(
                        "completed by an earlier run that did not record what it checked",
                    )
                }),
            };
            ManifestFile {
                path: p.to_string(),
                size: f.size,
                version: f.version.clone(),
                checksum: checked.checksum,
                size_only: checked.size_only,
                decoded: checked.decoded,
            }
        })
        .collect();
    Manifest {
        format: 1,
        tool: concat!("model-loader ", env!("CARGO_PKG_VERSION")).into(),
        source: o.source,
        revision: o.revision,
        completed_at: o.completed_at,
        files,
    }
}

/// Why a file was checked by its size alone, for the manifest.
fn size_only_reason(f: &RemoteFile) -> String {
    if f.checksum.is_some() {
        "the listed checksum does not describe the bytes (an SSE-KMS or SSE-C object's ETag is not an MD5)".into()
    } else if f.size == 0 {
        "empty file".into()
    } else {
        "the source gave no checksum for it (for S3: a multipart object without an additional checksum whose parts the server would not describe)".into()
    }
}

/// RFC 3339 UTC timestamp for the manifest.
pub fn now_rfc3339() -> String {
    use aws_smithy_types::date_time::{DateTime, Format};
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DateTime::from_secs(secs as i64)
        .fmt(Format::DateTime)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, checksum: Option<Checksum>) -> (RelPath, RemoteFile) {
        let f = RemoteFile {
            path: path.into(),
            key: path.into(),
            size,
            checksum,
            version: Some("v1".into()),
            archived: None,
            stored_gzip: false,
            archive: None,
            staged: None,
        };
        (RelPath::new(path).unwrap(), f)
    }

    fn outcome<'a>(
        selected: &'a [(RelPath, RemoteFile)],
        verified: &'a HashMap<RelPath, Option<Checksum>>,
        previous: Option<&'a Manifest>,
    ) -> Manifest {
        let earlier: HashMap<RelPath, Option<Checked>> = previous
            .iter()
            .flat_map(|m| &m.files)
            .map(|e| (RelPath::new(&e.path).unwrap(), Some(Checked::from(e))))
            .collect();
        let verified: HashMap<RelPath, Checked> = selected
            .iter()
            .filter_map(|(p, f)| Some((p.clone(), Checked::of(f, verified.get(p)?.as_ref()))))
            .collect();
        build(Outcome {
            source: "s3://bkt/m".into(),
            revision: None,
            selected,
            verified: &verified,
            earlier: &earlier,
            completed_at: "2026-12-01T00:00:00Z".into(),
        })
    }

    #[test]
    fn each_file_records_what_it_was_verified_against_or_why_not() {
        let listed_md5 = Checksum::Md5([1; 16]);
        let selected = vec![
            file("fetched.bin", 10, Some(listed_md5.clone())),
            file("kms.bin", 10, Some(listed_md5.clone())),
            file("kept.bin", 5, Some(Checksum::Crc32c(7))),
            file("nosum.bin", 3, None),
            file("empty", 0, None),
        ];
        let mut verified = HashMap::new();
        verified.insert(
            RelPath::new("fetched.bin").unwrap(),
            Some(Checksum::Crc64Nvme(9)),
        );
        verified.insert(RelPath::new("kms.bin").unwrap(), None);
        verified.insert(RelPath::new("nosum.bin").unwrap(), None);
        verified.insert(RelPath::new("empty").unwrap(), None);
        let m = outcome(&selected, &verified, None);
        let by: HashMap<&str, &ManifestFile> =
            m.files.iter().map(|f| (f.path.as_str(), f)).collect();
        assert_eq!(
            by["fetched.bin"].checksum,
            Some(Checksum::Crc64Nvme(9).tagged())
        );
        assert_eq!(
            by["kept.bin"].checksum, None,
            "never the listing's: nothing says it was checked against it"
        );
        assert!(by["kept.bin"]
            .size_only
            .as_deref()
            .unwrap()
            .contains("did not record"));
        assert!(by["kms.bin"]
            .size_only
            .as_deref()
            .unwrap()
            .contains("SSE-KMS"));
        assert!(by["nosum.bin"]
            .size_only
            .as_deref()
            .unwrap()
            .contains("no checksum"));
        assert_eq!(by["empty"].size_only.as_deref(), Some("empty file"));
        assert!(by["fetched.bin"].size_only.is_none());
        assert_eq!(m.files.len(), 5);
        assert_eq!(m.source, "s3://bkt/m");
    }

    #[test]
    fn files_left_in_place_keep_what_the_previous_manifest_recorded() {
        let selected = vec![
            file("a", 4, Some(Checksum::Md5([2; 16]))),
            file("b", 4, None),
        ];
        let previous = Manifest {
            format: 1,
            tool: "model-loader 0.0.9".into(),
            source: "s3://bkt/m/".into(),
            revision: None,
            completed_at: "2026-11-30T00:00:00Z".into(),
            files: vec![
                ManifestFile {
                    path: "a".into(),
                    size: 4,
                    version: Some("v1".into()),
                    checksum: None,
                    size_only: Some("an SSE-KMS ETag".into()),
                    decoded: None,
                },
                ManifestFile {
                    path: "b".into(),
                    size: 4,
                    version: Some("v1".into()),
                    checksum: Some("sha256:00".into()),
                    size_only: None,
                    decoded: None,
                },
            ],
        };
        let m = outcome(&selected, &HashMap::new(), Some(&previous));
        assert_eq!(
            m.files[0].checksum, None,
            "not upgraded to the listing's MD5"
        );
        assert!(m.files[0].size_only.is_some());
        assert_eq!(m.files[1].checksum.as_deref(), Some("sha256:00"));
        assert!(m.tool.starts_with("model-loader "));
    }
}
