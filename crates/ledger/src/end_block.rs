//! End-of-block processing, in this order: draws fixed in earlier blocks (claim samples,
//! challengers, dispute committees; see `draws`), close due audits (possibly opening disputes),
//! resolve due disputes, settle claims whose window passed and whose audits all finished,
//! expire unclaimed stacks, complete unbonding, turn the epoch.

use sortition_types::{Amount, ClaimId, NodeId, StackId};

use crate::event::Event;
use crate::state::{NodeStatus, State};
use crate::{BlockContext, audits, disputes, stacks};

pub(crate) fn run(st: &mut State, ctx: &BlockContext) -> Vec<Event> {
    let mut events = Vec::new();
    crate::draws::run(st, ctx, &mut events);
    audits::close_due(st, ctx, &mut events);
    disputes::resolve_due(st, ctx, &mut events);

    let ready: Vec<(u64, ClaimId)> = st
        .claim_queue
        .range(..=(ctx.height, ClaimId(u64::MAX)))
        .filter(|(_, id)| {
            st.claims
                .get(id)
                .is_some_and(|c| c.sampled && c.open_audits == 0)
        })
        .copied()
        .collect();
    for key in ready {
        st.claim_queue.remove(&key);
        stacks::settle(st, key.1, &mut events);
    }

    let expired: Vec<(u64, StackId)> = st
        .stack_expiry
        .range(..=(ctx.timestamp_ms, StackId(u64::MAX)))
        .copied()
        .collect();
    for key in expired {
        st.stack_expiry.remove(&key);
        stacks::expire(st, key.1, &mut events);
    }

    let unbonded: Vec<(u64, NodeId)> = st
        .unbonding
        .range(..=(ctx.height, NodeId(u64::MAX)))
        .copied()
        .collect();
    for key in unbonded {
        st.unbonding.remove(&key);
        if let Some(n) = st.nodes.get_mut(&key.1) {
            n.status = NodeStatus::Unbonded;
            events.push(Event::NodeUnbonded { node: key.1 });
        }
    }

    if ctx
        .height
        .is_multiple_of(st.params.epoch_length_blocks.max(1))
    {
        st.epoch += 1;
        st.epoch_nonce = crate::state::epoch_nonce(&st.randomness, st.epoch);
        let fees = st.fees_this_epoch;
        st.fees_this_epoch = Amount::ZERO;
        st.nodes
            .values_mut()
            .for_each(|n| n.rotations_this_epoch = 0);
        events.push(Event::EpochTurned {
            epoch: st.epoch,
            nonce: st.epoch_nonce,
            fees_last_epoch: fees,
        });
    }
    events
}
