//! `sortition node`: run an execution node.
//!
//! Settings come from a TOML file (`--config`, see `crates/cli/examples/node.toml`),
//! environment variables `SORTITION_NODE_*`, and flags; a flag beats the environment, which
//! beats the file, which beats [`NodeConfig::default`]. They are merged into one validated
//! `NodeConfig` before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use sortition_engine::WeightFormat;
use sortition_node::run::NodeConfig;
use sortition_types::Amount;

use super::common::{base_url, parse_micro, parse_units, read_toml, shutdown_signal};

#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML config file (see crates/cli/examples/node.toml).
    #[arg(long, env = "SORTITION_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the node's OpenAI API [default: 127.0.0.1:0, a free port].
    #[arg(long, env = "SORTITION_NODE_LISTEN")]
    listen: Option<SocketAddr>,
    /// URL registered on the ledger, if not http://<bound address> (e.g. behind NAT).
    #[arg(long, env = "SORTITION_NODE_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Ledger URL [default: http://127.0.0.1:7400].
    #[arg(long, env = "SORTITION_NODE_LEDGER")]
    ledger: Option<String>,
    /// Holds the receipt database and node state [default: node-data].
    #[arg(long, env = "SORTITION_NODE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Chat model to serve: a catalog name or a GGUF path. Repeatable; the environment takes
    /// a comma-separated list [default: smollm2-135m-instruct].
    #[arg(long = "model", env = "SORTITION_NODE_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    /// Embedding model to serve: a catalog name or a directory. Repeatable.
    #[arg(
        long = "embed-model",
        env = "SORTITION_NODE_EMBED_MODELS",
        value_delimiter = ','
    )]
    embed_models: Vec<String>,
    /// Price per million input tokens, in micro-units [default: 100000].
    #[arg(long, env = "SORTITION_NODE_PRICE_IN", value_parser = parse_micro)]
    price_in: Option<Amount>,
    /// Price per million output tokens, in micro-units [default: 200000].
    #[arg(long, env = "SORTITION_NODE_PRICE_OUT", value_parser = parse_micro)]
    price_out: Option<Amount>,
    /// Collateral to bond, in units (e.g. 50 or 2.5) [default: the ledger's minimum for the
    /// models offered].
    #[arg(long, env = "SORTITION_NODE_COLLATERAL", value_parser = parse_units)]
    collateral: Option<Amount>,
    /// Operator key file (hex secret; created if missing). It signs receipts and pays the
    /// collateral, so it must be funded [default: DATA_DIR/node.key].
    #[arg(long, env = "SORTITION_NODE_KEY")]
    key: Option<PathBuf>,
    /// Serve confidential (sealed) requests with per-epoch keys attested by ATTESTER:
    /// `dev` is INSECURE (no TEE, its evidence proves nothing; clients refuse it unless told
    /// otherwise; devnets only); `tdx` and `sev-snp` are not built yet and are refused.
    #[arg(long, env = "SORTITION_NODE_ATTESTER")]
    attester: Option<String>,
    /// `tdx`: the platform's DCAP collateral (JSON), carried in the evidence for offline
    /// verification.
    #[arg(long, env = "SORTITION_NODE_TDX_COLLATERAL")]
    tdx_collateral: Option<PathBuf>,
    /// `sev-snp`: the EPYC generation (milan, genoa, turin).
    #[arg(long, env = "SORTITION_NODE_SNP_PRODUCT")]
    snp_product: Option<String>,
    /// `sev-snp`: the VCEK certificate (DER), for hosts that supply no certificate table.
    #[arg(long, env = "SORTITION_NODE_SNP_VCEK")]
    snp_vcek: Option<PathBuf>,
    /// configfs-tsm report directory [default: /sys/kernel/config/tsm/report].
    #[arg(long, env = "SORTITION_NODE_TSM_ROOT")]
    tsm_root: Option<PathBuf>,
    /// Whose evidence auditors must carry to be sent this node's confidential requests: a
    /// JSON attestation policy (accepted measurements, TCB statuses, maximum age). Required
    /// with `tdx` and `sev-snp`.
    #[arg(long, env = "SORTITION_NODE_AUDITOR_POLICY")]
    auditor_policy: Option<PathBuf>,
}

/// The TOML file. Every field is optional; unknown fields are an error.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub listen: Option<SocketAddr>,
    pub advertise_url: Option<String>,
    pub ledger: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub models: Option<Vec<String>>,
    pub embed_models: Option<Vec<String>>,
    /// Micro-units per million input tokens.
    pub price_in: Option<u64>,
    /// Micro-units per million output tokens.
    pub price_out: Option<u64>,
    /// Units, as a string so decimals stay exact: `"50"` or `"2.5"`.
    pub collateral: Option<String>,
    pub key: Option<PathBuf>,
    pub capacity: Option<u32>,
    pub max_batch: Option<usize>,
    pub queue_capacity: Option<usize>,
    /// Prompt tokens fed per engine step, across sequences (default 512).
    pub prefill_budget: Option<usize>,
    /// MiB of attention cache the running sequences may reserve together; a request that
    /// could never fit is refused (400 `request_too_large`). Default: no bound beyond
    /// `max_batch`.
    pub kv_memory_mb: Option<usize>,
    pub claim_interval_secs: Option<u64>,
    /// `"q8_0"` (re-quantize at load, fastest on AVX2) or `"shipped"`.
    pub weight_format: Option<String>,
}

/// What `start` needs: the node config and where its key lives.
#[derive(Debug)]
pub struct NodeSettings {
    pub node: NodeConfig,
    pub key: PathBuf,
}

fn positive<T: PartialOrd + Default + Copy>(name: &str, v: Option<T>, default: T) -> Result<T> {
    let v = v.unwrap_or(default);
    anyhow::ensure!(v > T::default(), "{name} must be at least 1");
    Ok(v)
}

fn non_empty(v: Vec<String>) -> Option<Vec<String>> {
    (!v.is_empty()).then_some(v)
}

/// Merges flags (env already folded in by clap) over the file over the defaults.
pub fn merge(flags: NodeArgs, file: NodeFile) -> Result<NodeSettings> {
    let d = NodeConfig::default();
    let weight_format = match file.weight_format.as_deref() {
        None => d.weight_format,
        Some("q8_0") => WeightFormat::Q8_0,
        Some("q8_0-f32") => WeightFormat::Q8_0F32,
        Some("shipped") => WeightFormat::Shipped,
        Some(o) => anyhow::bail!("weight_format {o:?}: use \"q8_0\", \"q8_0-f32\" or \"shipped\""),
    };
    let collateral = match (flags.collateral, file.collateral) {
        (Some(c), _) => Some(c),
        (None, Some(s)) => Some(parse_units(&s).map_err(|e| anyhow::anyhow!("collateral: {e}"))?),
        (None, None) => None,
    };
    let chat_models = non_empty(flags.models)
        .or(file.models)
        .unwrap_or(d.chat_models);
    let embed_models = non_empty(flags.embed_models)
        .or(file.embed_models)
        .unwrap_or(d.embed_models);
    anyhow::ensure!(
        !chat_models.is_empty() || !embed_models.is_empty(),
        "no model to serve: give --model"
    );
    let ledger = flags.ledger.or(file.ledger).unwrap_or(d.ledger_url);
    let advertise_url = flags
        .advertise_url
        .or(file.advertise_url)
        .map(|u| base_url("advertise", &u))
        .transpose()?;
    let claim_interval = match file.claim_interval_secs {
        Some(0) => anyhow::bail!("claim_interval_secs must be at least 1"),
        Some(s) => Duration::from_secs(s),
        None => d.claim_interval,
    };
    let data_dir = flags.data_dir.or(file.data_dir).unwrap_or(d.data_dir);
    let node = NodeConfig {
        listen: flags.listen.or(file.listen).unwrap_or(d.listen),
        advertise_url,
        ledger_url: base_url("ledger", &ledger)?,
        chat_models,
        embed_models,
        weight_format,
        kernel: sortition_engine::Kernel::from_env()?,
        threads: sortition_engine::threads_from_env(),
        price_per_m_input: flags
            .price_in
            .or(file.price_in.map(Amount))
            .unwrap_or(d.price_per_m_input),
        price_per_m_output: flags
            .price_out
            .or(file.price_out.map(Amount))
            .unwrap_or(d.price_per_m_output),
        collateral,
        capacity: positive("capacity", file.capacity, d.capacity)?,
        max_batch: positive("max_batch", file.max_batch, d.max_batch)?,
        queue_capacity: positive("queue_capacity", file.queue_capacity, d.queue_capacity)?,
        prefill_budget: positive("prefill_budget", file.prefill_budget, d.prefill_budget)?,
        kv_memory: match file.kv_memory_mb {
            Some(0) => anyhow::bail!("kv_memory_mb must be at least 1"),
            Some(mb) => Some(
                mb.checked_mul(1 << 20)
                    .ok_or_else(|| anyhow::anyhow!("kv_memory_mb {mb} is too large"))?,
            ),
            None => d.kv_memory,
        },
        claim_interval,
        data_dir: data_dir.clone(),
        attester: flags
            .attester
            .map(|a| a.parse::<sortition_confidential::AttesterKind>())
            .transpose()
            .map_err(|e| anyhow::anyhow!("--attester: {e}"))?,
        attester_config: sortition_confidential::AttesterConfig {
            tsm_root: flags.tsm_root,
            tdx_collateral: flags.tdx_collateral,
            snp_product: flags
                .snp_product
                .map(|p| p.parse())
                .transpose()
                .map_err(|e| anyhow::anyhow!("--snp-product: {e}"))?,
            snp_vcek: flags.snp_vcek,
        },
        auditor_policy: flags
            .auditor_policy
            .map(|path| -> Result<sortition_confidential::Policy> {
                let text = std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("--auditor-policy {}: {e}", path.display()))?;
                serde_json::from_slice(&text).map_err(|e| {
                    anyhow::anyhow!("--auditor-policy {}: not a policy: {e}", path.display())
                })
            })
            .transpose()?,
        ..d
    };
    let key = flags
        .key
        .or(file.key)
        .unwrap_or_else(|| data_dir.join("node.key"));
    Ok(NodeSettings { node, key })
}

pub async fn run(a: NodeArgs) -> Result<()> {
    let file = match &a.config {
        Some(path) => read_toml(path)?,
        None => NodeFile::default(),
    };
    let s = merge(a, file)?;
    let key = super::keys::load_or_create(&s.key)
        .with_context(|| format!("node key {}", s.key.display()))?;
    eprintln!(
        "operator {} (fund it for collateral); ledger {}",
        key.public(),
        s.node.ledger_url
    );
    let stop = shutdown_signal();
    let node = sortition_node::run::start(s.node, key)
        .await
        .context("starting the node")?;
    eprintln!(
        "node {} serving on {} (class {})",
        node.id,
        node.url,
        &node.class.fingerprint().to_hex()[..16]
    );
    stop.await;
    eprintln!("stopping: draining requests and claiming earned stacks");
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file() {
        let file: NodeFile = toml::from_str(
            "models = [\"a.gguf\"]\nprice_in = 5\nprice_out = 7\ncollateral = \"2.5\"\nweight_format = \"shipped\"",
        )
        .unwrap_or_default();
        let flags = NodeArgs {
            price_in: Some(Amount(9)),
            models: vec!["b".into()],
            ..NodeArgs::default()
        };
        let s = merge(flags, file).expect("valid");
        assert_eq!(s.node.chat_models, vec!["b".to_string()]);
        assert_eq!(s.node.price_per_m_input, Amount(9));
        assert_eq!(s.node.price_per_m_output, Amount(7));
        assert_eq!(s.node.collateral, Some(Amount(2_500_000)));
        assert_eq!(s.node.weight_format, WeightFormat::Shipped);
        assert_eq!(s.key, PathBuf::from("node-data/node.key"));
    }

    #[test]
    fn the_example_config_is_valid() {
        let file: NodeFile =
            toml::from_str(include_str!("../../examples/node.toml")).expect("example parses");
        assert!(merge(Default::default(), file).is_ok());
    }

    #[test]
    fn every_weight_format_is_named() {
        let format = |name: &str| {
            let file = NodeFile {
                weight_format: Some(name.into()),
                ..NodeFile::default()
            };
            merge(NodeArgs::default(), file)
                .expect("valid")
                .node
                .weight_format
        };
        assert_eq!(format("q8_0"), WeightFormat::Q8_0);
        assert_eq!(format("q8_0-f32"), WeightFormat::Q8_0F32);
        assert_eq!(format("shipped"), WeightFormat::Shipped);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(toml::from_str::<NodeFile>("modle = []").is_err());
        let bad = |f: NodeFile| merge(NodeArgs::default(), f).is_err();
        assert!(bad(NodeFile {
            weight_format: Some("f16".into()),
            ..NodeFile::default()
        }));
        assert!(bad(NodeFile {
            collateral: Some("-1".into()),
            ..NodeFile::default()
        }));
        assert!(bad(NodeFile {
            capacity: Some(0),
            ..NodeFile::default()
        }));
        assert!(bad(NodeFile {
            models: Some(vec![]),
            ..NodeFile::default()
        }));
        assert!(bad(NodeFile {
            ledger: Some("localhost".into()),
            ..NodeFile::default()
        }));
    }
}
