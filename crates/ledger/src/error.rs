//! Why a transaction or a block was refused. One variant per refusal.

use crate::beacon::BeaconError;
use serde::{Deserialize, Serialize};
use sortition_types::{Amount, AuditId, ClaimId, DisputeId, ModelId, NodeId, StackId, Units};

/// A transaction was refused. A refused transaction changes nothing in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LedgerError {
    #[error("signature does not verify against the sender's key")]
    BadSignature,
    #[error("transaction is for chain {got:?}, this ledger is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error("wrong nonce: expected {expected}, got {got}")]
    WrongNonce { expected: u64, got: u64 },
    #[error("transaction expired at {expires_at_ms} ms, block time is {now_ms} ms")]
    Expired { expires_at_ms: u64, now_ms: u64 },
    #[error("insufficient funds: need {need}, have {have}")]
    InsufficientFunds { need: Amount, have: Amount },
    #[error("amount must be greater than zero")]
    ZeroAmount,
    #[error("arithmetic overflow")]
    Overflow,
    #[error("faucet is disabled on this chain")]
    FaucetDisabled,
    #[error("only the admin account may do this")]
    NotAdmin,
    #[error("model {0} is already registered")]
    ModelExists(ModelId),
    #[error("unknown model {0}")]
    UnknownModel(ModelId),
    #[error("invalid security policy: {0}")]
    InvalidPolicy(String),
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("this key has no registered node")]
    NotANode,
    #[error("this key already operates node {0}")]
    NodeExists(NodeId),
    #[error("collateral below minimum: need {need}, have {have}")]
    CollateralBelowMinimum { need: Amount, have: Amount },
    #[error("not an equivocation: {0}")]
    NotAnEquivocation(String),
    #[error("not evidence of a validator fault: {0}")]
    NotAValidatorFault(String),
    #[error("validator {validator}'s fault in view {view} was already recorded")]
    ValidatorFaultReported { validator: String, view: u64 },
    /// The genesis' validator keys are malformed (refused at start).
    #[error("genesis validators refused: {0}")]
    BadValidators(String),
    #[error("the equivocation at {stack} position {sequence} was already reported")]
    EquivocationReported { stack: StackId, sequence: u64 },
    /// Receipts signed under the old class are audited by peers of the old class: the class
    /// changes only once they are all settled and the node owes no audit or committee vote.
    #[error(
        "node {node} cannot change its class yet: {unsettled_claims} claim(s) not settled, \
         {open_audits} audit(s) or dispute(s) of its receipts and {pending_work} pending duty(ies) \
         (claims, verdicts, committee votes) open under its current class"
    )]
    ClassChangeWhileBusy {
        node: NodeId,
        unsettled_claims: u64,
        open_audits: u64,
        pending_work: u64,
    },
    #[error("node {node} is {status}, not {wanted}")]
    WrongNodeStatus {
        node: NodeId,
        status: String,
        wanted: String,
    },
    #[error("node {0} still has unsettled claims, audits or disputes")]
    NodeHasPendingWork(NodeId),
    #[error("invalid node registration: {0}")]
    InvalidNode(String),
    #[error("key is for epoch {got}, the ledger is in epoch {current}")]
    StaleEpoch { current: u64, got: u64 },
    #[error("key rotation limit of {limit} per epoch reached")]
    RotationLimit { limit: u32 },
    #[error("node {node} does not offer model {model}")]
    ModelNotOffered { node: NodeId, model: ModelId },
    #[error("node price {price} per million units exceeds the cap {cap}")]
    PriceAboveCap { price: Amount, cap: Amount },
    #[error("no eligible node offers model {0} within the price cap")]
    NoEligibleNode(ModelId),
    #[error("node {0} is not eligible (inactive or under-collateralized)")]
    NodeNotEligible(NodeId),
    #[error("invalid stack: {0}")]
    InvalidStack(String),
    #[error("unknown stack {0}")]
    UnknownStack(StackId),
    #[error("sender is not the node of stack {0}")]
    NotStackNode(StackId),
    #[error("sender is not the owner of stack {0}")]
    NotStackOwner(StackId),
    #[error("receipt {sequence} of stack {stack} is already challenged")]
    AlreadyChallenged { stack: StackId, sequence: u64 },
    #[error("stack {0} is not open")]
    StackNotOpen(StackId),
    #[error("claim of {used} units exceeds the stack's {units}")]
    ClaimExceedsStack { used: Units, units: Units },
    #[error("claim has {count} receipts; at most {max} allowed (and at most one per unit)")]
    TooManyReceipts { count: u64, max: u64 },
    #[error("unknown claim {0}")]
    UnknownClaim(ClaimId),
    #[error("unknown audit {0}")]
    UnknownAudit(AuditId),
    #[error("audit {0} is closed")]
    AuditClosed(AuditId),
    #[error("sender is not an auditor of this audit or committee member of this dispute")]
    NotAuditor,
    #[error("already committed")]
    AlreadyCommitted,
    #[error("already revealed")]
    AlreadyRevealed,
    #[error("no commitment to reveal")]
    NotCommitted,
    #[error("reveal does not match the commitment")]
    CommitmentMismatch,
    #[error("the {phase} phase is over at this height")]
    PhaseOver { phase: String },
    #[error("reveals open after all commitments or the commit deadline")]
    RevealTooEarly,
    #[error("only the executor or the stack owner may submit the receipt")]
    NotReceiptSubmitter,
    #[error("receipt already submitted")]
    ReceiptAlreadySubmitted,
    #[error("invalid receipt: {0}")]
    InvalidReceipt(String),
    #[error("unknown dispute {0}")]
    UnknownDispute(DisputeId),
    #[error("dispute {0} is closed")]
    DisputeClosed(DisputeId),
    #[error("slash exceeds collateral")]
    SlashExceedsCollateral,
    #[error("receipt names node {receipt_node} and model {model}, not stack {stack}'s")]
    ReceiptNotOfStack {
        stack: StackId,
        receipt_node: NodeId,
        model: ModelId,
    },
    #[error("receipt {sequence} of stack {stack} is not signed by the stack's node")]
    ReceiptSignatureInvalid { stack: StackId, sequence: u64 },
    #[error("stack {0} is already settled, refunded or expired")]
    StackClosed(StackId),
    #[error("receipt {sequence} of stack {stack} is already disowned")]
    AlreadyDisowned { stack: StackId, sequence: u64 },
    /// The genesis' beacon keys are inconsistent (refused at start).
    #[error("genesis beacon keys refused: {0}")]
    BadBeaconKeys(BeaconError),
}

/// A block was refused as a whole (wrong height or time going backwards). Nothing applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BlockError {
    #[error("block height {got}, expected {expected}")]
    WrongHeight { expected: u64, got: u64 },
    #[error("block time {got} ms is before the previous block's {previous} ms")]
    TimeWentBack { previous: u64, got: u64 },
    /// `σ_h` is missing, malformed or not the group's signature of this height.
    #[error("block beacon refused: {0}")]
    Beacon(BeaconError),
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
