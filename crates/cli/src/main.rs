//! The `sortition` command.

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sortition",
    version,
    about = "Verifiable, confidential AI inference network"
)]
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
    /// One validator of a replicated ledger (BFT consensus), serving the ledger's HTTP API.
    Validator(cmd::validator::ValidatorArgs),
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
    /// Run an execution node (settings: --config TOML, SORTITION_NODE_* env, flags).
    Node(cmd::node::NodeArgs),
    /// Run a gateway (settings: --config TOML, SORTITION_GATEWAY_* env, flags), or manage its
    /// users and API keys with `gateway keys …` / `gateway users …`.
    Gateway(cmd::gateway::GatewayArgs),
    /// Chat with a model through a gateway; each answer shows its receipt status.
    Chat(cmd::chat::ChatArgs),
    /// Explain a model's audit policy, minimum collateral and detection odds.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCmd),
    /// Mint test currency to an account (devnet ledgers only).
    Faucet(cmd::faucet::FaucetArgs),
    /// Simulate nodes, gateways and auditors with strategies on the real ledger state machine.
    Sim(cmd::sim::SimArgs),
    /// Measure the honest-mismatch rate: the same requests across kernels, thread counts,
    /// batches and processes must give the same bits; and the scoring audit's trade-off.
    Conformance(cmd::conformance::ConformanceArgs),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line each, without a backtrace: users get the
            // message; RUST_BACKTRACE is for developers running under a debugger.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cmd = match cli.cmd {
        // A validator owns its runtime (commonware's), so it starts outside ours.
        Cmd::Validator(a) => return cmd::validator::run(a),
        other => other,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            Cmd::Validator(_) => unreachable!("handled above"),
            Cmd::Devnet(a) => cmd::devnet::run(a).await,
            Cmd::Ledger(a) => cmd::ledger::run(a).await,
            Cmd::Model(c) => cmd::model::run(c),
            Cmd::Keys(c) => cmd::keys::run(c),
            Cmd::Status(a) => cmd::status::run(a).await,
            Cmd::Receipt(c) => cmd::receipt::run(c).await,
            Cmd::Node(a) => cmd::node::run(a).await,
            Cmd::Gateway(a) => cmd::gateway::run(a).await,
            Cmd::Chat(a) => cmd::chat::run(a).await,
            Cmd::Policy(c) => cmd::policy::run(c).await,
            Cmd::Faucet(a) => cmd::faucet::run(a).await,
            Cmd::Sim(a) => cmd::sim::run(a).await,
            Cmd::Conformance(a) => cmd::conformance::run(a).await,
        }
    })
}
