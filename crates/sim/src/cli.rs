//! `sortition sim`'s arguments and its run: validate, simulate with a progress bar, print or
//! write the results. Ctrl-C (the binary sets `stop`) ends the run early; what was measured
//! so far is still printed and written, marked interrupted.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::config::{BeaconMode, Mix, SimConfig, SimError};
use crate::report::Summary;
pub use crate::simulate::simulate;

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Registered nodes.
    #[arg(long, default_value_t = 1_000)]
    pub nodes: u64,
    /// Requests served in all (aggregated into claims of --receipts-per-claim receipts).
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Audit probability per receipt, in [0, 1].
    #[arg(long, default_value_t = 0.001)]
    pub q: f64,
    /// Auditors per sampled receipt.
    #[arg(long, default_value_t = 2)]
    pub k: u8,
    /// Node classes (auditors come from the executor's class).
    #[arg(long, default_value_t = 10)]
    pub classes: u64,
    /// Collateral per node; default: the ledger's minimum for the policy.
    #[arg(long)]
    pub stake: Option<u64>,
    /// C: cost of serving or re-executing one request.
    #[arg(long, default_value_t = 1_000)]
    pub cost: u64,
    /// R: an auditor's reward.
    #[arg(long, default_value_t = 100)]
    pub reward: u64,
    /// r the policy assumes (enters the ledger's minimum collateral), in [0, 1).
    #[arg(long, default_value_t = 0.1)]
    pub policy_r: f64,
    /// Strategy shares, e.g. `always-cheat=0.05,colluder=0.1` (honest takes the rest);
    /// default: every strategy, 59 % honest.
    #[arg(long)]
    pub mix: Option<String>,
    /// Cheat fraction p of cheat-fraction, timing-dodger, over-report and withhold.
    #[arg(long, default_value_t = 0.2)]
    pub cheat_p: f64,
    #[arg(long, default_value_t = 10_000)]
    pub receipts_per_claim: u64,
    #[arg(long, value_enum, default_value_t = BeaconMode::Threshold)]
    pub beacon: BeaconMode,
    /// Blocks per epoch (every node rotates its confidential key at each turn).
    #[arg(long, default_value_t = 40)]
    pub epoch_blocks: u64,
    /// Print the machine-readable summary.
    #[arg(long)]
    pub json: bool,
    /// Write CSV files, SVG plots and report.md here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sweep q, k, r and the stake (small runs of --sweep-nodes / --sweep-requests each).
    #[arg(long)]
    pub sweep: bool,
    #[arg(long, default_value_t = 2_000)]
    pub sweep_nodes: u64,
    #[arg(long, default_value_t = 400_000)]
    pub sweep_requests: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl SimArgs {
    pub fn config(&self) -> Result<SimConfig, SimError> {
        let cfg = SimConfig {
            nodes: self.nodes,
            requests: self.requests,
            seed: self.seed,
            q: self.q,
            k: self.k,
            classes: self.classes,
            stake: self.stake,
            cost: self.cost,
            reward: self.reward,
            policy_r: self.policy_r,
            mix: match &self.mix {
                Some(m) => Mix::parse(m)?,
                None => Mix::standard(),
            },
            cheat_p: self.cheat_p,
            receipts_per_claim: self.receipts_per_claim,
            beacon: self.beacon,
            epoch_blocks: self.epoch_blocks,
            ..SimConfig::default()
        };
        cfg.validate()?;
        crate::world::s_min(&cfg)?;
        Ok(cfg)
    }
}

/// Runs one simulation (or the sweep); returns the summary of the main run.
pub fn run(args: &SimArgs, stop: &AtomicBool) -> Result<Summary, SimError> {
    let cfg = args.config()?;
    if args.sweep {
        let dir = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("sim-sweep"));
        crate::sweep::run(
            &cfg,
            args.sweep_nodes,
            args.sweep_requests,
            &dir,
            stop,
            args.quiet,
        )
        .map_err(|e| SimError::Ledger(format!("sweep output: {e}")))?;
        eprintln!("sweep written to {}", dir.display());
    }
    let summary = simulate(cfg, stop, args.quiet)?;
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.text());
    }
    if let Some(dir) = &args.out {
        crate::plot::write(&summary, dir)
            .map_err(|e| SimError::Ledger(format!("writing {}: {e}", dir.display())))?;
        eprintln!("wrote {}", dir.display());
    }
    if summary.interrupted {
        eprintln!("interrupted: the results above cover the part of the run that finished");
    }
    Ok(summary)
}
