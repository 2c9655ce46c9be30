//! `sortition conformance`: the honest-mismatch rate (crate `sortition-conformance`). Each
//! configuration runs as a worker process of this same binary (`--worker-config`, hidden).

use anyhow::{Context, Result};
use clap::Args;
use sortition_conformance::{Progress, RunConfig, Size, WorkerConfig};

#[derive(Args, Debug)]
pub struct ConformanceArgs {
    /// Model to replay the corpus on (pulled on first use).
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// `small` (minutes; what CI runs) or `long` (the published run, `bench/conformance`).
    #[arg(long, default_value = "small")]
    size: Size,
    /// Kernels to compare, comma-separated (`avx512`, `avx2`, `scalar`). Default: every kernel
    /// this CPU supports, the fastest as the reference (`small` leaves out the scalar kernel,
    /// tens of times slower on the whole model; the engine's unit tests hold its products to
    /// the same bits).
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
    /// Thread counts, comma-separated; the first is the reference's.
    #[arg(long, value_delimiter = ',', default_value = "2,1")]
    threads: Vec<usize>,
    /// Requests the scalar kernel replays (tens of times slower than the vector kernels).
    /// Default: 4.
    #[arg(long)]
    scalar_limit: Option<usize>,
    /// Rounds of the corpus sent all at once through a devnet's node over HTTP (0: none).
    #[arg(long, default_value_t = 2)]
    node_rounds: usize,
    /// Rounds at most, each replaying another variant of the corpus (other prompts, seeds and
    /// lengths; the first round is the fixed corpus).
    /// Default: 1, or as many as `--minutes` allows.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: Option<u32>,
    /// Keep starting rounds for this many minutes (up to `--rounds`):
    /// no round starts that would end after it at the mean round time so far. The soak run of
    /// `bench/conformance` uses this.
    #[arg(long)]
    minutes: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file (after each round, so an interrupted run keeps
    /// the rounds it finished).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Also write the scoring audit's trade-off curves to this folder: `roc.csv` (every
    /// tolerance at which an answer changes side, per rule and adversary) and `roc.svg`.
    #[arg(long)]
    roc: Option<std::path::PathBuf>,
    /// Draw the curves of a saved report (`--out`'s JSON) into `--roc` instead of running.
    #[arg(long, requires = "roc")]
    roc_from: Option<std::path::PathBuf>,
    /// Internal: run one worker (JSON `WorkerConfig`) and print its result.
    #[arg(long, hide = true)]
    worker_config: Option<String>,
}

pub async fn run(a: ConformanceArgs) -> Result<()> {
    if let Some(cfg) = &a.worker_config {
        let cfg: WorkerConfig = serde_json::from_str(cfg).context("worker config")?;
        let out = sortition_conformance::worker::work(&cfg).await?;
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    if let (Some(from), Some(dir)) = (&a.roc_from, &a.roc) {
        let text = std::fs::read_to_string(from).with_context(|| from.display().to_string())?;
        let report: sortition_conformance::Report =
            serde_json::from_str(&text).with_context(|| from.display().to_string())?;
        return write_roc(dir, &report);
    }
    let tolerance = match sortition_devnet::default_score_method() {
        sortition_ledger::AuditMethod::Score {
            max_rank,
            logit_slack_milli,
            draw_slack_ppm,
        } => sortition_engine::ScoreTolerance {
            max_rank,
            logit_slack: logit_slack_milli as f32 / 1000.0,
            draw_slack: draw_slack_ppm.map(|ppm| ppm as f32 / 1e6),
        },
        other => anyhow::bail!("the default audit method is not scoring: {other:?}"),
    };
    let budget = match a.minutes {
        None => None,
        Some(m) if m.is_finite() && m > 0.0 && m <= 7.0 * 24.0 * 60.0 => {
            Some(std::time::Duration::from_secs_f64(m * 60.0))
        }
        Some(m) => {
            anyhow::bail!("--minutes {m}: expected a number of minutes above 0, at most a week")
        }
    };
    // A time budget without a round count: the time decides.
    let rounds = a
        .rounds
        .unwrap_or(if budget.is_some() { u32::MAX } else { 1 });
    let cfg = RunConfig {
        model: a.model,
        size: a.size,
        kernels: a.kernels,
        threads: a.threads,
        scalar_limit: a.scalar_limit.or(Some(4)),
        node_rounds: a.node_rounds,
        configured: tolerance,
        rounds,
        budget,
    };
    let exe = std::env::current_exe().context("this program's path")?;
    let quiet = a.json;
    let out = a.out.clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut written: Result<()> = Ok(());
        let report = sortition_conformance::run(&cfg, &exe, |p| match p {
            Progress::Config { round, label } => {
                if !quiet {
                    eprintln!("done: round {round}: {label}");
                }
            }
            Progress::Round(so_far) => {
                if !quiet {
                    eprintln!(
                        "round {} done: {} mismatches in {} answers so far",
                        so_far.rounds, so_far.mismatches, so_far.compared
                    );
                }
                if let Some(path) = &out
                    && written.is_ok()
                {
                    written = write_report(path, so_far);
                }
            }
        })?;
        written.map(|()| report)
    })
    .await??;
    let json = serde_json::to_string_pretty(&report)?;
    if a.json {
        println!("{json}");
    } else {
        print!("{report}");
    }
    if let Some(dir) = &a.roc {
        write_roc(dir, &report)?;
    }
    anyhow::ensure!(
        report.mismatches == 0,
        "{} honest mismatches: each is a determinism bug (see the MISMATCH lines)",
        report.mismatches
    );
    Ok(())
}

/// The scoring audit's trade-off curves of `report` as `roc.csv` and `roc.svg` in `dir`.
fn write_roc(dir: &std::path::Path, report: &sortition_conformance::Report) -> Result<()> {
    use sortition_conformance::roc;
    let scoring = report
        .scoring
        .as_ref()
        .context("the report has no scoring audit measurement")?;
    let curves = roc::curves(&scoring.thresholds);
    anyhow::ensure!(
        !curves.is_empty(),
        "the report keeps no answer's thresholds (written before they were kept?)"
    );
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    std::fs::write(dir.join("roc.csv"), roc::csv(&curves))?;
    let title = format!(
        "scoring audit trade-off: {} ({}, {} round{} of the {:?} corpus)",
        report.model,
        report.engine_version,
        report.rounds,
        if report.rounds == 1 { "" } else { "s" },
        report.size
    );
    roc::svg(&curves, &title, &dir.join("roc.svg")).map_err(anyhow::Error::msg)?;
    eprintln!("wrote {}/roc.csv and roc.svg", dir.display());
    Ok(())
}

fn write_report(path: &std::path::Path, report: &sortition_conformance::Report) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}
