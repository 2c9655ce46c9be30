//! `--sweep`: many small runs over q, k, the colluding share r and the stake, for the tables
//! and plots that set a model's policy.
//!
//! Two grids, each run on the real ledger: (q × k) with a colluding ring of share 0.2, and
//! (r × k) at q = 0.005. Every run also yields its profit-vs-stake line and the measured
//! break-even stake, written next to the ledger's `S_min` for the same policy.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Mix, SimConfig, Strategy};
use crate::report::Summary;

pub struct Point {
    pub q: f64,
    pub k: u8,
    pub r: f64,
    pub summary: Summary,
}

fn one(base: &SimConfig, nodes: u64, requests: u64, q: f64, k: u8, r: f64) -> SimConfig {
    SimConfig {
        nodes,
        requests,
        q,
        k,
        classes: (nodes / 500).max(1),
        receipts_per_claim: 1_000,
        policy_r: r.min(0.99),
        mix: Mix(vec![(Strategy::AlwaysCheat, 0.05), (Strategy::Colluder, r)]),
        stake: None,
        ..base.clone()
    }
}

pub fn run(
    base: &SimConfig,
    nodes: u64,
    requests: u64,
    dir: &Path,
    stop: &AtomicBool,
    quiet: bool,
) -> std::io::Result<Vec<Point>> {
    std::fs::create_dir_all(dir)?;
    let mut grid = vec![];
    for q in [0.001, 0.002, 0.005, 0.01] {
        for k in [1u8, 2, 3] {
            grid.push((q, k, 0.2));
        }
    }
    for r in [0.0, 0.1, 0.3, 0.4] {
        for k in [1u8, 2, 3] {
            grid.push((0.005, k, r));
        }
    }
    let mut points = vec![];
    for (i, (q, k, r)) in grid.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if !quiet {
            eprintln!("sweep {}/{}: q = {q}, k = {k}, r = {r}", i + 1, grid.len());
        }
        let cfg = one(base, nodes, requests, *q, *k, *r);
        let summary = crate::simulate::simulate(cfg, stop, true)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        points.push(Point {
            q: *q,
            k: *k,
            r: *r,
            summary,
        });
    }
    write(&points, dir)?;
    stakes(base, nodes, requests, dir, stop, quiet)?;
    Ok(points)
}

/// The stake dimension: the same network (q = 0.005, k = 2, a ring of 0.2, always-cheaters
/// and rare cheaters at p = 0.01) registered at 1, 2, 4 and 8 × the ledger's `S_min`; each
/// strategy's measured profit per request against the line the first run predicts
/// (`Summary::profit_at`).
fn stakes(
    base: &SimConfig,
    nodes: u64,
    requests: u64,
    dir: &Path,
    stop: &AtomicBool,
    quiet: bool,
) -> std::io::Result<()> {
    let mut cfg = one(base, nodes, requests, 0.005, 2, 0.2);
    cfg.mix.0.push((Strategy::CheatFraction, 0.05));
    cfg.cheat_p = 0.01;
    let min = crate::world::s_min(&cfg).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut runs: Vec<(u64, Summary)> = vec![];
    for m in [1u64, 2, 4, 8] {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if !quiet {
            eprintln!("sweep stake {m} × S_min");
        }
        let c = SimConfig {
            stake: Some(min * m),
            ..cfg.clone()
        };
        let s = crate::simulate::simulate(c, stop, true)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        runs.push((min * m, s));
    }
    let mut csv = String::from(
        "stake,stake_over_s_min,strategy,profit_per_request_measured,profit_per_request_predicted_from_first_run\n",
    );
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![];
    let Some((_, first)) = runs.first() else {
        return Ok(());
    };
    for x in &first.strategies {
        let mut measured = vec![];
        let mut predicted = vec![];
        for (stake, s) in &runs {
            let Some(m) = s
                .strategies
                .iter()
                .find(|y| y.strategy == x.strategy)
                .and_then(|y| y.profit_per_request)
            else {
                continue;
            };
            let p = first.profit_at(x, *stake as f64).unwrap_or(f64::NAN);
            let _ = writeln!(csv, "{stake},{},{},{m},{p}", stake / min.max(1), x.strategy);
            measured.push((*stake as f64, m));
            predicted.push((*stake as f64, p));
        }
        series.push((format!("{} measured", x.strategy), measured));
        series.push((format!("{} theory (from 1 × S_min)", x.strategy), predicted));
    }
    std::fs::write(dir.join("stake.csv"), csv)?;
    crate::plot::lines_signed(
        &dir.join("profit_vs_stake_measured.svg"),
        "Profit per request at 1, 2, 4, 8 × S_min: measured ● and predicted from the first run (dashed)",
        "stake",
        "profit per request",
        &series,
    )
    .map_err(std::io::Error::other)
}

fn write(points: &[Point], dir: &Path) -> std::io::Result<()> {
    let mut csv = String::from(
        "q,k,r,strategy,cheats,caught,detection_measured,ci_low,ci_high,detection_theory,detection_facts,s_min_ledger,s_min_from_measured_detection,break_even_stake_measured,honest_slashes,wrongful_slashes\n",
    );
    let f = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
    for p in points {
        for s in &p.summary.strategies {
            if s.detection_measured.is_none() {
                continue;
            }
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                p.q,
                p.k,
                p.r,
                s.strategy,
                s.cheats,
                s.cheats_caught,
                f(s.detection_measured),
                f(s.ci95.map(|c| c[0])),
                f(s.ci95.map(|c| c[1])),
                f(s.detection_theory),
                f(s.detection_facts),
                p.summary.s_min_ledger,
                f(s.s_min_from_measured_detection),
                f(s.break_even_stake_measured),
                p.summary.honest_slashes,
                p.summary.wrongful_slashes,
            );
        }
    }
    std::fs::write(dir.join("sweep.csv"), csv)?;
    let series = |strategy: &str, r_fixed: Option<f64>, by_q: bool| {
        let mut out = vec![];
        for k in [1u8, 2, 3] {
            let pts = |theory: bool| -> Vec<(f64, f64)> {
                points
                    .iter()
                    .filter(|p| p.k == k && r_fixed.is_none_or(|r| p.r == r))
                    .filter(|p| by_q || p.q == 0.005)
                    .filter_map(|p| {
                        let s = p
                            .summary
                            .strategies
                            .iter()
                            .find(|s| s.strategy == strategy)?;
                        let y = if theory {
                            s.detection_theory?
                        } else {
                            s.detection_measured?
                        };
                        Some((if by_q { p.q } else { p.r }, y))
                    })
                    .collect()
            };
            out.push((format!("k = {k} measured"), pts(false)));
            out.push((format!("k = {k} theory"), pts(true)));
        }
        out
    };
    crate::plot::lines(
        &dir.join("detection_vs_q.svg"),
        "Colluder ring (r = 0.2): detection vs q",
        "q",
        &series("colluder", Some(0.2), true),
    )
    .map_err(std::io::Error::other)?;
    crate::plot::lines(
        &dir.join("detection_vs_r.svg"),
        "Colluder ring at q = 0.005: detection vs colluding share r",
        "r",
        &series("colluder", None, false),
    )
    .map_err(std::io::Error::other)?;
    Ok(())
}
