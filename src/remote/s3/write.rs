//! Uploads: single PUTs and multipart uploads, each body checked by the server (Content-MD5).

use reqwest::header::{CONTENT_LENGTH, ETAG};
use reqwest::Method;
use serde::Deserialize;

use super::client::{header_str, S3};
use super::errors::ErrorBody;
use crate::error::{Error, Kind, Result};
use crate::remote::http;

impl S3 {
    /// Uploads `len` bytes of `path` from `offset` as one object, or as part `part` of the
    /// multipart upload `upload_id`. Returns the ETag. `md5` goes in Content-MD5, so the
    /// server rejects a body that was damaged on the way.
    pub async fn put(
        &self,
        key: &str,
        body: crate::remote::body::FileRange,
        md5: [u8; 16],
        part: Option<(&str, u32)>,
    ) -> Result<String> {
        use base64::Engine;
        let what = match part {
            Some((_, n)) => format!("upload part {n} of {}", self.display(key)),
            None => format!("upload {}", self.display(key)),
        };
        let n = part.map(|(_, n)| n.to_string());
        let query: Vec<(&str, &str)> = match (&part, &n) {
            (Some((id, _)), Some(n)) => vec![("partNumber", n.as_str()), ("uploadId", id)],
            _ => vec![],
        };
        let extra = [
            (CONTENT_LENGTH, body.len.to_string()),
            (
                reqwest::header::HeaderName::from_static("content-md5"),
                base64::engine::general_purpose::STANDARD.encode(md5),
            ),
            (
                reqwest::header::CONTENT_TYPE,
                "application/octet-stream".into(),
            ),
        ];
        let resp = self
            .send_body(
                Method::PUT,
                &self.object_path(key),
                &query,
                &extra,
                Some(body.into_body()),
                &what,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &what, None).await);
        }
        header_str(resp.headers(), ETAG)
            .ok_or_else(|| Error::new(Kind::Network, format!("{what}: the reply has no ETag")))
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_multipart(&self, key: &str) -> Result<String> {
        let what = format!("start a multipart upload of {}", self.display(key));
        let body = self
            .post(key, &[("uploads", "")], &[], String::new(), &what)
            .await?;
        quick_xml::de::from_str::<InitiateMultipartUploadResult>(&body)
            .map(|r| r.upload_id)
            .ok()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::new(Kind::Network, format!("{what}: no UploadId in the reply")))
    }

    /// Completes a multipart upload from its parts' ETags, in order.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<()> {
        let what = format!("complete the multipart upload of {}", self.display(key));
        let xml = complete_multipart_xml(etags).map_err(|e| {
            Error::new(
                Kind::Internal,
                format!("{what}: cannot encode the part list"),
            )
            .with_source(e)
        })?;
        let extra = [(CONTENT_LENGTH, xml.len().to_string())];
        let body = self
            .post(key, &[("uploadId", upload_id)], &extra, xml, &what)
            .await?;
        // S3 can answer 200 and still fail: the error is then in the body.
        if body.contains("<Error>") {
            let code = ErrorBody::parse(&body).code;
            return Err(Error::new(Kind::Network, format!("{what}: {code}")).transient(None));
        }
        Ok(())
    }

    /// A signed POST to an object for the multipart calls; returns the reply's body.
    pub(super) async fn post(
        &self,
        key: &str,
        query: &[(&str, &str)],
        extra: &[(reqwest::header::HeaderName, String)],
        body: String,
        what: &str,
    ) -> Result<String> {
        let resp = self
            .send_body(
                Method::POST,
                &self.object_path(key),
                query,
                extra,
                Some(reqwest::Body::from(body)),
                what,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, what, None).await);
        }
        http::capped_text(resp, what).await
    }

    /// Best effort: a failed multipart upload should not leave billable parts behind.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) {
        let _ = self
            .send(
                Method::DELETE,
                &self.object_path(key),
                &[("uploadId", upload_id)],
                &[],
                "abort",
            )
            .await;
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateMultipartUploadResult {
    upload_id: String,
}

/// `<CompleteMultipartUpload>` with the parts' numbers (from 1) and ETags, in order.
fn complete_multipart_xml(etags: &[String]) -> std::result::Result<String, quick_xml::SeError> {
    #[derive(serde::Serialize)]
    #[serde(rename = "CompleteMultipartUpload")]
    struct Complete<'a> {
        #[serde(rename = "Part")]
        parts: Vec<Part<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Part<'a> {
        #[serde(rename = "PartNumber")]
        number: usize,
        #[serde(rename = "ETag")]
        etag: &'a str,
    }
    let parts = etags
        .iter()
        .enumerate()
        .map(|(i, etag)| Part {
            number: i + 1,
            etag,
        })
        .collect();
    quick_xml::se::to_string(&Complete { parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_multipart_xml_escapes() {
        let xml = complete_multipart_xml(&["\"a&b\"".into(), "\"c\"".into()]).unwrap();
        assert_eq!(
            xml,
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a&amp;b\"</ETag></Part><Part><PartNumber>2</PartNumber><ETag>\"c\"</ETag></Part></CompleteMultipartUpload>"
        );
    }
}
