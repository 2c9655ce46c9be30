//! A run's results: the machine-readable summary (`--json`), and the CSV files, SVG plots and
//! markdown report written by `--out DIR`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::config::{BeaconMode, Strategy};
use crate::stats::Timings;
use crate::theory::{cheats_before_catch, committee_capture, detection, wilson};
use crate::world::World;

#[derive(Debug, Clone, Serialize)]
pub struct StrategySummary {
    pub strategy: &'static str,
    pub nodes: u64,
    pub claims: u64,
    pub requests: u64,
    pub cheats: u64,
    pub cheats_sampled: u64,
    pub cheats_caught: u64,
    /// Caught cheats / cheats claimed (`None` for strategies that never cheat).
    pub detection_measured: Option<f64>,
    /// 95 % Wilson interval of `detection_measured`.
    pub ci95: Option<[f64; 2]>,
    /// What the ledger's rules predict (audit stage, then the committee's majority).
    pub detection_theory: Option<f64>,
    /// The same with the initial shares throughout (slashed lazy auditors and caught
    /// cheaters leave the pools during a run, which `detection_theory` accounts for).
    pub detection_theory_static: Option<f64>,
    /// FACTS.md's `q (1 - f^k)`, without the committee stage.
    pub detection_facts: Option<f64>,
    pub theory_in_ci: Option<bool>,
    /// `measured / theory - 1`.
    pub relative_error: Option<f64>,
    pub note: Option<String>,
    /// `(1 - d) / d` with the theory's `d`.
    pub cheats_before_first_catch_theory: Option<f64>,
    /// The same from the nodes' first catches (censored at the run's end: caught nodes over
    /// cheats exposed until the first catch).
    pub cheats_before_first_catch_measured: Option<f64>,
    pub nodes_caught: u64,
    pub first_catch_blocks_median: Option<f64>,
    pub honest_receipts_sampled: u64,
    /// Executor faults on honest receipts: must be 0.
    pub honest_receipts_faulted: u64,
    pub paid: u64,
    pub rewards: u64,
    pub slashed: u64,
    /// The part of `slashed` taken as executor at fault (scales with the stake).
    pub slashed_as_executor: u64,
    pub costs: u64,
    /// paid + rewards - slashed - costs.
    pub profit: i128,
    pub profit_per_request: Option<f64>,
    /// The stake at which this strategy's profit per request falls to the honest one's, from
    /// the measured catches (full-stake slashes per request).
    pub break_even_stake_measured: Option<f64>,
    /// `C / d - R` with the measured `d`: FACTS' `S_min` with the measured detection in place
    /// of `q (1 - r^k)`.
    pub s_min_from_measured_detection: Option<f64>,
    pub over_reported_units: u64,
    pub claims_refunded: u64,
    pub dodger_delays: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub nodes: u64,
    pub requests: u64,
    pub requests_served: u64,
    pub seed: u64,
    pub q: f64,
    pub k: u8,
    pub classes: u64,
    pub receipts_per_claim: u64,
    pub beacon: BeaconMode,
    pub stake: u64,
    /// The ledger's `min_collateral` for the policy (its `S_min` formula).
    pub s_min_ledger: u64,
    pub policy_r: f64,
    pub cost: u64,
    pub reward: u64,
    pub interrupted: bool,
    pub blocks: u64,
    pub txs: u64,
    pub refused_txs: u64,
    pub refusals: Vec<String>,
    pub audits: u64,
    pub disputes: u64,
    pub epochs: u64,
    pub settled_claims: u64,
    /// Slashes of nodes playing `honest`: must be 0.
    pub honest_slashes: u64,
    /// Slashes of anyone for a true verdict or an honest receipt.
    pub wrongful_slashes: u64,
    pub wrongful_slashes_by_reason: BTreeMap<String, u64>,
    pub slashes_by_reason: BTreeMap<String, u64>,
    /// Probability a committee the colluders captured outvotes a true mismatch on their cheat.
    pub committee_capture_theory: f64,
    pub state_root: String,
    pub timings_s: Timings,
    /// Transactions per second of ledger time (apply + end of block).
    pub ledger_tx_per_s: f64,
    /// Simulated requests per second of the whole run.
    pub requests_per_s: f64,
    pub strategies: Vec<StrategySummary>,
    pub detection_measured: BTreeMap<&'static str, f64>,
    pub detection_theory: BTreeMap<&'static str, f64>,
    /// Every cheating strategy's measured detection within ±10 % of theory (the predictable
    /// beacon's dodger excepted: it is meant to escape).
    pub all_within_10pct: bool,
    /// Every cheating strategy's theory inside its measured 95 % interval (same exception).
    pub all_theory_in_ci: bool,
    #[serde(skip)]
    pub catch_times: Vec<(&'static str, u64, u64)>,
}

/// What an interrupted run's numbers mean.
pub const INTERRUPTED_NOTE: &str = "interrupted: detection counts every cheat claimed so far, but audits and disputes still open at the interruption count as not caught, so it reads low; profits miss the claims not yet settled";

fn median(mut v: Vec<u64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    })
}

impl Summary {
    pub fn of(w: &World, interrupted: bool) -> Summary {
        let cfg = &w.cfg;
        let n = w.strategy.len() as f64;
        let shares: Vec<(Strategy, f64)> = w
            .stats
            .by
            .iter()
            .map(|(s, x)| (*s, x.nodes as f64 / n))
            .collect();
        let honest_ppr = w
            .stats
            .by
            .get(&Strategy::Honest)
            .filter(|h| h.requests > 0)
            .map(|h| {
                (h.paid as f64 + h.rewards as f64 - h.slashed as f64 - h.costs as f64)
                    / h.requests as f64
            });
        let mut catch_times = vec![];
        let mut strategies = vec![];
        for (s, x) in &w.stats.by {
            let cheats = s.cheats();
            let p = detection(&shares, *s, cfg.q, cfg.k);
            let measured =
                (cheats && x.cheats > 0).then(|| x.cheats_caught as f64 / x.cheats as f64);
            let ci = (cheats && x.cheats > 0).then(|| {
                let (lo, hi) = wilson(x.cheats_caught, x.cheats);
                [lo, hi]
            });
            // Theory given the pools the ledger drew from (see `agents::predict_sampled`);
            // `static` assumes the initial shares throughout.
            let dynamic = if x.cheats > 0 {
                cfg.q * x.predicted_caught_given_sampled / x.cheats as f64
            } else {
                p.ledger
            };
            let theory = cheats.then_some(dynamic);
            let static_theory = p.ledger;
            let p = crate::theory::Prediction {
                facts: p.facts,
                ledger: dynamic,
            };
            let mut first = vec![];
            let (mut caught_nodes, mut exposure) = (0u64, 0u64);
            for (i, ns) in w.stats.nodes.iter().enumerate() {
                if w.strategy[i] != *s || ns.cheats_claimed == 0 {
                    continue;
                }
                match ns.first_catch {
                    Some((before, h)) => {
                        caught_nodes += 1;
                        exposure += before + 1;
                        let blocks = h - ns.first_claim_height.unwrap_or(h);
                        first.push(blocks);
                        catch_times.push((s.name(), before, blocks));
                    }
                    None => exposure += ns.cheats_claimed,
                }
            }
            let censored_d = (caught_nodes > 0).then(|| caught_nodes as f64 / exposure as f64);
            let profit = i128::from(x.paid) + i128::from(x.rewards)
                - i128::from(x.slashed)
                - i128::from(x.costs);
            let ppr = (x.requests > 0).then(|| profit as f64 / x.requests as f64);
            let full_slashes = x.slashed_as_executor as f64 / w.stake.max(1) as f64;
            let break_even = match (ppr, honest_ppr) {
                (Some(p), Some(h)) if cheats && full_slashes > 0.0 => {
                    let without_stake = p + (x.slashed_as_executor as f64) / x.requests as f64;
                    Some((without_stake - h) / (full_slashes / x.requests as f64))
                }
                _ => None,
            };
            let note = match (s, cfg.beacon) {
                (Strategy::TimingDodger, BeaconMode::Predictable) => Some(
                    "predictable beacon: the dodger computes each block's randomness and claims only when no cheat would be sampled; theory assumes an unpredictable sample".into(),
                ),
                (Strategy::TimingDodger, BeaconMode::Threshold) => Some(
                    "threshold beacon: the dodger's prediction (the published test group) is worthless, so its timing changes nothing".into(),
                ),
                _ => None,
            };
            strategies.push(StrategySummary {
                strategy: s.name(),
                nodes: x.nodes,
                claims: x.claims,
                requests: x.requests,
                cheats: x.cheats,
                cheats_sampled: x.cheats_sampled,
                cheats_caught: x.cheats_caught,
                detection_measured: measured,
                ci95: ci,
                detection_theory: theory,
                detection_facts: cheats.then_some(p.facts),
                detection_theory_static: cheats.then_some(static_theory),
                theory_in_ci: ci.map(|[lo, hi]| (lo..=hi).contains(&p.ledger)),
                relative_error: measured
                    .filter(|_| p.ledger > 0.0)
                    .map(|m| m / p.ledger - 1.0),
                note,
                cheats_before_first_catch_theory: theory.map(cheats_before_catch),
                cheats_before_first_catch_measured: censored_d.map(cheats_before_catch),
                nodes_caught: caught_nodes,
                first_catch_blocks_median: median(first),
                honest_receipts_sampled: x.honest_sampled,
                honest_receipts_faulted: x.honest_caught,
                paid: x.paid,
                rewards: x.rewards,
                slashed: x.slashed,
                slashed_as_executor: x.slashed_as_executor,
                costs: x.costs,
                profit,
                profit_per_request: ppr,
                break_even_stake_measured: break_even,
                s_min_from_measured_detection: measured
                    .filter(|d| *d > 0.0)
                    .map(|d| cfg.cost as f64 / d - cfg.reward as f64),
                over_reported_units: x.over_units,
                claims_refunded: x.refunded_claims,
                dodger_delays: x.dodger_delays,
            });
        }
        let exempt = |s: &StrategySummary| {
            s.strategy == Strategy::TimingDodger.name() && cfg.beacon == BeaconMode::Predictable
        };
        let judged: Vec<&StrategySummary> = strategies
            .iter()
            .filter(|s| s.detection_measured.is_some() && !exempt(s))
            .collect();
        let all_within_10pct = judged
            .iter()
            .all(|s| s.relative_error.is_some_and(|e| e.abs() <= 0.10));
        let all_theory_in_ci = judged.iter().all(|s| s.theory_in_ci == Some(true));
        let t = &w.stats.timings;
        let ledger_time = t.ledger_txs + t.ledger_end_block;
        Summary {
            nodes: cfg.nodes,
            requests: cfg.requests,
            requests_served: w.stats.requests_served,
            seed: cfg.seed,
            q: cfg.q,
            k: cfg.k,
            classes: cfg.classes,
            receipts_per_claim: cfg.receipts_per_claim,
            beacon: cfg.beacon,
            stake: w.stake,
            s_min_ledger: w.min_collateral,
            policy_r: cfg.policy_r,
            cost: cfg.cost,
            reward: cfg.reward,
            interrupted,
            blocks: w.stats.blocks,
            txs: w.stats.txs,
            refused_txs: w.stats.refused,
            refusals: w.stats.refusals.clone(),
            audits: w.stats.audits,
            disputes: w.stats.disputes,
            epochs: w.stats.epochs,
            settled_claims: w.stats.settled_claims,
            honest_slashes: w.stats.honest_slashes,
            wrongful_slashes: w.stats.wrongful_slashes,
            wrongful_slashes_by_reason: w.stats.wrongful_by_reason.clone(),
            slashes_by_reason: w.stats.slashes_by_reason.clone(),
            committee_capture_theory: committee_capture(&shares, cfg.k),
            state_root: w.ledger.state_root().to_hex(),
            timings_s: t.clone(),
            ledger_tx_per_s: if ledger_time > 0.0 {
                w.stats.txs as f64 / ledger_time
            } else {
                0.0
            },
            requests_per_s: if t.total > 0.0 {
                w.stats.requests_served as f64 / t.total
            } else {
                0.0
            },
            detection_measured: strategies
                .iter()
                .filter_map(|s| s.detection_measured.map(|d| (s.strategy, d)))
                .collect(),
            detection_theory: strategies
                .iter()
                .filter_map(|s| s.detection_theory.map(|d| (s.strategy, d)))
                .collect(),
            strategies,
            all_within_10pct,
            all_theory_in_ci,
            catch_times,
        }
    }

    /// Profit per request of a strategy at `stake`: executor slashes scale with the stake (the
    /// policy slashes all of it), everything else is as measured.
    pub fn profit_at(&self, s: &StrategySummary, stake: f64) -> Option<f64> {
        let req = s.requests as f64;
        if req == 0.0 {
            return None;
        }
        let full_slashes = s.slashed_as_executor as f64 / self.stake.max(1) as f64;
        let other = s.slashed.saturating_sub(s.slashed_as_executor) as f64;
        let base = s.paid as f64 + s.rewards as f64 - s.costs as f64 - other;
        Some((base - full_slashes * stake) / req)
    }

    /// A human-readable table of the run.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "sortition sim: {} nodes, {} requests (served {}), seed {}, q = {}, k = {}, {} classes, beacon {:?}{}",
            self.nodes,
            self.requests,
            self.requests_served,
            self.seed,
            self.q,
            self.k,
            self.classes,
            self.beacon,
            if self.interrupted {
                " — INTERRUPTED, partial results"
            } else {
                ""
            }
        );
        if self.interrupted {
            let _ = writeln!(o, "{INTERRUPTED_NOTE}");
        }
        let _ = writeln!(
            o,
            "{:<15} {:>6} {:>9} {:>8} {:>7} {:>10} {:>21} {:>10} {:>10} {:>12}",
            "strategy",
            "nodes",
            "requests",
            "cheats",
            "caught",
            "measured",
            "95% CI",
            "theory",
            "FACTS",
            "profit/req"
        );
        for s in &self.strategies {
            let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.6}"));
            let _ = writeln!(
                o,
                "{:<15} {:>6} {:>9} {:>8} {:>7} {:>10} {:>21} {:>10} {:>10} {:>12}",
                s.strategy,
                s.nodes,
                s.requests,
                s.cheats,
                s.cheats_caught,
                f(s.detection_measured),
                s.ci95
                    .map_or("-".into(), |[a, b]| format!("[{a:.6}, {b:.6}]")),
                f(s.detection_theory),
                f(s.detection_facts),
                s.profit_per_request
                    .map_or("-".into(), |v| format!("{v:.1}")),
            );
        }
        let _ = writeln!(
            o,
            "honest slashes {} · wrongful slashes {} {:?} · audits {} · disputes {} · epochs {} · settled claims {}",
            self.honest_slashes,
            self.wrongful_slashes,
            self.wrongful_slashes_by_reason,
            self.audits,
            self.disputes,
            self.epochs,
            self.settled_claims
        );
        let _ = writeln!(
            o,
            "stake {} · ledger S_min {} · blocks {} · txs {} (refused {}) · ledger {:.0} tx/s · {:.0} requests/s · {:.2} s total",
            self.stake,
            self.s_min_ledger,
            self.blocks,
            self.txs,
            self.refused_txs,
            self.ledger_tx_per_s,
            self.requests_per_s,
            self.timings_s.total
        );
        let t = &self.timings_s;
        let _ = writeln!(
            o,
            "time (s): keys {:.2} · genesis {:.2} · sign+verify {:.2} · ledger txs {:.2} · ledger end-block {:.2} · beacon {:.2} · serve+merkle {:.2} · agents {:.2} · state root {:.2}",
            t.keys,
            t.genesis,
            t.sign_and_verify,
            t.ledger_txs,
            t.ledger_end_block,
            t.beacon,
            t.serve_and_merkle,
            t.agents,
            t.state_root
        );
        o
    }

    /// `summary.json` and the CSV files under `dir` (`crate::plot::write` adds the plots and
    /// `report.md`).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("summary.json"), self.json())?;
        let mut csv = String::from(
            "strategy,nodes,requests,cheats,cheats_sampled,cheats_caught,detection_measured,ci_low,ci_high,detection_theory,detection_facts,cheats_before_first_catch_theory,cheats_before_first_catch_measured,nodes_caught,paid,rewards,slashed,costs,profit,profit_per_request,break_even_stake_measured\n",
        );
        let f = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
        for s in &self.strategies {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                s.strategy,
                s.nodes,
                s.requests,
                s.cheats,
                s.cheats_sampled,
                s.cheats_caught,
                f(s.detection_measured),
                f(s.ci95.map(|c| c[0])),
                f(s.ci95.map(|c| c[1])),
                f(s.detection_theory),
                f(s.detection_facts),
                f(s.cheats_before_first_catch_theory.filter(|x| x.is_finite())),
                f(s.cheats_before_first_catch_measured),
                s.nodes_caught,
                s.paid,
                s.rewards,
                s.slashed,
                s.costs,
                s.profit,
                f(s.profit_per_request),
                f(s.break_even_stake_measured),
            );
        }
        std::fs::write(dir.join("strategies.csv"), csv)?;
        let mut ct = String::from("strategy,cheats_before_first_catch,blocks_to_first_catch\n");
        for (s, c, b) in &self.catch_times {
            let _ = writeln!(ct, "{s},{c},{b}");
        }
        std::fs::write(dir.join("catch_times.csv"), ct)?;
        let mut pv = String::from("strategy,stake,profit_per_request\n");
        for (stake, rows) in self.profit_curve() {
            for (s, p) in rows {
                let _ = writeln!(pv, "{s},{stake},{p}");
            }
        }
        std::fs::write(dir.join("profit_vs_stake.csv"), pv)?;
        Ok(())
    }

    /// Profit per request of every strategy at stakes from 0 to 4 × the ledger's minimum.
    pub fn profit_curve(&self) -> Vec<(f64, Vec<(&'static str, f64)>)> {
        let top = (self.s_min_ledger.max(self.stake) as f64) * 4.0;
        (0..=40)
            .map(|i| {
                let stake = top * f64::from(i) / 40.0;
                let rows = self
                    .strategies
                    .iter()
                    .filter_map(|s| self.profit_at(s, stake).map(|p| (s.strategy, p)))
                    .collect();
                (stake, rows)
            })
            .collect()
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
