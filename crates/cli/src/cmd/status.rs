//! `sortition status`: the network as the ledger sees it.

use anyhow::{Context, Result};
use clap::Args;
use serde::de::DeserializeOwned;
use sortition_ledger::StackStatus;
use sortition_ledger_client::LedgerClient;
use sortition_ledger_client::records::{Audit, Claim, Stack};
use sortition_types::Amount;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Ledger URL, or every validator's, comma-separated (then their agreement is checked).
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    ledger: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Your copy of the genesis: each validator's finality certificate at the common height is
    /// checked against its validator set (without it, against the genesis the first validator
    /// serves).
    #[arg(long)]
    genesis: Option<std::path::PathBuf>,
}

async fn get<T: DeserializeOwned>(base: &str, path: &str) -> Result<T> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let resp = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("decoding {url}"))
}

pub async fn run(a: StatusArgs) -> Result<()> {
    let client = LedgerClient::new(&a.ledger);
    let status = client.status().await.context("ledger status")?;
    let (common, replicas) = client.replicas().await;
    let base = client.base();
    let nodes = client.nodes().await?;
    let models = client.models().await?;
    let stacks: Vec<Stack> = get(&base, "/v1/stacks").await?;
    let audits: Vec<Audit> = get(&base, "/v1/audits").await?;
    let disputes = client.disputes().await?;
    let slashes = client.slashes().await?;
    let mut claims: Vec<Claim> = Vec::new();
    for s in &stacks {
        if let StackStatus::Claimed { claim } = s.status {
            claims.push(client.claim(claim).await?);
        }
    }
    let roots: std::collections::BTreeSet<_> =
        replicas.iter().filter_map(|r| r.root_at_common).collect();
    let agree = roots.len() <= 1;
    // Finality at the common height, checked as a light client would (validators only).
    let mut finality: Vec<Option<Result<String, String>>> = vec![None; replicas.len()];
    if !status.validators.is_empty() && common > 0 {
        let (genesis, source) = match &a.genesis {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                let g: sortition_ledger::Genesis = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", p.display()))?;
                (g, p.display().to_string())
            }
            None => (
                client.genesis().await.context("ledger genesis")?,
                format!("{base}/v1/genesis"),
            ),
        };
        anyhow::ensure!(
            genesis.chain_id == status.chain_id,
            "the genesis {source} is for chain {}, the ledger runs {}",
            genesis.chain_id,
            status.chain_id
        );
        for (i, r) in replicas.iter().enumerate() {
            if r.status.is_ok() {
                let one = LedgerClient::new(r.url.clone());
                finality[i] = Some(
                    sortition_validator::light::verify_block(&one, &genesis, common, 64)
                        .await
                        .map(|f| {
                            format!(
                                "final: certificate of block {} (view {}) signed by {} of {}",
                                f.to, f.view, f.signers, f.validators
                            )
                        })
                        .map_err(|e| e.to_string()),
                );
            }
        }
    }
    if a.json {
        let reps: Vec<_> = replicas
            .iter()
            .map(|r| {
                serde_json::json!({
                    "url": r.url,
                    "height": r.status.as_ref().ok().map(|s| s.height),
                    "error": r.status.as_ref().err(),
                    "root_at_common_height": r.root_at_common,
                })
            })
            .zip(&finality)
            .map(|(mut v, f)| {
                if let Some(f) = f {
                    v["finality_at_common_height"] = match f {
                        Ok(s) => serde_json::json!({"verified": true, "detail": s}),
                        Err(e) => serde_json::json!({"verified": false, "detail": e}),
                    };
                }
                v
            })
            .collect();
        let v = serde_json::json!({
            "replicas": {"common_height": common, "agree": agree, "validators": reps},
            "status": status, "nodes": nodes, "models": models, "stacks": stacks, "claims": claims,
            "audits": audits, "disputes": disputes, "slashes": slashes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "chain {}  height {}  state root {}",
        status.chain_id, status.height, status.state_root
    );
    if !status.validators.is_empty() || replicas.len() > 1 {
        println!(
            "\nVALIDATORS  {} in the genesis; {} asked; at common height {common} they {}",
            status.validators.len(),
            replicas.len(),
            if agree { "agree" } else { "DISAGREE" }
        );
        for (r, f) in replicas.iter().zip(&finality) {
            match &r.status {
                Ok(s) => println!(
                    "  {:<28} height {:>7}  root@{common} {}{}",
                    r.url,
                    s.height,
                    r.root_at_common
                        .map(|h| h.to_hex())
                        .unwrap_or_else(|| "-".into()),
                    match f {
                        Some(Ok(s)) => format!("\n  {:<28} {s}", ""),
                        Some(Err(e)) => format!("\n  {:<28} NOT VERIFIED: {e}", ""),
                        None => String::new(),
                    }
                ),
                Err(e) => println!("  {:<28} unreachable: {e}", r.url),
            }
        }
    }
    println!("\nMODELS");
    println!(
        "  {:<26} {:<22} {:>14}  policy",
        "ID", "WEIGHTS", "MIN COLLATERAL"
    );
    for m in &models {
        let p = &m.spec.policy;
        let policy = match p.audit {
            Some(ap) => format!("audited q={}ppm k={}", ap.q_ppm, ap.k),
            None => "plain".into(),
        };
        println!(
            "  {:<26} {:<22} {:>14}  {policy}",
            m.spec.id,
            &m.spec.weights_digest.to_hex()[..20],
            m.min_collateral.to_string()
        );
    }
    println!("\nNODES");
    println!(
        "  {:<8} {:<28} {:<10} {:<18} {:>14} {:>12}  models",
        "ID", "ENDPOINT", "STATUS", "CLASS", "COLLATERAL", "PRICE/M"
    );
    for n in &nodes {
        let price = n
            .offers
            .iter()
            .map(|o| o.unit_price_per_m())
            .max()
            .unwrap_or(Amount::ZERO);
        let models: Vec<String> = n.offers.iter().map(|o| o.model.to_string()).collect();
        println!(
            "  {:<8} {:<28} {:<10} {:<18} {:>14} {:>12}  {}",
            n.id.to_string(),
            n.endpoint,
            format!("{:?}", n.status)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_lowercase(),
            &n.class_fingerprint.to_hex()[..16],
            n.collateral.to_string(),
            price.to_string(),
            models.join(",")
        );
    }
    let open = stacks
        .iter()
        .filter(|s| matches!(s.status, StackStatus::Open))
        .count();
    let escrow: u64 = stacks.iter().map(|s| s.escrow.0).sum();
    println!(
        "\nSTACKS  {} total, {} open, escrow {}",
        stacks.len(),
        open,
        Amount(escrow)
    );
    println!("CLAIMS  {} total", claims.len());
    for c in &claims {
        println!(
            "  {} {} {} units {} receipts {} {:?}",
            c.id, c.stack, c.node, c.units_used, c.receipt_count, c.status
        );
    }
    let open_audits = audits.iter().filter(|a| a.outcome.is_none()).count();
    println!("AUDITS  {} total, {} open", audits.len(), open_audits);
    for au in audits.iter().rev().take(10) {
        println!(
            "  {} of {} receipt #{}{} auditors {:?} outcome {:?}",
            au.id,
            au.executor,
            au.receipt_index,
            if au.challenge_bond.is_some() {
                " (challenged by its owner)"
            } else {
                ""
            },
            au.auditors,
            au.outcome
        );
    }
    println!("DISPUTES  {}", disputes.len());
    for d in &disputes {
        println!(
            "  {} audit {} executor {} resolution {:?}",
            d.id, d.audit, d.executor, d.resolution
        );
    }
    println!("SLASHES  {}", slashes.len());
    for s in &slashes {
        println!(
            "  height {} {} {} {:?}",
            s.height, s.node, s.amount, s.reason
        );
    }
    Ok(())
}
