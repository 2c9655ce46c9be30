#![allow(clippy::unwrap_used)]
//! End-to-end: a real devnet (real ledger, three nodes running the default model, a gateway)
//! on loopback, driven over HTTP as users and the OpenAI SDK would.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sortition_api::unix_now_ms;
use sortition_devnet::{Devnet, DevnetConfig};
use sortition_ledger::{Event, TxKind};
use sortition_ledger_client::LedgerClient;
use sortition_types::auth::{AUTH_HEADER, REQUEST_DOMAIN};
use sortition_types::{
    Amount, Keypair, ModelId, NodeId, RequestAuth, SignedReceipt, StackId, Units,
    text_response_hash,
};

const CHAT: &str = "smollm2-135m-instruct";
const EMBED: &str = "all-minilm-l6-v2";

async fn start(dir: &Path) -> Devnet {
    let mut cfg = DevnetConfig::new(dir);
    cfg.node_claim_interval = Duration::from_millis(500);
    // Nodes claim (and so close) stacks while the test runs, as they do in production.
    cfg.claim_policy.max_age_ms = 3_000;
    Devnet::start(cfg).await.expect("devnet starts")
}

/// Every directory under the devnet's data directory is 0700 and every file 0600 (no group or
/// other bits): the gateway's database and WAL, the nodes' redb files, the ledger, the keys.
#[cfg(unix)]
fn data_files_are_private(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        let m = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(m & 0o077, 0, "{} is mode {m:o}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let m = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(m & 0o077, 0, "{} is mode {m:o}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files >= 8, "only {files} files under {}", root.display());
}

async fn post(url: &str, key: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn chat_body(content: &str, max_tokens: u32) -> Value {
    json!({"model": CHAT, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
}

fn receipt_of(v: &Value) -> SignedReceipt {
    serde_json::from_value(v["sortition"]["receipt"].clone()).expect("response carries a receipt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devnet_serves_verifiable_answers_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let net = start(dir.path()).await;
    let info = net.info.clone();
    let ledger = LedgerClient::new(&info.ledger_url);
    assert_eq!(info.nodes.len(), 3);
    assert!(
        info.nodes.iter().all(|n| n.class == info.nodes[0].class),
        "one node class"
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("devnet.json")).unwrap())
            .unwrap();
    assert_eq!(written["gateway_url"], info.gateway_url);
    assert_eq!(written["api_key"], info.api_key);

    // A greedy answer, with a receipt that checks against the ledger's key for the node.
    let url = format!("{}/v1/chat/completions", info.gateway_url);
    let (status, first) = post(
        &url,
        &info.api_key,
        &chat_body("What is the capital of France?", 12),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["sortition"]["verified_by_gateway"], true);
    let r = receipt_of(&first);
    let node = ledger.node(r.receipt.node).await.unwrap();
    r.verify(&node.operator)
        .expect("receipt signed by the node's registered key");
    let text = first["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let finish = first["choices"][0]["finish_reason"].as_str().unwrap();
    assert_eq!(r.receipt.response_hash, text_response_hash(&text, finish));
    assert_eq!(
        r.receipt.output_tokens,
        first["usage"]["completion_tokens"].as_u64().unwrap()
    );
    // Issue 18: world-readable data. Keys, kept prompts, receipts and chain state are private.
    data_files_are_private(dir.path());

    // The node proves the receipt's inclusion under the root its claim will commit to.
    let node_url = &info
        .nodes
        .iter()
        .find(|n| n.id == r.receipt.node)
        .unwrap()
        .url;
    let proof: Value = reqwest::get(format!(
        "{node_url}/sortition/v1/stacks/{}/receipts/{}/proof",
        r.receipt.stack.0, r.receipt.sequence
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let proven: SignedReceipt = serde_json::from_value(proof["receipt"].clone()).unwrap();
    assert_eq!(proven, r);
    let mp: sortition_types::MerkleProof = serde_json::from_value(proof["proof"].clone()).unwrap();
    let root: sortition_types::Hash32 =
        serde_json::from_value(proof["receipts_root"].clone()).unwrap();
    assert!(mp.verify(&r.receipt.digest(), &root), "{proof}");
    let missing = reqwest::get(format!(
        "{node_url}/sortition/v1/stacks/{}/receipts/999999/proof",
        r.receipt.stack.0
    ))
    .await
    .unwrap();
    assert_eq!(missing.status(), 404);
    let e: Value = missing.json().await.unwrap();
    assert_eq!(e["error"]["code"], "receipt_not_found");

    // Its metrics show latency per token and the scheduler's queue and batch.
    let m = reqwest::get(format!("{node_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "sortition_node_time_to_first_token_seconds_count ",
        "sortition_node_inter_token_seconds_count ",
        "sortition_node_engine_queue_depth ",
        "sortition_node_engine_batch_size ",
        "sortition_node_engine_steps ",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }

    // The same request through the gateway again: the same answer.
    let (s2, again) = post(
        &url,
        &info.api_key,
        &chat_body("What is the capital of France?", 12),
    )
    .await;
    assert_eq!(s2, 200, "{again}");
    assert_eq!(
        again["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );

    // Streaming gives the same text, ends with the receipt and [DONE].
    let mut body = chat_body("What is the capital of France?", 12);
    body["stream"] = json!(true);
    let sse = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&info.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let raw = sse.text().await.unwrap();
    let data: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let mut streamed = String::new();
    let mut final_receipt = None;
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(t);
        }
        if v.get("sortition").is_some() {
            final_receipt = Some(receipt_of(&v));
        }
    }
    assert_eq!(streamed, text);
    assert_eq!(
        final_receipt
            .expect("final event has the receipt")
            .receipt
            .response_hash,
        r.receipt.response_hash
    );

    // Embeddings: unit vectors, identical alone and in a batch.
    let eurl = format!("{}/v1/embeddings", info.gateway_url);
    let (s, e) = post(
        &eurl,
        &info.api_key,
        &json!({"model": EMBED, "input": ["a cat sat", "the quick brown fox jumps"]}),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    let v0: Vec<f64> = serde_json::from_value(e["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(v0.len(), 384);
    assert!((v0.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-3);
    let (_, alone) = post(
        &eurl,
        &info.api_key,
        &json!({"model": EMBED, "input": "a cat sat"}),
    )
    .await;
    assert_eq!(
        alone["data"][0]["embedding"], e["data"][0]["embedding"],
        "batch-invariant embeddings"
    );

    // Both surfaces publish their OpenAPI document.
    for base in [info.gateway_url.as_str(), info.nodes[0].url.as_str()] {
        let doc: Value = reqwest::get(format!("{base}/openapi.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/v1/chat/completions"]["post"].is_object());
    }

    // Bad input: OpenAI-shaped errors with the right status.
    let (s, v) = post(&url, "sk-sort-nope", &chat_body("hi", 4)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&chat_body("hi", 4))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Issue 18: every /v1 route needs a key, the model list included; /health stays open.
    // Issue 21: /v1/models/{id}.
    let get = |path: String, key: Option<String>| async move {
        let mut r = reqwest::Client::new().get(path);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let resp = r.send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let gw = &info.gateway_url;
    let key = Some(info.api_key.clone());
    assert_eq!(get(format!("{gw}/v1/models"), None).await.0, 401);
    assert_eq!(get(format!("{gw}/health"), None).await.0, 200);
    let (s, list) = get(format!("{gw}/v1/models"), key.clone()).await;
    assert_eq!(s, 200, "{list}");
    assert!(list["data"].to_string().contains(CHAT), "{list}");
    let (s, card) = get(format!("{gw}/v1/models/{CHAT}"), key.clone()).await;
    assert_eq!((s, card["id"].as_str()), (200, Some(CHAT)), "{card}");
    let (s, v) = get(format!("{gw}/v1/models/nope"), key.clone()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert_eq!(get(format!("{gw}/v1/models/{CHAT}"), None).await.0, 401);
    let (s, v) = post(
        &url,
        &info.api_key,
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    // Issue 21: a model sent to the wrong endpoint is named as such (it was a 404 saying the
    // model is not served, while listing it), and a field of the wrong type is named with
    // what it accepts (it was "untagged enum EmbeddingInput").
    let (s, v) = post(
        &url,
        &info.api_key,
        &json!({"model": EMBED, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("wrong_endpoint")),
        "{v}"
    );
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("is an embedding model") && msg.contains("/v1/embeddings"),
        "{v}"
    );
    let (s, v) = post(&eurl, &info.api_key, &json!({"model": CHAT, "input": "x"})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("wrong_endpoint")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("is a chat model"),
        "{v}"
    );
    let (s, v) = post(
        &eurl,
        &info.api_key,
        &json!({"model": EMBED, "input": {"a": 1}}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("input")),
        "{v}"
    );
    assert!(
        !v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("enum"),
        "{v}"
    );
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&info.api_key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // An oversized body: 413. The gateway answers before it has read the whole body and
    // closes the connection, so the client's write can fail first (a broken pipe) and lose
    // the answer: a race of the test's own making, so it tries a few times.
    let huge = "x".repeat(5 * 1024 * 1024);
    let mut status = None;
    for _ in 0..5 {
        let sent = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&info.api_key)
            .body(huge.clone())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                status = Some(resp.status());
                break;
            }
            Err(e) if e.is_request() => continue,
            Err(e) => panic!("oversized body: {e}"),
        }
    }
    assert_eq!(status.map(|s| s.as_u16()), Some(413));
    let (s, v) = post(
        &url,
        &info.api_key,
        &json!({"model": CHAT, "messages": [{"role": "user", "content": "x"}], "temperature": 9}),
    )
    .await;
    assert_eq!(s, 400, "{v}");

    // Client libraries, unchanged: the official OpenAI Python SDK, LangChain, litellm,
    // LlamaIndex (from the interpreter in SORTITION_COMPAT_PYTHON, which scripts/test.sh sets
    // up, or python3), and the official OpenAI Node SDK.
    let args = [
        info.gateway_url.as_str(),
        info.api_key.as_str(),
        CHAT,
        EMBED,
    ];
    let python = std::env::var("SORTITION_COMPAT_PYTHON").unwrap_or_else(|_| "python3".into());
    let python_with = |modules: &str| {
        std::process::Command::new(&python)
            .args(["-c", &format!("import {modules}")])
            .status()
            .is_ok_and(|s| s.success())
            .then(|| std::process::Command::new(&python))
    };
    client_library(
        "openai python sdk",
        python_with("openai"),
        "openai_sdk.py",
        &args,
    );
    client_library(
        "langchain",
        python_with("langchain_openai"),
        "langchain_compat.py",
        &args,
    );
    client_library(
        "litellm and llamaindex",
        python_with("litellm, llama_index.llms.openai_like"),
        "litellm_llamaindex.py",
        &args,
    );
    let node_sdk = std::env::var_os("OPENAI_NODE_SDK").map(|dir| {
        let mut c = std::process::Command::new("node");
        c.env("OPENAI_NODE_SDK", dir);
        c
    });
    client_library("openai node sdk", node_sdk, "openai_node.mjs", &args[..3]);

    a_client_leaving_mid_stream_pays_for_what_it_received(&net, &url, &info.api_key).await;
    claimed_stacks_are_closed_by_the_gateway(&net, &ledger, r.receipt.stack, &url, &info.api_key)
        .await;
    node_refuses_unauthorized_requests(&net, dir.path(), &ledger).await;
    every_node_of_the_class_answers_alike(&net, dir.path(), &ledger, &text).await;
    net.shutdown().await;
}

/// A client that leaves after the first chunks is billed for the chunks delivered, not for
/// the whole answer, and the usage record says it was cancelled.
async fn a_client_leaving_mid_stream_pays_for_what_it_received(net: &Devnet, url: &str, key: &str) {
    use sortition_gateway::store::UsageStatus;
    let user = net
        .gateway
        .store
        .authenticate(Some(key))
        .await
        .unwrap()
        .user_id;
    let mut body = chat_body("Write a long story about a lighthouse keeper.", 200);
    body["stream"] = json!(true);
    body["temperature"] = json!(0.9);
    body["seed"] = json!(7);
    let mut resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    drop(resp);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let row = loop {
        let rows = net.gateway.store.usage_for_user(user, 5).await.unwrap();
        if let Some(r) = rows
            .into_iter()
            .find(|r| r.usage.status == UsageStatus::Cancelled)
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cancelled usage row"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(row.usage.completion_tokens < 200, "{row:?}");
    assert!(row.usage.receipt_json.is_none());
}

/// A node's claim closes its stack on the ledger; the gateway learns it from the ledger's
/// events, stops using the stack, and the next request is served on a fresh one.
async fn claimed_stacks_are_closed_by_the_gateway(
    net: &Devnet,
    ledger: &LedgerClient,
    stack: StackId,
    url: &str,
    key: &str,
) {
    use sortition_gateway::store::StackState;
    use sortition_ledger::StackStatus;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let on_ledger = ledger.stack(stack).await.unwrap().status;
        let ours = net.gateway.store.stack(stack).await.unwrap().state;
        if !matches!(on_ledger, StackStatus::Open) && ours == StackState::Closed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stack {stack}: ledger {on_ledger:?}, gateway {ours:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, answer) = post(url, key, &chat_body("Say hello.", 4)).await;
    assert_eq!(status, 200, "{answer}");
    assert_ne!(
        receipt_of(&answer).receipt.stack,
        stack,
        "a closed stack was reused"
    );
}

fn load_admin(dir: &Path) -> Keypair {
    let text = std::fs::read_to_string(dir.join("keys/admin.key")).unwrap();
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).unwrap();
    Keypair::from_secret(secret)
}

async fn buy(ledger: &LedgerClient, owner: &Keypair, node: NodeId, units: u64) -> StackId {
    let kind = TxKind::BuyStack {
        model: ModelId::new(CHAT),
        node: Some(node),
        max_price_per_m: Amount(u64::MAX),
        units: Units(units),
        expires_at_ms: unix_now_ms() + 600_000,
    };
    let r = ledger.send(owner, kind).await.unwrap();
    r.events
        .iter()
        .find_map(|e| {
            if let Event::StackBought { stack, .. } = e {
                Some(*stack)
            } else {
                None
            }
        })
        .unwrap()
}

async fn signed_post(
    node_url: &str,
    owner: &Keypair,
    stack: StackId,
    nonce: u64,
    body: &[u8],
) -> (u16, Value) {
    let auth = RequestAuth::new(
        "POST",
        "/v1/chat/completions",
        body,
        stack,
        nonce,
        unix_now_ms() + 60_000,
    );
    let sig = owner.sign(REQUEST_DOMAIN, &auth);
    let resp = reqwest::Client::new()
        .post(format!("{node_url}/v1/chat/completions"))
        .header(AUTH_HEADER, auth.header_value(&sig))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// A user holding their own stack talks to a node directly; the node checks everything.
async fn node_refuses_unauthorized_requests(net: &Devnet, dir: &Path, ledger: &LedgerClient) {
    let admin = load_admin(dir);
    let user = Keypair::from_seed(b"e2e user");
    ledger
        .send(
            &admin,
            TxKind::Faucet {
                to: user.public(),
                amount: Amount(1_000_000_000),
            },
        )
        .await
        .unwrap();
    let (n0, n1) = (&net.info.nodes[0], &net.info.nodes[1]);
    let stack = buy(ledger, &user, n0.id, 400).await;
    let body = serde_json::to_vec(&chat_body("Hi", 4)).unwrap();

    let (s, v) = signed_post(&n0.url, &user, stack, 1, &body).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = signed_post(&n0.url, &user, stack, 1, &body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("replayed_request"))
    );
    let stranger = Keypair::from_seed(b"stranger");
    let (s, v) = signed_post(&n0.url, &stranger, stack, 2, &body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    let (s, v) = signed_post(&n1.url, &user, stack, 3, &body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("foreign_stack"))
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", n0.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Parallel requests on one small stack never overspend it.
    let small = buy(ledger, &user, n0.id, 150).await;
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (url, user, body) = (n0.url.clone(), user.clone(), body.clone());
            tokio::spawn(async move { signed_post(&url, &user, small, 100 + i, &body).await })
        })
        .collect();
    let mut spent = 0;
    let mut refused = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            200 => spent += receipt_of(&v).receipt.units().0,
            402 => refused += 1,
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(spent <= 150, "stack overspent: {spent}");
    assert!(
        refused >= 1,
        "a 150-unit stack cannot hold six ~40-unit requests"
    );
}

/// Bit-identical greedy answers from every node of the class, asked directly.
async fn every_node_of_the_class_answers_alike(
    net: &Devnet,
    dir: &Path,
    ledger: &LedgerClient,
    expected: &str,
) {
    let admin = load_admin(dir);
    let user = Keypair::from_seed(b"e2e determinism user");
    ledger
        .send(
            &admin,
            TxKind::Faucet {
                to: user.public(),
                amount: Amount(1_000_000_000),
            },
        )
        .await
        .unwrap();
    let body = serde_json::to_vec(&chat_body("What is the capital of France?", 12)).unwrap();
    for (i, node) in net.info.nodes.iter().enumerate() {
        let stack = buy(ledger, &user, node.id, 1_000).await;
        let (s, v) = signed_post(&node.url, &user, stack, 7_000 + i as u64, &body).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["choices"][0]["message"]["content"].as_str(),
            Some(expected),
            "{} answered differently",
            node.id
        );
        assert_eq!(receipt_of(&v).receipt.node, node.id);
    }
}

/// Runs the client-library check `script` (in this crate's `tests/`) with `runner` and `args`;
/// without the library (`runner` is `None`) the check is skipped, except under CI, which must
/// install it (scripts/test.sh does).
fn client_library(what: &str, runner: Option<std::process::Command>, script: &str, args: &[&str]) {
    let Some(mut runner) = runner else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install {what} (scripts/test.sh does)"
        );
        eprintln!("SKIPPED: the {what} check (scripts/test.sh installs it)");
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = runner
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
