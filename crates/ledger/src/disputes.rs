//! Disputes: a committee of `2k + 1` nodes of the executor's class (executor and the original
//! auditors excluded) re-executes and votes by commit–reveal; the majority of revealed votes
//! decides at the reveal deadline (or as soon as every member revealed).
//!
//! Rules, all deterministic:
//! - `mismatch > match`: the executor is at fault: slashed the policy's `slash_bps` of its
//!   collateral (clamped to what it holds), `dispute_reward_bps` of that paid equally to the
//!   auditors and members who voted mismatch, the rest to the treasury; the stack owner gets the
//!   claim's whole escrow back; auditors that revealed `Match` are slashed `wrong_auditor_slash`.
//! - `match > mismatch`: the executor is cleared and the auditors that revealed `Mismatch` are
//!   slashed `wrong_auditor_slash`.
//! - Tie (including an empty committee or no reveals), unless it proves a withheld request
//!   (below): the executor is not slashed and the disputing auditors are not slashed; the
//!   claim settles normally. A dispute therefore always resolves by its reveal deadline and no
//!   funds stay locked.
//! - Members that did not reveal are slashed `missed_deadline_slash`; minority voters are not.
//!   `Unavailable` votes (the member never got the request) count for neither side.
//! - Withheld request: when the receipt puts the request in the executor's custody
//!   (confidential requests, [`Custody::Executor`](sortition_types::Custody)), no member revealed
//!   `Match` or `Mismatch`, and a strict majority of the committee (as drawn, not of those who
//!   revealed) revealed `Unavailable`, the executor is at fault for withholding it: slashed and
//!   the owner refunded exactly as for a mismatch (slash reason `PayloadWithheld`), with the
//!   reward shared by the members that voted `Unavailable` and the auditors that revealed
//!   `Mismatch` or `Unavailable`; nobody is slashed for a wrong verdict. With the request in the
//!   gateway's custody the same votes are a tie (gateways hold no collateral to slash). For
//!   such a receipt the committee is drawn only among nodes holding a confidential key of this
//!   epoch or the last: nobody else could have been sent the request.
//! - A dispute opened because the auditors never got an executor-kept request (see
//!   `audits`) in which nobody judged the request and no withholding is proven (e.g. too few
//!   members voted) ends `Unverifiable`, like an audit nobody could judge, and returns a
//!   challenger's bond; the claim settles normally.

use sortition_types::{Custody, DisputeId, Hash32, NodeId, PublicKey};

use crate::beacon::choose;
use crate::error::LedgerError;
use crate::event::Event;
use crate::ops::{add_work, done_work, slash, to_treasury};
use crate::rulings::{executor_fault, finish_for_claim, peer_pool, return_bond, withheld};
use crate::state::{Audit, AuditOutcome, Dispute, Node, SlashReason, State};
use crate::tx::{Verdict, verdict_commitment};
use crate::{BlockContext, TxResult};

/// Whether `n` published a confidential key in this epoch or the last (a key published late
/// in an epoch still serves while its successor is attested).
fn holds_current_key(st: &State, n: &Node) -> bool {
    n.confidential_key.0 != Hash32::ZERO && n.key_epoch.saturating_add(1) >= st.epoch
}

/// Opens a dispute over audit `a` (closing in this block); its committee is drawn at the end
/// of the next block (see `draws` and [`draw_committee`]).
pub(crate) fn open(st: &mut State, ctx: &BlockContext, a: &Audit) -> DisputeId {
    let id = DisputeId(st.next_ids.dispute);
    st.next_ids.dispute += 1;
    st.disputes.insert(
        id,
        Dispute {
            id,
            audit: a.id,
            executor: a.executor,
            committee: vec![],
            commits: Default::default(),
            votes: Default::default(),
            opened_height: ctx.height,
            commit_deadline: ctx.height,
            reveal_deadline: ctx.height,
            resolution: None,
        },
    );
    st.defer(ctx, crate::state::Draw::Committee { dispute: id });
    id
}

/// Draws dispute `id`'s committee with this block's randomness and opens it for votes.
pub(crate) fn draw_committee(
    st: &mut State,
    ctx: &BlockContext,
    id: DisputeId,
    events: &mut Vec<Event>,
) {
    let Some(d) = st.disputes.get(&id) else {
        return;
    };
    let Some(a) = st.audits.get(&d.audit).cloned() else {
        return;
    };
    let mut pool = peer_pool(st, a.executor, &a.model, &a.auditors);
    if a.receipt
        .as_ref()
        .is_some_and(|r| r.custody == Custody::Executor)
    {
        // Only the executor can deliver the request, sealed to each member's attested key: a
        // member without a current key could never receive it, and its `Unavailable` would
        // count against an honest executor.
        pool.retain(|m| st.nodes.get(m).is_some_and(|n| holds_current_key(st, n)));
    }
    let size = 2 * usize::from(a.wanted) + 1;
    let committee = choose(&pool, size, &st.randomness, "committee", id.0);
    committee.iter().for_each(|m| add_work(st, *m));
    let commit_deadline = ctx.height.saturating_add(st.params.dispute_commit_blocks);
    let reveal_deadline = commit_deadline.saturating_add(st.params.dispute_reveal_blocks);
    events.push(Event::DisputeOpened {
        dispute: id,
        audit: a.id,
        committee: committee.clone(),
        commit_deadline,
        reveal_deadline,
    });
    if let Some(d) = st.disputes.get_mut(&id) {
        d.committee = committee;
        d.opened_height = ctx.height;
        d.commit_deadline = commit_deadline;
        d.reveal_deadline = reveal_deadline;
    }
    st.open_disputes.insert(id);
}

fn as_member<'a>(
    st: &'a State,
    sender: &PublicKey,
    id: DisputeId,
) -> Result<(NodeId, &'a Dispute), LedgerError> {
    let d = st
        .disputes
        .get(&id)
        .ok_or(LedgerError::UnknownDispute(id))?;
    if d.resolution.is_some() {
        return Err(LedgerError::DisputeClosed(id));
    }
    let me = *st.node_by_key.get(sender).ok_or(LedgerError::NotAuditor)?;
    if !d.committee.contains(&me) {
        return Err(LedgerError::NotAuditor);
    }
    Ok((me, d))
}

pub(crate) fn commit(
    st: &mut State,
    ctx: &BlockContext,
    sender: &PublicKey,
    id: DisputeId,
    commitment: Hash32,
) -> TxResult {
    let (me, d) = as_member(st, sender, id)?;
    if ctx.height > d.commit_deadline {
        return Err(LedgerError::PhaseOver {
            phase: "commit".into(),
        });
    }
    if d.commits.contains_key(&me) {
        return Err(LedgerError::AlreadyCommitted);
    }
    if let Some(d) = st.disputes.get_mut(&id) {
        d.commits.insert(me, commitment);
    }
    Ok(vec![Event::VoteCommitted {
        dispute: id,
        member: me,
    }])
}

pub(crate) fn reveal(
    st: &mut State,
    ctx: &BlockContext,
    sender: &PublicKey,
    id: DisputeId,
    verdict: &Verdict,
    salt: &Hash32,
) -> TxResult {
    let (me, d) = as_member(st, sender, id)?;
    let committed = d.commits.get(&me).ok_or(LedgerError::NotCommitted)?;
    if d.votes.contains_key(&me) {
        return Err(LedgerError::AlreadyRevealed);
    }
    if d.commits.len() < d.committee.len() && ctx.height <= d.commit_deadline {
        return Err(LedgerError::RevealTooEarly);
    }
    if ctx.height > d.reveal_deadline {
        return Err(LedgerError::PhaseOver {
            phase: "reveal".into(),
        });
    }
    if *committed != verdict_commitment(verdict, salt, sender) {
        return Err(LedgerError::CommitmentMismatch);
    }
    if let Some(d) = st.disputes.get_mut(&id) {
        d.votes.insert(me, *verdict);
    }
    Ok(vec![Event::VoteRevealed {
        dispute: id,
        member: me,
        verdict: *verdict,
    }])
}

pub(crate) fn resolve_due(st: &mut State, ctx: &BlockContext, events: &mut Vec<Event>) {
    let due: Vec<DisputeId> = st
        .open_disputes
        .iter()
        .filter(|id| {
            st.disputes.get(id).is_some_and(|d| {
                ctx.height >= d.reveal_deadline || d.votes.len() == d.committee.len()
            })
        })
        .copied()
        .collect();
    for id in due {
        resolve(st, id, events);
    }
}

fn is_mismatch(v: &Verdict) -> bool {
    matches!(v, Verdict::Mismatch { .. })
}

fn is_unavailable(v: &Verdict) -> bool {
    matches!(v, Verdict::Unavailable)
}

fn resolve(st: &mut State, id: DisputeId, events: &mut Vec<Event>) {
    let Some(d) = st.disputes.get(&id).cloned() else {
        return;
    };
    let Some(a) = st.audits.get(&d.audit).cloned() else {
        return;
    };
    st.open_disputes.remove(&id);
    let p = st.params.clone();
    for m in &d.committee {
        if !d.votes.contains_key(m) {
            let taken = slash(
                st,
                *m,
                p.missed_deadline_slash,
                SlashReason::MissedDeadline,
                Some(a.id),
                events,
            );
            to_treasury(st, taken);
        }
        done_work(st, *m);
    }
    let mismatch = d.votes.values().filter(|v| is_mismatch(v)).count() as u32;
    let matched = d
        .votes
        .values()
        .filter(|v| matches!(v, Verdict::Match))
        .count() as u32;
    let unavailable = d.votes.values().filter(|v| is_unavailable(v)).count() as u32;
    let nobody_judged = mismatch == 0 && matched == 0;
    let withholding = nobody_judged && withheld(&a, d.votes.values(), d.committee.len());
    let at_fault = mismatch > matched || withholding;
    let auditors_said = |want_mismatch: bool| -> Vec<NodeId> {
        a.reveals
            .iter()
            .filter(|(_, v)| !matches!(v, Verdict::Unavailable))
            .filter(|(_, v)| is_mismatch(v) == want_mismatch)
            .map(|(n, _)| *n)
            .collect()
    };
    let wrong_auditors = if withholding {
        // Those who said they never got it (and any auditor that judged it wrong) were right.
        let honest: Vec<NodeId> = a
            .reveals
            .iter()
            .filter(|(_, v)| !matches!(v, Verdict::Match))
            .chain(d.votes.iter().filter(|(_, v)| is_unavailable(v)))
            .map(|(n, _)| *n)
            .collect();
        executor_fault(st, &a, &honest, SlashReason::PayloadWithheld, events);
        vec![]
    } else if at_fault {
        let mut honest = auditors_said(true);
        honest.extend(
            d.votes
                .iter()
                .filter(|(_, v)| is_mismatch(v))
                .map(|(n, _)| *n),
        );
        executor_fault(st, &a, &honest, SlashReason::ExecutorAtFault, events);
        auditors_said(false)
    } else if matched > mismatch {
        auditors_said(true)
    } else {
        vec![]
    };
    for n in wrong_auditors {
        let taken = slash(
            st,
            n,
            p.wrong_auditor_slash,
            SlashReason::WrongVerdict,
            Some(a.id),
            events,
        );
        to_treasury(st, taken);
    }
    let outcome = if at_fault {
        AuditOutcome::ExecutorAtFault
    } else if nobody_judged && a.reveals.values().all(is_unavailable) {
        // Opened because the auditors never got the request, and nobody has judged it since.
        return_bond(st, &a);
        AuditOutcome::Unverifiable
    } else {
        AuditOutcome::ExecutorCleared
    };
    if let Some(d) = st.disputes.get_mut(&id) {
        d.resolution = Some(at_fault);
    }
    if let Some(x) = st.audits.get_mut(&a.id) {
        x.outcome = Some(outcome);
    }
    events.push(Event::DisputeResolved {
        dispute: id,
        executor_at_fault: at_fault,
        mismatch_votes: mismatch,
        match_votes: matched,
        unavailable_votes: unavailable,
    });
    events.push(Event::AuditClosed {
        audit: a.id,
        outcome,
    });
    finish_for_claim(st, a.claim);
}
