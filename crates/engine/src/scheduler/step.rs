//! One step of the batch: which tokens each sequence feeds (prompts in chunks under the
//! prefill budget, audit work first), one forward call for all of them, then sampling,
//! streaming and retiring for the generating sequences whose row came, and scoring for the
//! scoring sequences whose last row came.

use std::sync::atomic::Ordering;

use sortition_types::sha256;

use super::{Forward, Rows, Seq, Worker};
use crate::error::EngineError;
use crate::events::{FinishReason, StreamEvent, TokenScore, Usage};

/// What one sequence took from its logits row.
#[derive(Clone, Default)]
struct Pick {
    id: u32,
    /// The row's digest, when traced.
    logits_digest: Option<sortition_types::Hash32>,
    /// The token's log-probabilities, when asked for.
    logprobs: Option<crate::TokenLogprobs>,
    /// The constraint is complete with this token: the text ends here.
    complete: bool,
    /// Why the sequence's constraint failed, if it did.
    failed: Option<String>,
}

/// How many tokens each sequence feeds this step.
struct Plan {
    /// Per generating sequence (in `active` order).
    generating: Vec<usize>,
    /// Per scoring sequence.
    score: Vec<usize>,
}

impl<M: Forward> Worker<M> {
    /// Splits the prefill budget: a decoding sequence feeds its one token (outside the
    /// budget); prompts are fed in chunks, audit work's first, then in admission order.
    fn plan(&self) -> Plan {
        let mut left = self.prefill_budget;
        let mut generating = vec![0; self.active.len()];
        let mut score = vec![0; self.scoring.len()];
        for (i, s) in self.active.iter().enumerate() {
            if !s.generated.is_empty() {
                generating[i] = s.feed.len();
            }
        }
        let mut take = |want: usize| {
            let n = want.min(left);
            left -= n;
            n
        };
        for (i, s) in self.scoring.iter().enumerate() {
            score[i] = take(s.feed.len());
        }
        for audit in [true, false] {
            for (i, s) in self.active.iter().enumerate() {
                if s.generated.is_empty() && s.audit == audit {
                    generating[i] = take(s.feed.len());
                }
            }
        }
        Plan { generating, score }
    }

    /// One forward call for the planned tokens, then sampling, streaming and scoring.
    pub(super) fn step(&mut self) {
        let plan = self.plan();
        let sampled_rows = plan
            .generating
            .iter()
            .zip(&self.active)
            .filter(|(n, s)| **n > 0 && **n == s.feed.len())
            .count() as u64;
        self.stats
            .max_batch_seen
            .fetch_max(self.running() as u64, Ordering::Relaxed);
        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .decode_rows
            .fetch_add(sampled_rows, Ordering::Relaxed);
        // The planned tokens leave the feeds; a generating sequence gets a row to sample
        // from only when its feed is then empty (its whole prompt is in).
        let gen_feeds: Vec<Vec<u32>> = self
            .active
            .iter_mut()
            .zip(&plan.generating)
            .map(|(s, &n)| s.feed.drain(..n).collect())
            .collect();
        let score_feeds: Vec<Vec<u32>> = self
            .scoring
            .iter_mut()
            .zip(&plan.score)
            .map(|(s, &n)| s.feed.drain(..n).collect())
            .collect();
        let result = {
            let mut batch: Vec<Rows<'_, M::Cache>> = Vec::new();
            for (s, f) in self.active.iter_mut().zip(&gen_feeds) {
                if !f.is_empty() {
                    let logits_from = if s.feed.is_empty() {
                        f.len() - 1
                    } else {
                        f.len()
                    };
                    batch.push(Rows {
                        cache: &mut s.cache,
                        tokens: f,
                        logits_from,
                    });
                }
            }
            for (s, f) in self.scoring.iter_mut().zip(&score_feeds) {
                if !f.is_empty() {
                    let logits_from = s.first.saturating_sub(s.fed).min(f.len());
                    batch.push(Rows {
                        cache: &mut s.cache,
                        tokens: f,
                        logits_from,
                    });
                }
            }
            self.model.forward_rows(&mut batch)
        };
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => return self.fail_all(e),
        };
        let mut rows = rows.into_iter();
        let mut gen_rows: Vec<Option<Vec<f32>>> = Vec::with_capacity(self.active.len());
        for (s, f) in self.active.iter().zip(&gen_feeds) {
            let row = if f.is_empty() { None } else { rows.next() };
            gen_rows.push(row.filter(|_| s.feed.is_empty()));
        }
        for (s, f) in self.scoring.iter_mut().zip(&score_feeds) {
            if !f.is_empty()
                && let Some(r) = rows.next()
            {
                s.rows.extend_from_slice(&r);
                s.fed += f.len();
            }
        }
        self.finish_scores();
        self.sample(gen_rows);
    }

    /// A forward call failed: every running sequence ends with its error.
    fn fail_all(&mut self, e: EngineError) {
        for s in self.active.drain(..) {
            s.progress.retired.store(true, Ordering::Release);
            let _ = s.tx.send(StreamEvent::Error(e.clone()));
        }
        for s in self.scoring.drain(..) {
            let _ = s.tx.send(Err(e.clone()));
        }
        self.publish_active();
    }

    /// Scores the scoring sequences whose every row is in, and retires them.
    fn finish_scores(&mut self) {
        let v = self.model.vocab();
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.scoring)
            .into_iter()
            .partition(|s| s.feed.is_empty());
        self.scoring = running;
        for s in done {
            let mut scores: Vec<TokenScore> = s
                .claimed
                .iter()
                .map(|&token| TokenScore {
                    token,
                    logit: 0.0,
                    rank: 0,
                    max_logit: 0.0,
                    argmax: 0,
                    draw: None,
                })
                .collect();
            // The uniform each position's token was drawn with (one per sampled token).
            let uniforms = s
                .draw
                .as_ref()
                .map(|p| crate::sampling::uniforms(p.seed, scores.len()));
            let draw = s.draw.as_ref();
            // Each position reads only its own row: in parallel.
            let items: Vec<(usize, &mut TokenScore, &[f32])> = scores
                .iter_mut()
                .zip(s.rows.chunks_exact(v))
                .enumerate()
                .map(|(i, (t, row))| (i, t, row))
                .collect();
            self.model.pool().for_each(items, |(i, t, row)| {
                let am = crate::sampling::argmax(row);
                let logit = row[t.token as usize];
                t.logit = logit;
                t.rank = row.iter().filter(|&&x| x > logit).count() as u32;
                t.max_logit = row[am];
                t.argmax = am as u32;
                if let (Some(p), Some(us)) = (draw, &uniforms) {
                    t.draw = Some(crate::sampling::check_draw(row, p, us[i], t.token));
                }
            });
            let _ = s.tx.send(Ok(scores));
        }
    }

    /// Samples every generating sequence that got its row, streams its token, and retires
    /// the finished ones; the others (prompts still being fed) wait for a later step.
    fn sample(&mut self, gen_rows: Vec<Option<Vec<f32>>>) {
        // Each sequence samples from its own row with its own state (and reads its
        // log-probabilities from the same row): in parallel.
        let mut picks: Vec<Option<Pick>> = gen_rows
            .iter()
            .map(|r| r.as_ref().map(|_| Pick::default()))
            .collect();
        let stop_ids = self.tok.stop_ids();
        let items: Vec<_> = self
            .active
            .iter_mut()
            .zip(&gen_rows)
            .zip(picks.iter_mut())
            .filter_map(|((s, row), pick)| {
                let (row, pick) = (row.as_deref()?, pick.as_mut()?);
                let matcher = s.matcher.as_deref_mut();
                Some((&mut s.sampler, s.trace, s.logprobs, matcher, row, pick))
            })
            .collect();
        self.model
            .pool()
            .for_each(items, |(sampler, trace, logprobs, matcher, row, pick)| {
                let digest = trace.then(|| {
                    let bytes: Vec<u8> =
                        row.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
                    sha256(&bytes)
                });
                // A constrained sequence samples from its row with the disallowed tokens at
                // -inf, and feeds the token back to its matcher.
                let drawn = match matcher {
                    None => Ok((sampler.sample(row), false)),
                    Some(m) => crate::constrain::masked(m, row).and_then(|masked| {
                        let id = sampler.sample(&masked);
                        m.consume_token(id).map_err(|e| e.to_string())?;
                        Ok((id, m.is_stopped()))
                    }),
                };
                let (id, complete, failed) = match drawn {
                    Ok((id, complete)) => (id, complete, None),
                    Err(e) => (0, false, Some(e)),
                };
                // Log-probabilities are the model's own (the raw row), constrained or not.
                let lp = logprobs
                    .filter(|_| failed.is_none() && !stop_ids.contains(&id))
                    .map(|top| crate::logprobs::token_logprobs(row, id, top));
                *pick = Pick {
                    id,
                    logits_digest: digest,
                    logprobs: lp,
                    complete,
                    failed,
                };
            });
        let mut keep = Vec::with_capacity(self.active.len());
        for (s, pick) in std::mem::take(&mut self.active).into_iter().zip(picks) {
            match pick {
                None => keep.push(s),
                Some(pick) => {
                    if let Some(s) = self.take_token(s, pick) {
                        keep.push(s);
                    }
                }
            }
        }
        self.active = keep;
        self.publish_active();
    }

    /// Streams the token a sequence sampled; returns the sequence unless it finished.
    fn take_token(&self, mut s: Seq<M::Cache>, pick: Pick) -> Option<Seq<M::Cache>> {
        let Pick {
            id,
            logits_digest,
            logprobs,
            complete,
            failed,
        } = pick;
        if let Some(why) = failed {
            s.progress.retired.store(true, Ordering::Release);
            let e = EngineError::Internal(format!("constrained decoding: {why}"));
            let _ = s.tx.send(StreamEvent::Error(e));
            return None;
        }
        s.generated.push(id);
        s.progress
            .generated
            .store(s.generated.len() as u32, Ordering::Release);
        let eos = self.tok.stop_ids().contains(&id);
        let (delta, stopped) = s.text.push(&self.tok, &s.generated, eos);
        let finish = if eos || stopped || complete {
            Some(FinishReason::Stop)
        } else if s.generated.len() as u32 >= s.max_tokens
            || self.model.cached(&s.cache) >= self.model.context_len()
        {
            Some(FinishReason::Length)
        } else {
            None
        };
        let delta = match finish {
            Some(_) if !stopped => delta + &s.text.flush(),
            _ => delta,
        };
        let _ = s.tx.send(StreamEvent::Token {
            id,
            text: delta,
            logits_digest,
            logprobs,
        });
        let Some(finish_reason) = finish else {
            s.feed = vec![id];
            return Some(s);
        };
        // Out of the batch and counted before the client can see the end.
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        let usage = Usage {
            prompt_tokens: s.prompt_len,
            completion_tokens: s.generated.len() as u32,
        };
        let _ = s.tx.send(StreamEvent::Done {
            finish_reason,
            usage,
            tokens: std::mem::take(&mut s.generated),
            text: s.text.final_text(),
        });
        s.progress.retired.store(true, Ordering::Release);
        None
    }
}
