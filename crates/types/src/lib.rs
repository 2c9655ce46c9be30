//! Shared vocabulary of Sortition.
//!
//! Owns: identifiers, integer amounts, SHA-256 digests, ed25519 keys and signatures, the
//! canonical byte encoding that everything signed or hashed goes through (BCS), receipts,
//! request authentication messages, and Merkle trees over receipts.
//!
//! Does not own: any I/O, clocks, randomness sources or storage. Every function here is pure.

pub mod amount;
pub mod auth;
pub mod crypto;
pub mod encoding;
pub mod hash;
pub mod ids;
pub mod merkle;
pub mod receipt;

pub use amount::{Amount, Units};
pub use auth::RequestAuth;
pub use crypto::{Keypair, PublicKey, Signature, SignatureError};
pub use encoding::{EncodingError, canonical_bytes};
pub use hash::{Hash32, sha256};
pub use ids::{AuditId, ClaimId, DisputeId, ModelId, NodeId, StackId};
pub use merkle::{MerkleProof, merkle_root};
pub use receipt::{
    Custody, NodeClass, Receipt, SamplingRecord, SignedReceipt, TokenLogprobCommit,
    answer_response_hash, embedding_response_hash, text_response_hash,
};
