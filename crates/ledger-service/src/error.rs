//! Service errors and the one place that maps errors to HTTP statuses and OpenAI-style bodies.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sortition_ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("the database was created for a different genesis")]
    GenesisMismatch,
    #[error(
        "the database holds ledger format {stored}; this build replays format {current} only \
         (the state machine changed, so stored state roots would not match): start with a new \
         data directory"
    )]
    FormatMismatch { stored: u32, current: u32 },
    #[error("invalid genesis: {0}")]
    Genesis(LedgerError),
    /// This sequencer's beacon share is missing, malformed or not the genesis' (refused at start).
    #[error("beacon share: {0}")]
    Beacon(sortition_ledger::BeaconError),
    #[error("replay diverged at height {height}: stored root {stored}, recomputed {recomputed}")]
    RootMismatch {
        height: u64,
        stored: String,
        recomputed: String,
    },
    #[error("replay of block {height} failed: {reason}")]
    Replay { height: u64, reason: String },
    #[error("sequencer stopped")]
    Stopped,
    /// Under consensus: the transaction was accepted into the mempool but is not in a final
    /// block yet (this validator may be partitioned, or the network may have lost its quorum).
    #[error(
        "transaction {tx} is not final after {secs} s (this validator may be cut off or the \
         validators may lack a quorum); it may still be included: check GET /v1/txs/{tx}"
    )]
    NotFinal { tx: String, secs: u64 },
    /// Under consensus: the transaction left the mempool without being included.
    #[error("transaction {tx} was dropped: {reason}")]
    Dropped { tx: String, reason: String },
    /// Under consensus: the mempool is full.
    #[error("the mempool is full ({0} transactions waiting); retry shortly")]
    MempoolFull(usize),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Why an HTTP request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// snake_case name of a ledger error's variant, e.g. `wrong_nonce`.
pub fn error_code(e: &LedgerError) -> String {
    let v = serde_json::to_value(e).unwrap_or_default();
    let name = match &v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(ch.to_lowercase());
    }
    out
}

/// HTTP status for a refused transaction.
pub fn ledger_status(e: &LedgerError) -> StatusCode {
    use LedgerError::*;
    match e {
        BadSignature | WrongChain { .. } | Expired { .. } => StatusCode::BAD_REQUEST,
        WrongNonce { .. }
        | AlreadyCommitted
        | AlreadyRevealed
        | ReceiptAlreadySubmitted
        | NodeExists(_)
        | ModelExists(_)
        | ClassChangeWhileBusy { .. }
        | ValidatorFaultReported { .. } => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl ApiError {
    /// The status and body this error is answered with.
    pub fn parts(&self) -> (StatusCode, sortition_ledger_api::ErrorBody) {
        let (status, kind, code) = match self {
            ApiError::Ledger(e) => (ledger_status(e), "invalid_request_error", error_code(e)),
            ApiError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "bad_request".into(),
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found_error", "not_found".into()),
            ApiError::Service(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "unavailable".into(),
            ),
        };
        (
            status,
            sortition_ledger_api::ErrorBody::new(self.to_string(), kind, code),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.parts();
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Storage faults heal by themselves: say when to try again.
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}
