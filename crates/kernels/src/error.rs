//! Why a kernel refused.

/// Why a kernel refused: weights in a layout it cannot read, a kernel this CPU does not run,
/// or a thread pool that could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("corrupt weights: {0}")]
    CorruptWeights(String),
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, KernelError>;
