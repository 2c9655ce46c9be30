//! What a generation yields and the engine counts, shared by the engine's API and its
//! scheduler.

use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use sortition_types::Hash32;

use crate::error::EngineError;
use crate::sampling::Draw;

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
    /// The token against the seeded draw, when the answer was scored with the sampling
    /// parameters it was generated under (temperature > 0).
    #[serde(default)]
    pub draw: Option<Draw>,
}

/// The scoring audit's tolerance (the model policy's `AuditMethod::Score`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreTolerance {
    /// Sampled answers without a draw check: every token within this rank of the argmax.
    pub max_rank: u32,
    /// Greedy answers: a token that is not the argmax must be within this many logits of it
    /// (kernel rounding between prefill and decode).
    pub logit_slack: f32,
    /// Sampled answers: each token must be the one the seeded draw picks from the auditor's
    /// row, or the draw's uniform must fall within this much probability of its interval.
    /// `None`: sampled tokens are checked by `max_rank` only.
    pub draw_slack: Option<f32>,
}

/// The scoring audit's rule for one answer's teacher-forced scores: each token must be one the
/// model would produce under the request's parameters. Greedy: the argmax, or within
/// `logit_slack` of the top logit; sampled: the token the seeded draw picks (within
/// `draw_slack`), or without a draw check within `max_rank` of the argmax. A final
/// end-of-sequence token (`ended_by_eos`) must be where the model would stop: a stop token is
/// its argmax, the one drawn, or (sampled) within the tolerance. `Err` names the first token
/// that fails.
pub fn check_scores(
    scores: &[TokenScore],
    greedy: bool,
    ended_by_eos: bool,
    stops: &[u32],
    tol: &ScoreTolerance,
) -> std::result::Result<(), String> {
    let n = scores.len();
    for (i, t) in scores.iter().enumerate() {
        let stop_here = ended_by_eos && i + 1 == n;
        let ok = if greedy {
            if stop_here {
                stops.contains(&t.argmax)
            } else {
                t.token == t.argmax || t.max_logit - t.logit <= tol.logit_slack
            }
        } else if let Some(slack) = tol.draw_slack {
            let Some(d) = t.draw else {
                return Err(format!("token {i} was not scored against the seeded draw"));
            };
            (stop_here && stops.contains(&d.drawn)) || d.miss <= slack
        } else {
            (stop_here && stops.contains(&t.argmax)) || t.rank <= tol.max_rank
        };
        if !ok {
            let drawn = t.draw.map_or(String::new(), |d| {
                format!("; the seeded draw picks {} ({:.2e} away)", d.drawn, d.miss)
            });
            return Err(format!(
                "token {i} ({}) has rank {} and is {:.3} below the top logit{drawn}",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token(token: u32, rank: u32, gap: f32, draw: Option<(u32, f32)>) -> TokenScore {
        TokenScore {
            token,
            logit: -gap,
            rank,
            max_logit: 0.0,
            argmax: if rank == 0 { token } else { 9 },
            draw: draw.map(|(drawn, miss)| Draw { drawn, miss }),
        }
    }

    const TOL: ScoreTolerance = ScoreTolerance {
        max_rank: 100,
        logit_slack: 0.25,
        draw_slack: Some(1e-3),
    };

    #[test]
    fn sampled_tokens_are_checked_by_the_draw_when_the_policy_has_one() {
        let stops = [2u32];
        // Rank 500 is no reason to fail a token the seeded draw picks...
        let drawn = [
            token(5, 500, 3.0, Some((5, 0.0))),
            token(6, 0, 0.0, Some((6, 0.0))),
        ];
        assert!(check_scores(&drawn, false, false, &stops, &TOL).is_ok());
        // ... nor rank 0 a reason to pass one it does not.
        let missed = [token(5, 0, 0.0, Some((7, 0.01)))];
        let why = check_scores(&missed, false, false, &stops, &TOL).unwrap_err();
        assert!(why.contains("seeded draw picks 7"), "{why}");
        // Within the slack: rounding.
        let near = [token(5, 3, 0.1, Some((7, 1e-4)))];
        assert!(check_scores(&near, false, false, &stops, &TOL).is_ok());
        // A token scored without the draw fails closed under a draw policy...
        let unchecked = [token(5, 0, 0.0, None)];
        assert!(check_scores(&unchecked, false, false, &stops, &TOL).is_err());
        // ... and is checked by rank under a policy without one.
        let by_rank = ScoreTolerance {
            draw_slack: None,
            ..TOL
        };
        assert!(check_scores(&unchecked, false, false, &stops, &by_rank).is_ok());
        assert!(check_scores(&drawn, false, false, &stops, &by_rank).is_err());
        // The end of a sampled answer: any stop token the draw picks ends it.
        let end = [
            token(6, 0, 0.0, Some((6, 0.0))),
            token(2, 40, 2.0, Some((3, 0.2))),
        ];
        assert!(check_scores(&end, false, true, &[3, 2], &TOL).is_ok());
        assert!(check_scores(&end, false, true, &stops, &TOL).is_err());
        // Greedy answers ignore the draw: the argmax, or within the logit slack.
        let greedy = [token(4, 0, 0.0, None), token(8, 1, 0.2, None)];
        assert!(check_scores(&greedy, true, false, &stops, &TOL).is_ok());
        let far = [token(8, 1, 0.5, None)];
        assert!(check_scores(&far, true, false, &stops, &TOL).is_err());
    }
}
