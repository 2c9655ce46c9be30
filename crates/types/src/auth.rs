//! Authentication of a request sent to a node on behalf of a stack's owner.
//!
//! The owner signs (method, path, body digest, stack, nonce, expiry). The node checks the
//! signature against the stack owner's key held by the ledger, refuses expired messages and
//! refuses any nonce it has already seen for that stack before the expiry, so a captured
//! request cannot be replayed, redirected to another route, or re-used with another body.

use serde::{Deserialize, Serialize};

use crate::{Hash32, PublicKey, Signature, SignatureError, StackId, sha256};

/// Signature domain for request authentication.
pub const REQUEST_DOMAIN: &str = "request";

/// Longest validity a request signature may claim, in milliseconds. Bounds the replay cache.
pub const MAX_REQUEST_VALIDITY_MS: u64 = 10 * 60 * 1000;

/// What the stack owner signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAuth {
    pub method: String,
    pub path: String,
    pub body_digest: Hash32,
    pub stack: StackId,
    /// Random per request; never reused within the validity window.
    pub nonce: u64,
    /// Unix milliseconds after which the node refuses the request.
    pub expires_at_ms: u64,
}

/// The header that carries a signed [`RequestAuth`]: `stack=..,nonce=..,exp=..,sig=..`.
pub const AUTH_HEADER: &str = "x-sortition-auth";

impl RequestAuth {
    pub fn new(
        method: &str,
        path: &str,
        body: &[u8],
        stack: StackId,
        nonce: u64,
        exp: u64,
    ) -> Self {
        RequestAuth {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            body_digest: sha256(body),
            stack,
            nonce,
            expires_at_ms: exp,
        }
    }

    pub fn verify(&self, owner: &PublicKey, sig: &Signature) -> Result<(), SignatureError> {
        owner.verify(REQUEST_DOMAIN, self, sig)
    }

    /// The header value: the fields the node cannot recompute from the request, plus the
    /// signature.
    pub fn header_value(&self, sig: &Signature) -> String {
        format!(
            "stack={},nonce={},exp={},sig={}",
            self.stack.0,
            self.nonce,
            self.expires_at_ms,
            sig.to_hex()
        )
    }

    /// Rebuilds the signed message from a header value and the request's method, path and body.
    pub fn parse_header(
        value: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(RequestAuth, Signature), AuthHeaderError> {
        let (mut stack, mut nonce, mut exp, mut sig) = (None, None, None, None);
        for part in value.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or(AuthHeaderError::Malformed)?;
            match k {
                "stack" => stack = Some(v.parse().map_err(|_| AuthHeaderError::Malformed)?),
                "nonce" => nonce = Some(v.parse().map_err(|_| AuthHeaderError::Malformed)?),
                "exp" => exp = Some(v.parse().map_err(|_| AuthHeaderError::Malformed)?),
                "sig" => {
                    sig = Some(Signature::from_hex(v).map_err(|_| AuthHeaderError::Malformed)?)
                }
                _ => return Err(AuthHeaderError::Malformed),
            }
        }
        let (Some(stack), Some(nonce), Some(exp), Some(sig)) = (stack, nonce, exp, sig) else {
            return Err(AuthHeaderError::Malformed);
        };
        Ok((
            RequestAuth::new(method, path, body, StackId(stack), nonce, exp),
            sig,
        ))
    }
}

/// The auth header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthHeaderError {
    #[error("malformed {AUTH_HEADER} header: expected stack=N,nonce=N,exp=MS,sig=HEX")]
    Malformed,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Keypair;

    #[test]
    fn header_round_trip_binds_body_and_path() {
        let owner = Keypair::from_seed(b"owner");
        let auth = RequestAuth::new("post", "/v1/chat/completions", b"{}", StackId(9), 5, 1000);
        let sig = owner.sign(REQUEST_DOMAIN, &auth);
        let header = auth.header_value(&sig);
        let (parsed, psig) =
            RequestAuth::parse_header(&header, "POST", "/v1/chat/completions", b"{}").unwrap();
        assert!(parsed.verify(&owner.public(), &psig).is_ok());
        let (other_body, s2) =
            RequestAuth::parse_header(&header, "POST", "/v1/chat/completions", b"{ }").unwrap();
        assert!(other_body.verify(&owner.public(), &s2).is_err());
        let (other_path, s3) =
            RequestAuth::parse_header(&header, "POST", "/v1/completions", b"{}").unwrap();
        assert!(other_path.verify(&owner.public(), &s3).is_err());
        assert!(RequestAuth::parse_header("stack=1", "POST", "/", b"").is_err());
    }
}
