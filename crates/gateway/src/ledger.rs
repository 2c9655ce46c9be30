//! [`LedgerPort`] over the ledger's HTTP client.

use futures::future::BoxFuture;
use sortition_api::unix_now_ms;
use sortition_ledger::{Event, NodeStatus, TxKind};
use sortition_ledger_client::LedgerClient;
use sortition_types::{Amount, AuditId, Keypair, ModelId, NodeId, SignedReceipt, Units};

use crate::directory::{BoughtStack, LedgerPort};
use crate::router::NodeView;

/// How long stacks the gateway buys stay valid.
pub const STACK_LIFETIME_MS: u64 = 60 * 60 * 1000;

/// The ledger as the gateway's account sees it.
pub struct HttpLedger {
    pub client: LedgerClient,
    /// The gateway's account: pays for and owns the stacks.
    pub account: Keypair,
}

impl LedgerPort for HttpLedger {
    fn active_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeView>, String>> {
        Box::pin(async move {
            let nodes = self.client.nodes().await.map_err(|e| e.to_string())?;
            let slashes = self.client.slashes().await.map_err(|e| e.to_string())?;
            Ok(nodes
                .into_iter()
                .filter(|n| matches!(n.status, NodeStatus::Active))
                .map(|n| {
                    let slashed = slashes.iter().filter(|s| s.node == n.id).count() as u32;
                    NodeView {
                        id: n.id,
                        url: n.endpoint.clone(),
                        operator: n.operator,
                        price_in: n
                            .offers
                            .iter()
                            .map(|o| o.price_per_m_input)
                            .max()
                            .unwrap_or_default(),
                        price_out: n
                            .offers
                            .iter()
                            .map(|o| o.price_per_m_output)
                            .max()
                            .unwrap_or_default(),
                        collateral: n.collateral,
                        class: n.class_fingerprint,
                        confidential: !n.attestation.is_empty(),
                        reputation: 1000u16.saturating_sub((slashed as u16).saturating_mul(200)),
                        slashes: slashed,
                        models: n.offers.iter().map(|o| o.model.clone()).collect(),
                    }
                })
                .collect())
        })
    }

    fn model_quorums(
        &self,
    ) -> BoxFuture<'_, Result<std::collections::HashMap<ModelId, u8>, String>> {
        Box::pin(async move {
            let models = self.client.models().await.map_err(|e| e.to_string())?;
            Ok(models
                .into_iter()
                .filter_map(|m| m.spec.policy.quorum.map(|q| (m.spec.id, q)))
                .collect())
        })
    }

    fn buy_stack(
        &self,
        node: NodeId,
        model: ModelId,
        units: u64,
        max_price_per_m: Amount,
    ) -> BoxFuture<'_, Result<BoughtStack, String>> {
        Box::pin(async move {
            let expires_at_ms = unix_now_ms() + STACK_LIFETIME_MS;
            let kind = TxKind::BuyStack {
                model,
                node: Some(node),
                max_price_per_m,
                units: Units(units),
                expires_at_ms,
            };
            let r = self
                .client
                .send(&self.account, kind)
                .await
                .map_err(|e| e.to_string())?;
            r.events
                .iter()
                .find_map(|e| match e {
                    Event::StackBought { stack, units, .. } => Some(BoughtStack {
                        id: *stack,
                        units: units.0,
                        expires_at_ms,
                    }),
                    _ => None,
                })
                .ok_or_else(|| "stack purchase produced no StackBought event".to_string())
        })
    }

    fn challenge_receipt(&self, receipt: SignedReceipt) -> BoxFuture<'_, Result<AuditId, String>> {
        Box::pin(async move {
            let r = self
                .client
                .send(&self.account, TxKind::ChallengeReceipt { receipt })
                .await
                .map_err(|e| e.to_string())?;
            r.events
                .iter()
                .find_map(|e| match e {
                    Event::AuditOpened { audit, .. } => Some(*audit),
                    _ => None,
                })
                .ok_or_else(|| "challenge produced no AuditOpened event".to_string())
        })
    }

    fn disown_receipt(&self, receipt: SignedReceipt) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.client
                .send(&self.account, TxKind::DisownReceipt { receipt })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}
