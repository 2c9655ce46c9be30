//! Transactions: what accounts ask the ledger to do, signed under the domain `"tx"`.

use serde::{Deserialize, Serialize};
use sortition_types::{
    Amount, AuditId, DisputeId, Hash32, Keypair, MerkleProof, ModelId, NodeClass, NodeId,
    PublicKey, Signature, SignedReceipt, StackId, Units, canonical_bytes, sha256,
};

use crate::error::LedgerError;
use crate::policy::ModelSpec;

/// Signature domain of transactions.
pub const TX_DOMAIN: &str = "tx";

/// The signed body of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tx {
    /// Refuses replays across chains (devnet vs. production).
    pub chain_id: String,
    /// The account that pays and acts; for node transactions also the node's receipt key.
    pub sender: PublicKey,
    /// Must equal the account's next nonce exactly: replays and gaps are refused.
    pub nonce: u64,
    /// Block time (ms) at or after which the transaction is refused.
    pub expires_at_ms: u64,
    pub kind: TxKind,
}

/// A 32-byte X25519 public key (the node's confidential sealing key), hex in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SealingKey(pub Hash32);

/// What a node sells: one model at a price per million input / output units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub model: ModelId,
    pub price_per_m_input: Amount,
    pub price_per_m_output: Amount,
}

impl Offer {
    /// Price per million units of a stack. A unit is a token, input or output, and a stack does
    /// not know in advance which, so the ledger charges the higher of the two prices.
    pub fn unit_price_per_m(&self) -> Amount {
        unit_price_per_m(self.price_per_m_input, self.price_per_m_output)
    }
}

/// The price per million units of a stack from a node whose offer has these input and output
/// prices: the higher of the two (see [`Offer::unit_price_per_m`]). Gateways price their
/// holds with it, so they hold what the ledger will charge.
pub fn unit_price_per_m(input: Amount, output: Amount) -> Amount {
    input.max(output)
}

/// An auditor's or committee member's judgement of one receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Re-execution reproduced the receipt's response.
    Match,
    /// It did not; `evidence_hash` names the evidence kept off-ledger.
    Mismatch { evidence_hash: Hash32 },
    /// The auditor never received the request (its holder withheld it), so it cannot judge.
    /// Counts for neither side, earns nothing and costs nothing: without it an auditor could
    /// only stay silent and be slashed for the missed deadline.
    Unavailable,
}

/// The commitment published before a verdict is revealed:
/// `sha256(canonical(verdict) || salt || auditor)`.
pub fn verdict_commitment(verdict: &Verdict, salt: &Hash32, auditor: &PublicKey) -> Hash32 {
    sha256(&canonical_bytes(&(verdict, salt, auditor)))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// Externally tagged so that BCS (signing, storage) can decode it: JSON looks like
/// `{"transfer": {"to": "…", "amount": 5}}` or `"pause_node"`.
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    /// Devnet only, signed by the genesis admin: mint to an account.
    Faucet {
        to: PublicKey,
        amount: Amount,
    },
    Transfer {
        to: PublicKey,
        amount: Amount,
    },
    /// Admin only.
    RegisterModel {
        spec: ModelSpec,
    },
    RegisterNode {
        endpoint: String,
        confidential_key: SealingKey,
        attestation: Vec<u8>,
        class: NodeClass,
        offers: Vec<Offer>,
        capacity: u32,
        collateral: Amount,
    },
    /// Changes what is given; `add_collateral` moves funds from the operator's balance.
    /// A new `class` (the node now runs another engine, model file or kernels) is taken only
    /// while nothing it served or owes is open under the old one (see
    /// [`LedgerError::ClassChangeWhileBusy`]).
    UpdateNode {
        endpoint: Option<String>,
        offers: Option<Vec<Offer>>,
        capacity: Option<u32>,
        add_collateral: Amount,
        /// Absent in JSON means unchanged. Always present in the canonical (BCS) encoding,
        /// which stored blocks are decoded from.
        #[serde(default)]
        class: Option<NodeClass>,
    },
    PauseNode,
    ResumeNode,
    /// Starts unbonding; the node stops being chosen.
    LeaveNode,
    /// After unbonding completes and nothing is pending.
    WithdrawCollateral,
    /// Publishes this epoch's confidential key with TEE evidence whose report data binds
    /// (key, the epoch's nonce, node id). `epoch` must be the ledger's current epoch, so
    /// evidence made against a nonce that has since turned is refused instead of recorded
    /// under the wrong epoch.
    RotateConfidentialKey {
        key: SealingKey,
        attestation: Vec<u8>,
        epoch: u64,
    },
    BuyStack {
        model: ModelId,
        /// `None`: the block randomness picks among eligible nodes within the cap.
        node: Option<NodeId>,
        max_price_per_m: Amount,
        units: Units,
        expires_at_ms: u64,
    },
    ClaimStack {
        stack: StackId,
        units_used: Units,
        receipts_root: Hash32,
        receipt_count: u64,
    },
    CommitVerdict {
        audit: AuditId,
        commitment: Hash32,
    },
    RevealVerdict {
        audit: AuditId,
        verdict: Verdict,
        salt: Hash32,
    },
    /// The executor or the stack owner publishes the sampled receipt with its Merkle proof.
    SubmitReceipt {
        audit: AuditId,
        receipt: SignedReceipt,
        proof: MerkleProof,
    },
    CommitVote {
        dispute: DisputeId,
        commitment: Hash32,
    },
    RevealVote {
        dispute: DisputeId,
        verdict: Verdict,
        salt: Hash32,
    },
    /// The stack's owner asks for one receipt to be re-checked now, whatever the sampling
    /// says: e.g. a gateway whose synchronous quorum disagreed challenges the dissenters. The
    /// receipt, signed by the stack's node, is the evidence; the owner pays a bond of the
    /// auditors' rewards, returned if the executor is found at fault.
    ChallengeReceipt {
        receipt: SignedReceipt,
    },
    /// Anyone holding two different receipts that one node signed for the same position of
    /// a stack proves it equivocated: an objective fault, checked on the spot against the
    /// node's key as the ledger holds it. The node is slashed as for a lost dispute, the
    /// reporter gets the disputers' share, and the stack's owner its refund.
    ReportEquivocation {
        first: Box<SignedReceipt>,
        second: Box<SignedReceipt>,
    },
    /// The stack's owner disowns a receipt its node signed: e.g. the node delivered another
    /// text than the one the receipt's `response_hash` commits to, which the ledger cannot
    /// see. The receipt's units are burned at settlement (sent to the treasury) instead of
    /// paid to the node or refunded to the owner: the owner pays anyway, so disowning an
    /// honest receipt gains it nothing, and a cheating node loses the pay.
    DisownReceipt {
        receipt: SignedReceipt,
    },
    /// Anyone holding two conflicting consensus votes one validator signed for the same view
    /// (simplex's `Activity` encoding of the pair, as consensus reports it) proves that the
    /// validator equivocated; checked against the genesis' validator set and recorded (see
    /// `validator_faults`).
    ReportValidatorFault {
        evidence: Vec<u8>,
    },
}

/// A transaction with its sender's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTx {
    pub tx: Tx,
    pub signature: Signature,
}

impl Tx {
    pub fn sign(self, key: &Keypair) -> SignedTx {
        let signature = key.sign(TX_DOMAIN, &self);
        SignedTx {
            tx: self,
            signature,
        }
    }
}

impl SignedTx {
    /// The transaction's identity: sha256 of its canonical bytes, signature included.
    pub fn hash(&self) -> Hash32 {
        sha256(&canonical_bytes(self))
    }

    /// Checks the signature; the only way to get a [`VerifiedTx`].
    pub fn verify(self) -> Result<VerifiedTx, LedgerError> {
        self.tx
            .sender
            .verify(TX_DOMAIN, &self.tx, &self.signature)
            .map_err(|_| LedgerError::BadSignature)?;
        Ok(VerifiedTx(self))
    }
}

/// A transaction whose signature has been checked: "already verified" is a type fact, so the
/// sequencer can verify at submission (in parallel) and not again in the block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedTx(SignedTx);

impl VerifiedTx {
    pub fn signed(&self) -> &SignedTx {
        &self.0
    }
    pub fn tx(&self) -> &Tx {
        &self.0.tx
    }
    pub fn into_signed(self) -> SignedTx {
        self.0
    }
}
