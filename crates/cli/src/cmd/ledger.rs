//! `sortition ledger`: a ledger sequencer with its HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sortition_ledger::Genesis;
use sortition_ledger_service::LedgerServiceConfig;

#[derive(Args, Debug)]
pub struct LedgerArgs {
    /// Where blocks are stored.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Genesis file (JSON). Default: DATA_DIR/genesis.json.
    #[arg(long)]
    genesis: Option<PathBuf>,
}

pub async fn run(a: LedgerArgs) -> Result<()> {
    let path = a.genesis.unwrap_or_else(|| a.data_dir.join("genesis.json"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading genesis {} (create one with `sortition devnet` or by hand)",
            path.display()
        )
    })?;
    let genesis: Genesis =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let stop = super::common::shutdown_signal();
    eprintln!(
        "ledger {} listening on http://{}",
        genesis.chain_id,
        listener.local_addr()?
    );
    let cfg = LedgerServiceConfig::new(a.data_dir.join("ledger"), genesis);
    sortition_ledger_service::serve(cfg, listener, stop).await?;
    Ok(())
}
