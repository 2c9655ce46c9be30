//! ed25519 keys and signatures with domain separation.
//!
//! Every signature covers `domain || canonical_bytes(message)`, where the domain names what is
//! being signed (a transaction, a receipt, a request). A signature made for one purpose can
//! therefore never be replayed as another.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::fixed_bytes;

/// Why a signature or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed public key")]
    BadKey,
    #[error("signature does not verify against the given key")]
    Invalid,
}

/// An ed25519 public key (32 bytes). Also the identity of a ledger account.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

/// A secret signing key. Its bytes are never printed.
#[derive(Clone)]
pub struct Keypair {
    key: SigningKey,
}

impl Keypair {
    /// A key from 32 secret bytes (from the OS RNG, a seed, or a key file).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Keypair {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// A deterministic key for tests and devnet fixtures: sha256(seed) as the secret.
    pub fn from_seed(seed: &[u8]) -> Self {
        Self::from_secret(crate::sha256(seed).0)
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `domain || canonical_bytes(msg)`.
    pub fn sign<T: Serialize + ?Sized>(&self, domain: &str, msg: &T) -> Signature {
        Signature(self.key.sign(&signing_bytes(domain, msg)).to_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair(public={})", self.public())
    }
}

fn signing_bytes<T: Serialize + ?Sized>(domain: &str, msg: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(b"sortition/v1/");
    bytes.extend_from_slice(domain.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&crate::canonical_bytes(msg));
    bytes
}

impl PublicKey {
    /// Checks `sig` over `domain || canonical_bytes(msg)`. Uses strict verification (no
    /// malleable or small-order signatures).
    pub fn verify<T: Serialize + ?Sized>(
        &self,
        domain: &str,
        msg: &T,
        sig: &Signature,
    ) -> Result<(), SignatureError> {
        let vk = VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::BadKey)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        vk.verify_strict(&signing_bytes(domain, msg), &sig)
            .map_err(|_| SignatureError::Invalid)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, SignatureError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| SignatureError::BadKey)?;
        Ok(PublicKey(out))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}…)", &self.to_hex()[..12])
    }
}

impl std::str::FromStr for PublicKey {
    type Err = SignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_hex(s)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", &hex::encode(&self.0[..8]))
    }
}

impl Signature {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Result<Self, SignatureError> {
        let mut out = [0u8; 64];
        hex::decode_to_slice(s, &mut out).map_err(|_| SignatureError::Invalid)?;
        Ok(Signature(out))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fixed_bytes::serialize(&self.0, s)
    }
}
impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fixed_bytes::deserialize(d).map(PublicKey)
    }
}
impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fixed_bytes::serialize(&self.0, s)
    }
}
impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fixed_bytes::deserialize(d).map(Signature)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_domain_separation() {
        let k = Keypair::from_seed(b"alice");
        let sig = k.sign("tx", &42u64);
        assert!(k.public().verify("tx", &42u64, &sig).is_ok());
        assert_eq!(
            k.public().verify("receipt", &42u64, &sig),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            k.public().verify("tx", &43u64, &sig),
            Err(SignatureError::Invalid)
        );
        let other = Keypair::from_seed(b"bob");
        assert!(other.public().verify("tx", &42u64, &sig).is_err());
    }

    #[test]
    fn keys_round_trip_through_json() {
        let k = Keypair::from_seed(b"alice").public();
        let s = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&s).unwrap(), k);
        assert!(serde_json::from_str::<PublicKey>("\"abcd\"").is_err());
    }
}
