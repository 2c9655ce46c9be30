//! Small runs of the simulator on the real ledger: detection against theory, no honest
//! slashes, refused parameters, reproducibility, the timing dodger against both beacons,
//! interruption and the written outputs.

use std::sync::atomic::{AtomicBool, Ordering};

use sortition_sim::cli::simulate;
use sortition_sim::{BeaconMode, Mix, SimConfig, SimError, Strategy, Summary, World};

fn small(mix: &str) -> SimConfig {
    SimConfig {
        nodes: 400,
        requests: 200_000,
        seed: 7,
        q: 0.02,
        k: 2,
        classes: 4,
        receipts_per_claim: 1_000,
        mix: Mix::parse(mix).expect("mix"),
        epoch_blocks: 10,
        ..SimConfig::default()
    }
}

fn run(cfg: SimConfig) -> Summary {
    simulate(cfg, &AtomicBool::new(false), true).expect("run")
}

fn strategy<'a>(s: &'a Summary, name: &str) -> &'a sortition_sim::report::StrategySummary {
    s.strategies
        .iter()
        .find(|x| x.strategy == name)
        .unwrap_or_else(|| panic!("{name} in {:?}", s.strategies))
}

/// Measured within 3.3 standard errors of theory (about 99.9 %).
fn close_to_theory(s: &Summary, name: &str) {
    let x = strategy(s, name);
    let (m, t) = (
        x.detection_measured.expect("measured"),
        x.detection_theory.expect("theory"),
    );
    let se = (t * (1.0 - t) / x.cheats as f64).sqrt();
    assert!(
        (m - t).abs() <= 3.3 * se,
        "{name}: measured {m} vs theory {t} (±{})",
        3.3 * se
    );
}

#[test]
fn detection_matches_theory_and_honest_receipts_are_never_faulted() {
    let s = run(small(
        "always-cheat=0.1,cheat-fraction=0.1,selective=0.1,over-report=0.1,withhold=0.1,colluder=0.1,lazy-copy=0.05,lazy-skip=0.03",
    ));
    assert!(!s.interrupted);
    assert_eq!(s.refused_txs, 0, "{:?}", s.refusals);
    assert_eq!(s.requests_served, 200_000);
    for name in [
        "always-cheat",
        "cheat-fraction",
        "selective",
        "over-report",
        "withhold",
        "colluder",
    ] {
        close_to_theory(&s, name);
    }
    for x in &s.strategies {
        assert_eq!(x.honest_receipts_faulted, 0, "{}", x.strategy);
    }
    // With colluders and copying auditors in the pools, a committee they capture outvotes a
    // true mismatch and the honest auditors who reported it are slashed for a wrong verdict:
    // the only wrongful slashes there are.
    assert!(
        s.wrongful_slashes_by_reason
            .keys()
            .all(|r| r == "WrongVerdict"),
        "{:?}",
        s.wrongful_slashes_by_reason
    );
    // Skipping auditors are slashed for their missed deadlines.
    assert!(s.slashes_by_reason.contains_key("MissedDeadline"));
    assert!(s.epochs >= 1 && s.disputes > 0 && s.settled_claims > 0);
    // Cheating does not pay at the ledger's minimum stake.
    let honest = strategy(&s, "honest")
        .profit_per_request
        .expect("honest profit");
    let cheat = strategy(&s, "always-cheat")
        .profit_per_request
        .expect("cheat profit");
    assert!(cheat < honest, "{cheat} vs {honest}");
}

#[test]
fn without_anyone_covering_for_cheats_no_honest_node_is_ever_slashed() {
    let mut cfg = small(
        "always-cheat=0.1,cheat-fraction=0.1,selective=0.1,over-report=0.1,withhold=0.1,lazy-skip=0.05",
    );
    cfg.requests = 100_000;
    let s = run(cfg);
    assert_eq!(s.refused_txs, 0, "{:?}", s.refusals);
    assert_eq!(s.honest_slashes, 0);
    assert_eq!(s.wrongful_slashes, 0, "{:?}", s.wrongful_slashes_by_reason);
    assert!(s.disputes > 0 && s.slashes_by_reason.contains_key("ExecutorAtFault"));
}

#[test]
fn timing_dodger_escapes_a_predictable_beacon_only() {
    let mut cfg = small("timing-dodger=0.2");
    cfg.cheat_p = 0.5;
    let threshold = run(cfg.clone());
    close_to_theory(&threshold, "timing-dodger");
    cfg.beacon = BeaconMode::Predictable;
    let predictable = run(cfg);
    let d = strategy(&predictable, "timing-dodger");
    assert!(d.cheats > 1_000, "{d:?}");
    assert_eq!(d.cheats_caught, 0, "{d:?}");
    // Cheating pays for it there, and only there.
    let honest = |s: &Summary| strategy(s, "honest").profit_per_request.expect("honest");
    let dodger = |s: &Summary| {
        strategy(s, "timing-dodger")
            .profit_per_request
            .expect("dodger")
    };
    assert!(dodger(&predictable) > honest(&predictable));
    assert!(dodger(&threshold) < honest(&threshold));
    assert!(strategy(&threshold, "timing-dodger").cheats_caught > 0);
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let mut cfg = small("always-cheat=0.1,lazy-copy=0.1");
    cfg.requests = 50_000;
    let a = run(cfg.clone());
    let b = run(cfg.clone());
    assert_eq!(a.state_root, b.state_root);
    assert_eq!(a.detection_measured, b.detection_measured);
    assert_eq!(a.txs, b.txs);
    cfg.seed += 1;
    let c = run(cfg);
    assert_ne!(a.state_root, c.state_root);
}

#[test]
fn invalid_parameters_are_refused_before_the_run() {
    let bad = |f: &dyn Fn(&mut SimConfig)| {
        let mut c = SimConfig::default();
        f(&mut c);
        World::new(c).err().expect("refused")
    };
    assert!(matches!(
        bad(&|c| c.q = 1.5),
        SimError::OutOfUnitRange { name: "q", .. }
    ));
    assert!(matches!(
        bad(&|c| c.q = -0.1),
        SimError::OutOfUnitRange { .. }
    ));
    assert!(matches!(bad(&|c| c.q = 0.0), SimError::BadQ(_)));
    assert_eq!(bad(&|c| c.nodes = 0), SimError::ZeroNodes);
    assert!(matches!(
        bad(&|c| {
            c.nodes = 30;
            c.classes = 10;
            c.k = 3
        }),
        SimError::KLargerThanClass { k: 3, .. }
    ));
    assert!(matches!(
        bad(&|c| c.stake = Some(u64::MAX / 3)),
        SimError::StakeOverflow { .. }
    ));
    assert!(matches!(
        bad(&|c| c.stake = Some(1)),
        SimError::StakeBelowMinimum { .. }
    ));
    assert!(matches!(
        bad(&|c| c.mix = Mix(vec![
            (Strategy::AlwaysCheat, 0.7),
            (Strategy::Colluder, 0.5)
        ])),
        SimError::MixOverOne(_)
    ));
    assert!(matches!(
        Mix::parse("cheater=0.1"),
        Err(SimError::UnknownStrategy(..))
    ));
    let msg = bad(&|c| c.q = 2.0).to_string();
    assert!(msg.contains("q must be in [0, 1]"), "{msg}");
}

#[test]
fn an_interrupted_run_reports_what_it_has_and_writes_its_outputs() {
    let mut cfg = small("always-cheat=0.1,colluder=0.1");
    cfg.requests = 100_000;
    let mut w = World::new(cfg).expect("world");
    let stop = AtomicBool::new(false);
    let interrupted = w.run(&stop, |w| {
        if w.stats.blocks >= 8 {
            stop.store(true, Ordering::Relaxed);
        }
    });
    assert!(interrupted);
    let s = Summary::of(&w, interrupted);
    assert!(s.interrupted && s.requests_served > 0 && s.requests_served <= 100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    sortition_sim::plot::write(&s, dir.path()).expect("write");
    for f in [
        "summary.json",
        "strategies.csv",
        "catch_times.csv",
        "profit_vs_stake.csv",
        "detection.svg",
        "profit_vs_stake.svg",
        "catch_times.svg",
        "report.md",
    ] {
        let p = dir.path().join(f);
        assert!(p.metadata().is_ok_and(|m| m.len() > 0), "{f}");
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).expect("report");
    assert!(md.contains("Interrupted"));
    let json: serde_json::Value = serde_json::from_str(&s.json()).expect("json");
    assert!(json["detection_measured"]["always-cheat"].is_number());
    assert!(json["detection_theory"]["always-cheat"].is_number());
}

#[test]
fn the_sweep_writes_its_grids_and_plots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = SimConfig::default();
    let points = sortition_sim::sweep::run(
        &base,
        200,
        20_000,
        dir.path(),
        &AtomicBool::new(false),
        true,
    )
    .expect("sweep");
    assert_eq!(points.len(), 24);
    assert!(points.iter().all(|p| p.summary.refused_txs == 0));
    for f in [
        "sweep.csv",
        "stake.csv",
        "detection_vs_q.svg",
        "detection_vs_r.svg",
        "profit_vs_stake_measured.svg",
    ] {
        let p = dir.path().join(f);
        assert!(p.metadata().is_ok_and(|m| m.len() > 0), "{f}");
    }
    let stake = std::fs::read_to_string(dir.path().join("stake.csv")).expect("stake.csv");
    assert!(stake.lines().count() > 4, "{stake}");
}
