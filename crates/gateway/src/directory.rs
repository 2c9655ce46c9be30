//! The seam between the gateway and the ledger: the node registry (prices, collateral, class
//! and the key each node signs receipts with) and stack purchases. Everything the gateway
//! trusts about a node comes from here, never from the node itself. Also the questions asked
//! of the router's node set ([`RouterQueries`]).

use std::collections::HashMap;

use futures::future::BoxFuture;
use sortition_types::{Amount, AuditId, ModelId, NodeId, SignedReceipt, StackId};

use crate::router::NodeView;

/// A stack bought on the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoughtStack {
    pub id: StackId,
    pub units: u64,
    pub expires_at_ms: u64,
}

/// What the gateway needs from the ledger. The production implementation wraps the ledger
/// client; the seam keeps the proxy testable and the layers replaceable.
pub trait LedgerPort: Send + Sync + 'static {
    /// Every node that is active (registered, not paused, not leaving). A node's
    /// `operator` key is also the key its receipts must be signed with.
    fn active_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeView>, String>>;
    /// The synchronous quorum each model's policy demands (models without one are absent).
    fn model_quorums(&self) -> BoxFuture<'_, Result<HashMap<ModelId, u8>, String>> {
        Box::pin(async { Ok(HashMap::new()) })
    }
    /// Buys a stack of `units` of `model` from `node`, owned by the gateway's account.
    fn buy_stack(
        &self,
        node: NodeId,
        model: ModelId,
        units: u64,
        max_price_per_m: Amount,
    ) -> BoxFuture<'_, Result<BoughtStack, String>>;
    /// Has one receipt of a stack the gateway owns audited now (the ledger's
    /// `ChallengeReceipt`); returns the audit opened. The gateway pays the bond.
    fn challenge_receipt(&self, receipt: SignedReceipt) -> BoxFuture<'_, Result<AuditId, String>>;
    /// Disowns one receipt of a stack the gateway owns (the ledger's `DisownReceipt`): its
    /// node delivered something else than the receipt commits to, so its units are burned at
    /// settlement instead of paid.
    fn disown_receipt(&self, receipt: SignedReceipt) -> BoxFuture<'_, Result<(), String>> {
        let _ = receipt;
        Box::pin(async { Err("not supported by this ledger port".into()) })
    }
}

/// Price per million units of a stack bought from `n`, by the ledger's rule.
pub fn unit_price(n: &NodeView) -> Amount {
    sortition_ledger::unit_price_per_m(n.price_in, n.price_out)
}

/// Cost of `units` at `price_per_m`, by the ledger's rule (rounded up to the next
/// micro-unit); a cost beyond `u64` (which the ledger refuses) is the largest amount, which
/// no hold can cover.
pub fn cost(units: u64, price_per_m: Amount) -> Amount {
    sortition_ledger::stack_cost(sortition_types::Units(units), price_per_m)
        .unwrap_or(Amount(u64::MAX))
}

/// Read-only questions about the router's node set, answered through its public API.
pub trait RouterQueries {
    /// The highest stack price among nodes serving `model`, or `None` if none does.
    fn worst_price(&self, model: &ModelId) -> Option<Amount>;
    /// Every model some node serves, sorted.
    fn models(&self) -> Vec<ModelId>;
}

impl RouterQueries for crate::router::Router {
    fn worst_price(&self, model: &ModelId) -> Option<Amount> {
        self.in_flight()
            .keys()
            .filter_map(|id| self.node(*id))
            .filter(|n| n.models.contains(model))
            .map(unit_price)
            .max()
    }

    fn models(&self) -> Vec<ModelId> {
        let mut v: Vec<ModelId> = self
            .in_flight()
            .keys()
            .filter_map(|id| self.node(*id))
            .flat_map(|n| n.models.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up() {
        assert_eq!(cost(1, Amount(1)), Amount(1));
        assert_eq!(cost(1_000_000, Amount(7)), Amount(7));
        assert_eq!(cost(0, Amount(7)), Amount(0));
    }
}
