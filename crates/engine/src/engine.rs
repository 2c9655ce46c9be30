//! The public generation API: a cheap cloneable [`Engine`] handle in front of the scheduler
//! thread that owns the model.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;

use serde::{Deserialize, Serialize};
use sortition_types::{Hash32, ModelId, NodeClass};
use tokio::sync::{mpsc, oneshot};

use crate::error::{EngineError, Result};
use crate::events::Stats;
pub use crate::events::{
    FinishReason, ScoreTolerance, StreamEvent, TokenScore, Usage, check_scores,
};
use crate::llama::{Llama, WeightFormat};
pub use crate::sampling::Draw;
use crate::sampling::SamplingParams;
pub use crate::scheduler::Lane;
use crate::scheduler::{self, Job, Progress, Queues};
use crate::tokenizer::{ChatMessage, ChatTokenizer};
use sortition_kernels::Kernel;

/// Version string recorded in the node class. The suffix counts changes of the numerics (any
/// change that can move an output bit): `n2` computes `exp`, `pow`, `sin` and `cos` with
/// [`crate::math`] instead of the platform's C library; `n3` multiplies Q8_0 weights with f32
/// activations (they were quantized to Q8 blocks before; see [`crate::qf`]; Q4_1 weights keep
/// the Q8-activation kernel of [`crate::q8`]) and draws samples with f32 weights and a nucleus
/// sorted only as far as it reaches ([`crate::sampling`]); `n4` quantizes the activations of
/// Q8_0 products to Q8 blocks again, now on integer panel products ([`crate::q8p`]: the
/// default; `WeightFormat::Q8_0F32` keeps `n3`'s f32 activations, named by its kernel); `n5`
/// keeps the attention cache in half precision, keys in tiles, and computes scores and
/// weighted sums as fused multiply-add chains per lane ([`crate::attn`]; the sampler's
/// draws are unchanged).
pub const ENGINE_VERSION: &str = concat!("sortition-engine-", env!("CARGO_PKG_VERSION"), "-n5");

/// How to load and run one model.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Path of the llama GGUF file.
    pub model_path: PathBuf,
    /// Name the model is served under.
    pub model_id: ModelId,
    /// Weight encoding in memory (Q8_0 re-encoding by default).
    pub weight_format: WeightFormat,
    /// Most sequences decoded together in one step.
    pub max_batch: usize,
    /// Requests waiting for a batch slot before `generate` answers `Overloaded`.
    pub queue_capacity: usize,
    /// Prompt tokens fed per scheduler step, across sequences: a longer prompt is fed over
    /// several steps while the others keep decoding. Results do not depend on it.
    pub prefill_budget: usize,
    /// Bytes of attention cache the running sequences may reserve together (each reserves
    /// what its prompt plus `max_tokens` may grow to, within the context); a request that
    /// does not fit waits, one that could never fit is refused (`KvMemory`). `None`: bounded
    /// by `max_batch` only.
    pub kv_memory: Option<usize>,
    /// Caps the model's context (memory of RoPE tables and caches); `None` keeps the model's.
    pub max_context: Option<usize>,
    /// When set, loading fails with `DigestMismatch` unless the file has this SHA-256.
    pub expected_digest: Option<Hash32>,
    /// Start with the scheduler paused until [`Engine::resume`] (tests, warm-up control).
    pub start_paused: bool,
    /// Threads of the matmul kernel; `None`: the available parallelism. Results do not
    /// depend on it. (A binary that honours `CANDLE_NUM_THREADS`/`RAYON_NUM_THREADS` passes
    /// [`threads_from_env`] here.)
    pub threads: Option<usize>,
    /// The kernel the products and attention run on (part of the node class); `None`: the
    /// fastest this CPU supports. (A binary that honours `SORTITION_KERNEL` passes
    /// [`Kernel::select`] here.)
    pub kernel: Option<Kernel>,
    /// Runs only the first N transformer blocks: a cheaper and *different* model that still
    /// reports the full model's identity. Exists only so the devnet's `smaller-model`
    /// adversary can cheat realistically (nodes accept adversary modes on devnet ledgers
    /// only); honest nodes never set it.
    pub truncate_layers: Option<usize>,
}

impl EngineConfig {
    pub fn new(model_path: impl Into<PathBuf>, model_id: impl Into<String>) -> Self {
        EngineConfig {
            model_path: model_path.into(),
            model_id: ModelId::new(model_id),
            weight_format: WeightFormat::default(),
            max_batch: 16,
            queue_capacity: 64,
            prefill_budget: scheduler::DEFAULT_PREFILL_BUDGET,
            kv_memory: None,
            max_context: Some(4096),
            expected_digest: None,
            start_paused: false,
            threads: None,
            kernel: None,
            truncate_layers: None,
        }
    }

    /// This config with what the environment names where it names something: the kernel
    /// `SORTITION_KERNEL` names (an invalid name is an error) and the threads of
    /// [`threads_from_env`] (when the config sets none). For binaries, tests and benchmarks
    /// that honour those variables; loading a model never reads the environment itself.
    pub fn honour_env(mut self) -> Result<Self> {
        if let Some(k) = Kernel::from_env()? {
            self.kernel = Some(k);
        }
        if self.threads.is_none() {
            self.threads = threads_from_env();
        }
        Ok(self)
    }
}

/// What a node advertises about the model it serves.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub id: ModelId,
    /// SHA-256 of the GGUF file.
    pub digest: Hash32,
    pub tokenizer_digest: Hash32,
    pub quantization: String,
    pub context_len: usize,
    pub node_class: NodeClass,
}

/// The input of a generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// Attach the SHA-256 of each step's logits row to token events (for audits and tests).
    pub trace_logits: bool,
    /// Attach each generated token's log-probability and this many alternatives (at most
    /// [`crate::MAX_TOP_LOGPROBS`]) to its event; `None`: no log-probabilities.
    pub logprobs: Option<u8>,
    /// Constrains the text (structured outputs): only tokens the constraint allows are
    /// sampled, and the sequence ends only where it is satisfied.
    pub constraint: Option<crate::Constraint>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt, params: SamplingParams) -> Self {
        GenerateRequest {
            prompt,
            params,
            trace_logits: false,
            logprobs: None,
            constraint: None,
        }
    }
}

/// A whole generation, as [`GenerationStream::collect_all`] gathers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub tokens: Vec<u32>,
    pub text: String,
    /// The log-probabilities of the token events that carried them, in order.
    pub logprobs: Vec<crate::TokenLogprobs>,
}

/// Receiving end of a generation. Dropping it cancels the sequence at the next step.
pub struct GenerationStream {
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    progress: Arc<Progress>,
    prompt_tokens: u32,
}

/// Survives the stream: how many tokens were generated (for billing a client who left).
#[derive(Clone)]
pub struct UsageHandle {
    progress: Arc<Progress>,
    prompt_tokens: u32,
}

impl UsageHandle {
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.progress.generated(),
        }
    }
    /// True once the engine has retired the sequence (finished or cancelled).
    pub fn is_retired(&self) -> bool {
        self.progress.is_retired()
    }
}

impl GenerationStream {
    /// The next event, or `None` after `Done`/`Error`.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.rx.recv().await
    }
    /// Blocking variant for non-async callers (must not be called inside a runtime).
    pub fn blocking_next(&mut self) -> Option<StreamEvent> {
        self.rx.blocking_recv()
    }
    pub fn usage_handle(&self) -> UsageHandle {
        UsageHandle {
            progress: self.progress.clone(),
            prompt_tokens: self.prompt_tokens,
        }
    }
    /// Reads events until `Done`; returns the generation with the tokens' log-probabilities
    /// (or the error).
    pub async fn collect_all(mut self) -> Result<Generation> {
        let mut logprobs = Vec::new();
        while let Some(ev) = self.next().await {
            match ev {
                StreamEvent::Done {
                    finish_reason,
                    usage,
                    tokens,
                    text,
                } => {
                    return Ok(Generation {
                        finish_reason,
                        usage,
                        tokens,
                        text,
                        logprobs,
                    });
                }
                StreamEvent::Error(e) => return Err(e),
                StreamEvent::Token { logprobs: lp, .. } => logprobs.extend(lp),
            }
        }
        Err(EngineError::Internal("stream ended without Done".into()))
    }

    /// Reads events until `Done`; returns it (or the error).
    pub async fn collect(mut self) -> Result<(FinishReason, Usage, Vec<u32>, String)> {
        while let Some(ev) = self.next().await {
            match ev {
                StreamEvent::Done {
                    finish_reason,
                    usage,
                    tokens,
                    text,
                } => {
                    return Ok((finish_reason, usage, tokens, text));
                }
                StreamEvent::Error(e) => return Err(e),
                StreamEvent::Token { .. } => {}
            }
        }
        Err(EngineError::Internal("stream ended without Done".into()))
    }
}

/// Engine-wide counters, as returned by [`Engine::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Generations finished (stop or length), cumulative.
    pub completed: u64,
    /// Generations whose stream was dropped before the end, cumulative.
    pub cancelled: u64,
    /// Largest number of sequences run in one step.
    pub max_batch_seen: u64,
    /// Jobs (generations and scores) waiting for admission right now.
    pub queued: u64,
    /// Sequences in the running batch right now.
    pub active: u64,
    /// Batched forward steps run, cumulative (a step prefills new sequences and decodes one
    /// token for the others).
    pub decode_steps: u64,
    /// Sequences summed over all steps, cumulative: `decode_rows / decode_steps` is the mean
    /// batch size.
    pub decode_rows: u64,
}

struct Inner {
    info: ModelInfo,
    tokenizer: ChatTokenizer,
    tx: Queues,
    stats: Arc<Stats>,
    resume: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Compiles constraints for this tokenizer, built on first use.
    compiler:
        std::sync::OnceLock<std::result::Result<Arc<crate::constrain::Compiler>, EngineError>>,
}

/// Cheap cloneable handle to a loaded model and its scheduler thread. The thread ends when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// Name of the default (Q8_0) matmul kernel on this CPU, e.g. `sortition-q8p/avx512vnni`. A
/// model's [`ModelInfo`] node class names every kernel its layers run on: `sortition-q8/avx2`
/// for Q4_1 weights, `candle-0.11.1` for other shipped quantizations, joined by `+`.
/// `kernel` as [`EngineConfig::kernel`] takes it (`None`: the fastest).
pub fn kernel_set(kernel: Option<Kernel>) -> String {
    crate::llama::kernel_name(kernel.unwrap_or_else(Kernel::detect))
}

/// The matmul thread count that `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, names, for
/// binaries, tests and benchmarks that honour them (the library never reads them itself).
pub fn threads_from_env() -> Option<usize> {
    ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|k| {
            std::env::var(k)
                .ok()?
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
        })
}

/// Matmul threads when the config does not say: the available parallelism.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Engine {
    /// Loads the model (and verifies its digest when asked) and starts the scheduler thread.
    pub fn load(cfg: EngineConfig) -> Result<Engine> {
        if cfg.max_batch == 0 || cfg.queue_capacity == 0 {
            return Err(EngineError::InvalidParams(
                "max_batch and queue_capacity must be > 0".into(),
            ));
        }
        let digest = sortition_models::file_digest(&cfg.model_path)?;
        if let Some(expected) = cfg.expected_digest
            && expected != digest
        {
            return Err(sortition_models::ModelError::DigestMismatch {
                file: cfg.model_path.display().to_string(),
                expected,
                actual: digest,
            }
            .into());
        }
        let threads = cfg.threads.unwrap_or_else(default_threads);
        let kernel = cfg.kernel.unwrap_or_else(Kernel::detect);
        let (mut model, md) = Llama::load(&cfg.model_path, cfg.weight_format, threads, kernel)?;
        if let Some(cap) = cfg.max_context {
            model.cap_context(cap);
        }
        if let Some(n) = cfg.truncate_layers {
            model.truncate_layers(n);
        }
        let tokenizer = ChatTokenizer::from_gguf_metadata(&md)?;
        if tokenizer.vocab_size() != model.cfg.vocab {
            return Err(EngineError::CorruptWeights(
                "vocabulary and embedding sizes differ".into(),
            ));
        }
        let info = ModelInfo {
            id: cfg.model_id.clone(),
            digest,
            tokenizer_digest: tokenizer.digest(),
            quantization: model.quantization.clone(),
            context_len: model.cfg.context_len,
            node_class: NodeClass {
                engine_version: ENGINE_VERSION.to_string(),
                model_digest: digest,
                quantization: model.quantization.clone(),
                device: "cpu".into(),
                kernels: model.kernels.clone(),
            },
        };
        let stats = Arc::new(Stats::default());
        let (resume_tx, resume_rx) = std::sync::mpsc::channel();
        if !cfg.start_paused {
            let _ = resume_tx.send(());
        }
        let opts = scheduler::Options {
            max_batch: cfg.max_batch,
            queue_capacity: cfg.queue_capacity,
            prefill_budget: cfg.prefill_budget,
            kv_memory: cfg.kv_memory,
        };
        let tx = scheduler::spawn(model, tokenizer.clone(), opts, stats.clone(), resume_rx)?;
        let resume = std::sync::Mutex::new(cfg.start_paused.then_some(resume_tx));
        Ok(Engine {
            inner: Arc::new(Inner {
                info,
                tokenizer,
                tx,
                stats,
                resume,
                compiler: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.inner.tokenizer
    }

    /// Counters of finished, cancelled and batched work so far.
    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.stats;
        EngineStats {
            completed: s.completed.load(Ordering::Relaxed),
            cancelled: s.cancelled.load(Ordering::Relaxed),
            max_batch_seen: s.max_batch_seen.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            active: s.active.load(Ordering::Relaxed),
            decode_steps: s.decode_steps.load(Ordering::Relaxed),
            decode_rows: s.decode_rows.load(Ordering::Relaxed),
        }
    }

    /// Starts a scheduler created with `start_paused`; no effect otherwise.
    pub fn resume(&self) {
        if let Ok(mut g) = self.inner.resume.lock()
            && let Some(tx) = g.take()
        {
            let _ = tx.send(());
        }
    }

    /// Turns a prompt into token ids (chat template applied for `Prompt::Chat`).
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let tok = &self.inner.tokenizer;
        let ids = match prompt {
            Prompt::Chat(msgs) => tok.encode(&tok.apply_chat_template(msgs)?)?,
            Prompt::Text(t) => tok.encode(t)?,
            Prompt::Tokens(ids) => ids.clone(),
        };
        if ids.is_empty() {
            return Err(EngineError::InvalidParams("empty prompt".into()));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
            return Err(EngineError::InvalidParams(format!(
                "token id {bad} out of vocabulary"
            )));
        }
        let context = self.inner.info.context_len;
        if ids.len() >= context {
            return Err(EngineError::PromptTooLong {
                tokens: ids.len(),
                context,
            });
        }
        Ok(ids)
    }

    /// A fresh matcher for `c` (the compiler is built on first use); a constraint the library
    /// cannot enforce is `InvalidConstraint`.
    pub fn constraint_matcher(&self, c: &crate::Constraint) -> Result<llguidance::Matcher> {
        let compiler = self
            .inner
            .compiler
            .get_or_init(|| crate::constrain::Compiler::new(&self.inner.tokenizer).map(Arc::new))
            .clone()?;
        compiler.matcher(c)
    }

    /// Whether `text` is a compact JSON document valid under `schema`, as the constraint
    /// library enforces schemas (what a `strict` tool's arguments are checked with); `false`
    /// also for a schema the library cannot compile.
    pub fn accepts_json(&self, schema: &serde_json::Value, text: &str) -> bool {
        let Ok(mut m) = self.constraint_matcher(&crate::Constraint::JsonSchema(schema.clone()))
        else {
            return false;
        };
        let Ok(ids) = self.inner.tokenizer.encode(text) else {
            return false;
        };
        m.consume_tokens(&ids).is_ok() && m.is_accepting().unwrap_or(false)
    }

    /// Validates and queues a generation. Answers `Overloaded` at once when the queue is full.
    pub fn generate(&self, req: GenerateRequest) -> Result<GenerationStream> {
        self.generate_in(req, Lane::User)
    }

    /// [`Engine::generate`] in a given lane: audit work uses [`Lane::Audit`], which user
    /// traffic cannot fill or starve. The output does not depend on the lane.
    pub fn generate_in(&self, req: GenerateRequest, lane: Lane) -> Result<GenerationStream> {
        req.params.validate()?;
        if let Some(top) = req.logprobs
            && top > crate::MAX_TOP_LOGPROBS
        {
            return Err(EngineError::InvalidParams(format!(
                "top_logprobs {top} is more than {}",
                crate::MAX_TOP_LOGPROBS
            )));
        }
        let prompt = self.prompt_tokens(&req.prompt)?;
        let matcher = req
            .constraint
            .as_ref()
            .map(|c| self.constraint_matcher(c))
            .transpose()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let progress = Arc::new(Progress::default());
        let prompt_tokens = prompt.len() as u32;
        let job = Job::Generate {
            prompt,
            params: req.params,
            trace: req.trace_logits,
            logprobs: req.logprobs,
            matcher: matcher.map(Box::new),
            tx,
            progress: progress.clone(),
        };
        self.submit(job, lane)?;
        Ok(GenerationStream {
            rx,
            progress,
            prompt_tokens,
        })
    }

    /// Teacher-forced scoring: one prefill over `prompt_tokens + claimed`; for each claimed
    /// token, its logit, rank, the max logit and the argmax at that position.
    pub async fn score(
        &self,
        prompt_tokens: Vec<u32>,
        claimed: Vec<u32>,
    ) -> Result<Vec<TokenScore>> {
        self.score_in(prompt_tokens, claimed, None, Lane::User)
            .await
    }

    /// [`Engine::score`] in a given lane (see [`Engine::generate_in`]). With the sampling
    /// parameters the answer was generated under (`sampling`, temperature > 0), each token is
    /// also checked against the seeded draw ([`TokenScore::draw`]): the `i`-th claimed token
    /// against the `i`-th uniform of the seed's stream, as the sampler drew it. Penalties
    /// change the row the sampler draws from and are refused here.
    pub async fn score_in(
        &self,
        prompt_tokens: Vec<u32>,
        claimed: Vec<u32>,
        sampling: Option<&SamplingParams>,
        lane: Lane,
    ) -> Result<Vec<TokenScore>> {
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let draw = match sampling {
            Some(p) if p.temperature > 0.0 => {
                p.validate()?;
                if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
                    return Err(EngineError::InvalidParams(
                        "scoring against the seeded draw does not model penalties".into(),
                    ));
                }
                Some(Box::new(p.clone()))
            }
            _ => None,
        };
        let ids = self.prompt_tokens(&Prompt::Tokens(prompt_tokens))?;
        let total = ids.len() + claimed.len();
        let context = self.inner.info.context_len;
        if total > context {
            return Err(EngineError::PromptTooLong {
                tokens: total,
                context,
            });
        }
        if let Some(bad) = claimed
            .iter()
            .find(|&&i| i as usize >= self.inner.tokenizer.vocab_size())
        {
            return Err(EngineError::InvalidParams(format!(
                "token id {bad} out of vocabulary"
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.submit(
            Job::Score {
                prompt: ids,
                claimed,
                draw,
                tx,
            },
            lane,
        )?;
        rx.await
            .map_err(|_| EngineError::Internal("engine thread stopped".into()))?
    }

    fn submit(&self, job: Job, lane: Lane) -> Result<()> {
        // Counted before sending so that the scheduler's decrement never comes first.
        let queued = &self.inner.stats.queued;
        queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.inner.tx.try_send(job, lane);
        if sent.is_err() {
            queued.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(EngineError::Overloaded),
            Err(TrySendError::Disconnected(_)) => {
                Err(EngineError::Internal("engine thread stopped".into()))
            }
        }
    }
}
