//! Asynchronous cross-validation: sampling receipts of a committed claim, drawing auditors,
//! commit–reveal verdicts, the executor's receipt, and closing audits.
//!
//! Sampling: at the end of the block after the one that included the claim (see `draws`), each
//! receipt index `i` of a claim is selected with probability `q` by
//! `draw(that block's randomness, "sample", claim, i)`. If more than `max_audits_per_claim` (default
//! 16) are selected, that many are kept, chosen by the same randomness; this bounds per-claim
//! work and is documented as a cap on the detection rate of very large claims.
//!
//! Auditors: `k` nodes drawn from the *eligible* nodes offering the model whose class
//! fingerprint equals the executor's, executor excluded. Each node has its own operator key,
//! so distinct nodes are distinct operators. Fewer than `k` eligible: all of them, recorded in
//! `wanted` vs `auditors`; none: the audit is `Unverifiable`, never passed.
//!
//! Closing (at the reveal deadline, or once everyone revealed and the receipt is in): auditors
//! that did not reveal are slashed `missed_deadline_slash`. No receipt from the executor or the
//! owner by the deadline is an objective, on-ledger fault of the executor: `ReceiptMissing`,
//! punished like a lost dispute without a committee. Any revealed mismatch opens a dispute. Only
//! matches: `Passed`, each revealing auditor paid `audit_reward` from the treasury (as far as the
//! treasury holds). No reveals at all: `Unverifiable`. `Unavailable` verdicts (the auditor
//! never got the request) count for neither side: no reward, no slash.
//!
//! Withheld requests: the receipt says who keeps the request for its auditors
//! ([`Custody`](sortition_types::Custody)). For a plain request that is the stack's owner (a
//! gateway or client); it holds no collateral, so an audit nobody could judge stays
//! `Unverifiable` and nobody is slashed. A confidential request can only come from the executor
//! (everyone else saw ciphertext), so its silence is its own: when no auditor revealed `Match`
//! or `Mismatch` and a strict majority of the drawn auditors revealed `Unavailable`, the audit
//! opens a dispute instead of ending unverifiable. The executor gets a second chance to
//! deliver, to the larger committee, and that committee decides (see [`disputes`]): the same
//! `2k + 1` majority that decides a mismatch is needed to slash for withholding, never the `k`
//! auditors alone.
//!
//! Challenges: the stack's owner may have one receipt audited now (`ChallengeReceipt`), e.g.
//! after a synchronous quorum disagreed. The receipt's signature by the stack's node is
//! checked on the spot and recorded as the audit's receipt, so the executor need not submit
//! it. The owner posts a bond of `k × audit_reward` to the treasury (which pays the auditors);
//! it is returned if the executor is found at fault. Among few peers a challenge draws fewer
//! auditors than `k`, so that one peer at least is left to sit on a dispute's committee. A challenge holds back the stack's claim
//! from settling like a sampled audit does; on fault before any claim, the stack's escrow goes
//! back to the owner at once and the stack can no longer be claimed.

use sortition_types::{
    Amount, AuditId, ClaimId, Hash32, MerkleProof, NodeId, PublicKey, SignedReceipt,
};

use crate::beacon::{below, choose, draw};
use crate::error::LedgerError;
use crate::event::Event;
use crate::ops::{add_work, done_work, reward, slash, to_treasury};
use crate::policy::PPM;
use crate::rulings::{executor_fault, finish_for_claim, peer_pool, return_bond, withheld};
use crate::state::{Audit, AuditOutcome, AuditedReceipt, SlashReason, State};
use crate::tx::{Verdict, verdict_commitment};
use crate::{BlockContext, TxResult, disputes};

pub(crate) fn open_for_claim(
    st: &mut State,
    ctx: &BlockContext,
    claim_id: ClaimId,
    events: &mut Vec<Event>,
) {
    let Some(c) = st.claims.get(&claim_id) else {
        return;
    };
    let Some(s) = st.stacks.get(&c.stack) else {
        return;
    };
    let Some(policy) = st.models.get(&s.model).and_then(|m| m.spec.policy.audit) else {
        return;
    };
    let (stack, owner, model, executor, count) =
        (s.id, s.owner, s.model.clone(), c.node, c.receipt_count);
    let mut picked: Vec<u64> = (0..count)
        .filter(|i| {
            below(draw(&st.randomness, "sample", claim_id.0, *i), PPM) < u64::from(policy.q_ppm)
        })
        .collect();
    let cap = st.params.max_audits_per_claim as usize;
    if picked.len() > cap {
        picked = choose(&picked, cap, &st.randomness, "sample-cap", claim_id.0);
        picked.sort_unstable();
    }
    let pool = peer_pool(st, executor, &model, &[]);
    let commit_deadline = ctx.height.saturating_add(st.params.audit_commit_blocks);
    let reveal_deadline = commit_deadline.saturating_add(st.params.audit_reveal_blocks);
    for receipt_index in picked {
        let id = AuditId(st.next_ids.audit);
        st.next_ids.audit += 1;
        let auditors = choose(
            &pool,
            usize::from(policy.k),
            &st.randomness,
            "auditors",
            id.0,
        );
        let outcome = auditors.is_empty().then_some(AuditOutcome::Unverifiable);
        events.push(Event::AuditOpened {
            audit: id,
            claim: Some(claim_id),
            stack,
            owner,
            executor,
            model: model.clone(),
            receipt_index,
            auditors: auditors.clone(),
            wanted: policy.k,
            commit_deadline,
            reveal_deadline,
        });
        if let Some(outcome) = outcome {
            events.push(Event::AuditClosed { audit: id, outcome });
        } else {
            st.open_audits.insert(id);
            auditors.iter().for_each(|a| add_work(st, *a));
            if let Some(c) = st.claims.get_mut(&claim_id) {
                c.open_audits += 1;
            }
        }
        if let Some(c) = st.claims.get_mut(&claim_id) {
            c.audits.push(id);
        }
        st.audits.insert(
            id,
            Audit {
                id,
                claim: Some(claim_id),
                stack,
                owner,
                executor,
                model: model.clone(),
                receipt_index,
                wanted: policy.k,
                auditors,
                commits: Default::default(),
                reveals: Default::default(),
                receipt: None,
                opened_height: ctx.height,
                commit_deadline,
                reveal_deadline,
                outcome,
                challenge_bond: None,
            },
        );
    }
}

/// The open audit and the sender's node id as one of its auditors.
fn as_auditor<'a>(
    st: &'a State,
    sender: &PublicKey,
    id: AuditId,
) -> Result<(NodeId, &'a Audit), LedgerError> {
    let a = st.audits.get(&id).ok_or(LedgerError::UnknownAudit(id))?;
    if a.outcome.is_some() {
        return Err(LedgerError::AuditClosed(id));
    }
    let me = *st.node_by_key.get(sender).ok_or(LedgerError::NotAuditor)?;
    if !a.auditors.contains(&me) {
        return Err(LedgerError::NotAuditor);
    }
    Ok((me, a))
}

pub(crate) fn commit(
    st: &mut State,
    ctx: &BlockContext,
    sender: &PublicKey,
    id: AuditId,
    commitment: Hash32,
) -> TxResult {
    let (me, a) = as_auditor(st, sender, id)?;
    if ctx.height > a.commit_deadline {
        return Err(LedgerError::PhaseOver {
            phase: "commit".into(),
        });
    }
    if a.commits.contains_key(&me) {
        return Err(LedgerError::AlreadyCommitted);
    }
    if let Some(a) = st.audits.get_mut(&id) {
        a.commits.insert(me, commitment);
    }
    Ok(vec![Event::VerdictCommitted {
        audit: id,
        auditor: me,
    }])
}

pub(crate) fn reveal(
    st: &mut State,
    ctx: &BlockContext,
    sender: &PublicKey,
    id: AuditId,
    verdict: &Verdict,
    salt: &Hash32,
) -> TxResult {
    let (me, a) = as_auditor(st, sender, id)?;
    let committed = a.commits.get(&me).ok_or(LedgerError::NotCommitted)?;
    if a.reveals.contains_key(&me) {
        return Err(LedgerError::AlreadyRevealed);
    }
    if a.commits.len() < a.auditors.len() && ctx.height <= a.commit_deadline {
        return Err(LedgerError::RevealTooEarly);
    }
    if ctx.height > a.reveal_deadline {
        return Err(LedgerError::PhaseOver {
            phase: "reveal".into(),
        });
    }
    if *committed != verdict_commitment(verdict, salt, sender) {
        return Err(LedgerError::CommitmentMismatch);
    }
    if let Some(a) = st.audits.get_mut(&id) {
        a.reveals.insert(me, *verdict);
    }
    Ok(vec![Event::VerdictRevealed {
        audit: id,
        auditor: me,
        verdict: *verdict,
    }])
}

pub(crate) fn submit_receipt(
    st: &mut State,
    ctx: &BlockContext,
    sender: &PublicKey,
    id: AuditId,
    receipt: &SignedReceipt,
    proof: &MerkleProof,
) -> TxResult {
    let a = st.audits.get(&id).ok_or(LedgerError::UnknownAudit(id))?;
    if a.outcome.is_some() {
        return Err(LedgerError::AuditClosed(id));
    }
    let executor = st
        .nodes
        .get(&a.executor)
        .ok_or(LedgerError::UnknownNode(a.executor))?;
    if *sender != executor.operator && *sender != a.owner {
        return Err(LedgerError::NotReceiptSubmitter);
    }
    if a.receipt.is_some() {
        return Err(LedgerError::ReceiptAlreadySubmitted);
    }
    if ctx.height > a.reveal_deadline {
        return Err(LedgerError::PhaseOver {
            phase: "receipt".into(),
        });
    }
    let claim_id = a.claim.ok_or(LedgerError::ReceiptAlreadySubmitted)?;
    let claim = st
        .claims
        .get(&claim_id)
        .ok_or(LedgerError::UnknownClaim(claim_id))?;
    let r = &receipt.receipt;
    let bad = |m: &str| Err(LedgerError::InvalidReceipt(m.into()));
    if proof.index != a.receipt_index || proof.leaf_count != claim.receipt_count {
        return bad("proof is not for the sampled index of this claim");
    }
    if r.node != a.executor || r.stack != a.stack || r.model != a.model {
        return bad("receipt names another node, stack or model");
    }
    let kept = AuditedReceipt::of(receipt);
    if !proof.verify(&kept.digest, &claim.receipts_root) {
        return bad("Merkle proof does not match the claim's root");
    }
    if receipt.verify(&executor.operator).is_err() {
        return bad("receipt signature is not the executor's");
    }
    let event = Event::ReceiptSubmitted {
        audit: id,
        request_hash: kept.request_hash,
        response_hash: kept.response_hash,
    };
    if let Some(a) = st.audits.get_mut(&id) {
        a.receipt = Some(kept);
    }
    Ok(vec![event])
}

/// Closes audits whose deadline passed or that are complete.
pub(crate) fn close_due(st: &mut State, ctx: &BlockContext, events: &mut Vec<Event>) {
    let due: Vec<AuditId> = st
        .open_audits
        .iter()
        .filter(|id| {
            st.audits.get(id).is_some_and(|a| {
                ctx.height >= a.reveal_deadline
                    || (a.receipt.is_some() && a.reveals.len() == a.auditors.len())
            })
        })
        .copied()
        .collect();
    for id in due {
        close(st, ctx, id, events);
    }
}

fn close(st: &mut State, ctx: &BlockContext, id: AuditId, events: &mut Vec<Event>) {
    let Some(a) = st.audits.get(&id).cloned() else {
        return;
    };
    st.open_audits.remove(&id);
    let p = st.params.clone();
    for auditor in &a.auditors {
        if !a.reveals.contains_key(auditor) {
            let taken = slash(
                st,
                *auditor,
                p.missed_deadline_slash,
                SlashReason::MissedDeadline,
                Some(id),
                events,
            );
            to_treasury(st, taken);
        }
        done_work(st, *auditor);
    }
    let mismatch: Vec<NodeId> = a
        .reveals
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Mismatch { .. }))
        .map(|(n, _)| *n)
        .collect();
    let judged: Vec<NodeId> = a
        .reveals
        .iter()
        .filter(|(_, v)| !matches!(v, Verdict::Unavailable))
        .map(|(n, _)| *n)
        .collect();
    let outcome = if a.receipt.is_none() {
        executor_fault(st, &a, &mismatch, SlashReason::ReceiptMissing, events);
        AuditOutcome::ReceiptMissing
    } else if !mismatch.is_empty()
        || (judged.is_empty() && withheld(&a, a.reveals.values(), a.auditors.len()))
    {
        AuditOutcome::Disputed {
            dispute: disputes::open(st, ctx, &a),
        }
    } else if judged.is_empty() {
        // Nobody could judge: a challenger's bond paid no one, so it goes back.
        return_bond(st, &a);
        AuditOutcome::Unverifiable
    } else {
        let r = st
            .models
            .get(&a.model)
            .map_or(Amount::ZERO, |m| m.spec.policy.audit_reward);
        for auditor in &judged {
            let pay = r.min(st.treasury);
            st.treasury = st.treasury.saturating_sub(pay);
            reward(st, *auditor, pay, events);
        }
        AuditOutcome::Passed
    };
    if let Some(x) = st.audits.get_mut(&id) {
        x.outcome = Some(outcome);
    }
    events.push(Event::AuditClosed { audit: id, outcome });
    if !matches!(outcome, AuditOutcome::Disputed { .. }) {
        finish_for_claim(st, a.claim);
    }
}
