//! Canonical encoding: the one byte representation used for hashing and signing.
//!
//! BCS (Binary Canonical Serialization) gives exactly one encoding per value, so two parties
//! that agree on a value agree on its bytes, digest and signature.

use serde::{Serialize, de::DeserializeOwned};

/// A value could not be encoded or decoded canonically.
#[derive(Debug, thiserror::Error)]
#[error("canonical encoding: {0}")]
pub struct EncodingError(String);

/// The canonical bytes of a value.
pub fn canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // BCS fails only on maps with non-canonical keys or sequences over 2^31 elements; none of
    // the types in this workspace can produce either, so a failure is a programming error.
    bcs::to_bytes(value).unwrap_or_else(|e| panic!("type is not BCS-encodable: {e}"))
}

/// Decodes canonical bytes, refusing trailing bytes.
pub fn from_canonical_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EncodingError> {
    bcs::from_bytes(bytes).map_err(|e| EncodingError(e.to_string()))
}
