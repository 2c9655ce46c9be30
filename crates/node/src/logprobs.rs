//! The engine's per-token log-probabilities rendered in OpenAI's shapes, and what the receipt
//! commits to of them. Executors and auditors render through here, so an auditor's
//! re-execution commits to exactly what an honest executor delivered.

use sortition_api::logprobs::token_text;
use sortition_api::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob};
use sortition_engine::{ChatTokenizer, TokenLogprobs};
use sortition_types::TokenLogprobCommit;

/// Renders successive tokens, keeping each text completion token's `text_offset` (characters
/// from the start of the delivered text, the echoed prompt included).
pub struct Renderer {
    tok: ChatTokenizer,
    /// Characters delivered before the next token.
    offset: u32,
}

/// Characters in `bytes`, counted as UTF-8 lead bytes (a token that splits a character counts
/// it once, where the character starts).
fn chars(bytes: &[u8]) -> u32 {
    bytes.iter().filter(|&&b| b & 0xc0 != 0x80).count() as u32
}

impl Renderer {
    /// A renderer whose first token starts at character `offset` (the echoed prompt's length).
    pub fn new(tok: ChatTokenizer, offset: u32) -> Self {
        Renderer { tok, offset }
    }

    fn token(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self.tok.token_bytes(id);
        (token_text(&bytes), bytes)
    }

    /// Chat entries for `lps`.
    pub fn chat(&mut self, lps: &[TokenLogprobs]) -> ChatLogprobs {
        let content = lps
            .iter()
            .map(|l| {
                let (token, bytes) = self.token(l.token);
                ChatTokenLogprob {
                    token,
                    logprob: l.logprob,
                    bytes: Some(bytes),
                    top_logprobs: l
                        .top
                        .iter()
                        .map(|&(id, logprob)| {
                            let (token, bytes) = self.token(id);
                            TopLogprob {
                                token,
                                logprob,
                                bytes: Some(bytes),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        ChatLogprobs { content }
    }

    /// Text completion positions for `lps`.
    pub fn text(&mut self, lps: &[TokenLogprobs]) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        for l in lps {
            let (token, bytes) = self.token(l.token);
            out.tokens.push(token);
            out.token_logprobs.push(Some(l.logprob));
            out.top_logprobs.push(Some(
                l.top
                    .iter()
                    .map(|&(id, logprob)| (self.token(id).0, logprob))
                    .collect(),
            ));
            out.text_offset.push(self.offset);
            self.offset += chars(&bytes);
        }
        out
    }
}

/// Log-probabilities rendered for one endpoint.
#[derive(Clone)]
pub enum Rendered {
    Chat(ChatLogprobs),
    Text(CompletionLogprobs),
}

impl Rendered {
    /// What the receipt commits to of these entries.
    pub fn commit(&self) -> Vec<TokenLogprobCommit> {
        match self {
            Rendered::Chat(c) => c.commit(),
            // A renderer's four lists always have one length.
            Rendered::Text(t) => t.commit().unwrap_or_default(),
        }
    }
}
