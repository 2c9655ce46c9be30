//! The node's confidential key: an X25519 static key pair, rotated every epoch, and the
//! 64-byte report-data value that binds it to TEE evidence.
//!
//! Binding (documented choice): the TEE report-data field is 64 bytes; Sortition fills it with
//! `SHA-256("sortition/attest/v1" || public_key[32] || epoch_nonce[32] || node_id as u64 big-endian[8])`
//! followed by 32 zero bytes, and verifiers compare all 64 bytes. Every part has a fixed length,
//! so plain concatenation is unambiguous. The epoch nonce comes from the ledger, so evidence made
//! for an earlier epoch (or for another node, or another key) does not verify.

use std::fmt;

use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sortition_types::{Hash32, NodeId};
use zeroize::Zeroizing;

use crate::attest::{AttestationError, Evidence, VerifiedReport, Verifier};
use crate::encoding::hex_array;

/// Domain separator of the report-data binding.
pub const REPORT_DATA_DOMAIN: &[u8] = b"sortition/attest/v1";

const SEED_SALT: &[u8] = b"sortition/confidential-key/v1";

/// Errors of key generation and rotation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("operating-system randomness unavailable: {0}")]
    Randomness(String),
    #[error("rotation must move to a later epoch (current {current}, requested {requested})")]
    EpochNotIncreasing { current: u64, requested: u64 },
}

/// The 64-byte report data that TEE evidence must carry for `public_key` of `node_id` in the
/// epoch whose ledger nonce is `epoch_nonce`. See the module docs for the layout.
pub fn report_data(public_key: &[u8; 32], epoch_nonce: &Hash32, node_id: NodeId) -> [u8; 64] {
    let mut h = Sha256::new();
    h.update(REPORT_DATA_DOMAIN);
    h.update(public_key);
    h.update(epoch_nonce.0);
    h.update(node_id.0.to_be_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&digest);
    out
}

#[derive(Clone)]
enum Source {
    /// Fresh operating-system randomness at every rotation.
    Os,
    /// Deterministic derivation from a root seed (tests, simulations).
    Seed(Zeroizing<[u8; 32]>),
}

/// A node's confidential key for one epoch. The secret never appears in `Debug` output.
#[derive(Clone)]
pub struct ConfidentialKey {
    node_id: NodeId,
    epoch: u64,
    epoch_nonce: Hash32,
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    source: Source,
}

impl ConfidentialKey {
    fn from_secret(
        node_id: NodeId,
        epoch: u64,
        epoch_nonce: Hash32,
        secret: [u8; 32],
        source: Source,
    ) -> Self {
        let sk = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&sk).to_bytes();
        ConfidentialKey {
            node_id,
            epoch,
            epoch_nonce,
            secret: Zeroizing::new(sk.to_bytes()),
            public,
            source,
        }
    }

    fn derive_seeded(
        root: &[u8; 32],
        node_id: NodeId,
        epoch: u64,
        epoch_nonce: &Hash32,
    ) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(SEED_SALT), root);
        let mut info = Vec::with_capacity(48);
        info.extend_from_slice(&node_id.0.to_be_bytes());
        info.extend_from_slice(&epoch.to_be_bytes());
        info.extend_from_slice(&epoch_nonce.0);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so this cannot fail.
        if hk.expand(&info, &mut okm).is_err() {
            unreachable!("HKDF-SHA256 expand of 32 bytes");
        }
        okm
    }

    /// A fresh key from operating-system randomness. Later rotations also use fresh randomness.
    pub fn generate(node_id: NodeId, epoch: u64, epoch_nonce: Hash32) -> Result<Self, KeyError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut()).map_err(|e| KeyError::Randomness(e.to_string()))?;
        Ok(Self::from_secret(
            node_id,
            epoch,
            epoch_nonce,
            *secret,
            Source::Os,
        ))
    }

    /// A deterministic key derived from `seed` (tests and simulations only): the secret is
    /// HKDF-SHA256(salt "sortition/confidential-key/v1", seed, node_id || epoch || epoch_nonce).
    /// Rotations stay deterministic.
    pub fn from_seed(node_id: NodeId, seed: &[u8; 32], epoch: u64, epoch_nonce: Hash32) -> Self {
        let root = Zeroizing::new(*seed);
        let secret = Zeroizing::new(Self::derive_seeded(&root, node_id, epoch, &epoch_nonce));
        Self::from_secret(node_id, epoch, epoch_nonce, *secret, Source::Seed(root))
    }

    /// The key for a later epoch: fresh randomness (or the seeded derivation for seeded keys).
    /// The old key is unaffected; drop it once in-flight requests for its epoch are done.
    pub fn rotate(&self, epoch: u64, epoch_nonce: Hash32) -> Result<Self, KeyError> {
        if epoch <= self.epoch {
            return Err(KeyError::EpochNotIncreasing {
                current: self.epoch,
                requested: epoch,
            });
        }
        match &self.source {
            Source::Os => Self::generate(self.node_id, epoch, epoch_nonce),
            Source::Seed(root) => {
                let secret =
                    Zeroizing::new(Self::derive_seeded(root, self.node_id, epoch, &epoch_nonce));
                Ok(Self::from_secret(
                    self.node_id,
                    epoch,
                    epoch_nonce,
                    *secret,
                    self.source.clone(),
                ))
            }
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn epoch_nonce(&self) -> Hash32 {
        self.epoch_nonce
    }
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }
    /// Raw secret bytes, for HPKE decapsulation inside this crate only.
    pub(crate) fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The report data this key's TEE evidence must carry.
    pub fn report_data(&self) -> [u8; 64] {
        report_data(&self.public, &self.epoch_nonce, self.node_id)
    }

    /// What a client needs to seal to this key.
    pub fn recipient(&self) -> RecipientKey {
        RecipientKey {
            node_id: self.node_id,
            key_epoch: self.epoch,
            public_key: self.public,
        }
    }
}

impl fmt::Debug for ConfidentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfidentialKey")
            .field("node_id", &self.node_id)
            .field("epoch", &self.epoch)
            .field("public", &hex::encode(self.public))
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A node's public confidential key as a client uses it: take it only from
/// [`RecipientKey::verify_attested`] (or from a source that already did so).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientKey {
    pub node_id: NodeId,
    pub key_epoch: u64,
    #[serde(with = "hex_array")]
    pub public_key: [u8; 32],
}

impl RecipientKey {
    /// Client-side check of a published key (flow 7): the evidence must verify under `verifier`
    /// and carry exactly the report data binding `public_key`, `epoch_nonce` and `node_id`.
    /// Fails closed on any doubt.
    pub fn verify_attested(
        node_id: NodeId,
        key_epoch: u64,
        epoch_nonce: &Hash32,
        public_key: [u8; 32],
        evidence: &Evidence,
        verifier: &dyn Verifier,
        now_unix: u64,
    ) -> Result<(RecipientKey, VerifiedReport), AttestationError> {
        let expected = report_data(&public_key, epoch_nonce, node_id);
        let report = verifier.verify(evidence, &expected, now_unix)?;
        Ok((
            RecipientKey {
                node_id,
                key_epoch,
                public_key,
            },
            report,
        ))
    }
}
