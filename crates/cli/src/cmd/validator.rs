//! `sortition validator`: one validator of a replicated ledger (BFT consensus).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use sortition_ledger::Genesis;
use sortition_validator::{Timing, ValidatorConfig};

#[derive(Args, Debug)]
pub struct ValidatorArgs {
    /// Holds this validator's key (`validator-key`), its beacon share (`ledger/beacon-share`),
    /// its ledger and its consensus storage.
    #[arg(long)]
    data_dir: PathBuf,
    /// Genesis file (JSON) naming the validators and the beacon group.
    #[arg(long)]
    genesis: PathBuf,
    /// Address of the ledger's HTTP API served from this replica.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Address of the consensus p2p listener.
    #[arg(long, default_value = "127.0.0.1:7500")]
    p2p: SocketAddr,
    /// The validators' p2p addresses: KEY@HOST:PORT, comma-separated (KEY as in the genesis).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Least time between blocks, in ms (deadlines are counted in blocks).
    #[arg(long, default_value_t = 250)]
    block_interval_ms: u64,
    /// How long a submitter waits for its transaction to be final, in seconds.
    #[arg(long, default_value_t = 30)]
    ack_timeout_secs: u64,
    /// Exit when standard input closes (`sortition devnet` starts its validators so, so that
    /// they stop with it even when it is killed).
    #[arg(long)]
    exit_on_stdin_eof: bool,
    /// Test only, devnet geneses only: behave byzantine (`conflicter`: sign conflicting votes).
    #[arg(long, hide = true, value_parser = ["conflicter"])]
    byzantine: Option<String>,
}

/// Runs until killed. Called outside any tokio runtime (the validator owns its own).
pub fn run(a: ValidatorArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.genesis)
        .with_context(|| format!("reading genesis {}", a.genesis.display()))?;
    let genesis: Genesis =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", a.genesis.display()))?;
    let mut peers = Vec::new();
    for p in &a.peers {
        let Some((key, addr)) = p.split_once('@') else {
            bail!("--peers: {p:?} is not KEY@HOST:PORT");
        };
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("--peers: {addr:?} is not HOST:PORT"))?;
        peers.push((key.to_string(), addr));
    }
    if a.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            eprintln!("standard input closed: stopping");
            std::process::exit(0);
        });
    }
    let cfg = ValidatorConfig {
        data_dir: a.data_dir,
        genesis,
        listen: a.listen,
        p2p: a.p2p,
        peers,
        timing: Timing {
            block_interval: Duration::from_millis(a.block_interval_ms),
            ..Timing::default()
        },
        ack_timeout: Duration::from_secs(a.ack_timeout_secs.max(1)),
        on_listening: Some(|addr| eprintln!("validator API listening on http://{addr}")),
        byzantine_conflicter: a.byzantine.is_some(),
    };
    sortition_validator::run(cfg)?;
    Ok(())
}
