//! Acting on a receipt the node signed but that did not check out: challenging it on the
//! ledger (auditors re-execute it at once) or disowning it (its units are burnt, not paid).

use std::sync::Arc;

use axum::body::Bytes;
use sortition_types::SignedReceipt;

use crate::proxy::Lease;
use crate::settle::{Served, keep_payload};
use crate::state::GatewayState;
use crate::verify::ReceiptError;

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
