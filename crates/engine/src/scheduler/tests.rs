//! The scheduler with the real engine on a tiny model (lanes, bit-identical outputs), and with
//! a fake model (chunked prefill, memory admission, scoring in the batch), whose rows are a
//! function of each sequence's tokens only, so that any token lost, duplicated or reordered
//! by the scheduler changes what is generated.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::engine::{Engine, EngineConfig, GenerateRequest, Prompt};

/// One tiny model file per test process, written once (tests run in parallel).
fn model() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("sortition-scheduler-tests-{}", std::process::id()));
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
    let score = e.score_in(ids, reference.0.clone(), None, Lane::Audit);
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

/// A model whose logits row at a position is a hash of the sequence's tokens up to it, with
/// the special tokens far below the rest (so greedy decoding runs to `max_tokens`). Records
/// the token count of each sequence in each call.
struct Fake {
    vocab: usize,
    /// Time each call takes.
    delay: std::time::Duration,
    pool: sortition_kernels::Pool,
    calls: Arc<Mutex<Vec<Vec<usize>>>>,
}

#[derive(Default)]
struct FakeCache(Vec<u32>);

fn fake_row(prefix: &[u32], vocab: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in prefix {
        h = (h ^ u64::from(t)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..vocab as u64)
        .map(|t| {
            if t < 3 {
                -100.0
            } else {
                let x =
                    (h ^ t.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0x2545_f491_4f6c_dd1d);
                (x >> 40) as f32 / (1u64 << 24) as f32
            }
        })
        .collect()
}

impl Forward for Fake {
    type Cache = FakeCache;
    fn new_cache(&self) -> FakeCache {
        FakeCache::default()
    }
    fn cached(&self, c: &FakeCache) -> usize {
        c.0.len()
    }
    fn forward_rows(&self, batch: &mut [Rows<'_, FakeCache>]) -> Result<Vec<Vec<f32>>> {
        std::thread::sleep(self.delay);
        self.calls
            .lock()
            .unwrap()
            .push(batch.iter().map(|r| r.tokens.len()).collect());
        Ok(batch
            .iter_mut()
            .map(|r| {
                let start = r.cache.0.len();
                r.cache.0.extend_from_slice(r.tokens);
                (start + r.logits_from..start + r.tokens.len())
                    .flat_map(|p| fake_row(&r.cache.0[..=p], self.vocab))
                    .collect()
            })
            .collect())
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn context_len(&self) -> usize {
        4096
    }
    fn kv_bytes_per_position(&self) -> usize {
        1
    }
    fn pool(&self) -> &sortition_kernels::Pool {
        &self.pool
    }
}

/// What greedy decoding of the fake model gives, computed without the scheduler.
fn fake_greedy(prompt: &[u32], n: usize) -> Vec<u32> {
    let vocab = crate::testutil::vocab_size();
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let next = crate::sampling::argmax(&fake_row(&seq, vocab)) as u32;
        seq.push(next);
    }
    seq.split_off(prompt.len())
}

/// A scheduler on the fake model, started; and the record of its forward calls.
fn fake_scheduler(
    prefill_budget: usize,
    kv_memory: Option<usize>,
    delay: std::time::Duration,
) -> (Queues, Arc<Mutex<Vec<Vec<usize>>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake {
        delay,
        vocab: crate::testutil::vocab_size(),
        pool: sortition_kernels::Pool::new(1, sortition_kernels::Kernel::Scalar).unwrap(),
        calls: calls.clone(),
    };
    let (resume, resumed) = std::sync::mpsc::channel();
    let q = spawn(
        fake,
        crate::testutil::tiny_tokenizer().unwrap(),
        Options {
            max_batch: 8,
            queue_capacity: 64,
            prefill_budget,
            kv_memory,
        },
        Arc::new(Stats::default()),
        resumed,
    )
    .unwrap();
    // Queued before the thread starts, so every test's jobs are admitted together.
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let _ = resume.send(());
    });
    (q, calls)
}

fn gen_job(prompt: Vec<u32>, n: u32) -> (Job, mpsc::UnboundedReceiver<StreamEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job::Generate {
        prompt,
        params: SamplingParams::greedy(n),
        trace: false,
        logprobs: None,
        matcher: None,
        tx,
        progress: Arc::new(Progress::default()),
    };
    (job, rx)
}

async fn generated(mut rx: mpsc::UnboundedReceiver<StreamEvent>) -> Result<Vec<u32>> {
    while let Some(ev) = rx.recv().await {
        match ev {
            StreamEvent::Done { tokens, .. } => return Ok(tokens),
            StreamEvent::Error(e) => return Err(e),
            StreamEvent::Token { .. } => {}
        }
    }
    panic!("stream ended without Done");
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 3 + (seed * 31 + i * 7) % 250)
        .collect()
}

/// Prompts fed whole or one to five tokens per step give the same tokens, which are those of
/// greedy decoding computed without the scheduler: no prompt token is lost, repeated or
/// reordered, and a sequence samples only once its whole prompt is in.
#[tokio::test]
async fn chunked_prefill_changes_no_token() {
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(i, 1 + i as usize * 9)).collect();
    let expected: Vec<Vec<u32>> = prompts.iter().map(|p| fake_greedy(p, 12)).collect();
    for budget in [4096, 5, 1] {
        let (q, calls) = fake_scheduler(budget, None, Duration::ZERO);
        let rxs: Vec<_> = prompts
            .iter()
            .map(|p| {
                let (job, rx) = gen_job(p.clone(), 12);
                q.try_send(job, Lane::User).ok().unwrap();
                rx
            })
            .collect();
        for (rx, want) in rxs.into_iter().zip(&expected) {
            assert_eq!(&generated(rx).await.unwrap(), want, "budget {budget}");
        }
        // No call fed more prompt tokens than the budget (decoding rows feed one each).
        for call in calls.lock().unwrap().iter() {
            let prefill: usize = call.iter().filter(|&&n| n > 1).sum();
            assert!(prefill <= budget, "budget {budget}: {call:?}");
        }
    }
}

/// While a long prompt is fed, a sequence already decoding gets a token at every step:
/// the long prefill is spread over steps instead of stalling it.
#[tokio::test]
async fn a_long_prompt_does_not_stall_decoding() {
    let (q, calls) = fake_scheduler(4, None, Duration::ZERO);
    let (short, short_rx) = gen_job(prompt(1, 3), 60);
    let (long, long_rx) = gen_job(prompt(2, 200), 4);
    q.try_send(short, Lane::User).ok().unwrap();
    q.try_send(long, Lane::User).ok().unwrap();
    assert_eq!(
        generated(short_rx).await.unwrap(),
        fake_greedy(&prompt(1, 3), 60)
    );
    assert_eq!(
        generated(long_rx).await.unwrap(),
        fake_greedy(&prompt(2, 200), 4)
    );
    let calls = calls.lock().unwrap();
    // 200 prompt tokens at most 4 per step (the first step shares its budget with the short
    // prompt): about 50 steps, in each of which the short sequence decoded.
    let both = calls.iter().filter(|c| c.len() == 2).count();
    assert!(both >= 49, "{both} steps with both sequences: {calls:?}");
    assert!(calls.iter().all(|c| c.iter().all(|&n| n <= 4)), "{calls:?}");
}

/// With room for 100 cache positions, two requests of 60 run one after the other, and one
/// of 150 is refused at once with the memory it needs.
#[tokio::test]
async fn memory_admission_waits_for_room_and_refuses_what_never_fits() {
    let (q, calls) = fake_scheduler(4096, Some(100), Duration::ZERO);
    let (a, a_rx) = gen_job(prompt(1, 10), 50);
    let (b, b_rx) = gen_job(prompt(2, 10), 50);
    let (c, c_rx) = gen_job(prompt(3, 50), 100);
    q.try_send(a, Lane::User).ok().unwrap();
    q.try_send(b, Lane::User).ok().unwrap();
    q.try_send(c, Lane::User).ok().unwrap();
    assert_eq!(
        generated(a_rx).await.unwrap(),
        fake_greedy(&prompt(1, 10), 50)
    );
    assert_eq!(
        generated(b_rx).await.unwrap(),
        fake_greedy(&prompt(2, 10), 50)
    );
    match generated(c_rx).await {
        Err(EngineError::KvMemory { needed, budget }) => assert_eq!((needed, budget), (150, 100)),
        other => panic!("{other:?}"),
    }
    let calls = calls.lock().unwrap();
    assert!(
        calls.iter().all(|c| c.len() == 1),
        "a and b never ran together: {calls:?}"
    );
    assert_eq!(calls.len(), 100, "50 steps each");
}

/// A scoring job runs in the batch in chunks, beside a decoding sequence, and scores every
/// claimed token from the row that predicts it.
#[tokio::test]
async fn scoring_runs_in_chunks_beside_decoding() {
    let vocab = crate::testutil::vocab_size();
    let (q, calls) = fake_scheduler(3, None, Duration::from_millis(1));
    let p = prompt(5, 20);
    let claimed = fake_greedy(&p, 10);
    // Decodes until the test drops its stream (after the score), however slow the machine.
    let (decoding, mut gen_rx) = gen_job(prompt(6, 2), 4_000);
    q.try_send(decoding, Lane::User).ok().unwrap();
    // The score arrives while the user's sequence decodes (audit prompts go first, so one
    // queued with it would be fed before the user's prompt).
    assert!(matches!(
        gen_rx.recv().await,
        Some(StreamEvent::Token { .. })
    ));
    let (tx, score_rx) = oneshot::channel();
    let score = Job::Score {
        prompt: p.clone(),
        claimed: claimed.clone(),
        draw: None,
        tx,
    };
    q.try_send(score, Lane::Audit).ok().unwrap();
    let scores = score_rx.await.unwrap().unwrap();
    assert_eq!(scores.len(), claimed.len());
    let mut prefix = p.clone();
    for (s, &t) in scores.iter().zip(&claimed) {
        let row = fake_row(&prefix, vocab);
        assert_eq!((s.token, s.argmax, s.rank), (t, t, 0));
        assert_eq!(s.logit.to_bits(), row[t as usize].to_bits());
        prefix.push(t);
    }
    drop(gen_rx);
    // 29 tokens (the prompt and all but the last claimed) at most 3 per step, each step
    // shared with the decoding sequence.
    let calls = calls.lock().unwrap();
    assert!(calls.iter().all(|c| c.iter().all(|&n| n <= 3)), "{calls:?}");
    let shared: Vec<_> = calls.iter().filter(|c| c.len() == 2).collect();
    assert_eq!(shared.len(), 10, "{calls:?}");
    assert!(shared.iter().all(|c| c[0] == 1), "{calls:?}");
}
