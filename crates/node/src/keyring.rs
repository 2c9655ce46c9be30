//! The node's confidential keys (and the custody key that seals what it keeps for audits): one per epoch, attested, published at start and rotated at
//! every `EpochTurned` event.

use sortition_api::audit::{Answer, AuditPayload, Route};
use sortition_types::SignedReceipt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

use sortition_confidential::custody::CustodyKey;
use sortition_confidential::{
    Attester, AttesterConfig, AttesterError, AttesterKind, ConfidentialKey, Policy, PolicyVerifier,
};
use sortition_ledger::{Event as LedgerEvent, SealingKey, TxKind};
use sortition_ledger_client::{ClientError, Cursor, EventHandler, LedgerClient, MemoryCursor};
use sortition_types::{Hash32, Keypair, NodeId};
use tokio::sync::watch;

use crate::error::NodeError;

/// This epoch's key and the previous one.
#[derive(Default)]
struct Keys {
    current: Option<ConfidentialKey>,
    previous: Option<ConfidentialKey>,
}

/// The node's confidential keys and the attester that vouches for them.
pub struct KeyRing {
    pub(super) node: NodeId,
    pub(super) kind: AttesterKind,
    pub(super) attester: Box<dyn Attester>,
    /// Whose evidence an auditor must carry to be sent this node's confidential requests.
    pub(super) auditors: Policy,
    keys: RwLock<Keys>,
    /// Seals the confidential requests kept for audits at rest.
    pub(super) custody: CustodyKey,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl KeyRing {
    /// `custody_key`: the file of the key requests kept for audits are sealed under (created
    /// on first use). `auditors`: whose evidence is accepted before a confidential request is
    /// re-sealed to an auditor; required for a hardware attester, the dev attester's only on a
    /// dev node otherwise (see [`KeyRing::auditor_verifier`]).
    pub fn new(
        node: NodeId,
        kind: AttesterKind,
        cfg: &AttesterConfig,
        auditors: Option<Policy>,
        custody_key: &Path,
    ) -> Result<KeyRing, String> {
        let attester = kind.build(cfg).map_err(|e: AttesterError| e.to_string())?;
        let auditors = match auditors {
            Some(p) => p,
            None if attester.is_insecure() => Policy {
                allow_insecure_dev: true,
                ..Policy::default()
            },
            None => {
                return Err(
                    "a hardware attester needs an auditor policy (the measurements of \
                     the auditors' TEEs this node re-seals its confidential requests to): \
                     without one no auditor could be sent them, and withholding them is slashed"
                        .into(),
                );
            }
        };
        if auditors.allow_insecure_dev && !attester.is_insecure() {
            return Err(
                "a node with a hardware attester must not re-seal its requests to \
                 INSECURE dev auditors (allow_insecure_dev in the auditor policy)"
                    .into(),
            );
        }
        Ok(KeyRing {
            node,
            kind,
            attester,
            auditors,
            keys: RwLock::new(Keys::default()),
            custody: CustodyKey::load_or_create(custody_key).map_err(|e| e.to_string())?,
        })
    }

    /// What this node accepts as an auditor's evidence before re-sealing a request to it.
    pub(super) fn auditor_verifier(&self) -> PolicyVerifier {
        PolicyVerifier::new(self.auditors.clone())
    }

    /// The attester in words; says INSECURE for the dev attester.
    pub fn label(&self) -> String {
        self.kind.to_string()
    }

    pub fn is_insecure(&self) -> bool {
        self.attester.is_insecure()
    }

    /// The epoch of the current key, if one is published.
    pub fn current_epoch(&self) -> Option<u64> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .as_ref()
            .map(ConfidentialKey::epoch)
    }

    /// The key of `epoch`: the current one or the one before it.
    fn key_for(&self, epoch: u64) -> Option<ConfidentialKey> {
        let k = self.keys.read().unwrap_or_else(|e| e.into_inner());
        [&k.current, &k.previous]
            .into_iter()
            .flatten()
            .find(|key| key.epoch() == epoch)
            .cloned()
    }

    /// The key of `epoch`, or the error that tells the sender to fetch the current one.
    pub(super) fn key_or_stale(&self, epoch: u64) -> Result<ConfidentialKey, NodeError> {
        self.key_for(epoch)
            .ok_or(NodeError::StaleConfidentialKey(epoch))
    }

    /// Makes a key for the ledger's current epoch, attests it and publishes it. A turn that
    /// races the transaction (`StaleEpoch`) is retried against the new epoch.
    pub async fn publish(&self, client: &LedgerClient, signer: &Keypair) -> Result<u64, String> {
        for _ in 0..4 {
            let status = client.status().await.map_err(|e| e.to_string())?;
            if self.current_epoch() == Some(status.epoch) {
                return Ok(status.epoch);
            }
            let key = {
                let k = self.keys.read().unwrap_or_else(|e| e.into_inner());
                match &k.current {
                    Some(cur) if cur.epoch() < status.epoch => {
                        cur.rotate(status.epoch, status.epoch_nonce)
                    }
                    _ => ConfidentialKey::generate(self.node, status.epoch, status.epoch_nonce),
                }
                .map_err(|e| e.to_string())?
            };
            let evidence = self
                .attester
                .evidence(&key.report_data(), unix_now())
                .map_err(|e| e.to_string())?;
            let attestation = serde_json::to_vec(&evidence).map_err(|e| e.to_string())?;
            let tx = TxKind::RotateConfidentialKey {
                key: SealingKey(Hash32(key.public_key())),
                attestation,
                epoch: status.epoch,
            };
            match client.send(signer, tx).await {
                Ok(_) => {
                    let epoch = key.epoch();
                    let mut k = self.keys.write().unwrap_or_else(|e| e.into_inner());
                    k.previous = k.current.take();
                    k.current = Some(key);
                    return Ok(epoch);
                }
                Err(ClientError::Api { code, .. }) if code == STALE_EPOCH => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the epoch kept turning while the key was being published".into())
    }
}

/// The ledger's refusal code of `LedgerError::StaleEpoch`.
const STALE_EPOCH: &str = "stale_epoch";

/// Publishes a fresh key at every `EpochTurned` event until `stop`. Starts from `from`, the
/// ledger height before the first key was published, so no turn is missed.
pub async fn follow_epochs(
    ring: Arc<KeyRing>,
    client: LedgerClient,
    signer: Keypair,
    from: Cursor,
    mut stop: watch::Receiver<bool>,
) {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let rotator = Rotator { ring, signer };
    sortition_ledger_client::follow(
        "epochs",
        client,
        MemoryCursor::starting_at(from),
        rotator,
        shutdown,
    )
    .await
}

/// Rotates the node's confidential key when the epoch turns.
struct Rotator {
    ring: Arc<KeyRing>,
    signer: Keypair,
}

impl EventHandler for Rotator {
    /// Catches up with a turn missed while the stream was down.
    async fn connected(&mut self, client: &LedgerClient) {
        if let Ok(st) = client.status().await
            && self.ring.current_epoch().is_some_and(|e| e < st.epoch)
        {
            rotate(&self.ring, client, &self.signer).await;
        }
    }

    async fn handle(&mut self, client: &LedgerClient, _at: Cursor, event: LedgerEvent) {
        if let LedgerEvent::EpochTurned { epoch, .. } = event
            && self.ring.current_epoch().is_none_or(|e| e < epoch)
        {
            rotate(&self.ring, client, &self.signer).await;
        }
    }
}

async fn rotate(ring: &KeyRing, client: &LedgerClient, signer: &Keypair) {
    match ring.publish(client, signer).await {
        Ok(epoch) => {
            tracing::info!(node = %ring.node, epoch, attester = %ring.label(), "confidential key rotated")
        }
        Err(e) => {
            tracing::error!(node = %ring.node, error = %e, "confidential key rotation failed")
        }
    }
}

impl KeyRing {
    /// A receipted confidential request and its answer, sealed at rest for its audits (stored
    /// with the receipt); its auditors re-execute it as a plain chat completion request.
    /// `None` (logged) if it cannot be sealed: the audit will then be unverifiable.
    pub(crate) fn keep_for_audit(
        &self,
        receipt: &SignedReceipt,
        plaintext: &[u8],
        text: &str,
        finish: &str,
    ) -> Option<Vec<u8>> {
        let r = &receipt.receipt;
        let record = (|| {
            let payload = AuditPayload {
                path: Route::Chat.path().into(),
                body: String::from_utf8(plaintext.to_vec()).map_err(|_| "request is not UTF-8")?,
                receipt: receipt.clone(),
                answer: Some(Answer {
                    text: text.into(),
                    finish_reason: finish.into(),
                }),
            };
            let json = Zeroizing::new(serde_json::to_vec(&payload).map_err(|_| "encoding failed")?);
            self.custody
                .seal(r.stack.0, r.sequence, &json)
                .map_err(|_| "sealing failed")
        })();
        match record {
            Ok(sealed) => Some(sealed),
            Err(e) => {
                tracing::error!(stack = %r.stack, seq = r.sequence, error = e, "could not keep a confidential request for audit");
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod ring_tests {
    use super::*;

    fn tdx_config() -> AttesterConfig {
        AttesterConfig {
            tdx_collateral: Some(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../confidential/testdata/tdx_quote_collateral.json"),
            ),
            ..AttesterConfig::default()
        }
    }

    #[test]
    fn a_hardware_node_needs_a_hardware_auditor_policy() {
        let dir = tempfile::tempdir().unwrap();
        let custody = dir.path().join("custody.key");
        let new = |kind, policy| KeyRing::new(NodeId(1), kind, &tdx_config(), policy, &custody);
        let err = new(AttesterKind::IntelTdx, None).err().unwrap();
        assert!(err.contains("auditor policy"), "{err}");
        let dev_auditors = Policy {
            allow_insecure_dev: true,
            ..Policy::default()
        };
        let err = new(AttesterKind::IntelTdx, Some(dev_auditors))
            .err()
            .unwrap();
        assert!(err.contains("INSECURE"), "{err}");
        let ring = new(AttesterKind::IntelTdx, Some(Policy::default())).unwrap();
        assert!(!ring.is_insecure());
        // A dev node accepts dev auditors by default.
        let ring = new(AttesterKind::InsecureDev, None).unwrap();
        assert!(ring.auditors.allow_insecure_dev);
    }
}
