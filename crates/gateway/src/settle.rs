//! Settling a served request: the bill (stack units, the charge against the request's credit
//! hold, the usage row) and the payload kept for auditors, committed in one transaction before
//! the answer is returned.

use axum::body::Bytes;
use sortition_api::{ApiError, unix_now_ms};
use sortition_types::{Amount, Hash32, ModelId, SignedReceipt, StackId};

use crate::directory::{cost, unit_price};
use crate::proxy::Lease;
use crate::router::NodeView;
use crate::state::GatewayState;
use crate::store::{Bill, CreditHold, UsageStatus};

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
/// and the payload (with the answer, when there is one) kept for auditors. Recorded with
/// [`record`] before the answer is returned (an error means it must not be returned).
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
