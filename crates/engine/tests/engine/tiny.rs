//! Determinism, scheduling, sampling, scoring and error tests on tiny random-weight models.

use sortition_engine::testutil::vocab_size;
use sortition_engine::{
    ChatMessage, Engine, EngineConfig, EngineError, FinishReason, GenerateRequest, Lane, Prompt,
    SamplingParams,
};
use sortition_types::Hash32;

use crate::harness::*;

const OTHERS: [&str; 3] = [
    "a much longer prompt about the weather in the mountains and the sea, with numbers 12345",
    "hi",
    "in the beginning there was the token, and the token was ünïcödé ✓",
];

#[tokio::test]
async fn alone_equals_inside_a_batch_bit_for_bit() {
    let params = SamplingParams::greedy(40);
    let alone = run(tiny_engine(1)
        .generate(req("the cat sat on", params.clone()))
        .unwrap())
    .await;

    // Paused start: all four are admitted together and decoded in the same steps.
    let engine = Engine::load(EngineConfig {
        start_paused: true,
        ..tiny_config(1)
    })
    .unwrap();
    let mut streams = vec![];
    for (i, p) in OTHERS.iter().enumerate() {
        streams.push(
            engine
                .generate(req(p, SamplingParams::greedy(10 + 20 * i as u32)))
                .unwrap(),
        );
    }
    let target = engine
        .generate(req("the cat sat on", params.clone()))
        .unwrap();
    engine.resume();
    let batched = run(target).await;
    let mut lens = vec![batched.ids.len() as u64];
    for s in streams {
        lens.push(run(s).await.ids.len() as u64);
    }
    let stats = engine.stats();
    assert_eq!(stats.max_batch_seen, 4);
    // All four start in the first step: one step per token of the longest, one row per token.
    assert_eq!(stats.decode_steps, *lens.iter().max().unwrap());
    assert_eq!(stats.decode_rows, lens.iter().sum::<u64>());
    assert_eq!(alone.ids, batched.ids);
    assert_eq!(
        alone.logits, batched.logits,
        "per-step logits must be bit-identical"
    );
    assert!(alone.logits.iter().all(Option::is_some));
    assert_eq!(
        alone.logprobs, batched.logprobs,
        "log-probabilities must be bit-identical"
    );
    assert!(alone.logprobs.iter().any(Option::is_some));

    // Joining mid-flight (others already decoding) gives the same again.
    let late_others: Vec<_> = OTHERS
        .iter()
        .map(|p| engine.generate(req(p, SamplingParams::greedy(60))).unwrap())
        .collect();
    let late = run(engine.generate(req("the cat sat on", params)).unwrap()).await;
    assert_eq!(alone.logits, late.logits);
    assert_eq!(alone.logprobs, late.logprobs);
    drop(late_others);
}

#[tokio::test]
async fn eight_concurrent_equal_serial() {
    let engine = tiny_engine(2);
    let prompts: Vec<String> = (0..8)
        .map(|i| format!("request number {i} {}", "x".repeat(i * 3)))
        .collect();
    let mut serial = vec![];
    for (i, p) in prompts.iter().enumerate() {
        serial.push(run(engine.generate(req(p, sampled(i as u64, 24))).unwrap()).await);
    }
    let streams: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| engine.generate(req(p, sampled(i as u64, 24))).unwrap())
        .collect();
    let handles: Vec<_> = streams.into_iter().map(|s| tokio::spawn(run(s))).collect();
    for (h, s) in handles.into_iter().zip(serial) {
        assert_eq!(h.await.unwrap(), s);
    }
}

/// Child side of the thread-count / process test: prints the ids of a fixed request.
#[tokio::test]
async fn child_tiny_generate() {
    if !is_child() {
        return;
    }
    let out = run(tiny_engine(3)
        .generate(req("deterministic?", sampled(5, 32)))
        .unwrap())
    .await;
    let digests: Vec<String> = out
        .logits
        .iter()
        .map(|d| d.unwrap_or(Hash32::ZERO).to_hex())
        .collect();
    println!(
        "RESULT {:?} {} {:?}",
        out.ids,
        digests.join(","),
        out.logprobs
    );
}

#[tokio::test]
async fn one_and_two_threads_and_processes_agree() {
    if is_child() {
        return;
    }
    let here = run(tiny_engine(3)
        .generate(req("deterministic?", sampled(5, 32)))
        .unwrap())
    .await;
    let digests: Vec<String> = here
        .logits
        .iter()
        .map(|d| d.unwrap_or(Hash32::ZERO).to_hex())
        .collect();
    let expected = format!("{:?} {} {:?}", here.ids, digests.join(","), here.logprobs);
    assert_eq!(child("tiny::child_tiny_generate", 1, &[]), expected);
    assert_eq!(child("tiny::child_tiny_generate", 2, &[]), expected);
}

#[tokio::test]
async fn seeds_matter_and_repeat() {
    let e = tiny_engine(4);
    let a = run(e.generate(req("seeded", sampled(1, 32))).unwrap()).await;
    let b = run(e.generate(req("seeded", sampled(1, 32))).unwrap()).await;
    let c = run(e.generate(req("seeded", sampled(2, 32))).unwrap()).await;
    assert_eq!(a, b);
    assert_ne!(a.ids, c.ids);
}

#[tokio::test]
async fn streamed_text_concatenates_to_final_text_and_usage_counts() {
    let e = tiny_engine(5);
    let out = run(e.generate(req("bytes", sampled(9, 64))).unwrap()).await;
    assert_eq!(out.texts.concat(), out.text);
    assert_eq!(out.tokens, out.ids);
    assert_eq!(out.usage.completion_tokens as usize, out.ids.len());
    assert_eq!(
        out.usage.prompt_tokens as usize,
        e.tokenizer().encode("bytes").unwrap().len()
    );
    if out.finish == FinishReason::Length {
        assert_eq!(out.ids.len(), 64);
    } else {
        assert!(e.tokenizer().stop_ids().contains(out.ids.last().unwrap()));
    }
}

#[tokio::test]
async fn stop_string_ends_generation_and_is_excluded() {
    let e = tiny_engine(6);
    let free = run(e
        .generate(req("stop test", SamplingParams::greedy(40)))
        .unwrap())
    .await;
    let chars: Vec<char> = free.text.chars().filter(|c| *c != '\u{FFFD}').collect();
    assert!(
        chars.len() > 8,
        "random model produced too little text: {:?}",
        free.text
    );
    let stop: String = chars[4..6].iter().collect();
    let p = SamplingParams {
        stop: vec![stop.clone()],
        ..SamplingParams::greedy(40)
    };
    let out = run(e.generate(req("stop test", p)).unwrap()).await;
    let cut = free.text.find(&stop).unwrap();
    assert_eq!(out.finish, FinishReason::Stop);
    assert_eq!(out.text, free.text[..cut]);
    assert_eq!(out.texts.concat(), out.text);
    assert!(free.ids.starts_with(&out.ids));
}

#[tokio::test]
async fn score_ranks_greedy_tokens_first_and_catches_tampering() {
    let e = tiny_engine(7);
    let prompt = e.tokenizer().encode("score me").unwrap();
    let out = run(e
        .generate(GenerateRequest {
            prompt: Prompt::Tokens(prompt.clone()),
            ..req("", SamplingParams::greedy(24))
        })
        .unwrap())
    .await;
    let scores = e.score(prompt.clone(), out.ids.clone()).await.unwrap();
    assert_eq!(scores.len(), out.ids.len());
    for (s, id) in scores.iter().zip(&out.ids) {
        assert_eq!((s.rank, s.argmax, s.logit), (0, *id, s.max_logit));
    }
    let mut tampered = out.ids.clone();
    tampered[5] = (tampered[5] + 1) % vocab_size() as u32;
    let scores = e.score(prompt, tampered).await.unwrap();
    assert!(scores[5].rank > 0);
    assert!(scores[..5].iter().all(|s| s.rank == 0));
}

/// A sampled answer scored with the parameters it was generated under: every token is the
/// one the seeded draw picks from the scoring row (teacher-forced rows equal decode rows bit
/// for bit, so the uniform falls inside the claimed token's interval), while the same answer
/// checked under another seed, or a token swapped, misses.
#[tokio::test]
async fn sampled_answers_score_on_the_seeded_draw() {
    let e = tiny_engine(7);
    let prompt = e.tokenizer().encode("draw me").unwrap();
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: 41,
        ..SamplingParams::greedy(32)
    };
    let out = run(e
        .generate(GenerateRequest {
            prompt: Prompt::Tokens(prompt.clone()),
            ..req("", params.clone())
        })
        .unwrap())
    .await;
    let score = |claimed: Vec<u32>, p: SamplingParams| {
        let (e, prompt) = (e.clone(), prompt.clone());
        async move {
            e.score_in(prompt, claimed, Some(&p), Lane::Audit)
                .await
                .unwrap()
        }
    };
    let scores = score(out.ids.clone(), params.clone()).await;
    assert!(
        scores.iter().any(|s| s.rank > 0),
        "a sampled answer leaves the argmax"
    );
    for (s, id) in scores.iter().zip(&out.ids) {
        let d = s.draw.unwrap();
        assert_eq!((d.drawn, d.miss), (*id, 0.0));
    }
    let other_seed = score(
        out.ids.clone(),
        SamplingParams {
            seed: 42,
            ..params.clone()
        },
    )
    .await;
    assert!(other_seed.iter().any(|s| s.draw.unwrap().miss > 0.0));
    let mut swapped = out.ids.clone();
    swapped[3] = scores[3].argmax + u32::from(scores[3].argmax == out.ids[3]);
    let swapped = score(swapped, params.clone()).await;
    assert!(swapped[3].draw.unwrap().miss > 0.0);
    assert!(swapped[..3].iter().all(|s| s.draw.unwrap().miss == 0.0));
    // Penalties change the row the sampler draws from: refused, not checked wrongly.
    let penalized = SamplingParams {
        presence_penalty: 0.5,
        ..params
    };
    assert!(matches!(
        e.score_in(
            prompt.clone(),
            out.ids.clone(),
            Some(&penalized),
            Lane::Audit
        )
        .await,
        Err(EngineError::InvalidParams(_))
    ));
}

#[tokio::test]
async fn dropping_the_stream_cancels_and_bills_generated_tokens() {
    let e = tiny_engine(8);
    let mut s = e
        .generate(req(
            "cancel me",
            SamplingParams {
                stop: vec![],
                ..SamplingParams::greedy(200)
            },
        ))
        .unwrap();
    let usage = s.usage_handle();
    assert!(s.next().await.is_some());
    drop(s);
    // The scheduler retires cancelled sequences before each step: once a later request
    // completes, the dropped one is gone.
    run(e.generate(req("after", SamplingParams::greedy(2))).unwrap()).await;
    assert!(usage.is_retired());
    let n = usage.usage().completion_tokens;
    assert!((1..200).contains(&n), "billed {n}");
    assert_eq!(e.stats().cancelled, 1);
}

#[tokio::test]
async fn full_queue_answers_overloaded_immediately() {
    let cfg = EngineConfig {
        start_paused: true,
        queue_capacity: 2,
        max_batch: 1,
        ..tiny_config(9)
    };
    let e = Engine::load(cfg).unwrap();
    let a = e.generate(req("one", SamplingParams::greedy(3))).unwrap();
    let b = e.generate(req("two", SamplingParams::greedy(3))).unwrap();
    assert_eq!(
        e.generate(req("three", SamplingParams::greedy(3))).err(),
        Some(EngineError::Overloaded)
    );
    let waiting = e.stats();
    assert_eq!(
        (waiting.queued, waiting.active, waiting.decode_steps),
        (2, 0, 0)
    );
    e.resume();
    let (a, b) = (run(a).await, run(b).await);
    let done = e.stats();
    assert_eq!((done.queued, done.active, done.completed), (0, 0, 2));
    // One sequence at a time: one row per step, one step per token.
    let tokens = (a.ids.len() + b.ids.len()) as u64;
    assert_eq!((done.decode_steps, done.decode_rows), (tokens, tokens));
}

#[tokio::test]
async fn typed_errors() {
    let e = tiny_engine(10);
    let long = Prompt::Tokens(vec![5; 300]);
    assert!(matches!(
        e.generate(GenerateRequest::new(long, SamplingParams::greedy(4)))
            .err(),
        Some(EngineError::PromptTooLong {
            tokens: 300,
            context: 256
        })
    ));
    let bad = SamplingParams {
        temperature: -1.0,
        ..Default::default()
    };
    assert!(matches!(
        e.generate(req("x", bad)).err(),
        Some(EngineError::InvalidParams(_))
    ));
    let oov = Prompt::Tokens(vec![1, 99_999]);
    assert!(matches!(
        e.generate(GenerateRequest::new(oov, SamplingParams::greedy(4)))
            .err(),
        Some(EngineError::InvalidParams(_))
    ));
    assert!(matches!(
        e.score(vec![1], vec![99_999]).await,
        Err(EngineError::InvalidParams(_))
    ));
    assert!(matches!(
        e.score(vec![1; 200], vec![1; 100]).await,
        Err(EngineError::PromptTooLong { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"GGUF but not really").unwrap();
    assert!(matches!(
        Engine::load(EngineConfig::new(&garbage, "g")).err(),
        Some(EngineError::CorruptWeights(_))
    ));
    let wrong = EngineConfig {
        expected_digest: Some(Hash32([7; 32])),
        ..tiny_config(10)
    };
    assert!(matches!(
        Engine::load(wrong).err(),
        Some(EngineError::Model(
            sortition_models::ModelError::DigestMismatch { .. }
        ))
    ));
}

#[tokio::test]
async fn tiny_tokenizer_round_trips_and_renders_chatml() {
    let e = tiny_engine(11);
    let t = e.tokenizer();
    for s in [
        "hello world",
        "  spaces\tand\nnewlines ",
        "ünïcödé ✓ 日本語 🙂",
        "123 4567.89",
        "the other",
    ] {
        assert_eq!(t.decode(&t.encode(s).unwrap(), false).unwrap(), s);
    }
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
    assert_eq!((ids[0], *ids.last().unwrap()), (1, 2));
    let chat = t
        .apply_chat_template(&[ChatMessage::new("user", "hi")])
        .unwrap();
    assert_eq!(
        chat,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let info = e.info();
    assert_eq!(info.node_class.model_digest, info.digest);
    assert_eq!(info.node_class.device, "cpu");
    assert_eq!(info.quantization, "q8_0(from q4_1)");
}

/// The scoring pass (`Llama::forward_from`: output layer only from a given position) gives
/// the same logits, bit for bit, as a full teacher-forced forward and as token-by-token
/// decoding, for both weight formats and one or two threads.
#[test]
fn scoring_rows_equal_full_prefill_and_decode_rows_bit_for_bit() {
    use sortition_engine::WeightFormat;
    use sortition_engine::llama::{Llama, Segment};
    let path = tiny_model(12);
    let tokens: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % vocab_size() as u32).collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for format in [WeightFormat::Q8_0, WeightFormat::Shipped] {
        let mut reference: Option<Vec<u32>> = None;
        for threads in [1, 2] {
            let kernel = sortition_engine::Kernel::detect();
            let (model, _) = Llama::load(&path, format, threads, kernel).unwrap();
            let v = model.cfg.vocab;
            let from = 13;
            // Full teacher-forced forward, every position.
            let mut cache = model.new_cache();
            let full = model
                .forward(&mut [Segment {
                    cache: &mut cache,
                    tokens: &tokens,
                    all_logits: true,
                }])
                .unwrap()
                .remove(0);
            assert_eq!(full.len(), tokens.len() * v);
            // Scoring: logits from `from` on only.
            let mut cache = model.new_cache();
            let scored = model.forward_from(&mut cache, &tokens, from).unwrap();
            assert_eq!(cache.len(), tokens.len());
            assert_eq!(
                bits(&scored),
                bits(&full[from * v..]),
                "{format:?} {threads}"
            );
            // Decoding: a prefill up to `from`, then one token per step.
            let mut cache = model.new_cache();
            let mut decoded = model
                .forward(&mut [Segment {
                    cache: &mut cache,
                    tokens: &tokens[..=from],
                    all_logits: false,
                }])
                .unwrap()
                .remove(0);
            for t in &tokens[from + 1..] {
                let row = model
                    .forward(&mut [Segment {
                        cache: &mut cache,
                        tokens: std::slice::from_ref(t),
                        all_logits: false,
                    }])
                    .unwrap()
                    .remove(0);
                decoded.extend(row);
            }
            assert_eq!(bits(&decoded), bits(&scored), "{format:?} {threads}");
            match &reference {
                None => reference = Some(bits(&scored)),
                Some(r) => assert_eq!(r, &bits(&scored), "{format:?}: thread counts differ"),
            }
        }
    }
}

/// Greedy tokens are their position's most likely: each token's log-probability is its
/// list's first; the end-of-sequence token carries none.
#[tokio::test]
async fn greedy_tokens_head_their_logprobs() {
    let out = run(tiny_engine(5)
        .generate(req("which is likeliest", SamplingParams::greedy(24)))
        .unwrap())
    .await;
    for (id, lp) in out.ids.iter().zip(&out.logprobs) {
        let Some((bits, top)) = lp else { continue };
        assert_eq!(top.len(), 5);
        assert_eq!(top[0], (*id, *bits));
        assert!(f32::from_bits(*bits) <= 0.0);
    }
    assert!(out.logprobs.iter().any(Option::is_some));
}

fn constrained(prompt: &str, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        constraint: Some(sortition_engine::Constraint::JsonSchema(
            serde_json::json!({
                "type": "object",
                "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
                "required": ["ok", "n"],
                "additionalProperties": false
            }),
        )),
        ..req(prompt, params)
    }
}

/// Issue 21: a JSON schema constrains even a random-weight model to a valid document, and a
/// constrained generation is bit-identical alone and inside a batch of unconstrained and
/// constrained others, greedy and sampled.
#[tokio::test]
async fn constrained_generation_is_valid_and_batch_invariant() {
    for params in [SamplingParams::greedy(40), sampled(7, 40)] {
        let alone = run(tiny_engine(6)
            .generate(constrained("json please", params.clone()))
            .unwrap())
        .await;
        assert_eq!(alone.finish, FinishReason::Stop, "{alone:?}");
        let doc: serde_json::Value =
            serde_json::from_str(&alone.text).unwrap_or_else(|e| panic!("{e}: {:?}", alone.text));
        assert!(doc["ok"].is_boolean() && [1, 2, 3].contains(&doc["n"].as_i64().unwrap()));
        assert_eq!(doc.as_object().unwrap().len(), 2);

        let engine = Engine::load(EngineConfig {
            start_paused: true,
            ..tiny_config(6)
        })
        .unwrap();
        let others: Vec<_> = OTHERS
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let r = match i % 2 {
                    0 => req(p, sampled(i as u64, 30)),
                    _ => constrained(p, sampled(i as u64, 30)),
                };
                engine.generate(r).unwrap()
            })
            .collect();
        let target = engine.generate(constrained("json please", params)).unwrap();
        engine.resume();
        let batched = run(target).await;
        assert_eq!(
            alone, batched,
            "constrained output must not depend on the batch"
        );
        for s in others {
            run(s).await;
        }
    }
}

/// Schemas the constraint library cannot enforce are refused before anything is queued.
#[tokio::test]
async fn unenforceable_schemas_are_refused() {
    let e = tiny_engine(8);
    for schema in [
        serde_json::json!(true),
        serde_json::json!({"type": "object", "x-guidance": {}}),
        serde_json::json!({"type": "string", "format": "no-such-format"}),
        serde_json::json!({"$ref": "#/definitions/missing"}),
    ] {
        let r = GenerateRequest {
            constraint: Some(sortition_engine::Constraint::JsonSchema(schema.clone())),
            ..req("x", SamplingParams::greedy(4))
        };
        assert!(
            matches!(e.generate(r), Err(EngineError::InvalidConstraint(_))),
            "{schema}"
        );
    }
}

/// A prompt fed whole or a few tokens per step (several at once, so chunks of different
/// sequences share steps) gives the same tokens, logits and log-probabilities bit for bit,
/// and scoring fed in chunks gives the same scores.
#[tokio::test]
async fn prompts_fed_in_chunks_equal_whole_bit_for_bit() {
    let prompts: Vec<String> = (0..4)
        .map(|i| {
            format!(
                "chunk test {i}: {}",
                "the cat sat on the mat ".repeat(1 + i * 3)
            )
        })
        .collect();
    let mut results = Vec::new();
    for budget in [4096, 7, 1] {
        let engine = Engine::load(EngineConfig {
            prefill_budget: budget,
            ..tiny_config(4)
        })
        .unwrap();
        let streams: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| engine.generate(req(p, sampled(i as u64, 16))).unwrap())
            .collect();
        let mut outs = Vec::new();
        for s in streams {
            outs.push(run(s).await);
        }
        let prompt = engine.tokenizer().encode(&prompts[3]).unwrap();
        let scores = engine.score(prompt, outs[3].ids.clone()).await.unwrap();
        let score_bits: Vec<(u32, u32, u32)> = scores
            .iter()
            .map(|s| (s.logit.to_bits(), s.rank, s.max_logit.to_bits()))
            .collect();
        results.push((budget, outs, score_bits));
    }
    let (_, whole, whole_scores) = &results[0];
    assert!(whole.iter().all(|o| o.logits.iter().all(Option::is_some)));
    for (budget, outs, scores) in &results[1..] {
        assert_eq!(outs, whole, "prefill budget {budget}");
        assert_eq!(scores, whole_scores, "scores, prefill budget {budget}");
    }
}
