#![allow(clippy::unwrap_used)]
//! The trust path under attack (issue 18): a node that signs a receipt for one text and
//! delivers another, and a node that dies before its stream's first chunk. Each rogue node is
//! a real HTTP server on port 0, registered on the devnet's real ledger in the honest nodes'
//! class; the honest nodes run the real model.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sortition_devnet::{Devnet, DevnetConfig};
use sortition_ledger::{Offer, TxKind};
use sortition_ledger_client::LedgerClient;
use sortition_types::auth::{AUTH_HEADER, RequestAuth};
use sortition_types::{
    Amount, Custody, Keypair, ModelId, NodeId, Receipt, SignedReceipt, sha256, text_response_hash,
};

const CHAT: &str = "smollm2-135m-instruct";
const LIE: &str = "Berlin is the capital of France.";

/// How the rogue node behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rogue {
    /// Signs a receipt for `claimed` and delivers [`LIE`].
    Swap,
    /// Sends a stream's headers, then closes the connection before any event.
    DieBeforeFirstChunk,
}

struct RogueNode {
    mode: Rogue,
    key: Keypair,
    id: Mutex<Option<NodeId>>,
    class: sortition_types::Hash32,
    /// The text and finish reason its receipts commit to.
    claimed: Mutex<(String, String)>,
    /// Next receipt sequence per stack.
    sequences: Mutex<std::collections::HashMap<u64, u64>>,
    hits: AtomicU32,
}

impl RogueNode {
    fn receipt(&self, stack: sortition_types::StackId, body: &[u8]) -> SignedReceipt {
        let sequence = {
            let mut s = self.sequences.lock().unwrap();
            let n = s.entry(stack.0).or_default();
            *n += 1;
            *n - 1
        };
        let receipt = Receipt {
            node: self.id.lock().unwrap().unwrap(),
            stack,
            sequence,
            model: ModelId::new(CHAT),
            model_digest: sha256(b"weights"),
            node_class: self.class,
            request_hash: sha256(body),
            response_hash: {
                let (text, finish) = &*self.claimed.lock().unwrap();
                text_response_hash(text, finish)
            },
            input_tokens: 5,
            output_tokens: 5,
            sampling: Default::default(),
            timestamp_ms: sortition_api::unix_now_ms(),
            custody: Custody::Gateway,
        };
        SignedReceipt::sign(receipt, &self.key)
    }
}

async fn rogue_chat(State(n): State<Arc<RogueNode>>, headers: HeaderMap, body: Bytes) -> Response {
    n.hits.fetch_add(1, Ordering::SeqCst);
    let header = headers.get(AUTH_HEADER).unwrap().to_str().unwrap();
    let (auth, _) =
        RequestAuth::parse_header(header, "POST", "/v1/chat/completions", &body).unwrap();
    let req: Value = serde_json::from_slice(&body).unwrap();
    let stream = req["stream"].as_bool().unwrap_or(false);
    if n.mode == Rogue::DieBeforeFirstChunk && stream {
        // Headers, then the connection ends with no event at all.
        let empty = futures::stream::iter(Vec::<Result<Bytes, std::io::Error>>::new());
        return (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(empty),
        )
            .into_response();
    }
    let receipt = n.receipt(auth.stack, &body);
    let ext = json!({"node": receipt.receipt.node, "receipt": receipt});
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10});
    if !stream {
        return axum::Json(json!({
            "id": "chatcmpl-rogue", "object": "chat.completion", "created": 1, "model": CHAT,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": LIE},
                "finish_reason": "stop", "logprobs": null}],
            "usage": usage, "sortition": ext,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-rogue", "object": "chat.completion.chunk", "created": 1,
            "model": CHAT, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
    };
    let events = [
        chunk(json!({"role": "assistant", "content": LIE}), Value::Null),
        chunk(json!({}), json!("stop")),
        json!({"id": "chatcmpl-rogue", "object": "chat.completion.chunk", "created": 1,
            "model": CHAT, "choices": [], "usage": usage, "sortition": ext}),
    ];
    let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    text.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], text).into_response()
}

/// Starts a rogue node, registers it on the devnet's ledger in the class of the honest nodes
/// (its own operator, funded by the admin), and waits until the gateway routes to it.
async fn rogue(net: &Devnet, dir: &Path, mode: Rogue, seed: &[u8]) -> Arc<RogueNode> {
    let ledger = LedgerClient::new(&net.info.ledger_url);
    let honest = ledger
        .node(net.info.nodes[0].id)
        .await
        .expect("honest node on the ledger");
    let key = Keypair::from_seed(seed);
    let node = Arc::new(RogueNode {
        mode,
        key: key.clone(),
        id: Mutex::new(None),
        class: honest.class.fingerprint(),
        claimed: Mutex::new(("Paris is the capital of France.".into(), "stop".into())),
        sequences: Default::default(),
        hits: AtomicU32::new(0),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(rogue_chat))
        .route(
            "/health",
            axum::routing::get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .with_state(node.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let text = std::fs::read_to_string(dir.join("keys/admin.key")).unwrap();
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).unwrap();
    let admin = Keypair::from_secret(secret);
    ledger
        .send(
            &admin,
            TxKind::Faucet {
                to: key.public(),
                amount: Amount::from_units(1_000_000).unwrap(),
            },
        )
        .await
        .expect("fund the rogue operator");
    let id = sortition_node::ledger::register(
        &ledger,
        &key,
        None,
        sortition_node::ledger::Registration {
            endpoint: url,
            class: honest.class.clone(),
            offers: vec![Offer {
                model: ModelId::new(CHAT),
                price_per_m_input: honest.offers[0].price_per_m_input,
                price_per_m_output: honest.offers[0].price_per_m_output,
            }],
            capacity: 8,
            collateral: Some(honest.collateral),
            confidential_key: [0; 32],
            attestation: Vec::new(),
        },
    )
    .await
    .expect("register the rogue node");
    *node.id.lock().unwrap() = Some(id);
    // The gateway re-reads the registry every 2 s.
    for _ in 0..100 {
        if net.gateway.router.lock().await.node(id).is_some() {
            return node;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway never saw rogue node {id}");
}

async fn post(url: &str, key: &str, body: &Value, constraints: Value) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .header("x-sortition-constraints", constraints.to_string())
        .json(body)
        .send()
        .await
        .expect("request");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn chat(stream: bool) -> Value {
    json!({"model": CHAT, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8, "temperature": 0, "stream": stream})
}

/// The data of every server-sent event in `text`.
fn events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|d| d.trim().to_string())
        .collect()
}

async fn credits(net: &Devnet) -> Amount {
    net.gateway
        .store
        .authenticate(Some(&net.info.api_key))
        .await
        .unwrap()
        .credits
}

/// Issue 18, defect 1: a node returned "Berlin is the capital of France." with a correctly
/// signed receipt whose `response_hash` is the hash of another text, and the gateway answered
/// 200, `verified_by_gateway: true`, and billed it. Now: plain answers are withheld (502,
/// `receipt_invalid`), streams end with an error event instead of the receipt, nothing is
/// charged, the node's breaker opens, and in a quorum the node counts as failed, not agreeing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_refuses_a_receipt_for_another_text() {
    let dir = tempfile::tempdir().unwrap();
    let net = Devnet::start(DevnetConfig::new(dir.path()))
        .await
        .expect("devnet starts");
    let url = format!("{}/v1/chat/completions", net.info.gateway_url);
    let key = net.info.api_key.clone();
    let liar = rogue(&net, dir.path(), Rogue::Swap, b"rogue swap").await;
    let liar_id = liar.id.lock().unwrap().unwrap();
    let only_liar = json!({"nodes": [liar_id.0]});

    // Plain: withheld, not charged.
    let before = credits(&net).await;
    let (status, text) = post(&url, &key, &chat(false), only_liar.clone()).await;
    assert_eq!(status, 502, "{text}");
    assert!(
        !text.contains(LIE),
        "the unverified text reached the client: {text}"
    );
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"]["code"], "receipt_invalid", "{text}");
    assert_eq!(liar.hits.load(Ordering::SeqCst), 1);
    // The contradicted receipt opened the liar's breaker at once: no second chance.
    let (status, text) = post(&url, &key, &chat(false), only_liar.clone()).await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(liar.hits.load(Ordering::SeqCst), 1);
    assert_eq!(credits(&net).await, before, "a withheld answer was charged");
    // The node will still claim that receipt, so the gateway disowned it on the ledger: its
    // units are burned at settlement instead of paid to the liar.
    let ledger = LedgerClient::new(&net.info.ledger_url);
    let owner = net.gateway.account.public();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stacks = ledger
            .stacks_of(&owner)
            .await
            .expect("stacks of the gateway");
        if stacks
            .iter()
            .any(|s| s.node == liar_id && !s.disowned.is_empty())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the liar's receipt was not disowned: {stacks:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Streamed: the chunks already relayed cannot be taken back, but the stream ends with an
    // error event instead of a verified receipt, and nothing is charged.
    let liar2 = rogue(&net, dir.path(), Rogue::Swap, b"rogue swap 2").await;
    let liar2_id = liar2.id.lock().unwrap().unwrap();
    let (status, text) = post(&url, &key, &chat(true), json!({"nodes": [liar2_id.0]})).await;
    assert_eq!(status, 200, "{text}");
    let evs = events(&text);
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"), "{text}");
    let end: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
    assert_eq!(end["error"]["code"], "receipt_invalid", "{text}");
    assert!(!text.contains("verified_by_gateway"), "{text}");
    // Billing happens after the stream; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        credits(&net).await,
        before,
        "a contradicted stream was charged"
    );

    // Quorum: the liar signs exactly what the honest nodes sign (the honest answer's hash)
    // but delivers another text. It must not count as agreeing, and the user gets the honest
    // text from an honest member.
    let liar3 = rogue(&net, dir.path(), Rogue::Swap, b"rogue swap 3").await;
    let liar3_id = liar3.id.lock().unwrap().unwrap();
    let n0 = net.info.nodes[0].id;
    let n1 = net.info.nodes[1].id;
    let body = chat(false);
    let (status, text) = post(&url, &key, &body, json!({"nodes": [n0.0]})).await;
    assert_eq!(status, 200, "{text}");
    let honest: Value = serde_json::from_str(&text).unwrap();
    let honest_text = honest["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let finish = honest["choices"][0]["finish_reason"].as_str().unwrap();
    *liar3.claimed.lock().unwrap() = (honest_text.clone(), finish.to_string());
    let (status, text) = post(
        &url,
        &key,
        &body,
        json!({"nodes": [liar3_id.0, n0.0, n1.0], "require_quorum": 3}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], honest_text.as_str());
    let q = &v["sortition"]["quorum"];
    let agreeing: Vec<u64> = q["agreeing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert!(
        !agreeing.contains(&liar3_id.0),
        "the liar counted as agreeing: {q}"
    );
    assert_eq!(agreeing.len(), 2, "{q}");
    assert!(q["failed"].to_string().contains("receipt"), "{q}");
    assert_eq!(liar3.hits.load(Ordering::SeqCst), 1);
    net.shutdown().await;
}

/// Issue 18, defect 7: a stream whose node died before its first chunk was not failed over
/// (2 of 20 in a kill -9 test ended in an error). Now such a stream is retried on another node
/// and the client gets a whole, verified answer every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_whose_node_dies_before_first_chunk_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let net = Devnet::start(DevnetConfig::new(dir.path()))
        .await
        .expect("devnet starts");
    let url = format!("{}/v1/chat/completions", net.info.gateway_url);
    let dead = rogue(&net, dir.path(), Rogue::DieBeforeFirstChunk, b"rogue dead").await;
    let dead_id = dead.id.lock().unwrap().unwrap();
    let n0 = net.info.nodes[0].id;
    let mut served = 0;
    // The dead node is tried first about half the time at the start (after one failure its
    // score sinks and it is tried less); go on until it was hit, at most 40 requests.
    for _ in 0..40 {
        let (status, text) = post(
            &url,
            &net.info.api_key,
            &chat(true),
            json!({"nodes": [dead_id.0, n0.0]}),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let evs = events(&text);
        assert_eq!(evs.last().map(String::as_str), Some("[DONE]"), "{text}");
        let end: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
        assert_eq!(end["sortition"]["verified_by_gateway"], true, "{text}");
        assert_eq!(end["sortition"]["node"], n0.0, "{text}");
        served += 1;
        if dead.hits.load(Ordering::SeqCst) >= 1 && served >= 3 {
            break;
        }
    }
    assert!(
        dead.hits.load(Ordering::SeqCst) >= 1,
        "the dead node was never tried in {served} requests"
    );
    net.shutdown().await;
}
