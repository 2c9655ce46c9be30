//! The node's use of the ledger: stack lookups for authentication, registration, and claims.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use sortition_ledger::{Offer, SealingKey, StackStatus, TxKind};
use sortition_ledger_client::records::{Node, Stack};
use sortition_ledger_client::{ClientError, LedgerClient};
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
/// node's id. `store` holds the receipts the node signed (none for a test fixture): none may
/// be left unclaimed when it takes a new class.
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
        // A new engine, model file or kernel set since the last start. Receipts signed
        // under the old class must be claimed, audited and settled under it, defended by a node
        // that can still compute it: the previous version. Until then this one does not start.
        let class_changed = n.class_fingerprint != reg.class.fingerprint();
        let upgrade = |why: String| {
            format!(
                "this node's class changed since it registered ({} -> {}: another engine \
                 version, model file, weight format or kernel set) while {why}. Run the \
                 version that signed them until its claims settle (the challenge window, plus \
                 the audits of sampled receipts), then start this one",
                n.class_fingerprint,
                reg.class.fingerprint()
            )
        };
        if class_changed && let Some(store) = store {
            let unclaimed = store.unclaimed_stacks()?;
            if !unclaimed.is_empty() {
                return Err(upgrade(format!(
                    "{} stack(s) hold receipts it signed under the old class that were never \
                     claimed",
                    unclaimed.len()
                )));
            }
        }
        let update = TxKind::UpdateNode {
            endpoint: Some(reg.endpoint),
            offers: Some(reg.offers),
            capacity: Some(reg.capacity),
            add_collateral: Amount::ZERO,
            class: class_changed.then_some(reg.class.clone()),
        };
        match client.send(key, update).await {
            Ok(_) if class_changed => tracing::warn!(
                node = %n.id,
                class = %reg.class.fingerprint(),
                "the node's class changed since it registered; the ledger took the new one"
            ),
            Ok(_) => {}
            Err(e) if e.code() == Some("class_change_while_busy") => {
                return Err(upgrade(format!("the ledger says: {e}")));
            }
            Err(e) => return Err(format!("updating registration: {e}")),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod class_change_tests {
    use super::*;
    use crate::store::NodeStore;
    use sortition_ledger::Genesis;
    use sortition_ledger_service::{LedgerServiceConfig, run_in_background};
    use sortition_types::{Custody, ModelId, Receipt, SignedReceipt, sha256};

    fn class(engine: &str) -> NodeClass {
        NodeClass {
            engine_version: engine.into(),
            model_digest: sha256(b"weights"),
            quantization: "q8_0".into(),
            device: "cpu".into(),
            kernels: "k".into(),
        }
    }

    fn registration(class: NodeClass) -> Registration {
        Registration {
            endpoint: "http://127.0.0.1:9".into(),
            class,
            offers: vec![Offer {
                model: ModelId::new("m"),
                price_per_m_input: Amount(1),
                price_per_m_output: Amount(1),
            }],
            capacity: 1,
            collateral: Some(Amount(0)),
            confidential_key: [0; 32],
            attestation: Vec::new(),
        }
    }

    /// A node started again with another engine takes the new class on the ledger, unless
    /// its store holds receipts signed under the old class that were never claimed: then it
    /// refuses to start, says why, and the ledger keeps the old class.
    #[tokio::test]
    async fn a_restart_with_a_new_class_updates_the_ledger_only_when_nothing_is_left_unclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let admin = Keypair::from_secret([1; 32]);
        let mut genesis = Genesis::devnet("devnet", admin.public());
        genesis.models.push(sortition_ledger::ModelSpec {
            id: ModelId::new("m"),
            weights_digest: sha256(b"weights"),
            tokenizer_digest: sha256(b"tokenizer"),
            policy: Default::default(),
        });
        let ledger = run_in_background(LedgerServiceConfig::new(dir.path().join("l"), genesis))
            .await
            .unwrap();
        let client = ledger.client();
        let key = Keypair::from_secret([2; 32]);
        let to = key.public();
        let faucet = TxKind::Faucet {
            to,
            amount: Amount(1_000),
        };
        client.send(&admin, faucet).await.unwrap();
        let store = NodeStore::open(&dir.path().join("node.redb")).unwrap();

        let id = register(&client, &key, Some(&store), registration(class("e1")))
            .await
            .unwrap();
        let on_ledger = |c: LedgerClient| async move { c.node(id).await.unwrap().class };
        assert_eq!(on_ledger(client.clone()).await, class("e1"));

        // A receipt of stack 0 signed under e1 and never claimed (the node crashed).
        let receipt = Receipt {
            node: id,
            stack: StackId(0),
            sequence: 0,
            model: ModelId::new("m"),
            model_digest: sha256(b"weights"),
            node_class: class("e1").fingerprint(),
            request_hash: sha256(b"request"),
            response_hash: sha256(b"response"),
            input_tokens: 3,
            output_tokens: 4,
            sampling: Default::default(),
            timestamp_ms: 1,
            custody: Custody::Gateway,
        };
        store
            .put_receipt(&SignedReceipt::sign(receipt, &key))
            .unwrap();
        let err = register(&client, &key, Some(&store), registration(class("e2")))
            .await
            .unwrap_err();
        assert!(err.contains("1 stack(s) hold receipts"), "{err}");
        assert!(err.contains("Run the version that signed them"), "{err}");
        assert_eq!(on_ledger(client.clone()).await, class("e1"));
        // The same class again is no change: it starts.
        register(&client, &key, Some(&store), registration(class("e1")))
            .await
            .unwrap();

        // Once claimed (as the previous version does at shutdown), the new class is taken.
        store
            .set_meta(&crate::store::claimed_key(StackId(0)), b"1")
            .unwrap();
        let again = register(&client, &key, Some(&store), registration(class("e2")))
            .await
            .unwrap();
        assert_eq!(again, id);
        assert_eq!(on_ledger(client.clone()).await, class("e2"));
    }
}
