//! The beacon partials gossiped between validators: gathered per height until a threshold
//! recovers the height's signature `σ_h`, which proposers wait for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use sortition_ledger::{BeaconSig, PartialSig};
use sortition_ledger_service::Replica;
use tokio::sync::Notify;

/// Gathers beacon partials per height and the recovered signatures.
pub(crate) struct BeaconPool {
    pub(crate) inner: Mutex<BeaconInner>,
    pub(crate) notify: Notify,
    pub(crate) threshold: usize,
}

#[derive(Default)]
pub(crate) struct BeaconInner {
    partials: BTreeMap<u64, HashMap<u32, PartialSig>>,
    sigs: BTreeMap<u64, BeaconSig>,
    /// This validator's latest partial (sent again periodically for peers that missed it).
    pub(crate) own: Option<(u64, PartialSig)>,
}

impl BeaconPool {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, BeaconInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a verified partial; recovers `σ_height` once `threshold` are in.
    pub(crate) fn add(&self, replica: &Replica, height: u64, p: PartialSig) {
        let mut g = self.lock();
        if g.sigs.contains_key(&height) || height <= replica.height() {
            return;
        }
        let set = g.partials.entry(height).or_default();
        set.insert(p.index(), p);
        if set.len() >= self.threshold {
            let ps: Vec<PartialSig> = set.values().cloned().collect();
            match replica.recover(height, &ps) {
                Ok(sig) => {
                    g.sigs.insert(height, sig);
                    g.partials.remove(&height);
                    drop(g);
                    self.notify.notify_waiters();
                }
                Err(e) => tracing::warn!(height, "beacon recovery failed: {e}"),
            }
        }
    }

    pub(crate) fn prune(&self, applied: u64) {
        let mut g = self.lock();
        g.partials = g.partials.split_off(&(applied + 1));
        g.sigs = g.sigs.split_off(&(applied + 1));
    }

    pub(crate) async fn wait_for(&self, height: u64, limit: Duration) -> Option<BeaconSig> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            if let Some(s) = self.lock().sigs.get(&height) {
                return Some(*s);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lock().sigs.get(&height).copied();
            }
        }
    }
}

pub(crate) fn encode_partial(height: u64, p: &PartialSig) -> Vec<u8> {
    let mut out = height.to_be_bytes().to_vec();
    out.extend(p.to_bytes());
    out
}

pub(crate) fn decode_partial(bytes: &[u8]) -> Option<(u64, PartialSig)> {
    if bytes.len() < 8 {
        return None;
    }
    let height = u64::from_be_bytes(bytes[..8].try_into().ok()?);
    PartialSig::from_bytes(&bytes[8..])
        .ok()
        .map(|p| (height, p))
}
