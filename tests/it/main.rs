//! Integration tests: the real binary against real servers on loopback, started by
//! scripts/test.sh.

// The integration scenarios read best whole, and the fault proxy's connection loop
// (support/proxy.rs) is still one function per connection: exempt from the 100-line rule the
// library keeps (Cargo.toml [lints]).
#![allow(clippy::too_many_lines)]

mod adversity;
mod edges;
mod faults;
mod field;
mod gcs;
mod hf;
mod kserve;
mod oci;
mod oss;
mod p2p;
mod promises;
mod s3;
mod safety;
mod ship;
mod support;
mod verify;
mod write_mode;
