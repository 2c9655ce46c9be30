//! The gateway's HTTP server: routes, limits, health, metrics, and the background refresh of
//! the node registry.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use sortition_types::{Amount, ModelId};
use tokio::net::TcpListener;

use crate::routes;
use crate::state::GatewayState;

/// Read-only questions about the router's node set, answered through its public API.
pub trait RouterQueries {
    /// The highest stack price among nodes serving `model`, or `None` if none does.
    fn worst_price(&self, model: &ModelId) -> Option<Amount>;
    /// Every model some node serves, sorted.
    fn models(&self) -> Vec<ModelId>;
}

impl RouterQueries for crate::router::Router {
    fn worst_price(&self, model: &ModelId) -> Option<Amount> {
        self.in_flight()
            .keys()
            .filter_map(|id| self.node(*id))
            .filter(|n| n.models.contains(model))
            .map(crate::directory::unit_price)
            .max()
    }

    fn models(&self) -> Vec<ModelId> {
        let mut v: Vec<ModelId> = self
            .in_flight()
            .keys()
            .filter_map(|id| self.node(*id))
            .flat_map(|n| n.models.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The gateway's router over its state, `/metrics` included.
pub fn router(state: Arc<GatewayState>) -> Router {
    router_with(state, true)
}

/// `/metrics` alone, for a listener of its own.
pub fn metrics_router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(sortition_api::unknown_route)
        .with_state(state)
}

/// The gateway's router over its state; `/metrics` only when `with_metrics` (otherwise it is
/// served on its own address by [`metrics_router`]).
pub fn router_with(state: Arc<GatewayState>, with_metrics: bool) -> Router {
    let limit = state.config.max_body_bytes;
    let api = Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/embeddings", post(routes::embeddings))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route(
            sortition_confidential::wire::CONFIDENTIAL_CHAT_PATH,
            post(crate::confidential::chat_completions),
        )
        .route("/health", get(health))
        .route("/openapi.json", get(openapi));
    let api = if with_metrics {
        api.route("/metrics", get(metrics))
    } else {
        api
    };
    api.fallback(sortition_api::unknown_route)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(move |r| async move {
            sortition_api::payload_too_large_to_openai(r, limit)
        }))
        .with_state(state)
}

/// `GET /health`: `"ok"` (200), or `"degraded"` (503) with the reason while the store cannot
/// write (requests are then refused with 503 until it can; it recovers by itself).
async fn health(State(g): State<Arc<GatewayState>>) -> impl IntoResponse {
    let nodes = g.router.lock().await.in_flight().len();
    match g.store.degraded() {
        None => (
            axum::http::StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok", "nodes": nodes})),
        ),
        Some(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "degraded", "reason": reason, "nodes": nodes})),
        ),
    }
}

async fn metrics(State(g): State<Arc<GatewayState>>) -> impl IntoResponse {
    g.metrics.render("sortition_gateway")
}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(sortition_api::openapi::document(
        sortition_api::openapi::Surface::Gateway,
    ))
}

/// Keeps the router's node set in step with the ledger, and its health view in step with
/// the nodes' `/health` probes ([`crate::health`]), until `shutdown`.
pub async fn refresh_loop(g: Arc<GatewayState>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = g.refresh_nodes().await {
            tracing::warn!(error = %e, "could not refresh nodes from the ledger");
        }
        crate::health::probe_round(&g).await;
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(g.config.refresh_interval) => {}
        }
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    state: Arc<GatewayState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
