//! model-loader: puts ML models and adapters from object stores and the Hugging Face Hub onto
//! a local or shared volume — fast, with flat memory, and never half-written.
//!
//! Data flow (ARCHITECTURE.md): `cli` → `url` → `remote` (list once, ranged reads; writes for
//! uploads) → `download` (select → plan → engine → manifest) or `upload` (walk → compare →
//! send). `retry`, `checksum`, `confine`, `progress`, `error` and `cancel` serve both
//! directions.

pub mod cancel;
pub mod checksum;
pub mod cli;
pub mod confine;
pub mod download;
pub mod env;
pub mod error;
pub mod progress;
pub mod redact;
pub mod remote;
pub mod retry;
pub mod upload;
pub mod url;

pub use download::audit::{audit, check, AuditFailure};
pub use download::run;
