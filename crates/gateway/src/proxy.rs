//! Forwarding one user request to a node: choose, hold a stack, sign, send, fail over, check
//! the receipt, bill.
//!
//! A request is billed only from a receipt that verifies against the key the ledger holds for
//! the node that was chosen. Connect errors, 5xx and timeouts before the first byte are
//! retried on another node; nothing is billed for them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use sortition_api::{ApiError, ErrorKind, unix_now_ms};
use sortition_types::auth::{AUTH_HEADER, REQUEST_DOMAIN};
use sortition_types::{ModelId, NodeId, RequestAuth, StackId};

use crate::directory::unit_price;
use crate::router::{Constraints, NodeView, Outcome};
use crate::state::GatewayState;
use crate::store::StackRecord;

/// Attempts per request before giving up (each on a different node).
pub const MAX_ATTEMPTS: usize = 3;

/// Refusals of a stack the node says is closed, per node asked, before the node counts as
/// failed. Such a refusal is not the node's failure: it claimed the stack (which closes it on
/// the ledger) before this gateway saw the claim. Each one closes the stack in our books, so
/// the next try buys or picks another; the bound only keeps a confused node from looping us.
pub const MAX_STALE_STACKS: usize = 4;

pub use crate::lease::Lease;

/// A node's answer whose headers arrived, and the lease it was served under (which it derefs
/// to). Taking the response apart (`let Dispatched { lease, response } = d`) leaves the lease.
pub struct Dispatched {
    pub lease: Lease,
    pub response: reqwest::Response,
}

impl std::ops::Deref for Dispatched {
    type Target = Lease;
    fn deref(&self) -> &Lease {
        &self.lease
    }
}

/// Sends `body` to the best node for `model`, retrying on failures before the first byte, never
/// choosing a node of `exclude` (nodes that already failed this request after their headers,
/// e.g. a stream that broke before its first event).
pub async fn dispatch(
    g: &Arc<GatewayState>,
    path: &str,
    body: &Bytes,
    model: &ModelId,
    units_needed: u64,
    constraints: &Constraints,
    exclude: &[NodeId],
) -> Result<Dispatched, ApiError> {
    let mut tried: Vec<NodeId> = exclude.to_vec();
    let first_try = tried.len();
    let mut last_err = None;
    for _ in 0..MAX_ATTEMPTS {
        let node = {
            let mut r = g.router.lock().await;
            match r.choose(model, constraints, &tried, Instant::now()) {
                Ok(id) => r.node(id).cloned(),
                Err(e) if tried.len() == first_try => return Err(e.into()),
                Err(_) => break,
            }
        };
        let Some(node) = node else { break };
        tried.push(node.id);
        match on_node(g, &node, path, body, model, units_needed).await {
            Ok(d) if d.response.status().is_server_error() => {
                tracing::warn!(node = %node.id, status = %d.response.status(), "node failed; trying another");
                let Dispatched { lease, response } = d;
                lease.release(Outcome::Failure).await;
                last_err = Some(upstream_error(response).await);
            }
            Ok(d) => return Ok(d),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        ApiError::new(
            ErrorKind::Unavailable,
            "no_route",
            format!("no node could serve {model}"),
        )
        .with_retry_after(1)
    }))
}

/// One try of `body` on `node` (counted by the router as dispatched to it), on a stack held for
/// `units`: the node's answer once its headers arrived (any status), under a lease that holds
/// the units, or why the node could not be asked (the units released and the router told of
/// the failure).
///
/// A stack the node refuses as spent or claimed (402) is one our books still thought open (the
/// node claimed it before this gateway saw the claim): it is closed and the node asked again
/// on another, up to [`MAX_STALE_STACKS`] times. That is not the node's failure, nor the
/// request's.
pub async fn on_node(
    g: &Arc<GatewayState>,
    node: &NodeView,
    path: &str,
    body: &Bytes,
    model: &ModelId,
    units: u64,
) -> Result<Dispatched, ApiError> {
    let mut stale = 0;
    loop {
        let stack = match hold_stack(g, node, model, units).await {
            Ok(s) => s,
            Err(e) => {
                g.finish(node.id, Outcome::Failure).await;
                return Err(e);
            }
        };
        // From here the units are the lease's: whatever ends this request (an answer, an
        // error, the client leaving mid-send) returns or bills them.
        let lease = Lease::new(g, node.clone(), stack.stack_id, units, Instant::now());
        match send(g, node, path, body, stack.stack_id).await {
            Ok(resp) if resp.status() == StatusCode::PAYMENT_REQUIRED => {
                tracing::warn!(node = %node.id, stack = %stack.stack_id, "node refused stack; closing it");
                let _ = g.store.close_stack(stack.stack_id).await;
                stale += 1;
                if stale > MAX_STALE_STACKS {
                    lease.release(Outcome::Failure).await;
                    return Err(upstream_error(resp).await);
                }
                lease.retry().await;
            }
            Ok(response) => return Ok(Dispatched { lease, response }),
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "node unreachable");
                lease.release(Outcome::Failure).await;
                return Err(ApiError::new(
                    ErrorKind::BadGateway,
                    "node_unreachable",
                    format!("node {} failed: {e}", node.id),
                ));
            }
        }
    }
}

async fn upstream_error(resp: reqwest::Response) -> ApiError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<sortition_api::ErrorBody>(&text)
        .map(|b| b.error.message)
        .unwrap_or(text);
    let kind = if status.is_server_error() {
        ErrorKind::BadGateway
    } else {
        ErrorKind::Unavailable
    };
    ApiError::new(
        kind,
        "upstream_error",
        format!("node answered {status}: {msg}"),
    )
}

/// A stack on `node` for `model` with `units` free, reserved for this request; buys one when
/// none has room.
pub async fn hold_stack(
    g: &Arc<GatewayState>,
    node: &NodeView,
    model: &ModelId,
    units: u64,
) -> Result<StackRecord, ApiError> {
    let now = unix_now_ms() as i64;
    // Leave a margin before expiry so the node's signature check does not race it.
    let horizon = now + 60_000;
    // The common case, one statement: a stack with room is reserved on.
    if let Some(s) = g
        .store
        .reserve_on_any_stack(node.id, model, units, horizon)
        .await?
    {
        return Ok(s);
    }
    // One purchase at a time, then look again: a concurrent request may have bought one.
    let _guard = g.buying.lock().await;
    for s in g.store.usable_stacks(node.id, model, horizon).await? {
        if g.store
            .reserve_stack_units(s.stack_id, units, now)
            .await
            .is_ok()
        {
            return Ok(s);
        }
    }
    let size = g.config.stack_units.max(units);
    let bought = g
        .ledger
        .buy_stack(node.id, model.clone(), size, unit_price(node))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Unavailable, "stack_purchase_failed", e))?;
    let record = StackRecord {
        stack_id: bought.id,
        model: model.clone(),
        node_id: node.id,
        owner: g.account.public().to_hex(),
        units_total: bought.units,
        units_reserved: 0,
        units_used: 0,
        expires_at_ms: bought.expires_at_ms as i64,
        state: crate::store::StackState::Active,
    };
    g.store.insert_stack(&record).await?;
    g.store
        .reserve_stack_units(record.stack_id, units, now)
        .await?;
    tracing::info!(stack = %record.stack_id, node = %node.id, units = record.units_total, "bought stack");
    Ok(record)
}

pub async fn send(
    g: &GatewayState,
    node: &NodeView,
    path: &str,
    body: &Bytes,
    stack: StackId,
) -> Result<reqwest::Response, reqwest::Error> {
    let expires = unix_now_ms() + g.config.request_validity.as_millis() as u64;
    let nonce = rand::random::<u64>();
    let auth = RequestAuth::new("POST", path, body, stack, nonce, expires);
    let sig = g.account.sign(REQUEST_DOMAIN, &auth);
    let url = format!("{}{}", node.url.trim_end_matches('/'), path);
    g.http
        .post(url)
        .header("content-type", "application/json")
        .header(AUTH_HEADER, auth.header_value(&sig))
        .body(body.clone())
        .send()
        .await
}

/// Time since dispatch, for the router's latency statistics.
pub fn elapsed(d: &Lease) -> Duration {
    d.started.elapsed()
}
