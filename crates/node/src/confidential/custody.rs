//! Confidential requests in this node's custody: kept sealed at rest with their receipts,
//! re-sealed to each drawn auditor, and opened when one is re-sealed to this node.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sortition_api::*;
use sortition_confidential::custody::{audit_aad, audit_request_id};
use sortition_confidential::{
    Evidence, PolicyVerifier, RecipientKey, SealedRequest, open_request, seal_request,
};
use sortition_ledger_client::LedgerClient;
use sortition_types::{AuditId, NodeId, StackId};

use crate::service::NodeState;
use sortition_api::audit::AuditPayload;

use super::*;

/// Whether this node keeps the confidential request behind receipt `seq` of `stack`.
pub fn holds(state: &NodeState, stack: StackId, seq: u64) -> bool {
    state.confidential.is_some() && matches!(state.store.custody(stack, seq), Ok(Some(_)))
}

/// Re-seals the confidential request behind receipt `seq` of `stack` to each of `nodes` (the
/// auditors or committee of `audit`) and delivers it; nodes whose key or evidence does not
/// verify get nothing.
pub async fn deliver_for_audit(
    state: Arc<NodeState>,
    client: LedgerClient,
    audit: AuditId,
    stack: StackId,
    seq: u64,
    nodes: Vec<NodeId>,
) {
    let Some(ring) = state.confidential.clone() else {
        return;
    };
    if !state.behaviour.delivers_custody() {
        return tracing::warn!(%audit, "adversary: withholding the confidential request");
    }
    let plaintext = match state.store.custody(stack, seq) {
        Ok(Some(sealed)) => match ring.custody.open(stack.0, seq, &sealed) {
            Ok(p) => p,
            Err(e) => return tracing::error!(%audit, error = %e, "custody record unreadable"),
        },
        Ok(None) => return,
        Err(e) => return tracing::error!(%audit, error = %e, "custody lookup failed"),
    };
    let verifier = ring.auditor_verifier();
    let to = |node| deliver_sealed(&state, &client, &verifier, audit, node, &plaintext);
    futures::future::join_all(nodes.into_iter().map(to)).await;
}

/// Re-seals `plaintext` to auditor `node` and posts it (see
/// [`sortition_ledger_client::delivery`] for the retry policy).
async fn deliver_sealed(
    state: &NodeState,
    client: &LedgerClient,
    verifier: &PolicyVerifier,
    audit: AuditId,
    node: NodeId,
    plaintext: &[u8],
) {
    use sortition_ledger_client::delivery::{Delivery, post_with_patience};
    let count = |label| {
        state
            .metrics
            .inc("confidential_audit_deliveries_total", label, 1)
    };
    let (sealed, endpoint) = match reseal(client, verifier, audit, node, plaintext).await {
        Ok(s) => s,
        Err(why) => {
            count("refused");
            return tracing::warn!(%audit, %node, %why, "not re-sealing a confidential request to this auditor");
        }
    };
    let url = format!(
        "{}/sortition/v1/audits/{}/sealed-payload",
        endpoint.trim_end_matches('/'),
        audit.0
    );
    match post_with_patience(&reqwest::Client::new(), &url, &sealed).await {
        Delivery::Delivered => count("delivered"),
        Delivery::Refused(why) => {
            tracing::warn!(%audit, %node, %why, "auditor refused the sealed payload")
        }
        Delivery::GaveUp(why) => {
            tracing::warn!(%audit, %node, %why, "sealed payload not delivered in time")
        }
    }
}

/// Checks `node`'s published key like a client would and seals `plaintext` to it for `audit`.
/// Returns the sealed request and the node's endpoint.
async fn reseal(
    client: &LedgerClient,
    verifier: &PolicyVerifier,
    audit: AuditId,
    node: NodeId,
    plaintext: &[u8],
) -> Result<(SealedRequest, String), String> {
    let status = client.status().await.map_err(|e| e.to_string())?;
    let n = client.node(node).await.map_err(|e| e.to_string())?;
    if n.attestation.is_empty() {
        return Err("the auditor publishes no attested confidential key".into());
    }
    if n.key_epoch != status.epoch || n.key_nonce != status.epoch_nonce {
        return Err(format!(
            "the auditor's key is from epoch {}, the ledger is in epoch {}",
            n.key_epoch, status.epoch
        ));
    }
    let evidence: Evidence =
        serde_json::from_slice(&n.attestation).map_err(|e| format!("evidence: {e}"))?;
    let (recipient, _) = RecipientKey::verify_attested(
        node,
        n.key_epoch,
        &status.epoch_nonce,
        n.confidential_key.0.0,
        &evidence,
        verifier,
        unix_now(),
    )
    .map_err(|e| format!("evidence refused: {e}"))?;
    let (sealed, _) = seal_request(
        &recipient,
        audit_request_id(audit.0, node),
        plaintext,
        &audit_aad(audit.0, node),
    )
    .map_err(|e| e.to_string())?;
    Ok((sealed, n.endpoint))
}

/// `POST /sortition/v1/audits/{id}/sealed-payload`: an executor re-sealed a confidential
/// request to this auditor. Opened with this node's key, checked to be for this audit and this
/// node, then judged like any payload.
pub async fn audit_sealed_payload(
    State(s): S,
    axum::extract::Path(id): axum::extract::Path<u64>,
    body: Bytes,
) -> Response {
    match open_audit_payload(&s, AuditId(id), &body) {
        Ok(()) => Json(serde_json::json!({"accepted": true})).into_response(),
        Err(e) => {
            s.metrics.inc("errors_total", e.code, 1);
            e.into_response()
        }
    }
}

fn open_audit_payload(s: &NodeState, audit: AuditId, body: &[u8]) -> Result<(), ApiError> {
    let ring = ring_of(s)?;
    let sealed: SealedRequest = parse_json(body)?;
    if sealed.aad != audit_aad(audit.0, s.id)
        || sealed.request_id != audit_request_id(audit.0, s.id)
    {
        return Err(sealed_error(
            "sealed_payload_invalid",
            "the sealed payload is bound to another audit or auditor",
        ));
    }
    let key = ring.key_or_stale(sealed.key_epoch)?;
    let (plaintext, _) =
        open_request(&key, &sealed).map_err(|e| sealed_error("sealed_payload_invalid", e))?;
    let payload: AuditPayload = parse_json(&plaintext).map_err(|_| {
        sealed_error(
            "sealed_payload_invalid",
            "the opened payload does not parse",
        )
    })?;
    Ok(s.audits.deliver(audit, payload)?)
}
