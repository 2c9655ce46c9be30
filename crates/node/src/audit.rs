//! Audit duty: following the ledger's events, a node
//! - as **executor** of a sampled receipt, publishes the receipt with its Merkle proof;
//! - as **auditor** or **dispute committee member**, receives the request from its holder
//!   (`POST /sortition/v1/audits/{id}/payload`), re-executes it exactly, and commits then
//!   reveals its verdict before the deadlines.
//!
//! A payload is accepted only if its SHA-256 equals the request hash of the receipt the
//! ledger holds for the audit, so no one can make an auditor judge a different request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sortition_api::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_json};
use sortition_engine::{GenerateRequest, Prompt};
use sortition_ledger::{AuditMethod, Event, TxKind, Verdict, verdict_commitment};
use sortition_ledger_service::{Cursor, LedgerClient};
use sortition_types::{
    AuditId, DisputeId, Hash32, SignedReceipt, embedding_response_hash, sha256, text_response_hash,
};
use tokio::sync::watch;

use crate::claims::receipt_with_proof;
use crate::service::NodeState;

/// What the holder of a request delivers to an auditor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditPayload {
    /// The route the request was sent to (`/v1/chat/completions`, …).
    pub path: String,
    /// The exact request body (UTF-8 JSON) the receipt's `request_hash` commits to.
    pub body: String,
    /// The executor's signed receipt.
    pub receipt: SignedReceipt,
    /// The answer the user received, when the holder kept it: lets a scoring audit check it
    /// in one pass. Checked against the receipt's response hash before use.
    #[serde(default)]
    pub answer: Option<Answer>,
}

/// A generated answer as the user received it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub finish_reason: String,
}

/// Where an audit or dispute this node must judge stands.
#[derive(Default)]
struct Pending {
    /// Payloads delivered for the audit; the one whose receipt the ledger holds is judged.
    payloads: Vec<AuditPayload>,
    /// Disputes this node sits on, about this audit.
    disputes: Vec<DisputeId>,
    /// The audit itself (not only a dispute about it) is this node's to judge.
    auditor: bool,
    started: bool,
}

/// Candidate payloads kept per audit: the genuine one and a few decoys. Not checked against
/// the ledger on arrival (the executor may not have submitted its receipt yet), so a flood of
/// decoys could crowd the genuine one out; the judge's digest check keeps them harmless.
const MAX_PAYLOADS_PER_AUDIT: usize = 16;

/// Audit work in progress, shared between the event follower and the payload route.
#[derive(Default)]
pub struct AuditDesk {
    pending: Mutex<HashMap<AuditId, Pending>>,
}

impl AuditDesk {
    /// Takes a delivered payload; `Err` if it cannot be the audited request.
    pub fn deliver(&self, id: AuditId, p: AuditPayload) -> Result<(), String> {
        if sha256(p.body.as_bytes()) != p.receipt.receipt.request_hash {
            return Err("payload does not hash to the receipt's request_hash".into());
        }
        let mut g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let list = &mut g.entry(id).or_default().payloads;
        if list.iter().any(|q| q.receipt == p.receipt) {
            return Ok(());
        }
        if list.len() >= MAX_PAYLOADS_PER_AUDIT {
            return Err(format!(
                "audit {id} already has {MAX_PAYLOADS_PER_AUDIT} candidate payloads"
            ));
        }
        list.push(p);
        Ok(())
    }

    fn candidates(&self, id: AuditId) -> Vec<AuditPayload> {
        let g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        g.get(&id).map(|p| p.payloads.clone()).unwrap_or_default()
    }
}

/// Follows the ledger's events from the stored cursor until `stop`.
pub async fn follow(state: Arc<NodeState>, client: LedgerClient, mut stop: watch::Receiver<bool>) {
    loop {
        let from = load_cursor(&state);
        let stream = match client.events(from).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "event stream unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        tokio::pin!(stream);
        loop {
            let item = tokio::select! {
                i = stream.next() => i,
                _ = stop.wait_for(|s| *s) => return,
            };
            match item {
                Some(Ok((cursor, event))) => {
                    handle(&state, &client, event).await;
                    if let Err(e) = state
                        .store
                        .set_meta("cursor", cursor.next().to_string().as_bytes())
                    {
                        tracing::error!(error = %e, "could not store the event cursor");
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "event stream error");
                    break;
                }
                None => break,
            }
        }
    }
}

fn load_cursor(state: &NodeState) -> Cursor {
    state
        .store
        .get_meta("cursor")
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(Cursor::START)
}

async fn handle(state: &Arc<NodeState>, client: &LedgerClient, event: Event) {
    match event {
        Event::AuditOpened {
            audit,
            claim,
            stack,
            executor,
            receipt_index,
            auditors,
            ..
        } => {
            // A challenged receipt is on the ledger already; a sampled one is ours to submit.
            if executor == state.id && claim.is_some() {
                submit_receipt(state, client, audit, stack, receipt_index).await;
            }
            // Only we hold a confidential request: re-seal it to the auditors.
            if executor == state.id && crate::confidential::holds(state, stack, receipt_index) {
                tokio::spawn(crate::confidential::deliver_for_audit(
                    state.clone(),
                    client.clone(),
                    audit,
                    stack,
                    receipt_index,
                    auditors.clone(),
                ));
            }
            if auditors.contains(&state.id) && state.adversary == Some(crate::adversary::Mode::Copy)
            {
                spawn_copier(state.clone(), client.clone(), audit);
            } else if auditors.contains(&state.id)
                && state.adversary != Some(crate::adversary::Mode::SkipAudits)
            {
                state
                    .audits
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(audit)
                    .or_default()
                    .auditor = true;
                spawn_judge(state.clone(), client.clone(), audit);
            }
        }
        Event::DisputeOpened {
            audit,
            ref committee,
            ..
        } if state.confidential.is_some() && !committee.contains(&state.id) => {
            if let Ok(a) = client.audit(audit).await
                && a.executor == state.id
                && crate::confidential::holds(state, a.stack, a.receipt_index)
            {
                tokio::spawn(crate::confidential::deliver_for_audit(
                    state.clone(),
                    client.clone(),
                    audit,
                    a.stack,
                    a.receipt_index,
                    committee.clone(),
                ));
            }
        }
        Event::DisputeOpened {
            dispute,
            audit,
            committee,
            ..
        } if committee.contains(&state.id)
            && state.adversary != Some(crate::adversary::Mode::SkipAudits) =>
        {
            state
                .audits
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(audit)
                .or_default()
                .disputes
                .push(dispute);
            spawn_judge(state.clone(), client.clone(), audit);
        }
        _ => {}
    }
}

async fn submit_receipt(
    state: &NodeState,
    client: &LedgerClient,
    audit: AuditId,
    stack: sortition_types::StackId,
    index: u64,
) {
    let receipts = match state.store.receipts(stack) {
        Ok(r) => r,
        Err(e) => return tracing::error!(%audit, error = %e, "cannot read receipts"),
    };
    let Some((receipt, proof)) = receipt_with_proof(&receipts, index) else {
        return tracing::error!(%audit, %stack, index, "sampled receipt not found");
    };
    match client
        .send(
            &state.key,
            TxKind::SubmitReceipt {
                audit,
                receipt,
                proof,
            },
        )
        .await
    {
        Ok(_) => tracing::info!(%audit, "submitted sampled receipt"),
        Err(e) => tracing::warn!(%audit, error = %e, "receipt submission refused"),
    }
}

/// The `copy` adversary's audit duty: wait for another auditor's revealed verdict and vote
/// the same, without re-executing. Its commit can only come after the commit phase.
fn spawn_copier(state: Arc<NodeState>, client: LedgerClient, audit: AuditId) {
    tokio::spawn(async move {
        for _ in 0..1200 {
            if let Ok(a) = client.audit(audit).await {
                if a.outcome.is_some() {
                    return;
                }
                if let Some(v) = a.reveals.values().next() {
                    return vote(&state, &client, Ballot::Audit(audit), *v).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

/// Waits (bounded) for the payload, judges the request, and votes on the audit and on any
/// dispute about it that this node sits on.
fn spawn_judge(state: Arc<NodeState>, client: LedgerClient, audit: AuditId) {
    tokio::spawn(async move {
        // Anyone can post a payload, so only the one whose receipt is the audited one (its
        // digest is on the ledger once the executor submitted it, or from the challenge) is
        // judged: a decoy (an honest request of someone else) cannot clear a cheat.
        let mut payload = None;
        for _ in 0..120 {
            let candidates = state.audits.candidates(audit);
            if !candidates.is_empty()
                && let Ok(a) = client.audit(audit).await
                && let Some((digest, ..)) = a.receipt
            {
                payload = candidates
                    .into_iter()
                    .find(|p| p.receipt.receipt.digest() == digest);
                if payload.is_some() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (is_auditor, disputes) = {
            let mut g = state
                .audits
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let Some(p) = g.get_mut(&audit) else { return };
            let disputes = std::mem::take(&mut p.disputes);
            let auditor = p.auditor && !p.started;
            p.started = true;
            (auditor, disputes)
        };
        let Some(payload) = payload else {
            // Say so rather than stay silent: silence is slashed as a missed deadline, while
            // `Unavailable` closes our part without reward or penalty.
            tracing::warn!(%audit, "no payload delivered for audit; voting unavailable");
            state.metrics.inc("audits_total", "unavailable", 1);
            if is_auditor {
                vote(&state, &client, Ballot::Audit(audit), Verdict::Unavailable).await;
            }
            for d in disputes {
                vote(&state, &client, Ballot::Dispute(d), Verdict::Unavailable).await;
            }
            return;
        };
        let method = match client.model(&payload.receipt.receipt.model).await {
            Ok(m) => m.spec.policy.audit.map(|a| a.method).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(%audit, error = %e, "model policy unavailable; re-executing");
                AuditMethod::Reexecute
            }
        };
        let verdict = judge(&state, &payload, method).await;
        tracing::info!(%audit, ?verdict, "re-executed audited request");
        if is_auditor {
            vote(&state, &client, Ballot::Audit(audit), verdict).await;
        }
        for d in disputes {
            vote(&state, &client, Ballot::Dispute(d), verdict).await;
        }
    });
}

/// Judges a request by the model's audit method. Scoring can only clear a receipt: a failed
/// or inconclusive score falls through to exact re-execution, the authority for a mismatch.
pub async fn judge(state: &NodeState, p: &AuditPayload, method: AuditMethod) -> Verdict {
    if let AuditMethod::Score {
        max_rank,
        logit_slack_milli,
    } = method
    {
        let tolerance = Tolerance {
            max_rank,
            logit_slack: logit_slack_milli as f32 / 1000.0,
        };
        match score(state, p, tolerance).await {
            Scored::Pass => {
                state.metrics.inc("audits_total", "scored_match", 1);
                return Verdict::Match;
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
    let verdict = reexecute_and_compare(state, p).await;
    let label = match verdict {
        Verdict::Match => "reexecuted_match",
        Verdict::Mismatch { .. } => "reexecuted_mismatch",
        Verdict::Unavailable => "unavailable",
    };
    state.metrics.inc("audits_total", label, 1);
    verdict
}

/// Scoring tolerance (see `AuditMethod::Score`).
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub max_rank: u32,
    pub logit_slack: f32,
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

/// Checks the claimed answer in one teacher-forced pass: token counts, each token's rank and
/// logit gap, and the end of generation.
pub async fn score(state: &NodeState, p: &AuditPayload, tol: Tolerance) -> Scored {
    use Scored::Inconclusive;
    let r = &p.receipt.receipt;
    let Some(answer) = &p.answer else {
        return Inconclusive("no answer delivered".into());
    };
    if text_response_hash(&answer.text, &answer.finish_reason) != r.response_hash {
        return Inconclusive("answer does not match the receipt's response hash".into());
    }
    let (model, prompt, fields) = match generation_request(p) {
        Ok(Some(v)) => v,
        Ok(None) => return Inconclusive("not a generation request".into()),
        Err(e) => return Inconclusive(e),
    };
    let params = match crate::routes::sampling_params(&fields, 256) {
        Ok(p) => p,
        Err(e) => return Inconclusive(e.message),
    };
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
    let n = claimed.len();
    let scores = match engine.score(prompt_ids, claimed).await {
        Ok(s) => s,
        Err(e) => return Inconclusive(e.to_string()),
    };
    let greedy = params.temperature == 0.0;
    for (i, t) in scores.iter().enumerate() {
        let last_eos = ended_by_eos && i + 1 == n;
        let ok = if last_eos {
            stops.contains(&t.argmax) || (!greedy && t.rank <= tol.max_rank)
        } else if greedy {
            t.token == t.argmax || t.max_logit - t.logit <= tol.logit_slack
        } else {
            t.rank <= tol.max_rank
        };
        if !ok {
            return Scored::Fail(format!(
                "token {i} ({}) has rank {} and is {:.3} below the top logit",
                t.token,
                t.rank,
                t.max_logit - t.logit
            ));
        }
    }
    Scored::Pass
}

/// The model, prompt and sampling fields of a chat or text completion payload; `None` for
/// other routes.
fn generation_request(
    p: &AuditPayload,
) -> Result<Option<(String, Prompt, sortition_api::SamplingFields)>, String> {
    let body = p.body.as_bytes();
    Ok(Some(match p.path.as_str() {
        "/v1/chat/completions" => {
            let req: ChatCompletionRequest = parse_json(body).map_err(|e| e.message)?;
            let msgs = crate::routes::chat_messages(&req.messages).map_err(|e| e.message)?;
            (req.model, Prompt::Chat(msgs), req.sampling)
        }
        "/v1/completions" => {
            let req: CompletionRequest = parse_json(body).map_err(|e| e.message)?;
            let prompt = req.single_prompt().map_err(|e| e.message)?;
            (req.model, Prompt::Text(prompt), req.sampling)
        }
        _ => return Ok(None),
    }))
}

/// Re-executes the request exactly and compares with the receipt.
async fn reexecute_and_compare(state: &NodeState, p: &AuditPayload) -> Verdict {
    let r = &p.receipt.receipt;
    let (hash, tokens) = match reexecute(state, p).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "re-execution failed");
            return Verdict::Mismatch {
                evidence_hash: sha256(e.as_bytes()),
            };
        }
    };
    if hash == r.response_hash
        && tokens == (r.input_tokens, r.output_tokens)
        && r.node_class == state.class.fingerprint()
    {
        Verdict::Match
    } else {
        Verdict::Mismatch {
            evidence_hash: hash,
        }
    }
}

async fn reexecute(state: &NodeState, p: &AuditPayload) -> Result<(Hash32, (u64, u64)), String> {
    let (model, prompt, fields) = match (generation_request(p)?, p.path.as_str()) {
        (Some(v), _) => v,
        (None, "/v1/embeddings") => {
            let req: EmbeddingRequest = parse_json(p.body.as_bytes()).map_err(|e| e.message)?;
            let m = state.embedder(&req.model).map_err(|e| e.message)?;
            let (embedder, texts) = (m.embedder.clone(), req.input.into_vec());
            let (vectors, tokens) = tokio::task::spawn_blocking(move || embedder.embed(&texts))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            return Ok((embedding_response_hash(&vectors), (tokens as u64, 0)));
        }
        (None, other) => return Err(format!("unknown route {other}")),
    };
    let chat = state.engine(&model).map_err(|e| e.message)?;
    let params = crate::routes::sampling_params(&fields, 256).map_err(|e| e.message)?;
    let stream = chat
        .engine
        .generate(GenerateRequest::new(prompt, params))
        .map_err(|e| e.to_string())?;
    let (finish, usage, _, text) = stream.collect().await.map_err(|e| e.to_string())?;
    let finish = match finish {
        sortition_engine::FinishReason::Stop => "stop",
        sortition_engine::FinishReason::Length => "length",
    };
    Ok((
        text_response_hash(&text, finish),
        (
            u64::from(usage.prompt_tokens),
            u64::from(usage.completion_tokens),
        ),
    ))
}

#[derive(Clone, Copy, Debug)]
enum Ballot {
    Audit(AuditId),
    Dispute(DisputeId),
}

/// Commits, then reveals once the ledger lets it (all committed, or the commit phase over).
async fn vote(state: &NodeState, client: &LedgerClient, ballot: Ballot, verdict: Verdict) {
    let mut salt = [0u8; 32];
    if getrandom::fill(&mut salt).is_err() {
        return tracing::error!("no OS randomness for a verdict salt");
    }
    let salt = Hash32(salt);
    let commitment = verdict_commitment(&verdict, &salt, &state.key.public());
    let commit = match ballot {
        Ballot::Audit(audit) => TxKind::CommitVerdict { audit, commitment },
        Ballot::Dispute(dispute) => TxKind::CommitVote {
            dispute,
            commitment,
        },
    };
    if let Err(e) = client.send(&state.key, commit).await {
        return tracing::warn!(?ballot, error = %e, "commit refused");
    }
    // Reveal once the ledger allows it: every member committed, or the commit phase over.
    // Polling the ledger's state (not retrying the transaction) keeps this key's
    // transaction queue free for other work meanwhile.
    for _ in 0..600 {
        match reveal_open(client, ballot).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::debug!(?ballot, error = %e, "could not read the ballot's phase"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reveal = match ballot {
        Ballot::Audit(audit) => TxKind::RevealVerdict {
            audit,
            verdict,
            salt,
        },
        Ballot::Dispute(dispute) => TxKind::RevealVote {
            dispute,
            verdict,
            salt,
        },
    };
    match client.send(&state.key, reveal).await {
        Ok(_) => tracing::info!(?ballot, ?verdict, "verdict revealed"),
        Err(e) => tracing::warn!(?ballot, error = %e, "reveal refused"),
    }
}

/// Whether the reveal phase of `ballot` has begun, by the ledger's current state.
async fn reveal_open(
    client: &LedgerClient,
    ballot: Ballot,
) -> Result<bool, sortition_ledger_service::ClientError> {
    let height = client.status().await?.height;
    let (committed, members, commit_deadline) = match ballot {
        Ballot::Audit(id) => {
            let a = client.audit(id).await?;
            (a.commits.len(), a.auditors.len(), a.commit_deadline)
        }
        Ballot::Dispute(id) => {
            let d = client.dispute(id).await?;
            (d.commits.len(), d.committee.len(), d.commit_deadline)
        }
    };
    // The next block is the earliest a reveal can land in.
    Ok(committed >= members || height + 1 > commit_deadline)
}
