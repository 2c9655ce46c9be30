//! The ledger's state: ordered maps only, so that its canonical bytes (and root) are identical
//! on every replica. Query helpers live here too.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sortition_types::{
    Amount, AuditId, ClaimId, Custody, DisputeId, Hash32, ModelId, NodeClass, NodeId, PublicKey,
    SignedReceipt, StackId, Units, canonical_bytes, sha256,
};

use crate::genesis::Params;
use crate::policy::ModelSpec;
use crate::tx::{Offer, SealingKey, Verdict};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: Amount,
    /// The nonce the next transaction must carry.
    pub nonce: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub spec: ModelSpec,
    pub min_collateral: Amount,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum NodeStatus {
    Active,
    Paused,
    Unbonding { until_height: u64 },
    Unbonded,
    Withdrawn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// Operator account and receipt signing key.
    pub operator: PublicKey,
    pub endpoint: String,
    /// The node's confidential (sealing) key; all zeros until the node publishes one.
    pub confidential_key: SealingKey,
    /// TEE evidence (opaque to the ledger) whose report data binds `confidential_key`,
    /// `key_nonce` and this node's id; clients verify it themselves.
    pub attestation: Vec<u8>,
    /// The epoch the confidential key was published in; clients use only current-epoch keys.
    pub key_epoch: u64,
    /// The epoch nonce the key's evidence must bind (the ledger's nonce of `key_epoch`).
    pub key_nonce: Hash32,
    pub class: NodeClass,
    /// `class.fingerprint()`: auditors must share it with the executor.
    pub class_fingerprint: Hash32,
    pub offers: Vec<Offer>,
    pub capacity: u32,
    pub collateral: Amount,
    pub status: NodeStatus,
    pub rotations_this_epoch: u32,
    /// Claims, audits (as executor or auditor) and disputes not yet closed; withdraw needs 0.
    pub pending_work: u32,
    pub registered_height: u64,
}

impl Node {
    pub fn offer(&self, model: &ModelId) -> Option<&Offer> {
        self.offers.iter().find(|o| &o.model == model)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StackStatus {
    Open,
    Claimed { claim: ClaimId },
    Settled,
    Refunded,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    pub id: StackId,
    pub owner: PublicKey,
    pub node: NodeId,
    pub model: ModelId,
    pub units: Units,
    pub price_per_m: Amount,
    /// Held by the ledger until settlement, refund or expiry; 0 afterwards.
    pub escrow: Amount,
    pub expires_at_ms: u64,
    pub status: StackStatus,
    pub bought_height: u64,
    /// Receipts the owner disowned, by sequence, with the units each charged: burned at
    /// settlement instead of paid to the node (see `TxKind::DisownReceipt`).
    #[serde(default)]
    pub disowned: BTreeMap<u64, Units>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimStatus {
    Pending,
    Settled,
    /// The executor was proven at fault: the owner got the whole escrow back.
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub id: ClaimId,
    pub stack: StackId,
    pub node: NodeId,
    pub units_used: Units,
    pub receipts_root: Hash32,
    pub receipt_count: u64,
    /// What the node is owed before the treasury fee: ceil(units_used * price / 1e6) ≤ escrow.
    pub payment: Amount,
    pub committed_height: u64,
    pub settles_at_height: u64,
    pub audits: Vec<AuditId>,
    /// Audits still open or in dispute.
    pub open_audits: u32,
    /// Whether its receipts were sampled yet (at the end of the block after its own, with
    /// that block's beacon); it cannot settle before.
    pub sampled: bool,
    pub executor_at_fault: bool,
    pub status: ClaimStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Every revealed verdict matched and the receipt was produced.
    Passed,
    /// No eligible auditor of the executor's class existed, or none revealed, or nobody
    /// got the request and its custody was not the executor's: not verified.
    Unverifiable,
    /// The executor never produced the sampled receipt: at fault without a committee.
    ReceiptMissing,
    /// A mismatch was revealed, or most auditors never got a request in the executor's
    /// custody; the dispute decides.
    Disputed { dispute: DisputeId },
    /// The dispute found the executor at fault (a wrong answer, or a withheld request: the
    /// `Slashed` event's reason says which).
    ExecutorAtFault,
    /// The dispute cleared the executor.
    ExecutorCleared,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub id: AuditId,
    /// The claim the audit holds back from settling; `None` for a challenge of a stack not
    /// claimed yet (the claim, when it comes, takes the audit over).
    pub claim: Option<ClaimId>,
    pub stack: StackId,
    /// The stack's owner: holds the request payload and delivers it to the auditors off-ledger,
    /// unless the receipt puts it in the executor's custody (see [`AuditedReceipt::custody`]).
    pub owner: PublicKey,
    pub executor: NodeId,
    pub model: ModelId,
    pub receipt_index: u64,
    pub wanted: u8,
    pub auditors: Vec<NodeId>,
    pub commits: BTreeMap<NodeId, Hash32>,
    pub reveals: BTreeMap<NodeId, Verdict>,
    /// What the ledger keeps of the submitted (or challenged) receipt.
    pub receipt: Option<AuditedReceipt>,
    pub opened_height: u64,
    pub commit_deadline: u64,
    pub reveal_deadline: u64,
    /// `None` while open.
    pub outcome: Option<AuditOutcome>,
    /// For an owner's challenge: the bond it posted (held by the treasury).
    pub challenge_bond: Option<Amount>,
}

/// The audited receipt as the ledger keeps it: enough to tell the genuine payload from decoys
/// and to know who had to deliver it, and the signed receipt itself, so that a holder of
/// another receipt the executor signed for the same position can prove the equivocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditedReceipt {
    /// The receipt's digest (its leaf in the claim's Merkle tree).
    pub digest: Hash32,
    pub request_hash: Hash32,
    pub response_hash: Hash32,
    /// Who keeps the request for the auditors: with `Executor`, auditors that never get it
    /// count against the executor (see the `audits` and `disputes` module docs).
    pub custody: Custody,
    pub signed: SignedReceipt,
}

impl AuditedReceipt {
    pub fn of(s: &SignedReceipt) -> AuditedReceipt {
        let r = &s.receipt;
        AuditedReceipt {
            digest: r.digest(),
            request_hash: r.request_hash,
            response_hash: r.response_hash,
            custody: r.custody,
            signed: s.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispute {
    pub id: DisputeId,
    pub audit: AuditId,
    pub executor: NodeId,
    pub committee: Vec<NodeId>,
    pub commits: BTreeMap<NodeId, Hash32>,
    pub votes: BTreeMap<NodeId, Verdict>,
    pub opened_height: u64,
    pub commit_deadline: u64,
    pub reveal_deadline: u64,
    /// `Some(executor_at_fault)` once resolved.
    pub resolution: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlashReason {
    ExecutorAtFault,
    ReceiptMissing,
    WrongVerdict,
    MissedDeadline,
    /// The executor kept a confidential request in custody and did not deliver it: most of
    /// the committee that should have judged it never got it.
    PayloadWithheld,
    /// The node signed two different receipts for one position of a stack.
    Equivocation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlashRecord {
    pub height: u64,
    pub node: NodeId,
    pub amount: Amount,
    pub reason: SlashReason,
    pub audit: Option<AuditId>,
}

/// Where all the money is. `balances + escrow + collateral + treasury == minted` always.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supply {
    pub minted: Amount,
    pub balances: Amount,
    pub escrow: Amount,
    pub collateral: Amount,
    pub treasury: Amount,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub chain_id: String,
    pub devnet: bool,
    pub admin: PublicKey,
    pub params: Params,
    pub height: u64,
    pub timestamp_ms: u64,
    /// The randomness of the latest block that carried a beacon (`sha256(σ)`); bridge blocks
    /// leave it as it was.
    pub randomness: Hash32,
    pub epoch: u64,
    /// The current epoch's nonce, fixed at the epoch turn from the latest beacon value (see
    /// [`epoch_nonce`]); TEE evidence of confidential keys binds it, so it cannot be made
    /// before the epoch began.
    pub epoch_nonce: Hash32,
    pub fees_this_epoch: Amount,
    pub treasury: Amount,
    pub minted: Amount,
    pub accounts: BTreeMap<PublicKey, Account>,
    pub models: BTreeMap<ModelId, ModelEntry>,
    pub nodes: BTreeMap<NodeId, Node>,
    pub node_by_key: BTreeMap<PublicKey, NodeId>,
    pub stacks: BTreeMap<StackId, Stack>,
    /// Open (unclaimed) stacks by expiry time, for end-of-block expiry.
    pub stack_expiry: BTreeSet<(u64, StackId)>,
    pub claims: BTreeMap<ClaimId, Claim>,
    /// Pending claims by the height they may settle at.
    pub claim_queue: BTreeSet<(u64, ClaimId)>,
    pub audits: BTreeMap<AuditId, Audit>,
    pub open_audits: BTreeSet<AuditId>,
    /// Challenged receipts by (stack, sequence): one challenge per receipt.
    pub challenges: BTreeMap<(StackId, u64), AuditId>,
    /// Receipt positions (stack, sequence) whose node was proven to have signed two different
    /// receipts: one slash per position.
    pub equivocations: BTreeSet<(StackId, u64)>,
    pub disputes: BTreeMap<DisputeId, Dispute>,
    pub open_disputes: BTreeSet<DisputeId>,
    pub unbonding: BTreeSet<(u64, NodeId)>,
    pub slashes: Vec<SlashRecord>,
    pub next_ids: NextIds,
    /// Selections fixed in a block and drawn at the end of a later one, with that block's
    /// beacon (see `draws`), in the order they were fixed.
    pub pending_draws: Vec<PendingDraw>,
    /// Validators proven to have signed conflicting consensus votes, by (key, view): one
    /// record each (see `validator_faults`).
    #[serde(default)]
    pub validator_faults: BTreeMap<(String, u64), ValidatorFault>,
}

/// A selection waiting for a beacon value produced after `fixed_height`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDraw {
    /// The block that fixed what is selected for; drawn at the end of the next block.
    pub fixed_height: u64,
    pub draw: Draw,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "draw", rename_all = "snake_case")]
pub enum Draw {
    /// Which receipts of a claim get audited, and their auditors.
    Sample { claim: ClaimId },
    /// A challenge's auditors, from the peers eligible when it was made (its bond paid for
    /// `k` of them).
    Challengers {
        audit: AuditId,
        pool: Vec<NodeId>,
        k: u8,
    },
    /// A dispute's committee.
    Committee { dispute: DisputeId },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextIds {
    pub node: u64,
    pub stack: u64,
    pub claim: u64,
    pub audit: u64,
    pub dispute: u64,
}

/// The nonce of `epoch`: `sha256("sortition/epoch-nonce" || randomness || epoch as u64 LE)`,
/// where `randomness` is the latest beacon value when the epoch turned (that block's own, or
/// the last one before it if it is a bridge block), unknown until shortly before the turn
/// (epoch 0: the genesis hash, fixed before any block).
pub fn epoch_nonce(randomness: &Hash32, epoch: u64) -> Hash32 {
    sortition_types::hash::sha256_parts(&[
        b"sortition/epoch-nonce",
        &randomness.0,
        &epoch.to_le_bytes(),
    ])
}

impl State {
    /// Queues `draw`, fixed in block `ctx.height`, for the next block with a beacon (see
    /// `draws`).
    pub(crate) fn defer(&mut self, ctx: &crate::BlockContext, draw: Draw) {
        self.pending_draws.push(PendingDraw {
            fixed_height: ctx.height,
            draw,
        });
    }

    /// sha256 of the canonical (BCS) bytes of the whole state.
    pub fn root(&self) -> Hash32 {
        sha256(&canonical_bytes(self))
    }

    pub fn account(&self, pk: &PublicKey) -> Account {
        self.accounts.get(pk).cloned().unwrap_or_default()
    }
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }
    pub fn node_by_key(&self, pk: &PublicKey) -> Option<&Node> {
        self.node_by_key.get(pk).and_then(|id| self.nodes.get(id))
    }
    pub fn model(&self, id: &ModelId) -> Option<&ModelEntry> {
        self.models.get(id)
    }
    pub fn stack(&self, id: StackId) -> Option<&Stack> {
        self.stacks.get(&id)
    }
    pub fn stacks_of(&self, owner: &PublicKey) -> impl Iterator<Item = &Stack> {
        self.stacks.values().filter(move |s| &s.owner == owner)
    }
    pub fn claim(&self, id: ClaimId) -> Option<&Claim> {
        self.claims.get(&id)
    }
    pub fn audit(&self, id: AuditId) -> Option<&Audit> {
        self.audits.get(&id)
    }
    /// Audits where `node` is an auditor; only open ones when `open_only`.
    pub fn audits_of(&self, node: NodeId, open_only: bool) -> Vec<&Audit> {
        let by: Box<dyn Iterator<Item = &Audit>> = if open_only {
            Box::new(self.open_audits.iter().filter_map(|id| self.audits.get(id)))
        } else {
            Box::new(self.audits.values())
        };
        by.filter(|a| a.auditors.contains(&node)).collect()
    }
    pub fn dispute(&self, id: DisputeId) -> Option<&Dispute> {
        self.disputes.get(&id)
    }

    /// Every unit of money by where it sits.
    pub fn supply(&self) -> Supply {
        let sum =
            |it: &mut dyn Iterator<Item = u64>| Amount(it.fold(0u64, |a, b| a.saturating_add(b)));
        Supply {
            minted: self.minted,
            balances: sum(&mut self.accounts.values().map(|a| a.balance.0)),
            escrow: sum(&mut self.stacks.values().map(|s| s.escrow.0)),
            collateral: sum(&mut self.nodes.values().map(|n| n.collateral.0)),
            treasury: self.treasury,
        }
    }
}
/// What a validator did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidatorFaultKind {
    /// Notarize votes for two different blocks in one view.
    ConflictingNotarize,
    /// Finalize votes for two different blocks in one view.
    ConflictingFinalize,
    /// A nullify and a finalize vote in one view.
    NullifyFinalize,
}

/// One recorded fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorFault {
    /// The validator's consensus key (hex, as the genesis lists it).
    pub validator: String,
    /// The consensus view the conflicting votes were cast in.
    pub view: u64,
    pub kind: ValidatorFaultKind,
    /// sha256 of the evidence as submitted (simplex's `Activity` encoding).
    pub evidence_hash: Hash32,
    /// The block that recorded it, and who reported it.
    pub height: u64,
    pub reporter: PublicKey,
}
