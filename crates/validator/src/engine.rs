//! Wiring: runtime, p2p, simplex, marshal, the application (proposals and verification), the
//! committer (finalized blocks into the ledger), the beacon partials and the mempool gossip.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commonware_broadcast::buffered;
use commonware_codec::Encode;
use commonware_consensus::marshal::{
    self, Start, core::Actor as MarshalActor, resolver::p2p as marshal_resolver, standard::Inline,
};
use commonware_consensus::simplex::{
    self,
    config::{ForwardPolicy, SkipBudget, SkipPolicy},
    elector::RoundRobin,
};
use commonware_consensus::types::{Epoch, FixedEpocher, ViewDelta};
use commonware_cryptography::{
    Digested, Digestible, Sha256, Signer, certificate::ConstantProvider, ed25519,
};
use commonware_p2p::{Receiver as _, Recipients, Sender as _, authenticated::lookup};
use commonware_parallel::Sequential;
use commonware_runtime::{
    Quota, Runner as _, Supervisor as _, buffer::paged::CacheRef, tokio as cw_tokio,
};
use commonware_storage::archive::immutable;
use commonware_utils::{NZDuration, NZU16, NZU32, NZU64, NZUsize, ordered::Set};

use sortition_ledger::{Genesis, SignedTx};
use sortition_ledger_service::{LedgerServiceConfig, ReplicaConfig};
use tokio::sync::Notify;

use crate::app::{App, Scheme};
use crate::beacon_pool::{BeaconInner, BeaconPool, decode_partial, encode_partial};
use crate::block::Block;
use crate::committer::commit_loop;
use crate::reporters::{Evidence, Finalized};

use crate::light::NAMESPACE;
const P2P_NAMESPACE: &[u8] = b"sortition/p2p";

const CH_VOTES: u64 = 0;
const CH_CERTS: u64 = 1;
const CH_RESOLVER: u64 = 2;
const CH_BACKFILL: u64 = 3;
const CH_BLOCKS: u64 = 4;
const CH_MEMPOOL: u64 = 5;
const CH_BEACON: u64 = 6;

/// Consensus timeouts.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long a view waits for its leader's proposal.
    pub leader_timeout: Duration,
    /// How long a view waits for certification after the proposal.
    pub certification_timeout: Duration,
    /// How often a timed-out vote is sent again.
    pub timeout_retry: Duration,
    /// How long a proposer waits for the beacon partials of its height before skipping.
    pub beacon_wait: Duration,
    /// Least time between a block and its parent (by their timestamps): the ledger counts
    /// deadlines in blocks, so blocks come at a steady pace rather than as fast as consensus
    /// can go.
    pub block_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            leader_timeout: Duration::from_secs(2),
            certification_timeout: Duration::from_secs(3),
            timeout_retry: Duration::from_secs(2),
            beacon_wait: Duration::from_millis(1500),
            block_interval: Duration::from_millis(250),
        }
    }
}

/// One validator.
#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    pub data_dir: PathBuf,
    pub genesis: Genesis,
    /// The HTTP API (the ledger's, served from this replica).
    pub listen: SocketAddr,
    /// The consensus p2p listener.
    pub p2p: SocketAddr,
    /// Every validator's p2p address, by its public key (hex); this one's may be included.
    pub peers: Vec<(String, SocketAddr)>,
    pub timing: Timing,
    /// How long a submitter waits for finality.
    pub ack_timeout: Duration,
    /// Called once the API listens, with its address (the devnet prints it).
    pub on_listening: Option<fn(SocketAddr)>,
    /// Test only (devnet geneses only): instead of following the protocol, sign conflicting
    /// votes for every proposal (commonware's `conflicter` byzantine mock).
    pub byzantine_conflicter: bool,
}

/// Why a validator refused to start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ValidatorError {
    #[error("invalid genesis: {0}")]
    Genesis(String),
    #[error("validator key: {0}")]
    Key(String),
    #[error("peers: {0}")]
    Peers(String),
    #[error(transparent)]
    Service(#[from] sortition_ledger_service::ServiceError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks everything that can be checked before the runtime starts: the genesis' validator
/// set against its beacon, this validator's key and share, and the peer list.
/// This validator's key, the participants (in order) and the other validators' addresses.
type Preflight = (
    ed25519::PrivateKey,
    Set<ed25519::PublicKey>,
    Vec<(ed25519::PublicKey, SocketAddr)>,
);

fn preflight(cfg: &ValidatorConfig) -> Result<Preflight, ValidatorError> {
    cfg.genesis
        .check_validators()
        .map_err(ValidatorError::Genesis)?;
    if cfg.byzantine_conflicter && !cfg.genesis.devnet {
        return Err(ValidatorError::Genesis(
            "a byzantine test mode runs only on a devnet genesis".into(),
        ));
    }
    sortition_ledger::Beacon::new(&cfg.genesis.chain_id, &cfg.genesis.beacon)
        .map_err(|e| ValidatorError::Genesis(e.to_string()))?;
    // The genesis lists keys ascending, which must be consensus' participant order, because
    // validator i's beacon share is share i.
    let participants = crate::light::participants(&cfg.genesis).map_err(ValidatorError::Genesis)?;
    let keys: Vec<ed25519::PublicKey> = participants.iter().cloned().collect();
    let me = crate::keys::load(&cfg.data_dir).map_err(ValidatorError::Key)?;
    let Some(index) = keys.iter().position(|k| *k == me.public_key()) else {
        return Err(ValidatorError::Key(format!(
            "this validator's key {} is not in the genesis' validator set",
            crate::keys::public_hex(&me)
        )));
    };
    let beacon = sortition_ledger::Beacon::new(&cfg.genesis.chain_id, &cfg.genesis.beacon)
        .map_err(|e| ValidatorError::Genesis(e.to_string()))?;
    let share = sortition_ledger_service::store::load_validator_share(
        &crate::setup::ledger_dir(&cfg.data_dir),
        &beacon,
    )?;
    if share.index() as usize != index {
        return Err(ValidatorError::Key(format!(
            "this validator is participant {index} but holds beacon share {}",
            share.index()
        )));
    }
    let mut peers = Vec::new();
    for (k, addr) in &cfg.peers {
        let pk = crate::keys::parse_public(k).map_err(ValidatorError::Peers)?;
        if !keys.contains(&pk) {
            return Err(ValidatorError::Peers(format!(
                "{k} is not a validator of the genesis"
            )));
        }
        if pk != me.public_key() {
            peers.push((pk, *addr));
        }
    }
    Ok((me, participants, peers))
}

/// Runs a validator until the process is stopped. Blocks the calling thread (it owns its
/// runtime).
pub fn run(cfg: ValidatorConfig) -> Result<(), ValidatorError> {
    let (me, participants, peers) = preflight(&cfg)?;
    let storage = cfg.data_dir.join("consensus");
    sortition_api::private_fs::private_dir(&storage)?;
    let runtime = cw_tokio::Runner::new(
        cw_tokio::Config::new()
            .with_storage_directory(storage)
            .with_catch_panics(false),
    );
    runtime.start(|context| async move { serve(context, cfg, me, participants, peers).await })
}

async fn serve(
    context: cw_tokio::Context,
    cfg: ValidatorConfig,
    me: ed25519::PrivateKey,
    participants: Set<ed25519::PublicKey>,
    peers: Vec<(ed25519::PublicKey, SocketAddr)>,
) -> Result<(), ValidatorError> {
    // The ledger replica and its HTTP API.
    let lcfg =
        LedgerServiceConfig::new(crate::setup::ledger_dir(&cfg.data_dir), cfg.genesis.clone());
    let (handle, replica, mut gossip) = sortition_ledger_service::start_replica(
        &lcfg,
        ReplicaConfig {
            ack_timeout: cfg.ack_timeout,
            ..Default::default()
        },
    )?;
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let api_addr = listener.local_addr()?;
    let h = handle.clone();
    tokio::spawn(async move {
        if let Err(e) =
            sortition_ledger_service::serve_handle(h, listener, std::future::pending()).await
        {
            tracing::error!("ledger API stopped: {e}");
        }
    });
    if let Some(f) = cfg.on_listening {
        f(api_addr);
    }

    // p2p: the validators of the genesis, at the given addresses.
    let max_message = (crate::block::MAX_TXS_BYTES + 64 * 1024) as u32;
    let handshake =
        commonware_stream::cups::Cups::<_, commonware_cryptography::ChaCha20Poly1305>::new(
            commonware_stream::sake::Sake {
                signer: me.clone(),
                synchrony_bound: Duration::from_secs(5),
                max_handshake_age: Duration::from_secs(10),
                version: commonware_stream::sake::Version::V1,
            },
            commonware_stream::cups::Version::V1,
        );
    let p2p_cfg = lookup::Config::local(
        handshake,
        P2P_NAMESPACE,
        cfg.p2p,
        NZUsize!(participants.len().max(1) + 1),
        max_message,
        NZUsize!(4096),
    );
    let (mut network, mut oracle) = lookup::Network::new(context.child("network"), p2p_cfg);
    let mut addrs: Vec<(ed25519::PublicKey, commonware_p2p::Address)> = peers
        .iter()
        .map(|(k, a)| (k.clone(), (*a).into()))
        .collect();
    addrs.push((me.public_key(), cfg.p2p.into()));
    let book: commonware_utils::ordered::Map<_, _> = addrs
        .try_into()
        .map_err(|_| ValidatorError::Peers("a validator is listed twice".into()))?;
    use commonware_p2p::AddressableManager as _;
    oracle.track(0, book);

    let quota = Quota::per_second(NZU32!(1_000));
    let votes = network.register(CH_VOTES, quota);
    let certs = network.register(CH_CERTS, quota);
    let resolver_net = network.register(CH_RESOLVER, quota);
    let backfill = network.register(CH_BACKFILL, quota);
    let blocks_net = network.register(CH_BLOCKS, quota);
    let (mut mempool_tx, mut mempool_rx) = network.register(CH_MEMPOOL, quota);
    let (mut beacon_tx, mut beacon_rx) = network.register(CH_BEACON, quota);
    network.start();

    let scheme = Scheme::signer(NAMESPACE, participants.clone(), me.clone())
        .ok_or_else(|| ValidatorError::Key("not a participant".into()))?;
    let provider = ConstantProvider::new(scheme.clone());
    let epocher = FixedEpocher::new(NZU64!(u64::MAX / 2));
    let page_cache = CacheRef::new(NZU16!(4096), NZUsize!(1024));

    // Marshal: finalized blocks in order, backfill, block storage.
    let genesis_block = Block::genesis(cfg.genesis.hash().as_bytes(), cfg.genesis.genesis_time_ms);
    let genesis_digest = genesis_block.digest();
    let genesis_block = Digested::precomputed(genesis_block, genesis_digest);
    let mcfg = marshal::Config {
        provider: provider.clone(),
        epocher: epocher.clone(),
        start: Start::Genesis(genesis_block),
        mailbox_size: NZUsize!(1024),
        view_retention: ViewDelta::new(64),
        max_repair: NZUsize!(64),
        max_pending_acks: NZUsize!(1),
        block_codec_config: (),
        partition_prefix: "marshal".into(),
        prunable_items_per_section: NZU64!(64),
        replay_buffer: NZUsize!(1 << 20),
        key_write_buffer: NZUsize!(1 << 16),
        value_write_buffer: NZUsize!(1 << 16),
        page_cache: page_cache.clone(),
        strategy: Sequential,
    };
    let resolver = marshal_resolver::init(
        context.child("resolver"),
        marshal_resolver::Config {
            public_key: me.public_key(),
            peer_provider: oracle.clone(),
            blocker: oracle.clone(),
            mailbox_size: NZUsize!(1024),
            fetch_timeout: NZDuration!(Duration::from_secs(2)),
            fetch_retry_delay: Duration::from_millis(200),
            priority_requests: false,
            priority_responses: false,
        },
        backfill,
    );
    let (broadcast_engine, buffer) = buffered::Engine::new(
        context.child("broadcast"),
        buffered::Config {
            public_key: me.public_key(),
            mailbox_size: NZUsize!(1024),
            deque_size: 16,
            priority: false,
            codec_config: (),
            peer_provider: oracle.clone(),
            strategy: Sequential,
        },
    );
    broadcast_engine.start(blocks_net);
    let finalizations = immutable::Archive::init(
        context.child("finalizations"),
        archive_config("finalizations", &page_cache, <Scheme as commonware_cryptography::certificate::Verifier>::certificate_codec_config_unbounded()),
    )
    .await
    .map_err(|e| ValidatorError::Io(std::io::Error::other(e.to_string())))?;
    let blocks = immutable::Archive::init(
        context.child("blocks"),
        archive_config("blocks", &page_cache, ()),
    )
    .await
    .map_err(|e| ValidatorError::Io(std::io::Error::other(e.to_string())))?;
    let (actor, marshal_mailbox, _floor) =
        MarshalActor::init(context.child("marshal"), finalizations, blocks, mcfg).await;
    let (fin_tx, fin_rx) = tokio::sync::mpsc::unbounded_channel();
    actor.start(Finalized { tx: fin_tx }, buffer, resolver);

    // The beacon: our partial for the next height, now and after every block.
    let beacon = Arc::new(BeaconPool {
        inner: Mutex::new(BeaconInner::default()),
        notify: Notify::new(),
        threshold: cfg.genesis.beacon.threshold as usize,
    });
    let (release_tx, mut release_rx) = tokio::sync::watch::channel(replica.height() + 1);
    {
        let replica = replica.clone();
        let beacon = beacon.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            loop {
                tokio::select! {
                    changed = release_rx.changed() => {
                        if changed.is_err() { return; }
                    }
                    _ = tick.tick() => {}
                }
                let height = *release_rx.borrow();
                let p = replica.partial(height);
                beacon.add(&replica, height, p.clone());
                beacon.lock().own = Some((height, p.clone()));
                beacon_tx.send(Recipients::All, encode_partial(height, &p), true);
            }
        });
    }
    {
        let replica = replica.clone();
        let beacon = beacon.clone();
        tokio::spawn(async move {
            while let Ok((_from, msg)) = beacon_rx.recv().await {
                let bytes: Vec<u8> = msg.as_ref().to_vec();
                let Some((height, p)) = decode_partial(&bytes) else {
                    continue;
                };
                if height <= replica.height() || height > replica.height() + 64 {
                    continue;
                }
                if replica.verify_partial(height, &p).is_ok() {
                    beacon.add(&replica, height, p);
                }
            }
        });
    }

    // Mempool gossip: our clients' transactions to the others, theirs into our pool.
    tokio::spawn(async move {
        while let Some(first) = gossip.recv().await {
            let mut batch = vec![first];
            while batch.len() < 512 {
                match gossip.try_recv() {
                    Ok(t) => batch.push(t),
                    Err(_) => break,
                }
            }
            let bytes = sortition_types::canonical_bytes(&batch);
            mempool_tx.send(Recipients::All, bytes, false);
        }
    });
    {
        let replica = replica.clone();
        tokio::spawn(async move {
            while let Ok((_from, msg)) = mempool_rx.recv().await {
                let bytes: Vec<u8> = msg.as_ref().to_vec();
                let Ok(txs) =
                    sortition_types::encoding::from_canonical_bytes::<Vec<SignedTx>>(&bytes)
                else {
                    continue;
                };
                for t in txs {
                    replica.add_remote(t);
                }
            }
        });
    }

    // The committer: finalized blocks into the ledger, then the next partial.
    {
        let replica = replica.clone();
        let beacon = beacon.clone();
        let mailbox = marshal_mailbox.clone();
        tokio::spawn(commit_loop(fin_rx, replica, beacon, mailbox, release_tx));
    }

    // Equivocation evidence consensus reports goes on the ledger, once per (validator, view),
    // signed by this validator's reporting account (derived from its key). Every honest
    // validator reports what it saw; the first included is recorded, the rest are refused as
    // already recorded.
    let (faults_tx, mut faults_rx) = tokio::sync::mpsc::unbounded_channel::<(u32, u64, Vec<u8>)>();
    {
        let reporter = reporting_account(&me);
        let client = sortition_ledger_client::LedgerClient::new(format!("http://{api_addr}"));
        tokio::spawn(async move {
            let mut sent = HashSet::new();
            while let Some((who, view, evidence)) = faults_rx.recv().await {
                if !sent.insert((who, view)) {
                    continue;
                }
                let kind = sortition_ledger::TxKind::ReportValidatorFault { evidence };
                match client.send(&reporter, kind).await {
                    Ok(r) => tracing::warn!(
                        height = r.height,
                        view,
                        "validator fault recorded on the ledger"
                    ),
                    Err(e) => tracing::info!(view, "validator fault not recorded by us: {e}"),
                }
            }
        });
    }

    // Consensus.
    let app = App {
        replica: replica.clone(),
        beacon: beacon.clone(),
        beacon_wait: cfg.timing.beacon_wait,
        block_interval: cfg.timing.block_interval,
    };
    let inline = Inline::new(
        context.child("inline"),
        app,
        marshal_mailbox.clone(),
        epocher,
    );
    if cfg.byzantine_conflicter {
        tracing::warn!("byzantine test mode: signing conflicting votes");
        let c: simplex::mocks::conflicter::Conflicter<_, _, Sha256> =
            simplex::mocks::conflicter::Conflicter::new(
                context.child("byzantine"),
                simplex::mocks::conflicter::Config { scheme },
            );
        let _ = c.start(votes).await;
        return Err(ValidatorError::Io(std::io::Error::other(
            "byzantine engine stopped",
        )));
    }
    let engine = simplex::Engine::new(
        context.child("simplex"),
        simplex::config::Config {
            scheme,
            elector: RoundRobin::<Sha256>::default(),
            blocker: oracle.clone(),
            automaton: inline.clone(),
            relay: inline.clone(),
            reporter: Evidence {
                inner: inline,
                participants: participants.clone(),
                to_ledger: faults_tx,
            },
            strategy: Sequential,
            partition: "simplex".into(),
            mailbox_size: NZUsize!(1024),
            epoch: Epoch::zero(),
            floor: simplex::config::Floor::Genesis(genesis_digest),
            replay_buffer: NZUsize!(1 << 20),
            write_buffer: NZUsize!(1 << 16),
            page_cache,
            leader_timeout: cfg.timing.leader_timeout,
            certification_timeout: cfg.timing.certification_timeout,
            timeout_retry: cfg.timing.timeout_retry,
            view_retention: ViewDelta::new(64),
            skip: SkipPolicy::Enabled {
                timeout: cfg.timing.leader_timeout * 3,
                budget: SkipBudget::Participants,
            },
            fetch_timeout: NZDuration!(Duration::from_secs(1)),
            fetch_retry_delay: Duration::from_millis(100),
            forward: ForwardPolicy::Disabled,
            track_historical_votes: false,
        },
    );
    let handle = engine.start(votes, certs, resolver_net);
    tracing::info!(api = %api_addr, p2p = %cfg.p2p, height = replica.height(), "validator started");
    let _ = handle.await;
    Err(ValidatorError::Io(std::io::Error::other(
        "consensus engine stopped",
    )))
}

/// The ledger account a validator reports faults from: derived from its consensus key, so it
/// needs no key of its own (it holds nothing; reports cost no fee).
fn reporting_account(me: &ed25519::PrivateKey) -> sortition_types::Keypair {
    let mut seed = b"sortition/validator-reporting-account/".to_vec();
    seed.extend_from_slice(&me.encode());
    sortition_types::Keypair::from_seed(&seed)
}

fn archive_config<C: Clone>(name: &str, page_cache: &CacheRef, codec: C) -> immutable::Config<C> {
    immutable::Config {
        metadata_partition: format!("{name}-metadata"),
        freezer_table_partition: format!("{name}-freezer-table"),
        freezer_table_initial_size: 1024,
        freezer_table_resize_frequency: 4,
        freezer_table_resize_chunk_size: 1024,
        freezer_key_partition: format!("{name}-freezer-key"),
        freezer_key_page_cache: page_cache.clone(),
        freezer_value_partition: format!("{name}-freezer-value"),
        freezer_value_target_size: 1 << 24,
        freezer_value_compression: None,
        ordinal_partition: format!("{name}-ordinal"),
        items_per_section: NZU64!(1024),
        codec_config: codec,
        replay_buffer: NZUsize!(1 << 20),
        freezer_key_write_buffer: NZUsize!(1 << 16),
        freezer_value_write_buffer: NZUsize!(1 << 16),
        ordinal_write_buffer: NZUsize!(1 << 16),
    }
}
