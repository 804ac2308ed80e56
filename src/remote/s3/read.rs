//! Ranged reads: direct, or through the P2P proxy with the origin's facts asked directly.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, Response};

use super::checksums::{multipart_etag, parse_additional, Additional};
use super::client::{header_str, ReplyFacts, S3};
use crate::error::{Error, Kind, Result};
use crate::remote::types::{ByteRange, Checksum, Fetched, Listing, RemoteFile, Source};
use crate::remote::{http, pin, sigv4};

impl Source for S3 {
    async fn list(&self) -> Result<Listing> {
        let mut listing = crate::remote::bucket::list_bucket(self).await?;
        // OSS too: its replies' whole-object CRC-64 takes precedence where it is sent
        // (transfer::finalize), the multipart ETag covers servers that do not send it.
        self.learn_checksums(&mut listing.files).await?;
        Ok(listing)
    }

    async fn fetch(&self, file: &RemoteFile, range: ByteRange) -> Result<Fetched> {
        let what = format!("GET {} ({range})", self.display(&file.key));
        if let Some((p2p, resp, facts)) = self.fetch_p2p(file, range).await? {
            let fetched = self.fetched(resp, file, range, &what, Some(facts)).await;
            return p2p.watch(&file.key, fetched);
        }
        let mut extra = vec![(reqwest::header::RANGE, range.header())];
        extra.extend(precondition(file));
        let resp = self
            .send(
                Method::GET,
                &self.object_path(&file.key),
                &[],
                &extra,
                &what,
            )
            .await?;
        self.fetched(resp, file, range, &what, None).await
    }
}

/// The precondition header pinning a read of `file` to its listed version, as `send` takes it.
fn precondition(file: &RemoteFile) -> Option<(reqwest::header::HeaderName, String)> {
    let (name, value) = file.version.as_deref().and_then(pin::precondition)?;
    Some((name, value.to_str().ok()?.to_string()))
}

impl S3 {
    /// The ranged GET through the P2P proxy, as a presigned URL (SignedHeaders=host) that the
    /// daemon can replay later with its own ranges; `None` when there is no proxy or it should
    /// go direct. The task is the object's content identity, the same on every node. Only
    /// bytes that will be verified cross the proxy: an object with no version token (no task
    /// id would change with its bytes) or nothing to check it against but its size goes direct.
    pub(super) async fn fetch_p2p(
        &self,
        file: &RemoteFile,
        range: ByteRange,
    ) -> Result<
        Option<(
            &std::sync::Arc<crate::remote::p2p::P2p>,
            Response,
            ReplyFacts,
        )>,
    > {
        let Some(p2p) = &self.p2p else {
            return Ok(None);
        };
        let Some(version) = &file.version else {
            p2p.bypass("an object without a version token goes direct");
            return Ok(None);
        };
        let facts = self.origin_facts_if_needed(file).await?;
        let checked = crate::remote::types::authority(
            file.checksum.clone(),
            facts.checksum.clone(),
            facts.etag_is_md5,
        );
        if checked.is_none() {
            p2p.bypass("an object with no checksum to verify it by goes direct");
            return Ok(None);
        }
        let place = self.place();
        let mut url = format!("{}{}", place.endpoint.base, self.object_path(&file.key));
        // A presigned URL carries the requester-pays header as a signed query parameter.
        if let Some((name, value)) = self.payer_header() {
            url.push_str(&format!("?{name}={value}"));
        }
        let url = match self.signer.credentials().await? {
            Some(creds) => sigv4::presign(&creds, &url, &place.region, PRESIGNED_FOR, self.now())?,
            None => url,
        };
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RANGE, header_value(&range.header()));
        if let Some((name, value)) = pin::precondition(version) {
            headers.insert(name, value);
        }
        let task = format!(
            "{}://{}/{}@{}",
            self.scheme,
            self.bucket,
            file.key,
            version.trim_matches('"')
        );
        Ok(p2p
            .get(&url, headers, Some(&task), &file.key)
            .await
            .map(|r| (p2p, r, facts)))
    }

    /// Checks a reply to a ranged GET and turns it into the fetched body. What the reply says of
    /// the checksum (an ETag that is no MD5, OSS's CRC-64) is believed only from the origin:
    /// a reply through a P2P proxy comes with `origin` (what the origin said, or nothing to
    /// ask), and its own headers are ignored, so a proxy can neither switch verification off
    /// nor supply the value it is checked against.
    pub(super) async fn fetched(
        &self,
        resp: Response,
        file: &RemoteFile,
        range: ByteRange,
        what: &str,
        origin: Option<ReplyFacts>,
    ) -> Result<Fetched> {
        let what = what.to_string();
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &what, Some(&file.key)).await);
        }
        // A server that ignores the precondition must still not mix two versions.
        if let Some(got) = file
            .version
            .as_deref()
            .and_then(|v| pin::changed(v, resp.headers()))
        {
            return Err(Error::new(
                Kind::Network,
                format!("{what}: the object changed on the server during the download ({got}); rerun to fetch the new version"),
            ));
        }
        let facts = origin.unwrap_or_else(|| self.reply_facts(resp.headers()));
        // An object stored with a Content-Encoding (uploaded with --content-encoding gzip) is
        // served as stored: its bytes are what the listing's size and ETag describe. Anything
        // compressed on the way fails the exact length and Content-Range checks.
        let body = http::ranged_body_as_stored(resp, range, file.size, &what)?;
        Ok(Fetched {
            body,
            checksum_applies: facts.etag_is_md5,
            object_checksum: facts.checksum,
        })
    }

    /// What an origin's reply headers say of the bytes beyond the listing.
    pub(super) fn reply_facts(&self, h: &HeaderMap) -> ReplyFacts {
        // SSE-KMS and SSE-C objects have ETags that are not the MD5 of their bytes.
        let etag_is_md5 = !h
            .get("x-amz-server-side-encryption")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("aws:kms"))
            && !h.contains_key("x-amz-server-side-encryption-customer-algorithm");
        // OSS's whole-object CRC-64; no S3 server sends it, so `s3://` never reads it.
        let crc64 = (self.scheme == "oss")
            .then(|| header_str(h, "x-oss-hash-crc64ecma".parse().expect("valid name")))
            .flatten()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Checksum::Crc64Ecma);
        ReplyFacts {
            etag_is_md5,
            checksum: crc64,
        }
    }

    /// In P2P mode, before an object's bytes come through the proxy: what the origin says of
    /// them, when the checksum to verify them by depends on it (one read from the ETag, none
    /// at all, or OSS's CRC-64); else nothing to ask. Errors are the origin's, not the proxy's.
    pub(super) async fn origin_facts_if_needed(&self, file: &RemoteFile) -> Result<ReplyFacts> {
        let depends =
            self.scheme == "oss" || file.checksum.as_ref().is_none_or(Checksum::from_etag);
        if !depends {
            return Ok(ReplyFacts {
                etag_is_md5: true,
                checksum: None,
            });
        }
        self.origin_facts(file).await
    }

    /// [`S3::reply_facts`] from a direct HEAD to the origin (pinned to the listed version, with
    /// `x-amz-checksum-mode`), asked once per object: for bytes that come through a P2P proxy.
    pub(super) async fn origin_facts(&self, file: &RemoteFile) -> Result<ReplyFacts> {
        let cell = {
            let mut cache = self.origin_facts.lock().unwrap_or_else(|p| p.into_inner());
            std::sync::Arc::clone(cache.entry(file.key.clone()).or_default())
        };
        let facts = cell
            .get_or_try_init(|| async {
                let what = format!(
                    "HEAD {} (direct, for its checksum)",
                    self.display(&file.key)
                );
                let mode = (
                    reqwest::header::HeaderName::from_static("x-amz-checksum-mode"),
                    "ENABLED".to_string(),
                );
                let extra: Vec<_> = precondition(file).into_iter().chain([mode]).collect();
                let resp = self
                    .send(
                        Method::HEAD,
                        &self.object_path(&file.key),
                        &[],
                        &extra,
                        &what,
                    )
                    .await?;
                if !resp.status().is_success() {
                    return Err(self.status_error(resp, &what, Some(&file.key)).await);
                }
                let mut facts = self.reply_facts(resp.headers());
                // The whole-object additional checksum it was asked for: of the plaintext, so
                // valid under SSE-KMS too (S3 adds CRC-64/NVME to new objects).
                let parts = file
                    .version
                    .as_deref()
                    .and_then(multipart_etag)
                    .map_or(0, |(_, n)| n);
                if let Some(Additional::Whole(c)) = parse_additional(resp.headers(), parts) {
                    facts.checksum = facts.checksum.or(Some(c));
                }
                Ok(facts)
            })
            .await?;
        Ok(facts.clone())
    }
}

/// How long a presigned URL handed to the P2P proxy stays valid: the daemon replays it for
/// later pieces of the task.
const PRESIGNED_FOR: Duration = Duration::from_secs(3600);

fn header_value(v: &str) -> reqwest::header::HeaderValue {
    reqwest::header::HeaderValue::from_str(v)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""))
}
