//! Errors in the OpenAI shape, with their HTTP status, decided in one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The category of an error; decides the HTTP status and the OpenAI `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed JSON, invalid parameters (400).
    InvalidRequest,
    /// Missing, invalid, revoked key or bad signature (401).
    Authentication,
    /// A stack the node holds is exhausted or closed (402): between a stack's owner and its
    /// node.
    InsufficientFunds,
    /// A user's credits or a key's budget cannot cover the request (429 `insufficient_quota`,
    /// as OpenAI answers, which its SDKs raise as a rate-limit error).
    QuotaExceeded,
    /// Authenticated but not allowed (403).
    Permission,
    /// Unknown model or object (404).
    NotFound,
    /// A replayed request (409).
    Conflict,
    /// Body larger than the limit (413).
    PayloadTooLarge,
    /// Rate limited or overloaded (429).
    RateLimited,
    /// A bug or an unexpected failure (500).
    Internal,
    /// An upstream node failed (502).
    BadGateway,
    /// No node can serve now (503).
    Unavailable,
    /// Upstream timed out (504).
    Timeout,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::InsufficientFunds => StatusCode::PAYMENT_REQUIRED,
            ErrorKind::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Permission => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The OpenAI `type` string.
    pub fn type_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::PayloadTooLarge => {
                "invalid_request_error"
            }
            ErrorKind::Conflict => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::InsufficientFunds | ErrorKind::QuotaExceeded => "insufficient_quota",
            ErrorKind::Permission => "permission_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Internal => "server_error",
            ErrorKind::BadGateway | ErrorKind::Unavailable | ErrorKind::Timeout => "upstream_error",
        }
    }
}

/// An API error: kind, a human message, a machine code, and an optional Retry-After.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub code: &'static str,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            code,
            param: None,
            retry_after_secs: None,
        }
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, code, message)
    }
    pub fn with_param(mut self, p: impl Into<String>) -> Self {
        self.param = Some(p.into());
        self
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal_error", message)
    }
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                r#type: self.kind.type_str().to_string(),
                code: Some(self.code.to_string()),
                param: self.param.clone(),
            },
        }
    }
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

/// `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    pub r#type: String,
    pub code: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Turns axum's JSON extractor rejections into OpenAI-shaped errors.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        match r {
            J::MissingJsonContentType(_) => ApiError::invalid(
                "invalid_content_type",
                "expected a JSON body with Content-Type: application/json",
            ),
            J::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(ErrorKind::PayloadTooLarge, "body_too_large", b.body_text())
            }
            other => ApiError::invalid(
                "invalid_json",
                format!("invalid JSON body: {}", other.body_text()),
            ),
        }
    }
}

/// The fallback of every service's router: an unknown route, in the OpenAI shape.
pub async fn unknown_route() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "unknown_route", "no such route")
}

/// axum answers an oversized body with a plain-text 413; this gives it the OpenAI shape.
/// Used as `map_response` middleware by nodes and gateways with their body `limit`.
pub fn payload_too_large_to_openai(
    resp: axum::response::Response,
    limit: usize,
) -> axum::response::Response {
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"))
    {
        return ApiError::new(
            ErrorKind::PayloadTooLarge,
            "body_too_large",
            format!("request body exceeds {limit} bytes"),
        )
        .into_response();
    }
    resp
}
