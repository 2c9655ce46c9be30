//! The embeddings request and response (OpenAI's shapes).

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::openai::refuse_extra;
use crate::responses::SortitionExt;

/// Most inputs of one embeddings request (OpenAI's bound).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// Embeddings `input`: a string, a list of strings, a list of token ids, or a list of lists
/// of token ids (ids of the model's own vocabulary).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One input of an embeddings request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingItem {
    Text(String),
    Tokens(Vec<u32>),
}

impl EmbeddingInput {
    /// The inputs, in order: one per string or per list of ids.
    pub fn into_items(self) -> Vec<EmbeddingItem> {
        match self {
            EmbeddingInput::One(s) => vec![EmbeddingItem::Text(s)],
            EmbeddingInput::Many(v) => v.into_iter().map(EmbeddingItem::Text).collect(),
            EmbeddingInput::Tokens(ids) => vec![EmbeddingItem::Tokens(ids)],
            EmbeddingInput::TokenLists(v) => v.into_iter().map(EmbeddingItem::Tokens).collect(),
        }
    }

    /// How many inputs.
    pub fn count(&self) -> usize {
        match self {
            EmbeddingInput::One(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Many(v) => v.len(),
            EmbeddingInput::TokenLists(v) => v.len(),
        }
    }

    /// An upper bound of the tokens embedded, capped per input at `max_per_input`: a text
    /// has at most one token per byte plus `[CLS]` and `[SEP]`; ids count as given.
    pub fn token_bound(&self, max_per_input: u64) -> u64 {
        let text = |t: &String| (t.len() as u64 + 2).min(max_per_input);
        let ids = |v: &Vec<u32>| (v.len() as u64).min(max_per_input);
        match self {
            EmbeddingInput::One(t) => text(t),
            EmbeddingInput::Many(v) => v.iter().map(text).sum(),
            EmbeddingInput::Tokens(v) => ids(v),
            EmbeddingInput::TokenLists(v) => v.iter().map(ids).sum(),
        }
    }

    /// Refuses (400, `param` `input`) an empty request or more than
    /// [`MAX_EMBEDDING_INPUTS`] inputs.
    pub fn check_count(&self) -> Result<(), ApiError> {
        let n = self.count();
        if n == 0 || n > MAX_EMBEDDING_INPUTS {
            return Err(ApiError::invalid(
                "invalid_input",
                format!(
                    "'input' holds {n} inputs; it must hold 1 to {MAX_EMBEDDING_INPUTS} \
                     strings or lists of token ids"
                ),
            )
            .with_param("input"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    /// `float` (default) or `base64` (little-endian f32), as the OpenAI SDK asks by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every other field, so that none is silently ignored ([`EmbeddingRequest::check_supported`]).
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl EmbeddingRequest {
    /// Refuses (400, naming the `param`) any field this request type does not read, as
    /// chat and completions do.
    pub fn check_supported(&self) -> Result<(), ApiError> {
        refuse_extra(&self.extra)
    }
}

/// One embedding: a float list or its base64 encoding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

impl EmbeddingVector {
    /// Encodes per the request's `encoding_format`.
    pub fn encode(v: Vec<f32>, format: Option<&str>) -> Result<Self, ApiError> {
        use base64::Engine as _;
        match format {
            None | Some("float") => Ok(EmbeddingVector::Float(v)),
            Some("base64") => {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Ok(EmbeddingVector::Base64(
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                ))
            }
            Some(other) => Err(ApiError::invalid(
                "invalid_encoding_format",
                format!("encoding_format must be 'float' or 'base64', not '{other}'"),
            )
            .with_param("encoding_format")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingData {
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingResponse {
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sortition: Option<SortitionExt>,
}
