//! Durable block storage in redb. One write transaction per block, committed with
//! `Durability::Immediate` (fsync) before any submitter is acknowledged.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sortition_ledger::{Beacon, BeaconError, BlockContext, Event, Genesis, SecretShare, SignedTx};
use sortition_types::{Hash32, canonical_bytes};

use crate::error::ServiceError;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Each block's finality certificate, under consensus (the engine's encoding); written in the
/// block's own transaction. The embedded sequencer has none.
const CERTIFICATES: TableDefinition<u64, &[u8]> = TableDefinition::new("certificates");

/// The state machine's format: bumped whenever applying the same blocks gives other state
/// roots, so an old database is refused with a clear error instead of a replay mismatch.
/// 1: until challenges and `Unavailable` verdicts (unrecorded then); 2: until receipts named
/// who keeps the request for audits (`Receipt::custody`, withheld requests slashed); 3: until
/// `UpdateNode` could change a node's class (a field more in its encoding); 4: until blocks
/// carried their BLS threshold beacon signature `σ_h` and draws waited for the next block's
/// beacon; 5: until a block's beacon became optional (bridge blocks, a field's encoding
/// changed); 6: since.
pub const FORMAT: u32 = 6;

/// The file in the data directory holding this sequencer's secret beacon share (hex, 0600).
pub const BEACON_SHARE_FILE: &str = "beacon-share";

/// Writes `share` to `dir`'s beacon share file, private from the first byte (0700 directory,
/// 0600 file). The devnet's trusted dealer calls this; see `sortition_ledger::beacon`.
pub fn write_beacon_share(dir: &Path, share: &SecretShare) -> Result<(), ServiceError> {
    let io = |e: std::io::Error| ServiceError::Storage(e.to_string());
    sortition_api::private_fs::private_dir(dir).map_err(io)?;
    let path = dir.join(BEACON_SHARE_FILE);
    sortition_api::private_fs::write_private(&path, share.to_hex()).map_err(io)
}

/// A validator's secret share from its data directory, checked against the genesis' beacon
/// (no fallback: a validator without its share cannot contribute to the beacon).
pub fn load_validator_share(dir: &Path, beacon: &Beacon) -> Result<SecretShare, ServiceError> {
    let path = dir.join(BEACON_SHARE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ServiceError::Beacon(BeaconError::NoShare {
            path: path.display().to_string(),
        }),
        _ => ServiceError::Io(e),
    })?;
    let share = SecretShare::from_hex(&text).map_err(ServiceError::Beacon)?;
    beacon.check_share(&share).map_err(ServiceError::Beacon)?;
    Ok(share)
}

/// This sequencer's secret share, checked against the genesis' beacon: the data directory's
/// share file, or — only for a devnet genesis that names the public insecure test group and
/// with no file present — that group's published share (see
/// `sortition_ledger::beacon::insecure_test_group`).
pub fn load_beacon_share(
    dir: &Path,
    genesis: &Genesis,
    beacon: &Beacon,
) -> Result<SecretShare, ServiceError> {
    let path = dir.join(BEACON_SHARE_FILE);
    let share = match std::fs::read_to_string(&path) {
        Ok(text) => SecretShare::from_hex(&text).map_err(ServiceError::Beacon)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let test = sortition_ledger::beacon::insecure_test_group().0;
            if !(genesis.devnet && genesis.beacon == test) {
                return Err(ServiceError::Beacon(BeaconError::NoShare {
                    path: path.display().to_string(),
                }));
            }
            tracing::warn!(
                "the genesis names the insecure test beacon (its secret is public): anyone can \
                 predict this ledger's audits; deal a fresh group for anything facing real nodes"
            );
            sortition_ledger::beacon::insecure_test_share().map_err(ServiceError::Beacon)?
        }
        Err(e) => return Err(ServiceError::Io(e)),
    };
    beacon.check_share(&share).map_err(ServiceError::Beacon)?;
    Ok(share)
}

/// What is kept per block: enough to replay it and to check the replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlock {
    pub ctx: BlockContext,
    pub txs: Vec<SignedTx>,
    /// sha256 of each transaction's canonical result (events or error).
    pub result_hashes: Vec<Hash32>,
    pub state_root: Hash32,
}

pub struct Store {
    /// `None` only for the moment [`Store::reopen`] swaps it.
    db: std::sync::RwLock<Option<Database>>,
    path: std::path::PathBuf,
    /// Failure injection for tests: this many coming [`Store::append`]s fail.
    fail_appends: std::sync::atomic::AtomicU32,
}

/// The open database, or a storage error while it is being reopened.
fn opened(g: &Option<Database>) -> Result<&Database, ServiceError> {
    g.as_ref()
        .ok_or_else(|| ServiceError::Storage("the database is being reopened".into()))
}

fn err(e: impl Into<redb::Error>) -> ServiceError {
    ServiceError::Storage(e.into().to_string())
}

impl Store {
    /// Opens (or creates) the database; a database made for another genesis is refused.
    pub fn open(dir: &Path, genesis: &Genesis) -> Result<Store, ServiceError> {
        // Private from the first byte: 0700 directory, 0600 database (tightened when looser).
        let io = |e: std::io::Error| ServiceError::Storage(e.to_string());
        sortition_api::private_fs::private_dir(dir).map_err(io)?;
        let path = dir.join("ledger.redb");
        sortition_api::private_fs::private_file(&path).map_err(io)?;
        let db = Database::create(&path).map_err(err)?;
        let want = canonical_bytes(genesis);
        let w = db.begin_write().map_err(err)?;
        {
            let mut meta = w.open_table(META).map_err(err)?;
            let stored = meta
                .get("genesis")
                .map_err(err)?
                .map(|v| v.value().to_vec());
            let format = meta
                .get("format")
                .map_err(err)?
                .and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
                .map(u32::from_le_bytes);
            match stored {
                Some(bytes) if bytes != want => return Err(ServiceError::GenesisMismatch),
                Some(_) => {
                    let stored = format.unwrap_or(1);
                    if stored != FORMAT {
                        return Err(ServiceError::FormatMismatch {
                            stored,
                            current: FORMAT,
                        });
                    }
                }
                None => {
                    meta.insert("genesis", want.as_slice()).map_err(err)?;
                    meta.insert("format", FORMAT.to_le_bytes().as_slice())
                        .map_err(err)?;
                }
            }
            w.open_table(BLOCKS).map_err(err)?;
            w.open_table(EVENTS).map_err(err)?;
            w.open_table(CERTIFICATES).map_err(err)?;
        }
        w.commit().map_err(err)?;
        Ok(Store {
            db: std::sync::RwLock::new(Some(db)),
            path,
            fail_appends: Default::default(),
        })
    }

    /// Closes and opens the database file again: after a failed write (a full disk, an I/O
    /// error) redb may refuse every later transaction until it is reopened.
    pub fn reopen(&self) -> Result<(), ServiceError> {
        let mut g = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(g.take());
        *g = Some(Database::create(&self.path).map_err(err)?);
        Ok(())
    }

    /// Makes the next `n` [`Store::append`]s fail as a full disk would (tests).
    pub fn fail_next_appends(&self, n: u32) {
        self.fail_appends
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Persists a block, its events and its finality certificate (if any) durably, in one
    /// transaction.
    pub fn append(
        &self,
        block: &StoredBlock,
        events: &[Event],
        certificate: Option<&[u8]>,
    ) -> Result<(), ServiceError> {
        use std::sync::atomic::Ordering;
        if self
            .fail_appends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ServiceError::Storage(
                "injected failure: no space left on device".into(),
            ));
        }
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        let mut w = opened(&g)?.begin_write().map_err(err)?;
        w.set_durability(Durability::Immediate)
            .map_err(|e| ServiceError::Storage(e.to_string()))?;
        {
            let mut blocks = w.open_table(BLOCKS).map_err(err)?;
            blocks
                .insert(block.ctx.height, canonical_bytes(block).as_slice())
                .map_err(err)?;
            let ev =
                serde_json::to_vec(events).map_err(|e| ServiceError::Storage(e.to_string()))?;
            let mut t = w.open_table(EVENTS).map_err(err)?;
            t.insert(block.ctx.height, ev.as_slice()).map_err(err)?;
            if let Some(c) = certificate {
                let mut t = w.open_table(CERTIFICATES).map_err(err)?;
                t.insert(block.ctx.height, c).map_err(err)?;
            }
        }
        w.commit().map_err(err)
    }

    /// The finality certificate stored with block `height`, if any.
    pub fn certificate(&self, height: u64) -> Result<Option<Vec<u8>>, ServiceError> {
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        let r = opened(&g)?.begin_read().map_err(err)?;
        let t = r.open_table(CERTIFICATES).map_err(err)?;
        Ok(t.get(height).map_err(err)?.map(|v| v.value().to_vec()))
    }

    /// The block at `height`, if stored.
    pub fn block(&self, height: u64) -> Result<Option<StoredBlock>, ServiceError> {
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        let r = opened(&g)?.begin_read().map_err(err)?;
        let t = r.open_table(BLOCKS).map_err(err)?;
        let Some(v) = t.get(height).map_err(err)? else {
            return Ok(None);
        };
        sortition_types::encoding::from_canonical_bytes(v.value())
            .map(Some)
            .map_err(|e| ServiceError::Storage(e.to_string()))
    }

    /// All blocks in height order.
    pub fn blocks(&self) -> Result<Vec<StoredBlock>, ServiceError> {
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        let r = opened(&g)?.begin_read().map_err(err)?;
        let t = r.open_table(BLOCKS).map_err(err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(err)? {
            let (_, v) = item.map_err(err)?;
            let b: StoredBlock = sortition_types::encoding::from_canonical_bytes(v.value())
                .map_err(|e| ServiceError::Storage(e.to_string()))?;
            out.push(b);
        }
        Ok(out)
    }

    /// Events of blocks `from..=to`, each with its height.
    pub fn events(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<Event>)>, ServiceError> {
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        let r = opened(&g)?.begin_read().map_err(err)?;
        let t = r.open_table(EVENTS).map_err(err)?;
        let mut out = Vec::new();
        for item in t.range(from..=to).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            let ev: Vec<Event> = serde_json::from_slice(v.value())
                .map_err(|e| ServiceError::Storage(e.to_string()))?;
            out.push((k.value(), ev));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sortition_types::Keypair;

    #[test]
    fn databases_of_another_format_are_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = Genesis::devnet("devnet", Keypair::from_secret([7; 32]).public());
        drop(Store::open(dir.path(), &g).expect("fresh database"));
        drop(Store::open(dir.path(), &g).expect("same format reopens"));
        {
            // A database written before formats were recorded.
            let db = Database::create(dir.path().join("ledger.redb")).expect("db");
            let w = db.begin_write().expect("write");
            w.open_table(META)
                .expect("meta")
                .remove("format")
                .expect("remove");
            w.commit().expect("commit");
        }
        match Store::open(dir.path(), &g) {
            Err(ServiceError::FormatMismatch { stored: 1, current }) => assert_eq!(current, FORMAT),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("an old database was opened"),
        }
        {
            // A database of the previous recorded format.
            let db = Database::create(dir.path().join("ledger.redb")).expect("db");
            let w = db.begin_write().expect("write");
            w.open_table(META)
                .expect("meta")
                .insert("format", (FORMAT - 1).to_le_bytes().as_slice())
                .expect("insert");
            w.commit().expect("commit");
        }
        match Store::open(dir.path(), &g) {
            Err(ServiceError::FormatMismatch { stored, current }) => {
                assert_eq!((stored, current), (FORMAT - 1, FORMAT))
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a database of the previous format was opened"),
        }
    }
}
