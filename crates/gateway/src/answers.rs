//! A node's whole (unstreamed) answer, parsed once: what the gateway reads from it (the
//! receipt, the generated text) and what it sends on (the same answer, marked verified).
//!
//! Chat and text completions are read into their OpenAI types, which is cheaper to parse and
//! write again than a `serde_json::Value`; any other answer (embeddings, or one those types do
//! not describe) is read as a `Value`, so that it is still checked, billed and passed on.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sortition_api::delivered::{self, DeliveredError};
use sortition_api::{ChatCompletion, Completion, SortitionExt};
use sortition_types::{Hash32, SignedReceipt, TokenLogprobCommit, answer_response_hash};

use crate::settle::Answer;

/// What the gateway needs of a node's whole answer.
pub trait NodeAnswer: Serialize + DeserializeOwned + Send {
    /// The receipt the node signed, if the answer carries one.
    fn receipt(&self) -> Option<SignedReceipt>;
    /// The generated text and why it ended, kept for the auditors; `None` when there is no
    /// finish reason (embeddings, an unfinished answer).
    fn answer(&self) -> Option<Answer>;
    /// Marks the receipt as checked against the ledger's key for the node.
    fn mark_verified(&mut self);
    /// The `response_hash` of exactly what this answer to the request `body` delivers to the
    /// client, as the node must have hashed it; an error when it delivers something no
    /// receipt covers.
    fn delivered_hash(&self, body: &[u8]) -> Result<Hash32, DeliveredError>;
}

/// The hash of one choice's text (with the request's constraint, and the log-probabilities
/// when delivered), when the answer has exactly one choice, with index 0.
fn one_choice_hash(
    choices: usize,
    index: u32,
    text: &str,
    finish: Option<&str>,
    logprobs: Option<Vec<TokenLogprobCommit>>,
    body: &[u8],
) -> Result<Hash32, DeliveredError> {
    if choices != 1 {
        return Err(DeliveredError::Choices(choices));
    }
    if index != 0 {
        return Err(DeliveredError::ChoiceIndex(u64::from(index)));
    }
    match finish {
        Some(f) if !f.is_empty() => Ok(answer_response_hash(
            text,
            f,
            sortition_api::constraint::digest_of_body(body),
            logprobs.as_deref(),
        )),
        _ => Err(DeliveredError::Unfinished),
    }
}

/// The answer, if generation ended (it has a finish reason).
fn finished(a: Answer) -> Option<Answer> {
    (!a.finish_reason.is_empty()).then_some(a)
}

fn mark(ext: &mut Option<SortitionExt>) {
    if let Some(ext) = ext {
        ext.verified_by_gateway = Some(true);
    }
}

impl NodeAnswer for ChatCompletion {
    fn receipt(&self) -> Option<SignedReceipt> {
        self.sortition.as_ref().map(|s| s.receipt.clone())
    }

    fn answer(&self) -> Option<Answer> {
        let c = self.choices.first()?;
        finished(Answer {
            text: c.message.committed_text(),
            finish_reason: c.finish_reason.clone(),
        })
    }

    fn mark_verified(&mut self) {
        mark(&mut self.sortition);
    }

    fn delivered_hash(&self, body: &[u8]) -> Result<Hash32, DeliveredError> {
        let c = self.choices.first().ok_or(DeliveredError::Choices(0))?;
        one_choice_hash(
            self.choices.len(),
            c.index,
            &c.message.committed_text(),
            Some(&c.finish_reason),
            c.logprobs.as_ref().map(|l| l.commit()),
            body,
        )
    }
}

impl NodeAnswer for Completion {
    fn receipt(&self) -> Option<SignedReceipt> {
        self.sortition.as_ref().map(|s| s.receipt.clone())
    }

    fn answer(&self) -> Option<Answer> {
        let c = self.choices.first()?;
        finished(Answer {
            text: c.text.clone(),
            finish_reason: c.finish_reason.clone().unwrap_or_default(),
        })
    }

    fn mark_verified(&mut self) {
        mark(&mut self.sortition);
    }

    fn delivered_hash(&self, body: &[u8]) -> Result<Hash32, DeliveredError> {
        let c = self.choices.first().ok_or(DeliveredError::Choices(0))?;
        one_choice_hash(
            self.choices.len(),
            c.index,
            &c.text,
            c.finish_reason.as_deref(),
            c.logprobs.as_ref().map(|l| l.commit()).transpose()?,
            body,
        )
    }
}

impl NodeAnswer for Value {
    fn receipt(&self) -> Option<SignedReceipt> {
        SignedReceipt::deserialize(self.get("sortition")?.get("receipt")?).ok()
    }

    fn answer(&self) -> Option<Answer> {
        let mut d = delivered::DeliveredText::default();
        d.absorb(self);
        Some(Answer {
            text: d.text,
            finish_reason: d.finish_reason?,
        })
        .and_then(finished)
    }

    fn mark_verified(&mut self) {
        if let Some(ext) = self.get_mut("sortition").and_then(Value::as_object_mut) {
            ext.insert("verified_by_gateway".into(), Value::Bool(true));
        }
    }

    fn delivered_hash(&self, body: &[u8]) -> Result<Hash32, DeliveredError> {
        delivered::response_hash(self, body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sortition_api::{AssistantMessage, ChatChoice, Usage};
    use sortition_types::{Keypair, ModelId, NodeId, Receipt, StackId, sha256};

    fn chat(finish_reason: &str) -> ChatCompletion {
        let receipt = Receipt {
            node: NodeId(1),
            stack: StackId(2),
            sequence: 3,
            model: ModelId::new("m"),
            model_digest: sha256(b"w"),
            node_class: sha256(b"c"),
            request_hash: sha256(b"req"),
            response_hash: sha256(b"resp"),
            input_tokens: 4,
            output_tokens: 5,
            sampling: Default::default(),
            timestamp_ms: 6,
            custody: Default::default(),
        };
        ChatCompletion {
            id: "chatcmpl-1".into(),
            object: "chat.completion".into(),
            created: 7,
            model: "m".into(),
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: Some("Hi there".into()),
                    tool_calls: None,
                },
                finish_reason: finish_reason.into(),
                logprobs: None,
            }],
            usage: Usage::new(4, 5),
            sortition: Some(SortitionExt {
                node: NodeId(1),
                receipt: SignedReceipt::sign(receipt, &Keypair::from_seed(b"node")),
                verified_by_gateway: None,
            }),
        }
    }

    /// The typed reading and the `Value` reading of one answer agree on everything the gateway
    /// reads and writes.
    #[test]
    fn typed_and_json_readings_agree() {
        for reason in ["stop", ""] {
            let mut typed = chat(reason);
            let mut json = serde_json::to_value(&typed).unwrap();
            assert_eq!(typed.receipt(), json.receipt());
            assert!(typed.receipt().is_some());
            assert_eq!(typed.delivered_hash(b"{}"), json.delivered_hash(b"{}"));
            assert_eq!(
                typed.delivered_hash(b"{}").is_ok(),
                reason == "stop",
                "an unfinished answer has no hash"
            );
            let (a, b) = (typed.answer(), json.answer());
            assert_eq!(a.is_some(), reason == "stop");
            assert_eq!(
                a.map(|a| (a.text, a.finish_reason)),
                b.map(|b| (b.text, b.finish_reason))
            );
            typed.mark_verified();
            json.mark_verified();
            assert_eq!(serde_json::to_value(&typed).unwrap(), json);
            assert_eq!(json["sortition"]["verified_by_gateway"], true);
        }
    }

    #[test]
    fn an_answer_without_a_readable_receipt_has_none() {
        let mut json = serde_json::to_value(chat("stop")).unwrap();
        json["sortition"]["receipt"]["signature"] = "zz".into();
        assert_eq!(json.receipt(), None);
        json.as_object_mut().unwrap().remove("sortition");
        assert_eq!(json.receipt(), None);
        json.mark_verified();
        assert!(json.get("sortition").is_none());
    }
}
