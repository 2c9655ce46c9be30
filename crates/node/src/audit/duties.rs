//! The duties that ledger events call for: submitting a sampled receipt's proof, reporting
//! equivocation, judging and voting (commit, then reveal) before the deadlines.

use std::sync::Arc;
use std::time::Duration;

use sortition_ledger::{AuditMethod, Event, TxKind, Verdict, verdict_commitment};
use sortition_ledger_client::{Cursor, CursorStore, EventHandler, LedgerClient};
use sortition_types::{AuditId, DisputeId, Hash32};
use tokio::sync::watch;

use crate::behaviour::AuditConduct;
use crate::claims::receipt_with_proof;
use crate::service::NodeState;

use super::duty::{AwaitingPayload, Next, Sight, Unjudged, may_reveal};
use super::*;

/// Reads the ledger's audit and the executor's key into the desk's expectation for it.
async fn expect_from_ledger(state: &NodeState, client: &LedgerClient, audit: AuditId) {
    let a = match client.audit(audit).await {
        Ok(a) => a,
        Err(e) => {
            return tracing::warn!(%audit, error = %e, "audit unreadable; payloads unchecked until its receipt is known");
        }
    };
    let key = client.node(a.executor).await.ok().map(|n| n.operator);
    state.audits.expect(
        audit,
        Expected {
            executor: a.executor,
            key,
            stack: a.stack,
            sequence: a.receipt_index,
            digest: a.receipt.as_ref().map(|r| r.digest),
            kept: a.receipt.map(|r| r.signed),
        },
    );
}

/// Follows the ledger's events from the cursor stored in the node's database until `stop`.
pub async fn follow(state: Arc<NodeState>, client: LedgerClient, mut stop: watch::Receiver<bool>) {
    let store = StoredCursor(state.clone());
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    sortition_ledger_client::follow("audits", client, store, Duties(state), shutdown).await
}

/// The audit follower's cursor, in the node's database (`meta/cursor`).
struct StoredCursor(Arc<NodeState>);

impl CursorStore for StoredCursor {
    fn load(&self) -> Option<Cursor> {
        self.0
            .store
            .get_meta("cursor")
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
    }
    fn save(&mut self, next: Cursor) -> Result<(), String> {
        self.0
            .store
            .set_meta("cursor", next.to_string().as_bytes())
            .map_err(|e| e.to_string())
    }
}

/// The node's duties that ledger events call for.
struct Duties(Arc<NodeState>);

impl EventHandler for Duties {
    async fn handle(&mut self, client: &LedgerClient, _at: Cursor, event: Event) {
        handle(&self.0, client, event).await
    }
}

async fn handle(state: &Arc<NodeState>, client: &LedgerClient, event: Event) {
    match event {
        Event::AuditOpened {
            audit,
            claim,
            stack,
            executor,
            receipt_index,
            auditors,
            commit_deadline,
            ..
        } => {
            // A challenged receipt is on the ledger already; a sampled one is ours to submit.
            if executor == state.id && claim.is_some() {
                submit_receipt(state, client, audit, stack, receipt_index).await;
            }
            // Only we hold a confidential request: re-seal it to the auditors.
            if executor == state.id && crate::confidential::holds(state, stack, receipt_index) {
                tokio::spawn(crate::confidential::deliver_for_audit(
                    state.clone(),
                    client.clone(),
                    audit,
                    stack,
                    receipt_index,
                    auditors.clone(),
                ));
            }
            if auditors.contains(&state.id)
                && state.behaviour.audit_conduct() == AuditConduct::CopyOthers
            {
                spawn_copier(state.clone(), client.clone(), audit);
            } else if auditors.contains(&state.id)
                && state.behaviour.audit_conduct() != AuditConduct::Skip
            {
                let key = client.node(executor).await.ok().map(|n| n.operator);
                state.audits.expect(
                    audit,
                    Expected {
                        executor,
                        key,
                        stack,
                        sequence: receipt_index,
                        digest: None,
                        kept: None,
                    },
                );
                state.audits.sit_as_auditor(audit);
                spawn_judge(state.clone(), client.clone(), audit, commit_deadline);
            }
        }
        Event::DisputeOpened {
            audit,
            ref committee,
            ..
        } if state.confidential.is_some() && !committee.contains(&state.id) => {
            if let Ok(a) = client.audit(audit).await
                && a.executor == state.id
                && crate::confidential::holds(state, a.stack, a.receipt_index)
            {
                tokio::spawn(crate::confidential::deliver_for_audit(
                    state.clone(),
                    client.clone(),
                    audit,
                    a.stack,
                    a.receipt_index,
                    committee.clone(),
                ));
            }
        }
        Event::DisputeOpened {
            dispute,
            audit,
            committee,
            commit_deadline,
            ..
        } if committee.contains(&state.id)
            && state.behaviour.audit_conduct() != AuditConduct::Skip =>
        {
            expect_from_ledger(state, client, audit).await;
            state.audits.sit_on_dispute(audit, dispute);
            spawn_judge(state.clone(), client.clone(), audit, commit_deadline);
        }
        _ => {}
    }
}

async fn submit_receipt(
    state: &NodeState,
    client: &LedgerClient,
    audit: AuditId,
    stack: sortition_types::StackId,
    index: u64,
) {
    let receipts = match state.store.receipts(stack) {
        Ok(r) => r,
        Err(e) => return tracing::error!(%audit, error = %e, "cannot read receipts"),
    };
    // The claim holds the receipts in position (see `claims::in_position`): so does the proof.
    let receipts = crate::claims::in_position(&receipts);
    let Some((receipt, proof)) = receipt_with_proof(receipts, index) else {
        return tracing::error!(%audit, %stack, index, "sampled receipt not found");
    };
    match client
        .send(
            &state.key,
            TxKind::SubmitReceipt {
                audit,
                receipt,
                proof,
            },
        )
        .await
    {
        Ok(_) => tracing::info!(%audit, "submitted sampled receipt"),
        Err(e) => tracing::warn!(%audit, error = %e, "receipt submission refused"),
    }
}

/// Sends the ledger the proof that the executor of `audit` signed two different receipts for
/// its position, if this node holds one: the executor is slashed on the spot and the reporter
/// paid, whatever the audit's verdicts.
async fn report_equivocation(state: &NodeState, client: &LedgerClient, audit: AuditId) {
    let Some((first, second)) = state.audits.take_equivocation(audit) else {
        return;
    };
    tracing::warn!(%audit, node = %first.receipt.node, "the executor signed two receipts for the audited position; reporting");
    match client
        .send(
            &state.key,
            TxKind::ReportEquivocation {
                first: Box::new(first),
                second: Box::new(second),
            },
        )
        .await
    {
        Ok(_) => state.metrics.inc("equivocations_reported_total", "", 1),
        Err(e) => tracing::warn!(%audit, error = %e, "equivocation report refused"),
    }
}

/// The `copy` adversary's audit duty: wait for another auditor's revealed verdict and vote
/// the same, without re-executing. Its commit can only come after the commit phase.
fn spawn_copier(state: Arc<NodeState>, client: LedgerClient, audit: AuditId) {
    tokio::spawn(async move {
        for _ in 0..600 {
            if let Ok(a) = client.audit(audit).await {
                if a.outcome.is_some() {
                    return;
                }
                if let Some(v) = a.reveals.values().next() {
                    return vote(&state, &client, Ballot::Audit(audit), *v).await;
                }
            }
            // Reveals land in blocks: look again at the next one.
            state.head.next_block(BLOCK_WAIT).await;
        }
    });
}

/// The longest a duty waits for the next block before it looks at the ledger again anyway
/// (a head stream that is down, or a ledger that makes no blocks while idle).
const BLOCK_WAIT: Duration = Duration::from_secs(5);

/// Looks a duty makes for its payload at most (one per block or delivery), whatever its
/// deadline: a bound for a duty that could not read the height when it began.
const MAX_LOOKS: usize = 120;

/// Waits (bounded) for the payload, judges the request, and votes on the audit and on any
/// dispute about it that this node sits on (whose commit phase ends at `commit_deadline`).
/// The decisions are [`AwaitingPayload`]'s; this drives it with what the ledger and the desk
/// show, at each block and each delivery.
fn spawn_judge(state: Arc<NodeState>, client: LedgerClient, audit: AuditId, commit_deadline: u64) {
    tokio::spawn(async move {
        let now = client.status().await.ok().map(|s| s.height);
        let duty = AwaitingPayload::new(now, commit_deadline);
        let mut next = duty.no_payload();
        for _ in 0..MAX_LOOKS {
            let (kept, index) = match client.audit(audit).await {
                Ok(a) => (a.receipt, a.receipt_index),
                Err(_) => (None, 0),
            };
            if let Some(k) = kept.as_ref().filter(|k| k.signed.receipt.sequence == index) {
                state.audits.learn_receipt(audit, k);
            }
            let delivered = state.audits.candidates(audit);
            next = duty.look(&Sight {
                height: state.head.now(),
                index,
                kept: kept.as_ref(),
                delivered: &delivered,
            });
            if !matches!(next, Next::Wait) {
                break;
            }
            // The receipt lands in a block; the payload comes to the desk: either wakes us.
            tokio::select! {
                () = state.head.next_block(BLOCK_WAIT) => {}
                () = state.audits.delivery() => {}
            }
        }
        if matches!(next, Next::Wait) {
            next = duty.no_payload();
        }
        report_equivocation(&state, &client, audit).await;
        let Some((is_auditor, disputes)) = state.audits.begin_voting(audit) else {
            return;
        };
        let verdict = match next {
            Next::Vote { verdict, why } => {
                match why {
                    Unjudged::Misplaced { sequence, index } => {
                        tracing::warn!(%audit, sequence, index, "the executor's claim holds receipt {sequence} at position {index}; voting mismatch");
                        state.metrics.inc("audits_total", "misplaced_receipt", 1);
                    }
                    Unjudged::NoPayload => {
                        // Say so rather than stay silent: silence is slashed as a missed
                        // deadline, while `Unavailable` closes our part without reward or
                        // penalty.
                        tracing::warn!(%audit, "no payload delivered for audit; voting unavailable");
                        state.metrics.inc("audits_total", "unavailable", 1);
                    }
                }
                verdict
            }
            Next::Judge { payload, by } => {
                let method = match client.model(&payload.receipt.receipt.model).await {
                    Ok(m) => m.spec.policy.audit.map(|a| a.method).unwrap_or_default(),
                    Err(e) => {
                        tracing::warn!(%audit, error = %e, "model policy unavailable; re-executing");
                        AuditMethod::Reexecute
                    }
                };
                // This node's own trouble (busy, model missing, a failure) is retried until
                // the vote must go out, then voted `Unavailable`: never a `Mismatch` against
                // the executor.
                let deadline = state.head.reached(by);
                let verdict = crate::judge::judge_in_time(
                    &state,
                    &payload,
                    method,
                    Default::default(),
                    deadline,
                )
                .await;
                tracing::info!(%audit, ?verdict, "judged audited request");
                verdict
            }
            Next::Wait => Verdict::Unavailable,
        };
        if is_auditor {
            vote(&state, &client, Ballot::Audit(audit), verdict).await;
        }
        for d in disputes {
            vote(&state, &client, Ballot::Dispute(d), verdict).await;
        }
    });
}

#[derive(Clone, Copy, Debug)]
enum Ballot {
    Audit(AuditId),
    Dispute(DisputeId),
}

/// Commits, then reveals once the ledger lets it (all committed, or the commit phase over).
async fn vote(state: &NodeState, client: &LedgerClient, ballot: Ballot, verdict: Verdict) {
    let mut salt = [0u8; 32];
    if getrandom::fill(&mut salt).is_err() {
        return tracing::error!("no OS randomness for a verdict salt");
    }
    let salt = Hash32(salt);
    let commitment = verdict_commitment(&verdict, &salt, &state.key.public());
    let commit = match ballot {
        Ballot::Audit(audit) => TxKind::CommitVerdict { audit, commitment },
        Ballot::Dispute(dispute) => TxKind::CommitVote {
            dispute,
            commitment,
        },
    };
    if let Err(e) = client.send(&state.key, commit).await {
        return tracing::warn!(?ballot, error = %e, "commit refused");
    }
    // Reveal once the ledger allows it: every member committed, or the commit phase over.
    // Both happen in blocks, so the ballot's phase is read once per block (not by retrying
    // the transaction, which keeps this key's transactions free for other work meanwhile).
    for _ in 0..600 {
        match reveal_open(client, ballot).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::debug!(?ballot, error = %e, "could not read the ballot's phase"),
        }
        state.head.next_block(BLOCK_WAIT).await;
    }
    let reveal = match ballot {
        Ballot::Audit(audit) => TxKind::RevealVerdict {
            audit,
            verdict,
            salt,
        },
        Ballot::Dispute(dispute) => TxKind::RevealVote {
            dispute,
            verdict,
            salt,
        },
    };
    match client.send(&state.key, reveal).await {
        Ok(_) => tracing::info!(?ballot, ?verdict, "verdict revealed"),
        Err(e) => tracing::warn!(?ballot, error = %e, "reveal refused"),
    }
}

/// Whether the reveal phase of `ballot` has begun, by the ledger's current state.
async fn reveal_open(
    client: &LedgerClient,
    ballot: Ballot,
) -> Result<bool, sortition_ledger_client::ClientError> {
    let height = client.status().await?.height;
    let (committed, members, commit_deadline) = match ballot {
        Ballot::Audit(id) => {
            let a = client.audit(id).await?;
            (a.commits.len(), a.auditors.len(), a.commit_deadline)
        }
        Ballot::Dispute(id) => {
            let d = client.dispute(id).await?;
            (d.commits.len(), d.committee.len(), d.commit_deadline)
        }
    };
    Ok(may_reveal(committed, members, commit_deadline, height))
}
