//! The audit desk: payloads delivered for audits, checked on arrival against what the
//! ledger says each audit's receipt must be, kept until they are judged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sortition_types::{
    AuditId, DisputeId, Hash32, NodeId, PublicKey, SignedReceipt, StackId, sha256,
};

use sortition_api::audit::AuditPayload;

use crate::error::NodeError;

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
    /// Woken at each payload taken in.
    delivered: tokio::sync::Notify,
}

impl AuditDesk {
    /// Resolves at the next payload the desk takes in (for any audit).
    pub async fn delivery(&self) {
        self.delivered.notified().await
    }

    /// Records that the audit itself (not only a dispute about it) is this node's to judge.
    pub(super) fn sit_as_auditor(&self, id: AuditId) {
        self.lock().entry(id).or_default().auditor = true;
    }

    /// Records that this node sits on `dispute`, about audit `id`.
    pub(super) fn sit_on_dispute(&self, id: AuditId, dispute: DisputeId) {
        self.lock().entry(id).or_default().disputes.push(dispute);
    }

    /// Closes the audit's desk for judging: whether the audit is still this node's to vote
    /// on (only once), and the disputes it sits on; the payloads are dropped. `None` when
    /// the desk holds nothing for it.
    pub(super) fn begin_voting(&self, id: AuditId) -> Option<(bool, Vec<DisputeId>)> {
        let mut g = self.lock();
        let p = g.get_mut(&id)?;
        let disputes = std::mem::take(&mut p.disputes);
        let auditor = p.auditor && !p.started;
        p.started = true;
        p.payloads.clear();
        Some((auditor, disputes))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AuditId, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a delivered payload: 400 if it cannot be the audited request, 503 (retry later)
    /// if the desk has no room for it now.
    pub fn deliver(&self, id: AuditId, p: AuditPayload) -> Result<(), NodeError> {
        let invalid = NodeError::InvalidPayload;
        let busy = NodeError::AuditPayloadsFull;
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
        drop(g);
        self.delivered.notify_waiters();
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
    pub(super) fn learn_receipt(&self, id: AuditId, kept: &sortition_ledger::AuditedReceipt) {
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
    pub(super) fn take_equivocation(&self, id: AuditId) -> Option<(SignedReceipt, SignedReceipt)> {
        let mut g = self.lock();
        let entry = g.get_mut(&id)?;
        if entry.reported {
            return None;
        }
        let proof = entry.equivocation.clone()?;
        entry.reported = true;
        Some(proof)
    }

    pub(super) fn candidates(&self, id: AuditId) -> Vec<AuditPayload> {
        self.lock()
            .get(&id)
            .map(|p| p.payloads.clone())
            .unwrap_or_default()
    }
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

    fn status(r: Result<(), NodeError>) -> u16 {
        r.map_or_else(
            |e| sortition_api::ApiError::from(e).status().as_u16(),
            |()| 202,
        )
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
