//! `model-loader DIR oci://REGISTRY/REPOSITORY:TAG`: DIR pushed as a CNCF ModelPack artifact,
//! as `modctl build --raw` lays one out: one raw layer per file with its path in
//! `org.cncf.model.filepath`, a ModelPack config, and the manifest last (the tag moves only
//! once every blob is in). Blobs the registry already holds are not sent again (a HEAD by
//! digest), and the manifest holds no timestamp: the same files push the same manifest digest.

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};

use super::layout::{self, Descriptor};
use super::{digest_of, Oci};
use crate::error::{Error, Kind, Result};
use crate::remote::body::FileRange;
use crate::remote::http::header;
use crate::url::RelPath;

pub const MODEL_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
const MODEL_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
const PATH_KEY: &str = "org.cncf.model.filepath";
/// The smallest chunk a chunked upload halves down to.
const MIN_CHUNK: u64 = 256 << 10;
/// The largest chunk a chunked upload starts with.
const MAX_CHUNK: u64 = 64 << 20;

/// What a blob upload sends: a file, or bytes made here (the config).
#[derive(Clone, Copy)]
enum Blob<'a> {
    File(&'a FileRange),
    Bytes(&'a [u8]),
}

impl Blob<'_> {
    fn len(self) -> u64 {
        match self {
            Blob::File(f) => f.len,
            Blob::Bytes(b) => b.len() as u64,
        }
    }

    /// `len` bytes from `offset`, afresh for each send.
    fn body(self, offset: u64, len: u64) -> reqwest::Body {
        match self {
            Blob::File(f) => f.slice(offset, len).into_body(),
            Blob::Bytes(b) => {
                reqwest::Body::from(b[offset as usize..(offset + len) as usize].to_vec())
            }
        }
    }
}

/// `Content-Type: application/octet-stream`, the length, and a chunk's `Content-Range`
/// (`first-last`, inclusive, without a unit: the distribution spec's form).
fn octet_headers(len: u64, range: Option<(u64, u64)>) -> HeaderMap {
    let mut h = HeaderMap::from_iter([
        (
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ),
        (CONTENT_LENGTH, HeaderValue::from(len)),
    ]);
    if let Some((first, last)) = range {
        let v =
            HeaderValue::from_str(&format!("{first}-{last}")).expect("digits are a header value");
        h.insert(reqwest::header::CONTENT_RANGE, v);
    }
    h
}

/// The ModelPack layer type for a file, by name (modctl sorts files the same way: weights,
/// their configs, docs, code).
pub fn media_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    const WEIGHTS: [&str; 12] = [
        "safetensors",
        "bin",
        "pt",
        "pth",
        "gguf",
        "onnx",
        "h5",
        "msgpack",
        "ckpt",
        "pb",
        "tflite",
        "npz",
    ];
    if WEIGHTS.contains(&ext) {
        "application/vnd.cncf.model.weight.v1.raw"
    } else if name.starts_with("readme") || name.starts_with("license") || ext == "md" {
        "application/vnd.cncf.model.doc.v1.raw"
    } else if matches!(ext, "py" | "sh" | "ipynb") {
        "application/vnd.cncf.model.code.v1.raw"
    } else {
        "application/vnd.cncf.model.weight.config.v1.raw"
    }
}

impl Oci {
    fn layer(rel: &str, digest: String, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type(rel).to_string(),
            digest,
            size,
            annotations: [(PATH_KEY.to_string(), rel.to_string())].into(),
            platform: None,
            artifact_type: None,
        }
    }

    /// A file the registry already holds under this tag (the upload compared its sha256):
    /// its layer goes into the new manifest as it is.
    pub fn keep_file(&self, rel: &RelPath, size: u64, sha256: [u8; 32]) {
        let digest = digest_of(&sha256);
        self.pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rel.to_string(), Self::layer(rel.as_str(), digest, size));
    }

    /// Sends `whole` as a blob unless the registry has one with its digest (`sha256` of the
    /// file, computed by the caller), and records its layer. Retried by the caller.
    pub async fn push_file(
        &self,
        rel: &RelPath,
        whole: &FileRange,
        sha256: [u8; 32],
    ) -> Result<()> {
        let digest = digest_of(&sha256);
        let what = format!("upload {rel} to {}", self.shown());
        if !self.blob_exists(&digest, &what).await? {
            self.push_blob(&digest, Blob::File(whole), &what).await?;
        }
        self.pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                rel.to_string(),
                Self::layer(rel.as_str(), digest, whole.len),
            );
        Ok(())
    }

    async fn blob_exists(&self, digest: &str, what: &str) -> Result<bool> {
        let url = self.endpoint("blobs", digest)?;
        let resp = self
            .registry_send(reqwest::Method::HEAD, &url, HeaderMap::new(), None, what)
            .await?;
        match resp.status() {
            // A registry redirects only a blob it holds (to its storage, for HEAD as for GET).
            s if s.is_success() || s.is_redirection() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(resp, what).await),
        }
    }

    /// POST an upload session, then PUT the bytes to it with their digest (a monolithic
    /// upload, which every registry takes; the registry checks the digest). A body refused as
    /// too large (`413`: an ingress's body limit, nginx's `client_max_body_size` is 1 MiB by
    /// default) is sent again in chunks ([`Oci::push_chunked`]).
    async fn push_blob(&self, digest: &str, blob: Blob<'_>, what: &str) -> Result<()> {
        let (session, min) = self.open_upload(what).await?;
        // Once a body limit was met, larger blobs go in chunks straight away.
        let limit = self.chunk_limit.load(std::sync::atomic::Ordering::Relaxed);
        if limit > 0 && blob.len() > limit {
            return self.push_chunked(digest, blob, (session, min), what).await;
        }
        let mut whole = session.clone();
        whole.query_pairs_mut().append_pair("digest", digest);
        let body = || blob.body(0, blob.len());
        let resp = self
            .registry_send(
                reqwest::Method::PUT,
                &whole,
                octet_headers(blob.len(), None),
                Some(&body),
                what,
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(()),
            // Refused before the registry saw it: the session is where it was.
            StatusCode::PAYLOAD_TOO_LARGE => {
                self.push_chunked(digest, blob, (session, min), what).await
            }
            _ => Err(self.status_error(resp, what).await),
        }
    }

    /// A new upload session: its URL, and the smallest chunk it takes (`OCI-Chunk-Min-Length`).
    async fn open_upload(&self, what: &str) -> Result<(Url, u64)> {
        let start = self
            .base
            .join(&format!("/v2/{}/blobs/uploads/", self.repository()))
            .map_err(|e| Error::usage(format!("{what}: bad repository")).with_source(e))?;
        let resp = self
            .registry_send(reqwest::Method::POST, &start, HeaderMap::new(), None, what)
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(resp, what).await);
        }
        let min = header(resp.headers(), "oci-chunk-min-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let session = self.next_location(&start, resp.headers(), what)?;
        Ok((session, min))
    }

    fn next_location(&self, at: &Url, headers: &HeaderMap, what: &str) -> Result<Url> {
        header(headers, LOCATION.as_str())
            .and_then(|l| at.join(&l).ok())
            .ok_or_else(|| {
                Error::new(
                    Kind::Network,
                    format!("{what}: the registry answered an upload without a Location"),
                )
            })
    }

    /// The distribution spec's chunked upload: `PATCH`es with `Content-Range`, each to the
    /// `Location` the last one returned, then a `PUT` with the digest. The chunk starts at
    /// half the refused body and halves again while the way refuses it (a chunk refused
    /// before the registry saw it leaves the session where it was), down to [`MIN_CHUNK`]
    /// or the registry's own minimum.
    async fn push_chunked(
        &self,
        digest: &str,
        blob: Blob<'_>,
        (mut session, min): (Url, u64),
        what: &str,
    ) -> Result<()> {
        let floor = MIN_CHUNK.max(min);
        let known = self.chunk_limit.load(std::sync::atomic::Ordering::Relaxed);
        let first = if known > 0 { known } else { blob.len() / 2 };
        // The registry's minimum wins over our maximum (clamp would panic on it).
        let mut chunk = first.min(MAX_CHUNK).max(floor);
        let mut at = 0;
        while at < blob.len() {
            let n = chunk.min(blob.len() - at);
            let body = || blob.body(at, n);
            let headers = octet_headers(n, Some((at, at + n - 1)));
            let resp = self
                .registry_send(reqwest::Method::PATCH, &session, headers, Some(&body), what)
                .await?;
            match resp.status() {
                StatusCode::ACCEPTED => {
                    session = self.next_location(&session, resp.headers(), what)?;
                    at += n;
                    // Remembered for the next blobs (the smallest that went through).
                    let _ = self.chunk_limit.fetch_update(
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                        |cur| Some(if cur == 0 { chunk } else { cur.min(chunk) }),
                    );
                }
                StatusCode::PAYLOAD_TOO_LARGE if chunk > floor => chunk = (chunk / 2).max(floor),
                StatusCode::PAYLOAD_TOO_LARGE => {
                    return Err(Error::new(
                        Kind::Usage,
                        format!(
                            "{what}: the registry, or a proxy before it, refuses request bodies \
                             of {n} bytes: raise its limit (nginx: client_max_body_size; an \
                             ingress: proxy-body-size)"
                        ),
                    ))
                }
                _ => return Err(self.status_error(resp, what).await),
            }
        }
        session.query_pairs_mut().append_pair("digest", digest);
        let none = || reqwest::Body::from(Vec::new());
        let resp = self
            .registry_send(
                reqwest::Method::PUT,
                &session,
                octet_headers(0, None),
                Some(&none),
                what,
            )
            .await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(());
        }
        Err(self.status_error(resp, what).await)
    }

    /// The config and the manifest, once every layer is in: the tag then names the new files.
    /// Returns the manifest's digest.
    pub async fn finish_push(&self) -> Result<String> {
        let what = format!("push the manifest of {}", self.shown());
        let layers: Vec<Descriptor> = self
            .pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let config = serde_json::json!({
            "descriptor": {"name": self.url.repository.rsplit('/').next().unwrap_or("")},
            "config": {},
            "modelfs": {"type": "layers", "diffIds": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        });
        let config = serde_json::to_vec(&config).expect("JSON values serialize");
        let config_digest = sha256_of(&config);
        if !self.blob_exists(&config_digest, &what).await? {
            self.push_blob(&config_digest, Blob::Bytes(&config), &what)
                .await?;
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": layout::OCI_MANIFEST,
            "artifactType": MODEL_ARTIFACT,
            "config": {"mediaType": MODEL_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers,
        });
        let manifest = serde_json::to_vec(&manifest).expect("JSON values serialize");
        let digest = sha256_of(&manifest);
        let url = self.endpoint("manifests", &self.url.tag)?;
        let headers =
            HeaderMap::from_iter([(CONTENT_TYPE, HeaderValue::from_static(layout::OCI_MANIFEST))]);
        let bytes = bytes::Bytes::from(manifest);
        let body = move || reqwest::Body::from(bytes.clone());
        let resp = self
            .registry_send(reqwest::Method::PUT, &url, headers, Some(&body), &what)
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.status_error(resp, &what).await);
        }
        Ok(digest)
    }
}

fn sha256_of(b: &[u8]) -> String {
    use sha2::Digest as _;
    digest_of(&sha2::Sha256::digest(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_get_the_layer_type_modctl_would_give_them() {
        for (p, t) in [
            ("model-00001-of-00002.safetensors", "weight.v1.raw"),
            ("sub/pytorch_model.BIN", "weight.v1.raw"),
            ("config.json", "weight.config.v1.raw"),
            ("tokenizer.model", "weight.config.v1.raw"),
            ("merges.txt", "weight.config.v1.raw"),
            ("README.md", "doc.v1.raw"),
            ("LICENSE", "doc.v1.raw"),
            ("modeling_x.py", "code.v1.raw"),
        ] {
            assert!(media_type(p).ends_with(t), "{p}: {}", media_type(p));
        }
    }

    #[test]
    fn a_pushed_manifest_lays_out_as_the_files_it_was_built_from() {
        let layers = vec![
            Oci::layer("a/config.json", format!("sha256:{}", "a".repeat(64)), 3),
            Oci::layer("w.safetensors", format!("sha256:{}", "b".repeat(64)), 9),
        ];
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": layout::OCI_MANIFEST, "artifactType": MODEL_ARTIFACT,
            "config": {"mediaType": MODEL_CONFIG, "digest": format!("sha256:{}", "c".repeat(64)), "size": 2},
            "layers": layers,
        });
        let doc = layout::Document::parse(manifest.to_string().as_bytes(), "").unwrap();
        let files = layout::files(&doc).unwrap();
        assert_eq!(files[0].path, "a/config.json");
        assert_eq!(
            (files[1].path.as_str(), files[1].size),
            ("w.safetensors", 9)
        );
    }
}
