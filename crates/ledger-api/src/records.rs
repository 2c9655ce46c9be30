//! The ledger's records as the API serves them: the wire form of nodes, models, stacks,
//! claims, audits, disputes, accounts and slashes, separate from the state machine's own
//! `State` structs. The state machine can change how it keeps its books without changing
//! what clients read: a record is built from the state with `From`, and its serde form is
//! what the service sends and every client parses (the same JSON as before the split; a test
//! holds them equal).
//!
//! The protocol's value types inside the records (statuses, verdicts, receipts, offers,
//! policies) and the inputs and events of the ledger (transactions, genesis, events) are the
//! protocol itself and are re-exported from `sortition_ledger` as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sortition_ledger as ledger;
use sortition_types::{
    Amount, AuditId, ClaimId, DisputeId, Hash32, ModelId, NodeClass, NodeId, PublicKey, StackId,
    Units,
};

pub use sortition_ledger::validator_faults::ValidatorFault;
pub use sortition_ledger::{
    AuditOutcome, AuditedReceipt, BeaconSig, ClaimStatus, Event, Genesis, ModelSpec, NodeStatus,
    Offer, SealingKey, SignedTx, SlashReason, StackStatus, Tx, TxKind, Verdict,
};

/// An account: its balance and the nonce its next transaction must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: Amount,
    /// The nonce the next transaction must carry.
    pub nonce: u64,
}

impl From<&ledger::Account> for Account {
    fn from(s: &ledger::Account) -> Self {
        Account {
            balance: s.balance,
            nonce: s.nonce,
        }
    }
}

/// A model on the ledger: its policy and the collateral its nodes must bond.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub spec: ModelSpec,
    pub min_collateral: Amount,
}

impl From<&ledger::ModelEntry> for ModelEntry {
    fn from(s: &ledger::ModelEntry) -> Self {
        ModelEntry {
            spec: s.spec.clone(),
            min_collateral: s.min_collateral,
        }
    }
}

/// A registered execution node.
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

impl From<&ledger::Node> for Node {
    fn from(s: &ledger::Node) -> Self {
        Node {
            id: s.id,
            operator: s.operator,
            endpoint: s.endpoint.clone(),
            confidential_key: s.confidential_key,
            attestation: s.attestation.clone(),
            key_epoch: s.key_epoch,
            key_nonce: s.key_nonce,
            class: s.class.clone(),
            class_fingerprint: s.class_fingerprint,
            offers: s.offers.clone(),
            capacity: s.capacity,
            collateral: s.collateral,
            status: s.status,
            rotations_this_epoch: s.rotations_this_epoch,
            pending_work: s.pending_work,
            registered_height: s.registered_height,
        }
    }
}

/// Prepaid units on one node for one model.
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

impl From<&ledger::Stack> for Stack {
    fn from(s: &ledger::Stack) -> Self {
        Stack {
            id: s.id,
            owner: s.owner,
            node: s.node,
            model: s.model.clone(),
            units: s.units,
            price_per_m: s.price_per_m,
            escrow: s.escrow,
            expires_at_ms: s.expires_at_ms,
            status: s.status,
            bought_height: s.bought_height,
            disowned: s.disowned.clone(),
        }
    }
}

/// A node's claim on a stack's units, settled unless an audit finds fault.
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

impl From<&ledger::Claim> for Claim {
    fn from(s: &ledger::Claim) -> Self {
        Claim {
            id: s.id,
            stack: s.stack,
            node: s.node,
            units_used: s.units_used,
            receipts_root: s.receipts_root,
            receipt_count: s.receipt_count,
            payment: s.payment,
            committed_height: s.committed_height,
            settles_at_height: s.settles_at_height,
            audits: s.audits.clone(),
            open_audits: s.open_audits,
            sampled: s.sampled,
            executor_at_fault: s.executor_at_fault,
            status: s.status,
        }
    }
}

/// An audit of one receipt: who judges it, their commits and reveals, the outcome.
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

impl From<&ledger::Audit> for Audit {
    fn from(s: &ledger::Audit) -> Self {
        Audit {
            id: s.id,
            claim: s.claim,
            stack: s.stack,
            owner: s.owner,
            executor: s.executor,
            model: s.model.clone(),
            receipt_index: s.receipt_index,
            wanted: s.wanted,
            auditors: s.auditors.clone(),
            commits: s.commits.clone(),
            reveals: s.reveals.clone(),
            receipt: s.receipt.clone(),
            opened_height: s.opened_height,
            commit_deadline: s.commit_deadline,
            reveal_deadline: s.reveal_deadline,
            outcome: s.outcome,
            challenge_bond: s.challenge_bond,
        }
    }
}

/// A second look at an audit by a larger committee.
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

impl From<&ledger::Dispute> for Dispute {
    fn from(s: &ledger::Dispute) -> Self {
        Dispute {
            id: s.id,
            audit: s.audit,
            executor: s.executor,
            committee: s.committee.clone(),
            commits: s.commits.clone(),
            votes: s.votes.clone(),
            opened_height: s.opened_height,
            commit_deadline: s.commit_deadline,
            reveal_deadline: s.reveal_deadline,
            resolution: s.resolution,
        }
    }
}

/// A slash: whose collateral, how much, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlashRecord {
    pub height: u64,
    pub node: NodeId,
    pub amount: Amount,
    pub reason: SlashReason,
    pub audit: Option<AuditId>,
}

impl From<&ledger::SlashRecord> for SlashRecord {
    fn from(s: &ledger::SlashRecord) -> Self {
        SlashRecord {
            height: s.height,
            node: s.node,
            amount: s.amount,
            reason: s.reason,
            audit: s.audit,
        }
    }
}

impl Node {
    /// The node's offer for `model`, if it serves it.
    pub fn offer(&self, model: &ModelId) -> Option<&Offer> {
        self.offers.iter().find(|o| &o.model == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use sortition_types::Keypair;

    /// A record and the state it is built from serialize to the same JSON: the split changed
    /// no byte of the wire.
    fn same_wire<S: Serialize, R: Serialize + for<'a> From<&'a S>>(state: &S) {
        let record = R::from(state);
        assert_eq!(
            serde_json::to_value(&record).unwrap(),
            serde_json::to_value(state).unwrap()
        );
    }

    #[test]
    fn records_keep_the_wire_of_the_state() {
        let pk = Keypair::from_seed(b"records").public();
        let h = |b: u8| Hash32([b; 32]);
        let class = NodeClass {
            engine_version: "e".into(),
            model_digest: h(1),
            quantization: "q8_0".into(),
            device: "cpu".into(),
            kernels: "k".into(),
        };
        let model = ModelId::new("m");
        same_wire::<_, Account>(&ledger::Account {
            balance: Amount(5),
            nonce: 3,
        });
        same_wire::<_, ModelEntry>(&ledger::ModelEntry {
            spec: ModelSpec {
                id: model.clone(),
                weights_digest: h(2),
                tokenizer_digest: h(3),
                policy: ledger::SecurityPolicy {
                    audit: Some(ledger::AuditPolicy {
                        q_ppm: 50_000,
                        k: 3,
                        method: ledger::AuditMethod::Score {
                            max_rank: 1000,
                            logit_slack_milli: 250,
                            draw_slack_ppm: Some(1000),
                        },
                    }),
                    ..Default::default()
                },
            },
            min_collateral: Amount(7),
        });
        same_wire::<_, Node>(&ledger::Node {
            id: NodeId(4),
            operator: pk,
            endpoint: "http://127.0.0.1:1".into(),
            confidential_key: SealingKey(h(4)),
            attestation: vec![1, 2, 3],
            key_epoch: 2,
            key_nonce: h(5),
            class_fingerprint: class.fingerprint(),
            class,
            offers: vec![Offer {
                model: model.clone(),
                price_per_m_input: Amount(10),
                price_per_m_output: Amount(20),
            }],
            capacity: 8,
            collateral: Amount(100),
            status: NodeStatus::Unbonding { until_height: 9 },
            rotations_this_epoch: 1,
            pending_work: 2,
            registered_height: 1,
        });
        same_wire::<_, Stack>(&ledger::Stack {
            id: StackId(6),
            owner: pk,
            node: NodeId(4),
            model: model.clone(),
            units: Units(1000),
            price_per_m: Amount(20),
            escrow: Amount(1),
            expires_at_ms: 99,
            status: StackStatus::Claimed { claim: ClaimId(2) },
            bought_height: 3,
            disowned: [(4, Units(7))].into_iter().collect(),
        });
        same_wire::<_, Claim>(&ledger::Claim {
            id: ClaimId(2),
            stack: StackId(6),
            node: NodeId(4),
            units_used: Units(10),
            receipts_root: h(6),
            receipt_count: 4,
            payment: Amount(1),
            committed_height: 5,
            settles_at_height: 50,
            audits: vec![AuditId(1)],
            open_audits: 1,
            sampled: true,
            executor_at_fault: false,
            status: ClaimStatus::Pending,
        });
        same_wire::<_, Audit>(&ledger::Audit {
            id: AuditId(1),
            claim: Some(ClaimId(2)),
            stack: StackId(6),
            owner: pk,
            executor: NodeId(4),
            model,
            receipt_index: 2,
            wanted: 3,
            auditors: vec![NodeId(5), NodeId(6)],
            commits: [(NodeId(5), h(7))].into_iter().collect(),
            reveals: [(NodeId(5), Verdict::Unavailable)].into_iter().collect(),
            receipt: None,
            opened_height: 5,
            commit_deadline: 10,
            reveal_deadline: 15,
            outcome: Some(AuditOutcome::Passed),
            challenge_bond: Some(Amount(3)),
        });
        same_wire::<_, Dispute>(&ledger::Dispute {
            id: DisputeId(1),
            audit: AuditId(1),
            executor: NodeId(4),
            committee: vec![NodeId(7)],
            commits: BTreeMap::new(),
            votes: [(
                NodeId(7),
                Verdict::Mismatch {
                    evidence_hash: h(8),
                },
            )]
            .into_iter()
            .collect(),
            opened_height: 16,
            commit_deadline: 20,
            reveal_deadline: 25,
            resolution: Some(true),
        });
        same_wire::<_, SlashRecord>(&ledger::SlashRecord {
            height: 30,
            node: NodeId(4),
            amount: Amount(50),
            reason: SlashReason::Equivocation,
            audit: Some(AuditId(1)),
        });
    }
}
