//! Challenges: the owner of a stack has one of its receipts audited now (`ChallengeReceipt`),
//! posting a bond; the auditors are drawn with the next beacon (see [`crate::draws`]). The
//! audit then runs as a sampled one does (see [`crate::audits`]).

use sortition_types::{Amount, AuditId, NodeId, PublicKey, SignedReceipt};

use crate::beacon::choose;
use crate::error::LedgerError;
use crate::event::Event;
use crate::ops::{add_work, to_treasury};
use crate::rulings::{finish_for_claim, peer_pool};
use crate::state::{Audit, AuditOutcome, AuditedReceipt, StackStatus, State};
use crate::{BlockContext, TxResult};

/// Auditors per challenge when the model has no audit policy.
const CHALLENGE_K_DEFAULT: u8 = 2;

/// The owner of a stack challenges one of its receipts (see the module docs).
pub(crate) fn challenge(
    st: &mut State,
    ctx: &BlockContext,
    sender: &PublicKey,
    receipt: &SignedReceipt,
) -> TxResult {
    let r = &receipt.receipt;
    let bad = |m: &str| Err(LedgerError::InvalidReceipt(m.into()));
    let s = crate::stacks::owned(st, sender, r.stack)?;
    if r.node != s.node || r.model != s.model {
        return bad("receipt names another node or model than its stack");
    }
    let executor = st
        .nodes
        .get(&s.node)
        .ok_or(LedgerError::UnknownNode(s.node))?;
    if receipt.verify(&executor.operator).is_err() {
        return bad("receipt signature is not the stack's node's");
    }
    // A settled stack's window is over. One refunded or expired paid the node nothing, but
    // a wrong answer served on it still costs the node its stake.
    let claim = match s.status {
        StackStatus::Open | StackStatus::Refunded | StackStatus::Expired => None,
        StackStatus::Claimed { claim } => Some(claim),
        StackStatus::Settled => return Err(LedgerError::StackNotOpen(r.stack)),
    };
    if st.challenges.contains_key(&(r.stack, r.sequence)) {
        return Err(LedgerError::AlreadyChallenged {
            stack: r.stack,
            sequence: r.sequence,
        });
    }
    let model = st
        .models
        .get(&s.model)
        .ok_or_else(|| LedgerError::UnknownModel(s.model.clone()))?;
    let k = model
        .spec
        .policy
        .audit
        .map_or(CHALLENGE_K_DEFAULT, |a| a.k)
        .max(1);
    let reward = model.spec.policy.audit_reward;
    let (stack, owner, executor, model) = (s.id, s.owner, s.node, s.model.clone());
    let id = AuditId(st.next_ids.audit);
    let pool = peer_pool(st, executor, &model, &[]);
    // Leave at least one peer out for a dispute's committee: a challenge is expected to
    // end in a dispute more often than a sampled audit, and an empty committee clears.
    let k = k.min(
        u8::try_from(pool.len().saturating_sub(1))
            .unwrap_or(u8::MAX)
            .max(1),
    );
    // The auditors are drawn at the end of the next block, from this pool, with a beacon value
    // nobody knows yet (see `draws`); the bond pays for as many as will be drawn.
    let drawn = usize::from(k).min(pool.len());
    // No auditor to pay, no bond.
    let bond = Amount(reward.0.saturating_mul(drawn as u64));
    crate::ops::require_balance(st, sender, bond)?;
    // Validation done; mutate.
    crate::ops::debit(st, sender, bond);
    to_treasury(st, bond);
    st.next_ids.audit += 1;
    let events = vec![Event::ReceiptChallenged {
        audit: id,
        stack,
        sequence: r.sequence,
        owner,
        bond,
    }];
    if let Some(c) = claim.and_then(|c| st.claims.get_mut(&c)) {
        c.audits.push(id);
        // Held back until drawn and closed, like an open audit.
        c.open_audits += 1;
    }
    st.challenges.insert((stack, r.sequence), id);
    st.audits.insert(
        id,
        Audit {
            id,
            claim,
            stack,
            owner,
            executor,
            model,
            receipt_index: r.sequence,
            wanted: k,
            auditors: vec![],
            commits: Default::default(),
            reveals: Default::default(),
            receipt: Some(AuditedReceipt::of(receipt)),
            opened_height: ctx.height,
            commit_deadline: ctx.height,
            reveal_deadline: ctx.height,
            outcome: None,
            challenge_bond: Some(bond),
        },
    );
    st.defer(ctx, crate::state::Draw::Challengers { audit: id, pool, k });
    Ok(events)
}

/// Draws a challenge's auditors (see `draws`) from the pool fixed with the challenge and opens
/// its audit; with nobody to draw it closes `Unverifiable` at once.
pub(crate) fn draw_challengers(
    st: &mut State,
    ctx: &BlockContext,
    id: AuditId,
    pool: &[NodeId],
    k: u8,
    events: &mut Vec<Event>,
) {
    let Some(a) = st.audits.get(&id).cloned() else {
        return;
    };
    if a.outcome.is_some() {
        return;
    }
    let auditors = choose(pool, usize::from(k), &st.randomness, "challengers", id.0);
    let commit_deadline = ctx.height.saturating_add(st.params.audit_commit_blocks);
    let reveal_deadline = commit_deadline.saturating_add(st.params.audit_reveal_blocks);
    events.push(Event::AuditOpened {
        audit: id,
        claim: a.claim,
        stack: a.stack,
        owner: a.owner,
        executor: a.executor,
        model: a.model.clone(),
        receipt_index: a.receipt_index,
        auditors: auditors.clone(),
        wanted: k,
        commit_deadline,
        reveal_deadline,
    });
    let outcome = auditors.is_empty().then_some(AuditOutcome::Unverifiable);
    if let Some(outcome) = outcome {
        events.push(Event::AuditClosed { audit: id, outcome });
        finish_for_claim(st, a.claim);
    } else {
        st.open_audits.insert(id);
        auditors.iter().for_each(|n| add_work(st, *n));
    }
    if let Some(x) = st.audits.get_mut(&id) {
        x.auditors = auditors;
        x.opened_height = ctx.height;
        x.commit_deadline = commit_deadline;
        x.reveal_deadline = reveal_deadline;
        x.outcome = outcome;
    }
}
