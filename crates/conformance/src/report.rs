//! Comparing the runs, the statistics, and what is printed.

use serde::{Deserialize, Serialize};

use crate::RunConfig;
use crate::corpus::{Size, corpus_variant};
use crate::through_node::HttpAnswer;
use sortition_engine::ScoreTolerance;

use crate::worker::{Fingerprint, ScoredAnswer, Thresholds, WorkerOutput};

/// One configuration's result against the reference.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigResult {
    pub label: String,
    /// The kernels the model's layers ran on, as the node class names them.
    pub kernels: String,
    pub threads: usize,
    /// Answers compared (alone and in batches) and how many differed in any bit.
    pub compared: u64,
    pub mismatches: u64,
    pub seconds: f64,
}

/// An answer that differed from the reference's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mismatch {
    pub config: String,
    pub case: String,
    pub batched: bool,
    /// The first generated token where tokens or log-probabilities differ (or the length).
    pub first_difference: usize,
}

/// The scoring audit at one tolerance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub max_rank: u32,
    pub logit_slack: f32,
    /// The draw check's slack for sampled answers (`None`: they are checked by rank).
    #[serde(default)]
    pub draw_slack: Option<f32>,
    /// Honest answers the tolerance rejects (each costs a re-execution), of those it decides.
    pub honest_rejected: usize,
    pub honest_decided: usize,
    pub false_rejection_upper_95: f64,
    /// Smaller-model answers it rejects, of those it decides.
    pub cheats_caught: usize,
    pub cheats_decided: usize,
    /// Re-encoded-model answers it rejects, of those it decides (0/0 without one).
    #[serde(default)]
    pub reencoded_caught: usize,
    #[serde(default)]
    pub reencoded_decided: usize,
}

/// The scoring audit: honest answers vs a smaller model's, over a grid of tolerances.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoringReport {
    pub smaller_model_layers: usize,
    /// The configured tolerance (the devnet's default `AuditMethod::Score`).
    pub configured: Point,
    /// Greedy answers, by logit slack (max_rank does not apply to them).
    pub greedy: Vec<Point>,
    /// Sampled answers checked by rank only, by max_rank.
    pub sampled: Vec<Point>,
    /// Sampled answers checked against the seeded draw, by draw slack.
    #[serde(default)]
    pub drawn: Vec<Point>,
    /// Answers whose text does not re-tokenize to their ids (the audit re-executes them).
    pub honest_inconclusive: usize,
    pub cheats_inconclusive: usize,
    /// The worst honest token: the largest gap below the top logit of a greedy answer's
    /// non-argmax token, and the largest rank in a sampled answer.
    pub honest_worst_greedy_gap: f32,
    pub honest_worst_sampled_rank: u32,
    /// The largest distance of an honest sampled token's interval from its draw's uniform
    /// (0: every honest token is the draw's pick).
    #[serde(default)]
    pub honest_worst_draw_miss: Option<f32>,
    /// Each decided answer's smallest passing tolerance per rule: the ROC curves.
    #[serde(default)]
    pub thresholds: AnswerThresholds,
    /// The re-encoding adversary against both audits, when the model has a cheaper encoding.
    #[serde(default)]
    pub reencoded: Option<ReencodedReport>,
}

/// Each decided answer's [`Thresholds`], by who answered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AnswerThresholds {
    pub honest: Vec<Thresholds>,
    pub smaller_model: Vec<Thresholds>,
    pub reencoded: Vec<Thresholds>,
}

/// The model run in a cheaper weight encoding while claiming the honest class.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReencodedReport {
    pub quantization: String,
    pub answers: usize,
    /// Answers a re-execution audit catches (their text differs from the honest answer).
    pub reexecution_caught: usize,
    /// Answers the scoring audit rejects at the configured tolerance, of those it decides
    /// (its honest side is `ScoringReport::configured`; the grid has a column for these).
    pub scoring_caught: usize,
    pub scoring_decided: usize,
    /// Whole answers the scoring audit leaves to re-execution (they do not re-tokenize).
    pub inconclusive: usize,
}

/// The whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub model_digest: String,
    pub engine_version: String,
    pub size: Size,
    /// Rounds run, each on another variant of the corpus.
    #[serde(default = "one")]
    pub rounds: u32,
    /// Requests replayed, over all rounds.
    pub cases: usize,
    pub reference: ConfigResult,
    pub configs: Vec<ConfigResult>,
    pub compared: u64,
    pub mismatches: u64,
    /// One-sided 95 % upper bound on the honest-mismatch rate.
    pub mismatch_upper_95: f64,
    pub mismatch_examples: Vec<Mismatch>,
    pub scoring: Option<ScoringReport>,
}

fn one() -> u32 {
    1
}

/// One-sided 95 % Clopper–Pearson upper bound on a rate with `m` events in `n` trials
/// (`1 − 0.05^(1/n)`, about 3/n, when `m = 0`).
pub fn upper_95(m: u64, n: u64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    if m >= n {
        return 1.0;
    }
    // P(X <= m | n, p) decreases in p: bisect for 0.05.
    let (mut lo, mut hi) = (m as f64 / n as f64, 1.0f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if binomial_cdf(m, n, mid) > 0.05 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// P(X <= m) for X ~ Binomial(n, p), summed in log space.
fn binomial_cdf(m: u64, n: u64, p: f64) -> f64 {
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return if m >= n { 1.0 } else { 0.0 };
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut log_term = n as f64 * lq; // i = 0
    let mut total = log_term.exp();
    for i in 0..m.min(n) {
        log_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln() + lp - lq;
        total += log_term.exp();
    }
    total.min(1.0)
}

/// Where an answer delivered over HTTP first differs from the reference's: the first token
/// whose log-probability differs, or the end of the shorter list when only their number,
/// the text or the finish reason differs.
fn http_difference(r: &Fingerprint, a: &HttpAnswer) -> Option<usize> {
    let finish = match r.finish.as_str() {
        "Stop" => "stop",
        "Length" => "length",
        other => other,
    };
    if r.text == a.text && finish == a.finish && r.logprob_bits == a.logprob_bits {
        return None;
    }
    let n = r.logprob_bits.len().min(a.logprob_bits.len());
    Some(
        (0..n)
            .find(|&i| r.logprob_bits[i] != a.logprob_bits[i])
            .unwrap_or(n),
    )
}

fn first_difference(a: &Fingerprint, b: &Fingerprint) -> Option<usize> {
    if a == b {
        return None;
    }
    let n = a.tokens.len().min(b.tokens.len());
    let at = (0..n)
        .find(|&i| a.tokens[i] != b.tokens[i] || a.logprob_bits.get(i) != b.logprob_bits.get(i))
        .unwrap_or(n);
    Some(at)
}

/// Honest answers and each adversary's, of one kind (all, greedy or sampled).
struct Answers<'a> {
    honest: Vec<&'a ScoredAnswer>,
    smaller: Vec<&'a ScoredAnswer>,
    reencoded: Vec<&'a ScoredAnswer>,
}

impl<'a> Answers<'a> {
    fn of(s: &'a crate::worker::Scoring, keep: impl Fn(&ScoredAnswer) -> bool) -> Self {
        let pick = |v: &'a [ScoredAnswer]| v.iter().filter(|a| keep(a)).collect();
        let reencoded: &[ScoredAnswer] = s.reencoded.as_ref().map_or(&[], |r| &r.scored);
        Answers {
            honest: pick(&s.honest),
            smaller: pick(&s.smaller_model),
            reencoded: pick(reencoded),
        }
    }
    fn point(&self, stops: &[u32], tol: &ScoreTolerance) -> Point {
        let mut p = point(stops, &self.honest, &self.smaller, tol);
        let r = point(stops, &self.honest, &self.reencoded, tol);
        p.reencoded_caught = r.cheats_caught;
        p.reencoded_decided = r.cheats_decided;
        p
    }
}

fn point(
    stops: &[u32],
    honest: &[&ScoredAnswer],
    cheats: &[&ScoredAnswer],
    tol: &ScoreTolerance,
) -> Point {
    let tally = |answers: &[&ScoredAnswer]| {
        let decided: Vec<bool> = answers
            .iter()
            .filter_map(|a| a.passes(stops, tol))
            .collect();
        (decided.iter().filter(|p| !**p).count(), decided.len())
    };
    let (honest_rejected, honest_decided) = tally(honest);
    let (cheats_caught, cheats_decided) = tally(cheats);
    Point {
        max_rank: tol.max_rank,
        logit_slack: tol.logit_slack,
        draw_slack: tol.draw_slack,
        honest_rejected,
        honest_decided,
        false_rejection_upper_95: upper_95(honest_rejected as u64, honest_decided as u64),
        cheats_caught,
        cheats_decided,
        reencoded_caught: 0,
        reencoded_decided: 0,
    }
}

/// The grid of tolerances each rule is reported at.
const SLACKS: [f32; 5] = [0.0, 0.25, 1.0, 4.0, 16.0];
const RANKS: [u32; 5] = [1, 10, 100, 1_000, 10_000];
const DRAW_SLACKS: [f32; 6] = [0.0, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1];

pub(crate) fn scoring_report(
    s: &crate::worker::Scoring,
    configured: ScoreTolerance,
) -> ScoringReport {
    let all = Answers::of(s, |_| true);
    let greedy_answers = Answers::of(s, |a| a.greedy);
    let sampled_answers = Answers::of(s, |a| !a.greedy);
    let greedy = SLACKS
        .iter()
        .map(|&logit_slack| {
            let tol = ScoreTolerance {
                logit_slack,
                ..configured
            };
            greedy_answers.point(&s.stops, &tol)
        })
        .collect();
    let sampled = RANKS
        .iter()
        .map(|&max_rank| {
            let tol = ScoreTolerance {
                max_rank,
                draw_slack: None,
                ..configured
            };
            sampled_answers.point(&s.stops, &tol)
        })
        .collect();
    let drawn = DRAW_SLACKS
        .iter()
        .map(|&slack| {
            let tol = ScoreTolerance {
                draw_slack: Some(slack),
                ..configured
            };
            sampled_answers.point(&s.stops, &tol)
        })
        .collect();
    let mut worst_gap = 0.0f32;
    let mut worst_rank = 0u32;
    let mut worst_miss: Option<f32> = None;
    for a in &s.honest {
        for t in &a.scores {
            if a.greedy {
                if t.token != t.argmax {
                    worst_gap = worst_gap.max(t.max_logit - t.logit);
                }
            } else {
                worst_rank = worst_rank.max(t.rank);
                if let Some(d) = t.draw {
                    worst_miss = Some(worst_miss.unwrap_or(0.0).max(d.miss));
                }
            }
        }
    }
    let thresholds = |v: &[ScoredAnswer]| -> Vec<Thresholds> {
        v.iter().filter_map(|a| a.thresholds(&s.stops)).collect()
    };
    let thresholds = AnswerThresholds {
        honest: thresholds(&s.honest),
        smaller_model: thresholds(&s.smaller_model),
        reencoded: s
            .reencoded
            .as_ref()
            .map_or_else(Vec::new, |r| thresholds(&r.scored)),
    };
    let at_configured = all.point(&s.stops, &configured);
    let reencoded = s.reencoded.as_ref().map(|r| ReencodedReport {
        quantization: r.quantization.clone(),
        answers: r.answers,
        reexecution_caught: r.text_differs,
        scoring_caught: at_configured.reencoded_caught,
        scoring_decided: at_configured.reencoded_decided,
        inconclusive: r.scored.iter().filter(|a| !a.retokenizes).count(),
    });
    ScoringReport {
        reencoded,
        smaller_model_layers: s.smaller_model_layers,
        configured: at_configured,
        greedy,
        sampled,
        drawn,
        honest_inconclusive: s.honest.iter().filter(|a| !a.retokenizes).count(),
        cheats_inconclusive: s.smaller_model.iter().filter(|a| !a.retokenizes).count(),
        honest_worst_greedy_gap: worst_gap,
        honest_worst_sampled_rank: worst_rank,
        honest_worst_draw_miss: worst_miss,
        thresholds,
    }
}

impl Report {
    pub(crate) fn new(
        cfg: &RunConfig,
        round: u32,
        reference_kernel: &str,
        reference: WorkerOutput,
        runs: Vec<(String, WorkerOutput)>,
        configured: ScoreTolerance,
    ) -> Report {
        let cases = corpus_variant(cfg.size, round);
        let mut examples = Vec::new();
        let mut compare = |label: &str, out: &WorkerOutput| -> (u64, u64) {
            let (mut compared, mut mismatches) = (0, 0);
            for (batched, answers) in [(false, &out.alone), (true, &out.batched)] {
                for (i, a) in answers.iter().enumerate() {
                    let Some(r) = reference.alone.get(i) else {
                        continue;
                    };
                    compared += 1;
                    if let Some(at) = first_difference(r, a) {
                        mismatches += 1;
                        if examples.len() < 20 {
                            examples.push(Mismatch {
                                config: label.to_string(),
                                case: cases.get(i).map(|c| c.label.clone()).unwrap_or_default(),
                                batched,
                                first_difference: at,
                            });
                        }
                    }
                }
            }
            // Answers over HTTP: text, finish and log-probability bits (the ids stay in the
            // node; the receipt commits to all three).
            for a in &out.http {
                let Some(r) = reference.alone.get(a.case) else {
                    continue;
                };
                compared += 1;
                if let Some(at) = http_difference(r, a) {
                    mismatches += 1;
                    if examples.len() < 20 {
                        examples.push(Mismatch {
                            config: label.to_string(),
                            case: cases
                                .get(a.case)
                                .map(|c| c.label.clone())
                                .unwrap_or_default(),
                            batched: true,
                            first_difference: at,
                        });
                    }
                }
            }
            (compared, mismatches)
        };
        // The reference's own batched answers against its answers alone.
        let ref_label = format!(
            "{reference_kernel} threads={} (reference)",
            reference.threads
        );
        let (c0, m0) = {
            let batched_only = WorkerOutput {
                alone: vec![],
                ..reference.clone()
            };
            compare(&ref_label, &batched_only)
        };
        let mut configs = Vec::new();
        let (mut compared, mut mismatches) = (c0, m0);
        for (label, out) in &runs {
            let (c, m) = compare(label, out);
            compared += c;
            mismatches += m;
            configs.push(ConfigResult {
                label: label.clone(),
                kernels: out.kernels.clone(),
                threads: out.threads,
                compared: c,
                mismatches: m,
                seconds: out.seconds,
            });
        }
        let scoring = reference
            .scoring
            .as_ref()
            .map(|s| scoring_report(s, configured));
        Report {
            model: cfg.model.clone(),
            model_digest: reference.model_digest.clone(),
            engine_version: reference.engine_version.clone(),
            size: cfg.size,
            rounds: 1,
            cases: cases.len(),
            reference: ConfigResult {
                label: ref_label,
                kernels: reference.kernels.clone(),
                threads: reference.threads,
                compared: c0,
                mismatches: m0,
                seconds: reference.seconds,
            },
            configs,
            compared,
            mismatches,
            mismatch_upper_95: upper_95(mismatches, compared),
            mismatch_examples: examples,
            scoring,
        }
    }
}

impl Point {
    /// The three columns after a grid row's tolerance.
    fn tallies(&self) -> String {
        format!(
            "{:>7}/{:<7}  {:>9}/{:<9}  {:>8}/{:<8}",
            self.honest_rejected,
            self.honest_decided,
            self.cheats_caught,
            self.cheats_decided,
            self.reencoded_caught,
            self.reencoded_decided
        )
    }
}

impl ConfigResult {
    fn absorb(&mut self, other: &ConfigResult) {
        self.compared += other.compared;
        self.mismatches += other.mismatches;
        self.seconds += other.seconds;
    }
}

impl Report {
    /// Adds another round's comparisons (its cases follow this report's). The scoring is left
    /// as it is: it is computed again from the rounds' merged answers.
    pub(crate) fn absorb(&mut self, other: Report) {
        self.rounds += other.rounds;
        self.cases += other.cases;
        self.reference.absorb(&other.reference);
        for c in &other.configs {
            match self.configs.iter_mut().find(|m| m.label == c.label) {
                Some(mine) => mine.absorb(c),
                None => self.configs.push(c.clone()),
            }
        }
        self.compared += other.compared;
        self.mismatches += other.mismatches;
        self.mismatch_upper_95 = upper_95(self.mismatches, self.compared);
        let room = 20usize.saturating_sub(self.mismatch_examples.len());
        self.mismatch_examples
            .extend(other.mismatch_examples.into_iter().take(room));
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "conformance: {} ({}…), {}, corpus {:?} ({} requests in {} round{})",
            self.model,
            &self.model_digest[..16.min(self.model_digest.len())],
            self.engine_version,
            self.size,
            self.cases,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" }
        )?;
        writeln!(
            f,
            "  {:<36} {:<40} {:>9} {:>10} {:>8}",
            "CONFIGURATION", "KERNELS", "COMPARED", "MISMATCHES", "SECONDS"
        )?;
        for c in std::iter::once(&self.reference).chain(&self.configs) {
            writeln!(
                f,
                "  {:<36} {:<40} {:>9} {:>10} {:>8.1}",
                c.label, c.kernels, c.compared, c.mismatches, c.seconds
            )?;
        }
        writeln!(
            f,
            "honest mismatches: {} of {} answers compared bit for bit (tokens, text, log-probabilities); \
             95% upper bound on the rate {:.2e}",
            self.mismatches, self.compared, self.mismatch_upper_95
        )?;
        for m in &self.mismatch_examples {
            writeln!(
                f,
                "  MISMATCH {} {} ({}) from token {}",
                m.config,
                m.case,
                if m.batched { "in a batch" } else { "alone" },
                m.first_difference
            )?;
        }
        if let Some(s) = &self.scoring {
            let c = &s.configured;
            writeln!(
                f,
                "scoring audit at the configured tolerance ({}, logit slack {:.3}): \
                 honest rejected {}/{} (95% upper bound {:.2e}), smaller model ({} layers) caught {}/{}; \
                 inconclusive (text does not re-tokenize; re-executed): honest {}, smaller model {}",
                match c.draw_slack {
                    Some(d) => format!("draw slack {d:.0e}"),
                    None => format!("max_rank {}", c.max_rank),
                },
                c.logit_slack,
                c.honest_rejected,
                c.honest_decided,
                c.false_rejection_upper_95,
                s.smaller_model_layers,
                c.cheats_caught,
                c.cheats_decided,
                s.honest_inconclusive,
                s.cheats_inconclusive
            )?;
            writeln!(
                f,
                "  worst honest token: greedy gap {:.3} logits, sampled rank {}, draw miss {}",
                s.honest_worst_greedy_gap,
                s.honest_worst_sampled_rank,
                s.honest_worst_draw_miss
                    .map_or("(not measured)".into(), |m| format!("{m:.2e}"))
            )?;
            if let Some(r) = &s.reencoded {
                writeln!(
                    f,
                    "re-encoded model ({} weights claiming the honest class): re-execution caught {}/{} \
                     (the others answer the same text); scoring at the configured tolerance caught {}/{}, \
                     inconclusive {}",
                    r.quantization,
                    r.reexecution_caught,
                    r.answers,
                    r.scoring_caught,
                    r.scoring_decided,
                    r.inconclusive
                )?;
            }
            writeln!(
                f,
                "  greedy answers, by logit slack:  SLACK  HONEST REJECTED  SMALLER MODEL CAUGHT  RE-ENCODED CAUGHT"
            )?;
            for p in &s.greedy {
                writeln!(f, "  {:>38.3}  {}", p.logit_slack, p.tallies())?;
            }
            writeln!(
                f,
                "  sampled answers, by max rank:    RANK   HONEST REJECTED  SMALLER MODEL CAUGHT  RE-ENCODED CAUGHT"
            )?;
            for p in &s.sampled {
                writeln!(f, "  {:>38}  {}", p.max_rank, p.tallies())?;
            }
            if !s.drawn.is_empty() {
                writeln!(
                    f,
                    "  sampled answers, by draw slack:  SLACK  HONEST REJECTED  SMALLER MODEL CAUGHT  RE-ENCODED CAUGHT"
                )?;
                for p in &s.drawn {
                    let slack = p.draw_slack.unwrap_or(0.0);
                    writeln!(f, "  {:>38.0e}  {}", slack, p.tallies())?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bounds_match_the_exact_binomial() {
        // 0 in n: 1 - 0.05^(1/n) (about 3/n).
        for n in [1u64, 10, 100, 1_000, 100_000] {
            let exact = 1.0 - 0.05f64.powf(1.0 / n as f64);
            assert!((upper_95(0, n) - exact).abs() < 1e-9, "n={n}");
        }
        assert!((upper_95(0, 1_000) - 0.002_991_5).abs() < 1e-6);
        // 1 in 100: the one-sided Clopper-Pearson bound is 0.0466.
        assert!(
            (upper_95(1, 100) - 0.0466).abs() < 5e-4,
            "{}",
            upper_95(1, 100)
        );
        // 5 in 50: 0.1995.
        assert!(
            (upper_95(5, 50) - 0.1995).abs() < 1e-3,
            "{}",
            upper_95(5, 50)
        );
        assert_eq!(upper_95(0, 0), 1.0);
        assert_eq!(upper_95(3, 3), 1.0);
    }

    #[test]
    fn differences_are_located() {
        let a = Fingerprint {
            tokens: vec![1, 2, 3],
            text: "abc".into(),
            finish: "Length".into(),
            logprob_bits: vec![10, 20, 30],
        };
        assert_eq!(first_difference(&a, &a.clone()), None);
        let mut b = a.clone();
        b.logprob_bits[1] = 21;
        assert_eq!(first_difference(&a, &b), Some(1));
        let mut c = a.clone();
        c.tokens.push(4);
        assert_eq!(first_difference(&a, &c), Some(3));
    }
}
