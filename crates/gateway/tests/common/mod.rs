//! Parts shared by the gateway's HTTP tests: a node server on port 0 that answers as an honest
//! node does (a signed receipt for exactly what it delivers), and the ledger as the gateway sees
//! it with that one node on it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use sortition_types::{Amount, ModelId, NodeId, StackId, sha256};

/// A node for the HTTP test: answers every chat completion after `delay` with one short text
/// and a receipt it signs for the stack the gateway named, as an honest node does.
pub async fn honest_node(
    keys: sortition_types::Keypair,
    id: NodeId,
    delay: std::time::Duration,
) -> String {
    use axum::http::HeaderMap;
    use sortition_types::auth::{AUTH_HEADER, RequestAuth};
    use sortition_types::{Custody, Hash32, Receipt, SignedReceipt, text_response_hash};
    let keys = Arc::new(keys);
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (keys, seq) = (keys.clone(), seq.clone());
            async move {
                let auth = headers
                    .get(AUTH_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let (auth, _) =
                    RequestAuth::parse_header(auth, "POST", "/v1/chat/completions", &body)
                        .expect("the gateway signs its requests");
                tokio::time::sleep(delay).await;
                let (text, finish) = ("Paris.", "stop");
                let receipt = Receipt {
                    node: id,
                    stack: auth.stack,
                    sequence: seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    model: ModelId::new("m"),
                    model_digest: Hash32::default(),
                    node_class: Hash32::default(),
                    request_hash: sha256(&body),
                    response_hash: text_response_hash(text, finish),
                    input_tokens: 10,
                    output_tokens: 5,
                    sampling: Default::default(),
                    timestamp_ms: 0,
                    custody: Custody::Gateway,
                };
                let signed = SignedReceipt::sign(receipt, &keys);
                axum::Json(serde_json::json!({
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    "sortition": {"receipt": signed},
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The ledger seen by the HTTP test: one node, and stacks bought on demand.
pub struct OneNode {
    pub node: sortition_gateway::router::NodeView,
    pub bought: std::sync::atomic::AtomicU64,
}

impl sortition_gateway::directory::LedgerPort for OneNode {
    fn active_nodes(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Vec<sortition_gateway::router::NodeView>, String>>
    {
        let n = self.node.clone();
        Box::pin(async move { Ok(vec![n]) })
    }
    fn buy_stack(
        &self,
        _node: NodeId,
        _model: ModelId,
        units: u64,
        _max_price_per_m: Amount,
    ) -> futures::future::BoxFuture<'_, Result<sortition_gateway::directory::BoughtStack, String>>
    {
        let id = 100
            + self
                .bought
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            Ok(sortition_gateway::directory::BoughtStack {
                id: StackId(id),
                units,
                expires_at_ms: u64::MAX / 2,
            })
        })
    }
    fn challenge_receipt(
        &self,
        _receipt: sortition_types::SignedReceipt,
    ) -> futures::future::BoxFuture<'_, Result<sortition_types::AuditId, String>> {
        Box::pin(async { Err("no challenges here".to_string()) })
    }
}

/// A gateway on port 0 over `store` whose one node (id 1, model `m`, one micro-unit per unit)
/// answers as an honest node does after `delay`; returns its state and its chat URL.
pub async fn gateway_with_one_node(
    store: &sortition_gateway::store::GatewayStore,
    delay: std::time::Duration,
) -> (Arc<sortition_gateway::state::GatewayState>, String) {
    use sortition_gateway::router::{BreakerConfig, NodeView, Router, RouterWeights};
    use sortition_gateway::state::{GatewayConfig, GatewayState};
    let seed = b"honest node of the gateway tests";
    let node_url = honest_node(sortition_types::Keypair::from_seed(seed), NodeId(1), delay).await;
    let node = NodeView {
        id: NodeId(1),
        url: node_url,
        operator: sortition_types::Keypair::from_seed(seed).public(),
        price_in: Amount(1_000_000),
        price_out: Amount(1_000_000),
        collateral: Amount(1_000_000),
        class: Default::default(),
        confidential: false,
        reputation: 1000,
        slashes: 0,
        models: vec![ModelId::new("m")],
    };
    let ledger = Arc::new(OneNode {
        node,
        bought: Default::default(),
    });
    let g = GatewayState::new(
        GatewayConfig::default(),
        store.clone(),
        ledger,
        sortition_types::Keypair::from_seed(b"gateway account"),
        Router::new(RouterWeights::default(), BreakerConfig::default()),
    )
    .expect("state");
    g.refresh_nodes().await.expect("nodes");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(sortition_gateway::server::serve(
        g.clone(),
        listener,
        std::future::pending(),
    ));
    (g, url)
}
