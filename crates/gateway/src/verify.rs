//! Checking a node's receipt before the gateway vouches for or bills an answer: the node's
//! ledger key, the stack and units of the dispatch, the exact request sent and the exact answer
//! delivered.

use sortition_api::delivered::DeliveredError;
use sortition_types::{Custody, Hash32, NodeId, SignedReceipt, StackId, sha256};

use crate::proxy::Lease;
use crate::router::{NodeView, Outcome};

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
