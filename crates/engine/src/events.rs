//! What a generation yields and the engine counts, shared by the engine's API and its
//! scheduler.

use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use sortition_types::Hash32;

use crate::error::EngineError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

/// Token counts, as counted by the model's own tokenizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What a generation stream yields.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// A generated token and the text it completes (may be empty while a UTF-8 character or a
    /// possible stop string is incomplete). `logits_digest` only with `trace_logits`;
    /// `logprobs` only when the request asked for them, and never on the end-of-sequence
    /// token (which is not part of the text).
    Token {
        id: u32,
        text: String,
        logits_digest: Option<Hash32>,
        logprobs: Option<crate::TokenLogprobs>,
    },
    /// The last event of a successful generation. `text` excludes any stop string.
    Done {
        finish_reason: FinishReason,
        usage: Usage,
        tokens: Vec<u32>,
        text: String,
    },
    Error(EngineError),
}

/// Teacher-forced check of one claimed token.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenScore {
    pub token: u32,
    pub logit: f32,
    /// Number of vocabulary entries with a strictly larger logit (0 = the argmax).
    pub rank: u32,
    pub max_logit: f32,
    pub argmax: u32,
}

/// The scoring audit's rule for one answer's teacher-forced scores: each token must be one the
/// model would produce under the request's parameters. Greedy: the argmax, or within
/// `logit_slack` of the top logit (kernel rounding between prefill and decode); sampled:
/// within `max_rank` of the argmax. A final end-of-sequence token (`ended_by_eos`) must be
/// where the model would stop: a stop token is its argmax, or (sampled) within `max_rank`.
/// `Err` names the first token that fails.
pub fn check_scores(
    scores: &[TokenScore],
    greedy: bool,
    ended_by_eos: bool,
    stops: &[u32],
    max_rank: u32,
    logit_slack: f32,
) -> std::result::Result<(), String> {
    let n = scores.len();
    for (i, t) in scores.iter().enumerate() {
        let ok = if ended_by_eos && i + 1 == n {
            stops.contains(&t.argmax) || (!greedy && t.rank <= max_rank)
        } else if greedy {
            t.token == t.argmax || t.max_logit - t.logit <= logit_slack
        } else {
            t.rank <= max_rank
        };
        if !ok {
            return Err(format!(
                "token {i} ({}) has rank {} and is {:.3} below the top logit",
                t.token,
                t.rank,
                t.max_logit - t.logit
            ));
        }
    }
    Ok(())
}

/// Engine-wide counters.
#[derive(Default)]
pub(crate) struct Stats {
    pub cancelled: AtomicU64,
    pub completed: AtomicU64,
    /// Largest number of sequences run in one decode step.
    pub max_batch_seen: AtomicU64,
    /// Jobs submitted and not yet taken by the scheduler.
    pub queued: AtomicU64,
    /// Sequences in the running batch.
    pub active: AtomicU64,
    /// Forward steps run for the batch.
    pub decode_steps: AtomicU64,
    /// Sequences summed over those steps.
    pub decode_rows: AtomicU64,
}
