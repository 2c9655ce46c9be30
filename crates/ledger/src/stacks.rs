//! Stacks: buying prepaid compute into escrow, claiming it, and settling or refunding it.
//!
//! Price: a unit is one token, input or output, and a stack cannot know the mix in advance, so
//! a stack's price per million units is the node's `max(input, output)` price. Escrow is
//! `ceil(units * price / 1e6)`; a claim owes `ceil(units_used * price / 1e6)` (never more than
//! the escrow).

use sortition_types::{
    Amount, AuditId, ClaimId, Hash32, ModelId, NodeId, PublicKey, SignedReceipt, StackId, Units,
};

use crate::beacon::{below, draw};
use crate::error::LedgerError;
use crate::event::Event;
use crate::nodes::eligible;
use crate::ops::{add_work, bps, credit, debit, done_work, require_balance, to_treasury};
use crate::state::{AuditOutcome, Claim, ClaimStatus, Stack, StackStatus, State};
use crate::{BlockContext, TxResult};

/// `ceil(units * price_per_m / 1e6)`, or `None` if it does not fit in `u64`.
pub fn cost(units: Units, price_per_m: Amount) -> Option<Amount> {
    let c = (u128::from(units.0) * u128::from(price_per_m.0)).div_ceil(1_000_000);
    u64::try_from(c).ok().map(Amount)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn buy(
    st: &mut State,
    ctx: &BlockContext,
    sender: &PublicKey,
    model: &ModelId,
    node: Option<NodeId>,
    cap: Amount,
    units: Units,
    expires_at_ms: u64,
) -> TxResult {
    if units.0 == 0 {
        return Err(LedgerError::InvalidStack("zero units".into()));
    }
    if expires_at_ms <= ctx.timestamp_ms {
        return Err(LedgerError::InvalidStack(
            "expiry is not in the future".into(),
        ));
    }
    if !st.models.contains_key(model) {
        return Err(LedgerError::UnknownModel(model.clone()));
    }
    let id = StackId(st.next_ids.stack);
    let (node_id, price) = match node {
        Some(nid) => {
            let n = st.nodes.get(&nid).ok_or(LedgerError::UnknownNode(nid))?;
            let offer = n.offer(model).ok_or_else(|| LedgerError::ModelNotOffered {
                node: nid,
                model: model.clone(),
            })?;
            if !eligible(st, n, model) {
                return Err(LedgerError::NodeNotEligible(nid));
            }
            let price = offer.unit_price_per_m();
            if price > cap {
                return Err(LedgerError::PriceAboveCap { price, cap });
            }
            (nid, price)
        }
        None => {
            let pool: Vec<(NodeId, Amount)> = st
                .nodes
                .values()
                .filter(|n| eligible(st, n, model))
                .filter_map(|n| n.offer(model).map(|o| (n.id, o.unit_price_per_m())))
                .filter(|(_, p)| *p <= cap)
                .collect();
            if pool.is_empty() {
                return Err(LedgerError::NoEligibleNode(model.clone()));
            }
            let pick = below(draw(&st.randomness, "buy", id.0, 0), pool.len() as u64) as usize;
            pool[pick]
        }
    };
    let escrow = cost(units, price).ok_or(LedgerError::Overflow)?;
    require_balance(st, sender, escrow)?;
    debit(st, sender, escrow);
    st.next_ids.stack += 1;
    st.stacks.insert(
        id,
        Stack {
            id,
            owner: *sender,
            node: node_id,
            model: model.clone(),
            units,
            price_per_m: price,
            escrow,
            expires_at_ms,
            status: StackStatus::Open,
            bought_height: ctx.height,
            disowned: Default::default(),
        },
    );
    st.stack_expiry.insert((expires_at_ms, id));
    Ok(vec![Event::StackBought {
        stack: id,
        owner: *sender,
        node: node_id,
        model: model.clone(),
        units,
        price_per_m: price,
        escrow,
    }])
}

pub(crate) fn claim(
    st: &mut State,
    ctx: &BlockContext,
    sender: &PublicKey,
    stack_id: StackId,
    units_used: Units,
    receipts_root: Hash32,
    receipt_count: u64,
) -> TxResult {
    let s = st
        .stacks
        .get(&stack_id)
        .ok_or(LedgerError::UnknownStack(stack_id))?;
    let node = st
        .nodes
        .get(&s.node)
        .ok_or(LedgerError::UnknownNode(s.node))?;
    if node.operator != *sender {
        return Err(LedgerError::NotStackNode(stack_id));
    }
    if s.status != StackStatus::Open || ctx.timestamp_ms >= s.expires_at_ms {
        return Err(LedgerError::StackNotOpen(stack_id));
    }
    if units_used > s.units {
        return Err(LedgerError::ClaimExceedsStack {
            used: units_used,
            units: s.units,
        });
    }
    let max = st.params.max_receipts_per_claim.min(units_used.0);
    if receipt_count > max {
        return Err(LedgerError::TooManyReceipts {
            count: receipt_count,
            max,
        });
    }
    if units_used.0 > 0 && receipt_count == 0 {
        return Err(LedgerError::InvalidStack(
            "units claimed without receipts".into(),
        ));
    }
    let payment = cost(units_used, s.price_per_m)
        .ok_or(LedgerError::Overflow)?
        .min(s.escrow);
    let (node_id, expires) = (s.node, s.expires_at_ms);
    // Validation done; mutate.
    let id = ClaimId(st.next_ids.claim);
    st.next_ids.claim += 1;
    if let Some(s) = st.stacks.get_mut(&stack_id) {
        s.status = StackStatus::Claimed { claim: id };
    }
    st.stack_expiry.remove(&(expires, stack_id));
    let settles_at_height = ctx.height.saturating_add(st.params.challenge_window_blocks);
    st.claims.insert(
        id,
        Claim {
            id,
            stack: stack_id,
            node: node_id,
            units_used,
            receipts_root,
            receipt_count,
            payment,
            committed_height: ctx.height,
            settles_at_height,
            audits: vec![],
            open_audits: 0,
            sampled: false,
            executor_at_fault: false,
            status: ClaimStatus::Pending,
        },
    );
    st.claim_queue.insert((settles_at_height, id));
    attach_challenges(st, stack_id, id);
    add_work(st, node_id);
    let events = vec![Event::ClaimCommitted {
        claim: id,
        stack: stack_id,
        node: node_id,
        units_used,
        settles_at_height,
    }];
    // Sampled at the end of the next block, with a beacon nobody knew when this was sent.
    st.defer(ctx, crate::state::Draw::Sample { claim: id });
    Ok(events)
}

/// Stack `id`, when `sender` owns it.
pub(crate) fn owned<'a>(
    st: &'a State,
    sender: &PublicKey,
    id: StackId,
) -> Result<&'a Stack, LedgerError> {
    let s = st.stacks.get(&id).ok_or(LedgerError::UnknownStack(id))?;
    if s.owner != *sender {
        return Err(LedgerError::NotStackOwner(id));
    }
    Ok(s)
}

/// The stack's owner disowns one receipt its node signed (see `TxKind::DisownReceipt`): the
/// receipt's units are burned at settlement instead of paid. Only while the stack is open or
/// its claim still pending, once per receipt position.
pub(crate) fn disown(st: &mut State, sender: &PublicKey, receipt: &SignedReceipt) -> TxResult {
    let r = &receipt.receipt;
    let s = owned(st, sender, r.stack)?;
    if r.node != s.node || r.model != s.model {
        return Err(LedgerError::ReceiptNotOfStack {
            stack: r.stack,
            receipt_node: r.node,
            model: r.model.clone(),
        });
    }
    let executor = st
        .nodes
        .get(&s.node)
        .ok_or(LedgerError::UnknownNode(s.node))?;
    if receipt.verify(&executor.operator).is_err() {
        return Err(LedgerError::ReceiptSignatureInvalid {
            stack: r.stack,
            sequence: r.sequence,
        });
    }
    let open = match s.status {
        StackStatus::Open => true,
        StackStatus::Claimed { claim } => st
            .claims
            .get(&claim)
            .is_some_and(|c| c.status == ClaimStatus::Pending),
        StackStatus::Settled | StackStatus::Refunded | StackStatus::Expired => false,
    };
    if !open {
        return Err(LedgerError::StackClosed(r.stack));
    }
    if s.disowned.contains_key(&r.sequence) {
        return Err(LedgerError::AlreadyDisowned {
            stack: r.stack,
            sequence: r.sequence,
        });
    }
    let (stack, node, units) = (r.stack, r.node, r.units());
    // Validation done; mutate.
    if let Some(s) = st.stacks.get_mut(&stack) {
        s.disowned.insert(r.sequence, units);
    }
    Ok(vec![Event::ReceiptDisowned {
        stack,
        node,
        sequence: r.sequence,
        units,
    }])
}

/// Closes a claim whose window passed and whose audits finished: pays the node (minus the
/// treasury fee) and refunds the owner the rest, or refunds everything if the node was at fault.
/// The cost of receipts the owner disowned (among the claim's) is burned, not paid nor refunded.
pub(crate) fn settle(st: &mut State, claim_id: ClaimId, events: &mut Vec<Event>) {
    let Some(c) = st.claims.get(&claim_id) else {
        return;
    };
    let (stack_id, node_id, at_fault, payment) = (c.stack, c.node, c.executor_at_fault, c.payment);
    let (units_used, receipt_count) = (c.units_used, c.receipt_count);
    let Some(s) = st.stacks.get_mut(&stack_id) else {
        return;
    };
    let (owner, escrow, price) = (s.owner, s.escrow, s.price_per_m);
    let disowned = Units(
        s.disowned
            .range(..receipt_count)
            .fold(0u64, |a, (_, u)| a.saturating_add(u.0)),
    );
    s.escrow = Amount::ZERO;
    s.status = if at_fault {
        StackStatus::Refunded
    } else {
        StackStatus::Settled
    };
    let operator = st.nodes.get(&node_id).map(|n| n.operator);
    let (paid, fee, burned) = match (at_fault, operator) {
        (false, Some(op)) => {
            let (payment, burned) = if disowned.0 == 0 {
                (payment, Amount::ZERO)
            } else {
                // The owner pays, in all, at most what the node claimed: the kept units to the
                // node, the disowned ones to the treasury.
                let claimed = payment;
                let kept = Units(units_used.0.saturating_sub(disowned.0));
                let payment = cost(kept, price).unwrap_or(claimed).min(claimed);
                let burned = cost(disowned, price)
                    .unwrap_or(Amount(u64::MAX))
                    .min(claimed.saturating_sub(payment));
                (payment, burned)
            };
            let fee = bps(payment, st.params.treasury_fee_bps);
            let paid = payment.saturating_sub(fee);
            credit(st, &op, paid);
            to_treasury(st, fee);
            to_treasury(st, burned);
            st.fees_this_epoch = Amount(st.fees_this_epoch.0.saturating_add(fee.0));
            (paid, fee, burned)
        }
        _ => (Amount::ZERO, Amount::ZERO, Amount::ZERO),
    };
    let refund = escrow
        .saturating_sub(paid)
        .saturating_sub(fee)
        .saturating_sub(burned);
    credit(st, &owner, refund);
    if let Some(c) = st.claims.get_mut(&claim_id) {
        c.status = if at_fault {
            ClaimStatus::Refunded
        } else {
            ClaimStatus::Settled
        };
    }
    done_work(st, node_id);
    if at_fault {
        events.push(Event::Refunded {
            stack: stack_id,
            owner,
            amount: refund,
        });
    } else {
        events.push(Event::Settled {
            claim: claim_id,
            stack: stack_id,
            node: node_id,
            paid,
            fee,
            refunded: refund,
            burned,
        });
    }
}

/// The executor of an open stack was found at fault on a challenge: the owner gets the whole
/// escrow back now, and the stack can no longer be claimed.
pub(crate) fn refund_open(st: &mut State, stack_id: StackId, events: &mut Vec<Event>) {
    let Some(s) = st.stacks.get_mut(&stack_id) else {
        return;
    };
    if s.status != StackStatus::Open {
        return;
    }
    let (owner, escrow, expires) = (s.owner, s.escrow, s.expires_at_ms);
    s.escrow = Amount::ZERO;
    s.status = StackStatus::Refunded;
    st.stack_expiry.remove(&(expires, stack_id));
    credit(st, &owner, escrow);
    events.push(Event::Refunded {
        stack: stack_id,
        owner,
        amount: escrow,
    });
}

/// An open stack reached its expiry without a claim: the owner gets the escrow back.
pub(crate) fn expire(st: &mut State, stack_id: StackId, events: &mut Vec<Event>) {
    let Some(s) = st.stacks.get_mut(&stack_id) else {
        return;
    };
    if s.status != StackStatus::Open {
        return;
    }
    let (owner, escrow) = (s.owner, s.escrow);
    s.escrow = Amount::ZERO;
    s.status = StackStatus::Expired;
    credit(st, &owner, escrow);
    events.push(Event::StackExpired { stack: stack_id });
    events.push(Event::Refunded {
        stack: stack_id,
        owner,
        amount: escrow,
    });
}

/// A claim was committed for `stack`: open challenges of the stack now hold it back.
pub(crate) fn attach_challenges(st: &mut State, stack: StackId, claim: ClaimId) {
    let ids: Vec<AuditId> = st
        .challenges
        .range((stack, 0)..=(stack, u64::MAX))
        .map(|(_, id)| *id)
        .collect();
    for id in ids {
        let Some(a) = st.audits.get_mut(&id) else {
            continue;
        };
        a.claim = Some(claim);
        // A challenge that found fault refunded the stack, which cannot be claimed after; so
        // only open (or disputed) ones matter here.
        // Open, or its auditors not drawn yet (outcome `None` either way), or in a dispute
        // not resolved yet (its committee may still be waiting for its draw).
        let open = a.outcome.is_none()
            || matches!(a.outcome, Some(AuditOutcome::Disputed { dispute })
                if st.disputes.get(&dispute).is_some_and(|d| d.resolution.is_none()));
        if let Some(c) = st.claims.get_mut(&claim) {
            c.audits.push(id);
            if open {
                c.open_audits += 1;
            }
        }
    }
}
