//! [`AnySource`]: the closed set of clients, chosen from the URL, with static dispatch.

use super::types::{ByteRange, Fetched, Listing, RemoteFile, Source};
use super::{gcs, hf, http, oss, s3};
use crate::error::Result;
use crate::progress::Reporter;
use crate::url::SourceUrl;

/// Settings for opening any source.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub http: http::ClientOptions,
    /// Use OSS's `-internal` (VPC) endpoint when deriving it from the region.
    pub oss_internal: bool,
    /// The client will write (upload): ask for write credentials where scopes exist (GCS).
    pub write: bool,
}

/// The closed set of schemes: static dispatch, no boxing.
pub enum AnySource {
    S3(s3::S3),
    Oss(s3::S3),
    Gcs(gcs::Gcs),
    Hf(hf::Hf),
}

impl AnySource {
    /// Builds the client and resolves credentials once, logging which identity is used.
    pub async fn open(url: &SourceUrl, opts: &Options, reporter: &dyn Reporter) -> Result<Self> {
        let http = &opts.http;
        match url {
            SourceUrl::Bucket {
                scheme: crate::url::BucketScheme::S3,
                bucket,
                prefix,
            } => Ok(AnySource::S3(
                s3::S3::open_aws(bucket, prefix, http, reporter).await?,
            )),
            SourceUrl::Bucket {
                scheme: crate::url::BucketScheme::Gs,
                bucket,
                prefix,
            } => Ok(AnySource::Gcs(
                gcs::Gcs::open(bucket, prefix, http, opts.write, reporter).await?,
            )),
            SourceUrl::Bucket {
                scheme: crate::url::BucketScheme::Oss,
                bucket,
                prefix,
            } => Ok(AnySource::Oss(
                oss::open(bucket, prefix, http, opts.oss_internal, reporter).await?,
            )),
            SourceUrl::Hf(h) => Ok(AnySource::Hf(hf::Hf::open(h, http, reporter).await?)),
        }
    }
}

impl Source for AnySource {
    async fn list(&self) -> Result<Listing> {
        match self {
            AnySource::S3(s) | AnySource::Oss(s) => s.list().await,
            AnySource::Gcs(s) => s.list().await,
            AnySource::Hf(s) => s.list().await,
        }
    }

    async fn fetch(&self, file: &RemoteFile, range: ByteRange) -> Result<Fetched> {
        match self {
            AnySource::S3(s) | AnySource::Oss(s) => s.fetch(file, range).await,
            AnySource::Gcs(s) => s.fetch(file, range).await,
            AnySource::Hf(s) => s.fetch(file, range).await,
        }
    }
}
