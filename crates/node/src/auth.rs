//! Stack authentication: who may spend a stack's units on this node.
//!
//! A request carries the stack owner's signature over (method, path, body digest, stack,
//! nonce, expiry) in the `x-sortition-auth` header. The node checks it against the owner key
//! the ledger holds for the stack, refuses an expired or too-long-lived signature, and records
//! the nonce durably so that a replay is refused, even after a restart.

use std::future::Future;
use std::pin::Pin;

use axum::http::HeaderMap;
use sortition_types::auth::{AUTH_HEADER, MAX_REQUEST_VALIDITY_MS};
use sortition_types::{RequestAuth, StackId};

use crate::accounts::StackInfo;
use crate::error::NodeError;
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
) -> Result<StackInfo, NodeError> {
    let value = headers
        .get(AUTH_HEADER)
        .ok_or(NodeError::MissingAuth)?
        .to_str()
        .map_err(|_| NodeError::InvalidAuth(format!("{AUTH_HEADER} is not ASCII")))?;
    let (auth, sig) = RequestAuth::parse_header(value, method, path, body)
        .map_err(|e| NodeError::InvalidAuth(e.to_string()))?;
    if auth.expires_at_ms <= now_ms {
        return Err(NodeError::ExpiredAuth);
    }
    if auth.expires_at_ms > now_ms + MAX_REQUEST_VALIDITY_MS {
        return Err(NodeError::InvalidAuth(format!(
            "request signature valid for more than {MAX_REQUEST_VALIDITY_MS} ms"
        )));
    }
    let stack = stacks
        .stack(auth.stack)
        .await
        .map_err(NodeError::LedgerUnavailable)?
        .ok_or(NodeError::UnknownStack(auth.stack))?;
    auth.verify(&stack.owner, &sig)
        .map_err(|_| NodeError::BadSignature)?;
    let fresh = store.insert_nonce(auth.stack, auth.nonce, auth.expires_at_ms, now_ms)?;
    if !fresh {
        return Err(NodeError::Replayed);
    }
    Ok(stack)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testkit::{TableStacks, stack};
    use sortition_types::Keypair;
    use sortition_types::auth::REQUEST_DOMAIN;

    fn signed(owner: &Keypair, stack: StackId, nonce: u64, exp: u64) -> HeaderMap {
        let auth = RequestAuth::new("POST", "/v1/chat/completions", b"{}", stack, nonce, exp);
        let sig = owner.sign(REQUEST_DOMAIN, &auth);
        let mut h = HeaderMap::new();
        h.insert(AUTH_HEADER, auth.header_value(&sig).parse().unwrap());
        h
    }

    /// Steady traffic for ten validity windows: each request's nonce is kept while it could be
    /// replayed and swept after, so the table holds about one window of requests instead of
    /// growing with every request ever served. A replay inside the window is still refused,
    /// and an expired request too, swept or not. Before the fix nothing swept the table.
    #[tokio::test]
    async fn spent_nonces_are_swept_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(&dir.path().join("node.redb")).unwrap();
        let owner = Keypair::from_seed(b"owner");
        let mut stacks = TableStacks::default();
        let mut info = stack(1, &owner);
        info.expires_at_ms = u64::MAX;
        stacks.0.insert(StackId(1), info);
        let body = b"{}";
        let path = "/v1/chat/completions";
        // One request every 100 ms, each valid for a minute.
        let (validity, step) = (60_000u64, 100u64);
        let window = (validity + crate::store::NONCE_SWEEP_GRACE_MS) / step;
        let mut now = 1_000_000u64;
        let mut most = 0;
        for nonce in 0..(10 * window) {
            let h = signed(&owner, StackId(1), nonce, now + validity);
            authenticate(&stacks, &store, "POST", path, &h, body, now)
                .await
                .unwrap();
            most = most.max(store.nonce_count().unwrap());
            now += step;
        }
        assert!(
            most <= window + 2,
            "{most} nonces kept, a window is {window}"
        );
        // A replay of a recent request is refused.
        let last = 10 * window - 1;
        let exp = now - step + validity;
        let err = authenticate(
            &stacks,
            &store,
            "POST",
            path,
            &signed(&owner, StackId(1), last, exp),
            body,
            now,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NodeError::Replayed), "{err}");
        // An old one, swept long ago, is refused as expired.
        let err = authenticate(
            &stacks,
            &store,
            "POST",
            path,
            &signed(&owner, StackId(1), 0, 1_000_000 + validity),
            body,
            now,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NodeError::ExpiredAuth), "{err}");
        // The sweep at start forgets what expired while the node was down.
        assert!(store.nonce_count().unwrap() > 0);
        store
            .sweep_nonces(now + 2 * validity + crate::store::NONCE_SWEEP_GRACE_MS)
            .unwrap();
        assert_eq!(store.nonce_count().unwrap(), 0);
    }
}
