//! Sealed requests: HPKE (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
//! ChaCha20-Poly1305.
//!
//! The HPKE `info` binds the target node, its key epoch and the request id, so a sealed request
//! cannot be re-addressed. Both ends then export `export("sortition response", 32)` from the
//! HPKE context: the response key, known only to the client and the node, which seals the
//! response stream ([`crate::stream`]).

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use sortition_types::{Hash32, NodeId};
use zeroize::Zeroizing;

use crate::encoding::{b64, hex_array};
use crate::keys::{ConfidentialKey, RecipientKey};
use crate::stream::{ResponseOpener, ResponseSealer};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

const INFO_DOMAIN: &[u8] = b"sortition/request/v1";
/// HPKE exporter context of the response key.
pub const RESPONSE_EXPORT_CONTEXT: &[u8] = b"sortition response";

/// Errors of sealing and opening requests. None of them reveals plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("invalid X25519 public key")]
    InvalidPublicKey,
    #[error("malformed encapsulated key")]
    MalformedEnc,
    #[error("request sealed for {sealed_for}, this key belongs to {this_node}")]
    WrongNode {
        sealed_for: NodeId,
        this_node: NodeId,
    },
    #[error("request sealed for key epoch {sealed_for}, this key is epoch {this_epoch}")]
    WrongEpoch { sealed_for: u64, this_epoch: u64 },
    #[error("request could not be opened (wrong key, or tampered ciphertext, aad or header)")]
    OpenFailed,
    #[error("HPKE failure: {0}")]
    Hpke(String),
}

/// A request sealed to one node's confidential key. Routing metadata (`node_id`, `key_epoch`,
/// `request_id`, `aad`) is visible to the gateway and authenticated; the body is not visible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRequest {
    pub node_id: NodeId,
    pub key_epoch: u64,
    pub request_id: Hash32,
    /// HPKE encapsulated key (X25519 ephemeral public key), hex.
    #[serde(with = "hex_array")]
    pub enc: [u8; 32],
    /// Associated data: authenticated, not encrypted (base64).
    #[serde(with = "b64")]
    pub aad: Vec<u8>,
    /// ChaCha20-Poly1305 ciphertext with its 16-byte tag (base64).
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

fn info(node_id: NodeId, key_epoch: u64, request_id: &Hash32) -> Vec<u8> {
    let mut v = Vec::with_capacity(INFO_DOMAIN.len() + 48);
    v.extend_from_slice(INFO_DOMAIN);
    v.extend_from_slice(&node_id.0.to_be_bytes());
    v.extend_from_slice(&key_epoch.to_be_bytes());
    v.extend_from_slice(&request_id.0);
    v
}

/// Client side: seal `plaintext` (with authenticated `aad`) to the node's attested key.
/// Returns the sealed request and the [`ResponseOpener`] that reads the node's answer.
pub fn seal_request(
    recipient: &RecipientKey,
    request_id: Hash32,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<(SealedRequest, ResponseOpener), SealError> {
    let pk = <Kem as KemTrait>::PublicKey::from_bytes(&recipient.public_key)
        .map_err(|_| SealError::InvalidPublicKey)?;
    let info = info(recipient.node_id, recipient.key_epoch, &request_id);
    let (enc, mut ctx) = hpke::setup_sender::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, &info)
        .map_err(|_| SealError::InvalidPublicKey)?;
    let ciphertext = ctx
        .seal(plaintext, aad)
        .map_err(|e| SealError::Hpke(e.to_string()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    ctx.export(RESPONSE_EXPORT_CONTEXT, key.as_mut())
        .map_err(|e| SealError::Hpke(e.to_string()))?;
    let enc_bytes: [u8; 32] = enc.to_bytes().into();
    let sealed = SealedRequest {
        node_id: recipient.node_id,
        key_epoch: recipient.key_epoch,
        request_id,
        enc: enc_bytes,
        aad: aad.to_vec(),
        ciphertext,
    };
    Ok((sealed, ResponseOpener::new(&key, request_id)))
}

/// Node side: open a sealed request with this epoch's key. Returns the plaintext (wiped on
/// drop) and the [`ResponseSealer`] for the answer.
pub fn open_request(
    key: &ConfidentialKey,
    sealed: &SealedRequest,
) -> Result<(Zeroizing<Vec<u8>>, ResponseSealer), SealError> {
    if sealed.node_id != key.node_id() {
        return Err(SealError::WrongNode {
            sealed_for: sealed.node_id,
            this_node: key.node_id(),
        });
    }
    if sealed.key_epoch != key.epoch() {
        return Err(SealError::WrongEpoch {
            sealed_for: sealed.key_epoch,
            this_epoch: key.epoch(),
        });
    }
    let sk = <Kem as KemTrait>::PrivateKey::from_bytes(key.secret_bytes())
        .map_err(|e| SealError::Hpke(e.to_string()))?;
    let enc = <Kem as KemTrait>::EncappedKey::from_bytes(&sealed.enc)
        .map_err(|_| SealError::MalformedEnc)?;
    let info = info(sealed.node_id, sealed.key_epoch, &sealed.request_id);
    let mut ctx = hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &sk, &enc, &info)
        .map_err(|_| SealError::OpenFailed)?;
    let plaintext = ctx
        .open(&sealed.ciphertext, &sealed.aad)
        .map_err(|_| SealError::OpenFailed)?;
    let mut rk = Zeroizing::new([0u8; 32]);
    ctx.export(RESPONSE_EXPORT_CONTEXT, rk.as_mut())
        .map_err(|e| SealError::Hpke(e.to_string()))?;
    Ok((
        Zeroizing::new(plaintext),
        ResponseSealer::new(&rk, sealed.request_id),
    ))
}
