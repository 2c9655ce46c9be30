//! The gateway's shared state and configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sortition_api::metrics::Registry;
use sortition_types::{Keypair, NodeId};
use tokio::sync::Mutex;

use crate::directory::LedgerPort;
use crate::limits::{ConcurrencyLimit, KeyRateLimiter};
use crate::router::{Outcome, Router};
use crate::store::GatewayStore;

/// Gateway settings, with defaults that suit a devnet.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Units bought per stack (at least what one request needs).
    pub stack_units: u64,
    /// How long a signed node request stays valid.
    pub request_validity: Duration,
    /// How long request payloads are kept for auditors.
    pub payload_retention: Duration,
    /// Requests in flight across all keys before 429.
    pub max_in_flight: usize,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Browser origins allowed to call the API (CORS: preflights answered, headers on
    /// responses); `"*"` allows any; empty (the default) sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// Time allowed for a node's response headers (non-streaming: the whole generation).
    pub upstream_timeout: Duration,
    /// How often the node registry is re-read from the ledger.
    pub refresh_interval: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            stack_units: 200_000,
            request_validity: Duration::from_secs(120),
            payload_retention: Duration::from_secs(24 * 3600),
            max_in_flight: 256,
            max_body_bytes: 4 * 1024 * 1024,
            cors_origins: Vec::new(),
            upstream_timeout: Duration::from_secs(300),
            refresh_interval: Duration::from_secs(2),
        }
    }
}

/// Everything the handlers share.
pub struct GatewayState {
    pub config: GatewayConfig,
    pub store: GatewayStore,
    pub limiter: KeyRateLimiter,
    pub in_flight: ConcurrencyLimit,
    pub router: Mutex<Router>,
    pub ledger: Arc<dyn LedgerPort>,
    /// The gateway's ledger account: owns the stacks it buys and signs node requests.
    pub account: Keypair,
    pub http: reqwest::Client,
    pub metrics: Registry,
    /// Serializes stack purchases so concurrent requests don't buy one each.
    pub buying: Mutex<()>,
    /// Synchronous quorum per model, from the models' ledger policies.
    pub quorums: std::sync::RwLock<std::collections::HashMap<sortition_types::ModelId, u8>>,
}

impl GatewayState {
    pub fn new(
        config: GatewayConfig,
        store: GatewayStore,
        ledger: Arc<dyn LedgerPort>,
        account: Keypair,
        router: Router,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(config.upstream_timeout)
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Arc::new(GatewayState {
            in_flight: ConcurrencyLimit::new(config.max_in_flight),
            config,
            store,
            limiter: KeyRateLimiter::new(),
            router: Mutex::new(router),
            ledger,
            account,
            http,
            metrics: Registry::default(),
            buying: Mutex::new(()),
            quorums: Default::default(),
        }))
    }

    /// Reports how a dispatched request ended to the router.
    pub async fn finish(&self, node: NodeId, outcome: Outcome) {
        self.router
            .lock()
            .await
            .finish(node, outcome, Instant::now());
        let label = match outcome {
            Outcome::Success { .. } => "success",
            Outcome::Failure => "failure",
            Outcome::Misbehaved => "misbehaved",
            Outcome::Cancelled => "cancelled",
        };
        self.metrics.inc("upstream_total", label, 1);
    }

    /// The quorum the model's policy demands (1: none).
    pub fn policy_quorum(&self, model: &sortition_types::ModelId) -> u8 {
        self.quorums
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .copied()
            .unwrap_or(1)
    }

    /// Re-reads the node registry and the models' quorum policies from the ledger.
    pub async fn refresh_nodes(&self) -> Result<usize, String> {
        let quorums = self.ledger.model_quorums().await?;
        *self.quorums.write().unwrap_or_else(|e| e.into_inner()) = quorums;
        let nodes = self.ledger.active_nodes().await?;
        let mut r = self.router.lock().await;
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        let stale: Vec<NodeId> = r
            .in_flight()
            .keys()
            .copied()
            .filter(|id| !ids.contains(id))
            .collect();
        for id in stale {
            r.remove_node(id);
        }
        let n = nodes.len();
        for v in nodes {
            r.upsert_node(v);
        }
        Ok(n)
    }
}
