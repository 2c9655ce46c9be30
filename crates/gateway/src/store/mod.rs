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
//! Does not own: HTTP, rate limiting, the ledger's view of stacks (this is the gateway's cache
//! of what it bought), or the plaintext of any key.

mod accounts;
mod billing;
mod schema;
mod stacks;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use sortition_api::{ApiError, ErrorKind};
use sortition_types::{Amount, StackId};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Transaction};

use crate::keys::{KeyError, ServerSecret};

pub use accounts::{AuthError, AuthedKey, Charged, KeyInfo, User};
pub use billing::{Bill, Billed};
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
    #[error("key budget exceeded: budget {budget}, spent {spent}, cost {cost}")]
    OverBudget {
        budget: Amount,
        spent: Amount,
        cost: Amount,
    },
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
                ErrorKind::InsufficientFunds,
                "insufficient_credits",
                e.to_string(),
            ),
            S::OverBudget { .. } => ApiError::new(
                ErrorKind::InsufficientFunds,
                "key_budget_exceeded",
                e.to_string(),
            ),
            S::StackInactive(_) | S::StackExhausted { .. } => ApiError::new(
                ErrorKind::InsufficientFunds,
                "stack_exhausted",
                e.to_string(),
            ),
            S::UserNotFound(_) | S::KeyNotFound(_) | S::StackNotFound(_) => {
                ApiError::new(ErrorKind::NotFound, "not_found", e.to_string())
            }
            S::OutOfRange(_) => ApiError::invalid("out_of_range", e.to_string()),
            S::Db(_) | S::UnsupportedUrl(_) | S::Key(_) | S::OverRelease { .. } | S::Corrupt(_) => {
                tracing::error!(error = %e, "gateway store failure");
                ApiError::internal("the gateway's database failed")
            }
        }
    }
}

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
}

/// The SQLite file inside the data directory.
pub const SQLITE_FILE: &str = "gateway.db";

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
        std::fs::create_dir_all(data_dir).map_err(|source| KeyError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(SQLITE_FILE);
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
        };
        schema::migrate(&store).await?;
        if let (Backend::Sqlite, Some(every)) = (backend, flush) {
            // Checkpoints run on a connection of their own, beside the requests' one.
            let checkpointer = sqlite_options(CHECKPOINTER_PRAGMAS).connect(url).await?;
            tokio::spawn(checkpoint_wal(checkpointer, store.pool.clone(), every));
        }
        Ok(store)
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
    match backend {
        Backend::Postgres => AnyPoolOptions::new().max_connections(16),
        // Without an fsync per commit, checkpoints (which fsync) run in the background.
        Backend::Sqlite if flush.is_some() => {
            sqlite_options("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0")
        }
        Backend::Sqlite => sqlite_options("PRAGMA synchronous = FULL"),
    }
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

/// WAL frames (database pages, 4 KiB each) past which a checkpoint also starts the WAL over:
/// the WAL file stays below about 32 MiB plus what is written between two checkpoints.
const WAL_RESTART_FRAMES: i64 = 8192;

/// Checkpoints the WAL every `every` on `checkpointer` until the requests' pool closes. With
/// `synchronous = NORMAL` a checkpoint `fsync`s the WAL before copying it into the database
/// (and the database after), so commits reach the disk within that window; running it here,
/// with automatic checkpoints off, keeps those `fsync`s off the requests' commits.
async fn checkpoint_wal(checkpointer: AnyPool, requests: AnyPool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !requests.is_closed() {
        tick.tick().await;
        if let Err(e) = checkpoint(&checkpointer, &requests).await
            && !requests.is_closed()
        {
            tracing::error!(error = %e, "could not checkpoint the gateway's SQLite WAL");
        }
    }
    checkpointer.close().await;
}

/// One checkpoint. The bulk of it is PASSIVE: the requests go on meanwhile. But the WAL starts
/// over (instead of growing) only when a write begins with every frame copied, and under
/// steady traffic a commit always lands during the copy's `fsync`s, so the WAL would grow
/// without bound. Past [`WAL_RESTART_FRAMES`] the requests' connection is therefore held while
/// a RESTART checkpoint copies the few frames written meanwhile (one short pause); the next
/// write then starts the WAL over, into pages of the file already cached.
async fn checkpoint(checkpointer: &AnyPool, requests: &AnyPool) -> Result<(), sqlx::Error> {
    use sqlx::Row;
    // Columns: busy, frames in the WAL, frames copied.
    let passive = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(checkpointer)
        .await?;
    if passive.try_get::<i64, _>(1)? >= WAL_RESTART_FRAMES {
        let _held = requests.acquire().await?;
        sqlx::query("PRAGMA wal_checkpoint(RESTART)")
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
