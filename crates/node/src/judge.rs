//! Judging an audited request: teacher-forced scoring where the model's policy allows it, exact
//! re-execution as the authority, and a typed outcome that keeps this node's own trouble apart
//! from the executor's fault.
//!
//! Only a [`Judgement::Divergence`] (what this node computed differs from what the receipt
//! claims, with both sides as evidence) becomes a `Mismatch` vote. Trouble of the auditor's
//! own (its engine busy, the model not loaded here, a timeout, an internal error) is retried
//! with bounded backoff while the vote deadline allows, then voted `Unavailable`, which costs
//! the auditor nothing: an honest node is never slashed for being busy. Audit work runs in the
//! engine's audit lane ([`Lane::Audit`]), which user traffic can neither fill nor starve.

use std::future::Future;
use std::time::Duration;

use sortition_api::audit::Route;
use sortition_api::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_json};
use sortition_engine::engine::Lane;
use sortition_engine::{EngineError, GenerateRequest, Prompt, ScoreTolerance};

use crate::request::Kind;
use sortition_ledger::{AuditMethod, Verdict};
use sortition_types::{Hash32, embedding_response_hash, text_response_hash};

use crate::service::NodeState;
use sortition_api::audit::AuditPayload;

/// Why a request could not be judged here. None of these is the executor's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Trouble {
    /// The engine's queue refused the work (it is full).
    #[error("engine busy")]
    Busy,
    /// The model of the request is not served by this node.
    #[error("model {0} is not served here")]
    ModelMissing(String),
    /// The work did not finish in time.
    #[error("timed out")]
    Timeout,
    /// This node failed (a task, the engine thread, a kernel).
    #[error("internal error: {0}")]
    Internal(String),
    /// The payload cannot be judged by this node (a route or request it does not take, e.g.
    /// one over its context): nothing a retry changes, nothing that proves a cheat.
    #[error("cannot judge: {0}")]
    Unjudgeable(String),
}

impl Trouble {
    /// Whether trying again later can help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Trouble::Busy | Trouble::Timeout | Trouble::Internal(_)
        )
    }

    fn label(&self) -> &'static str {
        match self {
            Trouble::Busy => "busy",
            Trouble::ModelMissing(_) => "model_missing",
            Trouble::Timeout => "timeout",
            Trouble::Internal(_) => "internal",
            Trouble::Unjudgeable(_) => "unjudgeable",
        }
    }
}

impl From<EngineError> for Trouble {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Overloaded => Trouble::Busy,
            EngineError::UnknownModel(m) => Trouble::ModelMissing(m),
            EngineError::PromptTooLong { .. }
            | EngineError::EmbeddingTooLong { .. }
            | EngineError::InvalidParams(_) => Trouble::Unjudgeable(e.to_string()),
            other => Trouble::Internal(other.to_string()),
        }
    }
}

/// What re-execution computed, against what the receipt claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Computed {
    pub response_hash: Hash32,
    /// (input, output) tokens.
    pub tokens: (u64, u64),
    /// This node's class fingerprint.
    pub class: Hash32,
}

/// A real divergence: the receipt and this node's exact re-execution differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// What the receipt claims.
    pub claimed: Computed,
    /// What this node computed.
    pub computed: Computed,
}

impl Divergence {
    /// The evidence hash a `Mismatch` vote carries: the response hash this node computed.
    pub fn evidence_hash(&self) -> Hash32 {
        self.computed.response_hash
    }
}

/// What judging an audited request concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The receipt is what this node computes (or scoring cleared it).
    Match,
    /// The receipt is not: vote `Mismatch`.
    Divergence(Box<Divergence>),
    /// This node could not judge: retry, or vote `Unavailable`. Never `Mismatch`.
    Trouble(Trouble),
}

/// How a judge retries its own trouble.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Longest one attempt may run before it counts as [`Trouble::Timeout`].
    pub attempt_timeout: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(250),
            max: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(300),
        }
    }
}

/// The vote for a judgement, once no retry is left: trouble votes `Unavailable`.
pub fn verdict_of(j: &Judgement) -> Verdict {
    match j {
        Judgement::Match => Verdict::Match,
        Judgement::Divergence(d) => Verdict::Mismatch {
            evidence_hash: d.evidence_hash(),
        },
        Judgement::Trouble(_) => Verdict::Unavailable,
    }
}

/// Judges `p`, retrying this node's transient trouble with bounded backoff until `deadline`
/// resolves (the vote must be cast then); returns the verdict to vote. Trouble that outlasts
/// the retries, or that no retry can mend, votes `Unavailable`, never `Mismatch`.
pub async fn judge_in_time(
    state: &NodeState,
    p: &AuditPayload,
    method: AuditMethod,
    backoff: Backoff,
    deadline: impl Future<Output = ()>,
) -> Verdict {
    tokio::pin!(deadline);
    let mut delay = backoff.first;
    let mut attempts = 0u32;
    let last = loop {
        attempts += 1;
        let attempt = tokio::time::timeout(backoff.attempt_timeout, judge(state, p, method));
        let judged = tokio::select! {
            j = attempt => j.unwrap_or(Judgement::Trouble(Trouble::Timeout)),
            () = &mut deadline => break Trouble::Timeout,
        };
        let trouble = match judged {
            Judgement::Trouble(t) => t,
            done => return verdict_of(&done),
        };
        state.metrics.inc("audit_trouble_total", trouble.label(), 1);
        if !trouble.is_transient() {
            break trouble;
        }
        tracing::warn!(%trouble, attempts, retry_in = ?delay, "could not judge the audited request here; retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut deadline => break trouble,
        }
        delay = (delay * 2).min(backoff.max);
    };
    tracing::warn!(trouble = %last, attempts, "audited request not judged here; voting unavailable");
    state.metrics.inc("audits_total", "unavailable", 1);
    Verdict::Unavailable
}

/// Judges a request once by the model's audit method. Scoring can only clear a receipt: a
/// failed or inconclusive score falls through to exact re-execution, the authority for a
/// divergence.
pub async fn judge(state: &NodeState, p: &AuditPayload, method: AuditMethod) -> Judgement {
    if let AuditMethod::Score {
        max_rank,
        logit_slack_milli,
        draw_slack_ppm,
    } = method
    {
        let tolerance = ScoreTolerance {
            max_rank,
            logit_slack: logit_slack_milli as f32 / 1000.0,
            draw_slack: draw_slack_ppm.map(|ppm| ppm as f32 / 1e6),
        };
        match score(state, p, tolerance).await {
            Scored::Pass => {
                state.metrics.inc("audits_total", "scored_match", 1);
                return Judgement::Match;
            }
            Scored::Fail(why) => {
                state.metrics.inc("audits_total", "scored_fail", 1);
                tracing::info!(%why, "scoring failed; confirming by re-execution");
            }
            Scored::Inconclusive(why) => {
                state.metrics.inc("audits_total", "scored_inconclusive", 1);
                tracing::debug!(%why, "scoring inconclusive; re-executing");
            }
        }
    }
    let judged = reexecute_and_compare(state, p).await;
    let label = match &judged {
        Judgement::Match => "reexecuted_match",
        Judgement::Divergence(_) => "reexecuted_mismatch",
        Judgement::Trouble(_) => "reexecution_trouble",
    };
    state.metrics.inc("audits_total", label, 1);
    judged
}

/// Re-executes the request exactly and compares with the receipt.
async fn reexecute_and_compare(state: &NodeState, p: &AuditPayload) -> Judgement {
    let r = &p.receipt.receipt;
    let (response_hash, tokens) = match reexecute(state, p).await {
        Ok(v) => v,
        Err(t) => {
            tracing::warn!(trouble = %t, "re-execution failed here");
            return Judgement::Trouble(t);
        }
    };
    let computed = Computed {
        response_hash,
        tokens,
        class: state.class.fingerprint(),
    };
    let claimed = Computed {
        response_hash: r.response_hash,
        tokens: (r.input_tokens, r.output_tokens),
        class: r.node_class,
    };
    if computed == claimed {
        Judgement::Match
    } else {
        tracing::info!(
            ?claimed,
            ?computed,
            "re-execution diverges from the receipt"
        );
        Judgement::Divergence(Box::new(Divergence { claimed, computed }))
    }
}

/// Runs the request as the executor should have: the response hash and (input, output)
/// tokens, or this node's trouble.
async fn reexecute(state: &NodeState, p: &AuditPayload) -> Result<(Hash32, (u64, u64)), Trouble> {
    let request = generation_request(p).map_err(Trouble::Unjudgeable)?;
    let (kind, model, prompt, fields) = match (request, Route::of_path(&p.path)) {
        (Some(v), _) => v,
        (None, Some(Route::Embeddings)) => {
            let req: EmbeddingRequest =
                parse_json(p.body.as_bytes()).map_err(|e| Trouble::Unjudgeable(e.message))?;
            let m = state
                .embedder(&req.model)
                .map_err(|_| Trouble::ModelMissing(req.model.clone()))?;
            let (embedder, inputs) = (m.embedder.clone(), crate::request::embed_inputs(req.input));
            let (vectors, tokens) =
                tokio::task::spawn_blocking(move || embedder.embed_inputs(&inputs))
                    .await
                    .map_err(|e| Trouble::Internal(e.to_string()))??;
            return Ok((embedding_response_hash(&vectors), (tokens as u64, 0)));
        }
        (None, _) => return Err(Trouble::Unjudgeable(format!("unknown route {}", p.path))),
    };
    let chat = state
        .engine(&model)
        .map_err(|_| Trouble::ModelMissing(model.clone()))?;
    // A request that named no seed ran with the one the node drew and recorded: re-execute
    // with that one (never with a fresh draw, which would diverge from any honest node).
    let max = crate::request::default_max_tokens(kind);
    let params =
        crate::request::sampling_params_seeded(&fields, max, p.receipt.receipt.sampling.seed)
            .map_err(|e| Trouble::Unjudgeable(e.message))?;
    let extras = crate::request::Extras::read(kind, &fields, &prompt)
        .map_err(|e| Trouble::Unjudgeable(e.message))?;
    let request = GenerateRequest {
        logprobs: extras.logprobs,
        constraint: extras.engine_constraint(),
        ..GenerateRequest::new(prompt, params)
    };
    let g = chat
        .engine
        .generate_in(request, Lane::Audit)?
        .collect_all()
        .await?;
    let finish = match g.finish_reason {
        sortition_engine::FinishReason::Stop => "stop",
        sortition_engine::FinishReason::Length => "length",
    };
    // What the executor delivered: the echoed prompt, the text, the rendered
    // log-probabilities, as the executor renders them.
    let text = format!("{}{}", extras.echo.as_deref().unwrap_or(""), g.text);
    let commit = extras.logprobs.map(|_| {
        let offset = extras
            .echo
            .as_deref()
            .map_or(0, |e| e.chars().count() as u32);
        let mut r = crate::logprobs::Renderer::new(chat.engine.tokenizer().clone(), offset);
        match kind {
            Kind::Chat => crate::logprobs::Rendered::Chat(r.chat(&g.logprobs)),
            Kind::Text => crate::logprobs::Rendered::Text(r.text(&g.logprobs)),
        }
        .commit()
    });
    let usage = g.usage;
    let delivery = extras.deliver(chat, &text, finish);
    Ok((
        extras.response_hash(
            &delivery.committed_text(),
            &delivery.finish,
            commit.as_deref(),
        ),
        (
            u64::from(usage.prompt_tokens),
            u64::from(usage.completion_tokens),
        ),
    ))
}

/// What teacher-forced scoring concluded.
#[derive(Debug)]
pub enum Scored {
    /// Every claimed token is one the model would produce under the request's parameters.
    Pass,
    /// Some token is not (re-execution confirms before any verdict).
    Fail(String),
    /// Scoring cannot decide (answer missing or not matching the receipt, stop strings,
    /// penalties, a tokenization that does not round-trip).
    Inconclusive(String),
}

/// Checks the claimed answer in one teacher-forced pass, with the request's sampling
/// parameters: token counts, each token against the argmax (greedy) or the seeded draw
/// (sampled; by rank under a policy without the draw check), and the end of generation.
pub async fn score(state: &NodeState, p: &AuditPayload, tol: ScoreTolerance) -> Scored {
    use Scored::Inconclusive;
    let r = &p.receipt.receipt;
    let Some(answer) = &p.answer else {
        return Inconclusive("no answer delivered".into());
    };
    if text_response_hash(&answer.text, &answer.finish_reason) != r.response_hash {
        return Inconclusive("answer does not match the receipt's response hash".into());
    }
    let (kind, model, prompt, fields) = match generation_request(p) {
        Ok(Some(v)) => v,
        Ok(None) => return Inconclusive("not a generation request".into()),
        Err(e) => return Inconclusive(e),
    };
    let max = crate::request::default_max_tokens(kind);
    let params = match crate::request::sampling_params_seeded(&fields, max, r.sampling.seed) {
        Ok(p) => p,
        Err(e) => return Inconclusive(e.message),
    };
    if fields.echo() {
        return Inconclusive("echo: the answer starts with the prompt, not generated".into());
    }
    if !params.stop.is_empty() || params.presence_penalty != 0.0 || params.frequency_penalty != 0.0
    {
        return Inconclusive("stop strings or penalties: scoring does not model them".into());
    }
    let Ok(chat) = state.engine(&model) else {
        return Inconclusive(format!("model {model} not served here"));
    };
    let engine = &chat.engine;
    let prompt_ids = match engine.prompt_tokens(&prompt) {
        Ok(ids) => ids,
        Err(e) => return Inconclusive(e.to_string()),
    };
    if prompt_ids.len() as u64 != r.input_tokens {
        return Scored::Fail(format!(
            "receipt claims {} input tokens, the prompt has {}",
            r.input_tokens,
            prompt_ids.len()
        ));
    }
    let mut claimed = match engine.tokenizer().encode(&answer.text) {
        Ok(ids) => ids,
        Err(e) => return Inconclusive(e.to_string()),
    };
    let stops = engine.tokenizer().stop_ids().to_vec();
    let ended_by_eos = answer.finish_reason == "stop";
    if ended_by_eos {
        let Some(&eos) = stops.first() else {
            return Inconclusive("model has no stop token".into());
        };
        claimed.push(eos);
    } else if answer.finish_reason != "length" {
        return Inconclusive(format!("finish reason {}", answer.finish_reason));
    }
    if claimed.len() as u64 != r.output_tokens {
        // Re-tokenizing decoded text need not give back the generated ids.
        return Inconclusive(format!(
            "{} tokens re-tokenized, receipt claims {}",
            claimed.len(),
            r.output_tokens
        ));
    }
    if answer.finish_reason == "length" && claimed.len() as u64 != u64::from(params.max_tokens) {
        return Inconclusive("length finish below max_tokens (context limit)".into());
    }
    let scores = match engine
        .score_in(prompt_ids, claimed, Some(&params), Lane::Audit)
        .await
    {
        Ok(s) => s,
        Err(e) => return Inconclusive(e.to_string()),
    };
    let greedy = params.temperature == 0.0;
    match sortition_engine::engine::check_scores(&scores, greedy, ended_by_eos, &stops, &tol) {
        Ok(()) => Scored::Pass,
        Err(why) => Scored::Fail(why),
    }
}

/// A chat or text completion payload: endpoint, model, prompt and sampling fields.
type GenerationRequest = (Kind, String, Prompt, sortition_api::SamplingFields);

/// The endpoint, model, prompt and sampling fields of a chat or text completion payload;
/// `None` for other routes.
fn generation_request(p: &AuditPayload) -> Result<Option<GenerationRequest>, String> {
    let body = p.body.as_bytes();
    Ok(Some(match Route::of_path(&p.path) {
        Some(Route::Chat) => {
            let req: ChatCompletionRequest = parse_json(body).map_err(|e| e.message)?;
            let msgs = crate::request::chat_messages(&req.messages, &req.sampling)
                .map_err(|e| e.message)?;
            (Kind::Chat, req.model, Prompt::Chat(msgs), req.sampling)
        }
        Some(Route::Completions) => {
            let req: CompletionRequest = parse_json(body).map_err(|e| e.message)?;
            let prompt = req.single_prompt().map_err(|e| e.message)?;
            (Kind::Text, req.model, Prompt::Text(prompt), req.sampling)
        }
        _ => return Ok(None),
    }))
}
