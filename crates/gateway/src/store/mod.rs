//! The gateway's durable state, in SQLite by default or PostgreSQL, through one code path.
//!
//! Owns: users and their credits, API keys (only keyed hashes), usage records, the stacks the
//! gateway holds on nodes and their unit reservations, and request payloads kept for audit
//! delivery until a retention sweep. Every money or unit change is one conditional `UPDATE`
//! (or one transaction of them), so it never overspends under concurrency.
//!
//! Both databases are reached through sqlx's `Any` driver with `$1`-style placeholders, which
//! both accept; the only per-backend differences are a few DDL words and how a write
//! transaction begins (`BEGIN IMMEDIATE` on SQLite, so writers queue instead of failing).
//!
//! Durability on SQLite: the database runs in WAL mode with `synchronous = NORMAL`, so a commit
//! is a write into the WAL (tens of microseconds) and not an `fsync` (milliseconds on common
//! disks, several per request otherwise). A commit survives the gateway process crashing as
//! soon as it returns; against the machine losing power or the kernel crashing, a background
//! task checkpoints the WAL (which `fsync`s it) every [`StoreOptions::sqlite_flush_interval`]
//! (100 ms by default), so at most that window of committed writes (usage, charges, kept
//! payloads) can be lost there.
//! `StoreOptions { sqlite_flush_interval: None, .. }` restores an `fsync` on every commit. On
//! PostgreSQL every commit is durable as the server is configured (`synchronous_commit`).
//!
//! SQLite is used through one connection (see `pool_options`), plus one for the background
//! checkpoints, which also keep the WAL file bounded under steady traffic (see `checkpoint`).
//!
//! Money is held before work ([`CreditHold`], see `holds`): a request's worst-case cost is
//! taken from its user's credits and its key's budget before any node is asked, and its bill
//! settles that hold to the actual cost. A bill whose charge cannot be made fails whole.
//!
//! Storage faults fail closed and heal: a write that fails is an error to the request (503,
//! `Retry-After`); a connection that a failed `COMMIT` or `ROLLBACK` left believing it is still
//! in a transaction is closed when it comes back to the pool, and the pool opens a fresh one
//! (SQLite rolls a transaction back by itself on a full disk, and the `ROLLBACK` that follows
//! fails); while writes fail the store reports itself degraded ([`GatewayStore::degraded`]),
//! probes once a second, and logs each kind of failure once, then at most every
//! [`faults::REPEAT_LOG_EVERY`] with a count, then its recovery.
//!
//! Files: the data directory is `0700` and `gateway.db` with its `-wal` and `-shm` files
//! `0600` (they hold request bodies kept for audits), created so and tightened on open.
//!
//! Does not own: HTTP, rate limiting, the ledger's view of stacks (this is the gateway's cache
//! of what it bought), or the plaintext of any key.

mod accounts;
mod billing;
pub mod faults;
mod holds;
mod schema;
mod stacks;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sortition_api::{ApiError, ErrorKind};
use sortition_types::{Amount, StackId};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Transaction};

use crate::keys::{KeyError, ServerSecret};

pub use accounts::{AuthError, AuthedKey, Charged, KeyInfo, User};
pub use billing::{Bill, Billed};
pub use holds::{CreditHold, HOLD_TTL, HoldEnded, HoldId};
pub use stacks::{NewUsage, Payload, StackRecord, StackState, UsageRecord, UsageStatus};

/// A gateway user (an account holding credits).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UserId(pub i64);

/// One API key of a user.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct KeyId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user-{}", self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key-{}", self.0)
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("unsupported database URL scheme {0:?}: use sqlite: or postgres:")]
    UnsupportedUrl(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{0} not found")]
    UserNotFound(UserId),
    #[error("{0} not found")]
    KeyNotFound(KeyId),
    #[error("{0} is revoked")]
    KeyRevoked(KeyId),
    #[error("insufficient credits: balance {balance}, cost {cost}")]
    InsufficientCredits { balance: Amount, cost: Amount },
    #[error("key budget exceeded: budget {budget}, spent {spent}, on hold {held}, cost {cost}")]
    OverBudget {
        budget: Amount,
        spent: Amount,
        /// What the key's requests in flight hold.
        held: Amount,
        cost: Amount,
    },
    #[error("{0} was already settled or released")]
    HoldNotFound(HoldId),
    #[error("{0} not found")]
    StackNotFound(StackId),
    #[error("{0} is expired or closed")]
    StackInactive(StackId),
    #[error("{stack} has {available} units free, {requested} requested")]
    StackExhausted {
        stack: StackId,
        available: u64,
        requested: u64,
    },
    #[error("{stack}: cannot settle {requested} units, only {reserved} are reserved")]
    OverRelease {
        stack: StackId,
        reserved: u64,
        requested: u64,
    },
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// The `Result` of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// All store errors become OpenAI-shaped errors here, and only here.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use StoreError as S;
        match &e {
            S::KeyRevoked(_) => {
                ApiError::new(ErrorKind::Authentication, "key_revoked", e.to_string())
            }
            S::InsufficientCredits { .. } => ApiError::new(
                ErrorKind::QuotaExceeded,
                "insufficient_credits",
                e.to_string(),
            ),
            S::OverBudget { .. } => ApiError::new(
                ErrorKind::QuotaExceeded,
                "key_budget_exceeded",
                e.to_string(),
            ),
            // The gateway's own stack on a node, not the user's quota: another try (or node)
            // goes on another stack.
            S::StackInactive(_) | S::StackExhausted { .. } => {
                ApiError::new(ErrorKind::Unavailable, "stack_exhausted", e.to_string())
                    .with_retry_after(1)
            }
            S::UserNotFound(_) | S::KeyNotFound(_) | S::StackNotFound(_) => {
                ApiError::new(ErrorKind::NotFound, "not_found", e.to_string())
            }
            S::OutOfRange(_) => ApiError::invalid("out_of_range", e.to_string()),
            // The database cannot be reached or written (a full disk, a lost server): nothing
            // was served or recorded; the store logs the fault (rate-limited) and heals itself.
            S::Db(_) => ApiError::new(
                ErrorKind::Unavailable,
                "storage_unavailable",
                "the gateway cannot record requests right now; nothing was served or charged",
            )
            .with_retry_after(STORAGE_RETRY_AFTER_SECS),
            S::UnsupportedUrl(_)
            | S::Key(_)
            | S::OverRelease { .. }
            | S::Corrupt(_)
            | S::HoldNotFound(_) => {
                tracing::error!(error = %e, "gateway store failure");
                ApiError::internal("the gateway's database failed")
            }
        }
    }
}

/// The `Retry-After` of a request refused because the database cannot be written.
pub const STORAGE_RETRY_AFTER_SECS: u64 = 5;

/// Which database is behind the pool.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of_url(url: &str) -> Result<Backend> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(StoreError::UnsupportedUrl(other.to_string())),
        }
    }
}

/// The gateway's store. Cheap to clone: a pool handle and the server secret.
#[derive(Clone, Debug)]
pub struct GatewayStore {
    /// The connection pool (`Any` over SQLite or PostgreSQL).
    pool: AnyPool,
    /// Decides DDL words and how write transactions begin.
    backend: Backend,
    /// Keys API keys' hashes; the store never sees a key without it.
    secret: ServerSecret,
    /// Which kinds of write are failing now, for `/health` and a rate-limited log.
    faults: Arc<faults::Faults>,
}

/// The SQLite file inside the data directory.
pub const SQLITE_FILE: &str = "gateway.db";

/// The database's WAL and shared memory, beside it. SQLite creates them with the database's
/// mode; one found looser (left by an older version) is tightened.
const SQLITE_SIDE_FILES: [&str; 2] = ["-wal", "-shm"];

impl GatewayStore {
    /// Opens (creating if needed) `<data_dir>/gateway.db` in WAL mode.
    pub async fn open_sqlite(data_dir: &Path, secret: ServerSecret) -> Result<GatewayStore> {
        Self::open_sqlite_with(data_dir, secret, &StoreOptions::default()).await
    }

    /// [`GatewayStore::open_sqlite`] with explicit options.
    pub async fn open_sqlite_with(
        data_dir: &Path,
        secret: ServerSecret,
        options: &StoreOptions,
    ) -> Result<GatewayStore> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        sortition_api::private_fs::private_dir(data_dir).map_err(io(data_dir))?;
        let path = data_dir.join(SQLITE_FILE);
        // Created 0600 before SQLite opens it, so its -wal and -shm files (which take the
        // database's mode) are private from their first byte; tightened if found looser.
        sortition_api::private_fs::private_file(&path).map_err(io(&path))?;
        for suffix in SQLITE_SIDE_FILES {
            let file = data_dir.join(format!("{SQLITE_FILE}{suffix}"));
            if file.exists() {
                sortition_api::private_fs::private_file(&file).map_err(io(&file))?;
            }
        }
        Self::open_with(
            &format!("sqlite://{}?mode=rwc", path.display()),
            secret,
            options,
        )
        .await
    }

    /// Opens a `sqlite:` or `postgres:` URL and brings the schema up to date (idempotent, and
    /// safe when several gateways start at once), with the default [`StoreOptions`].
    pub async fn open(url: &str, secret: ServerSecret) -> Result<GatewayStore> {
        Self::open_with(url, secret, &StoreOptions::default()).await
    }

    /// [`GatewayStore::open`] with explicit options.
    pub async fn open_with(
        url: &str,
        secret: ServerSecret,
        options: &StoreOptions,
    ) -> Result<GatewayStore> {
        install_default_drivers();
        let backend = Backend::of_url(url)?;
        let flush = options.sqlite_flush_interval;
        let pool = pool_options(backend, flush).connect(url).await?;
        let store = GatewayStore {
            pool,
            backend,
            secret,
            faults: Arc::default(),
        };
        schema::migrate(&store).await?;
        if let (Backend::Sqlite, Some(every)) = (backend, flush) {
            // Checkpoints run on a connection of their own, beside the requests' one.
            let checkpointer = sqlite_options(CHECKPOINTER_PRAGMAS).connect(url).await?;
            let wal = sqlite_wal_path(url);
            tokio::spawn(checkpoint_wal(checkpointer, store.clone(), every, wal));
        }
        tokio::spawn(maintain(store.clone()));
        Ok(store)
    }

    /// Why the store is degraded (some kind of write failing now), or `None` when it is not.
    pub fn degraded(&self) -> Option<String> {
        self.faults.degraded()
    }

    /// Records how a write of `work` ended: a database error is a fault (logged at a bounded
    /// rate, reported by [`GatewayStore::degraded`]); a success shows writes work again; a
    /// refusal (no credit, no stack) wrote nothing and says neither.
    fn track<T>(&self, work: faults::Work, r: &Result<T>) {
        match r {
            Err(e @ StoreError::Db(_)) => self.faults.failed(work, e),
            Err(_) => {}
            Ok(_) => self.faults.ok(work),
        }
    }

    /// One small write, to learn whether writes work again.
    async fn probe_write(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO store_meta (name, value) VALUES ('write_probe_ms', $1) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for the few callers that need raw access (tests, admin tools).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a write transaction. On SQLite it takes the write lock up front, so concurrent
    /// writers wait (busy timeout) instead of failing on a lock upgrade.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How the store trades durability for commit latency.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// SQLite only: `Some(d)` commits without `fsync` (`synchronous = NORMAL`) and checkpoints
    /// the WAL (`fsync`ing it) every `d` in the background, so a power loss or kernel crash can
    /// lose at most about `d` of commits (a process crash loses none); `None` `fsync`s on every
    /// commit.
    pub sqlite_flush_interval: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sqlite_flush_interval: Some(Duration::from_millis(100)),
        }
    }
}

/// How often a degraded store probes whether writes work again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How often expired credit holds are swept.
const SWEEP_HOLDS_EVERY: Duration = Duration::from_secs(60);

/// The store's own upkeep until its pool closes: expired credit holds are released (at open,
/// then every [`SWEEP_HOLDS_EVERY`]), and while writes fail a small write is tried every
/// [`PROBE_EVERY`], so that the store reports itself healed even with no traffic.
async fn maintain(store: GatewayStore) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep: Option<tokio::time::Instant> = None;
    while !store.pool.is_closed() {
        tick.tick().await;
        if store.faults.is_failing(faults::Work::Writes) {
            let r = store.probe_write().await;
            if !store.pool.is_closed() {
                store.track(faults::Work::Writes, &r);
            }
        }
        if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_HOLDS_EVERY) {
            last_sweep = Some(tokio::time::Instant::now());
            if let Err(e) = store.sweep_holds(now_ms()).await
                && !store.pool.is_closed()
            {
                store.faults.failed(faults::Work::Releases, &e);
            }
        }
    }
}

/// The pool for `backend`.
///
/// SQLite gets one connection. SQLite has one writer at a time: with one connection the
/// gateway's statements wait for it in the pool, in order, each woken the moment it is free,
/// instead of in SQLite's busy handler, which sleeps 1, 2, 5 ms… between tries; and its page
/// cache stays valid (a connection drops its whole cache whenever another one commits, so with
/// several taken in turn, every statement read its pages again). A SQLite connection is a file
/// in this process and cannot go stale, so it is not pinged before each use (a round trip to
/// its worker thread). `flush` decides the durability pragmas (see [`StoreOptions`]).
fn pool_options(backend: Backend, flush: Option<Duration>) -> AnyPoolOptions {
    let options = match backend {
        Backend::Postgres => AnyPoolOptions::new().max_connections(16),
        // Without an fsync per commit, checkpoints (which fsync) run in the background.
        Backend::Sqlite if flush.is_some() => {
            sqlite_options("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0")
        }
        Backend::Sqlite => sqlite_options("PRAGMA synchronous = FULL"),
    };
    options.after_release(|conn, _| Box::pin(still_usable(conn)))
}

/// Whether a connection coming back to the pool may be used again. A transaction left open
/// (dropped on an error) was queued for rollback; once that has run (the ping waits for it),
/// a connection that still believes it is in a transaction had its `COMMIT` or `ROLLBACK`
/// fail — SQLite rolls back by itself on a full disk, and the `ROLLBACK` that follows finds no
/// transaction — and every later `BEGIN` on it would fail ("attempted to call begin_with at
/// non-zero transaction depth"). It is closed instead, and the pool opens a fresh one.
async fn still_usable(conn: &mut sqlx::AnyConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("replacing a database connection stuck in a failed transaction");
        return Ok(false);
    }
    Ok(true)
}

/// One SQLite connection, set up with `pragmas`.
fn sqlite_options(pragmas: &'static str) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                use sqlx::Executor;
                conn.execute(pragmas).await.map(|_| ())
            })
        })
}

/// The checkpointer waits at most 100 ms for another process's lock (the requests' connection
/// is held, not waited for, see [`checkpoint`]), so that it never holds the requests up long.
const CHECKPOINTER_PRAGMAS: &str = "PRAGMA busy_timeout = 100";

/// WAL frames (database pages, 4 KiB each) past which a checkpoint also starts the WAL over
/// (and truncates its file): the WAL file stays below about 32 MiB plus what is written
/// between two checkpoints.
const WAL_RESTART_FRAMES: i64 = 8192;

/// A WAL file this large means the checkpoints lag behind the writes (a loaded machine: the
/// copy and its `fsync`s take long while commits keep landing). The next checkpoint then
/// holds the requests for its whole copy, so the WAL cannot outgrow it further.
const WAL_HOLD_BYTES: u64 = 64 << 20;

/// The WAL file of a SQLite URL (`sqlite://PATH?…`), if it names a file.
fn sqlite_wal_path(url: &str) -> Option<std::path::PathBuf> {
    let path = url.strip_prefix("sqlite://")?;
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:").then(|| format!("{path}-wal").into())
}

/// Checkpoints the WAL every `every` on `checkpointer` until the requests' pool closes. With
/// `synchronous = NORMAL` a checkpoint `fsync`s the WAL before copying it into the database
/// (and the database after), so commits reach the disk within that window; running it here,
/// with automatic checkpoints off, keeps those `fsync`s off the requests' commits.
/// A failing checkpoint (a full disk) is logged once, then at a bounded rate, and reported as
/// a fault until one succeeds.
async fn checkpoint_wal(
    checkpointer: AnyPool,
    store: GatewayStore,
    every: Duration,
    wal: Option<std::path::PathBuf>,
) {
    let requests = &store.pool;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !requests.is_closed() {
        tick.tick().await;
        let lagging = wal
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() >= WAL_HOLD_BYTES);
        match checkpoint(&checkpointer, requests, lagging).await {
            Ok(()) => store.faults.ok(faults::Work::Checkpoints),
            Err(e) if !requests.is_closed() => store.faults.failed(faults::Work::Checkpoints, &e),
            Err(_) => {}
        }
    }
    checkpointer.close().await;
}

/// One checkpoint. The bulk of it is PASSIVE: the requests go on meanwhile. But the WAL starts
/// over (instead of growing) only when a write begins with every frame copied, and under
/// steady traffic a commit always lands during the copy's `fsync`s, so the WAL would grow
/// without bound. Past [`WAL_RESTART_FRAMES`] the requests' connection is therefore held while
/// a TRUNCATE checkpoint copies the few frames written meanwhile (one short pause) and empties
/// the WAL file; the next write starts it over. When `lagging` (the WAL file past
/// [`WAL_HOLD_BYTES`]) the requests are held for the whole copy.
async fn checkpoint(
    checkpointer: &AnyPool,
    requests: &AnyPool,
    lagging: bool,
) -> Result<(), sqlx::Error> {
    use sqlx::Row;
    let early = if lagging {
        Some(requests.acquire().await?)
    } else {
        None
    };
    // Columns: busy, frames in the WAL, frames copied.
    let passive = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(checkpointer)
        .await?;
    if passive.try_get::<i64, _>(1)? >= WAL_RESTART_FRAMES {
        let _held = match early {
            Some(held) => held,
            None => requests.acquire().await?,
        };
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(checkpointer)
            .await?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, for `created` columns.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An amount as the `BIGINT` the database holds.
pub(crate) fn to_db(v: u64, what: &'static str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange(what))
}

/// A `BIGINT` from the database as an unsigned quantity.
pub(crate) fn from_db(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {v}")))
}
