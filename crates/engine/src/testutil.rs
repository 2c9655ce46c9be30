//! Tiny random-weight llama models written as GGUF files, from a seed, so that most tests run
//! in milliseconds without the real 98 MB model. Same format, tokenizer metadata and code
//! path as a real model; only the numbers are random.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::error::{EngineError, Result};

/// Shape of the tiny model (all widths multiples of 32, the quantization block).
pub const HIDDEN: usize = 64;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FFN: usize = 128;
pub const CONTEXT: usize = 256;

/// ChatML template, as SmolLM2 ships.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 8] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("e", "r"),
    ("Ġ", "a"),
    ("o", "n"),
    ("Ġ", "s"),
];

/// GPT-2's byte-to-printable-character table.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

fn tokenizer_metadata() -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_chars().into_iter().map(String::from));
    for (a, b) in MERGES {
        tokens.push(format!("{a}{b}"));
    }
    let types: Vec<Value> = (0..tokens.len())
        .map(|i| Value::I32(if i < SPECIALS.len() { 3 } else { 1 }))
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                MERGES
                    .iter()
                    .map(|(a, b)| Value::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHAT_TEMPLATE.into()),
        ),
    ]
}

/// The tiny model's tokenizer, without a model file.
pub fn tiny_tokenizer() -> Result<crate::tokenizer::ChatTokenizer> {
    let md: std::collections::HashMap<String, Value> = tokenizer_metadata().into_iter().collect();
    crate::tokenizer::ChatTokenizer::from_gguf_metadata(&md)
}

/// Vocabulary size of the tiny model.
pub fn vocab_size() -> usize {
    SPECIALS.len() + 256 + MERGES.len()
}

fn random(rng: &mut ChaCha20Rng, dims: &[usize], scale: f32) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

/// Writes `tiny-llama-{seed}.gguf` into `dir` (weights Q4_1 like SmolLM2's file) and returns
/// its path. The same seed always gives the same bytes.
pub fn write_tiny_llama(dir: &Path, seed: u64) -> Result<PathBuf> {
    write_tiny_llama_with_context(dir, seed, CONTEXT)
}

/// [`write_tiny_llama`] with a context of `context` tokens (the weights are the same; the
/// file is `tiny-llama-{seed}-ctx{context}.gguf` unless `context` is [`CONTEXT`]).
pub fn write_tiny_llama_with_context(dir: &Path, seed: u64, context: usize) -> Result<PathBuf> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let kvd = KV_HEADS * (HIDDEN / HEADS);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    fn q(
        tensors: &mut Vec<(String, QTensor)>,
        name: String,
        dims: &[usize],
        scale: f32,
        rng: &mut ChaCha20Rng,
    ) -> Result<()> {
        let t = random(rng, dims, scale)?;
        tensors.push((name, QTensor::quantize(&t, GgmlDType::Q4_1)?));
        Ok(())
    }
    q(
        &mut tensors,
        "token_embd.weight".into(),
        &[vocab_size(), HIDDEN],
        1.0,
        &mut rng,
    )?;
    for i in 0..LAYERS {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        let ones =
            |rng: &mut ChaCha20Rng| -> Result<Tensor> { Ok((random(rng, &[HIDDEN], 0.2)? + 1.0)?) };
        let an = ones(&mut rng)?;
        tensors.push((p("attn_norm"), QTensor::quantize(&an, GgmlDType::F32)?));
        q(&mut tensors, p("attn_q"), &[HIDDEN, HIDDEN], 0.3, &mut rng)?;
        q(&mut tensors, p("attn_k"), &[kvd, HIDDEN], 0.3, &mut rng)?;
        q(&mut tensors, p("attn_v"), &[kvd, HIDDEN], 0.3, &mut rng)?;
        q(
            &mut tensors,
            p("attn_output"),
            &[HIDDEN, HIDDEN],
            0.2,
            &mut rng,
        )?;
        let fnorm = ones(&mut rng)?;
        tensors.push((p("ffn_norm"), QTensor::quantize(&fnorm, GgmlDType::F32)?));
        q(&mut tensors, p("ffn_gate"), &[FFN, HIDDEN], 0.3, &mut rng)?;
        q(&mut tensors, p("ffn_up"), &[FFN, HIDDEN], 0.3, &mut rng)?;
        q(&mut tensors, p("ffn_down"), &[HIDDEN, FFN], 0.2, &mut rng)?;
    }
    let on = (random(&mut rng, &[HIDDEN], 0.2)? + 1.0)?;
    tensors.push((
        "output_norm.weight".into(),
        QTensor::quantize(&on, GgmlDType::F32)?,
    ));

    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "general.name".into(),
            Value::String(format!("tiny-llama-{seed}")),
        ),
        ("llama.embedding_length".into(), Value::U32(HIDDEN as u32)),
        ("llama.block_count".into(), Value::U32(LAYERS as u32)),
        (
            "llama.attention.head_count".into(),
            Value::U32(HEADS as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(KV_HEADS as u32),
        ),
        ("llama.feed_forward_length".into(), Value::U32(FFN as u32)),
        ("llama.context_length".into(), Value::U32(context as u32)),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
    ];
    md.extend(tokenizer_metadata());
    std::fs::create_dir_all(dir)?;
    let path = match context {
        CONTEXT => dir.join(format!("tiny-llama-{seed}.gguf")),
        _ => dir.join(format!("tiny-llama-{seed}-ctx{context}.gguf")),
    };
    let tmp = dir.join(format!(
        ".tiny-llama-{seed}.gguf.tmp-{}",
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md_refs, &t_refs)
        .map_err(|e| EngineError::Internal(format!("write gguf: {e}")))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
