//! The beacon: unpredictable from public data, checked by every replica, used only after what
//! it selects for was fixed.

use sortition_ledger::beacon::{self, BeaconConfig, below, draw};
use sortition_ledger::*;
use sortition_types::hash::sha256_parts;
use sortition_types::{ClaimId, Hash32, sha256};

use crate::harness::*;

const PPM: u64 = 1_000_000;
const Q: u32 = 125_000;
const RECEIPTS: u64 = 64;

/// Buys a stack from node 0 and claims `RECEIPTS` receipts; returns (claim, inclusion height).
fn claim(c: &mut Chain) -> (ClaimId, u64) {
    let stack = buy_from_node0(c);
    let n0 = c.node_id(0);
    let rs = Receipts::new(n0, stack, &c.nodes[0].clone(), RECEIPTS);
    let t = c.sign(
        &c.nodes[0].clone(),
        TxKind::ClaimStack {
            stack,
            units_used: units(RECEIPTS),
            receipts_root: rs.root(),
            receipt_count: RECEIPTS,
        },
    );
    let out = c.seal(&[t]);
    let ev = out.results[0].clone().expect("claimed");
    let claim = ev
        .iter()
        .find_map(|e| match e {
            Event::ClaimCommitted { claim, .. } => Some(*claim),
            _ => None,
        })
        .expect("claim");
    (claim, c.ledger.height())
}

fn sampled(c: &Chain, claim: ClaimId) -> Vec<u64> {
    let mut v: Vec<u64> = c
        .ledger
        .state()
        .audits
        .values()
        .filter(|a| a.claim == Some(claim))
        .map(|a| a.receipt_index)
        .collect();
    v.sort_unstable();
    v
}

fn sample_with(r: &Hash32, claim: ClaimId) -> Vec<u64> {
    (0..RECEIPTS)
        .filter(|i| below(draw(r, "sample", claim.0, *i), PPM) < u64::from(Q))
        .collect()
}

/// The old devnet beacon, as an outsider computes it from the genesis alone.
fn old_hash_chain(seed: Hash32, height: u64) -> Hash32 {
    (1..=height).fold(seed, |r, h| {
        sha256_parts(&[b"sortition/beacon", &r.0, &h.to_le_bytes()])
    })
}

/// The attack of issue 19: from the genesis JSON and claim ids alone, predict which receipts
/// get audited. The old hash chain (seeded by the chain id, or by anything in the genesis) no
/// longer predicts better than chance, and an attacker's own key cannot make a valid σ.
#[test]
fn audit_sample_is_not_predictable_from_public_data() {
    let mut c = Chain::new(2, Q);
    let public = serde_json::to_string(&c.genesis).expect("json");
    assert!(!public.contains("randomness_seed"));
    let seeds = [sha256(CHAIN.as_bytes()), c.genesis.hash()];
    let (mut hits, mut actual_total, mut predicted_total) = (0usize, 0usize, 0usize);
    for _ in 0..3 {
        let (claim, h) = claim(&mut c);
        c.seal(&[]);
        let actual = sampled(&c, claim);
        assert_eq!(
            actual,
            sample_with(&c.ledger.state().randomness, claim),
            "drawn with the next block's beacon"
        );
        for seed in seeds {
            // The predictor's best guess: the chain value at the inclusion height, or the next.
            for height in [h, h + 1] {
                let guess = sample_with(&old_hash_chain(seed, height), claim);
                hits += guess.iter().filter(|i| actual.contains(i)).count();
                predicted_total += guess.len();
            }
        }
        actual_total += actual.len();
    }
    assert!(
        actual_total > 10,
        "enough sampled receipts to judge: {actual_total}"
    );
    // By chance a guessed index is sampled with probability q = 1/8: about predicted/8 hits;
    // a working predictor would hit every sampled receipt (four guesses per claim).
    let chance = predicted_total as f64 * f64::from(Q) / PPM as f64;
    assert!(
        (hits as f64) < chance * 2.0 + 4.0 && hits < actual_total,
        "predictor hit {hits} (chance ≈ {chance:.1}, sampled {actual_total})"
    );
    // Without the secret share there is no valid σ: one made with the attacker's own key for
    // the next height does not verify against the group key in the genesis.
    let (_, mut mine) = beacon::deal_from_seed([99; 32], 1).expect("deal");
    let forged = mine.remove(0).sign(CHAIN, c.ledger.height() + 1);
    let theirs = beacon::Beacon::new(CHAIN, &c.genesis.beacon).expect("beacon");
    assert!(theirs.recover(c.ledger.height() + 1, &[forged]).is_err());
}

/// A block whose σ is forged, or made for another height or another chain, is refused by
/// `apply_block`, and nothing changes. (Its randomness is sha256(σ) by construction: there is no
/// field a proposer could set.)
#[test]
fn forged_or_mismatched_beacon_is_refused() {
    let mut c = Chain::new(1, Q);
    let root = c.ledger.state_root();
    let h = c.ledger.height() + 1;
    let t = c.now() + 1_000;
    let good = c.next_context(t);
    // Another group's signature of the right message.
    let (_, mut other) = beacon::deal_from_seed([5; 32], 1).expect("deal");
    let (ocfg, _) = beacon::deal_from_seed([5; 32], 1).expect("deal");
    let other_sig = beacon::Beacon::new(CHAIN, &ocfg)
        .expect("beacon")
        .sign_alone(&other.remove(0), h)
        .expect("sign");
    // Our group's signature of another height and of another chain.
    let next = beacon::Beacon::new(CHAIN, &c.genesis.beacon).expect("beacon");
    let wrong_height = next.sign_alone(&c.share, h + 1).expect("sign");
    let other_chain = beacon::Beacon::new("other", &c.genesis.beacon)
        .expect("beacon")
        .sign_alone(&c.share, h)
        .expect("sign");
    for sig in [other_sig, wrong_height, other_chain] {
        let ctx = BlockContext::new(h, t, sig);
        assert!(matches!(
            c.ledger.apply_block(ctx, &[]),
            Err(BlockError::Beacon(BeaconError::BadSignature { .. }))
        ));
    }
    // Not a curve point at all.
    let garbage = BlockContext::new(h, t, BeaconSig([0xab; 48]));
    assert!(matches!(
        c.ledger.apply_block(garbage, &[]),
        Err(BlockError::Beacon(_))
    ));
    assert_eq!(c.ledger.state_root(), root, "nothing applied");
    assert_eq!(c.ledger.height(), h - 1);
    c.ledger
        .apply_block(good, &[])
        .expect("the real one applies");
}

/// Replaying the stored blocks (contexts with σ, transactions) on a fresh ledger from the same
/// genesis verifies every σ again and gives the same state root at every height.
#[test]
fn replay_verifies_beacons_and_gives_the_same_roots() {
    let mut c = Chain::new(2, Q);
    let mut log: Vec<(BlockContext, Vec<SignedTx>, Hash32)> = vec![];
    let stack = buy_from_node0(&mut c);
    let n0 = c.node_id(0);
    let rs = Receipts::new(n0, stack, &c.nodes[0].clone(), RECEIPTS);
    let claim = c.sign(
        &c.nodes[0].clone(),
        TxKind::ClaimStack {
            stack,
            units_used: units(RECEIPTS),
            receipts_root: rs.root(),
            receipt_count: RECEIPTS,
        },
    );
    // Drive five more blocks by hand, recording them.
    let start = c.ledger.clone();
    let mut txs = vec![claim];
    for _ in 0..5 {
        let ctx = c.next_context(c.now() + 1_000);
        let out = c.ledger.apply_block(ctx, &txs).expect("block");
        log.push((ctx, std::mem::take(&mut txs), out.state_root));
    }
    let mut replica = start;
    for (ctx, txs, root) in &log {
        let out = replica.apply_block(*ctx, txs).expect("replays");
        assert_eq!(out.state_root, *root);
    }
    assert_eq!(replica.state_root(), c.ledger.state_root());
    // A stored block whose σ was swapped for another height's is refused on replay.
    let mut tampered = log[1].0;
    tampered.beacon = log[2].0.beacon;
    let mut r2 = Ledger::new(&c.genesis).expect("genesis");
    assert!(matches!(
        r2.apply_block(tampered, &[]),
        Err(BlockError::Beacon(_)) | Err(BlockError::WrongHeight { .. })
    ));
}

/// A claim included at h is sampled at the end of h + 1, with h + 1's beacon: nothing is drawn
/// in its own block, and the sample is the one h + 1's randomness gives (not h's).
#[test]
fn claim_sample_depends_on_a_later_block() {
    let mut c = Chain::new(2, Q);
    let (claim, h) = claim(&mut c);
    let r_h = c.ledger.state().randomness;
    {
        let st = c.ledger.state();
        assert!(!st.claims[&claim].sampled);
        assert!(sampled(&c, claim).is_empty(), "nothing drawn at inclusion");
        assert_eq!(st.pending_draws.len(), 1);
        assert_eq!(st.pending_draws[0].fixed_height, h);
    }
    let out = c.seal(&[]);
    let st = c.ledger.state();
    assert!(st.claims[&claim].sampled);
    assert!(st.pending_draws.is_empty());
    let r_next = st.randomness;
    assert_ne!(r_h, r_next);
    let got = sampled(&c, claim);
    assert_eq!(got, sample_with(&r_next, claim));
    assert_ne!(
        got,
        sample_with(&r_h, claim),
        "not the inclusion block's value"
    );
    assert!(
        st.audits
            .values()
            .filter(|a| a.claim == Some(claim))
            .all(|a| a.opened_height == h + 1)
    );
    assert_eq!(
        out.end_block_events
            .iter()
            .filter(|e| matches!(e, Event::AuditOpened { .. }))
            .count(),
        got.len()
    );
}

/// A bridge block (no beacon: consensus finalized it through a child before its parent was
/// final) draws nothing and leaves the ledger's randomness as it was; a claim included before it
/// is sampled at the next block that carries a beacon, with that block's value.
#[test]
fn bridge_blocks_defer_draws_to_the_next_beacon() {
    let mut c = Chain::new(2, Q);
    let (claim, h) = claim(&mut c);
    let r_h = c.ledger.state().randomness;
    let bridge = BlockContext::bridge(h + 1, c.now() + 1_000);
    let out = c
        .ledger
        .apply_block(bridge, &[])
        .expect("a bridge block applies");
    assert!(
        !out.end_block_events
            .iter()
            .any(|e| matches!(e, Event::AuditOpened { .. })),
        "nothing drawn in a bridge block"
    );
    {
        let st = c.ledger.state();
        assert_eq!(st.height, h + 1);
        assert!(!st.claims[&claim].sampled);
        assert_eq!(st.pending_draws.len(), 1);
        assert_eq!(st.randomness, r_h, "a bridge block brings no randomness");
    }
    c.seal(&[]);
    let st = c.ledger.state();
    assert!(st.claims[&claim].sampled);
    assert!(st.pending_draws.is_empty());
    let r = st.randomness;
    assert_ne!(r, r_h);
    let got = sampled(&c, claim);
    assert_eq!(got, sample_with(&r, claim));
    assert!(
        st.audits
            .values()
            .filter(|a| a.claim == Some(claim))
            .all(|a| a.opened_height == h + 2)
    );
    // A bridge block is still checked for everything else: the height must follow.
    let mut again = c.ledger.clone();
    assert!(matches!(
        again.apply_block(BlockContext::bridge(h + 5, c.now() + 1_000), &[]),
        Err(BlockError::WrongHeight { .. })
    ));
}

/// Inconsistent beacon keys in a genesis are refused at start, saying what is wrong.
#[test]
fn genesis_with_inconsistent_beacon_keys_is_refused() {
    let (good, _) = test_group(4);
    let (other, _) = beacon::deal_from_seed([3; 32], 4).expect("deal");
    let refuse = |cfg: BeaconConfig| {
        let mut g = Genesis::devnet(CHAIN, key("admin", 0).public());
        g.beacon = cfg;
        match Ledger::new(&g) {
            Err(LedgerError::BadBeaconKeys(e)) => e,
            other => panic!("accepted or wrong error: {other:?}"),
        }
    };
    assert!(
        Ledger::new(&{
            let mut g = Genesis::devnet(CHAIN, key("admin", 0).public());
            g.beacon = good.clone();
            g
        })
        .is_ok()
    );
    let e = refuse(BeaconConfig {
        threshold: 5,
        ..good.clone()
    });
    assert!(matches!(
        e,
        BeaconError::ThresholdAboveValidators {
            threshold: 5,
            validators: 4
        }
    ));
    assert!(e.to_string().contains("exceeds"), "{e}");
    assert_eq!(
        refuse(BeaconConfig {
            threshold: 0,
            ..good.clone()
        }),
        BeaconError::ZeroThreshold
    );
    assert_eq!(
        refuse(BeaconConfig {
            threshold: 2,
            ..good.clone()
        }),
        BeaconError::ThresholdMismatch {
            listed: 2,
            committed: 3
        }
    );
    assert!(matches!(
        refuse(BeaconConfig {
            group_key: "zz".into(),
            ..good.clone()
        }),
        BeaconError::NotHex { .. }
    ));
    assert!(matches!(
        refuse(BeaconConfig {
            group_key: "00".repeat(96),
            ..good.clone()
        }),
        BeaconError::Malformed { .. }
    ));
    let mut extra = good.clone();
    extra.public_shares.push(good.public_shares[0].clone());
    assert_eq!(
        refuse(extra),
        BeaconError::ShareCountMismatch {
            listed: 5,
            committed: 4
        }
    );
    assert_eq!(
        refuse(BeaconConfig {
            group_key: other.group_key.clone(),
            ..good.clone()
        }),
        BeaconError::GroupKeyMismatch
    );
    let mut swapped = good.clone();
    swapped.public_shares[2] = other.public_shares[2].clone();
    assert_eq!(
        refuse(swapped),
        BeaconError::PublicShareMismatch { index: 2 }
    );
    let mut bad_commitment = good.clone();
    bad_commitment.commitment = "00".into();
    assert!(matches!(
        refuse(bad_commitment),
        BeaconError::Malformed { .. }
    ));
}
