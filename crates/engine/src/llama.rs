//! A llama forward pass of our own on our quantized-weight matmul kernels (Q8_0 weights with
//! Q8 activations in integer panel products, [`crate::q8p`], or with f32 activations,
//! [`crate::qf`]; Q4_1 weights with Q8 activations, [`crate::q8`]), with per-sequence KV
//! caches in half precision ([`crate::attn`]).
//!
//! Determinism: every operation here is computed per row in a fixed order. The linear layers
//! compute each output element with one fixed sequence of operations whatever the number of
//! rows or threads (see `q8p`, `qf` and `q8`). Norms, RoPE, SwiGLU and attention are
//! computed per row in a fixed order (attention's scores and weighted sums as per-lane
//! chains, whatever the vector width; element-wise work split among threads by position
//! only), so a token's logits are bit-identical whether it is computed in a prefill, in a
//! batched decode step next to other sequences, or in a teacher-forced score.
//!
//! Weights kept in a shipped quantization ([`WeightFormat::Shipped`]) run on our kernels when
//! it is Q4_1 (SmolLM2's file) or Q8_0; any other shipped quantization runs on candle's quantized
//! matmul, which has the same per-element property (checked in candle 0.11.1
//! `k_quants::matmul`) but reads the weights once per activation row.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::attn::{self, HeadCache};
use crate::error::{EngineError, Result};
use crate::kernels::{add_into, rms_norm_row, silu_mul};
use sortition_kernels::{Kernel, Pool};

use crate::gguf::Loader;
pub use crate::gguf::{LlamaConfig, WeightFormat};
use crate::linear::Linear;

struct Layer {
    attn_norm: Vec<f32>,
    /// Query, key and value projections, stacked.
    qkv: Linear,
    wo: Linear,
    ffn_norm: Vec<f32>,
    /// Gate and up projections, stacked.
    gate_up: Linear,
    w_down: Linear,
}

/// The loaded network. Immutable; sequences keep their state in a [`KvCache`].
pub struct Llama {
    pub cfg: LlamaConfig,
    /// Token embeddings, dequantized, `[vocab * hidden]`.
    embed: Vec<f32>,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Linear,
    /// Threads and kernel of the linear layers.
    pool: Pool,
    /// RoPE tables `[context_len * head_dim/2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Human-readable quantization, recorded in the node class.
    pub quantization: String,
    /// Matmul kernels in use, recorded in the node class.
    pub kernels: String,
}

/// One query row's view of its sequence's cache in a layer: keys and values per key/value
/// head, and how many positions it attends to.
type RowContext<'a> = (&'a [HeadCache], usize);

thread_local! {
    /// Attention scores of one work item, kept between items and steps (no allocation and
    /// zeroing per item).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keys (post-RoPE) and values of one sequence, all layers.
#[derive(Default)]
pub struct KvCache {
    /// One per layer and key/value head (`layer * kv_heads + head`), so that attention
    /// streams a head's positions from contiguous memory (in half precision: see
    /// [`crate::attn`]).
    heads: Vec<HeadCache>,
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

impl Llama {
    /// Loads a llama-architecture GGUF file; its linear layers run on `kernel` with
    /// `threads` threads. Returns the model and the file's metadata.
    pub fn load(
        path: &Path,
        format: WeightFormat,
        threads: usize,
        kernel: Kernel,
    ) -> Result<(Llama, HashMap<String, Value>)> {
        // Buffered: the header is some 200 000 small reads (the vocabulary and merges).
        let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
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
        let f32_acts = format == WeightFormat::Q8_0F32;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: ld.vector(&p("attn_norm"), h)?,
                qkv: Linear::new(
                    vec![
                        ld.matrix(&p("attn_q"), h, h)?,
                        ld.matrix(&p("attn_k"), kvd, h)?,
                        ld.matrix(&p("attn_v"), kvd, h)?,
                    ],
                    f32_acts,
                )?,
                wo: Linear::new(vec![ld.matrix(&p("attn_output"), h, h)?], f32_acts)?,
                ffn_norm: ld.vector(&p("ffn_norm"), h)?,
                gate_up: Linear::new(
                    vec![
                        ld.matrix(&p("ffn_gate"), cfg.ffn, h)?,
                        ld.matrix(&p("ffn_up"), cfg.ffn, h)?,
                    ],
                    f32_acts,
                )?,
                w_down: Linear::new(vec![ld.matrix(&p("ffn_down"), h, cfg.ffn)?], f32_acts)?,
            });
        }
        let out_norm = ld.vector("output_norm.weight", h)?;
        let output = Linear::new(
            vec![if content.tensor_infos.contains_key("output.weight") {
                ld.matrix("output.weight", cfg.vocab, h)?
            } else {
                ld.encode("token_embd.weight", emb_q, cfg.vocab, h)?
            }],
            f32_acts,
        )?;
        let shipped = ld
            .shipped
            .map(|d| format!("{d:?}").to_lowercase())
            .unwrap_or("f32".into());
        let quantization = match format {
            WeightFormat::Q8_0 | WeightFormat::Q8_0F32 if shipped != "q8_0" => {
                format!("q8_0(from {shipped})")
            }
            _ => shipped,
        };
        let (cos, sin) = rope_tables(&cfg);
        // Every kernel the layers run on, in a fixed order, once each.
        let mut names: Vec<String> = std::iter::once(&output)
            .chain(
                layers
                    .iter()
                    .flat_map(|l| [&l.qkv, &l.wo, &l.gate_up, &l.w_down]),
            )
            .map(|l| l.kernel_name(kernel))
            .collect();
        // Ours first, then candle's.
        names.sort_by_key(|n| (n.starts_with("candle"), n.clone()));
        names.dedup();
        let kernels = names.join("+");
        let model = Llama {
            cfg,
            embed,
            layers,
            out_norm,
            output,
            pool: Pool::new(threads.max(1), kernel)?,
            cos,
            sin,
            quantization,
            kernels,
        };
        Ok((model, md))
    }

    /// Lowers the context length (smaller RoPE tables and caches).
    /// Keeps only the first `n` (at least one) transformer blocks. The caches keep room for
    /// all of them; the forward pass runs the ones kept.
    pub fn truncate_layers(&mut self, n: usize) {
        self.layers.truncate(n.max(1));
    }

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
        let n = self.cfg.layers * self.cfg.kv_heads;
        KvCache {
            heads: (0..n)
                .map(|_| HeadCache::with_capacity(self.cfg.head_dim, 256))
                .collect(),
            len: 0,
        }
    }

    /// Threads the linear layers run on.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The model's worker threads, for other per-row work (sampling).
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs the new tokens of every segment through the network, all rows stacked into one
    /// matmul per linear layer, attention per sequence over its own cache. Returns per segment
    /// the logits rows asked for (the last position, or all new positions), `vocab` wide.
    pub fn forward(&self, segs: &mut [Segment<'_>]) -> Result<Vec<Vec<f32>>> {
        let from: Vec<usize> = segs
            .iter()
            .map(|s| {
                if s.all_logits {
                    0
                } else {
                    s.tokens.len().saturating_sub(1)
                }
            })
            .collect();
        self.pool.install(|| self.forward_inner(segs, &from))
    }

    /// Teacher-forced pass of one sequence: appends `tokens` to `cache` and returns the logits
    /// of the new positions `from..tokens.len()` only (`vocab` wide each), bit-identical to
    /// the rows [`Llama::forward`] gives for those positions (the output layer, the largest
    /// matmul, is skipped for the positions nobody checks, such as a prompt's).
    pub fn forward_from(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        from: usize,
    ) -> Result<Vec<f32>> {
        let from = from.min(tokens.len().saturating_sub(1));
        let mut segs = [Segment {
            cache,
            tokens,
            all_logits: true,
        }];
        let mut out = self
            .pool
            .install(|| self.forward_inner(&mut segs, &[from]))?;
        Ok(out.pop().unwrap_or_default())
    }

    /// [`Llama::forward`], with the logits of segment `i` returned from its new position
    /// `from[i]` on (none when `from[i]` is its number of new tokens).
    pub(crate) fn forward_from_each(
        &self,
        segs: &mut [Segment<'_>],
        from: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        self.pool.install(|| self.forward_inner(segs, from))
    }

    /// [`Llama::forward_from_each`] on the calling thread (inside the pool).
    fn forward_inner(&self, segs: &mut [Segment<'_>], from: &[usize]) -> Result<Vec<Vec<f32>>> {
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
            let [mut q, mut k, v] = layer.qkv.forward(&self.pool, &xn, rows, h)?;
            // RoPE and cache appends first, then every (row, head) attends in parallel over
            // its own causal prefix of its sequence's cache.
            let mut r0 = 0;
            for s in segs.iter_mut() {
                let start = s.cache.len;
                for i in 0..s.tokens.len() {
                    let (r, pos) = (r0 + i, start + i);
                    self.rope(&mut q[r * h..(r + 1) * h], pos);
                    self.rope(&mut k[r * kvd..(r + 1) * kvd], pos);
                    let heads = li * c.kv_heads..(li + 1) * c.kv_heads;
                    let keys = k[r * kvd..(r + 1) * kvd].chunks_exact(c.head_dim);
                    let values = v[r * kvd..(r + 1) * kvd].chunks_exact(c.head_dim);
                    for ((hc, kh), vh) in s.cache.heads[heads].iter_mut().zip(keys).zip(values) {
                        hc.push(kh, vh);
                    }
                }
                r0 += s.tokens.len();
            }
            // Per row: its sequence's keys and values of this layer (per head), and how many
            // positions it sees.
            let mut row_ctx: Vec<RowContext<'_>> = Vec::with_capacity(rows);
            for s in segs.iter() {
                let (start, heads) = (s.cache.len, li * c.kv_heads..(li + 1) * c.kv_heads);
                for i in 0..s.tokens.len() {
                    row_ctx.push((&s.cache.heads[heads.clone()], start + i + 1));
                }
            }
            // Per row and key/value head: the group of query heads that shares it (their
            // outputs are side by side, as their queries are).
            let group = c.heads / c.kv_heads * c.head_dim;
            let mut attn = vec![0f32; rows * h];
            let items: Vec<(usize, &mut [f32])> =
                attn.chunks_exact_mut(group).enumerate().collect();
            let scale = 1.0 / (c.head_dim as f32).sqrt();
            self.pool.for_each(items, |(i, out)| {
                let (r, kvh) = (i / c.kv_heads, i % c.kv_heads);
                let (heads, n) = row_ctx[r];
                let qg = &q[r * h + kvh * group..r * h + (kvh + 1) * group];
                SCRATCH.with_borrow_mut(|scratch| {
                    let kernel = self.pool.kernel();
                    attn::attend(kernel, qg, &heads[kvh], c.head_dim, n, scale, out, scratch);
                });
            });
            let [o] = layer.wo.forward(&self.pool, &attn, rows, h)?;
            add_into(&mut x, &o);
            for r in 0..rows {
                rms_norm_row(
                    &x[r * h..(r + 1) * h],
                    &layer.ffn_norm,
                    c.rms_eps,
                    &mut xn[r * h..(r + 1) * h],
                );
            }
            let [mut g, u] = layer.gate_up.forward(&self.pool, &xn, rows, h)?;
            // Element-wise, so split among the threads (an exp per element: ~1.8 ms serial
            // per token for eight rows, 40 ms for a 160-token scoring pass).
            let items: Vec<_> = g.chunks_mut(4096).zip(u.chunks(4096)).collect();
            self.pool.for_each(items, |(g, u)| silu_mul(g, u));
            let [d] = layer.w_down.forward(&self.pool, &g, rows, c.ffn)?;
            add_into(&mut x, &d);
        }
        // Only the rows whose logits are wanted go through the (large) output matmul.
        let mut picked = Vec::new();
        let mut counts = Vec::with_capacity(segs.len());
        let mut r0 = 0;
        for (s, &from) in segs.iter_mut().zip(from) {
            let n = s.tokens.len();
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
        if total == 0 {
            return Ok(vec![Vec::new(); segs.len()]);
        }
        let [logits] = self.output.forward(&self.pool, &picked, total, h)?;
        if counts.len() == 1 {
            return Ok(vec![logits]);
        }
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
}

fn rope_tables(cfg: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let mut cos = Vec::with_capacity(cfg.context_len * half);
    let mut sin = Vec::with_capacity(cfg.context_len * half);
    for pos in 0..cfg.context_len {
        for i in 0..half {
            let exponent = 2.0 * i as f64 / cfg.head_dim as f64;
            let freq = 1.0 / crate::math::pow_f64(cfg.rope_theta as f64, exponent);
            let (s, c) = crate::math::sin_cos_f64(pos as f64 * freq);
            cos.push(c as f32);
            sin.push(s as f32);
        }
    }
    (cos, sin)
}

/// Name of our default (Q8_0) matmul kernel on this CPU, e.g. `sortition-q8p/avx512vnni`.
pub fn kernel_name(kernel: Kernel) -> String {
    crate::q8p::kernel_name(kernel)
}
