//! What a light client can check without trusting the validator it asks: that a block's header
//! (height, timestamp, beacon, the digest of its transactions, its parent) was finalized by a
//! quorum of the validators the genesis names.
//!
//! With each block a validator stores a [`Proof`] (served hex-encoded as `certificate` by
//! `GET /v1/blocks/{height}`): the consensus header fields the ledger does not keep (the parent
//! block's digest and the digest of the transactions' bytes) and, when the block was finalized
//! by a certificate of its own, simplex's `Finalization` (the proposal and the validators'
//! ed25519 signatures). A block finalized through a descendant has no certificate of its own; it
//! is final because the descendant names it, through the chain of parent digests.
//!
//! [`verify_headers`] recomputes every block's digest from the header the replica reports,
//! follows the parent links up to a block with a certificate, and verifies that certificate
//! against the genesis' validator set: a quorum of distinct validators signed the finalization of
//! exactly that digest. Everything the header commits to is then final. What the certificate does
//! not cover is the state root, because execution follows ordering (a block carries no state
//! root): compare it across replicas (`LedgerClient::replicas`).

use bytes::BufMut;
use commonware_codec::{
    Buf, Decode, DecodeExt, EncodeSize, Error as CodecError, RangeCfg, Read, ReadExt, Write,
};
use commonware_consensus::simplex::types::Finalization;
use commonware_cryptography::{ed25519, sha256::Digest};
use commonware_parallel::Sequential;
use commonware_utils::ordered::Set;
use sortition_ledger::Genesis;
use sortition_ledger_client::{BlockResponse, LedgerClient};

use crate::block::header_digest;

type Scheme = commonware_consensus::simplex::scheme::ed25519::Scheme;

/// The namespace consensus signs votes under (the engine's).
pub(crate) const NAMESPACE: &[u8] = b"sortition/consensus";

/// Most bytes of an encoded finalization kept in a proof.
const MAX_FINALIZATION_BYTES: usize = 64 * 1024;

/// What a validator stores with each block for light clients (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The digest of the parent block (consensus').
    pub parent: Digest,
    /// sha256 of the block's transaction bytes.
    pub txs_digest: Digest,
    /// simplex's `Finalization` for this block, encoded; `None` when a descendant's certificate
    /// finalized it.
    pub finalization: Option<Vec<u8>>,
}

impl Write for Proof {
    fn write(&self, w: &mut impl BufMut) {
        self.parent.write(w);
        self.txs_digest.write(w);
        match &self.finalization {
            None => w.put_u8(0),
            Some(f) => {
                w.put_u8(1);
                f.write(w);
            }
        }
    }
}

impl EncodeSize for Proof {
    fn encode_size(&self) -> usize {
        self.parent.encode_size()
            + self.txs_digest.encode_size()
            + 1
            + self.finalization.as_ref().map_or(0, |f| f.encode_size())
    }
}

impl Read for Proof {
    type Cfg = ();

    fn read_cfg(r: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let parent = Digest::read(r)?;
        let txs_digest = Digest::read(r)?;
        let finalization = match u8::read(r)? {
            0 => None,
            1 => Some(Vec::<u8>::read_cfg(
                r,
                &(RangeCfg::new(0..=MAX_FINALIZATION_BYTES), ()),
            )?),
            t => return Err(CodecError::InvalidEnum(t)),
        };
        Ok(Proof {
            parent,
            txs_digest,
            finalization,
        })
    }
}

/// Why a header could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum LightError {
    #[error("genesis validator set: {0}")]
    Genesis(String),
    #[error("block {height}: {why}")]
    Malformed { height: u64, why: String },
    #[error("block {height} has no consensus proof (not served by a validator?)")]
    NoProof { height: u64 },
    #[error("blocks are not consecutive: {after} then {got}")]
    NotConsecutive { after: u64, got: u64 },
    #[error("block {height}'s parent digest does not match block {}'s header", height - 1)]
    BrokenLink { height: u64 },
    #[error("no finality certificate from block {from} through {to}")]
    NoCertificate { from: u64, to: u64 },
    #[error("block {height}'s certificate finalizes another digest than its header's")]
    WrongPayload { height: u64 },
    #[error("block {height}'s certificate does not verify against the genesis' validators")]
    BadSignatures { height: u64 },
    #[error("fetching block {height}: {why}")]
    Fetch { height: u64, why: String },
}

/// What was verified: blocks `from..=to` are final, by the certificate of `to` (a view of
/// consensus) signed by `signers` of the genesis' `validators`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finality {
    pub from: u64,
    pub to: u64,
    pub view: u64,
    pub signers: usize,
    pub validators: usize,
}

/// The genesis' validators in participant order (ascending keys, as the genesis lists them).
pub fn participants(genesis: &Genesis) -> Result<Set<ed25519::PublicKey>, String> {
    let keys: Vec<ed25519::PublicKey> = genesis
        .validators
        .iter()
        .map(|k| crate::keys::parse_public(k))
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err("the genesis names no validators".into());
    }
    let set = Set::try_from(keys.clone()).map_err(|_| "validator keys repeat".to_string())?;
    if set.iter().cloned().collect::<Vec<_>>() != keys {
        return Err("validators are not in the participant order (ascending keys)".into());
    }
    Ok(set)
}

fn proof_of(b: &BlockResponse) -> Result<Proof, LightError> {
    let hex = b
        .certificate
        .as_deref()
        .ok_or(LightError::NoProof { height: b.height })?;
    let bytes = hex::decode(hex).map_err(|e| LightError::Malformed {
        height: b.height,
        why: format!("proof is not hex: {e}"),
    })?;
    Proof::decode(bytes::Bytes::from(bytes)).map_err(|e| LightError::Malformed {
        height: b.height,
        why: format!("proof does not decode: {e}"),
    })
}

/// Verifies that the consecutive headers `blocks` (ascending) are final: each one's parent
/// digest is the previous one's recomputed digest, and the last carries a finality certificate
/// that a quorum of the genesis' validators signed for exactly its digest.
pub fn verify_headers(genesis: &Genesis, blocks: &[BlockResponse]) -> Result<Finality, LightError> {
    let participants = participants(genesis).map_err(LightError::Genesis)?;
    let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
        return Err(LightError::NoCertificate { from: 0, to: 0 });
    };
    let mut previous: Option<(u64, Digest)> = None;
    let mut last_proof = None;
    for b in blocks {
        let proof = proof_of(b)?;
        let digest = header_digest(
            &proof.parent,
            b.height,
            b.timestamp_ms,
            b.beacon.as_ref().map(|s| &s.0),
            &proof.txs_digest,
        );
        if let Some((h, d)) = previous {
            if b.height != h + 1 {
                return Err(LightError::NotConsecutive {
                    after: h,
                    got: b.height,
                });
            }
            if proof.parent != d {
                return Err(LightError::BrokenLink { height: b.height });
            }
        }
        previous = Some((b.height, digest));
        last_proof = Some(proof);
    }
    let (Some((_, digest)), Some(proof)) = (previous, last_proof) else {
        return Err(LightError::NoCertificate {
            from: first.height,
            to: last.height,
        });
    };
    let Some(bytes) = proof.finalization else {
        return Err(LightError::NoCertificate {
            from: first.height,
            to: last.height,
        });
    };
    let finalization =
        Finalization::<Scheme, Digest>::decode_cfg(bytes::Bytes::from(bytes), &participants.len())
            .map_err(|e| LightError::Malformed {
                height: last.height,
                why: format!("certificate does not decode: {e}"),
            })?;
    if finalization.proposal.payload != digest {
        return Err(LightError::WrongPayload {
            height: last.height,
        });
    }
    let verifier = Scheme::verifier(NAMESPACE, participants.clone());
    if !finalization.verify(&mut rand::rng(), &verifier, &Sequential) {
        return Err(LightError::BadSignatures {
            height: last.height,
        });
    }
    Ok(Finality {
        from: first.height,
        to: last.height,
        view: finalization.proposal.round.view().get(),
        signers: finalization.certificate.signers.count(),
        validators: participants.len(),
    })
}

/// Fetches block `height` and the blocks after it up to the first with a certificate of its own
/// (at most `max_ahead` more), from `client`, and verifies them with [`verify_headers`].
pub async fn verify_block(
    client: &LedgerClient,
    genesis: &Genesis,
    height: u64,
    max_ahead: u64,
) -> Result<Finality, LightError> {
    let mut blocks = Vec::new();
    for h in height..=height.saturating_add(max_ahead) {
        let b = client.block(h).await.map_err(|e| LightError::Fetch {
            height: h,
            why: e.to_string(),
        })?;
        let has_certificate = proof_of(&b)?.finalization.is_some();
        blocks.push(b);
        if has_certificate {
            return verify_headers(genesis, &blocks);
        }
    }
    Err(LightError::NoCertificate {
        from: height,
        to: height.saturating_add(max_ahead),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_codec::Encode;

    #[test]
    fn proofs_round_trip_and_malformed_bytes_are_refused() {
        let d = |b: u8| Digest::decode(bytes::Bytes::from(vec![b; 32])).expect("digest");
        for p in [
            Proof {
                parent: d(1),
                txs_digest: d(2),
                finalization: None,
            },
            Proof {
                parent: d(3),
                txs_digest: d(4),
                finalization: Some(vec![9; 100]),
            },
        ] {
            let bytes = p.encode();
            assert_eq!(Proof::decode(bytes.clone()).expect("decodes"), p);
            for cut in 0..bytes.len() {
                assert!(Proof::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
            }
            let mut bad = bytes.to_vec();
            bad[64] = 7;
            assert!(Proof::decode(bytes::Bytes::from(bad)).is_err());
        }
    }
}
