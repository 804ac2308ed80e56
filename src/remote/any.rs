//! [`AnySource`]: the closed set of clients, chosen from the URL, with static dispatch.

use std::sync::Arc;

use super::p2p::{P2p, P2pOptions, P2pReport};
use super::types::{ByteRange, Fetched, Listing, RemoteFile, Source};
use super::{gcs, hf, http, oci, oss, s3};
use crate::error::Result;
use crate::progress::Reporter;
use crate::url::SourceUrl;

/// Settings for opening any source.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub http: http::ClientOptions,
    /// Use OSS's `-internal` (VPC) endpoint when deriving it from the region.
    pub oss_internal: bool,
    /// The bucket is requester-pays (GCS: the project billed).
    pub requester_pays: Option<Option<String>>,
    /// The client will write (upload): ask for write credentials where scopes exist (GCS).
    pub write: bool,
    /// Send object reads through this P2P proxy (`--p2p-proxy`).
    pub p2p: Option<P2pOptions>,
}

/// The closed set of schemes: static dispatch, no boxing.
pub enum AnySource {
    S3(s3::S3),
    Oss(s3::S3),
    Gcs(gcs::Gcs),
    Hf(hf::Hf),
    Oci(oci::Oci),
}

impl AnySource {
    /// Builds the client and resolves credentials once, logging which identity is used.
    /// `reporter` also receives the notices of a running client (a region learnt, a clock
    /// corrected, throttling).
    pub async fn open(
        url: &SourceUrl,
        opts: &Options,
        reporter: &Arc<dyn Reporter>,
    ) -> Result<Self> {
        let mut source = Self::open_direct(url, opts, reporter.as_ref()).await?;
        match &mut source {
            AnySource::S3(s) | AnySource::Oss(s) => {
                s.set_reporter(Arc::clone(reporter));
                s.requester_pays = opts.requester_pays.is_some();
            }
            AnySource::Gcs(g) => g.user_project = opts.requester_pays.clone().flatten(),
            AnySource::Hf(_) | AnySource::Oci(_) => {}
        }
        if let Some(p) = &opts.p2p {
            // A proxy that tunnels (CONNECT) to a private-CA endpoint needs the CA that the
            // direct S3 client trusts too.
            let mut http = opts.http.clone();
            if matches!(source, AnySource::S3(_) | AnySource::Oss(_)) {
                if let Some(ca) = crate::env::var("AWS_CA_BUNDLE") {
                    http.ca_bundles.push(ca.into());
                }
            }
            let p2p = Arc::new(P2p::new(p, &http)?);
            reporter.info(&format!(
                "p2p: object reads go through {} (listings, tokens and API calls stay direct)",
                p2p.report().proxy
            ));
            match &mut source {
                AnySource::S3(s) | AnySource::Oss(s) => s.p2p = Some(p2p),
                AnySource::Gcs(s) => s.p2p = Some(p2p),
                AnySource::Hf(s) => s.p2p = Some(p2p),
                AnySource::Oci(s) => s.p2p = Some(p2p),
            }
        }
        Ok(source)
    }

    /// No more object reads through the P2P proxy in this run (when one is set).
    /// Whether a multipart ETag from this source is known to be the MD5 of the parts' MD5s
    /// (AWS itself), so that a mismatch can only be damage (see `download::reread`).
    pub fn multipart_etags_are_md5s(&self) -> bool {
        matches!(self, AnySource::S3(s) if s.aws_hosted())
    }

    pub fn p2p_stop(&self, why: &str) {
        let p2p = match self {
            AnySource::S3(s) | AnySource::Oss(s) => s.p2p.as_ref(),
            AnySource::Gcs(s) => s.p2p.as_ref(),
            AnySource::Hf(s) => s.p2p.as_ref(),
            AnySource::Oci(s) => s.p2p.as_ref(),
        };
        if let Some(p) = p2p {
            p.stop(why);
        }
    }

    /// What went through the P2P proxy and what around it, when one is set.
    pub fn p2p_report(&self) -> Option<P2pReport> {
        let p2p = match self {
            AnySource::S3(s) | AnySource::Oss(s) => s.p2p.as_ref(),
            AnySource::Gcs(s) => s.p2p.as_ref(),
            AnySource::Hf(s) => s.p2p.as_ref(),
            AnySource::Oci(s) => s.p2p.as_ref(),
        };
        p2p.map(|p| p.report())
    }

    async fn open_direct(url: &SourceUrl, opts: &Options, reporter: &dyn Reporter) -> Result<Self> {
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
            SourceUrl::Oci(o) => Ok(AnySource::Oci(
                oci::Oci::open(o, http, opts.write, reporter).await?,
            )),
        }
    }
}

impl Source for AnySource {
    async fn list(&self) -> Result<Listing> {
        match self {
            AnySource::S3(s) | AnySource::Oss(s) => s.list().await,
            AnySource::Gcs(s) => s.list().await,
            AnySource::Hf(s) => s.list().await,
            AnySource::Oci(s) => s.list().await,
        }
    }

    async fn fetch(&self, file: &RemoteFile, range: ByteRange) -> Result<Fetched> {
        match self {
            AnySource::S3(s) | AnySource::Oss(s) => s.fetch(file, range).await,
            AnySource::Gcs(s) => s.fetch(file, range).await,
            AnySource::Hf(s) => s.fetch(file, range).await,
            AnySource::Oci(s) => s.fetch(file, range).await,
        }
    }
}
