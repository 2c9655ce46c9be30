//! A `tokenizers::Tokenizer` built from GGUF metadata (SmolLM2 ships no tokenizer.json), the
//! chat template rendered with minijinja, and UTF-8-safe incremental decoding.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};
use sortition_types::{Hash32, sha256};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::error::{EngineError, Result};

/// One chat message, OpenAI style.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The model's tokenizer plus what generation needs around it (template, stop ids).
#[derive(Clone)]
pub struct ChatTokenizer {
    /// The byte-level BPE tokenizer with the special tokens added.
    inner: Tokenizer,
    /// Jinja chat template from `tokenizer.chat_template`, if the model has one.
    template: Option<String>,
    /// Token ids that end a generation (eos and `<|im_end|>` when present).
    stop_ids: Vec<u32>,
    /// Control tokens (GGUF token types 3 and 4), ascending: never text, for constrained
    /// decoding's token trie.
    special_ids: Vec<u32>,
    /// Text of the bos/eos tokens, passed to the template.
    bos_text: String,
    eos_text: String,
    /// Number of entries in the vocabulary (the logits width).
    vocab_size: usize,
    /// Digest over vocabulary, merges, special ids and template: identifies the tokenizer.
    digest: Hash32,
}

fn md_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    md.get(key).and_then(|v| v.to_u32().ok())
}

fn md_strings(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    let arr = md
        .get(key)
        .ok_or_else(|| EngineError::CorruptWeights(format!("missing metadata {key}")))?
        .to_vec()
        .map_err(|e| EngineError::CorruptWeights(format!("{key}: {e}")))?;
    arr.iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| EngineError::CorruptWeights(format!("{key}: {e}")))
        })
        .collect()
}

impl ChatTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata of a GGUF file.
    pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Self> {
        let tokens = md_strings(md, "tokenizer.ggml.tokens")?;
        let merges_raw = md_strings(md, "tokenizer.ggml.merges")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type").map(|v| v.to_vec()) {
            Some(Ok(arr)) => arr.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merges = Vec::with_capacity(merges_raw.len());
        for m in &merges_raw {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| EngineError::CorruptWeights(format!("bad merge `{m}`")))?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| EngineError::CorruptWeights(format!("bpe: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        let pre = Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]);
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| EngineError::CorruptWeights(format!("special tokens: {e}")))?;

        let bos = md_u32(md, "tokenizer.ggml.bos_token_id");
        let eos = md_u32(md, "tokenizer.ggml.eos_token_id");
        let name = |id: Option<u32>| {
            id.and_then(|i| tokens.get(i as usize).cloned())
                .unwrap_or_default()
        };
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        if let Some(i) = tokens.iter().position(|t| t == "<|im_end|>")
            && !stop_ids.contains(&(i as u32))
        {
            stop_ids.push(i as u32);
        }
        let mut parts: Vec<u8> = Vec::new();
        for t in tokens.iter().chain(merges_raw.iter()) {
            parts.extend_from_slice(&(t.len() as u64).to_le_bytes());
            parts.extend_from_slice(t.as_bytes());
        }
        for t in &types {
            parts.extend_from_slice(&t.to_le_bytes());
        }
        parts.extend_from_slice(template.as_deref().unwrap_or("").as_bytes());
        for id in [bos, eos] {
            parts.extend_from_slice(&id.map(i64::from).unwrap_or(-1).to_le_bytes());
        }
        let special_ids = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(i, _)| i as u32)
            .collect();
        Ok(ChatTokenizer {
            inner,
            template,
            stop_ids,
            special_ids,
            bos_text: name(bos),
            eos_text: name(eos),
            vocab_size: tokens.len(),
            digest: sha256(&parts),
        })
    }

    /// Encodes text; special-token strings in it (e.g. `<|im_start|>`) become their single ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::InvalidParams(format!("tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids; special tokens are kept when `skip_special` is false.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(EngineError::InvalidParams(format!(
                "token id {bad} out of vocabulary"
            )));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| EngineError::Internal(format!("detokenize: {e}")))
    }

    /// Renders the chat template with `add_generation_prompt = true`. Without a template the
    /// ChatML layout is used.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        let Some(src) = &self.template else {
            let mut s = String::new();
            for m in messages {
                s.push_str(&format!(
                    "<|im_start|>{}\n{}<|im_end|>\n",
                    m.role, m.content
                ));
            }
            s.push_str("<|im_start|>assistant\n");
            return Ok(s);
        };
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", src)
            .map_err(|e| EngineError::CorruptWeights(format!("chat template: {e}")))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| EngineError::Internal(format!("chat template: {e}")))?;
        let msgs: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() })
            .collect();
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(msgs),
            add_generation_prompt => true,
            bos_token => &self.bos_text,
            eos_token => &self.eos_text,
        })
        .map_err(|e| EngineError::InvalidParams(format!("chat template: {e}")))
    }

    /// Ids of the control tokens (`<|im_start|>`, `<|endoftext|>`, …), ascending.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// Ids that end a generation.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Size of the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Digest identifying this tokenizer (vocabulary, merges, specials, template).
    pub fn digest(&self) -> Hash32 {
        self.digest
    }

    /// The bytes token `id` stands for: its vocabulary string read through the byte-level
    /// alphabet (GPT-2's `bytes_to_unicode`), so a token that holds part of a UTF-8 character
    /// gives that part; characters outside the alphabet (special tokens) as UTF-8. Empty for an
    /// id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(piece.len());
        for c in piece.chars() {
            match byte_of_char(c) {
                Some(b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out
    }

    /// Single id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The byte a character of the byte-level alphabet stands for: printable Latin-1 bytes
/// (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) are themselves; the other 68 bytes, in order, are the
/// characters from U+0100 on.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let n = c as u32;
    if n < 256 {
        return printable(n).then_some(n as u8);
    }
    let k = n - 256;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(k as usize)
        .map(|b| b as u8)
}

#[cfg(test)]
mod byte_level_tests {
    use super::byte_of_char;

    #[test]
    fn the_byte_level_alphabet_inverts_to_every_byte_once() {
        let mut seen = [false; 256];
        for c in (33u32..=126)
            .chain(161..=172)
            .chain(174..=255)
            .chain(256..324)
        {
            let b = byte_of_char(char::from_u32(c).unwrap_or('?')).unwrap_or_default();
            assert!(!seen[usize::from(b)], "byte {b} twice");
            seen[usize::from(b)] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_of_char('Ġ'), Some(b' '));
        assert_eq!(byte_of_char('Ċ'), Some(b'\n'));
        assert_eq!(byte_of_char('a'), Some(b'a'));
        assert_eq!(byte_of_char('\u{2603}'), None);
    }
}
