//! Challenges: a stack owner has one receipt audited now (e.g. after its quorum disagreed),
//! and auditors that never got the request vote `Unavailable`.

use sortition_ledger::*;
use sortition_types::{
    Amount, AuditId, ClaimId, Custody, DisputeId, Keypair, NodeId, SignedReceipt, StackId,
};

use crate::harness::*;

/// Audit rate of one in a million: the claim samples nothing, only challenges audit.
const RARELY: u32 = 1;
/// k × audit_reward of the test model.
const BOND: Amount = Amount(100);

/// User 0 buys 1000 units from node 0; node 0 signs two receipts on it.
fn buy(c: &mut Chain) -> (StackId, Receipts) {
    let stack = buy_from_node0(c);
    let n0 = c.node_id(0);
    let rs = Receipts::new(n0, stack, &c.nodes[0].clone(), 2);
    (stack, rs)
}

/// The owner challenges `r`; returns the audit and its auditors.
fn challenge(c: &mut Chain, r: &SignedReceipt) -> (AuditId, Vec<NodeId>, Option<ClaimId>) {
    let user = c.users[0].clone();
    let ev = c.ok(&user, TxKind::ChallengeReceipt { receipt: r.clone() });
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::ReceiptChallenged { bond, .. } if *bond == BOND)),
        "{ev:?}"
    );
    ev.iter()
        .find_map(|e| match e {
            Event::AuditOpened {
                audit,
                auditors,
                claim,
                receipt_index,
                ..
            } => {
                assert_eq!(*receipt_index, r.receipt.sequence);
                Some((*audit, auditors.clone(), *claim))
            }
            _ => None,
        })
        .expect("a challenge opens an audit")
}

fn judge(c: &mut Chain, voter: NodeId, audit: AuditId, v: Verdict) -> Vec<Event> {
    commit(c, voter, audit, v);
    reveal(c, voter, audit, v)
}

fn commit(c: &mut Chain, voter: NodeId, audit: AuditId, v: Verdict) {
    let k = c.node_key(voter);
    let commitment = verdict_commitment(&v, &salt(7), &k.public());
    c.ok(&k, TxKind::CommitVerdict { audit, commitment });
}

fn reveal(c: &mut Chain, voter: NodeId, audit: AuditId, v: Verdict) -> Vec<Event> {
    let k = c.node_key(voter);
    c.ok(
        &k,
        TxKind::RevealVerdict {
            audit,
            verdict: v,
            salt: salt(7),
        },
    )
}

fn committee_votes(c: &mut Chain, dispute: DisputeId, committee: &[NodeId], v: Verdict) {
    let keys: Vec<Keypair> = committee.iter().map(|m| c.node_key(*m)).collect();
    let commits = keys
        .iter()
        .map(|k| {
            let commitment = verdict_commitment(&v, &salt(9), &k.public());
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
    let reveals = keys
        .iter()
        .map(|k| {
            (
                k.clone(),
                TxKind::RevealVote {
                    dispute,
                    verdict: v,
                    salt: salt(9),
                },
            )
        })
        .collect();
    c.all_ok(reveals);
}

#[test]
fn challenge_of_an_unclaimed_stack_catches_the_executor_and_refunds_at_once() {
    let mut c = Chain::new(6, RARELY);
    let user = c.users[0].public();
    let before = c.balance(&user);
    let (stack, rs) = buy(&mut c);
    let (audit, auditors, claim) = challenge(&mut c, &rs.signed[1]);
    assert_eq!(claim, None, "nothing claimed yet");
    assert_eq!(auditors.len(), 1);
    assert!(!auditors.contains(&c.node_id(0)));
    assert_eq!(c.balance(&user), Amount(before.0 - 1_000 - BOND.0));
    // The receipt is already on the ledger: the executor has nothing to submit.
    assert!(c.ledger.state().audits[&audit].receipt.is_some());

    let ev = judge(&mut c, auditors[0], audit, mismatch());
    let (dispute, committee) = dispute_opened(&ev);
    committee_votes(&mut c, dispute, &committee, mismatch());

    let st = c.ledger.state();
    assert_eq!(
        st.audits[&audit].outcome,
        Some(AuditOutcome::ExecutorAtFault)
    );
    assert_eq!(st.stacks[&stack].status, StackStatus::Refunded);
    assert_eq!(st.stacks[&stack].escrow, Amount::ZERO);
    assert!(st.nodes[&c.node_id(0)].collateral < COLLATERAL);
    assert_eq!(c.balance(&user), before, "escrow and bond back");
    // The node can no longer be paid for the stack.
    let n0 = c.nodes[0].clone();
    let (r, _) = c.tx(
        &n0,
        TxKind::ClaimStack {
            stack,
            units_used: units(40),
            receipts_root: rs.root(),
            receipt_count: 2,
        },
    );
    assert_eq!(r, Err(LedgerError::StackNotOpen(stack)));
}

#[test]
fn a_claim_waits_for_an_open_challenge_and_an_honest_executor_is_paid() {
    let mut c = Chain::new(3, RARELY);
    let user = c.users[0].public();
    let before = c.balance(&user);
    let (stack, rs) = buy(&mut c);
    let (audit, auditors, _) = challenge(&mut c, &rs.signed[0]);
    let n0 = c.nodes[0].clone();
    let ev = c.ok(
        &n0,
        TxKind::ClaimStack {
            stack,
            units_used: units(40),
            receipts_root: rs.root(),
            receipt_count: 2,
        },
    );
    let claim = ev
        .iter()
        .find_map(|e| match e {
            Event::ClaimCommitted { claim, .. } => Some(*claim),
            _ => None,
        })
        .expect("claimed");
    {
        let st = c.ledger.state();
        assert_eq!(
            st.claims[&claim].open_audits, 1,
            "held back by the challenge"
        );
        assert_eq!(st.audits[&audit].claim, Some(claim));
    }
    let ak = c.node_key(auditors[0]);
    let before_auditor = c.balance(&ak.public());
    commit(&mut c, auditors[0], audit, Verdict::Match);
    // At the end of the challenge window, the claim still waits for the audit.
    c.block(&[]);
    assert!(c.ledger.state().height >= c.ledger.state().claims[&claim].settles_at_height);
    assert_eq!(c.ledger.state().claims[&claim].status, ClaimStatus::Pending);
    reveal(&mut c, auditors[0], audit, Verdict::Match);
    c.run_until(|s| s.stacks[&stack].status == StackStatus::Settled);
    let st = c.ledger.state();
    assert_eq!(st.audits[&audit].outcome, Some(AuditOutcome::Passed));
    assert_eq!(st.nodes[&c.node_id(0)].collateral, COLLATERAL);
    // 40 units at 1_000_000 per million = 40; the bond paid the auditor.
    assert_eq!(c.balance(&user), Amount(before.0 - 40 - BOND.0));
    assert_eq!(c.balance(&ak.public()), Amount(before_auditor.0 + 100));
    // Once settled, the stack's receipts can no longer be challenged.
    let owner = c.users[0].clone();
    let (r, _) = c.tx(
        &owner,
        TxKind::ChallengeReceipt {
            receipt: rs.signed[1].clone(),
        },
    );
    assert_eq!(r, Err(LedgerError::StackNotOpen(stack)));
}

#[test]
fn bad_challenges_are_refused_and_change_nothing() {
    let mut c = Chain::new(3, RARELY);
    let (stack, rs) = buy(&mut c);
    let stranger = c.users[1].clone();
    let owner = c.users[0].clone();
    let mut forged = rs.signed[0].clone();
    forged.receipt.response_hash = sortition_types::sha256(b"edited");
    let mut elsewhere = rs.signed[0].clone();
    elsewhere.receipt.stack = StackId(stack.0 + 100);
    let cases = [
        (
            stranger,
            rs.signed[0].clone(),
            LedgerError::NotStackOwner(stack),
        ),
        (
            owner.clone(),
            forged,
            LedgerError::InvalidReceipt("receipt signature is not the stack's node's".into()),
        ),
        (
            owner.clone(),
            elsewhere,
            LedgerError::UnknownStack(StackId(stack.0 + 100)),
        ),
    ];
    for (who, receipt, want) in cases {
        let (balance, nonce) = {
            let a = c.ledger.state().account(&who.public());
            (a.balance, a.nonce)
        };
        let (r, _) = c.tx(&who, TxKind::ChallengeReceipt { receipt });
        assert_eq!(r, Err(want));
        let st = c.ledger.state();
        assert!(st.challenges.is_empty() && st.open_audits.is_empty());
        let after = st.account(&who.public());
        assert_eq!(
            (after.balance, after.nonce),
            (balance, nonce),
            "no bond, no nonce"
        );
    }
    challenge(&mut c, &rs.signed[0]);
    let (r, _) = c.tx(
        &owner,
        TxKind::ChallengeReceipt {
            receipt: rs.signed[0].clone(),
        },
    );
    assert_eq!(
        r,
        Err(LedgerError::AlreadyChallenged { stack, sequence: 0 })
    );
}

#[test]
fn unavailable_verdicts_earn_nothing_and_cost_nothing() {
    // Two challenges: one auditor never got its request, the other judged its own.
    let mut c = Chain::new(4, RARELY);
    let (_stack, rs) = buy(&mut c);
    let (a1, auditors1, _) = challenge(&mut c, &rs.signed[0]);
    let (a2, auditors2, _) = challenge(&mut c, &rs.signed[1]);
    let k1 = c.node_key(auditors1[0]);
    let before = c.balance(&k1.public());
    let collateral = c.ledger.state().nodes[&auditors1[0]].collateral;
    commit(&mut c, auditors1[0], a1, Verdict::Unavailable);
    commit(&mut c, auditors2[0], a2, Verdict::Match);
    reveal(&mut c, auditors1[0], a1, Verdict::Unavailable);
    reveal(&mut c, auditors2[0], a2, Verdict::Match);
    c.run_until(|s| s.audits[&a1].outcome.is_some() && s.audits[&a2].outcome.is_some());
    let st = c.ledger.state();
    assert_eq!(st.audits[&a1].outcome, Some(AuditOutcome::Unverifiable));
    assert_eq!(st.audits[&a2].outcome, Some(AuditOutcome::Passed));
    assert_eq!(
        st.nodes[&auditors1[0]].collateral, collateral,
        "not slashed"
    );
    if auditors1[0] != auditors2[0] {
        assert_eq!(c.balance(&k1.public()), before, "not paid");
    }
    assert_eq!(st.nodes[&c.node_id(0)].collateral, COLLATERAL);
}

#[test]
fn challenged_confidential_receipt_withheld_refunds_at_once_and_returns_the_bond() {
    // The owner challenges a receipt of a confidential request (kept by the executor); nobody
    // ever gets the request, so the executor is slashed for withholding it, the unclaimed
    // stack is refunded at once and the bond comes back.
    let mut c = Chain::new(6, RARELY);
    let user = c.users[0].public();
    let before = c.balance(&user);
    let stack = buy_from_node0(&mut c);
    let n0 = c.node_id(0);
    let rs = Receipts::with_custody(n0, stack, &c.nodes[0].clone(), 1, Custody::Executor);
    let (audit, auditors, _) = challenge(&mut c, &rs.signed[0]);
    let ev = judge(&mut c, auditors[0], audit, Verdict::Unavailable);
    let (dispute, committee) = dispute_opened(&ev);
    committee_votes(&mut c, dispute, &committee, Verdict::Unavailable);
    let st = c.ledger.state();
    assert_eq!(
        st.audits[&audit].outcome,
        Some(AuditOutcome::ExecutorAtFault)
    );
    assert_eq!(st.stacks[&stack].status, StackStatus::Refunded);
    assert_eq!(c.balance(&user), before, "escrow and bond back");
    let slashed: Vec<_> = st.slashes.iter().map(|s| (s.node, s.reason)).collect();
    assert_eq!(slashed, vec![(n0, SlashReason::PayloadWithheld)]);
}

/// Two different receipts one node signed for one position of a stack prove it equivocated:
/// it is slashed at once, the reporter (any account) is paid, the open stack is refunded.
/// Receipts of two positions, one receipt twice, a pair not signed by the node's key, and a
/// second report of the position are refused and change nothing.
#[test]
fn two_receipts_signed_for_one_position_are_proof_of_equivocation() {
    let mut c = Chain::new(3, 1_000_000);
    let stack = buy_from_node0(&mut c);
    let (n0, id) = (c.nodes[0].clone(), c.node_id(0));
    let honest = Receipts::new(id, stack, &n0, 2);
    let mut forked = honest.signed[0].receipt.clone();
    forked.response_hash = sortition_types::sha256(b"another answer");
    let forked = SignedReceipt::sign(forked, &n0);
    let reporter = c.users[1].clone();
    let report = |a: &SignedReceipt, b: &SignedReceipt| TxKind::ReportEquivocation {
        first: Box::new(a.clone()),
        second: Box::new(b.clone()),
    };
    let before = c.ledger.state().clone();
    let reporter_before = c.balance(&reporter.public());
    let refused = [
        report(&honest.signed[0], &honest.signed[1]),
        report(&honest.signed[0], &honest.signed[0]),
        report(
            &honest.signed[0],
            &SignedReceipt::sign(forked.receipt.clone(), &c.nodes[1].clone()),
        ),
    ];
    for tx in refused {
        let (r, _) = c.tx(&reporter, tx);
        assert!(matches!(r, Err(LedgerError::NotAnEquivocation(_))), "{r:?}");
    }
    let after = c.ledger.state();
    assert_eq!(after.nodes, before.nodes, "refusals slash nobody");
    assert_eq!(after.stacks, before.stacks);
    assert_eq!(c.balance(&reporter.public()), reporter_before);

    let collateral = c.ledger.state().nodes[&id].collateral;
    let balance = c.balance(&reporter.public());
    let owner_before = c.balance(&c.users[0].public());
    let ev = c.ok(&reporter, report(&honest.signed[0], &forked));
    let taken = Amount(collateral.0 / 2); // slash_bps 5000
    assert!(ev.contains(&Event::Slashed {
        node: id,
        amount: taken,
        reason: SlashReason::Equivocation,
    }));
    let reward = Amount(taken.0 / 2); // dispute_reward_bps 5000
    assert!(ev.contains(&Event::EquivocationProven {
        node: id,
        stack,
        sequence: 0,
        reporter: reporter.public(),
        reward,
    }));
    assert_eq!(c.balance(&reporter.public()), Amount(balance.0 + reward.0));
    assert_eq!(
        c.ledger.state().stacks[&stack].status,
        StackStatus::Refunded
    );
    assert_eq!(
        c.balance(&c.users[0].public()),
        Amount(owner_before.0 + 1_000)
    );
    // Once per position, in either order.
    let (r, _) = c.tx(&reporter, report(&forked, &honest.signed[0]));
    assert_eq!(
        r.unwrap_err(),
        LedgerError::EquivocationReported { stack, sequence: 0 }
    );
}
