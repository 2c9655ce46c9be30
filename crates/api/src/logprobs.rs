//! Log-probabilities on the wire, in OpenAI's two shapes, and what a receipt commits to of
//! them ([`sortition_types::TokenLogprobCommit`]).
//!
//! Chat answers carry `choices[].logprobs.content`, one entry per generated token with its
//! `top_logprobs` list; text completions carry four parallel lists (`tokens`,
//! `token_logprobs`, `top_logprobs` maps, `text_offset`). A streamed answer spreads the
//! entries over its chunks; their concatenation is the unstreamed answer's list, so both
//! commit to the same thing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sortition_types::TokenLogprobCommit;

/// Most `top_logprobs` a chat request may ask for.
pub const MAX_CHAT_TOP_LOGPROBS: u32 = 20;
/// Most alternatives a text completion's `logprobs` may ask for.
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// One alternative of a chat token entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

/// One generated token of a chat answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// A chat choice's `logprobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// A text completion choice's `logprobs`: four lists, one position per token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    pub text_offset: Vec<u32>,
}

/// Why delivered log-probabilities cannot be committed to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the answer's logprobs are malformed: {0}")]
pub struct MalformedLogprobs(pub String);

impl ChatLogprobs {
    /// What a receipt commits to of these entries, in order.
    pub fn commit(&self) -> Vec<TokenLogprobCommit> {
        self.content
            .iter()
            .map(|e| TokenLogprobCommit {
                token: e.token.clone(),
                bytes: e.bytes.clone(),
                logprob: Some(e.logprob.to_bits()),
                offset: None,
                top: e
                    .top_logprobs
                    .iter()
                    .map(|t| (t.token.clone(), t.bytes.clone(), t.logprob.to_bits()))
                    .collect(),
            })
            .collect()
    }
}

impl CompletionLogprobs {
    /// What a receipt commits to of these positions, in order; the four lists must have one
    /// length.
    pub fn commit(&self) -> Result<Vec<TokenLogprobCommit>, MalformedLogprobs> {
        let n = self.tokens.len();
        if [
            self.token_logprobs.len(),
            self.top_logprobs.len(),
            self.text_offset.len(),
        ] != [n; 3]
        {
            return Err(MalformedLogprobs(
                "tokens, token_logprobs, top_logprobs and text_offset differ in length".into(),
            ));
        }
        Ok((0..n)
            .map(|i| TokenLogprobCommit {
                token: self.tokens[i].clone(),
                bytes: None,
                logprob: self.token_logprobs[i].map(f32::to_bits),
                offset: Some(self.text_offset[i]),
                top: self.top_logprobs[i]
                    .iter()
                    .flatten()
                    .map(|(t, v)| (t.clone(), None, v.to_bits()))
                    .collect(),
            })
            .collect())
    }

    /// Appends another chunk's positions.
    pub fn extend(&mut self, other: CompletionLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}

/// The commitment of one delivered `logprobs` value (a chat or a text completion choice's),
/// read from JSON as a gateway or client receives it.
pub fn commit_json(v: &serde_json::Value) -> Result<Vec<TokenLogprobCommit>, MalformedLogprobs> {
    let bad = |e: serde_json::Error| MalformedLogprobs(e.to_string());
    if v.get("content").is_some() {
        let c: ChatLogprobs = serde_json::from_value(v.clone()).map_err(bad)?;
        Ok(c.commit())
    } else {
        let c: CompletionLogprobs = serde_json::from_value(v.clone()).map_err(bad)?;
        c.commit()
    }
}

/// A token's bytes as OpenAI names a token: its text when the bytes are UTF-8, else
/// `bytes:` and each byte as `\xNN` (a token holding part of a character).
pub fn token_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut s = String::from("bytes:");
            for b in bytes {
                s.push_str(&format!("\\x{b:02x}"));
            }
            s
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chat() -> ChatLogprobs {
        ChatLogprobs {
            content: vec![ChatTokenLogprob {
                token: "Hi".into(),
                logprob: -0.1,
                bytes: Some(b"Hi".to_vec()),
                top_logprobs: vec![TopLogprob {
                    token: "Hi".into(),
                    logprob: -0.1,
                    bytes: Some(b"Hi".to_vec()),
                }],
            }],
        }
    }

    /// What a node commits to (its f32 values) is what a gateway reads back from the JSON
    /// text: f32 values survive serde_json's round trip bit for bit.
    #[test]
    fn commitments_survive_the_json_round_trip() {
        let c = chat();
        let text = serde_json::to_string(&c).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(commit_json(&v).unwrap(), c.commit());
        let mut t = CompletionLogprobs::default();
        for (i, x) in [-0.1f32, -1e-7, -9999.0, -3.402_823e38, -0.0, -1.17e-38]
            .iter()
            .enumerate()
        {
            t.tokens.push(format!("t{i}"));
            t.token_logprobs.push(Some(*x));
            t.top_logprobs.push(Some(BTreeMap::from([
                (format!("t{i}"), *x),
                ("z".into(), -2.5),
            ])));
            t.text_offset.push(i as u32);
        }
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(commit_json(&v).unwrap(), t.commit().unwrap());
        t.text_offset.pop();
        assert!(t.commit().is_err());
    }

    #[test]
    fn partial_characters_are_named_by_their_bytes() {
        assert_eq!(token_text(b" hello"), " hello");
        assert_eq!(token_text(&[0xe2, 0x9c]), "bytes:\\xe2\\x9c");
    }
}
