//! What `s3://`, `oss://` and `gs://` share: the URL's path after the bucket is a folder, and
//! when nothing is under it, it may name one object.

use std::future::Future;

use super::types::{Listing, RemoteFile};
use crate::error::Result;

/// A bucket client as the folder-or-object listing needs it.
pub(crate) trait BucketListing {
    fn prefix(&self) -> &str;
    fn display(&self, key: &str) -> String;
    fn list_folder(&self, folder: &str) -> impl Future<Output = Result<Vec<RemoteFile>>> + Send;
    fn head(&self, key: &str) -> impl Future<Output = Result<Option<RemoteFile>>> + Send;
}

/// Lists `prefix/` (never `prefix10/`); falls back to the object `prefix` itself. The URL's
/// prefix is canonical: never a trailing '/'.
pub(crate) async fn list_bucket<B: BucketListing + Sync>(b: &B) -> Result<Listing> {
    let prefix = b.prefix().trim_end_matches('/');
    let folder = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let mut files = b.list_folder(&folder).await?;
    let mut exact = false;
    if files.is_empty() && !prefix.is_empty() {
        if let Some(f) = b.head(prefix).await? {
            files.push(f);
            exact = true;
        }
    }
    if files.is_empty() {
        let bucket = b.display("");
        let why = if prefix.is_empty() {
            format!(
                "the bucket {} is empty (or these credentials may not list it)",
                bucket.trim_end_matches('/')
            )
        } else {
            format!(
                "nothing found at {}: no object with that name and no objects under {}/ \
                 (check the prefix; names are case-sensitive)",
                b.display(prefix),
                b.display(prefix)
            )
        };
        return Err(crate::error::Error::new(crate::error::Kind::NotFound, why));
    }
    Ok(Listing {
        files,
        revision: None,
        exact,
    })
}

/// The part of a listed name below `folder`. A listing that names something outside the folder
/// it was asked for is a lying or broken server: refused, never sliced blindly.
pub(crate) fn below(folder: &str, name: &str, what: &str) -> Result<String> {
    name.strip_prefix(folder)
        .filter(|rest| !rest.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            crate::error::Error::new(
                crate::error::Kind::Network,
                format!("{what}: the server listed {name:?}, which is not under {folder:?}; the listing cannot be trusted"),
            )
        })
}
