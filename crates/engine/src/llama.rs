//! A llama forward pass of our own on candle's quantized matmuls, with per-sequence KV caches.
//!
//! Determinism: every operation here is computed per row in a fixed order. The linear layers
//! use candle's CPU quantized matmul, which computes each output element with the same dot
//! product whatever the number of rows or threads (checked in candle 0.11.1 `k_quants::matmul`
//! and proven by this crate's tests). Norms, RoPE, SwiGLU and attention are plain Rust loops
//! over one row at a time, so a token's logits are bit-identical whether it is computed in a
//! prefill, in a batched decode step next to other sequences, or in a teacher-forced score.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::error::{EngineError, Result};
use crate::kernels::{add_into, dot, rms_norm_row, silu_mul};

/// How weight matrices are held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Re-encode every matrix to Q8_0 at load (fastest on AVX2; the default).
    #[default]
    Q8_0,
    /// Keep the quantization shipped in the GGUF file.
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

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Vec<f32>,
    w_gate: QMatMul,
    w_up: QMatMul,
    w_down: QMatMul,
}

/// The loaded network. Immutable; sequences keep their state in a [`KvCache`].
pub struct Llama {
    pub cfg: LlamaConfig,
    /// Token embeddings, dequantized, `[vocab * hidden]`.
    embed: Vec<f32>,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: QMatMul,
    /// RoPE tables `[context_len * head_dim/2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Human-readable quantization, recorded in the node class.
    pub quantization: String,
}

/// Keys and values of one sequence, all layers, post-RoPE.
#[derive(Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence's part in a forward call: its cache and the tokens to append to it.
pub struct Segment<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    /// Return logits for every new position (scoring) rather than only the last one.
    pub all_logits: bool,
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

struct Loader<'a> {
    content: &'a Content,
    file: std::fs::File,
    format: WeightFormat,
    shipped: Option<GgmlDType>,
}

impl Loader<'_> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| EngineError::CorruptWeights(format!("tensor {name}: {e}")))
    }
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
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
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMatMul> {
        let qt = self.qtensor(name)?;
        self.make_matmul(name, qt, rows, cols)
    }
    fn make_matmul(
        &mut self,
        name: &str,
        qt: QTensor,
        rows: usize,
        cols: usize,
    ) -> Result<QMatMul> {
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
        // Dense matrices would go through f32 gemm (not proven batch invariant): quantize them.
        let needs_q8 = self.format == WeightFormat::Q8_0
            || matches!(
                qt.dtype(),
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            );
        let qt = if needs_q8 && qt.dtype() != GgmlDType::Q8_0 {
            QTensor::quantize(&qt.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?
        } else {
            qt
        };
        // Built directly (not `from_qtensor`) so CANDLE_DEQUANTIZE_ALL cannot change the kernels.
        Ok(QMatMul::QTensor(std::sync::Arc::new(qt)))
    }
}

impl Llama {
    /// Loads a llama-architecture GGUF file. Returns the model and the file's metadata.
    pub fn load(path: &Path, format: WeightFormat) -> Result<(Llama, HashMap<String, Value>)> {
        let mut file = std::fs::File::open(path)?;
        let content = Content::read(&mut file)
            .map_err(|e| EngineError::CorruptWeights(format!("gguf header: {e}")))?;
        let md = content.metadata.clone();
        match md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
        {
            Some(a) if a == "llama" => {}
            other => {
                return Err(EngineError::CorruptWeights(format!(
                    "architecture {other:?}"
                )));
            }
        }
        let mut cfg = LlamaConfig::from_metadata(&md)?;
        let mut ld = Loader {
            content: &content,
            file,
            format,
            shipped: None,
        };
        let emb_q = ld.qtensor("token_embd.weight")?;
        let dims = emb_q.shape().dims().to_vec();
        if dims.len() != 2 || dims[1] != cfg.hidden {
            return Err(EngineError::CorruptWeights(format!(
                "token_embd shape {dims:?}"
            )));
        }
        cfg.vocab = dims[0];
        let embed = emb_q
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (h, kvd) = (cfg.hidden, cfg.kv_heads * cfg.head_dim);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: ld.vector(&p("attn_norm"), h)?,
                wq: ld.matrix(&p("attn_q"), h, h)?,
                wk: ld.matrix(&p("attn_k"), kvd, h)?,
                wv: ld.matrix(&p("attn_v"), kvd, h)?,
                wo: ld.matrix(&p("attn_output"), h, h)?,
                ffn_norm: ld.vector(&p("ffn_norm"), h)?,
                w_gate: ld.matrix(&p("ffn_gate"), cfg.ffn, h)?,
                w_up: ld.matrix(&p("ffn_up"), cfg.ffn, h)?,
                w_down: ld.matrix(&p("ffn_down"), h, cfg.ffn)?,
            });
        }
        let out_norm = ld.vector("output_norm.weight", h)?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            ld.matrix("output.weight", cfg.vocab, h)?
        } else {
            ld.make_matmul("token_embd.weight", emb_q, cfg.vocab, h)?
        };
        let shipped = ld
            .shipped
            .map(|d| format!("{d:?}").to_lowercase())
            .unwrap_or("f32".into());
        let quantization = match format {
            WeightFormat::Q8_0 if shipped != "q8_0" => format!("q8_0(from {shipped})"),
            _ => shipped,
        };
        let (cos, sin) = rope_tables(&cfg);
        let model = Llama {
            cfg,
            embed,
            layers,
            out_norm,
            output,
            cos,
            sin,
            quantization,
        };
        Ok((model, md))
    }

    /// Lowers the context length (smaller RoPE tables and caches).
    pub fn cap_context(&mut self, cap: usize) {
        if cap > 0 && cap < self.cfg.context_len {
            self.cfg.context_len = cap;
            let half = self.cfg.head_dim / 2;
            self.cos.truncate(cap * half);
            self.sin.truncate(cap * half);
        }
    }

    /// A fresh, empty cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        let cap = 256 * self.cfg.kv_heads * self.cfg.head_dim;
        KvCache {
            k: (0..self.cfg.layers)
                .map(|_| Vec::with_capacity(cap))
                .collect(),
            v: (0..self.cfg.layers)
                .map(|_| Vec::with_capacity(cap))
                .collect(),
            len: 0,
        }
    }

    fn linear(&self, w: &QMatMul, x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        let t = Tensor::from_slice(x, (rows, cols), &Device::Cpu)?;
        Ok(w.forward(&t)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Runs the new tokens of every segment through the network, all rows stacked into one
    /// matmul per linear layer, attention per sequence over its own cache. Returns per segment
    /// the logits rows asked for (the last position, or all new positions), `vocab` wide.
    pub fn forward(&self, segs: &mut [Segment<'_>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let (h, kvd) = (c.hidden, c.kv_heads * c.head_dim);
        let rows: usize = segs.iter().map(|s| s.tokens.len()).sum();
        for s in segs.iter() {
            if s.tokens.is_empty() || s.cache.len + s.tokens.len() > c.context_len {
                return Err(EngineError::PromptTooLong {
                    tokens: s.cache.len + s.tokens.len(),
                    context: c.context_len,
                });
            }
            if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(EngineError::InvalidParams(format!(
                    "token id {t} out of vocabulary"
                )));
            }
        }
        let mut x = Vec::with_capacity(rows * h);
        for s in segs.iter() {
            for &t in s.tokens {
                x.extend_from_slice(&self.embed[t as usize * h..(t as usize + 1) * h]);
            }
        }
        let mut xn = vec![0f32; rows * h];
        for (li, layer) in self.layers.iter().enumerate() {
            for r in 0..rows {
                rms_norm_row(
                    &x[r * h..(r + 1) * h],
                    &layer.attn_norm,
                    c.rms_eps,
                    &mut xn[r * h..(r + 1) * h],
                );
            }
            let mut q = self.linear(&layer.wq, &xn, rows, h)?;
            let mut k = self.linear(&layer.wk, &xn, rows, h)?;
            let v = self.linear(&layer.wv, &xn, rows, h)?;
            let mut attn = vec![0f32; rows * h];
            let mut r0 = 0;
            for s in segs.iter_mut() {
                let start = s.cache.len;
                for i in 0..s.tokens.len() {
                    let (r, pos) = (r0 + i, start + i);
                    self.rope(&mut q[r * h..(r + 1) * h], pos);
                    self.rope(&mut k[r * kvd..(r + 1) * kvd], pos);
                    s.cache.k[li].extend_from_slice(&k[r * kvd..(r + 1) * kvd]);
                    s.cache.v[li].extend_from_slice(&v[r * kvd..(r + 1) * kvd]);
                    self.attend(
                        &q[r * h..(r + 1) * h],
                        &s.cache.k[li],
                        &s.cache.v[li],
                        pos + 1,
                        &mut attn[r * h..(r + 1) * h],
                    );
                }
                r0 += s.tokens.len();
            }
            let o = self.linear(&layer.wo, &attn, rows, h)?;
            add_into(&mut x, &o);
            for r in 0..rows {
                rms_norm_row(
                    &x[r * h..(r + 1) * h],
                    &layer.ffn_norm,
                    c.rms_eps,
                    &mut xn[r * h..(r + 1) * h],
                );
            }
            let mut g = self.linear(&layer.w_gate, &xn, rows, h)?;
            let u = self.linear(&layer.w_up, &xn, rows, h)?;
            silu_mul(&mut g, &u);
            let d = self.linear(&layer.w_down, &g, rows, c.ffn)?;
            add_into(&mut x, &d);
        }
        // Only the rows whose logits are wanted go through the (large) output matmul.
        let mut picked = Vec::new();
        let mut counts = Vec::with_capacity(segs.len());
        let mut r0 = 0;
        for s in segs.iter_mut() {
            let n = s.tokens.len();
            let from = if s.all_logits { 0 } else { n - 1 };
            for r in r0 + from..r0 + n {
                let mut row = vec![0f32; h];
                rms_norm_row(&x[r * h..(r + 1) * h], &self.out_norm, c.rms_eps, &mut row);
                picked.extend_from_slice(&row);
            }
            counts.push(n - from);
            s.cache.len += n;
            r0 += n;
        }
        let total: usize = counts.iter().sum();
        let logits = self.linear(&self.output, &picked, total, h)?;
        let mut out = Vec::with_capacity(segs.len());
        let mut at = 0;
        for n in counts {
            out.push(logits[at * c.vocab..(at + n) * c.vocab].to_vec());
            at += n;
        }
        Ok(out)
    }

    /// Interleaved (GGUF llama layout) rotary embedding of every head in `x`, in place.
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.cfg.head_dim / 2;
        let (cos, sin) = (
            &self.cos[pos * half..(pos + 1) * half],
            &self.sin[pos * half..(pos + 1) * half],
        );
        for head in x.chunks_exact_mut(self.cfg.head_dim) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }

    /// Causal attention of one query row over the first `n` cached positions.
    fn attend(&self, q: &[f32], kc: &[f32], vc: &[f32], n: usize, out: &mut [f32]) {
        let c = &self.cfg;
        let (hd, kvd, group) = (c.head_dim, c.kv_heads * c.head_dim, c.heads / c.kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = vec![0f32; n];
        for head in 0..c.heads {
            let kvh = head / group;
            let qh = &q[head * hd..(head + 1) * hd];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot(qh, &kc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd]) * scale;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let oh = &mut out[head * hd..(head + 1) * hd];
            oh.fill(0.0);
            for (j, s) in scores.iter().enumerate() {
                let p = s / sum;
                let vj = &vc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                for (o, v) in oh.iter_mut().zip(vj) {
                    *o += p * v;
                }
            }
        }
    }
}

fn rope_tables(cfg: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let mut cos = Vec::with_capacity(cfg.context_len * half);
    let mut sin = Vec::with_capacity(cfg.context_len * half);
    for pos in 0..cfg.context_len {
        for i in 0..half {
            let freq = 1.0 / (cfg.rope_theta as f64).powf(2.0 * i as f64 / cfg.head_dim as f64);
            let angle = pos as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}
