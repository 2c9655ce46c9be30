//! The one error type of this crate.

/// Everything that can go wrong in the engine, typed so that callers can map each case
/// (e.g. to an HTTP status) without parsing strings.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EngineError {
    /// The model name is not in the built-in catalog.
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    /// The prompt (plus room for at least one generated token) does not fit the context.
    #[error("prompt of {tokens} tokens does not fit the context of {context} tokens")]
    PromptTooLong { tokens: usize, context: usize },
    /// An embeddings input is longer than the model reads (never truncated silently).
    #[error("input[{index}] has {tokens} tokens; this model reads at most {max}")]
    EmbeddingTooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    /// A constraint (structured output) the constraint library cannot enforce, with why.
    #[error("unsupported response_format: {0}")]
    InvalidConstraint(String),
    /// Sampling parameters or the request shape are invalid.
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    /// The admission queue is full; retry later (maps to HTTP 429).
    /// A request whose attention cache (prompt plus `max_tokens`) could never fit the
    /// engine's memory budget.
    #[error(
        "this request may need {needed} bytes of attention cache (prompt plus max_tokens); this engine allows {budget}"
    )]
    KvMemory { needed: usize, budget: usize },
    #[error("engine overloaded: admission queue is full")]
    Overloaded,
    /// A model file is not what it claims to be (bad GGUF, missing tensor, bad shape).
    #[error("corrupt weights: {0}")]
    CorruptWeights(String),
    /// The model file is not the one expected (its digest), or the store could not give it.
    #[error(transparent)]
    Model(#[from] sortition_models::ModelError),
    /// The engine thread is gone or a kernel failed: a bug or resource exhaustion.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Internal(format!("candle: {e}"))
    }
}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        EngineError::Internal(format!("io: {e}"))
    }
}

impl From<sortition_kernels::KernelError> for EngineError {
    fn from(e: sortition_kernels::KernelError) -> Self {
        use sortition_kernels::KernelError as K;
        match e {
            K::CorruptWeights(m) => EngineError::CorruptWeights(m),
            K::InvalidParams(m) => EngineError::InvalidParams(m),
            K::Internal(m) => EngineError::Internal(m),
        }
    }
}
