//! Counters the run keeps per strategy and per node, read from the ledger's events.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::config::Strategy;

#[derive(Debug, Clone, Default, Serialize)]
pub struct StrategyStats {
    pub nodes: u64,
    pub claims: u64,
    pub requests: u64,
    /// Receipts whose answer (or usage) was wrong, claimed on the ledger.
    pub cheats: u64,
    pub cheats_sampled: u64,
    /// Cheats the ledger held the executor at fault for (dispute lost, receipt missing,
    /// payload withheld).
    pub cheats_caught: u64,
    pub honest_sampled: u64,
    /// Executor faults on honest receipts: must stay 0.
    pub honest_caught: u64,
    /// Paid by settlements (after the treasury fee).
    pub paid: u64,
    pub rewards: u64,
    pub slashed: u64,
    /// The part of `slashed` taken as executor at fault (a share of the stake: scales with it).
    pub slashed_as_executor: u64,
    /// Simulated compute: `C` per honestly served request and per honest re-execution.
    pub costs: u64,
    pub over_units: u64,
    pub refunded_claims: u64,
    pub nodes_caught: u64,
    pub dodger_delays: u64,
    /// Per caught node: (undetected cheats before its first catch, blocks from its first
    /// claim to its first catch).
    #[serde(skip)]
    pub first_catches: Vec<(u64, u64)>,
    /// Cheats exposed to sampling until the first catch (or the end): the censored estimate
    /// of per-cheat detection is `nodes_caught / exposure`.
    pub exposure: u64,
    /// Σ over claimed cheats of P(caught | sampled), with the pool of eligible peers the
    /// ledger drew from when the claim was sampled (slashed nodes drop out of it).
    pub predicted_caught_given_sampled: f64,
}

#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// Cheats in claims committed so far (in claim order).
    pub cheats_claimed: u64,
    pub first_claim_height: Option<u64>,
    /// (cheats before, height) of the earliest caught cheat.
    pub first_catch: Option<(u64, u64)>,
}

/// Where the time went (wall clock, seconds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub keys: f64,
    pub genesis: f64,
    pub sign_and_verify: f64,
    pub ledger_txs: f64,
    pub ledger_end_block: f64,
    pub beacon: f64,
    pub serve_and_merkle: f64,
    pub agents: f64,
    pub state_root: f64,
    pub total: f64,
}

impl Timings {
    pub fn add(slot: &mut f64, d: Duration) {
        *slot += d.as_secs_f64();
    }
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub by: BTreeMap<Strategy, StrategyStats>,
    pub nodes: Vec<NodeStats>,
    pub blocks: u64,
    pub txs: u64,
    pub refused: u64,
    pub refusals: Vec<String>,
    pub audits: u64,
    pub disputes: u64,
    pub epochs: u64,
    pub settled_claims: u64,
    /// Slashes of nodes whose strategy is `honest`: must be 0.
    pub honest_slashes: u64,
    /// Slashes of any node for something it did right (a true verdict, an honest receipt),
    /// e.g. an honest auditor outvoted by a committee the colluders captured.
    pub wrongful_slashes: u64,
    pub wrongful_by_reason: BTreeMap<String, u64>,
    pub slashes_by_reason: BTreeMap<String, u64>,
    pub requests_served: u64,
    pub timings: Timings,
}

impl Stats {
    pub fn of(&mut self, s: Strategy) -> &mut StrategyStats {
        self.by.entry(s).or_default()
    }
}
