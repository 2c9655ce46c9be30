//! `sortition devnet`: the whole network in one process on loopback.
//!
//! Owns: the devnet's genesis (kept in the data directory so a second run reuses the chain),
//! its keys, funding the nodes and the gateway from the faucet, starting a ledger, N nodes of
//! one class and a gateway, and writing `devnet.json`.
//!
//! Does not own: any rule or behaviour of those services; it only wires real ones together.

pub mod genesis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sortition_engine::WeightFormat;
use sortition_gateway::run::{GatewayRunConfig, RunningGateway};
use sortition_gateway::state::{GatewayConfig, GatewayState};
use sortition_gateway::store::{GatewayStore, StoreOptions, UserId};
use sortition_ledger::TxKind;
use sortition_ledger_client::LedgerClient;
use sortition_ledger_service::{Background, LedgerServiceConfig};
use sortition_node::adversary::Mode;
use sortition_node::run::{NodeConfig, RunningNode};
use sortition_types::{Amount, Keypair, NodeId};

/// What to start.
#[derive(Clone, Debug)]
pub struct DevnetConfig {
    pub data_dir: PathBuf,
    /// Honest nodes (plus one more when `adversary` is set).
    pub nodes: usize,
    /// Audit probability per receipt, in parts per million (0 disables audits).
    pub audit_q_ppm: u32,
    /// How auditors check sampled requests (fixed in genesis).
    pub audit_method: sortition_ledger::AuditMethod,
    /// Blocks (250 ms each) of every audit and dispute commit or reveal phase. The default,
    /// 120 (30 s), covers re-executing a few requests at a time on a CPU; a devnet auditing
    /// every request under heavy load needs longer.
    pub audit_phase_blocks: u64,
    /// Adds one cheating node.
    pub adversary: Option<Mode>,
    /// Catalog name or GGUF path of the chat model.
    pub chat_model: String,
    /// Catalog name or directory of the embedding model, if any.
    pub embed_model: Option<String>,
    pub weight_format: WeightFormat,
    /// Every node's engine kernel; `None`: the fastest this CPU has.
    pub kernel: Option<sortition_engine::Kernel>,
    /// Every node's matmul threads; `None`: the available parallelism.
    pub threads: Option<usize>,
    pub gateway_listen: SocketAddr,
    pub node_claim_interval: std::time::Duration,
    /// When nodes claim their stacks (devnet: soon, so settlement and audits are visible).
    pub claim_policy: sortition_node::claims::ClaimPolicy,
    /// Nodes publish attested confidential keys and serve sealed requests. `InsecureDev`
    /// (the only one built) proves nothing: clients must allow it explicitly.
    pub attester: Option<sortition_confidential::AttesterKind>,
    /// Blocks per epoch (confidential keys rotate at every turn); `None`: the default.
    pub epoch_length_blocks: Option<u64>,
    /// 0: the embedded single sequencer in this process. N ≥ 1: N validators under BFT
    /// consensus, each its own OS process (`sortition validator`), started from
    /// `validator_exe`. Fixed at the first run (the genesis names the validators).
    pub validators: usize,
    /// The `sortition` binary (for `validators` > 0).
    pub validator_exe: Option<PathBuf>,
}

impl DevnetConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        DevnetConfig {
            data_dir: data_dir.into(),
            nodes: 3,
            audit_q_ppm: 0,
            audit_method: sortition_ledger::AuditMethod::Reexecute,
            audit_phase_blocks: 120,
            adversary: None,
            chat_model: "smollm2-135m-instruct".into(),
            embed_model: Some("all-minilm-l6-v2".into()),
            weight_format: WeightFormat::default(),
            kernel: None,
            threads: None,
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            node_claim_interval: std::time::Duration::from_secs(5),
            claim_policy: sortition_node::claims::ClaimPolicy {
                max_age_ms: 20_000,
                ..Default::default()
            },
            attester: None,
            epoch_length_blocks: None,
            validators: 0,
            validator_exe: None,
        }
    }
}

/// The scoring tolerance calibrated for the default model (`bench/conformance`): honest greedy
/// answers score exactly the argmax at every position, and honest sampled answers are the
/// seeded draw's pick at every position (teacher-forced rows equal decode rows bit for bit).
/// The slacks absorb rounding a future kernel might bring; `max_rank` only applies to
/// policies without the draw check. A failed score only triggers re-execution, never a
/// verdict.
pub fn default_score_method() -> sortition_ledger::AuditMethod {
    sortition_ledger::AuditMethod::Score {
        max_rank: 1_000,
        logit_slack_milli: 250,
        draw_slack_ppm: Some(1_000),
    }
}

/// Why the devnet could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error("{0}")]
    Setup(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("node: {0}")]
    Node(#[from] sortition_node::run::StartError),
    #[error("gateway: {0}")]
    Gateway(String),
}

/// `devnet.json`: where everything is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevnetInfo {
    pub gateway_url: String,
    pub api_key: String,
    /// The ledger's URL; with validators, all of theirs, comma-separated (what
    /// `LedgerClient::new`, `--ledger` and the nodes' settings take).
    pub ledger_url: String,
    /// The validators, when the ledger is replicated (`--validators N`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validators: Vec<ValidatorEntry>,
    pub nodes: Vec<NodeEntry>,
    pub models: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: NodeId,
    pub url: String,
    /// Node class fingerprint.
    pub class: String,
    pub adversary: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValidatorEntry {
    /// Its consensus key (hex), as in the genesis.
    pub id: String,
    pub url: String,
    pub pid: u32,
}

/// The devnet's ledger: the embedded sequencer, or validator processes.
pub enum RunningLedger {
    Embedded(Background),
    Validators(Vec<std::process::Child>),
}

/// A running devnet.
pub struct Devnet {
    pub info: DevnetInfo,
    pub ledger: RunningLedger,
    pub nodes: Vec<RunningNode>,
    pub gateway: Arc<GatewayState>,
    running_gateway: RunningGateway,
}

fn key_file(dir: &Path, name: &str) -> Result<Keypair, DevnetError> {
    let path = dir.join("keys").join(format!("{name}.key"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut secret = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut secret)
            .map_err(|e| DevnetError::Setup(format!("{}: {e}", path.display())))?;
        return Ok(Keypair::from_secret(secret));
    }
    sortition_api::private_fs::private_dir(path.parent().unwrap_or(dir))?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| DevnetError::Setup(format!("OS randomness: {e}")))?;
    write_private(&path, &hex::encode(secret))?;
    Ok(Keypair::from_secret(secret))
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), DevnetError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Mints `amount` to `to` through the devnet faucet, signed by the admin.
async fn fund(
    client: &LedgerClient,
    admin: &Keypair,
    to: &Keypair,
    amount: Amount,
) -> Result<(), DevnetError> {
    let have = client
        .account(&to.public())
        .await
        .map(|a| a.balance)
        .unwrap_or_default();
    if have >= amount {
        return Ok(());
    }
    client
        .send(
            admin,
            TxKind::Faucet {
                to: to.public(),
                amount: Amount(amount.0 - have.0),
            },
        )
        .await
        .map_err(|e| DevnetError::Ledger(format!("faucet: {e}")))?;
    Ok(())
}

impl Devnet {
    pub async fn start(cfg: DevnetConfig) -> Result<Devnet, DevnetError> {
        // The data directory holds keys, prompts and chain state: 0700, files 0600, tightened
        // when an older run left them looser.
        sortition_api::private_fs::private_tree(&cfg.data_dir)?;
        let dir = cfg.data_dir.canonicalize()?;
        sortition_api::private_fs::private_tree(&dir.join("keys"))?;
        let admin = key_file(&dir, "admin")?;
        let genesis = genesis::load_or_create(&dir, &admin, &cfg)?;
        if cfg.validators != 0 && cfg.validators != genesis.validators.len() {
            return Err(DevnetError::Setup(format!(
                "the chain in {} was created with {} validators, not {}: use another --data-dir",
                dir.display(),
                genesis.validators.len(),
                cfg.validators
            )));
        }
        let (ledger, ledger_url, validators) = if genesis.validators.is_empty() {
            let mut lcfg = LedgerServiceConfig::new(dir.join("ledger"), genesis);
            // Blocks are the ledger's clock: keep it ticking on an idle devnet.
            // Blocks are sealed at a steady pace (a block collects transactions for 250 ms), so
            // a deadline of N blocks is N/4 seconds whatever the load.
            lcfg.idle_block_interval = Some(std::time::Duration::from_millis(250));
            lcfg.block_interval = std::time::Duration::from_millis(250);
            let ledger = sortition_ledger_service::run_in_background(lcfg)
                .await
                .map_err(|e| DevnetError::Ledger(e.to_string()))?;
            let url = ledger.url.clone();
            (RunningLedger::Embedded(ledger), url, Vec::new())
        } else {
            let (children, entries) = start_validators(&dir, &genesis, &cfg).await?;
            let url = entries
                .iter()
                .map(|v| v.url.clone())
                .collect::<Vec<_>>()
                .join(",");
            (RunningLedger::Validators(children), url, entries)
        };
        let client = LedgerClient::new(&ledger_url);
        let float = Amount::from_units(1_000_000).unwrap_or(Amount(u64::MAX / 4));

        let mut nodes = Vec::new();
        let total = cfg.nodes + usize::from(cfg.adversary.is_some());
        for i in 0..total {
            let key = key_file(&dir, &format!("node-{i}"))?;
            fund(&client, &admin, &key, float).await?;
            let adversary = if i == cfg.nodes { cfg.adversary } else { None };
            let nc = NodeConfig {
                ledger_url: ledger_url.clone(),
                data_dir: dir.join(format!("node-{i}")),
                chat_models: vec![cfg.chat_model.clone()],
                embed_models: cfg.embed_model.clone().into_iter().collect(),
                weight_format: cfg.weight_format,
                kernel: cfg.kernel,
                threads: cfg.threads,
                claim_interval: cfg.node_claim_interval,
                claim_policy: cfg.claim_policy,
                adversary,
                attester: cfg.attester,
                collateral: Some(Amount::from_units(100).unwrap_or_default()),
                ..NodeConfig::default()
            };
            nodes.push(sortition_node::run::start(nc, key).await?);
        }

        let gw_dir = dir.join("gateway");
        sortition_api::private_fs::private_dir(&gw_dir)?;
        let account = key_file(&dir, "gateway")?;
        fund(&client, &admin, &account, float).await?;
        let listener = tokio::net::TcpListener::bind(cfg.gateway_listen).await?;
        // The same start as `sortition gateway`, on this data dir, ledger and account.
        let run_cfg = GatewayRunConfig {
            listen: listener.local_addr()?,
            metrics_listen: None,
            ledger_url: ledger_url.clone(),
            data_dir: gw_dir.clone(),
            database_url: None,
            account_key: dir.join("keys").join("gateway.key"),
            config: GatewayConfig::default(),
            store: StoreOptions::default(),
        };
        let running = sortition_gateway::run::start(run_cfg, account, listener)
            .await
            .map_err(|e| DevnetError::Gateway(e.to_string()))?;
        let gateway = running.state.clone();
        let gateway_url = running.url.clone();
        let (user, api_key) = devnet_user(&gateway.store, &gw_dir).await?;
        tracing::info!(user = user.0, "devnet user ready");

        let info = DevnetInfo {
            gateway_url,
            api_key,
            ledger_url: ledger_url.clone(),
            validators,
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| NodeEntry {
                    id: n.id,
                    url: n.url.clone(),
                    class: n.class.fingerprint().to_hex(),
                    adversary: if i == cfg.nodes {
                        cfg.adversary.map(|m| format!("{m:?}"))
                    } else {
                        None
                    },
                })
                .collect(),
            models: {
                use sortition_gateway::directory::RouterQueries;
                gateway
                    .router
                    .lock()
                    .await
                    .models()
                    .into_iter()
                    .map(|m| m.0)
                    .collect()
            },
        };
        let json =
            serde_json::to_string_pretty(&info).map_err(|e| DevnetError::Setup(e.to_string()))?;
        write_private(&dir.join("devnet.json"), &json)?;
        Ok(Devnet {
            info,
            ledger,
            nodes,
            gateway,
            running_gateway: running,
        })
    }

    /// Stops the gateway, then the nodes (which claim what they earned), then the ledger.
    pub async fn shutdown(self) {
        if let Err(e) = self.running_gateway.shutdown().await {
            tracing::warn!(error = %e, "gateway shutdown");
        }
        for n in self.nodes {
            n.shutdown().await;
        }
        match self.ledger {
            RunningLedger::Embedded(l) => {
                if let Err(e) = l.shutdown().await {
                    tracing::warn!(error = %e, "ledger shutdown");
                }
            }
            RunningLedger::Validators(children) => {
                for mut c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

fn free_port() -> Result<SocketAddr, DevnetError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts the genesis' validators as `sortition validator` processes (their keys and shares
/// are in `DIR/validator-I`, dealt with the genesis), and waits until each serves its API.
async fn start_validators(
    dir: &Path,
    genesis: &sortition_ledger::Genesis,
    cfg: &DevnetConfig,
) -> Result<(Vec<std::process::Child>, Vec<ValidatorEntry>), DevnetError> {
    let exe = cfg
        .validator_exe
        .clone()
        .ok_or_else(|| DevnetError::Setup("validators need the sortition binary".into()))?;
    let n = genesis.validators.len();
    let dirs: Vec<PathBuf> = (0..n).map(|i| genesis::validator_dir(dir, i)).collect();
    let ids: Vec<String> = dirs
        .iter()
        .map(|d| {
            sortition_validator::keys::load(d)
                .map(|k| sortition_validator::keys::public_hex(&k))
                .map_err(DevnetError::Setup)
        })
        .collect::<Result<_, _>>()?;
    let apis: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
    let p2ps: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
    let peers = ids
        .iter()
        .zip(&p2ps)
        .map(|(k, a)| format!("{k}@{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let genesis_path = dir.join("genesis.json");
    let mut children = Vec::new();
    let mut entries = Vec::new();
    for i in 0..n {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dirs[i].join("validator.log"))?;
        let child = std::process::Command::new(&exe)
            .arg("validator")
            .arg("--data-dir")
            .arg(&dirs[i])
            .arg("--genesis")
            .arg(&genesis_path)
            .args([
                "--listen",
                &apis[i].to_string(),
                "--p2p",
                &p2ps[i].to_string(),
            ])
            .args(["--peers", &peers, "--exit-on-stdin-eof"])
            .stdin(std::process::Stdio::piped())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()?;
        entries.push(ValidatorEntry {
            id: ids[i].clone(),
            url: format!("http://{}", apis[i]),
            pid: child.id(),
        });
        children.push(child);
    }
    for (i, e) in entries.iter().enumerate() {
        let c = LedgerClient::new(&e.url);
        let mut up = false;
        for _ in 0..300 {
            if c.status().await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if !up {
            for mut c in children {
                let _ = c.kill();
            }
            return Err(DevnetError::Ledger(format!(
                "validator {i} did not start within 30 s; see {}",
                dirs[i].join("validator.log").display()
            )));
        }
    }
    Ok((children, entries))
}

/// The devnet's user (created once, its id kept in the data dir), topped up, with a fresh key.
async fn devnet_user(store: &GatewayStore, dir: &Path) -> Result<(UserId, String), DevnetError> {
    let g = |e: sortition_gateway::store::StoreError| DevnetError::Gateway(e.to_string());
    let id_file = dir.join("devnet-user");
    let user = match std::fs::read_to_string(&id_file)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        Some(id) => UserId(id),
        None => {
            let id = store.create_user("devnet").await.map_err(g)?;
            sortition_api::private_fs::write_private(&id_file, id.0.to_string())?;
            id
        }
    };
    let credits = Amount::from_units(1_000).unwrap_or_default();
    let have = store.user(user).await.map_err(g)?.credits;
    if have < credits {
        store
            .top_up(user, Amount(credits.0 - have.0))
            .await
            .map_err(g)?;
    }
    let (_, key) = store
        .create_key(user, "devnet", 600, None)
        .await
        .map_err(g)?;
    Ok((user, key.expose().to_string()))
}
