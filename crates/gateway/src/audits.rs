//! Payload custody for audits (DESIGN flow 5): when the ledger samples one of this gateway's
//! receipts, the gateway delivers the original request and the receipt to the auditors it
//! drew (and to any dispute committee), since nobody else holds the request. The same event
//! stream tells it when a node claimed (and so closed) one of its stacks.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sortition_api::audit::{Answer, AuditPayload, Route};
use sortition_ledger::Event;
use sortition_ledger_client::delivery::{self, Delivery};
use sortition_ledger_client::{Cursor, CursorStore, EventHandler, LedgerClient};
use sortition_types::{AuditId, NodeId, PublicKey, SignedReceipt, StackId};

use crate::state::GatewayState;

/// The stored request, receipt and answer behind receipt `seq` of `stack`.
async fn find(
    g: &GatewayState,
    stack: StackId,
    seq: u64,
) -> Result<Option<(String, SignedReceipt, Option<Answer>)>, String> {
    let now = sortition_api::unix_now_ms() as i64;
    let Some(p) = g
        .store
        .payload(stack, seq, now)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let Some(json) = p.receipt_json else {
        return Ok(None);
    };
    let receipt: SignedReceipt = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    let body = String::from_utf8(p.body).map_err(|e| e.to_string())?;
    let answer = p.answer.and_then(|b| serde_json::from_slice(&b).ok());
    Ok(Some((body, receipt, answer)))
}

/// Sends the payload of audit `audit` to `nodes`, all at once.
async fn deliver(
    g: &GatewayState,
    client: &LedgerClient,
    audit: AuditId,
    stack: StackId,
    seq: u64,
    nodes: &[NodeId],
) {
    let (body, receipt, answer) = match find(g, stack, seq).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            // Expected for confidential requests: their executor delivers them, re-sealed.
            return tracing::warn!(%audit, %stack, seq, "audited request is not in this gateway's custody (a confidential one is delivered by its executor)");
        }
        Err(e) => return tracing::error!(%audit, error = %e, "payload lookup failed"),
    };
    // The gateway accepted the body on one route, whose body alone has its field.
    let Some(route) = Route::of_body(body.as_bytes()) else {
        return tracing::error!(%audit, %stack, seq, "kept request body is of no route");
    };
    // The answer lets auditors score instead of regenerate; they check it against the
    // receipt's response hash, so a wrong one only costs them a regeneration.
    let payload = AuditPayload {
        path: route.path().into(),
        body,
        receipt,
        answer,
    };
    let to = |node: NodeId| deliver_to(g, client, audit, node, &payload);
    futures::future::join_all(nodes.iter().map(|&node| to(node))).await;
}

/// Posts `payload` to auditor `node` (see [`delivery`] for the retry policy).
async fn deliver_to(
    g: &GatewayState,
    client: &LedgerClient,
    audit: AuditId,
    node: NodeId,
    payload: &AuditPayload,
) {
    let url = match client.node(node).await {
        Ok(n) => format!(
            "{}/sortition/v1/audits/{}/payload",
            n.endpoint.trim_end_matches('/'),
            audit.0
        ),
        Err(e) => return tracing::warn!(%node, error = %e, "auditor unknown"),
    };
    match delivery::post_with_patience(&g.http, &url, payload).await {
        Delivery::Delivered => g.metrics.inc("audit_payloads_delivered_total", "", 1),
        Delivery::Refused(why) => tracing::warn!(%node, %audit, %why, "auditor refused payload"),
        Delivery::GaveUp(why) => {
            tracing::warn!(%node, %audit, %why, "payload not delivered in time")
        }
    }
}

/// Follows the ledger's events and delivers payloads of this gateway's audited receipts. The
/// cursor is kept in `cursor_file` so a restart resumes where it stopped.
///
/// Deliveries run beside the stream (each may retry for up to [`delivery::PATIENCE`]), so a
/// busy auditor never holds back the events behind it, such as a claim that closes a stack.
/// The stored cursor stays at the first event whose delivery is still under way, so a restart
/// delivers again what was not yet delivered (auditors take a payload they already hold).
pub async fn follow(
    g: Arc<GatewayState>,
    client: LedgerClient,
    cursor_file: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let pending = Pending::default();
    let store = CursorFile {
        path: cursor_file,
        pending: pending.clone(),
    };
    let me = g.account.public();
    let custody = Custody { g, me, pending };
    sortition_ledger_client::follow("payload custody", client, store, custody, shutdown).await
}

/// The events whose deliveries are under way (one delivery per event).
type Pending = Arc<Mutex<BTreeSet<Cursor>>>;

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, BTreeSet<Cursor>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The follower's cursor: a private file holding the first event not yet wholly handled.
struct CursorFile {
    path: PathBuf,
    pending: Pending,
}

impl CursorStore for CursorFile {
    fn load(&self) -> Option<Cursor> {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
    fn save(&mut self, next: Cursor) -> Result<(), String> {
        let upto = lock(&self.pending).first().map_or(next, |&p| p.min(next));
        sortition_api::private_fs::write_private(&self.path, upto.to_string())
            .map_err(|e| e.to_string())
    }
}

/// What this gateway does with ledger events.
struct Custody {
    g: Arc<GatewayState>,
    me: PublicKey,
    pending: Pending,
}

impl Custody {
    /// Runs `delivery` beside the stream, marking event `at` pending until it ends.
    fn spawn(&self, at: Cursor, delivery: impl std::future::Future<Output = ()> + Send + 'static) {
        lock(&self.pending).insert(at);
        let pending = self.pending.clone();
        tokio::spawn(async move {
            delivery.await;
            lock(&pending).remove(&at);
        });
    }
}

impl EventHandler for Custody {
    async fn handle(&mut self, client: &LedgerClient, at: Cursor, event: Event) {
        let (g, client) = (self.g.clone(), client.clone());
        match event {
            Event::AuditOpened {
                audit,
                stack,
                owner,
                receipt_index,
                auditors,
                ..
            } if owner == self.me => self.spawn(at, async move {
                deliver(&g, &client, audit, stack, receipt_index, &auditors).await
            }),
            Event::DisputeOpened {
                audit, committee, ..
            } => {
                let me = self.me;
                self.spawn(at, async move {
                    if let Ok(a) = client.audit(audit).await
                        && a.owner == me
                    {
                        deliver(&g, &client, audit, a.stack, a.receipt_index, &committee).await;
                    }
                })
            }
            // A claim, refund or expiry closes its stack on the ledger: stop sending requests
            // on it (the node would refuse them, or serve them unpaid). Stacks of other
            // owners are not in our books.
            Event::ClaimCommitted { stack, .. }
            | Event::Refunded { stack, .. }
            | Event::StackExpired { stack } => match g.store.close_stack(stack).await {
                Ok(()) => tracing::debug!(%stack, "stack claimed by its node; closed"),
                Err(crate::store::StoreError::StackNotFound(_)) => {}
                Err(e) => tracing::warn!(%stack, error = %e, "could not close a claimed stack"),
            },
            _ => {}
        }
    }
}
