//! Equivocation: a node that signs two different receipts for one position of a stack.
//!
//! Receipts are numbered gap-free per stack, and a claim commits to one receipt per position
//! (the Merkle leaves). Two different receipts signed for the same position mean that at least
//! one of them is not what the claim commits to: a node that shows an auditor one answer and
//! its claim another, or answers two requests under one number to bill one of them twice.
//! Whoever holds both (an auditor that got conflicting deliveries, a gateway that saw a
//! sequence number reused) proves it with the two receipts alone, checked against the node's
//! key as the ledger holds it: no committee is needed.
//!
//! The node is slashed `slash_bps` of its collateral (as for a lost dispute), the reporter is
//! paid `dispute_reward_bps` of what was taken and the rest goes to the treasury; a pending
//! claim of the stack pays the owner back at settlement, an open stack is refunded now. One
//! slash per position, whoever reports it first.

use sortition_types::{PublicKey, SignedReceipt};

use crate::TxResult;
use crate::error::LedgerError;
use crate::event::Event;
use crate::ops::{bps, credit, slash, to_treasury};
use crate::state::{SlashReason, StackStatus, State};

pub(crate) fn report(
    st: &mut State,
    sender: &PublicKey,
    first: &SignedReceipt,
    second: &SignedReceipt,
) -> TxResult {
    let not = |m: &str| Err(LedgerError::NotAnEquivocation(m.into()));
    let (a, b) = (&first.receipt, &second.receipt);
    if (a.node, a.stack, a.sequence) != (b.node, b.stack, b.sequence) {
        return not("the receipts name different nodes, stacks or positions");
    }
    if a == b {
        return not("the two receipts are the same");
    }
    let node = st
        .nodes
        .get(&a.node)
        .ok_or(LedgerError::UnknownNode(a.node))?;
    if first.verify(&node.operator).is_err() || second.verify(&node.operator).is_err() {
        return not("a receipt is not signed by the node's key");
    }
    let stack = st
        .stacks
        .get(&a.stack)
        .ok_or(LedgerError::UnknownStack(a.stack))?;
    if stack.node != a.node {
        return not("the stack was bought from another node");
    }
    let position = (a.stack, a.sequence);
    if st.equivocations.contains(&position) {
        return Err(LedgerError::EquivocationReported {
            stack: a.stack,
            sequence: a.sequence,
        });
    }
    // Validation done; mutate.
    let (node_id, collateral, model, status) =
        (a.node, node.collateral, stack.model.clone(), stack.status);
    st.equivocations.insert(position);
    let slash_bps = st.models.get(&model).map_or(0, |m| m.spec.policy.slash_bps);
    let mut events = Vec::new();
    let pot = slash(
        st,
        node_id,
        bps(collateral, slash_bps),
        SlashReason::Equivocation,
        None,
        &mut events,
    );
    let reward = bps(pot, st.params.dispute_reward_bps);
    credit(st, sender, reward);
    to_treasury(st, pot.saturating_sub(reward));
    events.push(Event::EquivocationProven {
        node: node_id,
        stack: a.stack,
        sequence: a.sequence,
        reporter: *sender,
        reward,
    });
    match status {
        StackStatus::Claimed { claim } => {
            if let Some(c) = st.claims.get_mut(&claim) {
                c.executor_at_fault = true;
            }
        }
        StackStatus::Open => crate::stacks::refund_open(st, a.stack, &mut events),
        StackStatus::Settled | StackStatus::Refunded | StackStatus::Expired => {}
    }
    Ok(events)
}
