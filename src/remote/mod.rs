//! The remote layer, used by both directions: one client per service behind one small read
//! interface ([`Source`]: list everything once, fetch a byte range) and one write call
//! ([`AnySource::put_file`], in `write`). Clients never retry on their own and never touch
//! local files; they classify their own errors (kind + retry hint) where they arise, and check
//! that every ranged reply is exactly the bytes asked for.

mod any;
pub mod body;
mod bucket;
pub mod gcs;
mod gcs_auth;
pub mod hf;
pub mod http;
pub mod oci;
pub mod oss;
pub mod p2p;
mod pin;
pub mod s3;
pub mod sigv4;
pub mod types;
mod write;

pub use any::{AnySource, Options};
pub use types::{
    ByteRange, ByteStream, Checksum, Fetched, Listing, PartChecksum, RemoteFile, Source,
};
