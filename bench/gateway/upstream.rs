//! BENCHMARK FIXTURE, not a node: the fastest upstream that still speaks the node protocol.
//!
//! It answers `POST /v1/chat/completions` at once with a fixed short completion and a receipt
//! signed by its node key (the key registered on the ledger), built from the real
//! `sortition_types` receipt types exactly as a node builds them: request hash = SHA-256 of
//! the body, response hash over the returned text, the stack named in the stack owner's
//! `x-sortition-auth` header, a gap-free sequence per stack.
//!
//! What a real node does that this fixture skips (node costs, not the gateway's): checking
//! the owner's signature, persisting the nonce and the receipt, running a model. A request
//! without the auth header (the direct baseline, or LiteLLM) is answered the same way with
//! stack 0, so every target gets the same work from the upstream and a body of the same size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use sortition_api::{
    AssistantMessage, ChatChoice, ChatCompletion, SortitionExt, Usage, unix_now_ms,
};
use sortition_types::auth::AUTH_HEADER;
use sortition_types::{
    Custody, Hash32, Keypair, ModelId, NodeId, Receipt, SamplingRecord, SignedReceipt, StackId,
    sha256, text_response_hash,
};

/// The fixed answer.
pub const ANSWER: &str = "Hello! How can I help you today?";
/// Tokens the receipt claims (well under what the gateway reserves per request).
const INPUT_TOKENS: u64 = 12;
const OUTPUT_TOKENS: u64 = 9;

/// What the fixture needs to sign receipts.
pub struct Upstream {
    /// The registered node key: receipts are checked against it.
    pub key: Keypair,
    /// Set once the ledger has assigned the node its id.
    pub node: std::sync::OnceLock<NodeId>,
    pub model: ModelId,
    pub class: Hash32,
    /// Next receipt sequence per stack.
    sequences: Mutex<HashMap<StackId, u64>>,
}

impl Upstream {
    pub fn new(key: Keypair, model: ModelId, class: Hash32) -> Arc<Self> {
        Arc::new(Upstream {
            key,
            node: std::sync::OnceLock::new(),
            model,
            class,
            sequences: Mutex::new(HashMap::new()),
        })
    }

    fn next_sequence(&self, stack: StackId) -> u64 {
        let mut m = self.sequences.lock().unwrap_or_else(|e| e.into_inner());
        let seq = m.entry(stack).or_insert(0);
        let s = *seq;
        *seq += 1;
        s
    }
}

/// The stack named in the auth header (`stack=N,...`), or stack 0 without one.
fn stack_of(headers: &HeaderMap) -> StackId {
    headers
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| p.trim().strip_prefix("stack="))
                .and_then(|s| s.parse().ok())
        })
        .map(StackId)
        .unwrap_or(StackId(0))
}

async fn chat(State(u): State<Arc<Upstream>>, headers: HeaderMap, body: Bytes) -> Response {
    let stack = stack_of(&headers);
    let node = u.node.get().copied().unwrap_or(NodeId(0));
    let now = unix_now_ms();
    let receipt = Receipt {
        node,
        stack,
        sequence: u.next_sequence(stack),
        model: u.model.clone(),
        model_digest: u.class,
        node_class: u.class,
        request_hash: sha256(&body),
        response_hash: text_response_hash(ANSWER, "stop"),
        input_tokens: INPUT_TOKENS,
        output_tokens: OUTPUT_TOKENS,
        sampling: SamplingRecord::default(),
        timestamp_ms: now,
        custody: Custody::Gateway,
    };
    let answer = ChatCompletion {
        id: format!("chatcmpl-bench-{now}"),
        object: "chat.completion".into(),
        created: now / 1000,
        model: u.model.0.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".into(),
                content: Some(ANSWER.into()),
                tool_calls: None,
            },
            finish_reason: "stop".into(),
            logprobs: None,
        }],
        usage: Usage::new(INPUT_TOKENS, OUTPUT_TOKENS),
        sortition: Some(SortitionExt {
            node,
            receipt: SignedReceipt::sign(receipt, &u.key),
            verified_by_gateway: None,
        }),
    };
    match serde_json::to_vec(&answer) {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("serializing: {e}"),
        )
            .into_response(),
    }
}

/// Serves the fixture on `listener` until the process ends.
pub async fn serve(u: Arc<Upstream>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(u);
    axum::serve(listener, app).await
}
