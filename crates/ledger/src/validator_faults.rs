//! Faults of the validators themselves, recorded on the ledger they run.
//!
//! Consensus votes are signed with each validator's own ed25519 key (simplex's attributable
//! scheme), so two votes one validator signed for the same view that cannot both be honest —
//! notarizes of two different blocks, finalizes of two different blocks, or a nullify and a
//! finalize — prove that it equivocated, to anyone holding the genesis. Consensus reports such
//! pairs as they are seen; a validator then submits the pair, encoded as simplex's `Activity`,
//! in [`crate::TxKind::ReportValidatorFault`], and every replica checks it here against the
//! validator set the genesis names before recording it: decoded, one of the three conflicting
//! kinds, both signatures valid, one record per validator and view (whoever reports first).
//!
//! Validators hold no stake on this ledger (the genesis fixes the set), so nothing is slashed:
//! the record is public evidence (`GET /v1/validator-faults`) for whoever chooses the next
//! validator set. Staked validators with slashing are production work (see the validator crate).

use commonware_codec::{Decode as _, DecodeExt as _};
use commonware_consensus::Viewable as _;
use commonware_consensus::simplex::scheme::ed25519::Scheme;
use commonware_consensus::simplex::types::{Activity, Attributable as _};
use commonware_cryptography::ed25519;
use commonware_cryptography::sha256::Digest;
use commonware_parallel::Sequential;
use commonware_utils::ordered::Set;
use rand_core::SeedableRng as _;

use sortition_types::{PublicKey, sha256};

use crate::error::LedgerError;
use crate::event::Event;
use crate::state::State;
use crate::{BlockContext, TxResult};

/// The namespace consensus signs its votes under (the validators' engine uses the same).
pub const CONSENSUS_NAMESPACE: &[u8] = b"sortition/consensus";

/// Most bytes of evidence a report may carry (two votes are a few hundred).
pub const MAX_EVIDENCE_BYTES: usize = 16 * 1024;

pub use crate::state::{ValidatorFault, ValidatorFaultKind};

/// The genesis' validators, ready to check their signatures.
#[derive(Clone)]
pub struct ValidatorSet {
    keys: Vec<String>,
    verifier: Option<Scheme>,
}

impl std::fmt::Debug for ValidatorSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatorSet")
            .field("keys", &self.keys)
            .finish()
    }
}

impl ValidatorSet {
    /// The set the genesis names (hex ed25519 keys, ascending); empty for a single sequencer.
    pub fn new(keys: &[String]) -> Result<Self, String> {
        if keys.is_empty() {
            return Ok(ValidatorSet {
                keys: vec![],
                verifier: None,
            });
        }
        let parsed: Vec<ed25519::PublicKey> = keys
            .iter()
            .map(|k| {
                let bytes =
                    hex::decode(k).map_err(|e| format!("validator key {k:?} is not hex: {e}"))?;
                ed25519::PublicKey::decode(bytes::Bytes::from(bytes))
                    .map_err(|e| format!("validator key {k:?} is not an ed25519 key: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let set = Set::try_from(parsed.clone()).map_err(|_| "validator keys repeat".to_string())?;
        if set.iter().cloned().collect::<Vec<_>>() != parsed {
            return Err("validators are not in ascending order of key".into());
        }
        Ok(ValidatorSet {
            keys: keys.to_vec(),
            verifier: Some(Scheme::verifier(CONSENSUS_NAMESPACE, set)),
        })
    }
}

fn refused(why: impl Into<String>) -> TxResult {
    Err(LedgerError::NotAValidatorFault(why.into()))
}

pub(crate) fn report(
    st: &mut State,
    set: &ValidatorSet,
    ctx: &BlockContext,
    reporter: &PublicKey,
    evidence: &[u8],
) -> TxResult {
    let Some(verifier) = &set.verifier else {
        return refused("this chain has no validators (a single sequencer runs its ledger)");
    };
    if evidence.len() > MAX_EVIDENCE_BYTES {
        return refused(format!(
            "evidence of {} bytes (at most {MAX_EVIDENCE_BYTES})",
            evidence.len()
        ));
    }
    let activity = match Activity::<Scheme, Digest>::decode_cfg(
        bytes::Bytes::copy_from_slice(evidence),
        &set.keys.len(),
    ) {
        Ok(a) => a,
        Err(e) => return refused(format!("evidence does not decode: {e}")),
    };
    let (kind, signer) = match &activity {
        Activity::ConflictingNotarize(e) => (ValidatorFaultKind::ConflictingNotarize, e.signer()),
        Activity::ConflictingFinalize(e) => (ValidatorFaultKind::ConflictingFinalize, e.signer()),
        Activity::NullifyFinalize(e) => (ValidatorFaultKind::NullifyFinalize, e.signer()),
        _ => return refused("a single vote or a certificate, not two conflicting votes"),
    };
    let Some(validator) = set.keys.get(usize::from(signer)).cloned() else {
        return refused("the signer is not a validator of the genesis");
    };
    // Single ed25519 signatures: the random source only matters to batch verification, which
    // is not used for two votes; seeded from the evidence, so every replica runs the same.
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(sha256(evidence).0);
    if !activity.verify(&mut rng, verifier, &Sequential) {
        return refused("a vote's signature does not verify against the genesis' validators");
    }
    let view = activity.view().get();
    if st.validator_faults.contains_key(&(validator.clone(), view)) {
        return Err(LedgerError::ValidatorFaultReported { validator, view });
    }
    st.validator_faults.insert(
        (validator.clone(), view),
        ValidatorFault {
            validator: validator.clone(),
            view,
            kind,
            evidence_hash: sha256(evidence),
            height: ctx.height,
            reporter: *reporter,
        },
    );
    Ok(vec![Event::ValidatorFaultRecorded {
        validator,
        view,
        kind,
    }])
}
