//! Integration tests: the real binary against real servers on loopback, started by
//! scripts/test.sh.

mod adversity;
mod edges;
mod faults;
mod field;
mod gcs;
mod hf;
mod kserve;
mod oss;
mod p2p;
mod promises;
mod s3;
mod safety;
mod ship;
mod support;
mod verify;
