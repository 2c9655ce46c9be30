//! The HTTP wire of Sortition's OpenAI-compatible API.
//!
//! Owns: request and response bodies of `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`, the streaming chunk shape, the `sortition` extension
//! field that carries receipts, and the one place where errors become
//! `{"error": {"message", "type", "code"}}` with an HTTP status.
//!
//! Does not own: validation against a model (the engine does that) or transport.

pub mod audit;
pub mod constraint;
pub mod delivered;
pub mod embeddings;
pub mod error;
pub mod fields;
pub mod logprobs;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod private_fs;
pub mod responses;
pub mod tools;

pub use embeddings::*;
pub use error::{ApiError, ErrorBody, ErrorKind, payload_too_large_to_openai, unknown_route};
pub use fields::parse_json;
pub use logprobs::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob};
pub use openai::*;
pub use responses::*;

/// Header that carries a JSON-encoded receipt on non-streaming responses.
pub const RECEIPT_HEADER: &str = "x-sortition-receipt";
/// Header naming the node that served a request (set by gateways).
pub const NODE_HEADER: &str = "x-sortition-node";
/// Extension header with per-request routing constraints (JSON), read by gateways.
pub const CONSTRAINTS_HEADER: &str = "x-sortition-constraints";

/// Current Unix time in seconds, for the `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Current Unix time in milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
