//! Continuous batching: one OS thread owns the model; each loop admits queued requests and
//! runs one forward call for every active sequence — a chunk of a new sequence's prompt, or
//! the last sampled token of a decoding one — samples each finished row on its own, streams
//! the tokens and retires finished or cancelled sequences.
//!
//! Two bounded lanes lead to the thread ([`Queues`]): user traffic, and audit work (the
//! re-execution and scoring an auditor or dispute member owes the ledger). Audit jobs are
//! admitted first and may use [`AUDIT_SLOTS`] batch slots beyond `max_batch`, so a queue full
//! of user requests can neither refuse nor starve them: an auditor is never made to miss a
//! vote by its own users. Scoring runs as a sequence of the batch like any other (its prompt
//! and the claimed answer fed in chunks), not as a pass that stops the decoding of everyone.
//!
//! Two budgets bound a step and the batch ([`Options`]):
//! - **prefill**: at most `prefill_budget` prompt tokens are fed per step, across sequences
//!   (audit work first), so a long prompt is fed over several steps while the others keep
//!   decoding, instead of stalling them for its whole prefill;
//! - **memory**: a job is admitted only when the attention cache it may grow to (prompt plus
//!   `max_tokens`, within the context) fits in `kv_memory` beside the running sequences'; one
//!   that could never fit is refused at once.
//!
//! None of this changes an output bit: each row is computed from its own sequence's tokens
//! alone (see [`Forward::forward_rows`]) and sampled with its own state, however the batch is
//! composed and however a prompt is split over steps.

mod forward;
mod step;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

pub use forward::{Forward, Rows};

use crate::error::{EngineError, Result};
use crate::events::{Stats, StreamEvent, TokenScore};
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
        /// The sampling parameters to check each token against the seeded draw with.
        draw: Option<Box<SamplingParams>>,
        tx: oneshot::Sender<Result<Vec<TokenScore>>>,
    },
}

impl Job {
    /// Cache positions the job may grow to.
    fn positions(&self, context: usize) -> usize {
        match self {
            Job::Generate { prompt, params, .. } => {
                (prompt.len() + params.max_tokens as usize).min(context)
            }
            // The claimed answer's last token is never fed: nothing reads what follows it.
            Job::Score {
                prompt, claimed, ..
            } => (prompt.len() + claimed.len()).saturating_sub(1),
        }
    }

    /// Ends the job with `e`, unrun.
    fn refuse(self, e: EngineError) {
        match self {
            Job::Generate { tx, progress, .. } => {
                progress.retired.store(true, Ordering::Release);
                let _ = tx.send(StreamEvent::Error(e));
            }
            Job::Score { tx, .. } => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// A generating sequence.
struct Seq<C> {
    cache: C,
    /// Tokens to feed: what is left of the prompt (fed in chunks), then the last sampled
    /// token.
    feed: Vec<u32>,
    /// Cache positions reserved for it at admission.
    positions: usize,
    /// Admitted from the audit lane (its prompt is fed first).
    audit: bool,
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

/// A scoring sequence: a prompt and a claimed answer, teacher-forced; the rows that predict
/// the claimed tokens are kept and scored when the last one is in.
struct Scoring<C> {
    cache: C,
    /// Tokens still to feed.
    feed: Vec<u32>,
    /// Positions fed so far.
    fed: usize,
    /// The first position whose row is kept (the prompt's last).
    first: usize,
    claimed: Vec<u32>,
    draw: Option<Box<SamplingParams>>,
    /// Kept rows, `vocab` wide each.
    rows: Vec<f32>,
    positions: usize,
    tx: oneshot::Sender<Result<Vec<TokenScore>>>,
}

struct Worker<M: Forward> {
    model: M,
    tok: ChatTokenizer,
    max_batch: usize,
    prefill_budget: usize,
    /// Cache positions all running sequences may hold together (`kv_memory` in positions).
    max_positions: usize,
    stats: Arc<Stats>,
    active: Vec<Seq<M::Cache>>,
    scoring: Vec<Scoring<M::Cache>>,
}

/// Scheduler limits.
pub struct Options {
    pub max_batch: usize,
    /// Bound of the user lane.
    pub queue_capacity: usize,
    /// Prompt tokens fed per step, across sequences (at least 1).
    pub prefill_budget: usize,
    /// Bytes of attention cache the running sequences may reserve together; `None`: no
    /// bound beyond the batch size.
    pub kv_memory: Option<usize>,
}

/// Default of [`Options::prefill_budget`]: a step that feeds this many prompt tokens takes
/// about as long as a few decode steps of a full batch on a small model.
pub const DEFAULT_PREFILL_BUDGET: usize = 512;

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
    Job(Job, Lane),
    /// Nothing admissible now (the batch or the memory is full for what is queued, or
    /// nothing is).
    Nothing,
    /// Closed and drained, with nothing running: the thread ends.
    Stop,
}

/// Whether a job fits the memory now.
enum Fit {
    Now,
    /// Once running sequences end.
    Later,
    /// Never: it needs more than the whole budget (this many positions).
    Never(usize),
}

/// Starts the scheduler thread (it waits for one message on `resume` before serving);
/// returns the bounded lanes in front of it.
pub fn spawn<M: Forward>(
    model: M,
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
    let max_positions = match opts.kv_memory {
        Some(bytes) => bytes / model.kv_bytes_per_position().max(1),
        None => usize::MAX,
    };
    let mut w = Worker {
        model,
        tok,
        max_batch: opts.max_batch,
        prefill_budget: opts.prefill_budget.max(1),
        max_positions,
        stats,
        active: Vec::new(),
        scoring: Vec::new(),
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

impl<M: Forward> Worker<M> {
    fn run(&mut self, q: &Shared) {
        loop {
            loop {
                match self.next(q) {
                    Next::Job(job, lane) => self.admit(job, lane),
                    Next::Nothing => break,
                    Next::Stop => return,
                }
            }
            self.retire_cancelled();
            if !self.active.is_empty() || !self.scoring.is_empty() {
                self.step();
            }
        }
    }

    fn running(&self) -> usize {
        self.active.len() + self.scoring.len()
    }

    /// Cache positions the running sequences have reserved.
    fn reserved(&self) -> usize {
        let generating: usize = self.active.iter().map(|s| s.positions).sum();
        generating + self.scoring.iter().map(|s| s.positions).sum::<usize>()
    }

    fn fits(&self, job: &Job) -> Fit {
        let need = job.positions(self.model.context_len());
        if need > self.max_positions {
            Fit::Never(need)
        } else if self.reserved() + need > self.max_positions {
            Fit::Later
        } else {
            Fit::Now
        }
    }

    /// The next job to admit: audit work first (up to `max_batch + AUDIT_SLOTS` sequences),
    /// then user requests (up to `max_batch`), each only when the memory has room for it (an
    /// audit job waiting for memory holds the user lane back too). Waits for one when nothing
    /// runs.
    fn next(&self, q: &Shared) -> Next {
        let mut g = q.lock();
        loop {
            let n = self.running();
            let mut audit_waits = false;
            if n < self.max_batch + AUDIT_SLOTS
                && let Some(job) = g.audit.front()
            {
                match self.fits(job) {
                    Fit::Now => {
                        if let Some(job) = g.audit.pop_front() {
                            return Next::Job(job, Lane::Audit);
                        }
                    }
                    Fit::Later => audit_waits = true,
                    Fit::Never(need) => {
                        if let Some(job) = g.audit.pop_front() {
                            self.refuse(job, need);
                        }
                        continue;
                    }
                }
            }
            if n < self.max_batch
                && !audit_waits
                && let Some(job) = g.user.front()
            {
                match self.fits(job) {
                    Fit::Now => {
                        if let Some(job) = g.user.pop_front() {
                            return Next::Job(job, Lane::User);
                        }
                    }
                    Fit::Later => {}
                    Fit::Never(need) => {
                        if let Some(job) = g.user.pop_front() {
                            self.refuse(job, need);
                        }
                        continue;
                    }
                }
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

    /// Refuses a job whose cache could never fit the memory budget.
    fn refuse(&self, job: Job, positions: usize) {
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        let per = self.model.kv_bytes_per_position();
        job.refuse(EngineError::KvMemory {
            needed: positions.saturating_mul(per),
            budget: self.max_positions.saturating_mul(per),
        });
    }

    fn admit(&mut self, job: Job, lane: Lane) {
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        let positions = job.positions(self.model.context_len());
        match job {
            Job::Score {
                prompt,
                claimed,
                draw,
                tx,
            } => {
                if prompt.is_empty() {
                    let _ = tx.send(Err(EngineError::InvalidParams(
                        "scoring needs a prompt".into(),
                    )));
                    return;
                }
                if claimed.is_empty() {
                    let _ = tx.send(Ok(Vec::new()));
                    return;
                }
                let mut feed = prompt.clone();
                feed.extend_from_slice(&claimed[..claimed.len() - 1]);
                self.scoring.push(Scoring {
                    cache: self.model.new_cache(),
                    feed,
                    fed: 0,
                    first: prompt.len() - 1,
                    rows: Vec::with_capacity(claimed.len() * self.model.vocab()),
                    claimed,
                    draw,
                    positions,
                    tx,
                });
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
                if prompt.is_empty() {
                    progress.retired.store(true, Ordering::Release);
                    let _ = tx.send(StreamEvent::Error(EngineError::InvalidParams(
                        "generation needs a prompt".into(),
                    )));
                    return;
                }
                let seq = Seq {
                    cache: self.model.new_cache(),
                    prompt_len: prompt.len() as u32,
                    feed: prompt,
                    positions,
                    audit: lane == Lane::Audit,
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
        self.scoring.retain(|s| !s.tx.is_closed());
        self.stats.cancelled.fetch_add(n, Ordering::Relaxed);
        self.publish_active();
    }

    fn publish_active(&self) {
        self.stats
            .active
            .store(self.active.len() as u64, Ordering::Relaxed);
    }
}
