//! What an answer delivers, as its receipt must commit to it.
//!
//! A receipt's `response_hash` commits to the text and finish reason of a chat or text
//! completion (`text_response_hash`; `answer_response_hash` when the request constrained
//! the text — the constraint's digest, read from the request — or the answer delivers the
//! tokens' log-probabilities), or to the exact f32 bits of an embeddings answer
//! (`embedding_response_hash`). Whoever vouches for an answer (the gateway) or checks one (a
//! client) hashes what it actually received here and compares: a receipt signed for one text
//! and delivered with another is caught, whatever the signature says.
//!
//! Only answers whose every visible part is covered by the hash are accepted: one choice with
//! index 0 for completions (a second choice or a choice of another index would be text the
//! receipt does not commit to), and for embeddings the vectors in index order `0..n`.

use serde_json::Value;
use sortition_types::{Hash32, TokenLogprobCommit, answer_response_hash, embedding_response_hash};

use crate::{EmbeddingResponse, EmbeddingVector};

/// Why a delivered answer cannot be hashed as a receipt commits to it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveredError {
    #[error("the answer has {0} choices; a receipt commits to exactly one")]
    Choices(usize),
    #[error("the answer's choice has index {0}; a receipt commits to choice 0")]
    ChoiceIndex(u64),
    #[error("the answer has no finish reason")]
    Unfinished,
    #[error("the answer is not a chat completion, text completion or embeddings list")]
    UnknownObject,
    #[error("the embeddings answer is malformed: {0}")]
    Embeddings(String),
    #[error("the answer's tool calls are malformed")]
    ToolCalls,
    #[error("{0}")]
    Logprobs(#[from] crate::logprobs::MalformedLogprobs),
}

/// The generated text and why it ended, accumulated from a whole answer or the chunks of a
/// stream, with a note of anything delivered that a receipt cannot cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveredText {
    pub text: String,
    pub finish_reason: Option<String>,
    /// The tokens' log-probabilities when the answer delivers any (`logprobs` not null on
    /// some choice), concatenated over the chunks of a stream.
    pub logprobs: Option<Vec<TokenLogprobCommit>>,
    /// The digest of the constraint the request put on the text (structured outputs), read
    /// from the request by whoever checks the delivery ([`DeliveredText::for_request`]).
    pub constraint: Option<Hash32>,
    /// The tool calls delivered (by a whole message, or in pieces by a stream's deltas).
    pub calls: crate::tools::CallsSeen,
    /// The first part of the delivery a receipt does not commit to, if any.
    pub uncovered: Option<DeliveredError>,
}

impl DeliveredText {
    /// An empty delivery for the request `body` (its constraint noted).
    pub fn for_request(body: &[u8]) -> Self {
        DeliveredText {
            constraint: crate::constraint::digest_of_body(body),
            ..Default::default()
        }
    }

    /// Adds one chat or text completion object, or one streamed chunk. A chunk without
    /// choices (the usage chunk) adds nothing.
    pub fn absorb(&mut self, v: &Value) {
        let choices = match v.get("choices").and_then(Value::as_array) {
            Some(c) => c,
            None => return,
        };
        if choices.len() > 1 {
            self.uncover(DeliveredError::Choices(choices.len()));
        }
        let Some(c) = choices.first() else { return };
        match c.get("index").and_then(Value::as_u64) {
            Some(0) | None => {}
            Some(i) => self.uncover(DeliveredError::ChoiceIndex(i)),
        }
        for t in [&c["message"]["content"], &c["delta"]["content"], &c["text"]] {
            if let Some(t) = t.as_str() {
                self.text.push_str(t);
            }
        }
        for calls in [&c["message"]["tool_calls"], &c["delta"]["tool_calls"]] {
            if !self.calls.absorb(calls) {
                self.uncover(DeliveredError::ToolCalls);
            }
        }
        if let Some(f) = c["finish_reason"].as_str() {
            self.finish_reason = Some(f.to_string());
        }
        match c.get("logprobs") {
            None | Some(Value::Null) => {}
            Some(lp) => match crate::logprobs::commit_json(lp) {
                Ok(entries) => self.logprobs.get_or_insert_default().extend(entries),
                Err(e) => self.uncover(e.into()),
            },
        }
    }

    fn uncover(&mut self, e: DeliveredError) {
        self.uncovered.get_or_insert(e);
    }

    /// The `response_hash` a receipt for exactly this delivery must carry.
    pub fn response_hash(&self) -> Result<Hash32, DeliveredError> {
        if let Some(e) = &self.uncovered {
            return Err(e.clone());
        }
        let finish = self
            .finish_reason
            .as_deref()
            .filter(|f| !f.is_empty())
            .ok_or(DeliveredError::Unfinished)?;
        Ok(answer_response_hash(
            &crate::tools::committed_text(&self.text, self.calls.calls()),
            finish,
            self.constraint,
            self.logprobs.as_deref(),
        ))
    }
}

/// The `response_hash` that a receipt for this whole (unstreamed) answer to the request
/// `body` must carry: chat and text completions by their one choice's text and finish reason
/// (and the request's constraint, and the delivered log-probabilities), embeddings by their
/// vectors.
pub fn response_hash(answer: &Value, body: &[u8]) -> Result<Hash32, DeliveredError> {
    match answer.get("object").and_then(Value::as_str) {
        Some("chat.completion" | "text_completion") => {
            let n = answer
                .get("choices")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if n != 1 {
                return Err(DeliveredError::Choices(n));
            }
            let mut d = DeliveredText::for_request(body);
            d.absorb(answer);
            d.response_hash()
        }
        Some("list") => {
            let r: EmbeddingResponse = serde_json::from_value(answer.clone())
                .map_err(|e| DeliveredError::Embeddings(e.to_string()))?;
            embeddings_hash(&r)
        }
        _ => Err(DeliveredError::UnknownObject),
    }
}

/// Choice `index` of an answer of several choices (a gateway's `sortition.choices`) as its
/// node delivered it alone: the answer's object with only that choice, at index 0. `None`
/// when the answer has no such choice.
pub fn one_choice(answer: &Value, index: usize) -> Option<Value> {
    let mut choice = answer.get("choices")?.as_array()?.get(index)?.clone();
    choice["index"] = Value::from(0);
    Some(serde_json::json!({"object": answer.get("object")?, "choices": [choice]}))
}

/// The `response_hash` of an embeddings answer: its vectors, which must be numbered `0..n` in
/// order, decoded from floats or base64 to their f32 bits.
pub fn embeddings_hash(r: &EmbeddingResponse) -> Result<Hash32, DeliveredError> {
    let mut vectors = Vec::with_capacity(r.data.len());
    for (i, d) in r.data.iter().enumerate() {
        if d.index as usize != i {
            return Err(DeliveredError::Embeddings(format!(
                "vector {i} has index {}",
                d.index
            )));
        }
        vectors.push(decode_vector(&d.embedding)?);
    }
    Ok(embedding_response_hash(&vectors))
}

fn decode_vector(v: &EmbeddingVector) -> Result<Vec<f32>, DeliveredError> {
    use base64::Engine as _;
    match v {
        EmbeddingVector::Float(f) => Ok(f.clone()),
        EmbeddingVector::Base64(s) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| DeliveredError::Embeddings(format!("bad base64: {e}")))?;
            if bytes.len() % 4 != 0 {
                return Err(DeliveredError::Embeddings(
                    "base64 vector is not a whole number of f32s".into(),
                ));
            }
            Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use sortition_types::text_response_hash;

    #[test]
    fn chat_and_text_answers_hash_their_one_choice() {
        let chat = json!({"object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}]});
        assert_eq!(
            response_hash(&chat, b"{}").unwrap(),
            text_response_hash("Paris.", "stop")
        );
        let text = json!({"object": "text_completion", "choices": [
            {"index": 0, "text": "Paris.", "finish_reason": "length"}]});
        assert_eq!(
            response_hash(&text, b"{}").unwrap(),
            text_response_hash("Paris.", "length")
        );
    }

    #[test]
    fn text_a_receipt_does_not_cover_is_refused() {
        let two = json!({"object": "chat.completion", "choices": [
            {"index": 0, "message": {"content": "a"}, "finish_reason": "stop"},
            {"index": 1, "message": {"content": "b"}, "finish_reason": "stop"}]});
        assert_eq!(response_hash(&two, b"{}"), Err(DeliveredError::Choices(2)));
        let other = json!({"object": "chat.completion", "choices": [
            {"index": 1, "message": {"content": "a"}, "finish_reason": "stop"}]});
        assert_eq!(
            response_hash(&other, b"{}"),
            Err(DeliveredError::ChoiceIndex(1))
        );
        let unfinished = json!({"object": "text_completion", "choices": [
            {"index": 0, "text": "a", "finish_reason": null}]});
        assert_eq!(
            response_hash(&unfinished, b"{}"),
            Err(DeliveredError::Unfinished)
        );
        assert_eq!(
            response_hash(&json!({"object": "x"}), b"{}"),
            Err(DeliveredError::UnknownObject)
        );
        // In a stream, one stray chunk for another choice taints the whole delivery.
        let mut d = DeliveredText::default();
        d.absorb(&json!({"choices": [{"index": 0, "delta": {"content": "a"}}]}));
        d.absorb(&json!({"choices": [{"index": 1, "delta": {"content": "b"}}]}));
        d.absorb(&json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
        assert_eq!(d.response_hash(), Err(DeliveredError::ChoiceIndex(1)));
    }

    #[test]
    fn streamed_chunks_hash_as_the_whole_answer() {
        let mut d = DeliveredText::default();
        for c in ["Par", "is", "."] {
            d.absorb(
                &json!({"choices": [{"index": 0, "delta": {"content": c}, "finish_reason": null}]}),
            );
        }
        d.absorb(&json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
        d.absorb(&json!({"choices": [], "sortition": {}}));
        assert_eq!(
            d.response_hash().unwrap(),
            text_response_hash("Paris.", "stop")
        );
    }

    /// Log-probabilities are part of what is delivered, so of the hash: a stream that spreads
    /// them over chunks hashes as the whole answer; an altered value changes the hash.
    #[test]
    fn logprobs_are_covered_streamed_or_whole() {
        let entry = |t: &str, lp: f32| {
            json!({"token": t, "logprob": lp, "bytes": t.as_bytes(),
                   "top_logprobs": [{"token": t, "logprob": lp, "bytes": t.as_bytes()}]})
        };
        let whole = json!({"object": "chat.completion", "choices": [{"index": 0,
            "message": {"content": "Paris."}, "finish_reason": "stop",
            "logprobs": {"content": [entry("Paris", -0.25), entry(".", -1.5)]}}]});
        let h = response_hash(&whole, b"{}").unwrap();
        assert_ne!(h, text_response_hash("Paris.", "stop"));
        let mut d = DeliveredText::default();
        d.absorb(
            &json!({"choices": [{"index": 0, "delta": {"content": "Paris"},
            "logprobs": {"content": [entry("Paris", -0.25)]}}]}),
        );
        d.absorb(&json!({"choices": [{"index": 0, "delta": {"content": "."},
            "logprobs": {"content": [entry(".", -1.5)]}}]}));
        d.absorb(&json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": null}]}));
        assert_eq!(d.response_hash().unwrap(), h);
        let mut forged = whole.clone();
        forged["choices"][0]["logprobs"]["content"][1]["logprob"] = json!(-1.25);
        assert_ne!(response_hash(&forged, b"{}").unwrap(), h);
        // Text completions: the four lists.
        let text = json!({"object": "text_completion", "choices": [{"index": 0, "text": "ab",
            "finish_reason": "length", "logprobs": {"tokens": ["a", "b"],
            "token_logprobs": [-0.5, -0.75], "top_logprobs": [{"a": -0.5}, {"b": -0.75}],
            "text_offset": [0, 1]}}]});
        assert_ne!(
            response_hash(&text, b"{}").unwrap(),
            text_response_hash("ab", "length")
        );
        let mut bad = text.clone();
        bad["choices"][0]["logprobs"]["text_offset"] = json!([0]);
        assert!(matches!(
            response_hash(&bad, b"{}"),
            Err(DeliveredError::Logprobs(_))
        ));
    }

    /// A constrained request's answer commits to its constraint: the same text hashes
    /// otherwise without it, or under another schema.
    #[test]
    fn the_request_constraint_is_part_of_the_hash() {
        let answer = json!({"object": "chat.completion", "choices": [
            {"index": 0, "message": {"content": "{}"}, "finish_reason": "stop"}]});
        let obj = json!({"response_format": {"type": "json_object"}}).to_string();
        let schema = json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "required": []}}}})
        .to_string();
        let plain = response_hash(&answer, b"{}").unwrap();
        let a = response_hash(&answer, obj.as_bytes()).unwrap();
        let b = response_hash(&answer, schema.as_bytes()).unwrap();
        assert_eq!(plain, text_response_hash("{}", "stop"));
        assert!(a != plain && b != plain && a != b);
        let mut d = DeliveredText::for_request(obj.as_bytes());
        d.absorb(&json!({"choices": [{"index": 0, "delta": {"content": "{}"}, "finish_reason": "stop"}]}));
        assert_eq!(d.response_hash().unwrap(), a);
    }

    /// The f32 bits survive the JSON float text (parsed through f64) and base64, for values
    /// across the whole range: subnormals, extremes, signed zero, and a pseudo-random sweep.
    #[test]
    fn embeddings_hash_the_exact_f32_bits_through_json() {
        let mut v = vec![
            0.0f32,
            -0.0,
            f32::MIN_POSITIVE,
            f32::MIN_POSITIVE / 3.0,
            f32::from_bits(1),
            f32::MAX,
            f32::MIN,
            1.0 / 3.0,
            -0.1,
        ];
        let mut x: u32 = 0x9e37_79b9;
        while v.len() < 200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let f = f32::from_bits(x);
            if f.is_finite() {
                v.push(f);
            }
        }
        let want = embedding_response_hash(std::slice::from_ref(&v));
        for format in [None, Some("base64")] {
            let r = EmbeddingResponse {
                object: "list".into(),
                data: vec![crate::EmbeddingData {
                    object: "embedding".into(),
                    index: 0,
                    embedding: EmbeddingVector::encode(v.clone(), format).unwrap(),
                }],
                model: "m".into(),
                usage: crate::EmbeddingUsage {
                    prompt_tokens: 1,
                    total_tokens: 1,
                },
                sortition: None,
            };
            let text = serde_json::to_string(&r).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(response_hash(&back, b"{}").unwrap(), want, "{format:?}");
        }
    }

    #[test]
    fn embeddings_out_of_order_are_refused() {
        let a = json!({"object": "list", "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
            "data": [{"object": "embedding", "index": 1, "embedding": [1.0]},
                     {"object": "embedding", "index": 0, "embedding": [2.0]}]});
        assert!(matches!(
            response_hash(&a, b"{}"),
            Err(DeliveredError::Embeddings(_))
        ));
    }
}
