//! The sequencer actor: collects verified transactions, forms a block every `block_interval`
//! or when `max_block_txs` are waiting, applies it, persists it durably, and only then answers
//! the submitters and publishes the block's events.
//!
//! It runs on tokio's blocking pool (the fsync is blocking I/O) and is reached through a cheap
//! cloneable [`Handle`]. Queries read the ledger under a read lock; they may see a block a few
//! microseconds before its fsync completes, never a block that is later lost *and*
//! acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sortition_ledger::{
    BeaconError, BlockContext, BlockOutcome, Event, Genesis, Ledger, LedgerError, SecretShare,
    SignedTx, TxResult, VerifiedTx,
};
use sortition_types::{Hash32, canonical_bytes, sha256};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::ServiceError;
use crate::store::{Store, StoredBlock};

/// A transaction's inclusion: where it landed and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Included {
    pub height: u64,
    pub index: u32,
    pub tx_hash: Hash32,
    pub result: TxResult,
}

/// The events of one block, flattened: each transaction's in order, then end-of-block ones.
#[derive(Debug, Clone)]
pub struct BlockEvents {
    pub height: u64,
    pub events: Arc<Vec<Event>>,
}

/// Why a submission got no inclusion.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Refused before sequencing (bad signature, wrong chain, stale nonce, expired).
    #[error(transparent)]
    Refused(#[from] LedgerError),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub height: AtomicU64,
    pub txs_applied: AtomicU64,
    pub tx_errors: AtomicU64,
    pub blocks: AtomicU64,
    pub block_apply_us_total: AtomicU64,
    pub block_persist_us_total: AtomicU64,
}

pub struct Shared {
    pub(crate) ledger: RwLock<Ledger>,
    /// This sequencer's (or validator's) secret beacon share. A 1-of-1 group's sequencer signs
    /// `σ_h` alone; a validator contributes a partial signature.
    pub(crate) share: SecretShare,
    pub genesis: Genesis,
    pub store: Store,
    pub(crate) tx_index: RwLock<HashMap<Hash32, (u64, u32)>>,
    pub metrics: Metrics,
    pub events: broadcast::Sender<BlockEvents>,
}

pub(crate) struct Submission {
    pub(crate) tx: VerifiedTx,
    pub(crate) reply: oneshot::Sender<Result<Included, ServiceError>>,
}

/// Cheap, cloneable access to the sequencer (or replica) and its state.
#[derive(Clone)]
pub struct Handle {
    pub(crate) inbox: mpsc::Sender<Submission>,
    pub(crate) shared: Arc<Shared>,
    /// Under consensus, how long a submitter waits for its transaction to be final before it
    /// is told so (the transaction may still be included later).
    pub(crate) ack_timeout: Option<Duration>,
}

pub struct SequencerConfig {
    pub block_interval: Duration,
    pub max_block_txs: usize,
    /// When no transaction arrives for this long, an empty block is sealed, so that block
    /// heights (the ledger's clock for challenge windows and deadlines) keep advancing.
    pub idle_block_interval: Option<Duration>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Opens the store, replays every stored block (checking each state root and result), and
/// starts the sequencer. Must be called inside a tokio runtime. The returned task finishes
/// when every [`Handle`] is dropped and the database is closed.
pub fn start(
    store: Store,
    genesis: Genesis,
    share: SecretShare,
    cfg: SequencerConfig,
) -> Result<(Handle, tokio::task::JoinHandle<()>), ServiceError> {
    let shared = open_shared(store, genesis, share)?;
    let threshold = read(&shared.ledger).beacon().threshold();
    if threshold != 1 {
        // A larger group needs its peers' partials: run `sortition validator` instead.
        return Err(ServiceError::Beacon(BeaconError::NotEnoughPartials {
            threshold,
            got: 1,
        }));
    }
    let (inbox, rx) = mpsc::channel(cfg.max_block_txs.max(1) * 4);
    let s = shared.clone();
    let rt = tokio::runtime::Handle::current();
    // The task ends (and closes the database) once every Handle is dropped.
    let task = tokio::task::spawn_blocking(move || run(rt, s, rx, cfg));
    Ok((
        Handle {
            inbox,
            shared,
            ack_timeout: None,
        },
        task,
    ))
}

/// The ledger rebuilt from the store: the genesis, then every stored block replayed and
/// checked (state roots and results).
pub(crate) fn open_shared(
    store: Store,
    genesis: Genesis,
    share: SecretShare,
) -> Result<Arc<Shared>, ServiceError> {
    let mut ledger = Ledger::new(&genesis).map_err(ServiceError::Genesis)?;
    ledger
        .beacon()
        .check_share(&share)
        .map_err(ServiceError::Beacon)?;
    let metrics = Metrics::default();
    let index = replay(&mut ledger, &store, &metrics)?;
    metrics.height.store(ledger.height(), Ordering::Relaxed);
    let (events, _) = broadcast::channel(1024);
    Ok(Arc::new(Shared {
        ledger: RwLock::new(ledger),
        share,
        genesis,
        store,
        tx_index: RwLock::new(index),
        metrics,
        events,
    }))
}

/// Applies every stored block to `ledger` (fresh from the genesis), checking each state root
/// and result; returns the index of stored transactions.
pub(crate) fn replay(
    ledger: &mut Ledger,
    store: &Store,
    metrics: &Metrics,
) -> Result<HashMap<Hash32, (u64, u32)>, ServiceError> {
    let mut index = HashMap::new();
    for b in store.blocks()? {
        let h = b.ctx.height;
        let out = ledger
            .apply_block(b.ctx, &b.txs)
            .map_err(|e| ServiceError::Replay {
                height: h,
                reason: e.to_string(),
            })?;
        if out.state_root != b.state_root {
            return Err(ServiceError::RootMismatch {
                height: h,
                stored: b.state_root.to_hex(),
                recomputed: out.state_root.to_hex(),
            });
        }
        let hashes: Vec<Hash32> = out
            .results
            .iter()
            .map(|r| sha256(&canonical_bytes(r)))
            .collect();
        if hashes != b.result_hashes {
            return Err(ServiceError::Replay {
                height: h,
                reason: "results differ from the stored ones".into(),
            });
        }
        for (i, t) in b.txs.iter().enumerate() {
            index.insert(t.hash(), (h, i as u32));
        }
        metrics
            .txs_applied
            .fetch_add(b.txs.len() as u64, Ordering::Relaxed);
    }
    Ok(index)
}

/// After a block could not be persisted: the in-memory ledger applied it, the disk did not.
/// Reopens the database and rebuilds the ledger from what is durable, so that the next block
/// follows the last persisted one and nothing unacknowledged lingers in memory.
fn heal(shared: &Shared) -> Result<(), ServiceError> {
    shared.store.reopen()?;
    let mut fresh = Ledger::new(&shared.genesis).map_err(ServiceError::Genesis)?;
    let index = replay(&mut fresh, &shared.store, &Metrics::default())?;
    *shared.ledger.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    *shared.tx_index.write().unwrap_or_else(|p| p.into_inner()) = index;
    Ok(())
}

fn run(
    rt: tokio::runtime::Handle,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Submission>,
    cfg: SequencerConfig,
) {
    let mut faults = StorageFaults::default();
    loop {
        let first = match cfg.idle_block_interval {
            None => rx.blocking_recv(),
            Some(idle) => match rt.block_on(tokio::time::timeout(idle, rx.recv())) {
                Ok(next) => next,
                Err(_) => {
                    if !faults.after(seal(&shared, Vec::new())) {
                        return;
                    }
                    continue;
                }
            },
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        let deadline = Instant::now() + cfg.block_interval;
        while batch.len() < cfg.max_block_txs {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let next = rt.block_on(tokio::time::timeout_at(deadline.into(), rx.recv()));
                    match next {
                        Ok(Some(s)) => batch.push(s),
                        _ => break,
                    }
                }
            }
        }
        if !faults.after(seal(&shared, batch)) {
            return;
        }
    }
}

/// What the sequencer does after each block: stop on an error it cannot heal; after a block
/// that could not be persisted (refused, state rolled back), wait a little before the next
/// one and log the fault at a bounded rate (first occurrence, then a count every 30 s, then
/// its end), so a full disk neither spins nor floods the log.
#[derive(Default)]
struct StorageFaults {
    /// When the current run of failures began, when it was last logged, how many so far.
    failing: Option<(Instant, Instant, u64)>,
}

impl StorageFaults {
    const BACKOFF: Duration = Duration::from_millis(500);
    const LOG_EVERY: Duration = Duration::from_secs(30);

    /// Whether the sequencer goes on.
    fn after(&mut self, sealed: Result<Sealed, ServiceError>) -> bool {
        match sealed {
            Ok(Sealed::Durable) => {
                if let Some((since, _, n)) = self.failing.take() {
                    tracing::warn!(
                        failed_blocks = n,
                        secs = since.elapsed().as_secs(),
                        "ledger storage recovered; blocks are persisted again"
                    );
                }
                true
            }
            Ok(Sealed::NotPersisted(why)) => {
                let now = Instant::now();
                match &mut self.failing {
                    None => {
                        tracing::error!(error = %why, "a block could not be persisted: its transactions were refused and the ledger rolled back to the last durable block; retrying");
                        self.failing = Some((now, now, 1));
                    }
                    Some((since, logged, n)) => {
                        *n += 1;
                        if now.duration_since(*logged) >= Self::LOG_EVERY {
                            tracing::error!(error = %why, failed_blocks = *n, secs = since.elapsed().as_secs(), "ledger storage still failing");
                            *logged = now;
                        }
                    }
                }
                std::thread::sleep(Self::BACKOFF);
                true
            }
            Err(e) => {
                tracing::error!("sequencer stopped: {e}");
                false
            }
        }
    }
}

/// How sealing one block ended, when it did not stop the sequencer.
enum Sealed {
    /// Persisted, then acknowledged.
    Durable,
    /// Not persisted: refused to its submitters, and the in-memory state rebuilt from disk.
    NotPersisted(String),
}

/// Applies, persists, then acknowledges one block. A block that cannot be persisted is not
/// acknowledged: its submitters get the storage error and the ledger is rebuilt from the
/// durable blocks ([`heal`]); only a failure to do that stops the sequencer.
fn seal(shared: &Shared, batch: Vec<Submission>) -> Result<Sealed, ServiceError> {
    let (txs, replies): (Vec<VerifiedTx>, Vec<_>) =
        batch.into_iter().map(|s| (s.tx, s.reply)).unzip();
    let signed: Vec<SignedTx> = txs.iter().map(|t| t.signed().clone()).collect();
    let started = Instant::now();
    let (ctx, outcome) = {
        let mut ledger = shared.ledger.write().unwrap_or_else(|p| p.into_inner());
        let ctx = ledger
            .next_context(now_ms(), &shared.share)
            .map_err(ServiceError::Beacon)?;
        let out = ledger.apply_verified(ctx, txs.into_iter().map(Ok).collect());
        (
            ctx,
            out.map_err(|e| ServiceError::Replay {
                height: ctx.height,
                reason: e.to_string(),
            })?,
        )
    };
    match persist_applied(shared, ctx, signed, outcome, None, started) {
        Ok(included) => {
            for (reply, inc) in replies.into_iter().zip(included) {
                let _ = reply.send(Ok(inc));
            }
            Ok(Sealed::Durable)
        }
        Err(Unpersisted { error, healed }) => {
            for r in replies {
                let _ = r.send(Err(ServiceError::Storage(error.clone())));
            }
            healed?;
            Ok(Sealed::NotPersisted(error))
        }
    }
}

/// A block the ledger applied but the disk did not take. The ledger was rolled back to the last
/// durable block (`healed` says whether that worked) before this is returned, so that nobody
/// who is then refused can read the refused block's effects.
pub(crate) struct Unpersisted {
    pub error: String,
    pub healed: Result<(), ServiceError>,
}

/// Persists a block the ledger has just applied (with its finality certificate, under
/// consensus), then indexes it, counts it and publishes its events; returns each transaction's
/// inclusion, in block order. Callers acknowledge only after this returns `Ok`.
pub(crate) fn persist_applied(
    shared: &Shared,
    ctx: BlockContext,
    txs: Vec<SignedTx>,
    outcome: BlockOutcome,
    certificate: Option<&[u8]>,
    started: Instant,
) -> Result<Vec<Included>, Unpersisted> {
    let applied = started.elapsed();
    let block = StoredBlock {
        ctx,
        result_hashes: outcome
            .results
            .iter()
            .map(|r| sha256(&canonical_bytes(r)))
            .collect(),
        txs,
        state_root: outcome.state_root,
    };
    let mut flat: Vec<Event> = outcome
        .results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flatten()
        .cloned()
        .collect();
    flat.extend(outcome.end_block_events.iter().cloned());
    let stored = shared.store.append(&block, &flat, certificate);
    let m = &shared.metrics;
    m.block_apply_us_total
        .fetch_add(applied.as_micros() as u64, Ordering::Relaxed);
    m.block_persist_us_total.fetch_add(
        (started.elapsed() - applied).as_micros() as u64,
        Ordering::Relaxed,
    );
    if let Err(e) = stored {
        return Err(Unpersisted {
            error: e.to_string(),
            healed: heal(shared),
        });
    }
    {
        let mut idx = shared.tx_index.write().unwrap_or_else(|p| p.into_inner());
        for (i, t) in block.txs.iter().enumerate() {
            idx.insert(t.hash(), (ctx.height, i as u32));
        }
    }
    let errors = outcome.results.iter().filter(|r| r.is_err()).count() as u64;
    m.txs_applied
        .fetch_add(block.txs.len() as u64, Ordering::Relaxed);
    m.tx_errors.fetch_add(errors, Ordering::Relaxed);
    m.blocks.fetch_add(1, Ordering::Relaxed);
    m.height.store(ctx.height, Ordering::Relaxed);
    let included = outcome
        .results
        .into_iter()
        .zip(&block.txs)
        .enumerate()
        .map(|(i, (result, t))| Included {
            height: ctx.height,
            index: i as u32,
            tx_hash: t.hash(),
            result,
        })
        .collect();
    let _ = shared.events.send(BlockEvents {
        height: ctx.height,
        events: Arc::new(flat),
    });
    Ok(included)
}

impl Handle {
    /// Makes the next `n` block writes fail as a full disk would (fault-injection tests).
    pub fn fail_next_block_writes(&self, n: u32) {
        self.shared.store.fail_next_appends(n);
    }

    /// Verifies, pre-checks and sequences a transaction; resolves once its block is durable.
    pub async fn submit(&self, tx: SignedTx) -> Result<Included, SubmitError> {
        let v = tx.verify()?;
        self.precheck(&v)?;
        let hash = v.signed().hash();
        let (reply, rx) = oneshot::channel();
        self.inbox
            .send(Submission { tx: v, reply })
            .await
            .map_err(|_| ServiceError::Stopped)?;
        Ok(self.acknowledged(hash, rx).await?)
    }

    /// Waits for a submission's answer, at most `ack_timeout` under consensus.
    async fn acknowledged(
        &self,
        hash: Hash32,
        rx: oneshot::Receiver<Result<Included, ServiceError>>,
    ) -> Result<Included, ServiceError> {
        match self.ack_timeout {
            None => rx.await.map_err(|_| ServiceError::Stopped)?,
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(r) => r.map_err(|_| ServiceError::Stopped)?,
                Err(_) => Err(ServiceError::NotFinal {
                    tx: hash.to_hex(),
                    secs: t.as_secs(),
                }),
            },
        }
    }

    /// Submits several transactions in this order (so one sender's nonces may be pipelined
    /// into the same or consecutive blocks) and waits for all of them.
    pub async fn submit_many(&self, txs: Vec<SignedTx>) -> Vec<Result<Included, SubmitError>> {
        let mut pending = Vec::with_capacity(txs.len());
        for tx in txs {
            let sent = async {
                let v = tx.verify()?;
                self.precheck(&v)?;
                let hash = v.signed().hash();
                let (reply, rx) = oneshot::channel();
                self.inbox
                    .send(Submission { tx: v, reply })
                    .await
                    .map_err(|_| ServiceError::Stopped)?;
                Ok::<_, SubmitError>((hash, rx))
            };
            pending.push(sent.await);
        }
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(match p {
                Ok((hash, rx)) => self.acknowledged(hash, rx).await.map_err(SubmitError::from),
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Cheap refusals before sequencing. Skipped while a block is being applied; the block is
    /// the authority either way.
    pub(crate) fn precheck(&self, v: &VerifiedTx) -> Result<(), LedgerError> {
        let Ok(l) = self.shared.ledger.try_read() else {
            return Ok(());
        };
        let (st, tx) = (l.state(), v.tx());
        if tx.chain_id != st.chain_id {
            return Err(LedgerError::WrongChain {
                expected: st.chain_id.clone(),
                got: tx.chain_id.clone(),
            });
        }
        let expected = st.account(&tx.sender).nonce;
        if tx.nonce < expected {
            return Err(LedgerError::WrongNonce {
                expected,
                got: tx.nonce,
            });
        }
        if tx.expires_at_ms <= st.timestamp_ms {
            return Err(LedgerError::Expired {
                expires_at_ms: tx.expires_at_ms,
                now_ms: st.timestamp_ms,
            });
        }
        Ok(())
    }

    /// Runs `f` on the current ledger under a read lock.
    pub fn with_ledger<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(&read(&self.shared.ledger))
    }

    /// Where a transaction landed, if it did.
    pub fn find_tx(&self, hash: &Hash32) -> Option<(u64, u32)> {
        read(&self.shared.tx_index).get(hash).copied()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BlockEvents> {
        self.shared.events.subscribe()
    }
}
