//! An audit duty's decisions, as a state machine without I/O.
//!
//! A judge's duty goes: awaiting its payload → judged (or, without one, a verdict of its own)
//! → committed → revealed. What decides each step is here, fed what the driver
//! ([`super::duties`]) sees — the chain's height (the duty's only clock), the audited receipt
//! as the ledger holds it, the payloads delivered to the desk, the ballot's commits — so every
//! transition is unit-tested by feeding it sights, with no network and no wall clock.

use sortition_ledger::{AuditedReceipt, Verdict};

use super::AuditPayload;

/// The height at which a judge stops waiting for its payload and votes `Unavailable`, seen at
/// height `now` for a commit phase that ends at `commit_deadline`: a quarter of what is left
/// before its end, so that the vote still lands in time (silence is slashed as a missed
/// deadline, and a request in its executor's custody that most voters never got is the
/// executor's fault).
pub(crate) fn payload_deadline(now: u64, commit_deadline: u64) -> u64 {
    let left = commit_deadline.saturating_sub(now);
    commit_deadline - left / 4
}

/// The height by which a judge stops retrying its own trouble and votes: half-way from the
/// payload deadline (`payload_by`) to the end of the commit phase, and at least a block before
/// it, so the commit still lands.
pub(crate) fn judge_deadline(payload_by: Option<u64>, commit_deadline: u64) -> u64 {
    let last = commit_deadline.saturating_sub(1);
    let from = payload_by.unwrap_or(last).min(last);
    from + (last - from) / 2
}

/// Whether a ballot's reveal may go out in the next block: every member committed, or the
/// commit phase is over by then.
pub(crate) fn may_reveal(
    committed: usize,
    members: usize,
    commit_deadline: u64,
    height: u64,
) -> bool {
    committed >= members || height + 1 > commit_deadline
}

/// What the driver sees when it looks (at each block, and at each delivery to the desk).
pub(crate) struct Sight<'a> {
    /// The chain's height.
    pub height: u64,
    /// The audited position in the executor's claim.
    pub index: u64,
    /// The audited receipt as the ledger holds it, once the executor submitted it (or a
    /// challenge put it there).
    pub kept: Option<&'a AuditedReceipt>,
    /// The payloads delivered to the desk for this audit (decoys included).
    pub delivered: &'a [AuditPayload],
}

/// Why a duty votes without judging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unjudged {
    /// The claim holds receipt `sequence` at the audited position `index`: the audit would
    /// judge the wrong request, so the claim itself is wrong.
    Misplaced { sequence: u64, index: u64 },
    /// No payload whose receipt is the audited one came by the payload deadline.
    NoPayload,
}

/// What the duty does next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Look again at the next block or delivery.
    Wait,
    /// Judge this payload (its receipt is the audited one); the verdict is due by height `by`.
    Judge { payload: Box<AuditPayload>, by: u64 },
    /// Vote `verdict` without judging, for this reason.
    Vote { verdict: Verdict, why: Unjudged },
}

/// A duty awaiting the payload it must judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AwaitingPayload {
    /// When it stops waiting (`None`: the height was unknown when the duty began; it then
    /// waits until the driver's bound).
    pub give_up: Option<u64>,
    pub commit_deadline: u64,
}

impl AwaitingPayload {
    /// A duty that began at height `now` (if known), for a commit phase ending at
    /// `commit_deadline`.
    pub fn new(now: Option<u64>, commit_deadline: u64) -> AwaitingPayload {
        AwaitingPayload {
            give_up: now.map(|h| payload_deadline(h, commit_deadline)),
            commit_deadline,
        }
    }

    /// The next step, from what is seen now. Only a payload whose receipt is the one the
    /// ledger holds for the audit is judged: anyone can deliver one, so a decoy (an honest
    /// request of someone else) cannot clear a cheat.
    pub fn look(&self, s: &Sight<'_>) -> Next {
        if let Some(kept) = s.kept {
            // The receipt the executor proved at position i of its claim must be receipt i.
            let sequence = kept.signed.receipt.sequence;
            if sequence != s.index {
                return Next::Vote {
                    verdict: Verdict::Mismatch {
                        evidence_hash: kept.digest,
                    },
                    why: Unjudged::Misplaced {
                        sequence,
                        index: s.index,
                    },
                };
            }
            if let Some(p) = s
                .delivered
                .iter()
                .find(|p| p.receipt.receipt.digest() == kept.digest)
            {
                return Next::Judge {
                    payload: Box::new(p.clone()),
                    by: judge_deadline(self.give_up, self.commit_deadline),
                };
            }
        }
        if self.give_up.is_some_and(|h| s.height >= h) {
            return self.no_payload();
        }
        Next::Wait
    }

    /// What the duty votes when it stops waiting without the payload.
    pub fn no_payload(&self) -> Next {
        Next::Vote {
            verdict: Verdict::Unavailable,
            why: Unjudged::NoPayload,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sortition_types::{
        Custody, Hash32, Keypair, ModelId, NodeId, Receipt, SignedReceipt, StackId, sha256,
    };

    fn signed(sequence: u64, body: &str) -> SignedReceipt {
        let receipt = Receipt {
            node: NodeId(3),
            stack: StackId(9),
            sequence,
            model: ModelId::new("m"),
            model_digest: Hash32::default(),
            node_class: Hash32::default(),
            request_hash: sha256(body.as_bytes()),
            response_hash: Hash32::default(),
            input_tokens: 4,
            output_tokens: 2,
            sampling: Default::default(),
            timestamp_ms: 0,
            custody: Custody::Gateway,
        };
        SignedReceipt::sign(receipt, &Keypair::from_seed(b"executor"))
    }

    fn payload(r: &SignedReceipt, body: &str) -> AuditPayload {
        AuditPayload {
            path: "/v1/chat/completions".into(),
            body: body.into(),
            receipt: r.clone(),
            answer: None,
        }
    }

    fn sight<'a>(
        height: u64,
        kept: Option<&'a AuditedReceipt>,
        delivered: &'a [AuditPayload],
    ) -> Sight<'a> {
        Sight {
            height,
            index: 5,
            kept,
            delivered,
        }
    }

    #[test]
    fn deadlines_leave_room_for_the_vote() {
        // Begun at 100, commits due by 220: the payload is awaited until 190, the verdict
        // is due by 204, a block before the end at the latest.
        assert_eq!(payload_deadline(100, 220), 190);
        assert_eq!(judge_deadline(Some(190), 220), 204);
        assert_eq!(judge_deadline(None, 220), 219);
        assert_eq!(judge_deadline(Some(500), 220), 219);
        // Begun at or past the deadline: no room left, nothing underflows.
        assert_eq!(payload_deadline(300, 220), 220);
        assert_eq!(judge_deadline(Some(0), 0), 0);
        assert_eq!(
            AwaitingPayload::new(Some(100), 220),
            AwaitingPayload {
                give_up: Some(190),
                commit_deadline: 220
            }
        );
    }

    /// Blocks pass and payloads arrive: the duty waits through a missing receipt, a receipt
    /// without its payload and a decoy, and judges the genuine payload as soon as it comes.
    #[test]
    fn only_the_audited_payload_is_judged() {
        let duty = AwaitingPayload::new(Some(100), 220);
        let audited = signed(5, "the audited request");
        let kept = AuditedReceipt::of(&audited);
        let decoy = payload(
            &signed(5, "someone else's request"),
            "someone else's request",
        );
        let genuine = payload(&audited, "the audited request");

        assert!(matches!(duty.look(&sight(101, None, &[])), Next::Wait));
        // A payload before the receipt is on the ledger cannot be told from a decoy yet.
        assert!(matches!(
            duty.look(&sight(102, None, std::slice::from_ref(&genuine))),
            Next::Wait
        ));
        assert!(matches!(
            duty.look(&sight(103, Some(&kept), &[])),
            Next::Wait
        ));
        let delivered = [decoy.clone()];
        assert!(matches!(
            duty.look(&sight(104, Some(&kept), &delivered)),
            Next::Wait
        ));
        let delivered = [decoy, genuine];
        match duty.look(&sight(105, Some(&kept), &delivered)) {
            Next::Judge { payload, by } => {
                assert_eq!(payload.body, "the audited request");
                assert_eq!(by, 204);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Without the payload the duty votes `Unavailable` at the payload deadline, not before;
    /// a payload that is there at that height is judged all the same.
    #[test]
    fn a_payload_that_never_comes_is_voted_unavailable_at_the_deadline() {
        let duty = AwaitingPayload::new(Some(100), 220);
        let audited = signed(5, "the audited request");
        let kept = AuditedReceipt::of(&audited);
        assert!(matches!(
            duty.look(&sight(189, Some(&kept), &[])),
            Next::Wait
        ));
        match duty.look(&sight(190, Some(&kept), &[])) {
            Next::Vote { verdict, why } => {
                assert_eq!(verdict, Verdict::Unavailable);
                assert_eq!(why, Unjudged::NoPayload);
            }
            other => panic!("{other:?}"),
        }
        let delivered = [payload(&audited, "the audited request")];
        assert!(matches!(
            duty.look(&sight(190, Some(&kept), &delivered)),
            Next::Judge { .. }
        ));
        // A duty that could not read the height when it began waits for the driver's bound.
        let blind = AwaitingPayload::new(None, 220);
        assert!(matches!(
            blind.look(&sight(10_000, Some(&kept), &[])),
            Next::Wait
        ));
    }

    /// A claim that holds another receipt at the audited position is voted a mismatch with
    /// the receipt the ledger holds as evidence, whatever was delivered.
    #[test]
    fn a_misplaced_receipt_is_a_mismatch() {
        let duty = AwaitingPayload::new(Some(100), 220);
        let wrong = signed(4, "another request");
        let kept = AuditedReceipt::of(&wrong);
        let delivered = [payload(&wrong, "another request")];
        match duty.look(&sight(101, Some(&kept), &delivered)) {
            Next::Vote { verdict, why } => {
                assert_eq!(
                    verdict,
                    Verdict::Mismatch {
                        evidence_hash: kept.digest
                    }
                );
                assert_eq!(
                    why,
                    Unjudged::Misplaced {
                        sequence: 4,
                        index: 5
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reveal_waits_for_every_commit_or_the_phase_end() {
        // 2 of 3 committed, commits due by 220.
        assert!(!may_reveal(2, 3, 220, 218));
        assert!(
            may_reveal(2, 3, 220, 220),
            "the next block is past the phase"
        );
        assert!(may_reveal(3, 3, 220, 100), "everyone committed");
    }
}
