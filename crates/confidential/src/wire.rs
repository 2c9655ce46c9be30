//! Wire shapes of a confidential chat request as it travels client → gateway → node and back.
//!
//! Request (`POST /v1/confidential/chat/completions`, JSON, [`Envelope`]): routing metadata in
//! the clear (model, target node, `max_tokens` for the unit reservation, whether to stream)
//! plus the OpenAI request body sealed to the node's attested key. The metadata is the sealed
//! request's HPKE associated data ([`Envelope::metadata_aad`]), so a gateway that alters it
//! makes the request fail to open; the node also checks that the plaintext agrees with it.
//!
//! Response, not streamed ([`SealedCompletion`]): the OpenAI `chat.completion` object sealed as
//! one final chunk, and the node's signed receipt in the clear (`sortition`), so a gateway can
//! check and bill it without reading the answer.
//!
//! Response, streamed: SSE events whose data is `{"sealed": SealedChunk}` (each an OpenAI
//! `chat.completion.chunk`, the last one — carrying `finish_reason` — marked final), then
//! `{"sortition": {node, receipt}}` in the clear, then `[DONE]`. Errors are
//! `{"error": {...}}` in the OpenAI shape.
//!
//! The receipt commits to the plaintext: `request_hash = sha256(plaintext request body)`,
//! `response_hash = text_response_hash(text, finish_reason)`, exactly as for a plain request,
//! so the client can check it and an auditor given the plaintext can re-execute it.

use serde::{Deserialize, Serialize};
use sortition_types::{NodeId, SignedReceipt};

use crate::seal::SealedRequest;
use crate::stream::SealedChunk;

/// The route on gateways and nodes.
pub const CONFIDENTIAL_CHAT_PATH: &str = "/v1/confidential/chat/completions";

/// `object` of a non-streamed sealed answer.
pub const SEALED_COMPLETION_OBJECT: &str = "sortition.sealed.chat.completion";

const META_DOMAIN: &[u8] = b"sortition/confidential-meta/v1";

/// A confidential request: clear routing metadata and the sealed OpenAI body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub model: String,
    /// The node the body is sealed to; the gateway routes to it and nowhere else.
    pub node: NodeId,
    /// The body's `max_tokens` (or `max_completion_tokens`, default 256): what to reserve.
    pub max_tokens: u32,
    #[serde(default)]
    pub stream: bool,
    pub sealed: SealedRequest,
}

impl Envelope {
    /// The associated data binding the metadata: domain, model (length-prefixed), node id,
    /// max tokens and the stream flag, each fixed-width big-endian.
    pub fn metadata_aad(model: &str, node: NodeId, max_tokens: u32, stream: bool) -> Vec<u8> {
        let mut v = Vec::with_capacity(META_DOMAIN.len() + model.len() + 24);
        v.extend_from_slice(META_DOMAIN);
        v.extend_from_slice(&(model.len() as u64).to_be_bytes());
        v.extend_from_slice(model.as_bytes());
        v.extend_from_slice(&node.0.to_be_bytes());
        v.extend_from_slice(&max_tokens.to_be_bytes());
        v.push(u8::from(stream));
        v
    }

    /// Whether the sealed request's authenticated metadata equals the clear metadata.
    pub fn metadata_bound(&self) -> bool {
        self.sealed.node_id == self.node
            && self.sealed.aad
                == Self::metadata_aad(&self.model, self.node, self.max_tokens, self.stream)
    }
}

/// The clear receipt part of an answer (same JSON shape as the plain API's `sortition`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptExt {
    pub node: NodeId,
    pub receipt: SignedReceipt,
    /// Set by a gateway once it checked the receipt against the ledger's key for the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by_gateway: Option<bool>,
}

/// A non-streamed confidential answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCompletion {
    pub id: String,
    pub object: String,
    pub sealed: SealedChunk,
    pub sortition: ReceiptExt,
}

/// One SSE event of a streamed confidential answer (other than `[DONE]`). (Short-lived; the
/// size difference between the variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamItem {
    Sealed { sealed: SealedChunk },
    Receipt { sortition: ReceiptExt },
    Error { error: serde_json::Value },
}

/// The `max_tokens` a chat body asks for, as the node and the client read it: the
/// `max_completion_tokens` field, else `max_tokens`, else 256.
pub fn requested_max_tokens(body: &serde_json::Value) -> Option<u32> {
    let field = |k: &str| match body.get(k) {
        None | Some(serde_json::Value::Null) => Some(None),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some),
    };
    Some(
        field("max_completion_tokens")?
            .or(field("max_tokens")?)
            .unwrap_or(256),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_follows_openai_precedence() {
        let v = serde_json::json!({"max_tokens": 9, "max_completion_tokens": 7});
        assert_eq!(requested_max_tokens(&v), Some(7));
        assert_eq!(
            requested_max_tokens(&serde_json::json!({"max_tokens": 9})),
            Some(9)
        );
        assert_eq!(requested_max_tokens(&serde_json::json!({})), Some(256));
        assert_eq!(
            requested_max_tokens(&serde_json::json!({"max_tokens": "x"})),
            None
        );
    }

    #[test]
    fn stream_items_parse_by_shape() {
        let e: StreamItem =
            serde_json::from_str(r#"{"error":{"message":"m","type":"t","code":"c"}}"#).unwrap();
        assert!(matches!(e, StreamItem::Error { .. }));
        let s: StreamItem =
            serde_json::from_str(r#"{"sealed":{"seq":0,"final":true,"ciphertext":"AAAA"}}"#)
                .unwrap();
        assert!(matches!(s, StreamItem::Sealed { .. }));
    }
}
