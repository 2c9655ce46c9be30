//! The node's durable state in an embedded redb database: signed receipts per stack, stack
//! usage counters, request nonces already seen, the ledger event cursor, and the sealed
//! confidential requests kept for audits.
//!
//! Every write commits with immediate durability before the call returns, so a receipt that a
//! client received is never lost by a crash, and a replayed nonce stays refused after restart.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sortition_types::{SignedReceipt, StackId};

/// (stack, sequence) → JSON of the signed receipt.
const RECEIPTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("receipts");
/// (stack, nonce) → expiry in Unix ms.
const NONCES: TableDefinition<(u64, u64), u64> = TableDefinition::new("nonces");
/// (stack, sequence) → a confidential request and its answer, sealed at rest
/// (`sortition_confidential::custody`), kept for the audits.
const CUSTODY: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("custody");
/// Named scalar values (e.g. the event cursor).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A storage failure. The node treats these as internal errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node database: {0}")]
    Db(#[from] redb::Error),
    #[error("stored receipt is corrupt: {0}")]
    Corrupt(String),
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
}

impl NodeStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(RECEIPTS)?;
        tx.open_table(NONCES)?;
        tx.open_table(META)?;
        tx.open_table(CUSTODY)?;
        tx.commit()?;
        Ok(NodeStore { db })
    }

    /// Records a nonce for a stack. Returns `false` (and writes nothing) if it was seen before.
    pub fn insert_nonce(
        &self,
        stack: StackId,
        nonce: u64,
        expires_ms: u64,
    ) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        let fresh = {
            let mut t = tx.open_table(NONCES)?;
            if t.get((stack.0, nonce))?.is_some() {
                false
            } else {
                t.insert((stack.0, nonce), expires_ms)?;
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

    /// Forgets nonces whose signatures have expired; they can no longer be replayed anyway.
    pub fn sweep_nonces(&self, now_ms: u64) -> Result<usize, StoreError> {
        let tx = self.db.begin_write()?;
        let removed = {
            let mut t = tx.open_table(NONCES)?;
            let expired: Vec<(u64, u64)> = t
                .iter()?
                .filter_map(|r| r.ok())
                .filter(|(_, v)| v.value() < now_ms)
                .map(|(k, _)| k.value())
                .collect();
            for k in &expired {
                t.remove(k)?;
            }
            expired.len()
        };
        tx.commit()?;
        Ok(removed)
    }

    /// Persists a receipt durably. Called before the response completes.
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
