//! The randomness beacon: a BLS12-381 threshold signature per block, and the draws made from it.
//!
//! # What a block's randomness is
//!
//! Block `h` carries `σ_h`, the group's threshold signature (BLS12-381, the `MinSig` variant:
//! 48-byte signatures in G1, 96-byte keys in G2) over a message that depends only on the chain
//! and the height — `message(chain_id, h)`, signed under the namespace [`NAMESPACE`] — and its
//! randomness is `sha256(σ_h)`. BLS signatures are unique: for a given key and message there is
//! exactly one valid signature, so whoever produces the block cannot grind or bias the value,
//! only withhold it. A `t`-of-`n` threshold signature needs `t` shares to produce, so nobody
//! holding fewer than `t` shares can predict it. Every replica checks `σ_h` against the group
//! key in the genesis and `randomness == sha256(σ_h)` in [`Ledger::begin_block`]
//! (`crate::Ledger::begin_block`), refusing the block otherwise.
//!
//! # When a value is used
//!
//! Randomness selects only for things fixed in an earlier block: a claim included at `h` has its
//! receipts and auditors drawn at the end of block `h + 1` with `h + 1`'s value; likewise a
//! challenge's auditors and a dispute's committee (see `draws`). Nobody could know that value
//! when the claim was submitted, nor when it was included.
//!
//! With validators, each signs its share of `σ_h` only once block `h − 1` is final. A block
//! proposed on a parent that is not final yet (consensus pipelines: a leader may build on a
//! block that is only notarized, and a crash can leave a notarized block whose own finalization
//! never completes) carries no beacon: it is a *bridge* block ([`crate::BlockContext::beacon`]),
//! and its finalization finalizes its parent. Draws fixed before it wait for the next block
//! with a beacon, whose value nobody could know before they were final.
//!
//! # Keys
//!
//! The genesis names the group ([`BeaconConfig`]: group key, threshold, each validator's public
//! share, and the dealer's commitment to the sharing polynomial from which every one of those
//! is derived and checked). A validator's secret share ([`SecretShare`]) never appears in the
//! genesis; the ledger service keeps it in its data directory (a 0600 file).
//!
//! [`deal`] is a *trusted dealer*: it knows the group secret while it deals, which is acceptable
//! for a devnet and for tests, never for production. Production needs a distributed key
//! generation among the validators (e.g. `commonware_cryptography::bls12381::dkg`, Feldman /
//! Desmedt with resharing) so that no single party ever holds the group secret; its public
//! output is the same [`Sharing`], so the genesis format and everything that verifies stays as
//! it is.
//!
//! # For the BFT step
//!
//! The primitives are those of `commonware-cryptography` (=2026.10.0), the library under
//! commonware's simplex consensus, whose threshold scheme produces a per-view seed of exactly
//! this kind (a threshold signature over a view-dependent message). A validator signs a
//! [`PartialSig`] with [`SecretShare::sign`], peers check it with [`Beacon::verify_partial`],
//! and any `t` of them give `σ_h` by [`Beacon::recover`]; the ledger only ever checks the
//! recovered signature, so plugging in consensus changes who gathers the partials, not what the
//! state machine verifies.
//!
//! No I/O, clock or OS randomness here: [`deal`] takes its randomness from the caller.

use std::num::NonZeroU32;

use commonware_codec::{Decode, DecodeExt, Encode};
use commonware_cryptography::bls12381::dkg::feldman_desmedt::deal as commonware_deal;
use commonware_cryptography::bls12381::primitives::group::Share;
use commonware_cryptography::bls12381::primitives::ops::{self, threshold};
use commonware_cryptography::bls12381::primitives::sharing::{Mode, ModeVersion};
use commonware_cryptography::bls12381::primitives::variant::{MinSig, PartialSignature, Variant};
use commonware_parallel::Sequential;
use commonware_utils::{N3f1, Participant, ordered::Set};
use serde::{Deserialize, Serialize};
use sortition_types::{Hash32, hash::sha256_parts, sha256};

/// The public output of a sharing (the polynomial commitment), as commonware's DKG makes it.
pub type Sharing = commonware_cryptography::bls12381::primitives::sharing::Sharing<MinSig>;

/// The domain of beacon signatures.
pub const NAMESPACE: &[u8] = b"sortition/beacon";

/// Most validators a genesis may name (bounds the work of decoding a commitment).
pub const MAX_VALIDATORS: u32 = 1_024;

/// Length of a compressed G1 point: a beacon signature.
pub const SIGNATURE_LEN: usize = 48;

/// Why beacon keys or a beacon signature were refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BeaconError {
    #[error("beacon {field} is not valid hex")]
    NotHex { field: String },
    #[error("beacon {field} is not a valid BLS12-381 encoding: {reason}")]
    Malformed { field: String, reason: String },
    #[error("beacon threshold must be at least 1")]
    ZeroThreshold,
    #[error("beacon threshold {threshold} exceeds the {validators} validators' shares")]
    ThresholdAboveValidators { threshold: u32, validators: usize },
    #[error("beacon names {listed} public shares, its commitment is for {committed} validators")]
    ShareCountMismatch { listed: usize, committed: u32 },
    #[error("beacon threshold {listed} does not match its commitment's threshold {committed}")]
    ThresholdMismatch { listed: u32, committed: u32 },
    #[error("beacon group key does not match its commitment")]
    GroupKeyMismatch,
    #[error("public share {index} of the beacon does not match its commitment")]
    PublicShareMismatch { index: u32 },
    #[error("secret share {index} does not match public share {index} of the genesis")]
    SecretShareMismatch { index: u32 },
    #[error("secret share index {index} is out of range ({validators} validators)")]
    ShareIndexOutOfRange { index: u32, validators: u32 },
    #[error("beacon signature for height {height} does not verify against the group key")]
    BadSignature { height: u64 },
    #[error("partial beacon signature {index} for height {height} does not verify")]
    BadPartial { height: u64, index: u32 },
    #[error("beacon needs {threshold} partial signatures, got {got}")]
    NotEnoughPartials { threshold: u32, got: usize },
    #[error("no beacon share at {path}: this sequencer cannot sign the genesis' beacon")]
    NoShare { path: String },
    #[error("dealing beacon shares failed: {0}")]
    Deal(String),
}

/// What the genesis says about the beacon. Every field is public; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeaconConfig {
    /// The group public key (hex, 96-byte compressed G2), against which `σ_h` verifies.
    pub group_key: String,
    /// Shares needed to sign (`t`).
    pub threshold: u32,
    /// Validator `i`'s public share (hex, compressed G2), in participant order.
    pub public_shares: Vec<String>,
    /// The dealer's (or DKG's) commitment to the sharing polynomial (hex, commonware encoding
    /// of [`Sharing`]): the group key is its constant term, `threshold - 1` its degree, and
    /// `public_shares[i]` its evaluation for participant `i`; all three are checked against it.
    pub commitment: String,
}

/// A beacon signature `σ_h` (48-byte compressed G1), hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BeaconSig(pub [u8; SIGNATURE_LEN]);

impl BeaconSig {
    /// The block randomness this signature gives: `sha256(σ_h)`.
    pub fn randomness(&self) -> Hash32 {
        sha256(&self.0)
    }

    fn of(sig: &<MinSig as Variant>::Signature) -> Result<Self, BeaconError> {
        let bytes = sig.encode();
        let arr: [u8; SIGNATURE_LEN] =
            bytes
                .as_ref()
                .try_into()
                .map_err(|_| BeaconError::Malformed {
                    field: "signature".into(),
                    reason: format!("{} bytes", bytes.len()),
                })?;
        Ok(BeaconSig(arr))
    }

    fn point(&self, height: u64) -> Result<<MinSig as Variant>::Signature, BeaconError> {
        <MinSig as Variant>::Signature::decode(self.0.to_vec())
            .map_err(|_| BeaconError::BadSignature { height })
    }
}

impl std::fmt::Debug for BeaconSig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BeaconSig({})", hex::encode(self.0))
    }
}

impl Serialize for BeaconSig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for BeaconSig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        let arr: [u8; SIGNATURE_LEN] = v
            .try_into()
            .map_err(|_| serde::de::Error::custom("beacon signature must be 48 bytes"))?;
        Ok(BeaconSig(arr))
    }
}

/// One validator's partial signature for a height.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialSig(PartialSignature<MinSig>);

impl PartialSig {
    pub fn index(&self) -> u32 {
        self.0.index.get()
    }

    /// The commonware encoding (index, then the G1 point), for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.encode().to_vec()
    }

    /// Decodes [`PartialSig::to_bytes`]; says what is wrong with malformed bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BeaconError> {
        PartialSignature::<MinSig>::decode(bytes.to_vec())
            .map(PartialSig)
            .map_err(|e| BeaconError::Malformed {
                field: "partial signature".into(),
                reason: e.to_string(),
            })
    }
}

/// The message signed for height `h` of `chain_id`: `len(chain_id) as u32 LE || chain_id ||
/// h as u64 LE` (under [`NAMESPACE`]). Nothing else enters it, so nothing can bias it.
pub fn message(chain_id: &str, height: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + chain_id.len());
    m.extend_from_slice(&(chain_id.len() as u32).to_le_bytes());
    m.extend_from_slice(chain_id.as_bytes());
    m.extend_from_slice(&height.to_le_bytes());
    m
}

/// A validator's secret share. Never in the genesis; its `Debug` shows only the index.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretShare(Share);

impl std::fmt::Debug for SecretShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretShare({})", self.0.index)
    }
}

impl SecretShare {
    pub fn index(&self) -> u32 {
        self.0.index.get()
    }

    /// The share's encoding (index and scalar), hex: what the data directory's file holds.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.encode())
    }

    pub fn from_hex(s: &str) -> Result<Self, BeaconError> {
        let bytes = hex::decode(s.trim()).map_err(|_| BeaconError::NotHex {
            field: "secret share".into(),
        })?;
        Share::decode(bytes)
            .map(SecretShare)
            .map_err(|e| BeaconError::Malformed {
                field: "secret share".into(),
                reason: e.to_string(),
            })
    }

    /// This validator's partial signature for `height` (deterministic).
    pub fn sign(&self, chain_id: &str, height: u64) -> PartialSig {
        PartialSig(threshold::sign_message::<MinSig>(
            &self.0,
            NAMESPACE,
            &message(chain_id, height),
        ))
    }
}

/// The beacon as the genesis defines it, parsed and checked: verifies signatures.
#[derive(Debug, Clone)]
pub struct Beacon {
    chain_id: String,
    sharing: Sharing,
}

fn unhex(field: &str, s: &str) -> Result<Vec<u8>, BeaconError> {
    hex::decode(s).map_err(|_| BeaconError::NotHex {
        field: field.into(),
    })
}

fn g2(field: &str, s: &str) -> Result<<MinSig as Variant>::Public, BeaconError> {
    <MinSig as Variant>::Public::decode(unhex(field, s)?).map_err(|e| BeaconError::Malformed {
        field: field.into(),
        reason: e.to_string(),
    })
}

impl Beacon {
    /// Parses and checks the genesis' beacon keys (see [`BeaconConfig`]).
    pub fn new(chain_id: &str, cfg: &BeaconConfig) -> Result<Self, BeaconError> {
        if cfg.threshold == 0 {
            return Err(BeaconError::ZeroThreshold);
        }
        if cfg.threshold as usize > cfg.public_shares.len() {
            return Err(BeaconError::ThresholdAboveValidators {
                threshold: cfg.threshold,
                validators: cfg.public_shares.len(),
            });
        }
        let group_key = g2("group key", &cfg.group_key)?;
        let shares = cfg
            .public_shares
            .iter()
            .enumerate()
            .map(|(i, s)| g2(&format!("public share {i}"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let max = NonZeroU32::new(MAX_VALIDATORS).ok_or(BeaconError::ZeroThreshold)?;
        let sharing = Sharing::decode_cfg(
            unhex("commitment", &cfg.commitment)?,
            &(max, ModeVersion::v0()),
        )
        .map_err(|e| BeaconError::Malformed {
            field: "commitment".into(),
            reason: e.to_string(),
        })?;
        if sharing.total().get() as usize != shares.len() {
            return Err(BeaconError::ShareCountMismatch {
                listed: shares.len(),
                committed: sharing.total().get(),
            });
        }
        if sharing.required() != cfg.threshold {
            return Err(BeaconError::ThresholdMismatch {
                listed: cfg.threshold,
                committed: sharing.required(),
            });
        }
        if *sharing.public() != group_key {
            return Err(BeaconError::GroupKeyMismatch);
        }
        for (i, share) in shares.iter().enumerate() {
            let index = i as u32;
            let committed = sharing
                .partial_public(Participant::new(index))
                .map_err(|_| BeaconError::PublicShareMismatch { index })?;
            if committed != *share {
                return Err(BeaconError::PublicShareMismatch { index });
            }
        }
        Ok(Beacon {
            chain_id: chain_id.into(),
            sharing,
        })
    }

    pub fn threshold(&self) -> u32 {
        self.sharing.required()
    }
    pub fn validators(&self) -> u32 {
        self.sharing.total().get()
    }
    /// The public polynomial (for a consensus engine's threshold scheme).
    pub fn sharing(&self) -> &Sharing {
        &self.sharing
    }

    /// Checks `σ_h` for `height` against the group key.
    pub fn verify(&self, height: u64, sig: &BeaconSig) -> Result<(), BeaconError> {
        let point = sig.point(height)?;
        ops::verify_message::<MinSig>(
            self.sharing.public(),
            NAMESPACE,
            &message(&self.chain_id, height),
            &point,
        )
        .map_err(|_| BeaconError::BadSignature { height })
    }

    /// Checks one validator's partial signature for `height` against its public share.
    pub fn verify_partial(&self, height: u64, partial: &PartialSig) -> Result<(), BeaconError> {
        threshold::verify_message::<MinSig>(
            &self.sharing,
            NAMESPACE,
            &message(&self.chain_id, height),
            &partial.0,
        )
        .map_err(|_| BeaconError::BadPartial {
            height,
            index: partial.index(),
        })
    }

    /// Checks that `share` is the secret behind public share `share.index()`.
    pub fn check_share(&self, share: &SecretShare) -> Result<(), BeaconError> {
        let index = share.index();
        let public = self.sharing.partial_public(share.0.index).map_err(|_| {
            BeaconError::ShareIndexOutOfRange {
                index,
                validators: self.validators(),
            }
        })?;
        if share.0.public::<MinSig>() != public {
            return Err(BeaconError::SecretShareMismatch { index });
        }
        Ok(())
    }

    /// `σ_h` from `threshold` valid partials (each is verified; the result too).
    pub fn recover(&self, height: u64, partials: &[PartialSig]) -> Result<BeaconSig, BeaconError> {
        for p in partials {
            self.verify_partial(height, p)?;
        }
        let sig = threshold::recover::<MinSig, _>(
            &self.sharing,
            partials.iter().map(|p| &p.0),
            &Sequential,
        )
        .map_err(|_| BeaconError::NotEnoughPartials {
            threshold: self.threshold(),
            got: partials.len(),
        })?;
        let sig = BeaconSig::of(&sig)?;
        self.verify(height, &sig)?;
        Ok(sig)
    }

    /// `σ_h` signed by one validator alone: only for a 1-of-1 group (the embedded devnet
    /// ledger); a larger group gathers partials from its peers and calls [`Beacon::recover`].
    pub fn sign_alone(&self, share: &SecretShare, height: u64) -> Result<BeaconSig, BeaconError> {
        self.recover(height, &[share.sign(&self.chain_id, height)])
    }
}

/// A trusted dealer (devnets and tests only, see the module docs): a fresh `t`-of-`n` group
/// with `t` the BFT quorum of `n` (`n - ⌊(n-1)/3⌋`; 1-of-1 for one validator). Returns the
/// public config for the genesis and one secret share per validator, in participant order.
pub fn deal(
    rng: impl rand_core::CryptoRng,
    validators: u32,
) -> Result<(BeaconConfig, Vec<SecretShare>), BeaconError> {
    let players: Set<u32> = Set::from_iter_dedup(0..validators);
    let (output, shares) = commonware_deal::<MinSig, u32, N3f1>(rng, Mode::NonZeroCounter, players)
        .map_err(|e| BeaconError::Deal(e.to_string()))?;
    let sharing = output.public().clone();
    let public_shares = (0..validators)
        .map(|i| {
            sharing
                .partial_public(Participant::new(i))
                .map(|p| hex::encode(p.encode()))
                .map_err(|e| BeaconError::Deal(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = BeaconConfig {
        group_key: hex::encode(sharing.public().encode()),
        threshold: sharing.required(),
        public_shares,
        commitment: hex::encode(sharing.encode()),
    };
    Ok((
        cfg,
        shares.values().iter().cloned().map(SecretShare).collect(),
    ))
}

/// [`deal`] with its randomness from `seed` (ChaCha20): the caller supplies 32 bytes from the
/// OS (`sortition devnet`) or a fixed seed (tests).
pub fn deal_from_seed(
    seed: [u8; 32],
    validators: u32,
) -> Result<(BeaconConfig, Vec<SecretShare>), BeaconError> {
    use rand_core::SeedableRng;
    deal(rand_chacha::ChaCha20Rng::from_seed(seed), validators)
}

/// A 1-of-1 group whose secret share is published right here: **its randomness is predictable
/// by anyone**. [`crate::Genesis::devnet`] names it so that tests can start a ledger without
/// dealing keys; the ledger service signs with [`insecure_test_share`] only for a devnet
/// genesis naming this group and only when its data directory holds no share. Anything that
/// faces real nodes deals a fresh group instead (`sortition devnet` does).
pub fn insecure_test_group() -> (BeaconConfig, &'static str) {
    (
        BeaconConfig {
            group_key: INSECURE_TEST_GROUP_KEY.into(),
            threshold: 1,
            public_shares: vec![INSECURE_TEST_GROUP_KEY.into()],
            commitment: INSECURE_TEST_COMMITMENT.into(),
        },
        INSECURE_TEST_SECRET,
    )
}

/// The secret share of [`insecure_test_group`].
pub fn insecure_test_share() -> Result<SecretShare, BeaconError> {
    SecretShare::from_hex(INSECURE_TEST_SECRET)
}

const INSECURE_TEST_GROUP_KEY: &str = "92660490bad173926aadcd823dd4af37c9fdea0928bb687f33a1581741fa07e585c5a25fd8a12ba53b319ceba9bf98e20c79e335f1f3b26cc7ecc4354508d95a6c640344fa408c9491ac166c30094bd0f9ac1670a71dcc2839e440955f4c49db";
const INSECURE_TEST_COMMITMENT: &str = "00000000010192660490bad173926aadcd823dd4af37c9fdea0928bb687f33a1581741fa07e585c5a25fd8a12ba53b319ceba9bf98e20c79e335f1f3b26cc7ecc4354508d95a6c640344fa408c9491ac166c30094bd0f9ac1670a71dcc2839e440955f4c49db";
const INSECURE_TEST_SECRET: &str =
    "001dc4805f8bbefeaa44ef1212984cfc6bacad125fa9e645e80f5bfdee8a4df2da";

/// A 64-bit draw bound to a purpose, an object and an index.
pub fn draw(seed: &Hash32, purpose: &str, object: u64, index: u64) -> u64 {
    let h = sha256_parts(&[
        &seed.0,
        purpose.as_bytes(),
        &object.to_le_bytes(),
        &index.to_le_bytes(),
    ]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.0[..8]);
    u64::from_le_bytes(b)
}

/// Uniform in `0..n` (n > 0) with negligible bias (64-bit draw, 128-bit multiply-shift).
pub fn below(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Picks up to `k` distinct items from `pool` (in its order) by a partial Fisher–Yates shuffle.
pub fn choose<T: Copy>(pool: &[T], k: usize, seed: &Hash32, purpose: &str, object: u64) -> Vec<T> {
    let mut pool = pool.to_vec();
    let take = k.min(pool.len());
    for i in 0..take {
        let span = (pool.len() - i) as u64;
        let j = i + below(draw(seed, purpose, object, i as u64), span) as usize;
        pool.swap(i, j);
    }
    pool.truncate(take);
    pool
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn rng(seed: u8) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::from_seed([seed; 32])
    }

    #[test]
    fn choose_is_distinct_and_deterministic() {
        let seed = sha256(b"seed");
        let pool: Vec<u64> = (0..10).collect();
        let a = choose(&pool, 4, &seed, "t", 7);
        assert_eq!(a, choose(&pool, 4, &seed, "t", 7));
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 4);
        assert_eq!(choose(&pool, 40, &seed, "t", 7).len(), 10);
        assert!(choose::<u64>(&[], 3, &seed, "t", 7).is_empty());
    }

    #[test]
    fn insecure_test_group_is_consistent() {
        let (cfg, secret) = insecure_test_group();
        let b = Beacon::new("c", &cfg).unwrap();
        let share = insecure_test_share().unwrap();
        assert_eq!(share.to_hex(), secret);
        b.check_share(&share).unwrap();
        b.verify(1, &b.sign_alone(&share, 1).unwrap()).unwrap();
    }

    #[test]
    fn one_of_one_signs_and_verifies() {
        let (cfg, shares) = deal(rng(1), 1).unwrap();
        let b = Beacon::new("c", &cfg).unwrap();
        assert_eq!((b.threshold(), b.validators()), (1, 1));
        b.check_share(&shares[0]).unwrap();
        let s5 = b.sign_alone(&shares[0], 5).unwrap();
        b.verify(5, &s5).unwrap();
        assert_eq!(s5, b.sign_alone(&shares[0], 5).unwrap(), "unique");
        assert!(b.verify(6, &s5).is_err());
        let other = Beacon::new("other-chain", &cfg).unwrap();
        assert!(other.verify(5, &s5).is_err(), "bound to the chain id");
        let back = SecretShare::from_hex(&shares[0].to_hex()).unwrap();
        assert_eq!(back, shares[0]);
    }

    #[test]
    fn three_of_four_needs_three_partials() {
        let (cfg, shares) = deal(rng(2), 4).unwrap();
        let b = Beacon::new("c", &cfg).unwrap();
        assert_eq!((b.threshold(), b.validators()), (3, 4));
        let p: Vec<PartialSig> = shares.iter().map(|s| s.sign("c", 9)).collect();
        let a = b.recover(9, &p[..3]).unwrap();
        let c = b.recover(9, &p[1..]).unwrap();
        assert_eq!(a, c, "every quorum recovers the same σ");
        assert!(matches!(
            b.recover(9, &p[..2]),
            Err(BeaconError::NotEnoughPartials { .. })
        ));
        assert!(b.sign_alone(&shares[0], 9).is_err());
        // A partial for another height is refused.
        let wrong = shares[3].sign("c", 10);
        assert!(b.recover(9, &[p[0].clone(), p[1].clone(), wrong]).is_err());
    }
}
