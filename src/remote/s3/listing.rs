//! Listing: ListObjectsV2 pages, and the HEAD of a single object.

use reqwest::header::{CONTENT_LENGTH, ETAG, LAST_MODIFIED};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::checksums::md5_from_etag;
use super::client::{header_str, header_u64, S3};
use crate::error::{Error, Kind, Result};
use crate::remote::types::{Checksum, RemoteFile};
use crate::remote::{http, pin};

impl S3 {
    /// Every object under `prefix` (a folder), following continuation tokens — or, from a
    /// server that answers ListObjects V1 whatever `list-type=2` says (Scality
    /// scality/cloudserver#1191, s3fs-fuse#1583; rclone lists V1 for unknown providers), markers.
    pub(super) async fn list_folder(&self, folder: &str) -> Result<Vec<RemoteFile>> {
        let mut files = Vec::new();
        let mut next = Page::First;
        let mut seen = std::collections::HashSet::new();
        let what = format!("list {}", self.display(folder));
        loop {
            let mut query = vec![("prefix", folder), ("encoding-type", "url")];
            match &next {
                Page::First => query.push(("list-type", "2")),
                Page::Token(t) => query.extend([("list-type", "2"), ("continuation-token", t)]),
                Page::Marker(m) => query.push(("marker", m)),
            }
            // Archived objects show whether a restore completed only when asked.
            let restore = (
                reqwest::header::HeaderName::from_static("x-amz-optional-object-attributes"),
                "RestoreStatus".to_string(),
            );
            let resp = self
                .send(Method::GET, &self.list_path(), &query, &[restore], &what)
                .await?;
            if !resp.status().is_success() {
                return Err(self.status_error(resp, &what, None).await);
            }
            let body = http::capped_text(resp, &what).await?;
            let page: ListBucketResult = quick_xml::de::from_str(&body).map_err(|e| {
                Error::new(
                    Kind::Network,
                    format!("{what}: the server's listing is not valid ListObjectsV2 XML"),
                )
                .with_source(e)
            })?;
            let encoded = page.encoding_type.as_deref() == Some("url");
            let decode = |k: String| -> Result<String> {
                if !encoded {
                    return Ok(k);
                }
                percent_decode(&k).ok_or_else(|| {
                    Error::new(
                        Kind::Network,
                        format!("{what}: key {k:?} is not valid URL-encoded UTF-8"),
                    )
                })
            };
            let mut last_key = None;
            for obj in page.contents {
                let key = decode(obj.key)?;
                last_key = Some(key.clone());
                // Folder markers created by consoles: zero bytes, name ending in '/'.
                if key.ends_with('/') && obj.size == 0 {
                    continue;
                }
                let path = crate::remote::bucket::below(folder, &key, &what)?;
                let restored = obj.restore_status.as_ref().is_some_and(RestoreStatus::done);
                let mut f =
                    self.remote_file(key, path, obj.size, obj.e_tag, obj.last_modified.as_deref());
                f.archived = archived(obj.storage_class.as_deref(), restored);
                files.push(f);
            }
            if !page.is_truncated {
                break;
            }
            next = match (page.next_continuation_token, page.next_marker, last_key) {
                (Some(t), _, _) if !matches!(next, Page::Marker(_)) => {
                    Page::Token(crate::remote::types::next_page(&mut seen, t, &what)?)
                }
                // V1: the next marker, or the last key listed (NextMarker comes only with a
                // delimiter).
                (_, marker, last) => {
                    let Some(m) = marker.map(decode).transpose()?.or(last) else {
                        return Err(Error::new(
                            Kind::Network,
                            format!("{what}: the server says the listing is truncated but gives neither a continuation token nor a key to go on from"),
                        ));
                    };
                    if !matches!(next, Page::Marker(_)) {
                        if let Some(r) = &self.reporter {
                            r.info(&format!("s3: the server lists with ListObjects V1 (no continuation token): paging {what} by marker"));
                        }
                    }
                    Page::Marker(crate::remote::types::next_page(&mut seen, m, &what)?)
                }
            };
        }
        Ok(files)
    }

    pub(super) fn remote_file(
        &self,
        key: String,
        path: String,
        size: u64,
        etag: Option<String>,
        modified: Option<&str>,
    ) -> RemoteFile {
        let checksum = etag.as_deref().and_then(md5_from_etag).map(Checksum::Md5);
        let version = pin::token(etag, modified, &key);
        RemoteFile {
            path,
            key,
            size,
            checksum,
            version,
            archived: None,
            stored_gzip: false,
            archive: None,
            staged: None,
        }
    }

    /// HEAD one object: the fallback when the URL names a single object.
    pub(super) async fn head(&self, key: &str) -> Result<Option<RemoteFile>> {
        let what = format!("HEAD {}", self.display(key));
        let resp = self
            .send(Method::HEAD, &self.object_path(key), &[], &[], &what)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &what, None).await);
        }
        let size = header_u64(resp.headers(), CONTENT_LENGTH).ok_or_else(|| {
            Error::new(
                Kind::Network,
                format!("{what}: the reply has no Content-Length"),
            )
        })?;
        let etag = header_str(resp.headers(), ETAG);
        let modified = header_str(resp.headers(), LAST_MODIFIED);
        let name = key.rsplit('/').next().unwrap_or(key).to_string();
        let mut f = self.remote_file(key.to_string(), name, size, etag, modified.as_deref());
        // `x-amz-restore: ongoing-request="false", expiry-date="…"`: a restored copy to read.
        let restored = header_str(resp.headers(), "x-amz-restore".parse().expect("valid"))
            .is_some_and(|r| r.contains("ongoing-request=\"false\""));
        let class = header_str(
            resp.headers(),
            "x-amz-storage-class".parse().expect("valid"),
        );
        f.archived = archived(class.as_deref(), restored);
        Ok(Some(f))
    }
}

impl crate::remote::bucket::BucketListing for S3 {
    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn display(&self, key: &str) -> String {
        S3::display(self, key)
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<RemoteFile>> {
        S3::list_folder(self, folder).await
    }

    async fn head(&self, key: &str) -> Result<Option<RemoteFile>> {
        S3::head(self, key).await
    }
}

fn percent_decode(s: &str) -> Option<String> {
    // ListObjectsV2 with encoding-type=url encodes like application/x-www-form-urlencoded
    // in some servers ('+' for space); real S3 uses %20. A literal '+' is always %2B.
    let s = s.replace('+', "%20");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Where the next page of a listing starts.
enum Page {
    First,
    /// ListObjectsV2's continuation token.
    Token(String),
    /// ListObjects V1's marker: the key to list after.
    Marker(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
    /// V1 only, and only with a delimiter.
    next_marker: Option<String>,
    #[serde(default)]
    contents: Vec<ListedObject>,
    encoding_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedObject {
    key: String,
    size: u64,
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
    last_modified: Option<String>,
    storage_class: Option<String>,
    /// Only when asked for (`x-amz-optional-object-attributes: RestoreStatus`).
    restore_status: Option<RestoreStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RestoreStatus {
    #[serde(default)]
    is_restore_in_progress: bool,
    restore_expiry_date: Option<String>,
}

impl RestoreStatus {
    /// A restored copy is there to read.
    pub(super) fn done(&self) -> bool {
        !self.is_restore_in_progress && self.restore_expiry_date.is_some()
    }
}

/// The storage class of an object that cannot be read until it is restored (S3 Glacier
/// Flexible Retrieval and Deep Archive; Glacier Instant Retrieval reads at once), unless a
/// restore has completed (`restored`). S3 answers a read of one with 403 InvalidObjectState.
fn archived(class: Option<&str>, restored: bool) -> Option<String> {
    let class = class?.trim();
    (matches!(class, "GLACIER" | "DEEP_ARCHIVE") && !restored).then(|| class.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_objects_are_told_from_the_listing_unless_restored() {
        let xml = r#"<ListBucketResult><IsTruncated>false</IsTruncated>
<Contents><Key>m/a</Key><Size>1</Size><StorageClass>DEEP_ARCHIVE</StorageClass></Contents>
<Contents><Key>m/b</Key><Size>1</Size><StorageClass>GLACIER</StorageClass><RestoreStatus><IsRestoreInProgress>false</IsRestoreInProgress><RestoreExpiryDate>2026-12-12T00:00:00.000Z</RestoreExpiryDate></RestoreStatus></Contents>
<Contents><Key>m/c</Key><Size>1</Size><StorageClass>GLACIER</StorageClass><RestoreStatus><IsRestoreInProgress>true</IsRestoreInProgress></RestoreStatus></Contents>
<Contents><Key>m/d</Key><Size>1</Size><StorageClass>GLACIER_IR</StorageClass></Contents>
</ListBucketResult>"#;
        let page: ListBucketResult = quick_xml::de::from_str(xml).unwrap();
        let got: Vec<Option<String>> = page
            .contents
            .iter()
            .map(|o| {
                let restored = o.restore_status.as_ref().is_some_and(RestoreStatus::done);
                archived(o.storage_class.as_deref(), restored)
            })
            .collect();
        assert_eq!(
            got,
            [
                Some("DEEP_ARCHIVE".into()),
                None,
                Some("GLACIER".into()),
                None
            ],
            "restored, and instant retrieval, read at once; a restore in progress does not"
        );
        assert_eq!(archived(Some("STANDARD"), false), None);
        assert_eq!(archived(None, false), None);
    }

    #[test]
    fn list_xml_parses() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>m/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<Contents><Key>m/a%20b.json</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>&quot;9e107d9d372bb6826bd81d3542a419d6&quot;</ETag><Size>43</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>m/sub/</Key><Size>0</Size></Contents>
<NextContinuationToken>tok/1=</NextContinuationToken></ListBucketResult>"#;
        let page: ListBucketResult = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("tok/1="));
        assert_eq!(page.contents.len(), 2);
        assert_eq!(percent_decode(&page.contents[0].key).unwrap(), "m/a b.json");
        assert_eq!(
            page.contents[0].e_tag.as_deref(),
            Some("\"9e107d9d372bb6826bd81d3542a419d6\"")
        );
        assert_eq!(percent_decode("%C3%BC+x%2By").unwrap(), "ü x+y");
    }
}

#[cfg(test)]
mod prop {
    use super::super::checksums::md5_from_etag;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Listings and error bodies from a server we do not trust: parsed or refused, never a
        /// panic, whatever the sizes and names say.
        #[test]
        fn hostile_listings_and_errors_never_panic(
            key in "\\PC{0,20}",
            size in "-?[0-9]{0,25}",
            junk in "\\PC{0,80}",
        ) {
            let xml = format!(
                "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>{}</Key><Size>{size}</Size></Contents></ListBucketResult>",
                quick_xml::escape::escape(key.as_str())
            );
            if let Ok(page) = quick_xml::de::from_str::<ListBucketResult>(&xml) {
                for o in page.contents {
                    let _ = crate::remote::bucket::below("m/", &o.key, "list");
                    let _ = percent_decode(&o.key);
                }
            }
            let _ = quick_xml::de::from_str::<ListBucketResult>(&junk);
            let _ = super::super::errors::ErrorBody::parse(&junk);
            let _ = md5_from_etag(&junk);
        }
    }
}
