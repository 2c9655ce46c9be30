//! The node's use of the ledger: stack lookups for authentication, registration, and claims.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use sortition_ledger::{Node, Offer, SealingKey, Stack, StackStatus, TxKind};
use sortition_ledger_service::{ClientError, LedgerClient};
use sortition_types::{Amount, Hash32, Keypair, NodeClass, NodeId, StackId};

use crate::accounts::StackInfo;
use crate::auth::StackSource;

/// Stack lookups against the ledger, cached. Owner, node, model, units and expiry never change;
/// only the status does, and a closed stack never reopens, so only open stacks are re-read.
pub struct LedgerStacks {
    client: LedgerClient,
    cache: Mutex<HashMap<StackId, StackInfo>>,
}

impl LedgerStacks {
    pub fn new(client: LedgerClient) -> Self {
        LedgerStacks {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Marks a stack closed locally (e.g. once this node claimed it).
    pub fn close(&self, id: StackId) {
        if let Some(s) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            s.open = false;
        }
    }

    pub fn cached(&self, id: StackId) -> Option<StackInfo> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}

/// The node's view of a ledger stack.
pub fn stack_info(s: &Stack) -> StackInfo {
    StackInfo {
        id: s.id,
        owner: s.owner,
        node: s.node,
        model: s.model.clone(),
        units: s.units.0,
        expires_at_ms: s.expires_at_ms,
        open: matches!(s.status, StackStatus::Open),
    }
}

impl StackSource for LedgerStacks {
    fn stack(
        &self,
        id: StackId,
    ) -> Pin<Box<dyn Future<Output = Result<Option<StackInfo>, String>> + Send + '_>> {
        Box::pin(async move {
            if let Some(s) = self.cached(id) {
                return Ok(Some(s));
            }
            match self.client.stack(id).await {
                Ok(s) => {
                    let info = stack_info(&s);
                    self.cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, info.clone());
                    Ok(Some(info))
                }
                Err(ClientError::Api { status: 404, .. }) => Ok(None),
                Err(e) => Err(format!("ledger unavailable: {e}")),
            }
        })
    }
}

/// What the node registers.
pub struct Registration {
    pub endpoint: String,
    pub class: NodeClass,
    pub offers: Vec<Offer>,
    pub capacity: u32,
    /// `None`: the highest minimum collateral among the offered models.
    pub collateral: Option<Amount>,
    pub confidential_key: [u8; 32],
    pub attestation: Vec<u8>,
}

/// Registers the node, or updates its registration if the key is already known. Returns the
/// node's id.
pub async fn register(
    client: &LedgerClient,
    key: &Keypair,
    reg: Registration,
) -> Result<NodeId, String> {
    let existing: Option<Node> = client
        .nodes()
        .await
        .map_err(|e| format!("reading nodes: {e}"))?
        .into_iter()
        .find(|n| n.operator == key.public());
    if let Some(n) = existing {
        client
            .send(
                key,
                TxKind::UpdateNode {
                    endpoint: Some(reg.endpoint),
                    offers: Some(reg.offers),
                    capacity: Some(reg.capacity),
                    add_collateral: Amount::ZERO,
                },
            )
            .await
            .map_err(|e| format!("updating registration: {e}"))?;
        if matches!(n.status, sortition_ledger::NodeStatus::Paused) {
            client
                .send(key, TxKind::ResumeNode)
                .await
                .map_err(|e| format!("resuming: {e}"))?;
        }
        return Ok(n.id);
    }
    let collateral = match reg.collateral {
        Some(c) => c,
        None => {
            let models = client
                .models()
                .await
                .map_err(|e| format!("reading models: {e}"))?;
            reg.offers
                .iter()
                .filter_map(|o| {
                    models
                        .iter()
                        .find(|m| m.spec.id == o.model)
                        .map(|m| m.min_collateral)
                })
                .max()
                .unwrap_or(Amount::ZERO)
        }
    };
    let result = client
        .send(
            key,
            TxKind::RegisterNode {
                endpoint: reg.endpoint,
                confidential_key: SealingKey(Hash32(reg.confidential_key)),
                attestation: reg.attestation,
                class: reg.class,
                offers: reg.offers,
                capacity: reg.capacity,
                collateral,
            },
        )
        .await
        .map_err(|e| format!("registering: {e}"))?;
    result
        .events
        .iter()
        .find_map(|e| match e {
            sortition_ledger::Event::NodeRegistered { node, .. } => Some(*node),
            _ => None,
        })
        .ok_or_else(|| "registration produced no NodeRegistered event".to_string())
}
