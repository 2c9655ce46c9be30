//! Confidential chat (DESIGN flow 7) through the gateway: `POST /v1/confidential/chat/completions`.
//!
//! The gateway sees only the envelope's clear metadata (model, target node, `max_tokens`,
//! stream flag) and the size of the sealed body. It authenticates the API key, admits the
//! request against the user's credits, reserves stack units on the target node — the one the
//! client sealed to, never another, so there is no failover — signs stack auth over the
//! envelope, relays the sealed answer unopened, checks the clear receipt against the key the
//! ledger holds for that node, and bills.
//!
//! What the gateway cannot check: the receipt's request and response hashes commit to the
//! plaintext, which only the client and the node see; the client checks them. The gateway keeps
//! no payload of a confidential request for auditors (it holds only ciphertext): auditing such
//! requests is the executor's duty: it re-seals them to the attested auditors (see the node's
//! `confidential` module).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use sortition_api::*;
use sortition_confidential::wire::{
    CONFIDENTIAL_CHAT_PATH, Envelope, ReceiptExt, SealedCompletion, StreamItem,
};
use sortition_types::{Amount, Hash32, ModelId, SignedReceipt};
use tokio::sync::mpsc;

use crate::challenge;
use crate::directory::{cost, unit_price};
use crate::proxy::{self, Lease};
use crate::router::Outcome;
use crate::state::GatewayState;
use crate::store::{AuthedKey, CreditHold, UsageStatus};
use crate::verify;
use crate::verify::ReceiptError;

type S = State<Arc<GatewayState>>;

/// Worst-case units of a sealed request: the ciphertext bounds the plaintext (a token is at
/// least one byte), plus a quarter for the chat template's per-message overhead (a message
/// takes at least ~28 bytes of JSON and at most ~7 template tokens), a fixed margin, and
/// the new tokens.
pub fn sealed_units(env: &Envelope) -> u64 {
    let ct = env.sealed.ciphertext.len() as u64;
    ct + ct / 4 + 64 + u64::from(env.max_tokens)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// `POST /v1/confidential/chat/completions`.
pub async fn chat_completions(State(g): S, headers: HeaderMap, body: Bytes) -> Response {
    g.metrics.inc("requests_total", "confidential_chat", 1);
    let mut ended = None;
    match handle(&g, &headers, body, &mut ended).await {
        Ok(r) => r,
        Err(e) => {
            // Answer once the credit hold is released: the client sees its credits back with
            // the error.
            if let Some(ended) = ended {
                ended.wait(std::time::Duration::from_secs(2)).await;
            }
            g.metrics.inc("errors_total", e.code, 1);
            e.into_response()
        }
    }
}

/// The request as dispatched to its node: the lease on the node and stack (which it derefs
/// to), who pays, and for what.
struct Sealed {
    lease: Lease,
    key: AuthedKey,
    model: ModelId,
    /// The credit held for the request's worst-case cost; its bill settles it, any other end
    /// releases it.
    hold: CreditHold,
}

impl std::ops::Deref for Sealed {
    type Target = Lease;
    fn deref(&self) -> &Lease {
        &self.lease
    }
}

/// `ended` learns when the request's credit hold (once made) has ended.
async fn handle(
    g: &Arc<GatewayState>,
    headers: &HeaderMap,
    body: Bytes,
    ended: &mut Option<crate::store::HoldEnded>,
) -> Result<Response, ApiError> {
    let key = g.store.authenticate(bearer(headers)).await?;
    g.limiter.check(key.key_id, key.rpm)?;
    let env: Envelope = parse_json(&body)?;
    let _permit = g.in_flight.try_acquire()?;
    let model = ModelId::new(&env.model);
    let node = g.router.lock().await.node(env.node).cloned();
    let node = node.ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "node_not_found",
            format!("{} is not an active node known to this gateway", env.node),
        )
        .with_param("node")
    })?;
    if !node.models.contains(&model) {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "model_not_found",
            format!("{} does not serve model '{model}'", node.id),
        )
        .with_param("model"));
    }
    if !node.confidential {
        return Err(ApiError::invalid(
            "node_not_confidential",
            format!("{} published no attested confidential key", node.id),
        )
        .with_param("node"));
    }
    let units = sealed_units(&env);
    // The worst-case cost is held before any node is asked (a 429 quota error if it cannot
    // be, a 503 if the store cannot write).
    let need = cost(units, unit_price(&node));
    crate::limits::affordable(&key, need)?;
    let mut hold = g.store.hold(key.key_id, need).await?;
    *ended = Some(hold.ended());
    // A stack the node refuses as already claimed is closed and another held, as for plain
    // requests.
    // The node was named by the client, not chosen by the router: it is counted as
    // dispatched to all the same, so its in-flight count and breaker see this request.
    g.router
        .lock()
        .await
        .engage(node.id, std::time::Instant::now());
    let proxy::Dispatched {
        lease,
        response: resp,
    } = proxy::on_node(g, &node, CONFIDENTIAL_CHAT_PATH, &body, &model, units).await?;
    let d = Sealed {
        lease,
        key,
        model,
        hold,
    };
    let status = resp.status();
    if !status.is_success() {
        // The node refused (bad seal, stale key, exhausted stack, …): pass its OpenAI-shaped
        // error on, return the units, bill nothing.
        let outcome = if status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Cancelled
        };
        d.lease.release(outcome).await;
        let text = resp.bytes().await.unwrap_or_default();
        let mut r = (status, text).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    }
    if env.stream {
        Ok(relay(g.clone(), d, resp).into_response())
    } else {
        whole(g, d, resp).await
    }
}

async fn fail(d: Sealed, msg: String) -> ApiError {
    d.lease.release(Outcome::Failure).await;
    ApiError::new(ErrorKind::BadGateway, "upstream_error", msg)
}

/// The checks the gateway can make on a confidential receipt: the chosen node signed it with
/// the key the ledger holds, for the stack used, within the units reserved, leaving the request
/// in the node's custody for audits (the request hash commits to the plaintext, which only the
/// client can check).
fn check(d: &Sealed, r: &SignedReceipt) -> Result<(), ReceiptError> {
    verify::check_custody(sortition_types::Custody::Executor, r)?;
    verify::check_signed(&d.node, d.stack, d.reserved, r)
}

/// Refuses a node's sealed answer whose receipt does not check out; an over-reported one is
/// challenged (the executor keeps the request, and must hand it to the auditors).
async fn bad_receipt(
    g: &Arc<GatewayState>,
    d: Sealed,
    e: ReceiptError,
    r: &SignedReceipt,
) -> ApiError {
    tracing::error!(node = %d.node.id, error = %e, "refused a node's confidential receipt");
    challenge::challenge_over_report(g, &e, r, None).await;
    g.metrics.inc("receipts_refused_total", e.code(), 1);
    let node = d.node.id;
    fail(d, format!("node {node}: {e}; nothing was billed"))
        .await
        .with_code("receipt_invalid")
}

trait WithCode {
    fn with_code(self, code: &'static str) -> Self;
}
impl WithCode for ApiError {
    fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

impl Sealed {
    /// Who this request is billed to. Only ciphertext passed through here: bills keep no
    /// payload for auditors (the executor keeps the request).
    fn account(&self) -> crate::settle::Account<'_> {
        self.lease.account(&self.key, &self.model)
    }

    /// The bill of an answer with a checked receipt.
    fn receipted(&self, receipt: &SignedReceipt) -> crate::store::Bill {
        let json = serde_json::to_string(receipt).ok();
        self.account().receipted(receipt, json, UsageStatus::Ok)
    }

    /// Bills an answer with a checked receipt, settling the hold, and ends the lease with
    /// `outcome`; an error means the answer must be withheld (the lease returned its units).
    async fn bill(
        mut self,
        g: &GatewayState,
        receipt: &SignedReceipt,
        outcome: Outcome,
    ) -> Result<Amount, ApiError> {
        let bill = self.receipted(receipt);
        let recorded = crate::settle::record(g, &mut self.hold, &[bill]).await;
        match recorded {
            Ok(_) => self.lease.billed(outcome).await,
            Err(_) => self.lease.release(outcome).await,
        }
        recorded
    }
}

async fn whole(
    g: &Arc<GatewayState>,
    d: Sealed,
    resp: reqwest::Response,
) -> Result<Response, ApiError> {
    let bytes = match tokio::time::timeout(g.config.upstream_timeout, resp.bytes()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(fail(d, format!("reading the node's answer: {e}")).await),
        Err(_) => return Err(fail(d, "node timed out".into()).await),
    };
    let mut answer: SealedCompletion = match serde_json::from_slice(&bytes) {
        Ok(a) => a,
        Err(e) => {
            return Err(fail(d, format!("node sent a malformed sealed answer: {e}")).await);
        }
    };
    if let Err(e) = check(&d, &answer.sortition.receipt) {
        return Err(bad_receipt(g, d, e, &answer.sortition.receipt).await);
    }
    let ttft = d.started.elapsed();
    let node = d.node.id;
    // Billed before the answer leaves: if that cannot be recorded the client gets the error
    // (503 on a storage fault), not an unpaid answer.
    d.bill(
        g,
        &answer.sortition.receipt,
        Outcome::Success { ttft, itl: None },
    )
    .await?;
    answer.sortition.verified_by_gateway = Some(true);
    let mut r = Json(answer).into_response();
    if let Ok(v) = HeaderValue::from_str(&node.to_string()) {
        r.headers_mut().insert(NODE_HEADER, v);
    }
    Ok(r)
}

/// Relays the sealed SSE stream unopened, checking the receipt in its clear final event.
fn relay(
    g: Arc<GatewayState>,
    d: Sealed,
    resp: reqwest::Response,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    crate::relay::channel_sse(|tx| drive(g, d, resp, tx))
}

async fn drive(g: Arc<GatewayState>, d: Sealed, resp: reqwest::Response, tx: mpsc::Sender<String>) {
    let mut events = resp.bytes_stream().eventsource();
    let mut chunks: u64 = 0;
    let mut ttft = None;
    let mut receipt = None;
    let mut client_gone = false;
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(node = %d.node.id, error = %e, "sealed stream from node broke");
                break;
            }
        };
        if ev.data == "[DONE]" {
            break;
        }
        ttft.get_or_insert_with(|| d.started.elapsed());
        let data = match serde_json::from_str::<StreamItem>(&ev.data) {
            Ok(StreamItem::Receipt { sortition }) => match check(&d, &sortition.receipt) {
                Ok(()) => {
                    let out = StreamItem::Receipt {
                        sortition: ReceiptExt {
                            verified_by_gateway: Some(true),
                            ..sortition
                        },
                    };
                    receipt = Some(sortition_receipt(&out));
                    serde_json::to_string(&out).unwrap_or_default()
                }
                Err(e) => {
                    let err = bad_receipt(&g, d, e, &sortition.receipt).await;
                    let _ = tx
                        .send(serde_json::to_string(&err.body()).unwrap_or_default())
                        .await;
                    let _ = tx.send("[DONE]".into()).await;
                    return;
                }
            },
            Ok(StreamItem::Sealed { .. }) => {
                chunks += 1;
                ev.data
            }
            Ok(StreamItem::Error { .. }) | Err(_) => ev.data,
        };
        if tx.send(data).await.is_err() {
            client_gone = true;
            break;
        }
    }
    drop(events);
    match receipt.flatten() {
        Some(r) => {
            let _ = tx.send("[DONE]".into()).await;
            // Delivered already: settled now, or once the store can (the hold pays meanwhile).
            let bill = d.receipted(&r);
            let Sealed { lease, hold, .. } = d;
            crate::settle::record_delivered(&g, hold, vec![bill]).await;
            lease
                .billed(Outcome::Success {
                    ttft: ttft.unwrap_or_default(),
                    itl: None,
                })
                .await;
        }
        None => {
            // No receipt: the node failed or the client left. Bill only the chunks delivered,
            // one unit each, as for plain streams.
            let (status, outcome) = crate::relay::end_interrupted(
                &tx,
                client_gone,
                "the node's sealed stream ended before its receipt",
            )
            .await;
            let bill = d.account().unreceipted(chunks, status, Hash32::default());
            let Sealed { lease, hold, .. } = d;
            crate::settle::record_delivered(&g, hold, vec![bill]).await;
            lease.billed(outcome).await;
        }
    }
}

fn sortition_receipt(item: &StreamItem) -> Option<SignedReceipt> {
    match item {
        StreamItem::Receipt { sortition } => Some(sortition.receipt.clone()),
        _ => None,
    }
}
