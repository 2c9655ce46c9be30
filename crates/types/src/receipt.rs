//! Receipts: what a node signs for every answered request.

use serde::{Deserialize, Serialize};

use crate::{Hash32, ModelId, NodeId, PublicKey, Signature, SignatureError, StackId, Units};

/// Signature domain for receipts.
pub const RECEIPT_DOMAIN: &str = "receipt";

/// The fingerprint of everything that decides a node's output bit for bit: two nodes of one
/// class must produce identical tokens for identical requests.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeClass {
    pub engine_version: String,
    pub model_digest: Hash32,
    pub quantization: String,
    pub device: String,
    pub kernels: String,
}

impl NodeClass {
    /// A short stable digest of the class, for display and grouping.
    pub fn fingerprint(&self) -> Hash32 {
        crate::sha256(&crate::canonical_bytes(self))
    }
}

/// The sampling settings that, with the seed, make a generation reproducible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SamplingRecord {
    /// Temperature in thousandths (0 = greedy). Integers keep the encoding canonical.
    pub temperature_milli: u32,
    pub top_p_milli: u32,
    pub top_k: u32,
    pub seed: u64,
    pub max_tokens: u32,
    pub presence_penalty_milli: i32,
    pub frequency_penalty_milli: i32,
    pub stop: Vec<String>,
}

/// Who keeps the request behind a receipt and must deliver it to the auditors if it is sampled
/// or challenged.
///
/// A plain request is kept by the gateway (or client) that sent it. A confidential one reaches
/// everyone but the node sealed, so only the node that served it can deliver it (re-sealed to
/// the auditors' attested keys): if most of its auditors then say they never got it, the ledger
/// holds the node at fault for withholding it. JSON: `"gateway"` or `"executor"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Custody {
    /// The sender of the request (a gateway or client) keeps it: plain requests.
    #[default]
    Gateway,
    /// The executing node keeps it: confidential requests.
    Executor,
}

impl std::fmt::Display for Custody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Custody::Gateway => "gateway",
            Custody::Executor => "executor",
        })
    }
}

/// What the node attests about one request it served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub node: NodeId,
    pub stack: StackId,
    /// Position of this receipt within the stack, from 0; gap-free per stack.
    pub sequence: u64,
    pub model: ModelId,
    pub model_digest: Hash32,
    pub node_class: Hash32,
    pub request_hash: Hash32,
    pub response_hash: Hash32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub sampling: SamplingRecord,
    /// Unix milliseconds when the node finished the response.
    pub timestamp_ms: u64,
    /// Who must deliver the request to its auditors.
    pub custody: Custody,
}

impl Receipt {
    /// Units this receipt charges to its stack.
    pub fn units(&self) -> Units {
        Units(self.input_tokens.saturating_add(self.output_tokens))
    }

    /// The leaf of the claim's Merkle tree.
    pub fn digest(&self) -> Hash32 {
        crate::sha256(&crate::canonical_bytes(self))
    }
}

/// A receipt with the node's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    pub signature: Signature,
}

impl SignedReceipt {
    pub fn sign(receipt: Receipt, key: &crate::Keypair) -> Self {
        let signature = key.sign(RECEIPT_DOMAIN, &receipt);
        SignedReceipt { receipt, signature }
    }

    /// Checks the signature against the key the ledger holds for the node.
    pub fn verify(&self, node_key: &PublicKey) -> Result<(), SignatureError> {
        node_key.verify(RECEIPT_DOMAIN, &self.receipt, &self.signature)
    }
}

/// What a receipt's `response_hash` commits to for a text answer: the exact text returned and
/// why generation ended. A client recomputes it from the response body; an auditor from its
/// own re-execution.
#[derive(Serialize)]
struct TextCommitment<'a> {
    kind: &'a str,
    text: &'a str,
    finish_reason: &'a str,
}

/// `response_hash` of a chat or text completion.
pub fn text_response_hash(text: &str, finish_reason: &str) -> Hash32 {
    crate::sha256(&crate::canonical_bytes(&TextCommitment {
        kind: "text",
        text,
        finish_reason,
    }))
}

/// One generated token's log-probabilities as an answer delivers them (chat's `content`
/// entries, or one position of a text completion's parallel lists): what a receipt commits to
/// besides the text when the request asked for log-probabilities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLogprobCommit {
    /// The token as delivered.
    pub token: String,
    /// Its bytes (chat answers deliver them; text completions do not).
    pub bytes: Option<Vec<u8>>,
    /// The f32 bits of its log-probability (`None`: delivered as `null`).
    pub logprob: Option<u32>,
    /// Its `text_offset` (text completions only).
    pub offset: Option<u32>,
    /// The alternatives as delivered (token, bytes, f32 bits of the log-probability): in list
    /// order for chat, in key order of the token → log-probability map for text completions.
    pub top: Vec<(String, Option<Vec<u8>>, u32)>,
}

#[derive(Serialize)]
struct AnswerCommitment<'a> {
    kind: &'a str,
    text: &'a str,
    finish_reason: &'a str,
    constraint: Option<Hash32>,
    logprobs: Option<&'a [TokenLogprobCommit]>,
}

/// `response_hash` of a chat or text completion generated under a constraint (structured
/// outputs: the digest of the schema and the library that enforced it) or delivered with
/// log-probabilities (every token's entry, in order), or both. An answer with neither keeps
/// [`text_response_hash`].
pub fn answer_response_hash(
    text: &str,
    finish_reason: &str,
    constraint: Option<Hash32>,
    logprobs: Option<&[TokenLogprobCommit]>,
) -> Hash32 {
    if constraint.is_none() && logprobs.is_none() {
        return text_response_hash(text, finish_reason);
    }
    crate::sha256(&crate::canonical_bytes(&AnswerCommitment {
        kind: "answer",
        text,
        finish_reason,
        constraint,
        logprobs,
    }))
}

/// `response_hash` of an embeddings answer: the exact f32 bit patterns of every vector.
pub fn embedding_response_hash(vectors: &[Vec<f32>]) -> Hash32 {
    let bits: Vec<Vec<u32>> = vectors
        .iter()
        .map(|v| v.iter().map(|f| f.to_bits()).collect())
        .collect();
    crate::sha256(&crate::canonical_bytes(&("embedding", bits)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Keypair, sha256};

    fn receipt() -> Receipt {
        Receipt {
            node: NodeId(1),
            stack: StackId(2),
            sequence: 0,
            model: ModelId::new("m"),
            model_digest: sha256(b"w"),
            node_class: sha256(b"c"),
            request_hash: sha256(b"req"),
            response_hash: text_response_hash("hi", "stop"),
            input_tokens: 3,
            output_tokens: 4,
            sampling: SamplingRecord::default(),
            timestamp_ms: 5,
            custody: Custody::Gateway,
        }
    }

    #[test]
    fn receipt_signature_binds_every_field() {
        let k = Keypair::from_seed(b"node");
        let s = SignedReceipt::sign(receipt(), &k);
        assert!(s.verify(&k.public()).is_ok());
        let mut t = s.clone();
        t.receipt.output_tokens += 1;
        assert!(t.verify(&k.public()).is_err());
        let mut t = s.clone();
        t.receipt.custody = Custody::Executor;
        assert!(t.verify(&k.public()).is_err(), "custody is signed");
        assert!(s.verify(&Keypair::from_seed(b"other").public()).is_err());
        assert_eq!(s.receipt.units(), crate::Units(7));
    }

    #[test]
    fn custody_reads_as_a_word_in_json_and_is_canonical() {
        let mut r = receipt();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["custody"], "gateway");
        r.custody = Custody::Executor;
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["custody"], "executor");
        let back: Receipt = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            crate::encoding::from_canonical_bytes::<Receipt>(&crate::canonical_bytes(&r)).unwrap(),
            r
        );
        assert_ne!(r.digest(), receipt().digest());
        // A receipt without the field (made before custody existed) is refused, not guessed.
        let mut old = json;
        old.as_object_mut().unwrap().remove("custody");
        assert!(serde_json::from_value::<Receipt>(old).is_err());
    }

    #[test]
    fn response_hashes_distinguish_content() {
        assert_ne!(
            text_response_hash("a", "stop"),
            text_response_hash("a", "length")
        );
        assert_ne!(
            embedding_response_hash(&[vec![0.0]]),
            embedding_response_hash(&[vec![-0.0]])
        );
    }
}
