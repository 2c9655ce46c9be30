//! Audit duty: following the ledger's events, a node
//! - as **executor** of a sampled receipt, publishes the receipt with its Merkle proof;
//! - as **auditor** or **dispute committee member**, receives the request from its holder
//!   (`POST /sortition/v1/audits/{id}/payload`), re-executes it exactly, and commits then
//!   reveals its verdict before the deadlines.
//!
//! A payload is judged only if its receipt is the one the ledger holds for the audit and the
//! body hashes to that receipt's request hash, so no one can make an auditor judge a
//! different request. Deliveries are checked on arrival too (see [`AuditDesk::deliver`]), so
//! that a flood of decoys cannot crowd the genuine payload out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sortition_api::{ApiError, ErrorKind};
use sortition_ledger::{AuditMethod, Event, TxKind, Verdict, verdict_commitment};
use sortition_ledger_client::{Cursor, CursorStore, EventHandler, LedgerClient};
use sortition_types::{
    AuditId, DisputeId, Hash32, NodeId, PublicKey, SignedReceipt, StackId, sha256,
};
use tokio::sync::watch;

use crate::claims::receipt_with_proof;
pub use crate::judge::{Scored, Tolerance, judge, score};
use crate::service::NodeState;

pub use sortition_api::audit::{Answer, AuditPayload};

/// Where an audit or dispute this node must judge stands.
#[derive(Default)]
struct Pending {
    /// Payloads delivered for the audit; the one whose receipt the ledger holds is judged.
    payloads: Vec<AuditPayload>,
    /// What the audited receipt must be, once this node knows the audit.
    expect: Option<Expected>,
    /// Disputes this node sits on, about this audit.
    disputes: Vec<DisputeId>,
    /// The audit itself (not only a dispute about it) is this node's to judge.
    auditor: bool,
    started: bool,
    /// When the first payload came for an audit this node had not heard of.
    since: Option<Instant>,
    /// Two different receipts the executor signed for the audited position, once seen (in
    /// deliveries, or one delivered and one on the ledger), and whether it was reported.
    equivocation: Option<(SignedReceipt, SignedReceipt)>,
    reported: bool,
}

impl Pending {
    /// Neither an audit nor a dispute of ours (yet): only someone's deliveries.
    fn is_unknown(&self) -> bool {
        self.expect.is_none() && !self.auditor && self.disputes.is_empty()
    }

    /// Keeps the first proof of equivocation that `r` makes with the receipt the ledger
    /// holds or with a delivered one.
    fn note_conflicts(&mut self, r: &SignedReceipt) {
        let Some(e) = &self.expect else { return };
        if self.equivocation.is_some() || !e.signed_for_position(r) {
            return;
        }
        let other = e
            .kept
            .iter()
            .chain(self.payloads.iter().map(|p| &p.receipt))
            .find(|q| q.receipt != r.receipt && e.signed_for_position(q));
        if let Some(q) = other {
            self.equivocation = Some((q.clone(), r.clone()));
        }
    }
}

/// What the audited receipt must be: the ledger's audit names the executor, the stack and
/// the receipt's position; its digest follows once the executor submitted the receipt (or
/// with the owner's challenge).
#[derive(Clone, Debug)]
pub struct Expected {
    pub executor: NodeId,
    /// The executor's receipt key as the ledger holds it (`None` if it could not be read).
    pub key: Option<PublicKey>,
    pub stack: StackId,
    pub sequence: u64,
    pub digest: Option<Hash32>,
    /// The signed receipt the ledger holds, once submitted (its digest is `digest`).
    pub kept: Option<SignedReceipt>,
}

impl Expected {
    /// Whether `r` is signed under the executor's ledger key for the audited position: two
    /// such receipts that differ prove the executor equivocated.
    fn signed_for_position(&self, r: &SignedReceipt) -> bool {
        let at = (r.receipt.node, r.receipt.stack, r.receipt.sequence);
        at == (self.executor, self.stack, self.sequence)
            && self.key.as_ref().is_some_and(|k| r.verify(k).is_ok())
    }

    /// Whether `r` can be the audited receipt.
    fn admits(&self, r: &SignedReceipt) -> Result<(), String> {
        if r.receipt.sequence != self.sequence {
            return Err(format!(
                "not the audited receipt: its sequence is {}, the audited position {}",
                r.receipt.sequence, self.sequence
            ));
        }
        if let Some(d) = self.digest {
            // The ledger checked that receipt's signature when it took it.
            return if r.receipt.digest() == d {
                Ok(())
            } else {
                Err("not the audited receipt: its digest differs from the ledger's".into())
            };
        }
        let r_at = (r.receipt.node, r.receipt.stack, r.receipt.sequence);
        if r_at != (self.executor, self.stack, self.sequence) {
            return Err(format!(
                "not the audited receipt: expected node {}, stack {}, sequence {}",
                self.executor, self.stack, self.sequence
            ));
        }
        match &self.key {
            Some(k) if r.verify(k).is_err() => Err(
                "the receipt's signature does not verify under the executor's ledger key".into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Candidate payloads kept per audit. Before its receipt's digest is known, the executor's
/// signature on a payload's receipt for the audited stack and position is what lets it in, so
/// only an executor signing conflicting receipts could fill this; once the digest is known,
/// everything else is dropped. A full audit answers 503, and holders retry.
const MAX_PAYLOADS_PER_AUDIT: usize = 16;
/// Audits this node has not heard of that may hold deliveries at once (a payload can arrive
/// just before the ledger event that names this node), and how long such deliveries are kept.
const MAX_UNKNOWN_AUDITS: usize = 64;
const UNKNOWN_AUDIT_TTL: Duration = Duration::from_secs(600);

/// Audit work in progress, shared between the event follower and the payload route.
#[derive(Default)]
pub struct AuditDesk {
    pending: Mutex<HashMap<AuditId, Pending>>,
}

impl AuditDesk {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AuditId, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a delivered payload: 400 if it cannot be the audited request, 503 (retry later)
    /// if the desk has no room for it now.
    pub fn deliver(&self, id: AuditId, p: AuditPayload) -> Result<(), ApiError> {
        let invalid = |m: String| ApiError::invalid("invalid_payload", m);
        let busy = |m: String| {
            ApiError::new(ErrorKind::Unavailable, "audit_payloads_full", m).with_retry_after(1)
        };
        if sha256(p.body.as_bytes()) != p.receipt.receipt.request_hash {
            return Err(invalid(
                "payload does not hash to the receipt's request_hash".into(),
            ));
        }
        let mut g = self.lock();
        if !g.contains_key(&id) {
            let now = Instant::now();
            g.retain(|_, e| {
                !(e.is_unknown() && e.since.is_some_and(|t| now - t > UNKNOWN_AUDIT_TTL))
            });
            if g.values().filter(|e| e.is_unknown()).count() >= MAX_UNKNOWN_AUDITS {
                return Err(busy(format!(
                    "{MAX_UNKNOWN_AUDITS} audits this node has not heard of hold payloads already"
                )));
            }
        }
        let entry = g.entry(id).or_default();
        // Refused or not, a second receipt signed for the audited position is evidence.
        entry.note_conflicts(&p.receipt);
        if let Some(e) = &entry.expect {
            e.admits(&p.receipt).map_err(invalid)?;
        }
        if entry.payloads.iter().any(|q| q.receipt == p.receipt) {
            return Ok(());
        }
        if entry.payloads.len() >= MAX_PAYLOADS_PER_AUDIT {
            return Err(busy(format!(
                "audit {id} already has {MAX_PAYLOADS_PER_AUDIT} candidate payloads"
            )));
        }
        entry.since.get_or_insert_with(Instant::now);
        entry.payloads.push(p);
        Ok(())
    }

    /// Records (or refines) what the audit's receipt must be and drops the candidates that
    /// cannot be it.
    pub fn expect(&self, id: AuditId, e: Expected) {
        let mut g = self.lock();
        let entry = g.entry(id).or_default();
        entry.expect = Some(e.clone());
        let delivered: Vec<SignedReceipt> =
            entry.payloads.iter().map(|p| p.receipt.clone()).collect();
        for r in &delivered {
            entry.note_conflicts(r);
        }
        entry.payloads.retain(|p| e.admits(&p.receipt).is_ok());
    }

    /// The ledger now holds the audited receipt: keep only its payload.
    fn learn_receipt(&self, id: AuditId, kept: &sortition_ledger::AuditedReceipt) {
        let e = self.lock().get(&id).and_then(|p| p.expect.clone());
        if let Some(e) = e.filter(|e| e.digest.is_none()) {
            self.expect(
                id,
                Expected {
                    digest: Some(kept.digest),
                    kept: Some(kept.signed.clone()),
                    ..e
                },
            );
        }
    }

    /// The proof of equivocation for audit `id`, the first time it is asked for.
    fn take_equivocation(&self, id: AuditId) -> Option<(SignedReceipt, SignedReceipt)> {
        let mut g = self.lock();
        let entry = g.get_mut(&id)?;
        if entry.reported {
            return None;
        }
        let proof = entry.equivocation.clone()?;
        entry.reported = true;
        Some(proof)
    }

    fn candidates(&self, id: AuditId) -> Vec<AuditPayload> {
        self.lock()
            .get(&id)
            .map(|p| p.payloads.clone())
            .unwrap_or_default()
    }
}

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
            if auditors.contains(&state.id) && state.adversary == Some(crate::adversary::Mode::Copy)
            {
                spawn_copier(state.clone(), client.clone(), audit);
            } else if auditors.contains(&state.id)
                && state.adversary != Some(crate::adversary::Mode::SkipAudits)
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
                state
                    .audits
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(audit)
                    .or_default()
                    .auditor = true;
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
            && state.adversary != Some(crate::adversary::Mode::SkipAudits) =>
        {
            expect_from_ledger(state, client, audit).await;
            state
                .audits
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(audit)
                .or_default()
                .disputes
                .push(dispute);
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
        for _ in 0..1200 {
            if let Ok(a) = client.audit(audit).await {
                if a.outcome.is_some() {
                    return;
                }
                if let Some(v) = a.reveals.values().next() {
                    return vote(&state, &client, Ballot::Audit(audit), *v).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

/// The height after which a judge stops waiting for its payload and votes `Unavailable`: a
/// quarter of what is left of the commit phase (ending at `commit_deadline`) before its end,
/// so that the vote still lands in time (silence is slashed as a missed deadline, and a
/// request in its executor's custody that most voters never got is the executor's fault).
async fn payload_deadline(client: &LedgerClient, commit_deadline: u64) -> Option<u64> {
    let now = client.status().await.ok()?.height;
    let left = commit_deadline.saturating_sub(now);
    Some(commit_deadline - left / 4)
}

/// The height by which a judge stops retrying its own trouble and votes: half-way from the
/// payload deadline (`payload_by`) to the end of the commit phase, and at least a block before
/// it, so the commit still lands.
fn judge_deadline(payload_by: Option<u64>, commit_deadline: u64) -> u64 {
    let last = commit_deadline.saturating_sub(1);
    let from = payload_by.unwrap_or(last).min(last);
    from + (last - from) / 2
}

/// Resolves once the ledger reaches `height` (polled; a ledger that cannot be read is asked
/// again).
async fn until_height(client: &LedgerClient, height: u64) {
    loop {
        if client.status().await.is_ok_and(|s| s.height >= height) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (bounded) for the payload, judges the request, and votes on the audit and on any
/// dispute about it that this node sits on (whose commit phase ends at `commit_deadline`).
fn spawn_judge(state: Arc<NodeState>, client: LedgerClient, audit: AuditId, commit_deadline: u64) {
    tokio::spawn(async move {
        let give_up = payload_deadline(&client, commit_deadline).await;
        // Anyone can post a payload, so only the one whose receipt is the audited one (its
        // digest is on the ledger once the executor submitted it, or from the challenge) is
        // judged: a decoy (an honest request of someone else) cannot clear a cheat.
        let mut payload = None;
        let mut misplaced = None;
        for _ in 0..120 {
            if let Ok(a) = client.audit(audit).await
                && let Some(kept) = a.receipt
            {
                // The receipt the executor proved at position i of its claim must be receipt
                // i: one with another sequence means the claim misplaces its receipts (what
                // a gap left by a lost write did), and the audit would judge the wrong one.
                if kept.signed.receipt.sequence != a.receipt_index {
                    misplaced = Some((kept.digest, kept.signed.receipt.sequence, a.receipt_index));
                    break;
                }
                state.audits.learn_receipt(audit, &kept);
                payload = state
                    .audits
                    .candidates(audit)
                    .into_iter()
                    .find(|p| p.receipt.receipt.digest() == kept.digest);
                if payload.is_some() {
                    break;
                }
            }
            if let Some(h) = give_up
                && client.status().await.is_ok_and(|s| s.height >= h)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        report_equivocation(&state, &client, audit).await;
        let (is_auditor, disputes) = {
            let mut g = state
                .audits
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let Some(p) = g.get_mut(&audit) else { return };
            let disputes = std::mem::take(&mut p.disputes);
            let auditor = p.auditor && !p.started;
            p.started = true;
            p.payloads.clear();
            (auditor, disputes)
        };
        if let Some((digest, sequence, index)) = misplaced {
            tracing::warn!(%audit, sequence, index, "the executor's claim holds receipt {sequence} at position {index}; voting mismatch");
            state.metrics.inc("audits_total", "misplaced_receipt", 1);
            let verdict = Verdict::Mismatch {
                evidence_hash: digest,
            };
            if is_auditor {
                vote(&state, &client, Ballot::Audit(audit), verdict).await;
            }
            for d in disputes {
                vote(&state, &client, Ballot::Dispute(d), verdict).await;
            }
            return;
        }
        let Some(payload) = payload else {
            // Say so rather than stay silent: silence is slashed as a missed deadline, while
            // `Unavailable` closes our part without reward or penalty.
            tracing::warn!(%audit, "no payload delivered for audit; voting unavailable");
            state.metrics.inc("audits_total", "unavailable", 1);
            if is_auditor {
                vote(&state, &client, Ballot::Audit(audit), Verdict::Unavailable).await;
            }
            for d in disputes {
                vote(&state, &client, Ballot::Dispute(d), Verdict::Unavailable).await;
            }
            return;
        };
        let method = match client.model(&payload.receipt.receipt.model).await {
            Ok(m) => m.spec.policy.audit.map(|a| a.method).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(%audit, error = %e, "model policy unavailable; re-executing");
                AuditMethod::Reexecute
            }
        };
        // This node's own trouble (busy, model missing, a failure) is retried until the vote
        // must go out, then voted `Unavailable`: never a `Mismatch` against the executor.
        let deadline = until_height(&client, judge_deadline(give_up, commit_deadline));
        let verdict =
            crate::judge::judge_in_time(&state, &payload, method, Default::default(), deadline)
                .await;
        tracing::info!(%audit, ?verdict, "judged audited request");
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
    // Polling the ledger's state (not retrying the transaction) keeps this key's
    // transaction queue free for other work meanwhile.
    for _ in 0..600 {
        match reveal_open(client, ballot).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::debug!(?ballot, error = %e, "could not read the ballot's phase"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
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
    // The next block is the earliest a reveal can land in.
    Ok(committed >= members || height + 1 > commit_deadline)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod desk_tests {
    use super::*;
    use sortition_types::{Custody, Keypair, ModelId, Receipt};

    fn payload(key: &Keypair, node: u64, stack: u64, sequence: u64, body: &str) -> AuditPayload {
        let receipt = Receipt {
            node: NodeId(node),
            stack: StackId(stack),
            sequence,
            model: ModelId::new("m"),
            model_digest: Hash32::ZERO,
            node_class: Hash32::ZERO,
            request_hash: sha256(body.as_bytes()),
            response_hash: Hash32::ZERO,
            input_tokens: 1,
            output_tokens: 1,
            sampling: Default::default(),
            timestamp_ms: 1,
            custody: Custody::Gateway,
        };
        AuditPayload {
            path: "/v1/chat/completions".into(),
            body: body.into(),
            receipt: SignedReceipt::sign(receipt, key),
            answer: None,
        }
    }

    fn status(r: Result<(), ApiError>) -> u16 {
        r.map_or_else(|e| e.status().as_u16(), |()| 202)
    }

    #[test]
    fn a_decoy_flood_cannot_crowd_out_the_genuine_payload() {
        let (desk, id) = (AuditDesk::default(), AuditId(7));
        let (executor, forger) = (
            Keypair::from_seed(b"executor"),
            Keypair::from_seed(b"forger"),
        );
        // Before the node hears of the audit, anything well-formed fills the slots.
        for i in 0..MAX_PAYLOADS_PER_AUDIT {
            let p = payload(&forger, 1, 2, 3, &format!("decoy {i}"));
            assert_eq!(status(desk.deliver(id, p)), 202);
        }
        let genuine = payload(&executor, 1, 2, 3, "genuine");
        // Full: retry later, not refused for good.
        assert_eq!(status(desk.deliver(id, genuine.clone())), 503);
        // The ledger names executor 1, stack 2, position 3: forged signatures are dropped.
        let expected = Expected {
            executor: NodeId(1),
            key: Some(executor.public()),
            stack: StackId(2),
            sequence: 3,
            digest: None,
            kept: None,
        };
        desk.expect(id, expected.clone());
        assert!(desk.candidates(id).is_empty());
        assert_eq!(
            status(desk.deliver(id, payload(&forger, 1, 2, 3, "x"))),
            400
        );
        assert_eq!(
            status(desk.deliver(id, payload(&executor, 1, 2, 4, "x"))),
            400
        );
        assert_eq!(status(desk.deliver(id, genuine.clone())), 202);
        // Forged receipts for the position prove nothing against the executor.
        assert!(desk.take_equivocation(id).is_none());
        // Conflicting receipts signed by the executor itself, until the digest is known: and
        // the pair proves it equivocated (reported once).
        let twin = payload(&executor, 1, 2, 3, "twin");
        assert_eq!(status(desk.deliver(id, twin.clone())), 202);
        assert_eq!(
            desk.take_equivocation(id),
            Some((genuine.receipt.clone(), twin.receipt.clone()))
        );
        assert!(desk.take_equivocation(id).is_none());
        desk.learn_receipt(id, &sortition_ledger::AuditedReceipt::of(&genuine.receipt));
        let left = desk.candidates(id);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].receipt, genuine.receipt);
        assert_eq!(status(desk.deliver(id, twin)), 400);
        // A body that is not the receipt's request.
        let mut wrong = genuine;
        wrong.body.push(' ');
        assert_eq!(status(desk.deliver(id, wrong)), 400);
    }

    #[test]
    fn deliveries_for_unknown_audits_are_bounded() {
        let desk = AuditDesk::default();
        let k = Keypair::from_seed(b"k");
        for a in 0..MAX_UNKNOWN_AUDITS as u64 {
            assert_eq!(
                status(desk.deliver(AuditId(a), payload(&k, 1, 1, a, "b"))),
                202
            );
        }
        let extra = AuditId(MAX_UNKNOWN_AUDITS as u64);
        assert_eq!(status(desk.deliver(extra, payload(&k, 1, 1, 0, "b"))), 503);
        // An audit the node was named in is not "unknown": its deliveries still land.
        desk.expect(
            extra,
            Expected {
                executor: NodeId(1),
                key: Some(k.public()),
                stack: StackId(1),
                sequence: 0,
                digest: None,
                kept: None,
            },
        );
        assert_eq!(status(desk.deliver(extra, payload(&k, 1, 1, 0, "b"))), 202);
    }

    /// The executor claimed one receipt and gave the holder another for the same position:
    /// the holder's delivery is refused (it is not the audited request), but with the
    /// receipt the ledger holds it proves the equivocation.
    #[test]
    fn a_delivered_receipt_that_differs_from_the_claimed_one_is_proof() {
        let (desk, id) = (AuditDesk::default(), AuditId(9));
        let executor = Keypair::from_seed(b"executor");
        let claimed = payload(&executor, 1, 2, 3, "what the claim commits to");
        let given = payload(&executor, 1, 2, 3, "what the gateway was given");
        desk.expect(
            id,
            Expected {
                executor: NodeId(1),
                key: Some(executor.public()),
                stack: StackId(2),
                sequence: 3,
                digest: Some(claimed.receipt.receipt.digest()),
                kept: Some(claimed.receipt.clone()),
            },
        );
        let forged = payload(&Keypair::from_seed(b"forger"), 1, 2, 3, "forged");
        assert_eq!(status(desk.deliver(id, forged)), 400);
        assert!(desk.take_equivocation(id).is_none());
        assert_eq!(status(desk.deliver(id, given.clone())), 400);
        assert_eq!(
            desk.take_equivocation(id),
            Some((claimed.receipt, given.receipt))
        );
    }
}
