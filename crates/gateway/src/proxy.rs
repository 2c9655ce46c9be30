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
use sortition_api::delivered::DeliveredError;
use sortition_api::{ApiError, ErrorKind, unix_now_ms};
use sortition_types::auth::{AUTH_HEADER, REQUEST_DOMAIN};
use sortition_types::{
    Amount, Custody, Hash32, ModelId, NodeId, RequestAuth, SignedReceipt, StackId, sha256,
};

use crate::directory::{cost, unit_price};
use crate::router::{Constraints, NodeView, Outcome};
use crate::state::GatewayState;
use crate::store::{Bill, CreditHold, StackRecord, UsageStatus};

/// Attempts per request before giving up (each on a different node).
pub const MAX_ATTEMPTS: usize = 3;

/// Refusals of a stack the node says is closed, per request, on top of [`MAX_ATTEMPTS`]. Such a
/// refusal is not the node's failure: it claimed the stack (which closes it on the ledger)
/// before this gateway saw the claim. Each one closes the stack in our books, so the next try
/// buys or picks another; the bound only keeps a confused node from looping us.
pub const MAX_STALE_STACKS: usize = 4;

/// What a request holds while a node serves it: the node, the stack and the units reserved on
/// it, and when it was sent. Whoever holds it reports the node's outcome to the router and
/// settles or releases the units.
pub struct Lease {
    pub node: NodeView,
    pub stack: StackId,
    pub reserved: u64,
    pub started: Instant,
}

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

impl Lease {
    /// The account that `key`'s request for `model` on this dispatch is billed to.
    pub fn account<'a>(
        &'a self,
        key: &'a crate::store::AuthedKey,
        model: &'a ModelId,
    ) -> Account<'a> {
        Account {
            key,
            model,
            node: &self.node,
            stack: self.stack,
            reserved: self.reserved,
        }
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
    let (mut failures, mut stale) = (0, 0);
    while failures < MAX_ATTEMPTS && stale <= MAX_STALE_STACKS {
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
        let stack = match hold_stack(g, &node, model, units_needed).await {
            Ok(s) => s,
            Err(e) => {
                g.finish(node.id, Outcome::Failure).await;
                failures += 1;
                last_err = Some(e);
                continue;
            }
        };
        let started = Instant::now();
        match send(g, &node, path, body, stack.stack_id).await {
            Ok(resp) if resp.status().is_server_error() => {
                tracing::warn!(node = %node.id, status = %resp.status(), "node failed; trying another");
                release(g, stack.stack_id, units_needed).await;
                g.finish(node.id, Outcome::Failure).await;
                failures += 1;
                last_err = Some(upstream_error(resp).await);
            }
            Ok(resp) if resp.status() == StatusCode::PAYMENT_REQUIRED => {
                // The node thinks the stack is spent or claimed: our books disagree; stop using
                // it and try the same node again with another stack.
                tracing::warn!(node = %node.id, stack = %stack.stack_id, "node refused stack; closing it");
                release(g, stack.stack_id, units_needed).await;
                let _ = g.store.close_stack(stack.stack_id).await;
                g.finish(node.id, Outcome::Cancelled).await;
                tried.pop();
                stale += 1;
                last_err = Some(upstream_error(resp).await);
            }
            Ok(resp) => {
                let lease = Lease {
                    node,
                    stack: stack.stack_id,
                    reserved: units_needed,
                    started,
                };
                return Ok(Dispatched {
                    lease,
                    response: resp,
                });
            }
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "node unreachable; trying another");
                release(g, stack.stack_id, units_needed).await;
                g.finish(node.id, Outcome::Failure).await;
                failures += 1;
                last_err = Some(ApiError::new(
                    ErrorKind::BadGateway,
                    "node_unreachable",
                    format!("node {} failed: {e}", node.id),
                ));
            }
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

pub async fn release(g: &GatewayState, stack: StackId, units: u64) {
    if let Err(e) = g.store.release(stack, units).await {
        tracing::error!(%stack, error = %e, "could not release stack units");
    }
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

/// Why a receipt was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("the response carries no receipt")]
    Missing,
    #[error("receipt signature does not match the key the ledger holds for node {0}")]
    BadSignature(NodeId),
    #[error("receipt is for {got}, not the chosen node {want}")]
    WrongNode { want: NodeId, got: NodeId },
    #[error("receipt does not commit to the request that was sent")]
    WrongRequest,
    #[error("receipt does not commit to the answer the node delivered")]
    WrongResponse,
    #[error("the answer cannot be checked against its receipt: {0}")]
    Uncovered(#[from] DeliveredError),
    #[error("receipt is for {got}, not the stack used ({want})")]
    WrongStack { want: StackId, got: StackId },
    #[error("receipt claims {claimed} units; at most {reserved} were reserved")]
    OverReported { claimed: u64, reserved: u64 },
    #[error("receipt leaves the request to the {got} for audits; this request needs the {want}")]
    WrongCustody { want: Custody, got: Custody },
}

impl ReceiptError {
    /// A short label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ReceiptError::Missing => "missing",
            ReceiptError::BadSignature(_) => "bad_signature",
            ReceiptError::WrongNode { .. } => "wrong_node",
            ReceiptError::WrongRequest => "wrong_request",
            ReceiptError::WrongResponse => "wrong_response",
            ReceiptError::Uncovered(_) => "uncovered",
            ReceiptError::WrongStack { .. } => "wrong_stack",
            ReceiptError::OverReported { .. } => "over_reported",
            ReceiptError::WrongCustody { .. } => "wrong_custody",
        }
    }

    /// Whether the node delivered something its own valid, signed receipt contradicts (as
    /// opposed to an answer without a usable receipt, or a receipt the ledger's audits will
    /// judge: an over-report is challenged on the ledger and slashed there).
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            ReceiptError::WrongResponse | ReceiptError::Uncovered(_)
        )
    }

    /// How the router hears of it.
    pub fn outcome(&self) -> Outcome {
        if self.is_misbehaviour() {
            Outcome::Misbehaved
        } else {
            Outcome::Failure
        }
    }
}

/// Checks a receipt against the chosen node's ledger key, the request actually sent and the
/// answer actually delivered (`delivered`: its response hash, as computed by
/// [`sortition_api::delivered`]). Only a receipt that passes all of it is vouched for and
/// billed.
pub fn check_receipt(
    d: &Lease,
    body: &[u8],
    delivered: Result<Hash32, DeliveredError>,
    r: &SignedReceipt,
) -> Result<(), ReceiptError> {
    if r.receipt.request_hash != sha256(body) {
        return Err(ReceiptError::WrongRequest);
    }
    check_custody(Custody::Gateway, r)?;
    check_signed(&d.node, d.stack, d.reserved, r)?;
    check_delivered(delivered, r)
}

/// Checks that a receipt commits to exactly what was delivered to the client.
pub fn check_delivered(
    delivered: Result<Hash32, DeliveredError>,
    r: &SignedReceipt,
) -> Result<(), ReceiptError> {
    if delivered? != r.receipt.response_hash {
        return Err(ReceiptError::WrongResponse);
    }
    Ok(())
}

/// A plain request is kept by the gateway for its audits, a confidential one by its executor
/// (the ledger slashes an executor that withholds what it keeps).
pub fn check_custody(want: Custody, r: &SignedReceipt) -> Result<(), ReceiptError> {
    match r.receipt.custody {
        got if got == want => Ok(()),
        got => Err(ReceiptError::WrongCustody { want, got }),
    }
}

/// Checks what a receipt says about its dispatch: `node` signed it with the key the ledger
/// holds, for `stack`, within the `reserved` units.
pub fn check_signed(
    node: &NodeView,
    stack: StackId,
    reserved: u64,
    r: &SignedReceipt,
) -> Result<(), ReceiptError> {
    if r.receipt.node != node.id {
        return Err(ReceiptError::WrongNode {
            want: node.id,
            got: r.receipt.node,
        });
    }
    r.verify(&node.operator)
        .map_err(|_| ReceiptError::BadSignature(node.id))?;
    if r.receipt.stack != stack {
        return Err(ReceiptError::WrongStack {
            want: stack,
            got: r.receipt.stack,
        });
    }
    if r.receipt.units().0 > reserved {
        return Err(ReceiptError::OverReported {
            claimed: r.receipt.units().0,
            reserved,
        });
    }
    Ok(())
}

/// The generated answer behind a receipt, kept with the payload so that auditors can score
/// it instead of regenerating it. Its hash is checked against the receipt by the auditor.
pub use sortition_api::audit::Answer;

/// What a node returned for a request, as billed and kept for the auditors: the receipt it
/// signed, that receipt's JSON text (written once, for the usage row, the payload and the
/// response's receipt header), and the generated answer when there is one.
pub struct Served<'a> {
    pub receipt: &'a SignedReceipt,
    pub receipt_json: Option<String>,
    pub answer: Option<&'a Answer>,
}

impl<'a> Served<'a> {
    pub fn new(receipt: &'a SignedReceipt, answer: Option<&'a Answer>) -> Self {
        Served {
            receipt,
            receipt_json: serde_json::to_string(receipt).ok(),
            answer,
        }
    }
}

/// Who pays for a request and who served it: what every bill of a request names.
pub struct Account<'a> {
    pub key: &'a crate::store::AuthedKey,
    pub model: &'a ModelId,
    pub node: &'a NodeView,
    pub stack: StackId,
    pub reserved: u64,
}

impl Account<'_> {
    /// A bill for `units` of `status`, naming the request; no receipt, no payload yet.
    fn bill(&self, units: u64, status: UsageStatus, request_hash: Hash32) -> Bill {
        Bill {
            stack: self.stack,
            reserved: self.reserved,
            used: units,
            price: cost(units, unit_price(self.node)),
            usage: crate::store::NewUsage {
                key_id: self.key.key_id,
                user_id: self.key.user_id,
                model: self.model.clone(),
                node_id: self.node.id,
                stack_id: Some(self.stack),
                prompt_tokens: 0,
                completion_tokens: units,
                cost: Amount::ZERO,
                status,
                receipt_json: None,
                request_hash,
            },
            payload: None,
        }
    }

    /// A bill for an answer with no receipt (a stream that ended early): the delivered
    /// chunks, one unit each (at most the reservation), as completion tokens.
    pub fn unreceipted(&self, units: u64, status: UsageStatus, request_hash: Hash32) -> Bill {
        self.bill(units.min(self.reserved), status, request_hash)
    }

    /// A bill for an answer with a checked receipt (its units were checked against the
    /// reservation): its units, its token counts, the receipt itself in the usage row.
    pub fn receipted(
        &self,
        receipt: &SignedReceipt,
        receipt_json: Option<String>,
        status: UsageStatus,
    ) -> Bill {
        let r = &receipt.receipt;
        let mut b = self.bill(r.units().0, status, r.request_hash);
        b.usage.prompt_tokens = r.input_tokens;
        b.usage.completion_tokens = r.output_tokens;
        b.usage.receipt_json = receipt_json;
        b
    }
}

/// Records `bills` (stack settlements, the charge, usage rows, payloads) in one transaction
/// that settles the request's credit `hold` to their total. Returns what was charged, or the
/// error for the client: the answer must then be withheld (a storage fault is a 503 with
/// `Retry-After`; the hold stays open and is released when the guard is dropped). Never
/// serves an answer at cost 0 because its charge failed: there is no such outcome.
pub async fn record(
    g: &GatewayState,
    hold: &mut CreditHold,
    bills: &[Bill],
) -> Result<Amount, ApiError> {
    match hold.settle(bills).await {
        Ok(billed) => {
            if let Some(e) = billed.settle_error {
                tracing::error!(error = %e, "stack settlement failed");
            }
            Ok(billed.charged)
        }
        Err(e) => {
            // Database faults are logged by the store, once and then at a bounded rate.
            if !matches!(e, crate::store::StoreError::Db(_)) {
                tracing::error!(hold = %hold.id(), error = %e, "could not bill a request; its answer is withheld");
            }
            g.metrics.inc("billing_failed_total", "", 1);
            Err(e.into())
        }
    }
}

/// [`record`] for an answer already delivered (a stream): if the database cannot take the
/// bill now, it is settled in the background once it can. Meanwhile the request's worst-case
/// cost stays taken from the user's credits (the hold made before the node was asked), so a
/// delivered answer is never free. Returns what was charged now (zero while pending).
pub async fn record_delivered(g: &GatewayState, mut hold: CreditHold, bills: Vec<Bill>) -> Amount {
    match record(g, &mut hold, &bills).await {
        Ok(charged) => charged,
        Err(_) => {
            hold.settle_in_background(bills);
            Amount::ZERO
        }
    }
}

/// The bill of an answer with a checked receipt: the stack's units, the charge, the usage row,
/// and the payload (with the answer, when there is one) kept for auditors.
pub fn receipted_bill(
    g: &GatewayState,
    d: &Lease,
    key: &crate::store::AuthedKey,
    model: &ModelId,
    body: &Bytes,
    served: &Served<'_>,
) -> Bill {
    let account = d.account(key, model);
    let mut b = account.receipted(served.receipt, served.receipt_json.clone(), UsageStatus::Ok);
    b.payload = Some(payload(g, d, body, served));
    b
}

/// After a verified receipt: settle the stack's units, charge the user (settling `hold`),
/// record the usage and keep the payload for auditors, in one transaction that is committed
/// before the answer is returned; an error means the answer must not be returned.
pub async fn bill(
    g: &GatewayState,
    d: &Lease,
    key: &crate::store::AuthedKey,
    model: &ModelId,
    body: &Bytes,
    served: &Served<'_>,
    hold: &mut CreditHold,
) -> Result<Amount, ApiError> {
    record(g, hold, &[receipted_bill(g, d, key, model, body, served)]).await
}

fn payload(
    g: &GatewayState,
    d: &Lease,
    body: &Bytes,
    served: &Served<'_>,
) -> crate::store::Payload {
    crate::store::Payload {
        request_hash: served.receipt.receipt.request_hash,
        stack_id: d.stack,
        receipt_seq: served.receipt.receipt.sequence,
        body: body.to_vec(),
        receipt_json: served.receipt_json.clone(),
        answer: served.answer.and_then(|a| serde_json::to_vec(a).ok()),
        expires_at_ms: (unix_now_ms() + g.config.payload_retention.as_millis() as u64) as i64,
    }
}

/// Keeps a request (and its answer) behind a receipt the node signed, so that auditors can
/// be given it if the ledger samples the receipt.
pub async fn keep_payload(g: &GatewayState, d: &Lease, body: &Bytes, served: &Served<'_>) {
    match g.store.put_payload(&payload(g, d, body, served)).await {
        // Database faults are logged by the store, once and then at a bounded rate.
        Err(crate::store::StoreError::Db(_)) => {
            g.metrics.inc("payload_custody_failed_total", "", 1);
        }
        Err(e) => {
            tracing::error!(error = %e, "payload custody failed; this request cannot be audited");
        }
        Ok(()) => {}
    }
}

/// Challenges `receipts` on the ledger in the background (`ChallengeReceipt`, the gateway
/// posts the bond): peers of each node's class audit the receipt at once, whatever the
/// sampling rate, and a lost dispute slashes the node and refunds its stack. The requests
/// must be in custody (for plain requests, [`keep_payload`]) so that the auditors get them.
/// `why` labels the metric and the log.
pub fn challenge(g: &Arc<GatewayState>, receipts: Vec<SignedReceipt>, why: &'static str) {
    if receipts.is_empty() {
        return;
    }
    let g = g.clone();
    tokio::spawn(async move {
        for r in receipts {
            let (node, stack, seq) = (r.receipt.node, r.receipt.stack, r.receipt.sequence);
            match g.ledger.challenge_receipt(r).await {
                Ok(audit) => {
                    g.metrics.inc("receipt_challenges_total", why, 1);
                    tracing::info!(%node, %stack, seq, %audit, why, "challenged a node's receipt");
                }
                Err(e) => {
                    g.metrics.inc("receipt_challenges_failed_total", why, 1);
                    tracing::error!(%node, %stack, seq, why, error = %e, "could not challenge a receipt");
                }
            }
        }
    });
}

/// Disowns `r` on the ledger in the background (`DisownReceipt`): its node signed it for
/// this request on our stack but delivered something it does not commit to (or that cannot be
/// checked against it), and will still claim it. The ledger then burns its units at
/// settlement instead of paying the node; the gateway pays for them anyway, so it gains
/// nothing by disowning.
pub fn disown(g: &Arc<GatewayState>, r: SignedReceipt) {
    let g = g.clone();
    tokio::spawn(async move {
        let (node, stack, seq) = (r.receipt.node, r.receipt.stack, r.receipt.sequence);
        match g.ledger.disown_receipt(r).await {
            Ok(()) => {
                g.metrics.inc("receipts_disowned_total", "", 1);
                tracing::info!(%node, %stack, seq, "disowned a node's receipt");
            }
            Err(e) => {
                g.metrics.inc("receipts_disown_failed_total", "", 1);
                tracing::error!(%node, %stack, seq, error = %e, "could not disown a receipt");
            }
        }
    });
}

/// Disowns `r` ([`disown`]) when it was refused because the node delivered something else
/// than it commits to (`WrongResponse`, `Uncovered`): by then its signature, node and stack
/// were checked, so it is the node's signed word about this request on our stack.
pub fn disown_misdelivered(g: &Arc<GatewayState>, e: &ReceiptError, r: &SignedReceipt) {
    if matches!(e, ReceiptError::WrongResponse | ReceiptError::Uncovered(_)) {
        disown(g, r.clone());
    }
}

/// A receipt refused because it claims more units than the request could use is still one
/// the node signed for this request on our stack, and the node will claim it. Rather than
/// leave that to the sampling rate, the gateway keeps the request (plain requests; a
/// confidential one is in the executor's custody) and challenges the receipt: the auditors
/// re-execute it, count the tokens and, finding the usage wrong, open the dispute that slashes
/// the node and refunds the stack. Other refusals are not the node's signed word about this
/// request (another request, node or stack, a bad signature) and cannot be challenged.
/// `plain` is the dispatch and body of a plain request, kept here for the auditors.
pub async fn challenge_over_report(
    g: &Arc<GatewayState>,
    e: &ReceiptError,
    r: &SignedReceipt,
    plain: Option<(&Lease, &Bytes)>,
) {
    if !matches!(e, ReceiptError::OverReported { .. }) {
        return;
    }
    if let Some((d, body)) = plain {
        keep_payload(g, d, body, &Served::new(r, None)).await;
    }
    challenge(g, vec![r.clone()], "over_reported");
}

/// Time since dispatch, for the router's latency statistics.
pub fn elapsed(d: &Lease) -> Duration {
    d.started.elapsed()
}
