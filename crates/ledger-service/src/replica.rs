//! A replica: the ledger service driven by a consensus engine instead of the embedded sequencer.
//!
//! The sequencer forms blocks itself; a replica only *applies* the blocks its consensus engine
//! finalizes, in height order ([`Replica::commit`]), and keeps the transactions its clients
//! submitted in a mempool until one of them is final. Everything else — the ledger, its
//! durable store, replay and healing, the HTTP API and the event stream — is the same code as
//! the sequencer's, reached through the same [`Handle`].
//!
//! A submission is answered only once its transaction is in a block that is final *and*
//! persisted here ([`Handle::submit`]); if that takes longer than the configured acknowledgement
//! timeout, the submitter is told the transaction is not final yet (it may still be included:
//! `GET /v1/txs/{hash}` says), never that it was accepted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sortition_ledger::{BlockContext, PartialSig, SignedTx};
use sortition_types::Hash32;
use tokio::sync::{mpsc, oneshot};

use crate::error::ServiceError;
use crate::sequencer::{
    Handle, Included, Shared, Submission, Unpersisted, open_shared, persist_applied, read,
};
use crate::{LedgerServiceConfig, store};

/// How a replica treats its clients' transactions.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// How long a submitter waits for its transaction to be final.
    pub ack_timeout: Duration,
    /// Most transactions the mempool holds; beyond it submissions are refused (503).
    pub max_pool: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            ack_timeout: Duration::from_secs(30),
            max_pool: 100_000,
        }
    }
}

type Reply = oneshot::Sender<Result<Included, ServiceError>>;

/// Puts each sender's transactions in nonce order, in the places its transactions hold:
/// gossip may deliver one sender's pipelined transactions out of order, and a later nonce
/// applied first would be refused (`wrong_nonce`) instead of waiting its turn.
fn in_nonce_order(txs: &mut [SignedTx]) {
    let mut places: HashMap<sortition_types::PublicKey, Vec<usize>> = HashMap::new();
    for (i, t) in txs.iter().enumerate() {
        places.entry(t.tx.sender).or_default().push(i);
    }
    for at in places.into_values().filter(|p| p.len() > 1) {
        let mut mine: Vec<SignedTx> = at.iter().map(|&i| txs[i].clone()).collect();
        mine.sort_by_key(|t| t.tx.nonce);
        for (i, t) in at.into_iter().zip(mine) {
            txs[i] = t;
        }
    }
}

/// Transactions waiting for a block, in arrival order, with whoever waits for each.
#[derive(Default)]
struct Mempool {
    order: VecDeque<Hash32>,
    txs: HashMap<Hash32, SignedTx>,
    waiters: HashMap<Hash32, Vec<Reply>>,
}

impl Mempool {
    fn insert(&mut self, tx: SignedTx) -> bool {
        let h = tx.hash();
        if self.txs.contains_key(&h) {
            return false;
        }
        self.order.push_back(h);
        self.txs.insert(h, tx);
        true
    }

    fn remove(&mut self, h: &Hash32) -> Vec<Reply> {
        self.txs.remove(h);
        self.waiters.remove(h).unwrap_or_default()
    }
}

/// The consensus side of a replica; see the module docs.
#[derive(Clone)]
pub struct Replica {
    shared: Arc<Shared>,
    handle: Handle,
    pool: Arc<Mutex<Mempool>>,
    /// Most transactions the pool holds for local submitters; peers' may fill up to 4×.
    max_pool: usize,
}

/// The transactions this replica's own clients submitted, for the consensus layer to share
/// with the other validators.
pub type Gossip = mpsc::UnboundedReceiver<SignedTx>;

/// Opens storage, replays it and starts a replica (inside a tokio runtime).
pub fn start_replica(
    config: &LedgerServiceConfig,
    rc: ReplicaConfig,
) -> Result<(Handle, Replica, Gossip), ServiceError> {
    let beacon = sortition_ledger::Beacon::new(&config.genesis.chain_id, &config.genesis.beacon)
        .map_err(|e| ServiceError::Genesis(sortition_ledger::LedgerError::BadBeaconKeys(e)))?;
    let share = store::load_validator_share(&config.data_dir, &beacon)?;
    let st = store::Store::open(&config.data_dir, &config.genesis)?;
    let shared = open_shared(st, config.genesis.clone(), share)?;
    let (inbox, mut rx) = mpsc::channel::<Submission>(4096);
    let handle = Handle {
        inbox,
        shared: shared.clone(),
        ack_timeout: Some(rc.ack_timeout),
    };
    let pool = Arc::new(Mutex::new(Mempool::default()));
    let (gossip_tx, gossip) = mpsc::unbounded_channel();
    let p = pool.clone();
    let max = rc.max_pool;
    tokio::spawn(async move {
        while let Some(Submission { tx, reply }) = rx.recv().await {
            let signed = tx.signed().clone();
            let mut pool = lock(&p);
            let h = signed.hash();
            if !pool.txs.contains_key(&h) && pool.txs.len() >= max {
                let _ = reply.send(Err(ServiceError::MempoolFull(pool.txs.len())));
                continue;
            }
            pool.insert(signed.clone());
            pool.waiters.entry(h).or_default().push(reply);
            drop(pool);
            let _ = gossip_tx.send(signed);
        }
    });
    Ok((
        handle.clone(),
        Replica {
            shared,
            handle,
            pool,
            max_pool: max,
        },
        gossip,
    ))
}

fn lock(p: &Mutex<Mempool>) -> MutexGuard<'_, Mempool> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Replica {
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Height of the last block applied and persisted here.
    pub fn height(&self) -> u64 {
        read(&self.shared.ledger).height()
    }

    /// Timestamp of the last applied block (ms).
    pub fn timestamp_ms(&self) -> u64 {
        read(&self.shared.ledger).state().timestamp_ms
    }

    /// A transaction another validator shared: kept if its signature verifies and it is not
    /// plainly stale (no waiter: its submitter waits at that validator).
    pub fn add_remote(&self, tx: SignedTx) -> bool {
        let Ok(v) = tx.verify() else { return false };
        if self.handle.precheck(&v).is_err() {
            return false;
        }
        let mut pool = lock(&self.pool);
        if pool.txs.len() >= 4 * self.max_pool {
            return false;
        }
        pool.insert(v.signed().clone())
    }

    /// Up to `max` waiting transactions in arrival order, leaving out `exclude` (those in
    /// blocks proposed on top of the last final one, not final yet).
    pub fn proposal(&self, max: usize, exclude: &HashSet<Hash32>) -> Vec<SignedTx> {
        let mut pool = lock(&self.pool);
        let Mempool { order, txs, .. } = &mut *pool;
        order.retain(|h| txs.contains_key(h));
        let mut picked: Vec<SignedTx> = order
            .iter()
            .filter(|h| !exclude.contains(*h))
            .take(max)
            .filter_map(|h| txs.get(h).cloned())
            .collect();
        in_nonce_order(&mut picked);
        picked
    }

    /// Number of waiting transactions.
    pub fn pool_len(&self) -> usize {
        lock(&self.pool).txs.len()
    }

    /// This validator's partial beacon signature for `height` (released only once the block
    /// before it is final here: see `sortition_ledger::beacon`).
    pub fn partial(&self, height: u64) -> PartialSig {
        self.shared
            .share
            .sign(&self.shared.genesis.chain_id, height)
    }

    /// Recovers `σ_height` from partials (each checked).
    pub fn recover(
        &self,
        height: u64,
        partials: &[PartialSig],
    ) -> Result<sortition_ledger::BeaconSig, sortition_ledger::BeaconError> {
        read(&self.shared.ledger).beacon().recover(height, partials)
    }

    /// Checks one partial.
    pub fn verify_partial(
        &self,
        height: u64,
        partial: &PartialSig,
    ) -> Result<(), sortition_ledger::BeaconError> {
        read(&self.shared.ledger)
            .beacon()
            .verify_partial(height, partial)
    }

    /// Checks a block's beacon signature.
    pub fn verify_beacon(
        &self,
        height: u64,
        sig: &sortition_ledger::BeaconSig,
    ) -> Result<(), sortition_ledger::BeaconError> {
        read(&self.shared.ledger).beacon().verify(height, sig)
    }

    /// Applies and persists a finalized block, then answers whoever waits for its
    /// transactions. A block at or below the current height was applied already (the engine
    /// may deliver a block again after a restart) and is skipped. On a storage error nothing is
    /// acknowledged and the ledger is rolled back to its last durable block, so the caller may
    /// simply try the same block again.
    pub fn commit(
        &self,
        ctx: BlockContext,
        txs: Vec<SignedTx>,
        certificate: Option<&[u8]>,
    ) -> Result<bool, ServiceError> {
        let started = Instant::now();
        let outcome = {
            let mut l = self
                .shared
                .ledger
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if ctx.height <= l.height() {
                return Ok(false);
            }
            if ctx.height != l.height() + 1 {
                return Err(ServiceError::Replay {
                    height: ctx.height,
                    reason: format!(
                        "blocks must come in order; the last applied is {}",
                        l.height()
                    ),
                });
            }
            l.apply_block(ctx, &txs).map_err(|e| ServiceError::Replay {
                height: ctx.height,
                reason: e.to_string(),
            })?
        };
        match persist_applied(&self.shared, ctx, txs, outcome, certificate, started) {
            Ok(included) => {
                let mut pool = lock(&self.pool);
                for inc in included {
                    for w in pool.remove(&inc.tx_hash) {
                        let _ = w.send(Ok(inc.clone()));
                    }
                }
                self.prune(&mut pool);
                Ok(true)
            }
            Err(Unpersisted { error, healed }) => {
                healed?;
                Err(ServiceError::Storage(error))
            }
        }
    }

    /// Drops waiting transactions that can no longer be included (their sender's nonce moved
    /// past them, or they expired), telling their submitters why.
    fn prune(&self, pool: &mut Mempool) {
        let l = read(&self.shared.ledger);
        let st = l.state();
        let mut dead = Vec::new();
        for (h, t) in &pool.txs {
            let tx = &t.tx;
            let reason = if tx.nonce < st.account(&tx.sender).nonce {
                Some("another transaction with its nonce is final")
            } else if tx.expires_at_ms <= st.timestamp_ms {
                Some("it expired before it was included")
            } else {
                None
            };
            if let Some(r) = reason {
                dead.push((*h, r));
            }
        }
        drop(l);
        for (h, reason) in dead {
            for w in pool.remove(&h) {
                let _ = w.send(Err(ServiceError::Dropped {
                    tx: h.to_hex(),
                    reason: reason.into(),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sortition_ledger::{Tx, TxKind};
    use sortition_types::{Amount, Keypair};

    fn tx(key: &Keypair, nonce: u64) -> SignedTx {
        Tx {
            chain_id: "t".into(),
            sender: key.public(),
            nonce,
            expires_at_ms: 1,
            kind: TxKind::Transfer {
                to: key.public(),
                amount: Amount(1),
            },
        }
        .sign(key)
    }

    #[test]
    fn each_senders_transactions_go_in_nonce_order_in_their_places() {
        let (a, b) = (Keypair::from_seed(b"a"), Keypair::from_seed(b"b"));
        let mut txs = vec![tx(&a, 2), tx(&b, 5), tx(&a, 0), tx(&a, 1), tx(&b, 4)];
        in_nonce_order(&mut txs);
        let got: Vec<(bool, u64)> = txs
            .iter()
            .map(|t| (t.tx.sender == a.public(), t.tx.nonce))
            .collect();
        assert_eq!(
            got,
            vec![(true, 0), (false, 4), (true, 1), (true, 2), (false, 5)]
        );
    }
}
