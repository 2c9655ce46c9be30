//! The node's durable state in an embedded redb database: signed receipts per stack, stack
//! usage counters, request nonces already seen, the ledger event cursor, and the sealed
//! confidential requests kept for audits.
//!
//! Every write commits with immediate durability before the call returns, so a receipt that a
//! client received is never lost by a crash, and a replayed nonce stays refused after restart.

use std::path::Path;

use std::sync::atomic::{AtomicU32, Ordering};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
};
use sortition_types::{SignedReceipt, StackId};

/// (stack, sequence) → JSON of the signed receipt.
const RECEIPTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("receipts");
/// (stack, nonce) → expiry in Unix ms.
const NONCES: TableDefinition<(u64, u64), u64> = TableDefinition::new("nonces");
/// (expiry in Unix ms, stack, nonce): the nonces in the order they expire, so a sweep reads
/// only what it removes.
const NONCE_EXPIRY: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("nonce_expiry");
/// (stack, sequence) → a confidential request and its answer, sealed at rest
/// (`sortition_confidential::custody`), kept for the audits.
const CUSTODY: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("custody");
/// Named scalar values (e.g. the event cursor).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A nonce is kept this long past its expiry before it is swept: a request is refused once
/// its expiry has passed, and the margin covers a wall clock stepped back a little.
pub const NONCE_SWEEP_GRACE_MS: u64 = 60_000;
/// Most expired nonces one request's write removes (the rest go with the next ones).
const NONCE_SWEEP_BATCH: usize = 64;

/// A storage failure. The node treats these as internal errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node database: {0}")]
    Db(#[from] redb::Error),
    #[error("stored receipt is corrupt: {0}")]
    Corrupt(String),
    /// A write failed on purpose ([`NodeStore::fail_next_receipt_writes`]).
    #[error("injected receipt write failure")]
    Injected,
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Handle to the node's database. Cheap to share behind an `Arc`.
pub struct NodeStore {
    db: Database,
    /// Receipt writes still to fail on purpose (a fault injection hook for tests; zero in
    /// production, where nothing sets it).
    fail_receipt_writes: AtomicU32,
}

/// What [`NodeStore::append_receipt`] writes for the sequence number it allocated.
pub struct Appended<T> {
    /// The receipt kept (and claimed) at that position.
    pub kept: SignedReceipt,
    /// A sealed confidential request to keep with it, in the same transaction.
    pub custody: Option<Vec<u8>>,
    /// What the caller takes back (e.g. the receipt handed to the client).
    pub out: T,
}

impl NodeStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(RECEIPTS)?;
        tx.open_table(NONCES)?;
        tx.open_table(NONCE_EXPIRY)?;
        tx.open_table(META)?;
        tx.open_table(CUSTODY)?;
        tx.commit()?;
        Ok(NodeStore {
            db,
            fail_receipt_writes: AtomicU32::new(0),
        })
    }

    /// Records a nonce for a stack. Returns `false` (and writes nothing) if it was seen before.
    /// The same write forgets a few nonces that expired more than [`NONCE_SWEEP_GRACE_MS`]
    /// before `now_ms`, so the table holds about the requests of one validity window.
    pub fn insert_nonce(
        &self,
        stack: StackId,
        nonce: u64,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        let fresh = {
            let mut t = tx.open_table(NONCES)?;
            if t.get((stack.0, nonce))?.is_some() {
                false
            } else {
                t.insert((stack.0, nonce), expires_ms)?;
                let mut by_expiry = tx.open_table(NONCE_EXPIRY)?;
                by_expiry.insert((expires_ms, stack.0, nonce), ())?;
                sweep_expired(&mut t, &mut by_expiry, now_ms, NONCE_SWEEP_BATCH)?;
                true
            }
        };
        if fresh {
            tx.commit()?;
        } else {
            tx.abort()?;
        }
        Ok(fresh)
    }

    /// Forgets every nonce that expired more than [`NONCE_SWEEP_GRACE_MS`] before `now_ms`
    /// (it can no longer be replayed: expired requests are refused), and indexes by expiry
    /// the nonces a version without that index recorded. Run at start.
    pub fn sweep_nonces(&self, now_ms: u64) -> Result<usize, StoreError> {
        let cutoff = now_ms.saturating_sub(NONCE_SWEEP_GRACE_MS);
        let tx = self.db.begin_write()?;
        let removed = {
            let mut t = tx.open_table(NONCES)?;
            let mut by_expiry = tx.open_table(NONCE_EXPIRY)?;
            let mut expired = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                let ((stack, nonce), exp) = (k.value(), v.value());
                if exp < cutoff {
                    expired.push((stack, nonce));
                } else {
                    by_expiry.insert((exp, stack, nonce), ())?;
                }
            }
            for k in &expired {
                t.remove(k)?;
            }
            expired.len() + sweep_expired(&mut t, &mut by_expiry, now_ms, usize::MAX)?
        };
        tx.commit()?;
        Ok(removed)
    }

    /// Nonces recorded now (spent and not swept).
    pub fn nonce_count(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(NONCES)?.len()?)
    }

    /// Allocates the next receipt sequence number of `stack` and persists the receipt `make`
    /// builds for it, in one write transaction: the number is one past the stack's last
    /// stored receipt, so receipt `i` of a stack always has sequence `i`. If anything fails
    /// (the make, the write, the commit), nothing is stored and the number is not used: the
    /// next receipt gets it, and no gap can misplace the receipts after it in a claim.
    pub fn append_receipt<T, E: From<StoreError>>(
        &self,
        stack: StackId,
        make: impl FnOnce(u64) -> Result<Appended<T>, E>,
    ) -> Result<T, E> {
        let tx = self.db.begin_write().map_err(StoreError::from)?;
        let appended = {
            let mut t = tx.open_table(RECEIPTS).map_err(StoreError::from)?;
            let next = match t
                .range((stack.0, 0)..=(stack.0, u64::MAX))
                .map_err(StoreError::from)?
                .next_back()
            {
                Some(row) => row.map_err(StoreError::from)?.0.value().1 + 1,
                None => 0,
            };
            let a = make(next)?;
            let r = &a.kept.receipt;
            if (r.stack, r.sequence) != (stack, next) {
                return Err(StoreError::Corrupt(format!(
                    "receipt built for stack {} sequence {}, allocated {stack} sequence {next}",
                    r.stack, r.sequence
                ))
                .into());
            }
            let bytes =
                serde_json::to_vec(&a.kept).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            t.insert((stack.0, next), bytes.as_slice())
                .map_err(StoreError::from)?;
            if let Some(sealed) = &a.custody {
                tx.open_table(CUSTODY)
                    .map_err(StoreError::from)?
                    .insert((stack.0, next), sealed.as_slice())
                    .map_err(StoreError::from)?;
            }
            a
        };
        self.injected_failure()?;
        tx.commit().map_err(StoreError::from)?;
        Ok(appended.out)
    }

    /// Makes the next `n` receipt writes fail after their sequence number was allocated and
    /// the receipt built (before the commit). A fault injection hook for tests.
    pub fn fail_next_receipt_writes(&self, n: u32) {
        self.fail_receipt_writes.store(n, Ordering::SeqCst);
    }

    fn injected_failure(&self) -> Result<(), StoreError> {
        let take = self
            .fail_receipt_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match take {
            Ok(_) => Err(StoreError::Injected),
            Err(_) => Ok(()),
        }
    }

    /// Persists a receipt durably at the position its sequence names.
    pub fn put_receipt(&self, r: &SignedReceipt) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tx = self.db.begin_write()?;
        tx.open_table(RECEIPTS)?
            .insert((r.receipt.stack.0, r.receipt.sequence), bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// All receipts of a stack in sequence order.
    pub fn receipts(&self, stack: StackId) -> Result<Vec<SignedReceipt>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RECEIPTS)?;
        let mut out = Vec::new();
        for row in t.range((stack.0, 0)..=(stack.0, u64::MAX))? {
            let (_, v) = row?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Stacks that have at least one receipt.
    pub fn stacks_with_receipts(&self) -> Result<Vec<StackId>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RECEIPTS)?;
        let mut out: Vec<StackId> = Vec::new();
        for row in t.iter()? {
            let (k, _) = row?;
            let s = StackId(k.value().0);
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Keeps the sealed record of a confidential request durably.
    pub fn put_custody(
        &self,
        stack: StackId,
        sequence: u64,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(CUSTODY)?
            .insert((stack.0, sequence), sealed)?;
        tx.commit()?;
        Ok(())
    }

    /// The sealed record of a confidential request, if this node served one there.
    pub fn custody(&self, stack: StackId, sequence: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CUSTODY)?;
        Ok(t.get((stack.0, sequence))?.map(|v| v.value().to_vec()))
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert(key, value)?;
        tx.commit()?;
        Ok(())
    }
}

/// Removes up to `limit` nonces that expired more than [`NONCE_SWEEP_GRACE_MS`] before
/// `now_ms`, oldest first; returns how many.
fn sweep_expired(
    nonces: &mut Table<'_, (u64, u64), u64>,
    by_expiry: &mut Table<'_, (u64, u64, u64), ()>,
    now_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let cutoff = now_ms.saturating_sub(NONCE_SWEEP_GRACE_MS);
    let mut expired = Vec::new();
    for row in by_expiry.range(..(cutoff, 0, 0))? {
        if expired.len() >= limit {
            break;
        }
        expired.push(row?.0.value());
    }
    for &(exp, stack, nonce) in &expired {
        by_expiry.remove((exp, stack, nonce))?;
        nonces.remove((stack, nonce))?;
    }
    Ok(expired.len())
}
/// The meta key marking `stack` as claimed.
pub(crate) fn claimed_key(stack: StackId) -> String {
    format!("claimed/{}", stack.0)
}

impl NodeStore {
    /// Stacks holding receipts this node signed and has not claimed yet (a crash skipped the
    /// claims of shutdown).
    pub fn unclaimed_stacks(&self) -> Result<Vec<StackId>, String> {
        let mut out = Vec::new();
        for stack in self.stacks_with_receipts().map_err(|e| e.to_string())? {
            if self
                .get_meta(&claimed_key(stack))
                .map_err(|e| e.to_string())?
                .is_none()
            {
                out.push(stack);
            }
        }
        Ok(out)
    }
}
