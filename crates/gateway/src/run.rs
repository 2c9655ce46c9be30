//! Running a gateway as a service: open its store, connect to the ledger, keep the node
//! registry fresh, and serve the OpenAI API until shutdown.
//!
//! Owns: wiring the gateway's parts together from one [`GatewayRunConfig`]. Does not own:
//! reading TOML, environment or flags (the binary does that) nor the account key file format
//! (the caller loads the key and hands it over).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sortition_ledger_client::LedgerClient;
use sortition_types::Keypair;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::keys::{KeyError, ServerSecret};
use crate::ledger::HttpLedger;
use crate::router::{BreakerConfig, Router, RouterWeights};
use crate::state::{GatewayConfig, GatewayState};
use crate::store::{GatewayStore, StoreError, StoreOptions};

/// Everything a gateway service needs, already validated by whoever built it.
#[derive(Clone, Debug)]
pub struct GatewayRunConfig {
    /// Address the OpenAI API listens on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Serve `/metrics` on this address instead of the API's (keep it off a public
    /// interface); `None` serves it beside the API.
    pub metrics_listen: Option<SocketAddr>,
    /// The ledger the gateway reads nodes from and buys stacks on.
    pub ledger_url: String,
    /// Holds the server secret (keyed API-key hashes) and, without `database_url`, the
    /// SQLite database.
    pub data_dir: PathBuf,
    /// `postgres://…` (or `sqlite:…`) to share users and keys between gateway replicas;
    /// `None` uses `<data_dir>/gateway.db`.
    pub database_url: Option<String>,
    /// Where the gateway's ledger account key lives (for messages; the key is passed in).
    pub account_key: PathBuf,
    /// Limits, timeouts and stack sizes.
    pub config: GatewayConfig,
    /// The store's durability trade-off (SQLite only).
    pub store: StoreOptions,
}

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("server secret: {0}")]
    Secret(#[from] KeyError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("ledger {url}: {message}")]
    Ledger { url: String, message: String },
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Opens the store named by the config: PostgreSQL/SQLite URL if given, else the data dir.
pub async fn open_store(cfg: &GatewayRunConfig) -> Result<GatewayStore, RunError> {
    let secret = ServerSecret::load_or_create(&cfg.data_dir)?;
    Ok(match &cfg.database_url {
        Some(url) => GatewayStore::open_with(url, secret, &cfg.store).await?,
        None => GatewayStore::open_sqlite_with(&cfg.data_dir, secret, &cfg.store).await?,
    })
}

/// Binds `cfg.listen` and serves until `shutdown` resolves.
pub async fn run(
    cfg: GatewayRunConfig,
    key: Keypair,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: cfg.listen,
            source,
        })?;
    run_on(cfg, key, listener, shutdown).await
}

/// Serves on `listener` until `shutdown` completes (or serving fails), then stops the
/// gateway's duties and closes its store.
pub async fn run_on(
    cfg: GatewayRunConfig,
    key: Keypair,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let mut running = start(cfg, key, listener).await?;
    tokio::select! {
        _ = shutdown => running.shutdown().await,
        served = &mut running.server => {
            running.stop_duties().await;
            served.map_err(|e| RunError::Serve(std::io::Error::other(e)))?
        }
    }
}

/// A gateway serving in the background: its API, the node registry's refresh, payload custody
/// for audits (which also closes the stacks their nodes claimed) and, when configured, its
/// metrics listener. What `sortition gateway` runs and the devnet embeds.
pub struct RunningGateway {
    pub state: Arc<GatewayState>,
    /// `http://ADDR` of the API listener.
    pub url: String,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), RunError>>,
    duties: Vec<tokio::task::JoinHandle<()>>,
}

/// How long open requests get to finish once the gateway is asked to stop; connections still
/// open then are dropped: their credit holds are released with their guards and their stack
/// units by their leases' drop (on tasks that run while the duties stop, before the store
/// closes); nothing is billed for them.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// How long each background duty, and then the store, get to wind down after the API stopped.
const DUTY_LIMIT: Duration = Duration::from_secs(10);

impl RunningGateway {
    /// Stops serving (open requests get [`DRAIN_LIMIT`] to finish), then the duties, then
    /// closes the store. Every step is bounded, so a stuck connection or duty cannot keep a
    /// stopping gateway alive.
    pub async fn shutdown(mut self) -> Result<(), RunError> {
        let _ = self.stop.send(true);
        let served = match tokio::time::timeout(DRAIN_LIMIT, &mut self.server).await {
            Ok(served) => Some(served),
            Err(_) => {
                tracing::warn!(limit = ?DRAIN_LIMIT, "requests still open at the drain limit; dropping them");
                self.server.abort();
                None
            }
        };
        self.stop_duties().await;
        match served {
            Some(served) => served.map_err(|e| RunError::Serve(std::io::Error::other(e)))?,
            None => Ok(()),
        }
    }

    async fn stop_duties(&mut self) {
        let _ = self.stop.send(true);
        for mut d in self.duties.drain(..) {
            if tokio::time::timeout(DUTY_LIMIT, &mut d).await.is_err() {
                tracing::warn!(limit = ?DUTY_LIMIT, "a background duty did not stop in time; aborting it");
                d.abort();
            }
        }
        if tokio::time::timeout(DUTY_LIMIT, self.state.store.close())
            .await
            .is_err()
        {
            tracing::warn!(limit = ?DUTY_LIMIT, "the store did not close in time (a connection is still held)");
        }
    }
}

/// Opens the store, checks the ledger, loads the node registry and starts serving on
/// `listener` with every duty.
pub async fn start(
    cfg: GatewayRunConfig,
    key: Keypair,
    listener: TcpListener,
) -> Result<RunningGateway, RunError> {
    let store = open_store(&cfg).await?;
    let client = LedgerClient::new(cfg.ledger_url.clone());
    client.status().await.map_err(|e| RunError::Ledger {
        url: cfg.ledger_url.clone(),
        message: e.to_string(),
    })?;
    let port = Arc::new(HttpLedger {
        client: client.clone(),
        account: key.clone(),
    });
    let router = Router::new(RouterWeights::default(), BreakerConfig::default());
    let state = GatewayState::new(cfg.config.clone(), store, port, key, router)?;
    match state.refresh_nodes().await {
        Ok(n) => tracing::info!(nodes = n, "node registry loaded"),
        Err(e) => tracing::warn!(error = %e, "could not read nodes from the ledger yet"),
    }
    let url = format!("http://{}", listener.local_addr().map_err(RunError::Serve)?);
    let (stop, stop_rx) = watch::channel(false);
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut duties = vec![
        tokio::spawn(crate::server::refresh_loop(state.clone(), stopped())),
        // Payload custody for audits, and closing stacks their nodes claimed.
        tokio::spawn(crate::audits::follow(
            state.clone(),
            client,
            cfg.data_dir.join("audit-cursor"),
            stopped(),
        )),
    ];
    if let Some(addr) = cfg.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })?;
        tracing::info!(addr = %l.local_addr().map_err(RunError::Serve)?, "metrics listening");
        let app = crate::server::metrics_router(state.clone());
        let until = stopped();
        duties.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).with_graceful_shutdown(until).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        }));
    }
    let api = crate::server::router_with(state.clone(), cfg.metrics_listen.is_none());
    let until = stopped();
    let server = tokio::spawn(async move {
        axum::serve(listener, api)
            .with_graceful_shutdown(until)
            .await
            .map_err(RunError::Serve)
    });
    Ok(RunningGateway {
        state,
        url,
        stop,
        server,
        duties,
    })
}
