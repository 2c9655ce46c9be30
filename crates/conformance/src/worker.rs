//! One process of a conformance run: loads the model under this process' kernel and a thread
//! count, replays the corpus alone and in mixed batches, and (for the reference process) scores
//! honest answers and a smaller model's answers the way a scoring audit does.

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use sortition_engine::engine::{ScoreTolerance, TokenScore, check_scores};
use sortition_engine::{
    Engine, EngineConfig, FinishReason, GenerateRequest, Generation, Lane, WeightFormat,
};

use crate::ConformanceError;
use crate::corpus::{Case, Size, corpus_variant};
use crate::through_node::HttpAnswer;

/// What one worker process is asked to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub model: String,
    /// The kernel this worker's engine runs (`avx512`, `avx2`, `scalar`).
    pub kernel: String,
    pub size: Size,
    pub threads: usize,
    /// Also replay every case inside a batch of 1–7 other sequences.
    pub batched: bool,
    /// Also score honest and smaller-model answers (the reference process).
    pub scoring: bool,
    /// Replay only the first this many cases (the scalar kernel is slow).
    pub limit: Option<usize>,
    /// Instead of the engine in this process: the corpus through a devnet's node over HTTP,
    /// all at once, this many rounds ([`crate::through_node`]).
    #[serde(default)]
    pub through_node: Option<usize>,
    /// Which variant of the corpus to replay ([`crate::corpus::corpus_variant`]; 0: the fixed
    /// corpus).
    #[serde(default)]
    pub variant: u32,
}

/// The bits of one answer that must not change: tokens, text, finish, and each token's
/// log-probability (f32 bits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: String,
    pub logprob_bits: Vec<u32>,
}

/// One answer scored as a scoring audit does: re-tokenized from its text (an auditor never sees
/// the ids); `scores` empty when the text does not re-tokenize to the generated ids (the audit
/// then re-executes: inconclusive, not a rejection).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoredAnswer {
    pub case: usize,
    pub greedy: bool,
    pub ended_by_eos: bool,
    pub retokenizes: bool,
    pub scores: Vec<TokenScore>,
}

impl ScoredAnswer {
    /// Whether the scoring audit passes it at this tolerance; `None`: inconclusive.
    pub fn passes(&self, stops: &[u32], tol: &ScoreTolerance) -> Option<bool> {
        if !self.retokenizes {
            return None;
        }
        Some(check_scores(&self.scores, self.greedy, self.ended_by_eos, stops, tol).is_ok())
    }

    /// The smallest tolerance of each rule that passes this answer (`check_scores`' rules,
    /// token by token, the worst token deciding); `None`: inconclusive.
    pub fn thresholds(&self, stops: &[u32]) -> Option<Thresholds> {
        if !self.retokenizes {
            return None;
        }
        let n = self.scores.len();
        let stop_at = |i: usize| self.ended_by_eos && i + 1 == n;
        let worst = |f: &dyn Fn(usize, &TokenScore) -> Option<f64>| {
            self.scores
                .iter()
                .enumerate()
                .map(|(i, t)| f(i, t))
                .try_fold(0.0f64, |m, x| x.map(|x| m.max(x)))
        };
        if self.greedy {
            let slack = worst(&|i, t| {
                if stop_at(i) {
                    stops.contains(&t.argmax).then_some(0.0)
                } else if t.token == t.argmax {
                    Some(0.0)
                } else {
                    Some(f64::from(t.max_logit - t.logit))
                }
            });
            return Some(Thresholds {
                greedy: true,
                logit_slack: slack,
                max_rank: None,
                draw_slack: None,
            });
        }
        let rank = worst(&|i, t| {
            Some(if stop_at(i) && stops.contains(&t.argmax) {
                0.0
            } else {
                f64::from(t.rank)
            })
        });
        let draw = worst(&|i, t| {
            let d = t.draw?;
            Some(if stop_at(i) && stops.contains(&d.drawn) {
                0.0
            } else {
                f64::from(d.miss)
            })
        });
        Some(Thresholds {
            greedy: false,
            logit_slack: None,
            max_rank: rank,
            draw_slack: draw,
        })
    }
}

/// The smallest tolerance of each scoring rule that passes one answer (`None`: no tolerance
/// of that rule does, or it does not apply): greedy answers by logit slack, sampled ones by
/// max rank and by draw slack.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub greedy: bool,
    pub logit_slack: Option<f64>,
    pub max_rank: Option<f64>,
    pub draw_slack: Option<f64>,
}

/// Honest answers and a smaller model's, scored by the full model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scoring {
    pub stops: Vec<u32>,
    pub smaller_model_layers: usize,
    pub honest: Vec<ScoredAnswer>,
    pub smaller_model: Vec<ScoredAnswer>,
    /// The re-encoding adversary: the model run in another weight encoding than the class it
    /// claims (the file's own quantization instead of the engine's Q8_0); `None` when the file
    /// ships Q8_0 already, so there is nothing cheaper to re-encode to.
    #[serde(default)]
    pub reencoded: Option<Reencoded>,
}

impl Scoring {
    /// Adds another round's answers, whose cases are numbered from `offset` on.
    pub(crate) fn absorb(&mut self, other: Scoring, offset: usize) {
        let shift = |v: Vec<ScoredAnswer>| {
            v.into_iter().map(|a| ScoredAnswer {
                case: a.case + offset,
                ..a
            })
        };
        self.honest.extend(shift(other.honest));
        self.smaller_model.extend(shift(other.smaller_model));
        match (&mut self.reencoded, other.reencoded) {
            (Some(mine), Some(r)) => {
                mine.answers += r.answers;
                mine.text_differs += r.text_differs;
                mine.scored.extend(shift(r.scored));
            }
            (None, r) => self.reencoded = r,
            (Some(_), None) => {}
        }
    }
}

/// Answers of the re-encoded model: every case's, compared with the honest answer as a
/// re-execution does, and the unconstrained ones scored as a scoring audit does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reencoded {
    /// The encoding it ran (the node class' `quantization` it would have to claim falsely).
    pub quantization: String,
    pub answers: usize,
    /// Answers whose text differs from the honest one: a re-execution audit catches these
    /// (an identical text is no cheat the user can see, and no audit can tell it).
    pub text_differs: usize,
    pub scored: Vec<ScoredAnswer>,
}

/// What a worker prints (one JSON line on stdout).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerOutput {
    /// The kernels the model's layers ran on (the node class' `kernels`).
    pub kernels: String,
    pub threads: usize,
    pub model_digest: String,
    pub engine_version: String,
    pub alone: Vec<Fingerprint>,
    /// Empty when not asked for.
    pub batched: Vec<Fingerprint>,
    pub scoring: Option<Scoring>,
    /// Answers delivered over HTTP by a node under load (`through_node`).
    #[serde(default)]
    pub http: Vec<HttpAnswer>,
    pub seconds: f64,
}

/// Layers the smaller-model adversary keeps (the node's `--adversary smaller-model` uses the
/// same figure).
pub const SMALLER_MODEL_LAYERS: usize = 8;

fn request(case: &Case) -> GenerateRequest {
    GenerateRequest {
        logprobs: Some(0),
        constraint: case.constraint.clone(),
        ..GenerateRequest::new(case.prompt.clone(), case.params.clone())
    }
}

fn fingerprint(g: &Generation) -> Fingerprint {
    Fingerprint {
        tokens: g.tokens.clone(),
        text: g.text.clone(),
        finish: format!("{:?}", g.finish_reason),
        logprob_bits: g.logprobs.iter().map(|l| l.logprob.to_bits()).collect(),
    }
}

async fn generate(engine: &Engine, case: &Case) -> Result<Generation, ConformanceError> {
    Ok(engine.generate(request(case))?.collect_all().await?)
}

/// Runs case `i` with `1 + i % 7` other cases of the corpus queued at the same moment (some
/// before it, some after), so it decodes in batches of varied composition and lengths.
async fn batched(
    engine: &Engine,
    cases: &[Case],
    i: usize,
) -> Result<Generation, ConformanceError> {
    let mates = 1 + i % 7;
    let before = mates / 2;
    let mut streams = Vec::new();
    let mut target = 0;
    for j in 0..=mates {
        if j == before {
            target = streams.len();
            streams.push(engine.generate(request(&cases[i]))?);
        } else {
            let other = &cases[(i + 1 + j * 3) % cases.len()];
            streams.push(engine.generate(request(other))?);
        }
    }
    let mut results = join_all(streams.into_iter().map(|s| s.collect_all())).await;
    Ok(results.swap_remove(target)?)
}

async fn score(
    scorer: &Engine,
    i: usize,
    case: &Case,
    g: &Generation,
) -> Result<ScoredAnswer, ConformanceError> {
    let prompt = scorer.prompt_tokens(&case.prompt)?;
    let mut claimed = scorer.tokenizer().encode(&g.text)?;
    let ended_by_eos = g.finish_reason == FinishReason::Stop;
    if ended_by_eos && let Some(&eos) = scorer.tokenizer().stop_ids().first() {
        claimed.push(eos);
    }
    let retokenizes = claimed == g.tokens;
    let scores = if retokenizes {
        // With the parameters the answer was generated under, as a node's judge scores it
        // (sampled answers are then checked against the seeded draw too).
        let params = &case.params;
        scorer
            .score_in(prompt, claimed, Some(params), Lane::User)
            .await?
    } else {
        Vec::new()
    };
    Ok(ScoredAnswer {
        case: i,
        greedy: case.params.temperature == 0.0,
        ended_by_eos,
        retokenizes,
        scores,
    })
}

/// Runs the corpus on the model in the file's own weight encoding (when that is not Q8_0,
/// the engine's) and checks each answer as a re-execution and a scoring audit would.
async fn reencode(
    engine: &Engine,
    ec: EngineConfig,
    cases: &[Case],
    honest: &[Generation],
) -> Result<Option<Reencoded>, ConformanceError> {
    let cheap = Engine::load(EngineConfig {
        weight_format: WeightFormat::Shipped,
        ..ec
    })?;
    let quantization = cheap.info().node_class.quantization.clone();
    if quantization == engine.info().node_class.quantization {
        return Ok(None);
    }
    let mut out = Reencoded {
        quantization,
        answers: 0,
        text_differs: 0,
        scored: Vec::new(),
    };
    for (i, (c, h)) in cases.iter().zip(honest).enumerate() {
        let g = generate(&cheap, c).await?;
        out.answers += 1;
        out.text_differs += usize::from(g.text != h.text);
        if c.constraint.is_none() {
            out.scored.push(score(engine, i, c, &g).await?);
        }
    }
    Ok(Some(out))
}

/// Runs one worker, in this process.
pub async fn work(cfg: &WorkerConfig) -> Result<WorkerOutput, ConformanceError> {
    let started = std::time::Instant::now();
    let pulled =
        sortition_models::pull(&cfg.model, false).map_err(sortition_engine::EngineError::from)?;
    let kernel = sortition_engine::Kernel::named(Some(&cfg.kernel))
        .map_err(sortition_engine::EngineError::from)?;
    if let Some(rounds) = cfg.through_node {
        let mut cases = corpus_variant(cfg.size, cfg.variant);
        if let Some(n) = cfg.limit {
            cases.truncate(n.max(1));
        }
        let http =
            crate::through_node::replay(&cfg.model, kernel, cfg.threads, &cases, rounds).await?;
        return Ok(WorkerOutput {
            kernels: sortition_engine::kernel_set(Some(kernel)),
            threads: cfg.threads,
            model_digest: pulled.digest.to_hex(),
            engine_version: sortition_engine::ENGINE_VERSION.into(),
            alone: Vec::new(),
            batched: Vec::new(),
            scoring: None,
            http,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let ec = EngineConfig {
        expected_digest: Some(pulled.digest),
        threads: Some(cfg.threads),
        kernel: Some(kernel),
        ..EngineConfig::new(pulled.primary.clone(), cfg.model.clone())
    };
    let engine = Engine::load(ec.clone())?;
    let mut cases = corpus_variant(cfg.size, cfg.variant);
    if let Some(n) = cfg.limit {
        cases.truncate(n.max(1));
    }
    let mut alone = Vec::with_capacity(cases.len());
    let mut honest = Vec::with_capacity(cases.len());
    for c in &cases {
        let g = generate(&engine, c).await?;
        alone.push(fingerprint(&g));
        honest.push(g);
    }
    let mut in_batches = Vec::new();
    if cfg.batched {
        for i in 0..cases.len() {
            in_batches.push(fingerprint(&batched(&engine, &cases, i).await?));
        }
    }
    let scoring = if cfg.scoring {
        let mut honest_scores = Vec::new();
        // Scoring audits do not model constraints (a constrained answer is re-executed).
        for (i, (c, g)) in cases.iter().zip(&honest).enumerate() {
            if c.constraint.is_none() {
                honest_scores.push(score(&engine, i, c, g).await?);
            }
        }
        let smaller = Engine::load(EngineConfig {
            truncate_layers: Some(SMALLER_MODEL_LAYERS),
            ..ec.clone()
        })?;
        let mut cheat_scores = Vec::new();
        for (i, c) in cases
            .iter()
            .enumerate()
            .filter(|(_, c)| c.constraint.is_none())
        {
            let g = generate(&smaller, c).await?;
            cheat_scores.push(score(&engine, i, c, &g).await?);
        }
        drop(smaller);
        let reencoded = reencode(&engine, ec, &cases, &honest).await?;
        Some(Scoring {
            stops: engine.tokenizer().stop_ids().to_vec(),
            smaller_model_layers: SMALLER_MODEL_LAYERS,
            honest: honest_scores,
            smaller_model: cheat_scores,
            reencoded,
        })
    } else {
        None
    };
    let info = engine.info();
    Ok(WorkerOutput {
        kernels: info.node_class.kernels.clone(),
        threads: cfg.threads,
        model_digest: info.digest.to_hex(),
        engine_version: info.node_class.engine_version.clone(),
        alone,
        batched: in_batches,
        scoring,
        http: Vec::new(),
        seconds: started.elapsed().as_secs_f64(),
    })
}
