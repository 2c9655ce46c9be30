//! Validator equivocation evidence: two conflicting consensus votes one validator signed for a
//! view are checked against the genesis' validator set and recorded once; anything else is
//! refused, saying why, and changes nothing.

use commonware_codec::Encode as _;
use commonware_consensus::simplex::scheme::ed25519::Scheme;
use commonware_consensus::simplex::types::{
    Activity, ConflictingFinalize, ConflictingNotarize, Finalize, Notarize, Proposal,
};
use commonware_consensus::types::{Epoch, Round, View};
use commonware_cryptography::sha256::Digest;
use commonware_cryptography::{Hasher as _, Sha256, Signer as _, ed25519};
use commonware_utils::ordered::Set;
use sortition_ledger::validator_faults::{CONSENSUS_NAMESPACE, ValidatorFaultKind};
use sortition_ledger::{Event, Ledger, LedgerError, TxKind};

use crate::harness::*;

const Q: u32 = 125_000;

/// Four validator keys, in participant order, and their hex as a genesis lists them.
fn validators(seed: u64) -> (Vec<ed25519::PrivateKey>, Vec<String>) {
    let mut keys: Vec<ed25519::PrivateKey> = (0..4)
        .map(|i| ed25519::PrivateKey::from_seed(seed * 10 + i))
        .collect();
    keys.sort_by_key(|k| k.public_key());
    let hex = keys
        .iter()
        .map(|k| hex::encode(k.public_key().encode()))
        .collect();
    (keys, hex)
}

fn scheme(keys: &[ed25519::PrivateKey], signer: usize) -> Scheme {
    let set = Set::try_from(keys.iter().map(|k| k.public_key()).collect::<Vec<_>>()).expect("set");
    Scheme::signer(CONSENSUS_NAMESPACE, set, keys[signer].clone()).expect("participant")
}

fn proposal(view: u64, what: &[u8]) -> Proposal<Digest> {
    Proposal::new(
        Round::new(Epoch::zero(), View::new(view)),
        View::new(view - 1),
        Sha256::hash(&[what]),
    )
}

fn conflicting_notarize(s: &Scheme, view: u64) -> Vec<u8> {
    let a = Notarize::sign(s, proposal(view, b"block a")).expect("sign");
    let b = Notarize::sign(s, proposal(view, b"block b")).expect("sign");
    Activity::ConflictingNotarize(ConflictingNotarize::new(a, b))
        .encode()
        .to_vec()
}

/// A chain whose genesis names `hex` as its validators.
fn chain_with(hex: Vec<String>) -> Chain {
    let mut c = Chain::new(1, Q);
    c.genesis.validators = hex;
    c.ledger = Ledger::new(&c.genesis).expect("genesis");
    c
}

#[test]
fn conflicting_votes_are_recorded_once_against_the_right_validator() {
    let (keys, hex) = validators(1);
    let mut c = chain_with(hex.clone());
    let reporter = key("reporter", 0);
    let s = scheme(&keys, 2);
    let evidence = conflicting_notarize(&s, 7);
    let tx = c.sign(
        &reporter,
        TxKind::ReportValidatorFault {
            evidence: evidence.clone(),
        },
    );
    let out = c.seal(&[tx]);
    let events = out.results[0].as_ref().expect("recorded");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::ValidatorFaultRecorded { validator, view: 7, kind: ValidatorFaultKind::ConflictingNotarize }
            if *validator == hex[2]
    )));
    let faults = &c.ledger.state().validator_faults;
    assert_eq!(faults.len(), 1);
    let f = faults.values().next().expect("one");
    assert_eq!((f.validator.as_str(), f.view), (hex[2].as_str(), 7));
    assert_eq!(f.reporter, reporter.public());
    assert_eq!(f.evidence_hash, sortition_types::sha256(&evidence));

    // The same view again (another pair, another reporter): already recorded.
    let other = key("reporter", 1);
    let again = c.sign(
        &other,
        TxKind::ReportValidatorFault {
            evidence: conflicting_notarize(&s, 7),
        },
    );
    let out = c.seal(&[again]);
    assert!(
        matches!(
            out.results[0],
            Err(LedgerError::ValidatorFaultReported { view: 7, .. })
        ),
        "{:?}",
        out.results[0]
    );
    // Conflicting finalizes in another view: a second record.
    let a = Finalize::sign(&s, proposal(9, b"x")).expect("sign");
    let b = Finalize::sign(&s, proposal(9, b"y")).expect("sign");
    let fin = Activity::ConflictingFinalize(ConflictingFinalize::new(a, b))
        .encode()
        .to_vec();
    let tx = c.sign(&other, TxKind::ReportValidatorFault { evidence: fin });
    let out = c.seal(&[tx]);
    assert!(out.results[0].is_ok(), "{:?}", out.results[0]);
    assert_eq!(c.ledger.state().validator_faults.len(), 2);
}

#[test]
fn what_is_not_proof_of_a_fault_is_refused_and_changes_nothing() {
    let (keys, hex) = validators(2);
    let mut c = chain_with(hex);
    let reporter = key("reporter", 0);
    let s = scheme(&keys, 1);
    let good = conflicting_notarize(&s, 4);
    let single = Activity::Notarize(Notarize::sign(&s, proposal(4, b"a")).expect("sign"))
        .encode()
        .to_vec();
    // A signature byte flipped (the last bytes are the second vote's signature).
    let mut forged = good.clone();
    let n = forged.len();
    forged[n - 5] ^= 1;
    // The same pair signed by a validator of another genesis.
    let (foreign, _) = validators(3);
    let stranger = conflicting_notarize(&scheme(&foreign, 1), 4);
    for (what, evidence) in [
        ("garbage", vec![1, 2, 3]),
        ("a single vote", single),
        ("a forged signature", forged),
        ("another validator set's votes", stranger),
        ("too large", vec![0; 20_000]),
    ] {
        let root = c.ledger.state_root();
        let tx = c.sign(&reporter, TxKind::ReportValidatorFault { evidence });
        let out = c.seal(&[tx]);
        assert!(
            matches!(out.results[0], Err(LedgerError::NotAValidatorFault(_))),
            "{what}: {:?}",
            out.results[0]
        );
        assert!(c.ledger.state().validator_faults.is_empty(), "{what}");
        assert_ne!(
            c.ledger.state_root(),
            root,
            "the block itself still applied"
        );
    }
    // A chain run by a single sequencer has no validators to hold to account.
    let mut plain = Chain::new(1, Q);
    let tx = plain.sign(&reporter, TxKind::ReportValidatorFault { evidence: good });
    let out = plain.seal(&[tx]);
    assert!(matches!(
        out.results[0],
        Err(LedgerError::NotAValidatorFault(_))
    ));
}
