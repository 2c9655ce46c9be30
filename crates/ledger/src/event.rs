//! Everything that happened, as typed events. Events are the ledger's output to the world
//! (nodes learn they are auditors from `AuditOpened`, owners that they were refunded, ...).

use serde::{Deserialize, Serialize};
use sortition_types::{
    Amount, AuditId, ClaimId, DisputeId, Hash32, ModelId, NodeId, PublicKey, StackId, Units,
};

use crate::state::{AuditOutcome, SlashReason};
use crate::tx::Verdict;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Minted {
        to: PublicKey,
        amount: Amount,
    },
    Transferred {
        from: PublicKey,
        to: PublicKey,
        amount: Amount,
    },
    ModelRegistered {
        model: ModelId,
        min_collateral: Amount,
    },
    NodeRegistered {
        node: NodeId,
        operator: PublicKey,
        collateral: Amount,
    },
    NodeUpdated {
        node: NodeId,
        collateral: Amount,
    },
    NodePaused {
        node: NodeId,
    },
    NodeResumed {
        node: NodeId,
    },
    NodeLeaving {
        node: NodeId,
        unbonded_at_height: u64,
    },
    NodeUnbonded {
        node: NodeId,
    },
    CollateralWithdrawn {
        node: NodeId,
        amount: Amount,
    },
    KeyRotated {
        node: NodeId,
        epoch: u64,
        key: Hash32,
    },
    StackBought {
        stack: StackId,
        owner: PublicKey,
        node: NodeId,
        model: ModelId,
        units: Units,
        price_per_m: Amount,
        escrow: Amount,
    },
    ClaimCommitted {
        claim: ClaimId,
        stack: StackId,
        node: NodeId,
        units_used: Units,
        settles_at_height: u64,
    },
    AuditOpened {
        audit: AuditId,
        /// `None` for a challenge of a stack not claimed yet.
        claim: Option<ClaimId>,
        stack: StackId,
        owner: PublicKey,
        executor: NodeId,
        model: ModelId,
        receipt_index: u64,
        auditors: Vec<NodeId>,
        wanted: u8,
        commit_deadline: u64,
        reveal_deadline: u64,
    },
    /// The stack's owner challenged one receipt; an `AuditOpened` for it follows.
    ReceiptChallenged {
        audit: AuditId,
        stack: StackId,
        sequence: u64,
        owner: PublicKey,
        bond: Amount,
    },
    ReceiptSubmitted {
        audit: AuditId,
        request_hash: Hash32,
        response_hash: Hash32,
    },
    VerdictCommitted {
        audit: AuditId,
        auditor: NodeId,
    },
    VerdictRevealed {
        audit: AuditId,
        auditor: NodeId,
        verdict: Verdict,
    },
    AuditClosed {
        audit: AuditId,
        outcome: AuditOutcome,
    },
    DisputeOpened {
        dispute: DisputeId,
        audit: AuditId,
        committee: Vec<NodeId>,
        commit_deadline: u64,
        reveal_deadline: u64,
    },
    VoteCommitted {
        dispute: DisputeId,
        member: NodeId,
    },
    VoteRevealed {
        dispute: DisputeId,
        member: NodeId,
        verdict: Verdict,
    },
    DisputeResolved {
        dispute: DisputeId,
        /// For a wrong answer or a withheld request (the `Slashed` reason says which).
        executor_at_fault: bool,
        mismatch_votes: u32,
        match_votes: u32,
        /// Members that said they never got the request.
        unavailable_votes: u32,
    },
    Slashed {
        node: NodeId,
        amount: Amount,
        reason: SlashReason,
    },
    Rewarded {
        node: NodeId,
        to: PublicKey,
        amount: Amount,
    },
    /// Two different receipts signed by `node` for one position were shown; `reporter` got
    /// `reward` out of the slash.
    EquivocationProven {
        node: NodeId,
        stack: StackId,
        sequence: u64,
        reporter: PublicKey,
        reward: Amount,
    },
    Settled {
        claim: ClaimId,
        stack: StackId,
        node: NodeId,
        paid: Amount,
        fee: Amount,
        refunded: Amount,
        /// The cost of the receipts the owner disowned, sent to the treasury instead of paid
        /// to the node or refunded (see `TxKind::DisownReceipt`).
        #[serde(default)]
        burned: Amount,
    },
    Refunded {
        stack: StackId,
        owner: PublicKey,
        amount: Amount,
    },
    StackExpired {
        stack: StackId,
    },
    EpochTurned {
        epoch: u64,
        /// The new epoch's nonce: confidential keys of this epoch must bind it.
        nonce: Hash32,
        fees_last_epoch: Amount,
    },
    /// The owner of `stack` disowned receipt `sequence` of `node`: its `units` are burned at
    /// settlement instead of paid.
    ReceiptDisowned {
        stack: StackId,
        node: NodeId,
        sequence: u64,
        units: Units,
    },
    /// A validator was proven to have signed conflicting votes in `view`.
    ValidatorFaultRecorded {
        validator: String,
        view: u64,
        kind: crate::state::ValidatorFaultKind,
    },
}
