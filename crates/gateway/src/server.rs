//! The gateway's HTTP server: routes, limits, health, metrics, and the background refresh of
//! the node registry.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::routes;
use crate::state::GatewayState;

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
    let api = match cors(&state.config.cors_origins) {
        Some(layer) => api.layer(layer),
        None => api,
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
/// The CORS layer for `origins` (`"*"` for any), or none when the list is empty: browsers'
/// preflights are answered and responses carry the headers a browser app needs, the
/// receipt and node headers included.
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(sortition_api::CONSTRAINTS_HEADER),
            ])
            .expose_headers([
                HeaderName::from_static(sortition_api::RECEIPT_HEADER),
                HeaderName::from_static(sortition_api::NODE_HEADER),
                header::RETRY_AFTER,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    fn app(origins: &[&str]) -> axum::Router {
        let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        let r = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(|| async { "ok" }),
        );
        match super::cors(&origins) {
            Some(l) => r.layer(l),
            None => r,
        }
    }

    fn preflight(origin: &str) -> Request<Body> {
        Request::builder()
            .method("OPTIONS")
            .uri("/v1/chat/completions")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    }

    /// Issue 21: a browser app's preflight got 405. With allowed origins configured it is
    /// answered for those origins only, and responses expose the receipt header.
    #[tokio::test]
    async fn browser_preflights_are_answered_for_allowed_origins() {
        let a = app(&["https://app.example"]);
        let resp = a
            .clone()
            .oneshot(preflight("https://app.example"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert!(
            h["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
        let other = a
            .clone()
            .oneshot(preflight("https://evil.example"))
            .await
            .unwrap();
        assert!(other.headers().get("access-control-allow-origin").is_none());
        let post = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("origin", "https://app.example")
            .body(Body::empty())
            .unwrap();
        let resp = a.oneshot(post).await.unwrap();
        let exposed = resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(exposed.contains("x-sortition-receipt"), "{exposed}");
        // Any origin with "*"; none configured: no CORS headers at all.
        let any = app(&["*"])
            .oneshot(preflight("https://x.example"))
            .await
            .unwrap();
        assert_eq!(any.headers()["access-control-allow-origin"], "*");
        let none = app(&[])
            .oneshot(preflight("https://app.example"))
            .await
            .unwrap();
        assert!(none.headers().get("access-control-allow-origin").is_none());
    }
}
