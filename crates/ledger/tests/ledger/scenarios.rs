//! Scenario tests: each reads as one story of the protocol.

use sortition_ledger::*;
use sortition_types::{
    Amount, AuditId, Custody, DisputeId, Keypair, NodeClass, NodeId, SignedReceipt, StackId,
};

use crate::harness::*;

/// User 0 buys 1000 units from node 0 and node 0 claims 20 of them with one receipt.
/// Returns (stack, audit, auditor node, receipts).
fn buy_and_claim(c: &mut Chain) -> (StackId, AuditId, Vec<NodeId>, Receipts) {
    buy_and_claim_kept_by(c, Custody::Gateway)
}

/// As [`buy_and_claim`], the request kept for audits by `custody`.
fn buy_and_claim_kept_by(
    c: &mut Chain,
    custody: Custody,
) -> (StackId, AuditId, Vec<NodeId>, Receipts) {
    let n0 = c.node_id(0);
    let stack = buy_from_node0(c);
    let rs = Receipts::with_custody(n0, stack, &c.nodes[0].clone(), 1, custody);
    let ev = c.ok(
        &c.nodes[0].clone(),
        TxKind::ClaimStack {
            stack,
            units_used: units(20),
            receipts_root: rs.root(),
            receipt_count: 1,
        },
    );
    let (audit, auditors) = ev
        .iter()
        .find_map(|e| match e {
            Event::AuditOpened {
                audit,
                auditors,
                receipt_index: 0,
                ..
            } => Some((*audit, auditors.clone())),
            _ => None,
        })
        .expect("q = 1 audits the receipt");
    assert!(!auditors.contains(&n0));
    (stack, audit, auditors, rs)
}

fn vote(c: &mut Chain, k: &Keypair, audit: AuditId, v: Verdict, s: u64) {
    let commitment = verdict_commitment(&v, &salt(s), &k.public());
    c.ok(k, TxKind::CommitVerdict { audit, commitment });
}

fn reveal(c: &mut Chain, k: &Keypair, audit: AuditId, v: Verdict, s: u64) -> Vec<Event> {
    c.ok(
        k,
        TxKind::RevealVerdict {
            audit,
            verdict: v,
            salt: salt(s),
        },
    )
}

#[test]
fn honest_claim_settles_and_auditor_is_paid() {
    let mut c = Chain::new(3, 1_000_000);
    let user = c.users[0].public();
    let before_user = c.balance(&user);
    let (stack, audit, auditors, rs) = buy_and_claim(&mut c);
    c.ok(&c.nodes[0].clone(), rs.submit(audit, 0));
    let ak = c.node_key(auditors[0]);
    let before_auditor = c.balance(&ak.public());
    vote(&mut c, &ak, audit, Verdict::Match, 1);
    reveal(&mut c, &ak, audit, Verdict::Match, 1);
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    let st = c.ledger.state();
    assert_eq!(st.audits[&audit].outcome, Some(AuditOutcome::Passed));
    // 20 units at 1_000_000 per million = 20; 1 % fee rounds down to 0.
    assert_eq!(c.balance(&user), Amount(before_user.0 - 20));
    assert_eq!(c.balance(&ak.public()), Amount(before_auditor.0 + 100));
    assert_eq!(st.stacks[&stack].escrow, Amount::ZERO);
}

#[test]
fn cheating_executor_is_caught_slashed_and_owner_refunded() {
    let mut c = Chain::new(6, 1_000_000);
    let user = c.users[0].public();
    let before_user = c.balance(&user);
    let (stack, audit, auditors, rs) = buy_and_claim(&mut c);
    c.ok(&c.nodes[0].clone(), rs.submit(audit, 0));
    let ak = c.node_key(auditors[0]);
    let before_auditor = c.balance(&ak.public());
    vote(&mut c, &ak, audit, mismatch(), 1);
    let ev = reveal(&mut c, &ak, audit, mismatch(), 1);
    let committee = ev.iter().find_map(|e| match e {
        Event::DisputeOpened { committee, .. } => Some(committee.clone()),
        _ => None,
    });
    let committee = committee.expect("mismatch opens a dispute");
    assert_eq!(committee.len(), 3);
    assert!(!committee.contains(&c.node_id(0)) && !committee.contains(&auditors[0]));
    let dispute = DisputeId(0);
    let commits = committee.iter().enumerate().map(|(i, m)| {
        let k = c.node_key(*m);
        let commitment = verdict_commitment(&mismatch(), &salt(10 + i as u64), &k.public());
        (
            k,
            TxKind::CommitVote {
                dispute,
                commitment,
            },
        )
    });
    let commits: Vec<_> = commits.collect();
    c.all_ok(commits);
    let reveals: Vec<_> = committee
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                c.node_key(*m),
                TxKind::RevealVote {
                    dispute,
                    verdict: mismatch(),
                    salt: salt(10 + i as u64),
                },
            )
        })
        .collect();
    let ev = c.all_ok(reveals);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::DisputeResolved {
            executor_at_fault: true,
            mismatch_votes: 3,
            ..
        }
    )));
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Refunded);
    let st = c.ledger.state();
    assert_eq!(st.nodes[&c.node_id(0)].collateral, Amount(COLLATERAL.0 / 2));
    assert_eq!(c.balance(&user), before_user, "owner refunded in full");
    // pot 500_000_000; half shared by 4 honest voters = 62_500_000 each
    assert_eq!(
        c.balance(&ak.public()),
        Amount(before_auditor.0 + 62_500_000)
    );
    assert_eq!(
        st.audits[&audit].outcome,
        Some(AuditOutcome::ExecutorAtFault)
    );
}

#[test]
fn lying_auditor_is_slashed_and_executor_paid() {
    let mut c = Chain::new(6, 1_000_000);
    let (stack, audit, auditors, rs) = buy_and_claim(&mut c);
    c.ok(&c.nodes[0].clone(), rs.submit(audit, 0));
    let ak = c.node_key(auditors[0]);
    vote(&mut c, &ak, audit, mismatch(), 1);
    let ev = reveal(&mut c, &ak, audit, mismatch(), 1);
    let Some(Event::DisputeOpened {
        dispute, committee, ..
    }) = ev
        .iter()
        .find(|e| matches!(e, Event::DisputeOpened { .. }))
        .cloned()
    else {
        panic!()
    };
    let commits: Vec<_> = committee
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let k = c.node_key(*m);
            let commitment = verdict_commitment(&Verdict::Match, &salt(i as u64), &k.public());
            (
                k,
                TxKind::CommitVote {
                    dispute,
                    commitment,
                },
            )
        })
        .collect();
    c.all_ok(commits);
    let reveals: Vec<_> = committee
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                c.node_key(*m),
                TxKind::RevealVote {
                    dispute,
                    verdict: Verdict::Match,
                    salt: salt(i as u64),
                },
            )
        })
        .collect();
    c.all_ok(reveals);
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    let st = c.ledger.state();
    assert_eq!(
        st.nodes[&auditors[0]].collateral,
        Amount(COLLATERAL.0 - 5_000)
    );
    assert_eq!(st.nodes[&c.node_id(0)].collateral, COLLATERAL);
    assert!(
        st.slashes
            .iter()
            .any(|s| s.node == auditors[0] && s.reason == SlashReason::WrongVerdict)
    );
}

#[test]
fn auditor_missing_deadline_is_slashed_small_and_claim_still_settles() {
    let mut c = Chain::new(3, 1_000_000);
    let (stack, audit, auditors, rs) = buy_and_claim(&mut c);
    c.ok(&c.nodes[0].clone(), rs.submit(audit, 0));
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    let st = c.ledger.state();
    assert_eq!(
        st.nodes[&auditors[0]].collateral,
        Amount(COLLATERAL.0 - 1_000)
    );
    assert_eq!(st.audits[&audit].outcome, Some(AuditOutcome::Unverifiable));
}

#[test]
fn missing_receipt_is_the_executors_fault() {
    let mut c = Chain::new(3, 1_000_000);
    let user = c.users[0].public();
    let before = c.balance(&user);
    let (stack, audit, auditors, _rs) = buy_and_claim(&mut c);
    let ak = c.node_key(auditors[0]);
    vote(&mut c, &ak, audit, Verdict::Match, 1);
    reveal(&mut c, &ak, audit, Verdict::Match, 1);
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Refunded);
    let st = c.ledger.state();
    assert_eq!(
        st.audits[&audit].outcome,
        Some(AuditOutcome::ReceiptMissing)
    );
    assert!(st.nodes[&c.node_id(0)].collateral < COLLATERAL);
    assert_eq!(c.balance(&user), before);
}

#[test]
fn tie_clears_executor_and_spares_the_disputing_auditor() {
    let mut c = Chain::new(6, 1_000_000);
    let (stack, audit, auditors, rs) = buy_and_claim(&mut c);
    c.ok(&c.nodes[0].clone(), rs.submit(audit, 0));
    let ak = c.node_key(auditors[0]);
    vote(&mut c, &ak, audit, mismatch(), 1);
    let ev = reveal(&mut c, &ak, audit, mismatch(), 1);
    let Some(Event::DisputeOpened {
        dispute, committee, ..
    }) = ev
        .iter()
        .find(|e| matches!(e, Event::DisputeOpened { .. }))
        .cloned()
    else {
        panic!()
    };
    let votes = [Verdict::Match, mismatch()];
    let commits: Vec<_> = votes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let k = c.node_key(committee[i]);
            let commitment = verdict_commitment(v, &salt(i as u64), &k.public());
            (
                k,
                TxKind::CommitVote {
                    dispute,
                    commitment,
                },
            )
        })
        .collect();
    c.all_ok(commits);
    c.block(&[]); // the silent member never commits: reveals open after the commit deadline
    let reveals: Vec<_> = votes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                c.node_key(committee[i]),
                TxKind::RevealVote {
                    dispute,
                    verdict: *v,
                    salt: salt(i as u64),
                },
            )
        })
        .collect();
    c.all_ok(reveals);
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    let st = c.ledger.state();
    assert_eq!(st.disputes[&dispute].resolution, Some(false));
    assert_eq!(st.nodes[&c.node_id(0)].collateral, COLLATERAL);
    assert_eq!(st.nodes[&auditors[0]].collateral, COLLATERAL);
    assert_eq!(
        st.nodes[&committee[2]].collateral,
        Amount(COLLATERAL.0 - 1_000),
        "silent member pays the small slash"
    );
}

#[test]
fn no_eligible_auditor_is_unverifiable_not_passed() {
    let mut c = Chain::new(1, 1_000_000);
    let (stack, audit, auditors, _) = {
        let user = c.users[0].clone();
        let n0 = c.node_id(0);
        let ev = c.ok(
            &user,
            TxKind::BuyStack {
                model: model(),
                node: None,
                max_price_per_m: Amount(1_000_000),
                units: units(100),
                expires_at_ms: c.now() + 1_000_000,
            },
        );
        let Event::StackBought { stack, node, .. } = ev[0].clone() else {
            panic!()
        };
        assert_eq!(node, n0);
        let rs = Receipts::new(n0, stack, &c.nodes[0].clone(), 1);
        let ev = c.ok(
            &c.nodes[0].clone(),
            TxKind::ClaimStack {
                stack,
                units_used: units(20),
                receipts_root: rs.root(),
                receipt_count: 1,
            },
        );
        let Some(Event::AuditOpened {
            audit, auditors, ..
        }) = ev
            .iter()
            .find(|e| matches!(e, Event::AuditOpened { .. }))
            .cloned()
        else {
            panic!()
        };
        (stack, audit, auditors, rs)
    };
    assert!(auditors.is_empty());
    assert_eq!(
        c.ledger.state().audits[&audit].outcome,
        Some(AuditOutcome::Unverifiable)
    );
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
}

#[test]
fn refusals_are_typed_and_change_nothing() {
    let mut c = Chain::new(2, 1_000_000);
    let u = c.users[0].clone();
    let root = c.ledger.state_root();
    let to = c.users[1].public();
    let replay = c.sign_nonce(
        &u,
        TxKind::Transfer {
            to,
            amount: Amount(1),
        },
        5,
    );
    let mut bad_sig = c.sign(
        &u,
        TxKind::Transfer {
            to,
            amount: Amount(1),
        },
    );
    bad_sig.signature.0[0] ^= 1;
    let expired = Tx {
        chain_id: CHAIN.into(),
        sender: u.public(),
        nonce: 0,
        expires_at_ms: 1,
        kind: TxKind::Transfer {
            to,
            amount: Amount(1),
        },
    }
    .sign(&u);
    let wrong_chain = Tx {
        chain_id: "other".into(),
        sender: u.public(),
        nonce: 0,
        expires_at_ms: u64::MAX,
        kind: TxKind::PauseNode,
    }
    .sign(&u);
    let ctx = c.next_context(c.now() + 1_000);
    c.ledger.begin_block(&ctx).expect("block");
    let root_in_block = c.ledger.state_root();
    let errs: Vec<LedgerError> = [replay, bad_sig, expired, wrong_chain]
        .into_iter()
        .map(|t| match t.verify() {
            Ok(v) => c.ledger.apply_tx(&ctx, &v).expect_err("refused"),
            Err(e) => e,
        })
        .collect();
    assert!(matches!(
        errs[0],
        LedgerError::WrongNonce {
            expected: 0,
            got: 5
        }
    ));
    assert_eq!(errs[1], LedgerError::BadSignature);
    assert!(matches!(errs[2], LedgerError::Expired { .. }));
    assert!(matches!(errs[3], LedgerError::WrongChain { .. }));
    assert_eq!(c.ledger.state_root(), root_in_block);
    assert_ne!(root, root_in_block);
    c.ledger.end_block(&ctx);
    let admin = c.admin.clone();
    let cases: Vec<(Keypair, TxKind)> = vec![
        (
            u.clone(),
            TxKind::Transfer {
                to,
                amount: Amount(u64::MAX),
            },
        ),
        (u.clone(), TxKind::RegisterModel { spec: spec(1) }),
        (admin.clone(), TxKind::RegisterModel { spec: spec(1) }),
        (u.clone(), register_with(9, Amount(899))),
        (
            u.clone(),
            TxKind::ClaimStack {
                stack: StackId(9),
                units_used: units(1),
                receipts_root: salt(0),
                receipt_count: 1,
            },
        ),
        (u.clone(), TxKind::WithdrawCollateral),
    ];
    let got: Vec<LedgerError> = cases
        .into_iter()
        .map(|(k, kind)| c.tx(&k, kind).0.expect_err("refused"))
        .collect();
    assert!(matches!(got[0], LedgerError::InsufficientFunds { .. }));
    assert_eq!(got[1], LedgerError::NotAdmin);
    assert!(matches!(got[2], LedgerError::ModelExists(_)));
    assert_eq!(
        got[3],
        LedgerError::CollateralBelowMinimum {
            need: Amount(900),
            have: Amount(899)
        }
    );
    assert_eq!(got[4], LedgerError::UnknownStack(StackId(9)));
    assert_eq!(got[5], LedgerError::NotANode);
    assert_eq!(c.ledger.state().account(&u.public()).nonce, 0);
}

#[test]
fn stack_expiry_refunds_and_unbonding_releases_collateral() {
    let mut c = Chain::new(2, 1_000_000);
    let user = c.users[0].clone();
    let before = c.balance(&user.public());
    let n1 = c.node_id(1);
    let ev = c.ok(
        &user,
        TxKind::BuyStack {
            model: model(),
            node: Some(n1),
            max_price_per_m: Amount(1_000_000),
            units: units(5_000),
            expires_at_ms: c.now() + 3_000,
        },
    );
    let Event::StackBought { stack, .. } = ev[0] else {
        panic!()
    };
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Expired);
    assert_eq!(c.balance(&user.public()), before);
    let nk = c.nodes[1].clone();
    c.ok(&nk, TxKind::LeaveNode);
    assert!(c.tx(&nk, TxKind::WithdrawCollateral).0.is_err());
    c.run_until(|s| s.nodes[&n1].status == NodeStatus::Unbonded);
    let b = c.balance(&nk.public());
    c.ok(&nk, TxKind::WithdrawCollateral);
    assert_eq!(c.balance(&nk.public()), Amount(b.0 + COLLATERAL.0));
}

/// Confidential keys: each epoch has its own nonce, fixed at the turn from the block's beacon;
/// a rotation records the key with the epoch and nonce its evidence binds, and a rotation made
/// against an epoch that has since turned is refused and changes nothing.
#[test]
fn key_rotation_records_epoch_and_nonce_and_refuses_stale_epochs() {
    let mut c = Chain::new(1, 1_000_000);
    let node = c.nodes[0].clone();
    let id = c.node_id(0);
    let st = c.ledger.state();
    // Epoch 0's nonce comes from the genesis (its hash: no secret seed any more).
    let seed = c.genesis.hash();
    assert_eq!(st.epoch_nonce, epoch_nonce(&seed, 0));
    let (epoch0, nonce0) = (st.epoch, st.epoch_nonce);
    let key = SealingKey(sortition_types::sha256(b"k0"));
    let ev = c.ok(
        &node,
        TxKind::RotateConfidentialKey {
            key,
            attestation: b"evidence".to_vec(),
            epoch: epoch0,
        },
    );
    assert!(
        matches!(ev[0], Event::KeyRotated { node, epoch, .. } if node == id && epoch == epoch0)
    );
    let n = c.ledger.state().node(id).unwrap().clone();
    assert_eq!(
        (n.confidential_key, n.key_epoch, n.key_nonce),
        (key, epoch0, nonce0)
    );

    // The epoch turns: a new, different nonce, announced in the event.
    let ev = c.run_until(|s| s.epoch > epoch0);
    let st = c.ledger.state();
    let (epoch1, nonce1) = (st.epoch, st.epoch_nonce);
    assert_ne!(nonce1, nonce0);
    assert!(ev.contains(&Event::EpochTurned {
        epoch: epoch1,
        nonce: nonce1,
        fees_last_epoch: Amount::ZERO
    }));

    // Evidence made for the old epoch is refused, without touching the state.
    let root = c.ledger.state_root();
    let (r, _) = c.tx(
        &node,
        TxKind::RotateConfidentialKey {
            key: SealingKey(sortition_types::sha256(b"late")),
            attestation: b"old".to_vec(),
            epoch: epoch0,
        },
    );
    assert_eq!(
        r,
        Err(LedgerError::StaleEpoch {
            current: epoch1,
            got: epoch0
        })
    );
    let n = c.ledger.state().node(id).unwrap().clone();
    assert_eq!(
        n.key_epoch, epoch0,
        "refusal changed nothing (root was {root})"
    );

    let key1 = SealingKey(sortition_types::sha256(b"k1"));
    c.ok(
        &node,
        TxKind::RotateConfidentialKey {
            key: key1,
            attestation: b"evidence-1".to_vec(),
            epoch: epoch1,
        },
    );
    let n = c.ledger.state().node(id).unwrap().clone();
    assert_eq!(
        (n.confidential_key, n.key_epoch, n.key_nonce),
        (key1, epoch1, nonce1)
    );
}

/// An executor-kept receipt is claimed and submitted, and its auditor reveals `verdict`.
/// Returns the stack, the audit and the reveal block's events.
fn kept_receipt_judged(c: &mut Chain, verdict: Verdict) -> (StackId, AuditId, Vec<Event>) {
    let (stack, audit, auditors, rs) = buy_and_claim_kept_by(c, Custody::Executor);
    c.ok(&c.nodes[0].clone(), rs.submit(audit, 0));
    let ak = c.node_key(auditors[0]);
    vote(c, &ak, audit, verdict, 1);
    let ev = reveal(c, &ak, audit, verdict, 1);
    (stack, audit, ev)
}

/// Committee member `i` votes `votes[i]` (commits in one block, reveals in the next; `None`
/// stays silent). Returns the events of the reveal block.
fn committee_votes(
    c: &mut Chain,
    dispute: DisputeId,
    committee: &[NodeId],
    votes: &[Option<Verdict>],
) -> Vec<Event> {
    let voting: Vec<(Keypair, Verdict, u64)> = committee
        .iter()
        .zip(votes)
        .enumerate()
        .filter_map(|(i, (m, v))| v.map(|v| (c.node_key(*m), v, 40 + i as u64)))
        .collect();
    let commits = voting
        .iter()
        .map(|(k, v, s)| {
            let commitment = verdict_commitment(v, &salt(*s), &k.public());
            (
                k.clone(),
                TxKind::CommitVote {
                    dispute,
                    commitment,
                },
            )
        })
        .collect();
    c.all_ok(commits);
    if voting.len() < committee.len() {
        // Reveals open once the commit deadline passed.
        c.run_until(|s| s.height > s.disputes[&dispute].commit_deadline);
    }
    let reveals = voting
        .iter()
        .map(|(k, v, s)| {
            (
                k.clone(),
                TxKind::RevealVote {
                    dispute,
                    verdict: *v,
                    salt: salt(*s),
                },
            )
        })
        .collect();
    c.all_ok(reveals)
}

/// A confidential request (kept by its executor) that no auditor and no committee member ever
/// got: the executor withheld it, so it is slashed as for a wrong answer, the owner is
/// refunded in full and those who reported it unavailable share the reward.
#[test]
fn withheld_confidential_request_is_the_executors_fault() {
    let mut c = Chain::new(6, 1_000_000);
    let user = c.users[0].public();
    let before_user = c.balance(&user);
    let (stack, audit, auditors, rs) = buy_and_claim_kept_by(&mut c, Custody::Executor);
    c.ok(&c.nodes[0].clone(), rs.submit(audit, 0));
    let ak = c.node_key(auditors[0]);
    let before_auditor = c.balance(&ak.public());
    vote(&mut c, &ak, audit, Verdict::Unavailable, 1);
    let ev = reveal(&mut c, &ak, audit, Verdict::Unavailable, 1);
    // The auditors alone do not convict: the executor gets the committee to deliver to.
    let (dispute, committee) = dispute_opened(&ev);
    assert_eq!(committee.len(), 3);
    assert!(!st_slashed(&c, c.node_id(0)));
    let before_members: Vec<Amount> = committee
        .iter()
        .map(|m| c.balance(&c.node_key(*m).public()))
        .collect();
    let ev = committee_votes(
        &mut c,
        dispute,
        &committee,
        &[Some(Verdict::Unavailable); 3],
    );
    assert!(ev.contains(&Event::DisputeResolved {
        dispute,
        executor_at_fault: true,
        mismatch_votes: 0,
        match_votes: 0,
        unavailable_votes: 3,
    }));
    assert!(ev.iter().any(|e| matches!(e,
        Event::Slashed { node, amount, reason: SlashReason::PayloadWithheld }
            if *node == c.node_id(0) && *amount == Amount(COLLATERAL.0 / 2))));
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Refunded);
    let st = c.ledger.state();
    assert_eq!(
        st.audits[&audit].outcome,
        Some(AuditOutcome::ExecutorAtFault)
    );
    assert_eq!(st.nodes[&c.node_id(0)].collateral, Amount(COLLATERAL.0 / 2));
    assert_eq!(c.balance(&user), before_user, "owner refunded in full");
    // pot 500_000_000; half shared by the auditor and 3 members = 62_500_000 each.
    assert_eq!(
        c.balance(&ak.public()),
        Amount(before_auditor.0 + 62_500_000)
    );
    for (m, before) in committee.iter().zip(before_members) {
        assert_eq!(
            c.balance(&c.node_key(*m).public()),
            Amount(before.0 + 62_500_000)
        );
    }
    let slashed: Vec<_> = st.slashes.iter().map(|s| (s.node, s.reason)).collect();
    assert_eq!(slashed, vec![(c.node_id(0), SlashReason::PayloadWithheld)]);
}

/// Only nodes holding a confidential key can be sent an executor-kept request, so only they
/// sit on the committee that can find it withheld: with none among the peers, the committee is
/// empty and the executor is not convicted.
#[test]
fn withholding_is_judged_only_by_members_that_could_receive_the_request() {
    let mut c = Chain::new_with(6, 1_000_000, |i| match (i, register_kind(i)) {
        (0, kind) => kind,
        (
            _,
            TxKind::RegisterNode {
                endpoint,
                attestation,
                class,
                offers,
                capacity,
                collateral,
                ..
            },
        ) => TxKind::RegisterNode {
            endpoint,
            confidential_key: SealingKey(sortition_types::Hash32::ZERO),
            attestation,
            class,
            offers,
            capacity,
            collateral,
        },
        (_, other) => other,
    });
    let (stack, audit, ev) = kept_receipt_judged(&mut c, Verdict::Unavailable);
    let (_, committee) = dispute_opened(&ev);
    assert!(committee.is_empty(), "{committee:?}");
    c.run_until(|s| s.audits[&audit].outcome.is_some());
    let _ = stack;
    assert!(!st_slashed(&c, c.node_id(0)));
    assert_ne!(
        c.ledger.state().audits[&audit].outcome,
        Some(AuditOutcome::ExecutorAtFault)
    );
}

fn st_slashed(c: &Chain, node: NodeId) -> bool {
    c.ledger.state().slashes.iter().any(|s| s.node == node)
}

/// A plain request (kept by the gateway) that the auditor never got: unverifiable, as before;
/// nobody is slashed (gateways hold no collateral) and the executor is paid.
#[test]
fn unavailable_plain_request_stays_unverifiable() {
    let mut c = Chain::new(6, 1_000_000);
    let user = c.users[0].public();
    let before_user = c.balance(&user);
    let (stack, audit, auditors, rs) = buy_and_claim_kept_by(&mut c, Custody::Gateway);
    c.ok(&c.nodes[0].clone(), rs.submit(audit, 0));
    let ak = c.node_key(auditors[0]);
    vote(&mut c, &ak, audit, Verdict::Unavailable, 1);
    let ev = reveal(&mut c, &ak, audit, Verdict::Unavailable, 1);
    assert!(!ev.iter().any(|e| matches!(e, Event::DisputeOpened { .. })));
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    let st = c.ledger.state();
    assert_eq!(st.audits[&audit].outcome, Some(AuditOutcome::Unverifiable));
    assert!(st.disputes.is_empty() && st.slashes.is_empty());
    assert_eq!(st.nodes[&c.node_id(0)].collateral, COLLATERAL);
    assert_eq!(
        c.balance(&user),
        Amount(before_user.0 - 20),
        "the owner paid"
    );
}

/// An executor-kept request that reaches the committee after all is judged on its merits: an
/// honest answer clears the executor and the auditor that never got it is not punished.
#[test]
fn executor_kept_request_delivered_to_the_committee_is_judged() {
    let mut c = Chain::new(6, 1_000_000);
    let (stack, audit, ev) = kept_receipt_judged(&mut c, Verdict::Unavailable);
    let (dispute, committee) = dispute_opened(&ev);
    let votes = [
        Some(Verdict::Match),
        Some(Verdict::Unavailable),
        Some(Verdict::Match),
    ];
    committee_votes(&mut c, dispute, &committee, &votes);
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    let st = c.ledger.state();
    assert_eq!(st.disputes[&dispute].resolution, Some(false));
    assert_eq!(
        st.audits[&audit].outcome,
        Some(AuditOutcome::ExecutorCleared)
    );
    assert!(st.slashes.is_empty(), "{:?}", st.slashes);
}

/// Withholding is proven only by a majority of the committee as drawn: one `Unavailable` of
/// three (the others silent) proves nothing, so the audit ends unverifiable and the claim
/// settles; the silent members pay for their missed deadline.
#[test]
fn withholding_needs_a_majority_of_the_committee() {
    let mut c = Chain::new(6, 1_000_000);
    let (stack, audit, ev) = kept_receipt_judged(&mut c, Verdict::Unavailable);
    let (dispute, committee) = dispute_opened(&ev);
    committee_votes(
        &mut c,
        dispute,
        &committee,
        &[Some(Verdict::Unavailable), None, None],
    );
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    let st = c.ledger.state();
    assert_eq!(st.disputes[&dispute].resolution, Some(false));
    assert_eq!(st.audits[&audit].outcome, Some(AuditOutcome::Unverifiable));
    assert_eq!(st.nodes[&c.node_id(0)].collateral, COLLATERAL);
    let mut slashed: Vec<_> = st.slashes.iter().map(|s| (s.node, s.reason)).collect();
    slashed.sort_by_key(|(n, _)| *n);
    let mut silent = vec![
        (committee[1], SlashReason::MissedDeadline),
        (committee[2], SlashReason::MissedDeadline),
    ];
    silent.sort_by_key(|(n, _)| *n);
    assert_eq!(slashed, silent);
}

/// The executor delivered its request to the auditors (one found it wrong) but not to the
/// dispute's committee: withholding it from the committee is its fault too.
#[test]
fn withholding_from_the_committee_after_a_mismatch_is_the_executors_fault() {
    let mut c = Chain::new(6, 1_000_000);
    let (stack, audit, auditors, rs) = buy_and_claim_kept_by(&mut c, Custody::Executor);
    c.ok(&c.nodes[0].clone(), rs.submit(audit, 0));
    let ak = c.node_key(auditors[0]);
    let before_auditor = c.balance(&ak.public());
    vote(&mut c, &ak, audit, mismatch(), 1);
    let ev = reveal(&mut c, &ak, audit, mismatch(), 1);
    let (dispute, committee) = dispute_opened(&ev);
    let votes = [Some(Verdict::Unavailable), Some(Verdict::Unavailable), None];
    committee_votes(&mut c, dispute, &committee, &votes);
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Refunded);
    let st = c.ledger.state();
    assert_eq!(st.disputes[&dispute].resolution, Some(true));
    assert!(
        st.slashes
            .iter()
            .any(|s| s.node == c.node_id(0) && s.reason == SlashReason::PayloadWithheld)
    );
    // pot 500_000_000; half shared by the auditor and the 2 members who said so.
    assert_eq!(
        c.balance(&ak.public()),
        Amount(before_auditor.0 + 250_000_000 / 3)
    );
}

/// A node that now runs another engine (a new class) takes it on the ledger only once its
/// claims under the old class have settled and it owes no audit, so that no receipt is judged
/// by peers of another class than the one that computed it; a refusal changes nothing.
#[test]
fn a_node_changes_class_only_when_nothing_is_open_under_the_old_one() {
    let mut c = Chain::new(3, 1_000_000);
    let mut newer = class();
    newer.engine_version = "e2".into();
    let update = |class: NodeClass, add: u64| TxKind::UpdateNode {
        endpoint: None,
        offers: None,
        capacity: None,
        add_collateral: Amount(add),
        class: Some(class),
    };
    let (stack, audit, auditors, rs) = buy_and_claim(&mut c);
    let n0 = c.nodes[0].clone();
    let id = c.node_id(0);
    let ak = c.node_key(auditors[0]);
    let before = (
        c.balance(&n0.public()),
        c.ledger.state().nodes[&id].collateral,
    );
    // The auditor owes its verdict under the old class: it may not change yet.
    let txs = [
        c.sign(&n0, rs.submit(audit, 0)),
        c.sign(&ak, update(newer.clone(), 0)),
    ];
    let mut out = c.block(&txs);
    assert!(out.results.remove(0).is_ok());
    assert!(
        matches!(
            out.results.remove(0),
            Err(LedgerError::ClassChangeWhileBusy {
                pending_work: 1,
                ..
            })
        ),
        "the auditor changed class with a verdict due"
    );
    // Node 0's claim and its audit are open: refused, and nothing moves.
    let commitment = verdict_commitment(&Verdict::Match, &salt(1), &ak.public());
    let txs = [
        c.sign(&ak, TxKind::CommitVerdict { audit, commitment }),
        c.sign(&n0, update(newer.clone(), 5)),
    ];
    let mut out = c.block(&txs);
    assert!(out.results.remove(0).is_ok());
    assert_eq!(
        out.results.remove(0).unwrap_err(),
        LedgerError::ClassChangeWhileBusy {
            node: id,
            unsettled_claims: 1,
            open_audits: 1,
            pending_work: 1,
        }
    );
    let st = c.ledger.state();
    assert_eq!(st.nodes[&id].class_fingerprint, class().fingerprint());
    assert_eq!(
        (c.balance(&n0.public()), st.nodes[&id].collateral),
        before,
        "a refused update moves no funds"
    );
    reveal(&mut c, &ak, audit, Verdict::Match, 1);
    // Resending the class it has is no change, and always allowed.
    c.ok(&n0, update(class(), 0));

    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    c.ok(&n0, update(newer.clone(), 0));
    c.ok(&ak, update(newer.clone(), 0));
    let st = c.ledger.state();
    assert_eq!(st.nodes[&id].class_fingerprint, newer.fingerprint());
    assert_eq!(st.nodes[&id].class, newer);
    // Auditors are now drawn among peers of the new class only: the node left on the old
    // class is never drawn for node 0's receipts.
    for _ in 0..4 {
        let (_, _, drawn, _) = buy_and_claim(&mut c);
        assert_eq!(drawn, auditors);
    }
}

/// Issue 18: a faucet transaction signed by a fresh, non-admin key minted on a devnet ledger.
/// Only the genesis admin may mint; anyone else is refused and nothing is minted.
#[test]
fn non_admin_faucet_is_refused() {
    let mut c = Chain::new(1, 1_000_000);
    let stranger = Keypair::from_seed(b"a fresh key, not the admin");
    let minted = c.ledger.state().minted;
    let (r, ev) = c.tx(
        &stranger,
        TxKind::Faucet {
            to: stranger.public(),
            amount: Amount(1_000_000),
        },
    );
    assert_eq!(
        r.expect_err("a stranger may not mint"),
        LedgerError::NotAdmin
    );
    assert!(!ev.iter().any(|e| matches!(e, Event::Minted { .. })));
    assert_eq!(c.balance(&stranger.public()), Amount::ZERO);
    assert_eq!(c.ledger.state().minted, minted);
    // The admin still can.
    let admin = c.admin.clone();
    c.ok(
        &admin,
        TxKind::Faucet {
            to: stranger.public(),
            amount: Amount(7),
        },
    );
    assert_eq!(c.balance(&stranger.public()), Amount(7));
}

/// Audit rate of one in a million: claims sample nothing, settlement follows the window.
const RARELY: u32 = 1;

#[test]
fn disowned_receipt_is_burned_not_paid() {
    let mut c = Chain::new(3, RARELY);
    let user = c.users[0].clone();
    let node = c.nodes[0].clone();
    let n0 = c.node_id(0);
    let before_user = c.balance(&user.public());
    let before_node = c.balance(&node.public());
    let before_treasury = c.ledger.state().treasury;
    let stack = buy_from_node0(&mut c);
    // 15 receipts of 20 units; the node claims the first 10 (200 units, escrow 1000).
    let rs = Receipts::new(n0, stack, &node, 15);
    // Disowned while the stack is open, while its claim is pending, and one the claim leaves out.
    let ev = c.ok(
        &user,
        TxKind::DisownReceipt {
            receipt: rs.signed[1].clone(),
        },
    );
    assert!(
        ev.contains(&Event::ReceiptDisowned {
            stack,
            node: n0,
            sequence: 1,
            units: units(20),
        }),
        "{ev:?}"
    );
    let leaves = rs.leaves[..10].to_vec();
    let ev = c.ok(
        &node,
        TxKind::ClaimStack {
            stack,
            units_used: units(200),
            receipts_root: sortition_types::merkle_root(&leaves),
            receipt_count: 10,
        },
    );
    let claim = ev
        .iter()
        .find_map(|e| match e {
            Event::ClaimCommitted { claim, .. } => Some(*claim),
            _ => None,
        })
        .expect("claimed");
    // The window is two blocks: both go in before settlement.
    let mut ev = vec![];
    for i in [4, 12] {
        ev.extend(c.ok(
            &user,
            TxKind::DisownReceipt {
                receipt: rs.signed[i].clone(),
            },
        ));
    }
    assert_eq!(c.ledger.state().stacks[&stack].disowned.len(), 3);
    ev.extend(c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled));
    let fee_bps = u64::from(c.ledger.state().params.treasury_fee_bps);
    // Receipts 1 and 4 (40 units) are burned; receipt 12 is not in the claim.
    let payment = 160;
    let fee = payment * fee_bps / 10_000;
    let burned = 40;
    let honest_fee = 200 * fee_bps / 10_000;
    let refund = 1_000 - payment - burned;
    assert!(
        ev.contains(&Event::Settled {
            claim,
            stack,
            node: n0,
            paid: Amount(payment - fee),
            fee: Amount(fee),
            refunded: Amount(refund),
            burned: Amount(burned),
        }),
        "{ev:?}"
    );
    // The node lost the disowned receipts' pay, less the fee it would have owed on it.
    let paid = c.balance(&node.public()).0 - before_node.0;
    assert_eq!(paid, payment - fee);
    assert_eq!((200 - honest_fee) - paid, burned - (honest_fee - fee));
    // The owner paid for them anyway: escrow less the node's payment and the burn.
    assert_eq!(
        c.balance(&user.public()),
        Amount(before_user.0 - payment - burned)
    );
    let st = c.ledger.state();
    assert_eq!(st.treasury.0 - before_treasury.0, fee + burned);
    assert_eq!(st.stacks[&stack].escrow, Amount::ZERO);
    let sup = st.supply();
    assert_eq!(
        sup.balances.0 + sup.escrow.0 + sup.collateral.0 + sup.treasury.0,
        sup.minted.0
    );
}

#[test]
fn disown_is_refused_unless_owner_signed_and_open() {
    let mut c = Chain::new(3, RARELY);
    let user = c.users[0].clone();
    let other = c.users[1].clone();
    let node = c.nodes[0].clone();
    let n0 = c.node_id(0);
    let n1 = c.node_id(1);
    let stack = buy_from_node0(&mut c);
    let rs = Receipts::new(n0, stack, &node, 2);
    let disown = |r: &SignedReceipt| TxKind::DisownReceipt { receipt: r.clone() };
    let refused = |c: &mut Chain, k: &Keypair, kind: TxKind, want: LedgerError| {
        let before = c.ledger.state().stacks[&stack].disowned.clone();
        assert_eq!(c.tx(k, kind).0, Err(want));
        assert_eq!(c.ledger.state().stacks[&stack].disowned, before);
    };

    // Not the owner.
    refused(
        &mut c,
        &other,
        disown(&rs.signed[0]),
        LedgerError::NotStackOwner(stack),
    );
    // Forged: another key signed it, or the text was changed after signing.
    let forged = Receipts::new(n0, stack, &c.nodes[1].clone(), 1);
    refused(
        &mut c,
        &user,
        disown(&forged.signed[0]),
        LedgerError::ReceiptSignatureInvalid { stack, sequence: 0 },
    );
    let mut altered = rs.signed[0].clone();
    altered.receipt.response_hash = sortition_types::sha256(b"other text");
    refused(
        &mut c,
        &user,
        disown(&altered),
        LedgerError::ReceiptSignatureInvalid { stack, sequence: 0 },
    );
    // Another stack's receipt: node 1 signed it, on its own stack, which user 0 also owns.
    let ev = c.ok(
        &user,
        TxKind::BuyStack {
            model: model(),
            node: Some(n1),
            max_price_per_m: Amount(1_000_000),
            units: units(1_000),
            expires_at_ms: c.now() + 1_000_000,
        },
    );
    let Event::StackBought { stack: stack1, .. } = ev[0].clone() else {
        panic!("{ev:?}")
    };
    let mut misplaced = Receipts::new(n1, stack1, &c.nodes[1].clone(), 1).signed[0].clone();
    misplaced.receipt.stack = stack;
    refused(
        &mut c,
        &user,
        disown(&misplaced),
        LedgerError::ReceiptNotOfStack {
            stack,
            receipt_node: n1,
            model: model(),
        },
    );
    // Unknown stack.
    let mut nowhere = rs.signed[0].clone();
    nowhere.receipt.stack = StackId(999);
    refused(
        &mut c,
        &user,
        disown(&nowhere),
        LedgerError::UnknownStack(StackId(999)),
    );
    // Twice.
    c.ok(&user, disown(&rs.signed[0]));
    refused(
        &mut c,
        &user,
        disown(&rs.signed[0]),
        LedgerError::AlreadyDisowned { stack, sequence: 0 },
    );
    // After settlement.
    c.ok(
        &node,
        TxKind::ClaimStack {
            stack,
            units_used: units(40),
            receipts_root: rs.root(),
            receipt_count: 2,
        },
    );
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    refused(
        &mut c,
        &user,
        disown(&rs.signed[1]),
        LedgerError::StackClosed(stack),
    );
}
