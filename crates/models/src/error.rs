//! The one error type of the model store.

use sortition_types::Hash32;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// The model name is not in the built-in catalog.
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    /// A cached file is not what the catalog pins (unreadable, or a malformed pin).
    #[error("corrupt model file: {0}")]
    Corrupt(String),
    /// A downloaded or cached file does not have the pinned digest; it was deleted.
    #[error("digest mismatch for {file}: expected {expected}, got {actual}")]
    DigestMismatch {
        file: String,
        expected: Hash32,
        actual: Hash32,
    },
    /// Fetching a model failed (pip, hub, unzip, file system).
    #[error("model download failed: {0}")]
    Download(String),
    /// The file system or a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl From<std::io::Error> for ModelError {
    fn from(e: std::io::Error) -> Self {
        ModelError::Internal(format!("io: {e}"))
    }
}
