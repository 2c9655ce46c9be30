//! Test fixtures: a node over a tiny random-weight model, a table of stacks in place of the
//! ledger, requests signed by the stack's owner, and the node's router served on port 0.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sortition_api::metrics::Registry;
use sortition_api::unix_now_ms;
use sortition_engine::{Engine, EngineConfig};
use sortition_types::auth::AUTH_HEADER;
use sortition_types::{Keypair, ModelId, NodeId, RequestAuth, StackId};

use crate::accounts::{StackAccounts, StackInfo};
use crate::auth::StackSource;
use crate::service::{ChatModel, NodeState};
use crate::store::NodeStore;

/// The model id the fixture serves.
pub const MODEL: &str = "tiny";

/// Stacks by id, as the ledger would answer.
#[derive(Default)]
pub struct TableStacks(pub HashMap<StackId, StackInfo>);

impl StackSource for TableStacks {
    fn stack(
        &self,
        id: StackId,
    ) -> Pin<Box<dyn Future<Output = Result<Option<StackInfo>, String>> + Send + '_>> {
        let found = self.0.get(&id).cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// A stack of `owner` on node 1 for the fixture's model, open for a day.
pub fn stack(id: u64, owner: &Keypair) -> StackInfo {
    StackInfo {
        id: StackId(id),
        owner: owner.public(),
        node: NodeId(1),
        model: ModelId::new(MODEL),
        units: 10_000_000,
        expires_at_ms: unix_now_ms() + 86_400_000,
        open: true,
    }
}

/// The tiny model file, written once per test process.
fn model_file() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sortition-node-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // A context of 1024 tokens: room for a tool list (the byte-level tokenizer spends
        // about a token per byte).
        sortition_engine::testutil::write_tiny_llama_with_context(&dir, 5, 1024)
            .expect("tiny model")
    })
    .clone()
}

/// A node serving the tiny model on one stack.
pub struct Fixture {
    pub state: Arc<NodeState>,
    pub owner: Keypair,
    pub stack: StackId,
    pub url: String,
    http: reqwest::Client,
    nonce: AtomicU64,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// Starts a node whose engine queues `queue_capacity` user requests and batches
    /// `max_batch`.
    pub async fn start(queue_capacity: usize, max_batch: usize) -> Fixture {
        Fixture::start_with(queue_capacity, max_batch, false).await
    }

    /// [`Fixture::start`], with the engine paused until `engine().resume()` when `paused`.
    pub async fn start_with(queue_capacity: usize, max_batch: usize, paused: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::load(EngineConfig {
            queue_capacity,
            max_batch,
            start_paused: paused,
            ..EngineConfig::new(model_file(), MODEL)
        })
        .expect("tiny engine");
        let class = engine.info().node_class.clone();
        let owner = Keypair::from_seed(b"stack owner");
        let mut stacks = TableStacks::default();
        stacks.0.insert(StackId(1), stack(1, &owner));
        let state = Arc::new(NodeState {
            id: NodeId(1),
            key: Keypair::from_seed(b"node"),
            chat: HashMap::from([(ModelId::new(MODEL), ChatModel { engine })]),
            embed: HashMap::new(),
            class,
            store: NodeStore::open(&dir.path().join("node.redb")).expect("store"),
            accounts: StackAccounts::default(),
            stacks: Arc::new(stacks),
            metrics: Registry::default(),
            behaviour: Arc::new(crate::behaviour::Honest),
            audits: Default::default(),
            confidential: None,
            head: sortition_ledger_client::ChainHead::manual(0).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let served = state.clone();
        tokio::spawn(async move {
            let _ = crate::server::serve(served, listener, std::future::pending()).await;
        });
        Fixture {
            state,
            owner,
            stack: StackId(1),
            url,
            http: reqwest::Client::new(),
            nonce: AtomicU64::new(1),
            _dir: dir,
        }
    }

    /// The fixture's engine.
    pub fn engine(&self) -> &Engine {
        &self.state.chat[&ModelId::new(MODEL)].engine
    }

    /// POSTs `body` to `path`, signed by the stack's owner with a fresh nonce.
    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        let auth = RequestAuth::new(
            "POST",
            path,
            body.as_bytes(),
            self.stack,
            nonce,
            unix_now_ms() + 60_000,
        );
        let sig = self
            .owner
            .sign(sortition_types::auth::REQUEST_DOMAIN, &auth);
        self.http
            .post(format!("{}{path}", self.url))
            .header(AUTH_HEADER, auth.header_value(&sig))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request sent")
    }
}

/// A greedy chat request for the fixture's model.
pub fn chat_body(prompt: &str, max_tokens: u32, stream: bool) -> String {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
    .to_string()
}
