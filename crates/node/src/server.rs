//! The node's HTTP server: routes, body limit, health and metrics.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use sortition_api::{ApiError, ErrorKind};
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
            "/sortition/v1/audits/{id}/payload",
            post(routes::audit_payload),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(body_limit_to_openai))
        .with_state(state)
}

async fn health(State(s): State<Arc<NodeState>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok", "node": s.id, "models": s.model_names()}))
}

async fn metrics(State(s): State<Arc<NodeState>>) -> impl IntoResponse {
    s.metrics.render("sortition_node")
}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(sortition_api::openapi::document(
        sortition_api::openapi::Surface::Node,
    ))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "unknown_route", "no such route")
}

/// axum answers an oversized body with a plain-text 413; give it the OpenAI shape.
async fn body_limit_to_openai(resp: axum::response::Response) -> axum::response::Response {
    if resp.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE
        && resp
            .headers()
            .get("content-type")
            .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"))
    {
        return ApiError::new(
            ErrorKind::PayloadTooLarge,
            "body_too_large",
            format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        )
        .into_response();
    }
    resp
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
