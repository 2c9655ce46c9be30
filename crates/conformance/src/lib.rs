//! Sortition conformance: the honest-mismatch rate, measured.
//!
//! An audit re-executes a request and compares bits, so an honest node is only safe if the same
//! request gives the same bits everywhere a node may run it. This replays a fixed corpus
//! ([`corpus`]) across every axis that must not change them — each kernel this CPU has, several
//! thread counts, alone and inside batches of 1–7 other sequences
//! of varied lengths, and in separate processes (each configuration is its own process; the
//! reference configuration runs twice) — and compares every answer (tokens, text, finish and
//! each token's log-probability, as bits) with the reference process' answer alone. It reports
//! the exact-match rate with a one-sided 95 % upper confidence bound on the mismatch rate
//! (Clopper–Pearson; 0 mismatches in N gives about 3/N).
//!
//! It also measures the scoring audit ([`worker::ScoredAnswer`], the rule
//! `sortition_engine::engine::check_scores` the node's judge applies): how many honest answers a
//! tolerance would reject (each rejection costs a re-execution, never a verdict) against how many
//! answers of a smaller model (the `smaller-model` adversary: the first
//! [`worker::SMALLER_MODEL_LAYERS`] layers) it catches, over a grid of tolerances for each rule
//! (greedy answers by logit slack; sampled answers by rank, and against the seeded draw), and
//! as curves through every tolerance at which some answer changes side ([`roc`]): the
//! trade-off the default tolerance is chosen from.
//!
//! It also runs the re-encoding adversary ([`worker::Reencoded`]: the file's own quantization
//! claiming the Q8_0 class) against both audits.
//!
//! And it replays the corpus through a real node under concurrent load
//! ([`through_node`]): a devnet on loopback whose node runs the reference kernel and threads,
//! every unconstrained case sent over HTTP at once, for several rounds, each answer's text,
//! finish reason and log-probability bits compared with the reference's.

pub mod corpus;
pub mod report;
pub mod roc;
pub mod through_node;
pub mod worker;

use std::path::Path;
use std::process::Command;

pub use corpus::Size;
pub use report::Report;
pub use worker::{WorkerConfig, WorkerOutput};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("engine: {0}")]
    Engine(#[from] sortition_engine::EngineError),
    #[error("worker {config}: {why}")]
    Worker { config: String, why: String },
    #[error("invalid run: {0}")]
    Invalid(String),
}

/// A whole run: which model, how much, which kernels and thread counts.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub model: String,
    pub size: Size,
    /// Kernel names (`avx512`, `avx2`, `scalar`); empty: every kernel this CPU supports (but
    /// the scalar kernel in the small size: on the whole model it is tens of times slower, and
    /// its products are held to the same bits by the engine's unit tests).
    pub kernels: Vec<String>,
    /// Thread counts; the first is the reference's.
    pub threads: Vec<usize>,
    /// Cases the scalar kernel replays (it is several times slower); `None`: all.
    pub scalar_limit: Option<usize>,
    /// Rounds of the corpus sent at once through a devnet's node over HTTP (on the reference
    /// kernel and threads); 0 leaves that configuration out.
    pub node_rounds: usize,
    /// The scoring tolerance configured for the model (`AuditMethod::Score`), reported on its
    /// own besides the grid.
    pub configured: sortition_engine::ScoreTolerance,
    /// Rounds at most, each replaying another variant of the corpus
    /// ([`corpus::corpus_variant`]; the first round replays the fixed corpus). At least 1.
    pub rounds: u32,
    /// A time budget: no round starts that would, at the mean round time so far, end after
    /// it. `None`: all `rounds` run. The first round always runs.
    pub budget: Option<std::time::Duration>,
}

/// What [`run`] reports while it works.
pub enum Progress<'a> {
    /// A configuration of the current round finished.
    Config { round: u32, label: &'a str },
    /// A round finished: the report of every round so far (a long run can write it, so an
    /// interrupted run keeps what it measured).
    Round(&'a Report),
}

/// The arguments that make `sortition` run one worker and print its JSON line.
pub fn worker_args(cfg: &WorkerConfig) -> Vec<String> {
    vec![
        "conformance".into(),
        "--worker-config".into(),
        serde_json::to_string(cfg).unwrap_or_default(),
    ]
}

fn spawn_worker(exe: &Path, cfg: &WorkerConfig) -> Result<WorkerOutput, ConformanceError> {
    let label = format!("{} threads={}", cfg.kernel, cfg.threads);
    let fail = |why: String| ConformanceError::Worker {
        config: label.clone(),
        why,
    };
    let out = Command::new(exe)
        .args(worker_args(cfg))
        .output()
        .map_err(|e| fail(format!("could not start {}: {e}", exe.display())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| fail("printed no result".into()))?;
    serde_json::from_str(line).map_err(|e| fail(format!("result does not parse: {e}")))
}

/// Runs every configuration, each in its own process of `exe` (the `sortition` binary), for
/// each round, and compares them. `progress` hears of each configuration and each round as
/// they finish.
pub fn run(
    cfg: &RunConfig,
    exe: &Path,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Report, ConformanceError> {
    if cfg.threads.is_empty() || cfg.threads.contains(&0) {
        return Err(ConformanceError::Invalid(
            "thread counts must be given and positive".into(),
        ));
    }
    if cfg.rounds == 0 {
        return Err(ConformanceError::Invalid(
            "rounds must be at least 1".into(),
        ));
    }
    let kernels = kernels(cfg)?;
    let started = std::time::Instant::now();
    let mut total: Option<(Report, Option<worker::Scoring>)> = None;
    for round in 0..cfg.rounds {
        if let (Some(budget), Some((r, _))) = (cfg.budget, &total) {
            let mean = started.elapsed() / r.rounds;
            if started.elapsed() + mean > budget {
                break;
            }
        }
        let (report, scoring) = run_round(cfg, exe, &kernels, round, &mut progress)?;
        let merged = match total.take() {
            None => (report, scoring),
            Some((mut all, all_scoring)) => {
                let all_scoring = match (all_scoring, scoring) {
                    (Some(mut a), Some(b)) => {
                        a.absorb(b, all.cases);
                        Some(a)
                    }
                    (a, b) => a.or(b),
                };
                all.absorb(report);
                all.scoring = all_scoring
                    .as_ref()
                    .map(|s| report::scoring_report(s, cfg.configured));
                (all, all_scoring)
            }
        };
        progress(Progress::Round(&merged.0));
        total = Some(merged);
    }
    let (report, _) = total.ok_or_else(|| ConformanceError::Invalid("no round ran".into()))?;
    Ok(report)
}

/// The kernels to compare, the reference first.
fn kernels(cfg: &RunConfig) -> Result<Vec<String>, ConformanceError> {
    let supported: Vec<String> = sortition_engine::Kernel::supported()
        .into_iter()
        .map(|k| k.name().to_string())
        .collect();
    let mut kernels: Vec<String> = if cfg.kernels.is_empty() {
        // Fastest first: the reference is the kernel a node here would run by default.
        supported
            .iter()
            .rev()
            .filter(|k| cfg.size == Size::Long || k.as_str() != "scalar")
            .cloned()
            .collect()
    } else {
        cfg.kernels.clone()
    };
    kernels.dedup();
    if kernels.is_empty() {
        // No vector kernel on this CPU: the scalar one is all there is.
        kernels = supported.clone();
    }
    for k in &kernels {
        if !supported.contains(k) {
            return Err(ConformanceError::Invalid(format!(
                "kernel {k:?} does not run on this CPU (it has {})",
                supported.join(", ")
            )));
        }
    }
    Ok(kernels)
}

/// One round: every configuration on variant `round` of the corpus. Returns its report and the
/// reference's raw scoring (rounds' scorings are merged before the grid is computed).
fn run_round(
    cfg: &RunConfig,
    exe: &Path,
    kernels: &[String],
    round: u32,
    progress: &mut impl FnMut(Progress<'_>),
) -> Result<(Report, Option<worker::Scoring>), ConformanceError> {
    let mut done = |label: &str| progress(Progress::Config { round, label });
    let worker = |kernel: &str, threads: usize, batched: bool, scoring: bool, limit| WorkerConfig {
        model: cfg.model.clone(),
        kernel: kernel.to_string(),
        size: cfg.size,
        threads,
        batched,
        scoring,
        limit,
        through_node: None,
        variant: round,
    };
    let mut runs = Vec::new();
    let reference_kernel = kernels[0].clone();
    let reference = spawn_worker(
        exe,
        &worker(&reference_kernel, cfg.threads[0], true, true, None),
    )?;
    done(&format!(
        "{reference_kernel} threads={} (reference)",
        cfg.threads[0]
    ));
    // The same configuration in a second process: a restart must not change a bit.
    let again = spawn_worker(
        exe,
        &worker(&reference_kernel, cfg.threads[0], true, false, None),
    )?;
    done(&format!(
        "{reference_kernel} threads={} (restarted)",
        cfg.threads[0]
    ));
    runs.push((
        format!("{reference_kernel} threads={} restarted", cfg.threads[0]),
        again,
    ));
    for k in kernels {
        for &t in &cfg.threads {
            if *k == reference_kernel && t == cfg.threads[0] {
                continue;
            }
            let limit = if k == "scalar" {
                cfg.scalar_limit
            } else {
                None
            };
            let out = spawn_worker(exe, &worker(k, t, true, false, limit))?;
            done(&format!("{k} threads={t}"));
            runs.push((format!("{k} threads={t}"), out));
        }
    }
    if cfg.node_rounds > 0 {
        let w = WorkerConfig {
            through_node: Some(cfg.node_rounds),
            ..worker(&reference_kernel, cfg.threads[0], false, false, None)
        };
        let out = spawn_worker(exe, &w)?;
        let label = format!(
            "{reference_kernel} threads={} node, HTTP, x{}",
            cfg.threads[0], cfg.node_rounds
        );
        done(&label);
        runs.push((label, out));
    }
    let scoring = reference.scoring.clone();
    let report = Report::new(
        cfg,
        round,
        &reference_kernel,
        reference,
        runs,
        cfg.configured,
    );
    Ok((report, scoring))
}
