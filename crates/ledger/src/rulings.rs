//! What audits and disputes both rule with: who may judge an executor's work, when silence
//! counts as withholding, and what a proven fault costs the executor (and returns to a
//! challenger).

use sortition_types::{Amount, ClaimId, Custody, NodeId};

use crate::event::Event;
use crate::nodes::eligible;
use crate::ops::{reward, slash, to_treasury};
use crate::state::{Audit, SlashReason, State};
use crate::tx::Verdict;

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

/// Whether the votes say that the executor withheld a request in its custody: the receipt
/// puts the request in the executor's custody and a strict majority of the `drawn` voters
/// revealed `Unavailable`. (Callers check first that nobody revealed `Match` or `Mismatch`.)
pub(crate) fn withheld<'a>(
    a: &Audit,
    votes: impl Iterator<Item = &'a Verdict>,
    drawn: usize,
) -> bool {
    let in_executor_custody = a
        .receipt
        .as_ref()
        .is_some_and(|r| r.custody == Custody::Executor);
    let unavailable = votes.filter(|v| matches!(v, Verdict::Unavailable)).count();
    in_executor_custody && unavailable.saturating_mul(2) > drawn
}

/// One fewer open audit on the claim (if the audit has one yet).
pub(crate) fn finish_for_claim(st: &mut State, claim: Option<ClaimId>) {
    if let Some(c) = claim.and_then(|c| st.claims.get_mut(&c)) {
        c.open_audits = c.open_audits.saturating_sub(1);
    }
}

/// The executor was proven at fault on audit `a`: slash the policy fraction of its collateral
/// (clamped to what it holds), pay `dispute_reward_bps` of it equally to `honest`, the rest to
/// the treasury, and mark the claim so that its owner is refunded in full at settlement (or,
/// for a challenge of a stack not claimed yet, refund it now). A challenger gets its bond back.
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
    match a.claim {
        Some(claim) => {
            if let Some(c) = st.claims.get_mut(&claim) {
                c.executor_at_fault = true;
            }
        }
        None => crate::stacks::refund_open(st, a.stack, events),
    }
    return_bond(st, a);
}

/// A challenger's bond back from the treasury (as far as it holds).
pub(crate) fn return_bond(st: &mut State, a: &Audit) {
    if let Some(bond) = a.challenge_bond {
        let back = bond.min(st.treasury);
        st.treasury = st.treasury.saturating_sub(back);
        crate::ops::credit(st, &a.owner, back);
    }
}
