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

/// Serves on an already bound listener (tests bind port 0 and read the address first).
pub async fn run_on(
    cfg: GatewayRunConfig,
    key: Keypair,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = open_store(&cfg).await?;
    let client = LedgerClient::new(cfg.ledger_url.clone());
    // Fail fast on a wrong URL instead of serving 503s forever.
    client.status().await.map_err(|e| RunError::Ledger {
        url: cfg.ledger_url.clone(),
        message: e.to_string(),
    })?;
    let port = Arc::new(HttpLedger {
        client: client.clone(),
        account: key.clone(),
    });
    let router = Router::new(RouterWeights::default(), BreakerConfig::default());
    let state = GatewayState::new(cfg.config.clone(), store.clone(), port, key, router)?;
    match state.refresh_nodes().await {
        Ok(n) => tracing::info!(nodes = n, "node registry loaded"),
        Err(e) => tracing::warn!(error = %e, "could not read nodes from the ledger yet"),
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let refresh = {
        let mut rx = stop_rx.clone();
        tokio::spawn(crate::server::refresh_loop(state.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    // Payload custody for audits, and closing stacks their nodes claimed.
    let follow = {
        let mut rx = stop_rx.clone();
        tokio::spawn(crate::audits::follow(
            state.clone(),
            client,
            cfg.data_dir.join("audit-cursor"),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ))
    };
    let metrics = match cfg.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { addr, source })?;
            tracing::info!(addr = %l.local_addr().map_err(RunError::Serve)?, "metrics listening");
            let mut rx = stop_rx.clone();
            let app = crate::server::metrics_router(state.clone());
            Some(tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await
            }))
        }
        None => None,
    };
    let api = crate::server::router_with(state, cfg.metrics_listen.is_none());
    let served = axum::serve(listener, api)
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop_tx.send(true);
    let _ = refresh.await;
    let _ = follow.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    store.close().await;
    served.map_err(RunError::Serve)
}
