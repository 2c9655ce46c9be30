//! The `sortition` command.

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "sortition", version, about = "Verifiable, confidential AI inference network")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The whole network on loopback: a ledger, nodes and a gateway.
    Devnet(cmd::devnet::DevnetArgs),
    /// A ledger sequencer with its HTTP API.
    Ledger(cmd::ledger::LedgerArgs),
    /// Fetch and list models.
    #[command(subcommand)]
    Model(cmd::model::ModelCmd),
    /// Create and show account keys.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCmd),
    /// Nodes, classes, prices, collateral, stacks, claims, audits, disputes, slashes.
    Status(cmd::status::StatusArgs),
    /// Check receipts.
    #[command(subcommand)]
    Receipt(cmd::receipt::ReceiptCmd),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Devnet(a) => cmd::devnet::run(a).await,
            Cmd::Ledger(a) => cmd::ledger::run(a).await,
            Cmd::Model(c) => cmd::model::run(c),
            Cmd::Keys(c) => cmd::keys::run(c),
            Cmd::Status(a) => cmd::status::run(a).await,
            Cmd::Receipt(c) => cmd::receipt::run(c).await,
        }
    })
}
