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

/// How long a node that starts with a new class waits for its claims under the old class to
/// settle (a challenge window, plus audits when receipts are sampled) before giving up.
pub const CLASS_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Registers the node, or updates its registration if the key is already known. Returns the
/// node's id. `store` holds the receipts the node signed (none for a test fixture), claimed
/// before it takes a new class.
pub async fn register(
    client: &LedgerClient,
    key: &Keypair,
    store: Option<&crate::store::NodeStore>,
    reg: Registration,
) -> Result<NodeId, String> {
    let existing: Option<Node> = client
        .nodes()
        .await
        .map_err(|e| format!("reading nodes: {e}"))?
        .into_iter()
        .find(|n| n.operator == key.public());
    if let Some(n) = existing {
        // A new engine, model file or kernel set since the last start: receipts signed under
        // the old class are claimed first, and the ledger takes the new class once all of its
        // claims under the old one have settled.
        let class_changed = n.class_fingerprint != reg.class.fingerprint();
        if class_changed {
            tracing::warn!(
                node = %n.id,
                from = %n.class_fingerprint,
                to = %reg.class.fingerprint(),
                "the node's class changed since it registered: claiming what it served under the old one"
            );
            if let Some(store) = store {
                crate::run::claim_before_class_change(client, key, store).await?;
            }
        }
        let update = TxKind::UpdateNode {
            endpoint: Some(reg.endpoint),
            offers: Some(reg.offers),
            capacity: Some(reg.capacity),
            add_collateral: Amount::ZERO,
            class: class_changed.then_some(reg.class),
        };
        let deadline = std::time::Instant::now() + CLASS_CHANGE_WAIT;
        loop {
            match client.send(key, update.clone()).await {
                Ok(_) => break,
                Err(e)
                    if e.code() == Some("class_change_while_busy")
                        && std::time::Instant::now() < deadline =>
                {
                    tracing::info!(node = %n.id, reason = %e, "waiting to take the new class");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                Err(e) => return Err(format!("updating registration: {e}")),
            }
        }
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
