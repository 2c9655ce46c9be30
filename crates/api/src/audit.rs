//! What the holder of a request delivers to the auditors of its receipt: the contract between
//! a gateway (or a confidential request's executor), which keeps requests, and the nodes that
//! judge them. Both sides read and write these types, so the shape is written once.

use serde::{Deserialize, Serialize};
use sortition_types::SignedReceipt;

/// The routes a receipted request can come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    #[serde(rename = "/v1/chat/completions")]
    Chat,
    #[serde(rename = "/v1/completions")]
    Completions,
    #[serde(rename = "/v1/embeddings")]
    Embeddings,
}

impl Route {
    /// The HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            Route::Chat => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
        }
    }

    /// The route of `path`, if it is one.
    pub fn of_path(path: &str) -> Option<Route> {
        [Route::Chat, Route::Completions, Route::Embeddings]
            .into_iter()
            .find(|r| r.path() == path)
    }

    /// The route a request body was accepted on, from the field only that route's body has
    /// (`messages`, `prompt`, `input`); `None` for a body of none of them.
    pub fn of_body(body: &[u8]) -> Option<Route> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let o = v.as_object()?;
        match (
            o.contains_key("messages"),
            o.contains_key("prompt"),
            o.contains_key("input"),
        ) {
            (true, false, false) => Some(Route::Chat),
            (false, true, false) => Some(Route::Completions),
            (false, false, true) => Some(Route::Embeddings),
            _ => None,
        }
    }
}

/// What the holder of a request delivers to an auditor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditPayload {
    /// The route the request was sent to (`/v1/chat/completions`, …).
    pub path: String,
    /// The exact request body (UTF-8 JSON) the receipt's `request_hash` commits to.
    pub body: String,
    /// The executor's signed receipt.
    pub receipt: SignedReceipt,
    /// The answer the user received, when the holder kept it: lets a scoring audit check it
    /// in one pass. Checked against the receipt's response hash before use.
    #[serde(default)]
    pub answer: Option<Answer>,
}

/// A generated answer as the user received it: the text its receipt commits to (tool calls
/// included, see [`crate::tools::committed_text`]) and why it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub finish_reason: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes_read_from_paths_and_bodies() {
        for r in [Route::Chat, Route::Completions, Route::Embeddings] {
            assert_eq!(Route::of_path(r.path()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.path());
        }
        assert_eq!(
            Route::of_body(br#"{"model":"m","messages":[]}"#),
            Some(Route::Chat)
        );
        assert_eq!(
            Route::of_body(br#"{"model":"m","prompt":"x"}"#),
            Some(Route::Completions)
        );
        assert_eq!(
            Route::of_body(br#"{"model":"m","input":"x"}"#),
            Some(Route::Embeddings)
        );
        for bad in [
            &b"{}"[..],
            b"[]",
            b"nope",
            br#"{"messages":[],"prompt":"x"}"#,
        ] {
            assert_eq!(Route::of_body(bad), None);
        }
        assert_eq!(Route::of_path("/v1/models"), None);
    }
}
