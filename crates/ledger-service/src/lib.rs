//! Sortition ledger service: runs the pure `sortition-ledger` state machine as a service.
//!
//! Owns: the sequencer actor (batching transactions into blocks, the devnet randomness beacon,
//! block timestamps from the wall clock), durable block storage in redb with replay and state
//! root verification on restart, the HTTP JSON + SSE API.
//! The API's contract is `sortition-ledger-api`; its client is `sortition-ledger-client`.
//!
//! Does not own: any ledger rule (all of those are in `sortition-ledger`), consensus between
//! several sequencers (a BFT engine would replace the single sequencer), or key management.

pub mod api;
pub mod error;
pub mod replica;
pub mod sequencer;
pub mod sse;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use sortition_ledger::Genesis;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use error::{ApiError, ServiceError};
pub use replica::{Replica, ReplicaConfig, start_replica};
pub use sequencer::{Handle, Included, SubmitError};
pub use sortition_ledger_api::Cursor;
use sortition_ledger_client::LedgerClient;

#[derive(Debug, Clone)]
pub struct LedgerServiceConfig {
    /// Where the redb database lives.
    pub data_dir: PathBuf,
    /// Must equal the genesis the database was created with.
    pub genesis: Genesis,
    /// How long the sequencer waits for more transactions after the first of a block.
    pub block_interval: Duration,
    /// A block is sealed at once when this many transactions wait.
    pub max_block_txs: usize,
    /// Empty blocks are sealed after this long without transactions, so deadlines measured in
    /// blocks pass even on an idle network. `None` seals blocks only for transactions.
    pub idle_block_interval: Option<Duration>,
}

impl LedgerServiceConfig {
    pub fn new(data_dir: impl Into<PathBuf>, genesis: Genesis) -> Self {
        LedgerServiceConfig {
            data_dir: data_dir.into(),
            genesis,
            block_interval: Duration::from_millis(2),
            max_block_txs: 2048,
            idle_block_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// Opens storage, replays it and starts the sequencer (inside a tokio runtime). The task
/// finishes once every [`Handle`] is dropped.
pub fn start_sequencer(
    config: &LedgerServiceConfig,
) -> Result<(Handle, tokio::task::JoinHandle<()>), ServiceError> {
    let beacon = sortition_ledger::Beacon::new(&config.genesis.chain_id, &config.genesis.beacon)
        .map_err(|e| ServiceError::Genesis(sortition_ledger::LedgerError::BadBeaconKeys(e)))?;
    let share = store::load_beacon_share(&config.data_dir, &config.genesis, &beacon)?;
    let store = store::Store::open(&config.data_dir, &config.genesis)?;
    let cfg = sequencer::SequencerConfig {
        block_interval: config.block_interval,
        max_block_txs: config.max_block_txs,
        idle_block_interval: config.idle_block_interval,
    };
    sequencer::start(store, config.genesis.clone(), share, cfg)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    config: LedgerServiceConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let (handle, sequencer) = start_sequencer(&config)?;
    serve_handle(handle, listener, shutdown).await?;
    sequencer
        .await
        .map_err(|e| ServiceError::Storage(e.to_string()))
}

/// Serves the API of an already started sequencer.
pub async fn serve_handle(
    handle: Handle,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    axum::serve(listener, api::router(handle))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// A ledger service running in the background (for tests of other crates).
pub struct Background {
    pub url: String,
    pub handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    sequencer: tokio::task::JoinHandle<()>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl Background {
    pub fn client(&self) -> LedgerClient {
        LedgerClient::new(&self.url)
    }
    /// Stops the server and waits until the sequencer has closed the database (other clones
    /// of the handle must be dropped first).
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        let Background {
            handle,
            stop,
            sequencer,
            task,
            ..
        } = self;
        if let Some(s) = stop {
            let _ = s.send(());
        }
        // Graceful shutdown waits for open connections; an event-stream subscriber that never
        // hangs up must not keep the ledger from stopping, so the wait is bounded.
        let mut task = task;
        match tokio::time::timeout(std::time::Duration::from_secs(5), &mut task).await {
            Ok(joined) => joined.map_err(|e| ServiceError::Storage(e.to_string()))??,
            Err(_) => {
                tracing::warn!("ledger API did not drain within 5 s; closing open event streams");
                task.abort();
                let _ = task.await;
            }
        }
        drop(handle);
        sequencer
            .await
            .map_err(|e| ServiceError::Storage(e.to_string()))
    }
}

/// Starts the service on `127.0.0.1:0` and returns its URL and handle.
pub async fn run_in_background(config: LedgerServiceConfig) -> Result<Background, ServiceError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (handle, sequencer) = start_sequencer(&config)?;
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(serve_handle(handle.clone(), listener, async move {
        let _ = rx.await;
    }));
    Ok(Background {
        url,
        handle,
        stop: Some(stop),
        sequencer,
        task,
    })
}
