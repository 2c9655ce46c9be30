//! Reading a llama GGUF file: the network's shape from its metadata, and its tensors in the
//! weight format asked for (re-encoded to Q8_0, or as shipped).

use std::collections::HashMap;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::{EngineError, Result};

/// How weight matrices are held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Re-encode every matrix to Q8_0 at load, and quantize each product's activations to
    /// Q8 blocks ([`crate::q8p`]: integer products; the default).
    #[default]
    Q8_0,
    /// Q8_0 weights as [`WeightFormat::Q8_0`], activations kept in f32 ([`crate::qf`]):
    /// no rounding of the activations (engine numerics `n3`), but several times the
    /// arithmetic for batched decode, prefill and scoring.
    Q8_0F32,
    /// Keep the quantization shipped in the GGUF file (Q4_1 runs on our kernel too; fewer
    /// bytes per token, so faster single-stream decode).
    Shipped,
}

/// Shape of the network, read from `llama.*` GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context_len: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
}

fn md_usize(md: &HashMap<String, Value>, key: &str) -> Result<usize> {
    md.get(key)
        .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
        .map(|v| v as usize)
        .ok_or_else(|| EngineError::CorruptWeights(format!("missing metadata {key}")))
}

fn md_f32(md: &HashMap<String, Value>, key: &str, default: f32) -> f32 {
    md.get(key).and_then(|v| v.to_f32().ok()).unwrap_or(default)
}

impl LlamaConfig {
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self> {
        let hidden = md_usize(md, "llama.embedding_length")?;
        let heads = md_usize(md, "llama.attention.head_count")?;
        let kv_heads = md_usize(md, "llama.attention.head_count_kv").unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(EngineError::CorruptWeights(
                "inconsistent head counts".into(),
            ));
        }
        Ok(LlamaConfig {
            hidden,
            layers: md_usize(md, "llama.block_count")?,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            ffn: md_usize(md, "llama.feed_forward_length")?,
            vocab: 0,
            context_len: md_usize(md, "llama.context_length")?,
            rope_theta: md_f32(md, "llama.rope.freq_base", 10000.0),
            rms_eps: md_f32(md, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        })
    }
}

pub(crate) struct Loader<'a> {
    pub(crate) content: &'a Content,
    pub(crate) file: std::io::BufReader<std::fs::File>,
    pub(crate) format: WeightFormat,
    pub(crate) shipped: Option<GgmlDType>,
}

impl Loader<'_> {
    pub(crate) fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| EngineError::CorruptWeights(format!("tensor {name}: {e}")))
    }
    pub(crate) fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.qtensor(name)?.dequantize(&Device::Cpu)?;
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        if v.len() != len {
            return Err(EngineError::CorruptWeights(format!(
                "{name}: length {}",
                v.len()
            )));
        }
        Ok(v)
    }
    pub(crate) fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QTensor> {
        let qt = self.qtensor(name)?;
        self.encode(name, qt, rows, cols)
    }
    /// Checks the shape and re-encodes to Q8_0 when asked (or when dense).
    pub(crate) fn encode(
        &mut self,
        name: &str,
        qt: QTensor,
        rows: usize,
        cols: usize,
    ) -> Result<QTensor> {
        if qt.shape().dims() != [rows, cols] {
            return Err(EngineError::CorruptWeights(format!(
                "{name}: shape {:?}",
                qt.shape()
            )));
        }
        if !matches!(
            qt.dtype(),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        ) {
            self.shipped.get_or_insert(qt.dtype());
        }
        // Dense matrices go to our Q8_0 kernel too.
        let needs_q8 = self.format != WeightFormat::Shipped
            || matches!(
                qt.dtype(),
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            );
        Ok(if needs_q8 && qt.dtype() != GgmlDType::Q8_0 {
            QTensor::quantize(&qt.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?
        } else {
            qt
        })
    }
}
