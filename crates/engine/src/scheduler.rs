//! Continuous batching: one OS thread owns the model; each loop admits queued requests,
//! prefills the new ones and decodes one token for every active sequence in the same forward
//! call, samples each from its own logits row, streams the tokens and retires finished or
//! cancelled sequences.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

use sortition_types::sha256;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{FinishReason, Stats, StreamEvent, TokenScore, Usage};
use crate::error::{EngineError, Result};
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

/// Scheduler limits.
pub struct Options {
    pub max_batch: usize,
    pub queue_capacity: usize,
}

/// Starts the scheduler thread (it waits for one message on `resume` before serving);
/// returns the bounded queue in front of it.
pub fn spawn(
    model: Llama,
    tok: ChatTokenizer,
    opts: Options,
    stats: Arc<Stats>,
    resume: Receiver<()>,
) -> Result<SyncSender<Job>> {
    let (tx, rx) = sync_channel(opts.queue_capacity);
    let mut w = Worker {
        model,
        tok,
        max_batch: opts.max_batch,
        stats,
        active: Vec::new(),
    };
    std::thread::Builder::new()
        .name("sortition-engine".into())
        .spawn(move || {
            if resume.recv().is_ok() {
                w.run(rx)
            }
        })
        .map_err(|e| EngineError::Internal(format!("spawn engine thread: {e}")))?;
    Ok(tx)
}

impl Worker {
    fn run(&mut self, rx: Receiver<Job>) {
        loop {
            if self.active.is_empty() {
                match rx.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while self.active.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.active.is_empty() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            self.retire_cancelled();
            if !self.active.is_empty() {
                self.step();
            }
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
        // Each sequence samples from its own row with its own state: in parallel.
        let mut picks: Vec<(u32, Option<sortition_types::Hash32>)> = vec![(0, None); rows.len()];
        let items: Vec<_> = self
            .active
            .iter_mut()
            .zip(&rows)
            .zip(picks.iter_mut())
            .map(|((s, row), pick)| (&mut s.sampler, s.trace, row, pick))
            .collect();
        self.model
            .pool()
            .for_each(items, |(sampler, trace, row, pick)| {
                let digest = trace.then(|| {
                    let bytes: Vec<u8> =
                        row.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
                    sha256(&bytes)
                });
                *pick = (sampler.sample(row), digest);
            });
        let context = self.model.cfg.context_len;
        let mut keep = Vec::with_capacity(self.active.len());
        for (mut s, (id, logits_digest)) in self.active.drain(..).zip(picks) {
            s.generated.push(id);
            s.progress
                .generated
                .store(s.generated.len() as u32, Ordering::Release);
            let eos = self.tok.stop_ids().contains(&id);
            let (delta, stopped) = s.text.push(&self.tok, &s.generated, eos);
            let finish = if eos || stopped {
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
