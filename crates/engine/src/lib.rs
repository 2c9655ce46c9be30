//! `sortition-engine`: runs models for a Sortition execution node, deterministically.
//!
//! Owns: the GGUF tokenizer and chat template, a llama forward pass on
//! our own quantized matmul kernels with per-sequence KV caches, a continuous-batching scheduler
//! thread, seeded sampling, teacher-forced scoring, and BERT sentence embeddings.
//!
//! The contract: the same request gives bit-identical tokens (and logits) alone, inside any
//! batch, under load, with any thread count and in any process of the same node class.
//!
//! Does not own: fetching models (`sortition-models`: the engine loads the file it is given
//! and checks its digest), HTTP serving, receipts and signing (`node`), audit policy
//! (`audit`), billing.

pub mod constrain;
pub mod embed;
pub mod engine;
pub mod error;
mod events;
mod gguf;
mod linear;
pub mod llama;
pub mod logprobs;
pub mod sampling;
mod scheduler;
pub mod testutil;
mod text;
pub mod tokenizer;

pub use constrain::{CONSTRAINT_LIBRARY, Constraint};
pub use embed::{EmbedInput, Embedder};
pub use engine::{
    ENGINE_VERSION, Engine, EngineConfig, EngineStats, FinishReason, GenerateRequest, Generation,
    GenerationStream, ModelInfo, Prompt, ScoreTolerance, StreamEvent, TokenScore, Usage,
    UsageHandle, kernel_set, threads_from_env,
};
pub use error::{EngineError, Result};
pub use llama::WeightFormat;
pub use logprobs::{MAX_TOP_LOGPROBS, TokenLogprobs};
pub use sortition_kernels::Kernel;
// The kernels under their old paths inside this crate.
pub use sampling::{Draw, SamplingParams};
pub use scheduler::DEFAULT_PREFILL_BUDGET;
pub use scheduler::Lane;
pub(crate) use sortition_kernels::{attn, math, ops as kernels, q8, q8p, qf};
pub use tokenizer::{ChatMessage, ChatTokenizer};
