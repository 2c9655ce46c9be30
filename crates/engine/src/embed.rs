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
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{EngineError, Result};

/// Most tokens of one text; longer texts are truncated.
pub const MAX_TOKENS: usize = 512;

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
        let pad = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        };
        tokenizer.with_padding(Some(pad));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
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

    /// Embeds each text; returns the vectors and the number of (unpadded) tokens used.
    pub fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize)> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let encs = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EngineError::InvalidParams(format!("tokenize: {e}")))?;
        let mut out = Vec::with_capacity(texts.len());
        let mut usage = 0;
        for enc in &encs {
            let n = enc.get_attention_mask().iter().filter(|&&m| m == 1).count();
            usage += n;
            let ids = &enc.get_ids()[..n];
            let types = &enc.get_type_ids()[..n];
            out.push(self.embed_one(ids, types)?);
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
