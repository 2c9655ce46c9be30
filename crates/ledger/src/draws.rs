//! Draws made with a beacon value produced after what they select for was fixed.
//!
//! A claim, a challenge or a dispute fixed in block `h` (by a transaction, or by an audit
//! closing at the end of `h`) is queued here and drawn at the end of the next block that
//! carries a beacon (`h + 1` unless that is a bridge block, see [`BlockContext::beacon`]), with
//! that block's randomness, before anything else at the end of that block: the receipts a claim
//! gets audited on and their auditors, a challenge's auditors, a dispute's committee. Nobody
//! below the beacon's threshold knows that value when the claim is submitted or included, so
//! no one can time a claim to dodge its sample, nor steer who judges it. The audit's or
//! dispute's deadlines count from the block that drew it.
//!
//! In between, a claim is `sampled: false` and cannot settle; a challenge's audit exists with no
//! auditors and outcome `None` (it holds its claim back like an open audit); a dispute exists with
//! an empty committee and is not yet open for votes.

use crate::BlockContext;
use crate::event::Event;
use crate::state::{Draw, PendingDraw, State};
use crate::{audits, challenges, disputes};

/// Makes every draw fixed before this block, in the order they were fixed; nothing in a bridge
/// block (no beacon: the draws wait for the next block that has one).
pub(crate) fn run(st: &mut State, ctx: &BlockContext, events: &mut Vec<Event>) {
    if ctx.beacon.is_none() {
        return;
    }
    let (due, kept): (Vec<PendingDraw>, Vec<PendingDraw>) = std::mem::take(&mut st.pending_draws)
        .into_iter()
        .partition(|p| p.fixed_height < ctx.height);
    st.pending_draws = kept;
    for p in due {
        match p.draw {
            Draw::Sample { claim } => {
                if let Some(c) = st.claims.get_mut(&claim) {
                    c.sampled = true;
                }
                audits::open_for_claim(st, ctx, claim, events);
            }
            Draw::Challengers { audit, pool, k } => {
                challenges::draw_challengers(st, ctx, audit, &pool, k, events)
            }
            Draw::Committee { dispute } => disputes::draw_committee(st, ctx, dispute, events),
        }
    }
}
