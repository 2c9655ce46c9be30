//! Why the node refuses or fails a request, as a type: the decisions that depend on it (who
//! is at fault, whether to retry, what the gateway does next) read the variant, and
//! [`From<NodeError> for ApiError`](ApiError) is the one place that turns it into the
//! OpenAI-shaped error a client sees (status, type, code, parameter, `Retry-After`).
//!
//! The shape checks of a request body (`request`) still build their `invalid_request_error`s
//! directly: each names the offending parameter, and nothing but the client acts on them.

use sortition_api::{ApiError, ErrorKind};
use sortition_engine::EngineError;
use sortition_types::StackId;
use sortition_types::auth::AUTH_HEADER;

use crate::accounts::ReserveError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No request signature.
    #[error("missing {AUTH_HEADER} header (stack owner's signature)")]
    MissingAuth,
    /// The request signature header does not parse or is out of bounds.
    #[error("{0}")]
    InvalidAuth(String),
    #[error("request signature has expired")]
    ExpiredAuth,
    #[error("{0} is not on the ledger")]
    UnknownStack(StackId),
    #[error("signature does not match the stack owner's key")]
    BadSignature,
    #[error("this request nonce was already used")]
    Replayed,
    /// The ledger could not be asked (the request may be retried).
    #[error("ledger unavailable: {0}")]
    LedgerUnavailable(String),
    /// The stack cannot carry the request.
    #[error(transparent)]
    Stack(#[from] ReserveError),
    #[error("model '{model}' is not served here; available: {}", .known.join(", "))]
    UnknownModel { model: String, known: Vec<String> },
    /// The engine refused or failed the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The receipt could not be made durable: the answer is withheld, the units go back.
    #[error("the node could not persist the receipt of this request ({0}); retry shortly")]
    ReceiptNotPersisted(StoreError),
    /// The node's own store failed outside the receipt path.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this node runs without an attester and publishes no confidential key")]
    ConfidentialUnavailable,
    #[error("sealed to key epoch {0}, which this node no longer holds; fetch the current key")]
    StaleConfidentialKey(u64),
    /// A delivered audit payload cannot be the audited request.
    #[error("{0}")]
    InvalidPayload(String),
    /// The audit desk has no room for a payload now.
    #[error("{0}")]
    AuditPayloadsFull(String),
    #[error("{0}")]
    Internal(String),
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        use NodeError as N;
        let message = e.to_string();
        let auth = |code| ApiError::new(ErrorKind::Authentication, code, message.clone());
        match e {
            N::MissingAuth => auth("missing_auth"),
            N::InvalidAuth(_) => auth("invalid_auth"),
            N::ExpiredAuth => auth("expired_auth"),
            N::UnknownStack(_) => auth("unknown_stack"),
            N::BadSignature => auth("invalid_signature"),
            N::Replayed => ApiError::new(ErrorKind::Conflict, "replayed_request", message),
            N::LedgerUnavailable(_) => {
                ApiError::new(ErrorKind::Unavailable, "ledger_unavailable", message)
            }
            N::Stack(ReserveError::ForeignStack(_)) => {
                ApiError::new(ErrorKind::Permission, "foreign_stack", message)
            }
            N::Stack(ReserveError::WrongModel(..)) => {
                ApiError::invalid("stack_model_mismatch", message)
            }
            N::Stack(ReserveError::Closed(_)) => {
                ApiError::new(ErrorKind::InsufficientFunds, "stack_closed", message)
            }
            N::Stack(ReserveError::Exhausted { .. }) => {
                ApiError::new(ErrorKind::InsufficientFunds, "stack_exhausted", message)
            }
            N::UnknownModel { .. } => {
                ApiError::new(ErrorKind::NotFound, "model_not_found", message).with_param("model")
            }
            N::Engine(e) => engine(e),
            N::ReceiptNotPersisted(_) => {
                ApiError::new(ErrorKind::Unavailable, "receipt_not_persisted", message)
                    .with_retry_after(1)
            }
            N::Store(_) | N::Internal(_) => ApiError::internal(message),
            N::ConfidentialUnavailable => {
                ApiError::new(ErrorKind::NotFound, "confidential_unavailable", message)
            }
            N::StaleConfidentialKey(_) => {
                ApiError::new(ErrorKind::Conflict, "stale_confidential_key", message)
            }
            N::InvalidPayload(_) => ApiError::invalid("invalid_payload", message),
            N::AuditPayloadsFull(_) => {
                ApiError::new(ErrorKind::Unavailable, "audit_payloads_full", message)
                    .with_retry_after(1)
            }
        }
    }
}

/// An engine error as the client sees it.
fn engine(e: EngineError) -> ApiError {
    match e {
        EngineError::UnknownModel(m) => ApiError::new(
            ErrorKind::NotFound,
            "model_not_found",
            format!("unknown model '{m}'"),
        ),
        EngineError::PromptTooLong { .. } => {
            ApiError::invalid("context_length_exceeded", e.to_string()).with_param("messages")
        }
        EngineError::InvalidConstraint(why) => ApiError::invalid(
            "unsupported_response_format",
            format!("the response_format schema cannot be enforced: {why}"),
        )
        .with_param("response_format"),
        EngineError::EmbeddingTooLong { .. } => {
            ApiError::invalid("context_length_exceeded", e.to_string()).with_param("input")
        }
        EngineError::InvalidParams(m) => ApiError::invalid("invalid_parameter", m),
        EngineError::KvMemory { .. } => {
            ApiError::invalid("request_too_large", e.to_string()).with_param("max_tokens")
        }
        EngineError::Overloaded => ApiError::new(
            ErrorKind::RateLimited,
            "overloaded",
            "node is at capacity; retry shortly",
        )
        .with_retry_after(1),
        other => ApiError::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_keeps_its_status_and_code() {
        let cases: Vec<(NodeError, u16, &str)> = vec![
            (NodeError::MissingAuth, 401, "missing_auth"),
            (NodeError::UnknownStack(StackId(3)), 401, "unknown_stack"),
            (NodeError::Replayed, 409, "replayed_request"),
            (
                NodeError::LedgerUnavailable("down".into()),
                503,
                "ledger_unavailable",
            ),
            (ReserveError::Closed(StackId(1)).into(), 402, "stack_closed"),
            (
                ReserveError::Exhausted {
                    stack: StackId(1),
                    remaining: 1,
                    needed: 2,
                }
                .into(),
                402,
                "stack_exhausted",
            ),
            (
                ReserveError::ForeignStack(StackId(1)).into(),
                403,
                "foreign_stack",
            ),
            (
                NodeError::ReceiptNotPersisted(StoreError::Injected),
                503,
                "receipt_not_persisted",
            ),
            (EngineError::Overloaded.into(), 429, "overloaded"),
            (
                EngineError::KvMemory {
                    needed: 2 << 20,
                    budget: 1 << 20,
                }
                .into(),
                400,
                "request_too_large",
            ),
            (
                NodeError::StaleConfidentialKey(4),
                409,
                "stale_confidential_key",
            ),
            (
                NodeError::AuditPayloadsFull("full".into()),
                503,
                "audit_payloads_full",
            ),
        ];
        for (e, status, code) in cases {
            let (shown, from_engine) = (e.to_string(), matches!(e, NodeError::Engine(_)));
            let api = ApiError::from(e);
            assert_eq!(api.status().as_u16(), status, "{code}");
            assert_eq!(api.code, code);
            if !from_engine {
                assert_eq!(api.message, shown, "the message is the error's own text");
            }
        }
    }

    #[test]
    fn busy_answers_say_when_to_retry() {
        for e in [
            NodeError::ReceiptNotPersisted(StoreError::Injected),
            NodeError::AuditPayloadsFull("full".into()),
            NodeError::Engine(EngineError::Overloaded),
        ] {
            assert_eq!(ApiError::from(e).retry_after_secs, Some(1));
        }
    }
}
