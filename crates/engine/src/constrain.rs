//! Constrained decoding (structured outputs): a JSON schema compiled by `llguidance` into a
//! per-sequence matcher that gives, before each token, the set of tokens the schema still
//! allows. The scheduler samples from the logits row with every other token at `-inf` and
//! feeds the sampled token back; the end-of-sequence token is allowed only where the document
//! is complete.
//!
//! Determinism: a mask is a function of the schema, the tokenizer and the tokens generated so
//! far (no clock, no thread count), and the row it masks is the sequence's own, so a
//! constrained generation is bit-identical alone, in a batch and on every node of a class.
//! The library's version is part of what a constraint names ([`CONSTRAINT_LIBRARY`]).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::error::{EngineError, Result};
use crate::tokenizer::ChatTokenizer;

/// The library that compiles and enforces constraints, with its exact version: a different
/// version may allow other tokens, so it is named wherever a constraint is.
pub const CONSTRAINT_LIBRARY: &str = "llguidance 1.9.1";

/// A constraint on a generation's text.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// The text is a JSON document valid under this JSON schema.
    JsonSchema(serde_json::Value),
}

/// The model's tokens as `llguidance` sees them: each id's bytes (control tokens marked as
/// special), and the model's tokenizer for text.
struct Env {
    trie: TokTrie,
    tok: ChatTokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tok
            .encode(&String::from_utf8_lossy(s))
            .unwrap_or_default()
    }
}

/// Compiles constraints for one model's tokenizer (built once per engine).
pub struct Compiler {
    factory: ParserFactory,
}

impl Compiler {
    /// Builds the token trie of `tok` and the parser factory over it.
    pub fn new(tok: &ChatTokenizer) -> Result<Self> {
        let vocab = tok.vocab_size();
        let stop = tok.stop_ids();
        let mut info = TokRxInfo::new(vocab as u32, stop.first().copied().unwrap_or(0));
        info.tok_end_of_turn = stop.get(1).copied();
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                let bytes = tok.token_bytes(id);
                if tok.special_ids().binary_search(&id).is_ok() {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend(bytes);
                    marked
                } else {
                    bytes
                }
            })
            .collect();
        let env: TokEnv = Arc::new(Env {
            trie: TokTrie::from(&info, &words),
            tok: tok.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Internal(format!("constraint compiler: {e}")))?;
        factory.quiet();
        Ok(Compiler { factory })
    }

    /// A fresh matcher for `c`; a schema the library cannot enforce is refused
    /// ([`EngineError::InvalidConstraint`], naming what it does not support).
    pub fn matcher(&self, c: &Constraint) -> Result<Matcher> {
        let Constraint::JsonSchema(schema) = c;
        let mut schema = schema.clone();
        let Some(top) = schema.as_object_mut() else {
            return Err(EngineError::InvalidConstraint(
                "the schema must be a JSON object".into(),
            ));
        };
        if top.contains_key("x-guidance") {
            return Err(EngineError::InvalidConstraint(
                "'x-guidance' is not accepted in a schema".into(),
            ));
        }
        // Compact JSON (no optional whitespace): a model cannot pad a document forever.
        top.insert(
            "x-guidance".into(),
            serde_json::json!({"whitespace_flexible": false}),
        );
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| EngineError::InvalidConstraint(e.to_string()))?;
        Ok(Matcher::new(Ok(parser)))
    }
}

/// Sets every token `m` does not allow next to `-inf` in a copy of `row`. An error when the
/// matcher has failed or allows nothing. (The scheduler ends a sequence as soon as its
/// matcher is complete, so a mask is only asked of a matcher that can go on.)
pub fn masked(m: &mut Matcher, row: &[f32]) -> std::result::Result<Vec<f32>, String> {
    let mask = m.compute_mask().map_err(|e| e.to_string())?;
    if mask.is_zero() {
        return Err("the constraint allows no token".into());
    }
    let mut out = vec![f32::NEG_INFINITY; row.len()];
    mask.iter_set_entries(|i| {
        if let (Some(o), Some(&v)) = (out.get_mut(i), row.get(i)) {
            *o = v;
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// [`super::CONSTRAINT_LIBRARY`] names the version the engine is built with (pinned).
    #[test]
    fn the_named_library_version_is_the_pinned_one() {
        let manifest = include_str!("../Cargo.toml");
        let version = super::CONSTRAINT_LIBRARY
            .strip_prefix("llguidance ")
            .unwrap_or_default();
        assert!(
            manifest.contains(&format!("llguidance = {{ version = \"={version}\"")),
            "Cargo.toml does not pin llguidance {version}"
        );
    }
}
