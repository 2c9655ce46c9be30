//! `sortition devnet`: the whole network on loopback, in this process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sortition_devnet::{Devnet, DevnetConfig};

#[derive(Args, Debug)]
pub struct DevnetArgs {
    /// Where the chain, keys, receipts and the gateway's database live (reused on the next run).
    #[arg(long, default_value = ".devnet")]
    data_dir: PathBuf,
    /// Honest execution nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Probability that a receipt is audited (0 to 1). Fixed at the first run (in genesis).
    #[arg(long, default_value_t = 0.05)]
    audit_rate: f64,
    /// How auditors check sampled requests: `reexecute` (regenerate and compare exactly) or
    /// `score` (one teacher-forced pass over the claimed answer, confirmed by re-execution
    /// before any mismatch verdict). Fixed at the first run (in genesis).
    #[arg(long, default_value = "reexecute", value_parser = ["reexecute", "score"])]
    audit_method: String,
    /// Add one cheating node: truncate, random, over-report, over-report-blatant, skip-audits, copy,
    /// smaller-model, withhold-custody, equivocate or dodge (times its claims to dodge audits).
    #[arg(long)]
    adversary: Option<sortition_node::adversary::Mode>,
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:8420")]
    gateway_listen: SocketAddr,
    /// Chat model: catalog name or GGUF path.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Embedding model: catalog name, directory, or "none".
    #[arg(long, default_value = "all-minilm-l6-v2")]
    embed_model: String,
    /// Nodes serve confidential requests with keys attested by ATTESTER. Only `dev` is
    /// built, and it is INSECURE (no TEE, proves nothing): `sortition chat --confidential`
    /// then needs `--allow-insecure-dev`.
    #[arg(long)]
    attester: Option<String>,
    /// Replicate the ledger over N validators under BFT consensus, each its own process
    /// (`sortition validator`); 0 runs the embedded sequencer in this process. Fixed at the
    /// first run.
    #[arg(long, default_value_t = 0)]
    validators: usize,
}

pub async fn run(a: DevnetArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.audit_rate) {
        anyhow::bail!("--audit-rate must be between 0 and 1");
    }
    let stop = super::common::shutdown_signal();
    let mut cfg = DevnetConfig::new(&a.data_dir);
    cfg.nodes = a.nodes.max(1);
    cfg.audit_q_ppm = (a.audit_rate * 1_000_000.0).round() as u32;
    cfg.audit_method = match a.audit_method.as_str() {
        "score" => sortition_devnet::default_score_method(),
        _ => sortition_ledger::AuditMethod::Reexecute,
    };
    cfg.adversary = a.adversary;
    // The binary honours SORTITION_KERNEL and the thread variables; the engine does not read them.
    cfg.kernel = sortition_engine::Kernel::from_env()?;
    cfg.threads = sortition_engine::threads_from_env();
    cfg.validators = a.validators;
    cfg.validator_exe = Some(std::env::current_exe()?);
    cfg.gateway_listen = a.gateway_listen;
    cfg.chat_model = a.model;
    cfg.embed_model = (a.embed_model != "none").then_some(a.embed_model);
    cfg.attester = a
        .attester
        .map(|s| s.parse::<sortition_confidential::AttesterKind>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("--attester: {e}"))?;
    if let Some(k) = cfg.attester {
        eprintln!("confidential requests: keys attested by {k}");
    }
    eprintln!(
        "starting devnet in {} (models are fetched on the first run)…",
        a.data_dir.display()
    );
    let net = Devnet::start(cfg).await.context("starting the devnet")?;
    let i = &net.info;
    println!("Sortition devnet is up.");
    println!("  gateway  {}", i.gateway_url);
    if i.validators.is_empty() {
        println!("  ledger   {}", i.ledger_url);
    } else {
        for (k, v) in i.validators.iter().enumerate() {
            println!(
                "  validator {k}  {}  (pid {}, key {}…)",
                v.url,
                v.pid,
                &v.id[..12.min(v.id.len())]
            );
        }
    }
    for n in &i.nodes {
        println!(
            "  {}  {}  class {}{}",
            n.id,
            n.url,
            &n.class[..16],
            n.adversary
                .as_ref()
                .map(|m| format!("  ADVERSARY {m}"))
                .unwrap_or_default()
        );
    }
    println!("  API key  {}", i.api_key);
    println!();
    println!("Try it:");
    println!(
        "  curl -s {}/v1/chat/completions -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is the capital of France?\"}}],\"max_tokens\":32,\"temperature\":0}}'",
        i.gateway_url,
        i.api_key,
        i.models
            .iter()
            .find(|m| !m.contains("minilm"))
            .cloned()
            .unwrap_or_default()
    );
    println!();
    println!(
        "Wrote {}/devnet.json. Ctrl-C (or SIGTERM) stops everything.",
        a.data_dir.display()
    );
    stop.await;
    eprintln!("shutting down: draining requests, claiming earnings…");
    net.shutdown().await;
    eprintln!("stopped.");
    Ok(())
}
