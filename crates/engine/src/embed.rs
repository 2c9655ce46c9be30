//! Sentence embeddings with a BERT model (all-MiniLM-L6-v2): mean pooling over the attention
//! mask, then L2 normalisation.
//!
//! Determinism: the batch is tokenized together (padding to the longest), but each text runs
//! through the network on its own unpadded tokens, so its embedding is bit-identical alone
//! and inside any batch: no padding width or batch size reaches a kernel's reduction order.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};

/// Most tokens of one input; a longer one is refused ([`EngineError::EmbeddingTooLong`]),
/// never truncated.
pub const MAX_TOKENS: usize = 512;

/// Inputs tokenized together (a batch bounds the tokenizer's memory, not the results: each
/// input runs through the network on its own).
const TOKENIZE_BATCH: usize = 256;

/// One input to embed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmbedInput {
    /// Text, tokenized with the model's tokenizer (its `[CLS]`/`[SEP]` added).
    Text(String),
    /// Token ids of the model's own vocabulary, used as given.
    Tokens(Vec<u32>),
}

/// A loaded embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    /// Width of an embedding vector.
    pub dim: usize,
}

impl Embedder {
    /// Loads `model.safetensors`, `tokenizer.json` and `config.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Embedder> {
        let corrupt = |what: &str, e: String| EngineError::CorruptWeights(format!("{what}: {e}"));
        let cfg_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| corrupt("config.json", e.to_string()))?;
        let config: Config =
            serde_json::from_str(&cfg_text).map_err(|e| corrupt("config.json", e.to_string()))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| corrupt("tokenizer.json", e.to_string()))?;
        // Every input runs on its own unpadded tokens, and none is cut: a too-long input is
        // refused by name.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| corrupt("tokenizer.json", e.to_string()))?;
        let weights = dir.join("model.safetensors");
        let bytes =
            std::fs::read(&weights).map_err(|e| corrupt("model.safetensors", e.to_string()))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .map_err(|e| corrupt("model.safetensors", e.to_string()))?;
        let model = BertModel::load(vb, &config)
            .map_err(|e| corrupt("model.safetensors", e.to_string()))?;
        let dim = serde_json::from_str::<serde_json::Value>(&cfg_text)
            .ok()
            .and_then(|v| v.get("hidden_size").and_then(|h| h.as_u64()))
            .unwrap_or(384) as usize;
        Ok(Embedder {
            model,
            tokenizer,
            dim,
        })
    }

    /// Embeds each text; returns the vectors and the number of tokens used.
    pub fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize)> {
        let inputs: Vec<EmbedInput> = texts.iter().cloned().map(EmbedInput::Text).collect();
        self.embed_inputs(&inputs)
    }

    /// The token ids of each input, checked before any is embedded: none empty, none longer
    /// than [`MAX_TOKENS`], every id in the vocabulary.
    pub fn tokenize(&self, inputs: &[EmbedInput]) -> Result<Vec<Vec<u32>>> {
        let vocab = self.tokenizer.get_vocab_size(true);
        let mut out = Vec::with_capacity(inputs.len());
        for (start, batch) in (0..)
            .step_by(TOKENIZE_BATCH)
            .zip(inputs.chunks(TOKENIZE_BATCH))
        {
            let texts: Vec<String> = batch
                .iter()
                .filter_map(|i| match i {
                    EmbedInput::Text(t) => Some(t.clone()),
                    EmbedInput::Tokens(_) => None,
                })
                .collect();
            let mut encs = self
                .tokenizer
                .encode_batch(texts, true)
                .map_err(|e| EngineError::InvalidParams(format!("tokenize: {e}")))?
                .into_iter();
            for (k, input) in batch.iter().enumerate() {
                let ids = match input {
                    EmbedInput::Text(_) => encs.next().map(|e| e.get_ids().to_vec()),
                    EmbedInput::Tokens(ids) => Some(ids.clone()),
                }
                .unwrap_or_default();
                let index = start + k;
                if ids.is_empty() {
                    return Err(EngineError::InvalidParams(format!(
                        "input[{index}] has no tokens"
                    )));
                }
                if ids.len() > MAX_TOKENS {
                    return Err(EngineError::EmbeddingTooLong {
                        index,
                        tokens: ids.len(),
                        max: MAX_TOKENS,
                    });
                }
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                    return Err(EngineError::InvalidParams(format!(
                        "input[{index}]: token id {bad} is outside the vocabulary (0 to {})",
                        vocab - 1
                    )));
                }
                out.push(ids);
            }
        }
        Ok(out)
    }

    /// Embeds each input (all checked first, see [`Embedder::tokenize`]); returns the vectors
    /// and the number of tokens used.
    pub fn embed_inputs(&self, inputs: &[EmbedInput]) -> Result<(Vec<Vec<f32>>, usize)> {
        self.embed_tokens(&self.tokenize(inputs)?)
    }

    /// Embeds inputs already tokenized and checked by [`Embedder::tokenize`].
    pub fn embed_tokens(&self, ids: &[Vec<u32>]) -> Result<(Vec<Vec<f32>>, usize)> {
        let mut out = Vec::with_capacity(ids.len());
        let mut usage = 0;
        for ids in ids {
            usage += ids.len();
            let types = vec![0u32; ids.len()];
            out.push(self.embed_one(ids, &types)?);
        }
        Ok((out, usage))
    }

    fn embed_one(&self, ids: &[u32], types: &[u32]) -> Result<Vec<f32>> {
        let n = ids.len();
        let ids_t = Tensor::from_slice(ids, (1, n), &Device::Cpu)?;
        let types_t = Tensor::from_slice(types, (1, n), &Device::Cpu)?;
        let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu)?;
        let hidden = self.model.forward(&ids_t, &types_t, Some(&mask))?; // [1, n, dim]
        let rows = hidden.squeeze(0)?.to_vec2::<f32>()?;
        // Mean over the (all valid) positions in a fixed order, then L2 normalise.
        let dim = rows.first().map_or(0, |r| r.len());
        let mut mean = vec![0f32; dim];
        for r in &rows {
            for (m, x) in mean.iter_mut().zip(r) {
                *m += x;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n.max(1) as f32);
        let norm = crate::kernels::dot(&mean, &mean).sqrt().max(1e-12);
        mean.iter_mut().for_each(|m| *m /= norm);
        Ok(mean)
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let d = crate::kernels::dot(a, b);
    d / (crate::kernels::dot(a, a).sqrt() * crate::kernels::dot(b, b).sqrt()).max(1e-12)
}
