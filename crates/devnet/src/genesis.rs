//! The devnet's genesis: created on the first run from the models it will serve, then kept in
//! `genesis.json` so later runs reopen the same chain.
//!
//! Beacon keys: this module acts as a **trusted dealer**. On the first run it deals a fresh
//! 1-of-1 BLS threshold group from OS randomness (`sortition_ledger::beacon::deal_from_seed`),
//! puts the group key, threshold and public share in the genesis, and writes the one secret
//! share to the ledger's data directory (`ledger/beacon-share`, 0600) — never to the genesis,
//! which `GET /v1/genesis` serves to anyone. Nodes therefore cannot compute the randomness that
//! samples their receipts. The dealer forgets the group secret once written, but it did know it:
//! production needs a distributed key generation among the validators (e.g. commonware's
//! `bls12381::dkg`, Feldman/Desmedt with resharing), whose public output goes in the genesis
//! the same way while no party ever holds the group secret.

use std::path::Path;

use sortition_ledger::{AuditPolicy, Genesis, ModelSpec, Params, SecurityPolicy};
use sortition_models::ModelStore;
use sortition_types::{Amount, Keypair, ModelId};

use crate::{DevnetConfig, DevnetError};

/// Chain id of every devnet.
pub const CHAIN_ID: &str = "sortition-devnet";

/// The audit policy of the devnet's models: `q` from the config, `k = 2` (or fewer with fewer
/// nodes), slash half the collateral; C, R and r as in Atoma's paper (R = 1.2 C, r = 0.5).
pub fn policy(cfg: &DevnetConfig) -> SecurityPolicy {
    let k = cfg.nodes.saturating_sub(1).clamp(1, 2) as u8;
    SecurityPolicy {
        audit: (cfg.audit_q_ppm > 0).then_some(AuditPolicy {
            q_ppm: cfg.audit_q_ppm,
            k,
            method: cfg.audit_method,
        }),
        quorum: None,
        confidential_required: false,
        slash_bps: 5_000,
        cost_per_request: Amount(1_000),
        audit_reward: Amount(1_200),
        colluding_share_ppm: 500_000,
    }
}

/// Short windows so that claims settle and audits resolve within seconds on a devnet; each
/// audit and dispute phase lasts `phase_blocks` (blocks come every 250 ms).
pub fn params(phase_blocks: u64) -> Params {
    Params {
        challenge_window_blocks: 20,
        unbonding_blocks: 40,
        audit_commit_blocks: phase_blocks,
        audit_reveal_blocks: phase_blocks,
        dispute_commit_blocks: phase_blocks,
        dispute_reveal_blocks: phase_blocks,
        ..Params::default()
    }
}

fn model_spec(
    name: &str,
    store: &ModelStore,
    cfg: &DevnetConfig,
) -> Result<ModelSpec, DevnetError> {
    let path = Path::new(name);
    let (id, digest) = if path.exists() {
        let weights = if path.is_dir() {
            path.join("model.safetensors")
        } else {
            path.to_path_buf()
        };
        let id = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        }
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
        let d = sortition_models::file_digest(&weights)
            .map_err(|e| DevnetError::Setup(e.to_string()))?;
        (id, d)
    } else {
        let m = store
            .pull(name, true)
            .map_err(|e| DevnetError::Setup(e.to_string()))?;
        (name.to_string(), m.digest)
    };
    // The tokenizer of a GGUF model is inside the file; its digest is covered by the weights'.
    Ok(ModelSpec {
        id: ModelId::new(id),
        weights_digest: digest,
        tokenizer_digest: digest,
        policy: policy(cfg),
    })
}

/// Reads `genesis.json`, or builds and writes it on the first run.
/// Where validator `i` of a replicated devnet keeps its key, share, ledger and consensus state.
pub fn validator_dir(dir: &Path, i: usize) -> std::path::PathBuf {
    dir.join(format!("validator-{i}"))
}

pub fn load_or_create(
    dir: &Path,
    admin: &Keypair,
    cfg: &DevnetConfig,
) -> Result<Genesis, DevnetError> {
    let path = dir.join("genesis.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text)
            .map_err(|e| DevnetError::Setup(format!("{}: {e}", path.display())));
    }
    let store = ModelStore::from_env();
    let mut g = Genesis::devnet(CHAIN_ID, admin.public());
    g.params = params(cfg.audit_phase_blocks);
    if let Some(n) = cfg.epoch_length_blocks {
        g.params.epoch_length_blocks = n.max(1);
    }
    g.models.push(model_spec(&cfg.chat_model, &store, cfg)?);
    if let Some(e) = &cfg.embed_model {
        g.models.push(model_spec(e, &store, cfg)?);
    }
    if cfg.validators > 0 {
        // Consensus keys and beacon shares for each validator, dealt here (a trusted dealer:
        // fine for a devnet, see sortition_validator::setup).
        let dirs: Vec<_> = (0..cfg.validators).map(|i| validator_dir(dir, i)).collect();
        sortition_validator::setup::deal(&mut g, &dirs).map_err(DevnetError::Setup)?;
        let text =
            serde_json::to_string_pretty(&g).map_err(|e| DevnetError::Setup(e.to_string()))?;
        crate::write_private(&path, &text)?;
        return Ok(g);
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| DevnetError::Setup(e.to_string()))?;
    let (beacon, shares) = sortition_ledger::beacon::deal_from_seed(seed, 1)
        .map_err(|e| DevnetError::Setup(e.to_string()))?;
    let share = shares
        .first()
        .ok_or_else(|| DevnetError::Setup("the dealer dealt no share".into()))?;
    sortition_ledger_service::store::write_beacon_share(&dir.join("ledger"), share)
        .map_err(|e| DevnetError::Setup(format!("beacon share: {e}")))?;
    g.beacon = beacon;
    let text = serde_json::to_string_pretty(&g).map_err(|e| DevnetError::Setup(e.to_string()))?;
    // Public content, but the data directory keeps one rule: files 0600.
    crate::write_private(&path, &text)?;
    Ok(g)
}
