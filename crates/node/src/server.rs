//! The node's HTTP server: routes, body limit, health and metrics.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::routes;
use crate::service::NodeState;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The node's router over its state.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/embeddings", post(routes::embeddings))
        .route("/v1/models", get(routes::models))
        .route(
            sortition_confidential::wire::CONFIDENTIAL_CHAT_PATH,
            post(crate::confidential::chat_completions),
        )
        .route(
            "/sortition/v1/audits/{id}/payload",
            post(routes::audit_payload),
        )
        .route(
            "/sortition/v1/audits/{id}/sealed-payload",
            post(crate::confidential::audit_sealed_payload),
        )
        .route(
            "/sortition/v1/stacks/{stack}/receipts/{sequence}/proof",
            get(routes::receipt_proof),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(sortition_api::unknown_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(|r| async move {
            sortition_api::payload_too_large_to_openai(r, MAX_BODY_BYTES)
        }))
        .with_state(state)
}

async fn health(State(s): State<Arc<NodeState>>) -> impl IntoResponse {
    let attester = s.confidential.as_ref().map(|r| r.label());
    // Requests waiting for a batch slot: gateways weigh it in their market score.
    let queue_depth: u64 = s.chat.values().map(|m| m.engine.stats().queued).sum();
    axum::Json(serde_json::json!({
        "status": "ok", "node": s.id, "models": s.model_names(), "attester": attester,
        "queue_depth": queue_depth,
    }))
}

async fn metrics(State(s): State<Arc<NodeState>>) -> impl IntoResponse {
    s.refresh_engine_gauges();
    s.metrics.render("sortition_node")
}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(sortition_api::openapi::document(
        sortition_api::openapi::Surface::Node,
    ))
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    state: Arc<NodeState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
