//! Stack authentication: who may spend a stack's units on this node.
//!
//! A request carries the stack owner's signature over (method, path, body digest, stack,
//! nonce, expiry) in the `x-sortition-auth` header. The node checks it against the owner key
//! the ledger holds for the stack, refuses an expired or too-long-lived signature, and records
//! the nonce durably so that a replay is refused, even after a restart.

use std::future::Future;
use std::pin::Pin;

use axum::http::HeaderMap;
use sortition_api::{ApiError, ErrorKind};
use sortition_types::auth::{AUTH_HEADER, MAX_REQUEST_VALIDITY_MS};
use sortition_types::{RequestAuth, StackId};

use crate::accounts::StackInfo;
use crate::store::NodeStore;

/// Where the node learns about stacks (the ledger in production, a table in tests).
pub trait StackSource: Send + Sync + 'static {
    /// The stack, or `None` if the ledger does not know it.
    fn stack(
        &self,
        id: StackId,
    ) -> Pin<Box<dyn Future<Output = Result<Option<StackInfo>, String>> + Send + '_>>;
}

/// Checks the auth header of a request and records its nonce. Returns the stack.
pub async fn authenticate(
    stacks: &dyn StackSource,
    store: &NodeStore,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: u64,
) -> Result<StackInfo, ApiError> {
    let unauthorized = |code, msg: String| ApiError::new(ErrorKind::Authentication, code, msg);
    let value = headers
        .get(AUTH_HEADER)
        .ok_or_else(|| {
            unauthorized(
                "missing_auth",
                format!("missing {AUTH_HEADER} header (stack owner's signature)"),
            )
        })?
        .to_str()
        .map_err(|_| unauthorized("invalid_auth", format!("{AUTH_HEADER} is not ASCII")))?;
    let (auth, sig) = RequestAuth::parse_header(value, method, path, body)
        .map_err(|e| unauthorized("invalid_auth", e.to_string()))?;
    if auth.expires_at_ms <= now_ms {
        return Err(unauthorized(
            "expired_auth",
            "request signature has expired".into(),
        ));
    }
    if auth.expires_at_ms > now_ms + MAX_REQUEST_VALIDITY_MS {
        return Err(unauthorized(
            "invalid_auth",
            format!("request signature valid for more than {MAX_REQUEST_VALIDITY_MS} ms"),
        ));
    }
    let stack = stacks
        .stack(auth.stack)
        .await
        .map_err(|e| ApiError::new(ErrorKind::Unavailable, "ledger_unavailable", e))?
        .ok_or_else(|| {
            unauthorized(
                "unknown_stack",
                format!("{} is not on the ledger", auth.stack),
            )
        })?;
    auth.verify(&stack.owner, &sig).map_err(|_| {
        unauthorized(
            "invalid_signature",
            "signature does not match the stack owner's key".into(),
        )
    })?;
    let fresh = store
        .insert_nonce(auth.stack, auth.nonce, auth.expires_at_ms)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if !fresh {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "replayed_request",
            "this request nonce was already used",
        ));
    }
    Ok(stack)
}
