//! Continuous batching: one OS thread owns the model; each loop admits queued requests,
//! prefills the new ones and decodes one token for every active sequence in the same forward
//! call, samples each from its own logits row, streams the tokens and retires finished or
//! cancelled sequences.
//!
//! Two bounded lanes lead to the thread ([`Queues`]): user traffic, and audit work (the
//! re-execution and scoring an auditor or dispute member owes the ledger). Audit jobs are
//! admitted first and may use [`AUDIT_SLOTS`] batch slots beyond `max_batch`, so a queue full
//! of user requests can neither refuse nor starve them: an auditor is never made to miss a
//! vote by its own users. Which sequences share a batch does not change any output (each row
//! is computed and sampled on its own), so the lanes change latencies only, never results.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sortition_types::sha256;
use tokio::sync::{mpsc, oneshot};

use crate::error::{EngineError, Result};
use crate::events::{FinishReason, Stats, StreamEvent, TokenScore, Usage};
use crate::llama::{KvCache, Llama, Segment};
use crate::sampling::{Sampler, SamplingParams};
use crate::text::TextTracker;
use crate::tokenizer::ChatTokenizer;

/// Shared between a sequence and its stream: progress that outlives the stream.
#[derive(Default)]
pub struct Progress {
    generated: AtomicU32,
    retired: AtomicBool,
}

impl Progress {
    pub fn generated(&self) -> u32 {
        self.generated.load(Ordering::Acquire)
    }
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// A message to the scheduler thread.
pub enum Job {
    Generate {
        prompt: Vec<u32>,
        params: SamplingParams,
        trace: bool,
        /// Alternatives per token when log-probabilities are asked for.
        logprobs: Option<u8>,
        /// The constraint's matcher (structured outputs), when the text is constrained.
        matcher: Option<Box<llguidance::Matcher>>,
        tx: mpsc::UnboundedSender<StreamEvent>,
        progress: Arc<Progress>,
    },
    Score {
        prompt: Vec<u32>,
        claimed: Vec<u32>,
        tx: oneshot::Sender<Result<Vec<TokenScore>>>,
    },
}

struct Seq {
    cache: KvCache,
    /// Tokens to feed at the next step: the prompt first, then the last sampled token.
    feed: Vec<u32>,
    sampler: Sampler,
    max_tokens: u32,
    prompt_len: u32,
    generated: Vec<u32>,
    text: TextTracker,
    trace: bool,
    /// Alternatives per token when log-probabilities are asked for.
    logprobs: Option<u8>,
    /// The constraint's matcher: masks each row before sampling, takes each token after.
    matcher: Option<Box<llguidance::Matcher>>,
    tx: mpsc::UnboundedSender<StreamEvent>,
    progress: Arc<Progress>,
}

struct Worker {
    model: Llama,
    tok: ChatTokenizer,
    max_batch: usize,
    stats: Arc<Stats>,
    active: Vec<Seq>,
}

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

/// Scheduler limits.
pub struct Options {
    pub max_batch: usize,
    /// Bound of the user lane.
    pub queue_capacity: usize,
}

/// Bound of the audit lane: audits a node judges at once are few (one per audit or dispute
/// it was drawn for).
pub const AUDIT_QUEUE_CAPACITY: usize = 32;
/// Batch slots only audit sequences may take, beyond `max_batch`.
pub const AUDIT_SLOTS: usize = 2;

/// Which lane a job enters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lane {
    /// Requests of the node's users, bounded by `queue_capacity`.
    #[default]
    User,
    /// Audit and dispute work (re-execution, scoring): admitted first, with reserved slots.
    Audit,
}

#[derive(Default)]
struct Lanes {
    user: VecDeque<Job>,
    audit: VecDeque<Job>,
    /// The last handle is gone: serve what is queued, then stop.
    closed: bool,
    /// The thread has stopped (or never started): nothing queued will run.
    stopped: bool,
}

struct Shared {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    user_capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bounded lanes in front of the scheduler thread. Dropping it lets the thread finish
/// what is queued and stop.
pub struct Queues {
    shared: Arc<Shared>,
}

impl Queues {
    /// Queues `job` in `lane`; `Full` when that lane is at its bound (the other lane's load
    /// does not count), `Disconnected` when the thread has stopped.
    pub fn try_send(&self, job: Job, lane: Lane) -> std::result::Result<(), TrySendError<Job>> {
        let mut g = self.shared.lock();
        if g.stopped {
            return Err(TrySendError::Disconnected(job));
        }
        let (q, cap) = match lane {
            Lane::User => (&mut g.user, self.shared.user_capacity),
            Lane::Audit => (&mut g.audit, AUDIT_QUEUE_CAPACITY),
        };
        if q.len() >= cap {
            return Err(TrySendError::Full(job));
        }
        q.push_back(job);
        drop(g);
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
    }
}

/// Marks the lanes stopped when the thread ends, however it ends; queued jobs are dropped,
/// which their waiters see as the engine stopping.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.stopped = true;
        g.user.clear();
        g.audit.clear();
    }
}

/// What the thread takes next.
enum Next {
    Job(Job),
    /// Nothing admissible now (the batch is full for what is queued, or nothing is).
    Nothing,
    /// Closed and drained, with nothing running: the thread ends.
    Stop,
}

/// Starts the scheduler thread (it waits for one message on `resume` before serving);
/// returns the bounded lanes in front of it.
pub fn spawn(
    model: Llama,
    tok: ChatTokenizer,
    opts: Options,
    stats: Arc<Stats>,
    resume: Receiver<()>,
) -> Result<Queues> {
    let shared = Arc::new(Shared {
        lanes: Mutex::new(Lanes::default()),
        ready: Condvar::new(),
        user_capacity: opts.queue_capacity,
    });
    let mut w = Worker {
        model,
        tok,
        max_batch: opts.max_batch,
        stats,
        active: Vec::new(),
    };
    let theirs = shared.clone();
    std::thread::Builder::new()
        .name("sortition-engine".into())
        .spawn(move || {
            let _stopped = StopGuard(theirs.clone());
            if resume.recv().is_ok() {
                w.run(&theirs)
            }
        })
        .map_err(|e| EngineError::Internal(format!("spawn engine thread: {e}")))?;
    Ok(Queues { shared })
}

impl Worker {
    fn run(&mut self, q: &Shared) {
        loop {
            loop {
                match self.next(q) {
                    Next::Job(job) => self.admit(job),
                    Next::Nothing => break,
                    Next::Stop => return,
                }
            }
            self.retire_cancelled();
            if !self.active.is_empty() {
                self.step();
            }
        }
    }

    /// The next job to admit: audit work first (up to `max_batch + AUDIT_SLOTS` sequences),
    /// then user requests (up to `max_batch`). Waits for one when nothing runs.
    fn next(&self, q: &Shared) -> Next {
        let mut g = q.lock();
        loop {
            let n = self.active.len();
            if n < self.max_batch + AUDIT_SLOTS
                && let Some(job) = g.audit.pop_front()
            {
                return Next::Job(job);
            }
            if n < self.max_batch
                && let Some(job) = g.user.pop_front()
            {
                return Next::Job(job);
            }
            if n > 0 {
                return Next::Nothing;
            }
            if g.closed && g.user.is_empty() && g.audit.is_empty() {
                return Next::Stop;
            }
            g = q.ready.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn admit(&mut self, job: Job) {
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        match job {
            Job::Score {
                prompt,
                claimed,
                tx,
            } => {
                let _ = tx.send(self.score(&prompt, &claimed));
            }
            Job::Generate {
                prompt,
                params,
                trace,
                logprobs,
                matcher,
                tx,
                progress,
            } => {
                let seq = Seq {
                    cache: self.model.new_cache(),
                    prompt_len: prompt.len() as u32,
                    feed: prompt,
                    max_tokens: params.max_tokens,
                    text: TextTracker::new(params.stop.clone()),
                    sampler: Sampler::new(params),
                    generated: Vec::new(),
                    trace,
                    logprobs,
                    matcher,
                    tx,
                    progress,
                };
                self.active.push(seq);
                self.publish_active();
            }
        }
    }

    fn retire_cancelled(&mut self) {
        let before = self.active.len();
        self.active.retain(|s| {
            let gone = s.tx.is_closed();
            if gone {
                s.progress.retired.store(true, Ordering::Release);
            }
            !gone
        });
        let n = (before - self.active.len()) as u64;
        self.stats.cancelled.fetch_add(n, Ordering::Relaxed);
        self.publish_active();
    }

    fn publish_active(&self) {
        self.stats
            .active
            .store(self.active.len() as u64, Ordering::Relaxed);
    }

    fn score(&self, prompt: &[u32], claimed: &[u32]) -> Result<Vec<TokenScore>> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidParams("scoring needs a prompt".into()));
        }
        let mut cache = self.model.new_cache();
        let mut all: Vec<u32> = prompt.to_vec();
        all.extend_from_slice(claimed);
        // Logits only where a claimed token is predicted: from the prompt's last position.
        let first = prompt.len() - 1;
        let logits = self.model.forward_from(&mut cache, &all, first)?;
        let v = self.model.cfg.vocab;
        let mut scores: Vec<TokenScore> = claimed
            .iter()
            .map(|&token| TokenScore {
                token,
                logit: 0.0,
                rank: 0,
                max_logit: 0.0,
                argmax: 0,
            })
            .collect();
        // Each position reads only its own row: in parallel.
        let items: Vec<(&mut TokenScore, &[f32])> =
            scores.iter_mut().zip(logits.chunks_exact(v)).collect();
        self.model.pool().for_each(items, |(s, row)| {
            let am = crate::sampling::argmax(row);
            let logit = row[s.token as usize];
            s.logit = logit;
            s.rank = row.iter().filter(|&&x| x > logit).count() as u32;
            s.max_logit = row[am];
            s.argmax = am as u32;
        });
        Ok(scores)
    }

    /// One forward call for all active sequences, then sampling and streaming.
    fn step(&mut self) {
        let n = self.active.len() as u64;
        self.stats.max_batch_seen.fetch_max(n, Ordering::Relaxed);
        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.stats.decode_rows.fetch_add(n, Ordering::Relaxed);
        let feeds: Vec<Vec<u32>> = self
            .active
            .iter_mut()
            .map(|s| std::mem::take(&mut s.feed))
            .collect();
        let result = {
            let mut segs: Vec<Segment<'_>> = self
                .active
                .iter_mut()
                .zip(feeds.iter())
                .map(|(s, f)| Segment {
                    cache: &mut s.cache,
                    tokens: f,
                    all_logits: false,
                })
                .collect();
            self.model.forward(&mut segs)
        };
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                for s in self.active.drain(..) {
                    s.progress.retired.store(true, Ordering::Release);
                    let _ = s.tx.send(StreamEvent::Error(e.clone()));
                }
                self.publish_active();
                return;
            }
        };
        // Each sequence samples from its own row with its own state (and reads its
        // log-probabilities from the same row): in parallel.
        let mut picks: Vec<Pick> = vec![Pick::default(); rows.len()];
        let stop_ids = self.tok.stop_ids();
        let items: Vec<_> = self
            .active
            .iter_mut()
            .zip(&rows)
            .zip(picks.iter_mut())
            .map(|((s, row), pick)| {
                let matcher = s.matcher.as_deref_mut();
                (&mut s.sampler, s.trace, s.logprobs, matcher, row, pick)
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
        let context = self.model.cfg.context_len;
        let mut keep = Vec::with_capacity(self.active.len());
        for (mut s, pick) in self.active.drain(..).zip(picks) {
            let Pick {
                id,
                logits_digest,
                logprobs,
                complete,
                failed,
            } = pick;
            if let Some(why) = failed {
                self.stats.active.fetch_sub(1, Ordering::Relaxed);
                s.progress.retired.store(true, Ordering::Release);
                let e = EngineError::Internal(format!("constrained decoding: {why}"));
                let _ = s.tx.send(StreamEvent::Error(e));
                continue;
            }
            s.generated.push(id);
            s.progress
                .generated
                .store(s.generated.len() as u32, Ordering::Release);
            let eos = self.tok.stop_ids().contains(&id);
            let (delta, stopped) = s.text.push(&self.tok, &s.generated, eos);
            let finish = if eos || stopped || complete {
                Some(FinishReason::Stop)
            } else if s.generated.len() as u32 >= s.max_tokens || s.cache.len() >= context {
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
            match finish {
                Some(finish_reason) => {
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
                }
                None => {
                    s.feed = vec![id];
                    keep.push(s);
                }
            }
        }
        self.active = keep;
        self.publish_active();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig, GenerateRequest, Prompt};

    /// One tiny model file per test process, written once (tests run in parallel).
    fn model() -> std::path::PathBuf {
        static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        PATH.get_or_init(|| {
            let dir = std::env::temp_dir()
                .join(format!("sortition-scheduler-tests-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            crate::testutil::write_tiny_llama(&dir, 3).unwrap()
        })
        .clone()
    }

    fn engine(queue_capacity: usize, max_batch: usize) -> Engine {
        let path = model();
        Engine::load(EngineConfig {
            queue_capacity,
            max_batch,
            start_paused: true,
            ..EngineConfig::new(path, "tiny-3")
        })
        .unwrap()
    }

    fn req(prompt: &str, max_tokens: u32) -> GenerateRequest {
        GenerateRequest {
            prompt: Prompt::Text(prompt.into()),
            params: SamplingParams::greedy(max_tokens),
            trace_logits: true,
            logprobs: None,
            constraint: None,
        }
    }

    async fn tokens_and_logits(
        s: crate::engine::GenerationStream,
    ) -> (Vec<u32>, Vec<Option<sortition_types::Hash32>>) {
        let mut s = s;
        let (mut ids, mut logits) = (vec![], vec![]);
        while let Some(ev) = s.next().await {
            match ev {
                StreamEvent::Token {
                    id, logits_digest, ..
                } => {
                    ids.push(id);
                    logits.push(logits_digest);
                }
                StreamEvent::Done { .. } => return (ids, logits),
                StreamEvent::Error(e) => panic!("generation failed: {e}"),
            }
        }
        panic!("stream ended without Done");
    }

    /// User traffic fills the bounded queue (a further user request is refused
    /// `Overloaded`), yet audit work (a generation and a score) is accepted and completes, and
    /// its output is bit-identical to the same request run alone.
    #[tokio::test]
    async fn audit_work_is_admitted_when_user_traffic_fills_the_queue() {
        let alone = engine(4, 1);
        alone.resume();
        let reference =
            tokens_and_logits(alone.generate(req("the audited request", 24)).unwrap()).await;

        let e = engine(2, 1);
        let users: Vec<_> = (0..2)
            .map(|i| e.generate(req(&format!("user {i} asks"), 40)).unwrap())
            .collect();
        assert!(matches!(
            e.generate(req("one more user", 8)),
            Err(EngineError::Overloaded)
        ));
        // The audit lane is not the user lane: a score and a generation are both taken.
        let audit = e
            .generate_in(req("the audited request", 24), Lane::Audit)
            .unwrap();
        let ids = e
            .prompt_tokens(&Prompt::Text("the audited request".into()))
            .unwrap();
        let score = e.score_in(ids, reference.0.clone(), Lane::Audit);
        e.resume();
        let (audited, scores) = tokio::join!(tokens_and_logits(audit), score);
        assert_eq!(
            audited, reference,
            "the lane must not change a bit of the output"
        );
        let scores = scores.unwrap();
        assert!(
            scores
                .iter()
                .zip(&reference.0)
                .all(|(s, t)| s.token == *t && s.argmax == *t)
        );
        for u in users {
            tokens_and_logits(u).await;
        }
        // Audit work may take reserved slots beyond max_batch (1), never more.
        assert!(e.stats().max_batch_seen <= (1 + AUDIT_SLOTS) as u64);
        assert_eq!(e.stats().queued, 0);
    }

    /// The audit lane is bounded too: past its capacity it refuses, without touching the
    /// user lane.
    #[tokio::test]
    async fn the_audit_lane_is_bounded() {
        let e = engine(1, 1);
        let held: Vec<_> = (0..AUDIT_QUEUE_CAPACITY)
            .map(|_| e.generate_in(req("a", 2), Lane::Audit).unwrap())
            .collect();
        assert!(matches!(
            e.generate_in(req("a", 2), Lane::Audit),
            Err(EngineError::Overloaded)
        ));
        let user = e.generate(req("u", 2)).unwrap();
        e.resume();
        for s in held {
            tokens_and_logits(s).await;
        }
        tokens_and_logits(user).await;
    }
}
