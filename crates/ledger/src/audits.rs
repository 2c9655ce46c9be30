//! Asynchronous cross-validation: sampling receipts of a committed claim, drawing auditors,
//! commit–reveal verdicts, the executor's receipt, and closing audits.
//!
//! Sampling: each receipt index `i` of a claim is selected with probability `q` by
//! `draw(block randomness, "sample", claim, i)`. If more than `max_audits_per_claim` (default
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
//! treasury holds). No reveals at all: `Unverifiable`.

use sortition_types::{
    Amount, AuditId, ClaimId, Hash32, MerkleProof, NodeId, PublicKey, SignedReceipt,
};

use crate::beacon::{below, choose, draw};
use crate::error::LedgerError;
use crate::event::Event;
use crate::nodes::eligible;
use crate::ops::{add_work, done_work, reward, slash, to_treasury};
use crate::policy::PPM;
use crate::state::{Audit, AuditOutcome, SlashReason, State};
use crate::tx::{Verdict, verdict_commitment};
use crate::{BlockContext, TxResult, disputes};

/// Nodes that may check `executor`'s work on `model`, excluding `exclude`.
pub(crate) fn peer_pool(
    st: &State,
    executor: NodeId,
    model: &sortition_types::ModelId,
    exclude: &[NodeId],
) -> Vec<NodeId> {
    let Some(ex) = st.nodes.get(&executor) else {
        return vec![];
    };
    st.nodes
        .values()
        .filter(|n| n.id != executor && !exclude.contains(&n.id))
        .filter(|n| n.class_fingerprint == ex.class_fingerprint && eligible(st, n, model))
        .map(|n| n.id)
        .collect()
}

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
            below(draw(&ctx.randomness, "sample", claim_id.0, *i), PPM) < u64::from(policy.q_ppm)
        })
        .collect();
    let cap = st.params.max_audits_per_claim as usize;
    if picked.len() > cap {
        picked = choose(&picked, cap, &ctx.randomness, "sample-cap", claim_id.0);
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
            &ctx.randomness,
            "auditors",
            id.0,
        );
        let outcome = auditors.is_empty().then_some(AuditOutcome::Unverifiable);
        events.push(Event::AuditOpened {
            audit: id,
            claim: claim_id,
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
                claim: claim_id,
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
    let claim = st
        .claims
        .get(&a.claim)
        .ok_or(LedgerError::UnknownClaim(a.claim))?;
    let r = &receipt.receipt;
    let bad = |m: &str| Err(LedgerError::InvalidReceipt(m.into()));
    if proof.index != a.receipt_index || proof.leaf_count != claim.receipt_count {
        return bad("proof is not for the sampled index of this claim");
    }
    if r.node != a.executor || r.stack != a.stack || r.model != a.model {
        return bad("receipt names another node, stack or model");
    }
    let digest = r.digest();
    if !proof.verify(&digest, &claim.receipts_root) {
        return bad("Merkle proof does not match the claim's root");
    }
    if receipt.verify(&executor.operator).is_err() {
        return bad("receipt signature is not the executor's");
    }
    let (req, resp) = (r.request_hash, r.response_hash);
    if let Some(a) = st.audits.get_mut(&id) {
        a.receipt = Some((digest, req, resp));
    }
    Ok(vec![Event::ReceiptSubmitted {
        audit: id,
        request_hash: req,
        response_hash: resp,
    }])
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
    let outcome = if a.receipt.is_none() {
        executor_fault(st, &a, &mismatch, SlashReason::ReceiptMissing, events);
        AuditOutcome::ReceiptMissing
    } else if !mismatch.is_empty() {
        AuditOutcome::Disputed {
            dispute: disputes::open(st, ctx, &a, events),
        }
    } else if a.reveals.is_empty() {
        AuditOutcome::Unverifiable
    } else {
        let r = st
            .models
            .get(&a.model)
            .map_or(Amount::ZERO, |m| m.spec.policy.audit_reward);
        for auditor in a.reveals.keys() {
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

/// One fewer open audit on the claim.
pub(crate) fn finish_for_claim(st: &mut State, claim: ClaimId) {
    if let Some(c) = st.claims.get_mut(&claim) {
        c.open_audits = c.open_audits.saturating_sub(1);
    }
}

/// The executor was proven at fault on audit `a`: slash the policy fraction of its collateral
/// (clamped to what it holds), pay `dispute_reward_bps` of it equally to `honest`, the rest to
/// the treasury, and mark the claim so that its owner is refunded in full at settlement.
pub(crate) fn executor_fault(
    st: &mut State,
    a: &Audit,
    honest: &[NodeId],
    reason: SlashReason,
    events: &mut Vec<Event>,
) {
    let slash_bps = st
        .models
        .get(&a.model)
        .map_or(0, |m| m.spec.policy.slash_bps);
    let collateral = st
        .nodes
        .get(&a.executor)
        .map_or(Amount::ZERO, |n| n.collateral);
    let amount = crate::ops::bps(collateral, slash_bps);
    let pot = slash(st, a.executor, amount, reason, Some(a.id), events);
    let share_total = crate::ops::bps(pot, st.params.dispute_reward_bps);
    let each = if honest.is_empty() {
        Amount::ZERO
    } else {
        Amount(share_total.0 / honest.len() as u64)
    };
    for n in honest {
        reward(st, *n, each, events);
    }
    to_treasury(
        st,
        pot.saturating_sub(Amount(each.0.saturating_mul(honest.len() as u64))),
    );
    if let Some(c) = st.claims.get_mut(&a.claim) {
        c.executor_at_fault = true;
    }
}
