//! `s3://BUCKET[/PREFIX]`: ListObjectsV2 and ranged GETs, signed with SigV4, credentials from
//! aws-config's full chain (env keys, profiles, IRSA, EKS Pod Identity / ECS, IMDSv2).
//!
//! Any S3-compatible server works: a custom endpoint (MinIO, Ceph, SeaweedFS, moto) gets
//! path-style addressing and may be plain `http://`. OSS reuses this client with the bucket in
//! the host.

pub(crate) mod auth;
mod checksums;
mod client;
mod endpoint;
mod errors;
mod imds;
mod kserve;
mod listing;
mod read;
mod write;

pub use auth::Signer;
pub use client::{join_key, Service, S3};
pub use endpoint::Endpoint;
