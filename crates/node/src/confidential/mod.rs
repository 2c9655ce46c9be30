//! Confidential requests on the node (DESIGN flow 7).
//!
//! Keys: with an attester configured, the node keeps a [`KeyRing`]: one X25519 key per epoch,
//! generated inside the (claimed) TEE, bound by evidence to (key, the ledger's epoch nonce, node
//! id), and published with `RotateConfidentialKey` at start and at every `EpochTurned` event.
//! The previous epoch's key is kept so requests sealed just before a turn still open.
//!
//! Requests: `POST /v1/confidential/chat/completions` carries an
//! [`Envelope`](sortition_confidential::wire::Envelope) signed with stack auth like any other
//! request. The node opens it, checks that the plaintext agrees with the clear metadata, runs it
//! on the same engine path as a plain request, seals every response chunk under its own nonce,
//! and returns the receipt in the clear; the receipt's hashes commit to the plaintext request and
//! answer, exactly as for a plain request. Errors about the plaintext never quote it.
//!
//! Audits: the gateway holds only ciphertext, so the node itself keeps every confidential
//! request it receipted (with its answer), sealed at rest under its custody key
//! (`sortition_confidential::custody`). When the ledger samples or a stack owner challenges one,
//! the node checks each drawn auditor's published key and evidence (the same policy checks a
//! client makes), re-seals the request with HPKE to that key, bound to the audit and the
//! auditor, and posts it to the auditor's `/sortition/v1/audits/{id}/sealed-payload`. An auditor
//! without an attested key gets nothing and votes `Unavailable`.
//!
//! Withholding does not pay: a confidential receipt says the request is in the executor's
//! custody (`Custody::Executor`; the gateway refuses any other), so when most auditors, and then
//! most of a dispute's committee, vote `Unavailable`, the ledger slashes this node for
//! withholding it (`SlashReason::PayloadWithheld`).

mod custody;
mod requests;

pub use crate::keyring::{KeyRing, follow_epochs};
pub use custody::{audit_sealed_payload, deliver_for_audit, holds};
pub use requests::chat_completions;

use std::sync::Arc;

use axum::extract::State;
use sortition_api::ApiError;

use crate::error::NodeError;
use crate::service::NodeState;

type S = State<Arc<NodeState>>;

/// The node's key ring, or the error of a node without an attester.
fn ring_of(s: &NodeState) -> Result<&KeyRing, NodeError> {
    s.confidential
        .as_deref()
        .ok_or(NodeError::ConfidentialUnavailable)
}

fn sealed_error(code: &'static str, e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(code, e.to_string())
}
