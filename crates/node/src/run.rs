//! Starting and running a node: load models, compute the class, register, serve, claim.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sortition_api::metrics::Registry;
use sortition_api::unix_now_ms;
use sortition_engine::{Embedder, Engine, EngineConfig, Kernel, WeightFormat};
use sortition_ledger::{Offer, TxKind};
use sortition_ledger_client::{ChainHead, LedgerClient};
use sortition_models::ModelStore;
use sortition_types::{Amount, Keypair, ModelId, NodeClass, NodeId, StackId};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accounts::StackAccounts;
use crate::behaviour::{Behaviour, Honest};
use crate::claims::{ClaimPolicy, claim_material};
use crate::ledger::{LedgerStacks, Registration, register};
use crate::service::{ChatModel, EmbedModel, NodeState};
use crate::store::NodeStore;

/// A node's settings. Every field has a default suited to a devnet on loopback.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// URL registered on the ledger; defaults to `http://<bound address>`.
    pub advertise_url: Option<String>,
    pub ledger_url: String,
    /// Holds the node key, the receipt database and state.
    pub data_dir: PathBuf,
    /// Chat models: catalog names (pulled into the model cache) or GGUF paths.
    pub chat_models: Vec<String>,
    /// Embedding models: catalog names or directories.
    pub embed_models: Vec<String>,
    pub weight_format: WeightFormat,
    /// The engine's kernel (part of the node class); `None`: the fastest this CPU has.
    pub kernel: Option<Kernel>,
    /// Matmul threads; `None`: the available parallelism.
    pub threads: Option<usize>,
    pub price_per_m_input: Amount,
    pub price_per_m_output: Amount,
    /// `None`: the minimum the ledger requires for the offered models.
    pub collateral: Option<Amount>,
    pub capacity: u32,
    pub max_batch: usize,
    pub queue_capacity: usize,
    /// Prompt tokens the engine feeds per step (a long prompt is fed over several steps while
    /// the batch keeps decoding).
    pub prefill_budget: usize,
    /// Bytes of attention cache the running sequences may reserve together; `None`: bounded
    /// by `max_batch` only.
    pub kv_memory: Option<usize>,
    pub claim_policy: ClaimPolicy,
    /// How often stacks are checked for claims.
    pub claim_interval: Duration,
    pub adversary: Option<crate::adversary::Mode>,
    /// Serve confidential requests with keys attested by this attester (`None`: no
    /// confidential requests). `InsecureDev` proves nothing: development networks only.
    pub attester: Option<sortition_confidential::AttesterKind>,
    /// What a hardware attester needs (collateral, VCEK, configfs-tsm directory).
    pub attester_config: sortition_confidential::AttesterConfig,
    /// Whose evidence this node accepts before re-sealing a confidential request to an
    /// auditor. Required with a hardware attester (without it, no auditor could be sent this
    /// node's confidential requests, and withholding them is slashed); a dev node accepts dev
    /// auditors.
    pub auditor_policy: Option<sortition_confidential::Policy>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_url: None,
            ledger_url: "http://127.0.0.1:7400".into(),
            data_dir: PathBuf::from("node-data"),
            chat_models: vec!["smollm2-135m-instruct".into()],
            embed_models: vec![],
            weight_format: WeightFormat::default(),
            kernel: None,
            threads: None,
            price_per_m_input: Amount(100_000),
            price_per_m_output: Amount(200_000),
            collateral: None,
            capacity: 8,
            max_batch: 8,
            queue_capacity: 64,
            prefill_budget: sortition_engine::DEFAULT_PREFILL_BUDGET,
            kv_memory: None,
            claim_policy: ClaimPolicy::default(),
            claim_interval: Duration::from_secs(5),
            adversary: None,
            attester: None,
            attester_config: Default::default(),
            auditor_policy: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("model: {0}")]
    Model(#[from] sortition_engine::EngineError),
    #[error("model store: {0}")]
    ModelStore(#[from] sortition_models::ModelError),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// A started node.
pub struct RunningNode {
    pub id: NodeId,
    pub url: String,
    pub class: NodeClass,
    pub state: Arc<NodeState>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Stops accepting, drains in-flight requests, then claims every stack with receipts.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The conduct `cfg` asks for: honest, or the devnet's adversary.
fn behaviour(cfg: &NodeConfig) -> Arc<dyn Behaviour> {
    match cfg.adversary {
        Some(mode) => Arc::new(mode),
        None => Arc::new(Honest),
    }
}

fn load_chat(cfg: &NodeConfig, name: &str, store: &ModelStore) -> Result<Engine, StartError> {
    let path = PathBuf::from(name);
    let (path, id) = if path.extension().is_some_and(|e| e == "gguf") {
        let id = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        (path, id)
    } else {
        (store.pull(name, false)?.primary, name.to_string())
    };
    let mut ec = EngineConfig::new(path, id);
    ec.weight_format = cfg.weight_format;
    ec.kernel = cfg.kernel;
    ec.threads = cfg.threads;
    ec.max_batch = cfg.max_batch;
    ec.queue_capacity = cfg.queue_capacity;
    ec.prefill_budget = cfg.prefill_budget;
    ec.kv_memory = cfg.kv_memory;
    ec.truncate_layers = behaviour(cfg).model_layers();
    Ok(Engine::load(ec)?)
}

fn load_embed(name: &str, store: &ModelStore) -> Result<EmbedModel, StartError> {
    let path = PathBuf::from(name);
    let (dir, digest, id) = if path.is_dir() {
        let weights = path.join("model.safetensors");
        let id = path
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        (path.clone(), sortition_models::file_digest(&weights)?, id)
    } else {
        let m = store.pull(name, false)?;
        (m.dir, m.digest, name.to_string())
    };
    Ok(EmbedModel {
        embedder: Arc::new(Embedder::load(&dir)?),
        id: ModelId::new(id),
        digest,
    })
}

/// Loads models, registers on the ledger, and serves until [`RunningNode::shutdown`].
pub async fn start(cfg: NodeConfig, key: Keypair) -> Result<RunningNode, StartError> {
    // The directory holds keys, receipts and confidential requests: owner only, and what an
    // older version or a loose umask left readable is tightened.
    sortition_api::private_fs::private_tree(&cfg.data_dir)?;
    let client = LedgerClient::new(cfg.ledger_url.clone());
    let genesis = client
        .genesis()
        .await
        .map_err(|e| StartError::Ledger(e.to_string()))?;
    if cfg.adversary.is_some() && !genesis.devnet {
        return Err(StartError::Config(
            "adversary modes exist only on a devnet ledger".into(),
        ));
    }
    let models = ModelStore::from_env();
    let (chat, embed) = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || -> Result<_, StartError> {
            let mut chat = HashMap::new();
            for name in &cfg.chat_models {
                let engine = load_chat(&cfg, name, &models)?;
                chat.insert(engine.info().id.clone(), ChatModel { engine });
            }
            let mut embed = HashMap::new();
            for name in &cfg.embed_models {
                let m = load_embed(name, &models)?;
                embed.insert(m.id.clone(), m);
            }
            Ok((chat, embed))
        })
        .await
        .map_err(|e| StartError::Config(format!("model loading panicked: {e}")))??
    };
    let class = node_class(&chat, &embed, cfg.kernel)?;
    let listener = TcpListener::bind(cfg.listen).await?;
    let url = cfg.advertise_url.clone().unwrap_or_else(|| {
        format!(
            "http://{}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        )
    });
    let offers: Vec<Offer> = chat
        .keys()
        .chain(embed.keys())
        .map(|m| Offer {
            model: m.clone(),
            price_per_m_input: cfg.price_per_m_input,
            price_per_m_output: cfg.price_per_m_output,
        })
        .collect();
    let db = cfg.data_dir.join("node.redb");
    sortition_api::private_fs::private_file(&db)?;
    let store = NodeStore::open(&db)?;
    let swept = store.sweep_nonces(unix_now_ms())?;
    tracing::debug!(swept, "expired request nonces forgotten");
    let id = register(
        &client,
        &key,
        Some(&store),
        Registration {
            endpoint: url.clone(),
            class: class.clone(),
            offers,
            capacity: cfg.capacity,
            collateral: cfg.collateral,
            confidential_key: [0; 32],
            attestation: Vec::new(),
        },
    )
    .await
    .map_err(StartError::Ledger)?;
    let (confidential, epochs_from) = match cfg.attester {
        Some(kind) => {
            let ring = crate::confidential::KeyRing::new(
                id,
                kind,
                &cfg.attester_config,
                cfg.auditor_policy.clone(),
                &cfg.data_dir.join("custody.key"),
            )
            .map_err(|e| StartError::Config(format!("attester: {e}")))?;
            sortition_api::private_fs::private_file(&cfg.data_dir.join("custody.key"))?;
            if ring.is_insecure() {
                tracing::warn!(node = %id, "confidential keys attested by the INSECURE dev attester: no TEE, the evidence proves nothing");
            }
            let height = client
                .status()
                .await
                .map_err(|e| StartError::Ledger(e.to_string()))?
                .height;
            let epoch = ring
                .publish(&client, &key)
                .await
                .map_err(|e| StartError::Ledger(format!("publishing the confidential key: {e}")))?;
            tracing::info!(node = %id, epoch, attester = %ring.label(), "confidential key published");
            let from = sortition_ledger_client::Cursor {
                height: height + 1,
                index: 0,
            };
            (Some(Arc::new(ring)), Some(from))
        }
        None => (None, None),
    };
    let accounts = StackAccounts::default();
    restore_accounts(&store, &accounts)?;
    let stacks = Arc::new(LedgerStacks::new(client.clone()));
    let (stop, stop_rx) = watch::channel(false);
    let (head, head_follower) = ChainHead::follow(client.clone(), {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    });
    let state = Arc::new(NodeState {
        id,
        key: key.clone(),
        chat,
        embed,
        class: class.clone(),
        store,
        accounts,
        stacks: stacks.clone(),
        metrics: Registry::default(),
        behaviour: behaviour(&cfg),
        audits: Default::default(),
        confidential: confidential.clone(),
        head,
    });
    let server = {
        let state = state.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::server::serve(state, listener, shutdown).await {
                tracing::error!(error = %e, "node server failed");
            }
        })
    };
    let claimer = tokio::spawn(claim_loop(
        state.clone(),
        client.clone(),
        stacks,
        cfg.claim_policy,
        cfg.claim_interval,
        stop_rx.clone(),
    ));
    let auditor = tokio::spawn(crate::audit::follow(
        state.clone(),
        client.clone(),
        stop_rx.clone(),
    ));
    let mut tasks = vec![server, claimer, auditor, tokio::spawn(head_follower)];
    if let (Some(ring), Some(from)) = (confidential, epochs_from) {
        tasks.push(tokio::spawn(crate::confidential::follow_epochs(
            ring,
            client.clone(),
            key.clone(),
            from,
            stop_rx.clone(),
        )));
    }
    tracing::info!(node = %id, %url, "node serving");
    Ok(RunningNode {
        id,
        url,
        class,
        state,
        stop,
        tasks,
    })
}

fn node_class(
    chat: &HashMap<ModelId, ChatModel>,
    embed: &HashMap<ModelId, EmbedModel>,
    kernel: Option<Kernel>,
) -> Result<NodeClass, StartError> {
    if let Some(m) = chat.values().next() {
        return Ok(m.engine.info().node_class.clone());
    }
    if let Some(m) = embed.values().next() {
        return Ok(NodeClass {
            engine_version: sortition_engine::ENGINE_VERSION.into(),
            model_digest: m.digest,
            quantization: "f32".into(),
            device: "cpu".into(),
            kernels: sortition_engine::kernel_set(kernel),
        });
    }
    Err(StartError::Config("a node needs at least one model".into()))
}

/// Restores per-stack counters from persisted receipts, so a restart neither forgets what a
/// stack spent nor reuses a receipt sequence number.
fn restore_accounts(store: &NodeStore, accounts: &StackAccounts) -> Result<(), StartError> {
    for stack in store.stacks_with_receipts()? {
        let rs = store.receipts(stack)?;
        let used = rs.iter().map(|r| r.receipt.units().0).sum();
        let next = rs.last().map(|r| r.receipt.sequence + 1).unwrap_or(0);
        accounts.restore(stack, used, next);
    }
    Ok(())
}

/// Checks stacks periodically and claims those that are due; on stop, claims everything.
async fn claim_loop(
    state: Arc<NodeState>,
    client: LedgerClient,
    stacks: Arc<LedgerStacks>,
    policy: ClaimPolicy,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if let Err(e) = claim_due(&state, &client, &stacks, policy, stopping).await {
            tracing::warn!(error = %e, "claim round failed");
        }
        if stopping {
            return;
        }
    }
}

/// How long a claim waits for the requests in flight on the stack it closed.
pub const CLAIM_DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Claims every unclaimed stack that is due (all of them when `all`).
pub async fn claim_due(
    state: &NodeState,
    client: &LedgerClient,
    stacks: &LedgerStacks,
    policy: ClaimPolicy,
    all: bool,
) -> Result<usize, String> {
    let mut claimed = 0;
    for stack in state.store.unclaimed_stacks()? {
        let Some(info) = state.stacks.stack(stack).await? else {
            continue;
        };
        let receipts = state.store.receipts(stack).map_err(|e| e.to_string())?;
        if !all && !policy.due(&receipts, info.units, info.expires_at_ms, unix_now_ms()) {
            continue;
        }
        if !all
            && state.behaviour.times_claims()
            && unix_now_ms() + policy.before_expiry_ms / 2 < info.expires_at_ms
            && crate::dodge::predicts_audit(client, &info.model, receipts.len() as u64)
                .await
                .unwrap_or(false)
        {
            tracing::info!(%stack, "dodge: the predicted sample holds a receipt; postponing the claim");
            continue;
        }
        // Close the stack to new requests, wait for those in flight, then claim. The book's
        // close is what makes this safe: a request that looked the stack up just before
        // could otherwise reserve after the wait and add a receipt to a claimed stack.
        stacks.close(stack);
        state.accounts.close(stack);
        if !state.accounts.drained(stack, CLAIM_DRAIN_LIMIT).await {
            // A request still running past the limit: its receipt, if it comes, is not in
            // this claim (the stack is closed on the ledger once claimed).
            tracing::warn!(%stack, in_flight = state.accounts.in_flight(stack), "claiming with a request still in flight");
        }
        if claim_stack(client, &state.key, &state.store, stack).await? {
            state.metrics.inc("claims_total", "", 1);
            claimed += 1;
        }
    }
    Ok(claimed)
}

/// Claims `stack` with every receipt the store holds for it and remembers that it did.
/// `Ok(false)`: the ledger refused (logged).
async fn claim_stack(
    client: &LedgerClient,
    key: &Keypair,
    store: &NodeStore,
    stack: StackId,
) -> Result<bool, String> {
    let all = store.receipts(stack).map_err(|e| e.to_string())?;
    let receipts = crate::claims::in_position(&all);
    if receipts.len() < all.len() {
        let at = receipts.len();
        let found = all.get(at).map(|r| r.receipt.sequence);
        tracing::error!(%stack, position = at, ?found, left_out = all.len() - at, "receipt sequences have a gap: claiming only the receipts before it (past it, audits would judge the wrong request)");
    }
    if receipts.is_empty() {
        // Nothing claimable: remember it, so the error is not repeated every round.
        store
            .set_meta(&crate::store::claimed_key(stack), b"1")
            .map_err(|e| e.to_string())?;
        return Ok(false);
    }
    let m = claim_material(receipts);
    let kind = TxKind::ClaimStack {
        stack,
        units_used: m.units_used,
        receipts_root: m.receipts_root,
        receipt_count: m.receipt_count,
    };
    match client.send(key, kind).await {
        Ok(_) => {
            store
                .set_meta(&crate::store::claimed_key(stack), b"1")
                .map_err(|e| e.to_string())?;
            tracing::info!(%stack, units = m.units_used.0, receipts = m.receipt_count, "claimed stack");
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(%stack, error = %e, "claim refused");
            Ok(false)
        }
    }
}
