//! Issue 21: what OpenAI clients get from the node's routes. Streams whose every chunk but
//! OpenAI's own usage chunk has `choices[0]`, with the receipt on the last event; fresh seeds
//! and unique ids for requests that name no seed, recorded where auditors read them; a model
//! sent to the wrong endpoint named as such.

use serde_json::{Value, json};
use sortition_ledger::AuditMethod;
use sortition_types::{SignedReceipt, text_response_hash};

use crate::audit::AuditPayload;
use crate::judge::{Judgement, judge};
use crate::testkit::{Fixture, MODEL, chat_body};

const CHAT: &str = "/v1/chat/completions";
const TEXT: &str = "/v1/completions";

/// The data events of an SSE body, `[DONE]` excluded (asserted last).
fn events(raw: &str) -> Vec<Value> {
    let data: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{raw}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn receipt_in(v: &Value) -> SignedReceipt {
    serde_json::from_value(v["sortition"]["receipt"].clone()).unwrap()
}

async fn stream(f: &Fixture, path: &str, body: Value) -> Vec<Value> {
    let resp = f.post(path, &body.to_string()).await;
    assert_eq!(resp.status(), 200);
    events(&resp.text().await.unwrap())
}

/// The text and finish reason a stream delivered, indexing `choices[0]` on every chunk as the
/// common OpenAI SDK loop does (which raised IndexError on the receipt's empty-choices chunk).
fn sdk_loop(events: &[Value], chat: bool) -> (String, String) {
    let mut text = String::new();
    let mut finish = String::new();
    for e in events {
        let c = e["choices"]
            .get(0)
            .unwrap_or_else(|| panic!("a chunk without choices[0]: {e}"));
        let piece = if chat {
            &c["delta"]["content"]
        } else {
            &c["text"]
        };
        text.push_str(piece.as_str().unwrap_or_default());
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish)
}

/// Without `stream_options.include_usage` no chunk has empty `choices`: the receipt rides on
/// the finish chunk (the last one), and commits to the streamed text and finish reason, the
/// same as the unstreamed answer's receipt. Chat and text completions alike.
#[tokio::test]
async fn streams_have_choices_on_every_chunk_and_the_receipt_on_the_finish_chunk() {
    let f = Fixture::start(8, 4).await;
    for (path, chat) in [(CHAT, true), (TEXT, false)] {
        let mut body = if chat {
            serde_json::from_str::<Value>(&chat_body("stream it", 6, true)).unwrap()
        } else {
            json!({"model": MODEL, "prompt": "stream it", "max_tokens": 6, "temperature": 0,
                "stream": true})
        };
        let ev = stream(&f, path, body.clone()).await;
        let (text, finish) = sdk_loop(&ev, chat);
        let last = ev.last().unwrap();
        assert_eq!(
            last["choices"][0]["finish_reason"],
            finish.as_str(),
            "{last}"
        );
        assert!(last.get("usage").is_none(), "usage only when asked: {last}");
        assert!(
            ev[..ev.len() - 1]
                .iter()
                .all(|e| e.get("sortition").is_none()),
            "the receipt is on the last event only"
        );
        let r = receipt_in(last);
        assert_eq!(r.receipt.response_hash, text_response_hash(&text, &finish));
        // The same request unstreamed: the same text, the same commitment.
        body["stream"] = json!(false);
        let resp = f.post(path, &body.to_string()).await;
        let whole: Value = resp.json().await.unwrap();
        assert_eq!(
            receipt_in(&whole).receipt.response_hash,
            r.receipt.response_hash
        );
    }
}

/// With `include_usage`, OpenAI's usage chunk (empty `choices`) follows the finish chunk and,
/// being last, carries the receipt; every other chunk has `choices[0]`.
#[tokio::test]
async fn the_usage_chunk_comes_only_when_asked_and_last() {
    let f = Fixture::start(8, 4).await;
    let mut body: Value = serde_json::from_str(&chat_body("usage please", 5, true)).unwrap();
    body["stream_options"] = json!({"include_usage": true});
    let ev = stream(&f, CHAT, body).await;
    let (usage_chunk, chunks) = ev.split_last().unwrap();
    let (text, finish) = sdk_loop(chunks, true);
    assert_eq!(usage_chunk["choices"], json!([]), "{usage_chunk}");
    let r = receipt_in(usage_chunk);
    assert_eq!(r.receipt.response_hash, text_response_hash(&text, &finish));
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"].as_u64(),
        Some(r.receipt.output_tokens)
    );
    assert!(chunks.iter().all(|e| e.get("sortition").is_none()));
}

fn sampled(seed: Option<u64>) -> String {
    let mut v = json!({"model": MODEL, "messages": [{"role": "user", "content": "tell me"}],
        "max_tokens": 16, "temperature": 1.0});
    if let Some(s) = seed {
        v["seed"] = json!(s);
    }
    v.to_string()
}

async fn answer(f: &Fixture, body: &str) -> (String, String, SignedReceipt) {
    let resp = f.post(CHAT, body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string(),
        receipt_in(&v),
    )
}

/// No `seed`: each call draws its own, records it in the receipt, and gets its own id, so the
/// same request at temperature 1 is an independent draw (before: seed 0, the same text and
/// the same id every time). A named seed is used and recorded as before: the same text.
#[tokio::test]
async fn requests_without_a_seed_draw_a_fresh_one_and_a_unique_id() {
    let f = Fixture::start(8, 4).await;
    let body = sampled(None);
    let mut ids = std::collections::BTreeSet::new();
    let mut seeds = std::collections::BTreeSet::new();
    let mut texts = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (id, text, r) = answer(&f, &body).await;
        ids.insert(id);
        seeds.insert(r.receipt.sampling.seed);
        texts.insert(text);
    }
    assert_eq!(ids.len(), 4, "ids repeat: {ids:?}");
    assert_eq!(seeds.len(), 4, "seeds repeat: {seeds:?}");
    assert!(
        texts.len() > 1,
        "four unseeded draws gave one text: {texts:?}"
    );
    let seeded = sampled(Some(42));
    let (id1, a, r1) = answer(&f, &seeded).await;
    let (id2, b, r2) = answer(&f, &seeded).await;
    assert_eq!(a, b);
    assert_eq!(
        (r1.receipt.sampling.seed, r2.receipt.sampling.seed),
        (42, 42)
    );
    assert_ne!(id1, id2, "ids are unique even for seeded requests");
}

/// An auditor re-executes an unseeded request with the seed its receipt records: an honest
/// answer matches (re-executing with a fresh draw, or with seed 0, would diverge), and a
/// receipt that records another seed than the one used is caught.
#[tokio::test]
async fn audits_of_unseeded_requests_use_the_recorded_seed() {
    let f = Fixture::start(8, 4).await;
    let body = sampled(None);
    let (_, _, r) = answer(&f, &body).await;
    let payload = |receipt: SignedReceipt| AuditPayload {
        path: CHAT.into(),
        body: body.clone(),
        receipt,
        answer: None,
    };
    assert_eq!(
        judge(&f.state, &payload(r.clone()), AuditMethod::Reexecute).await,
        Judgement::Match
    );
    // A receipt naming another seed is caught, unless that seed happens to draw the same
    // short text from the tiny test model (then the answer is what it says): of eight other
    // seeds, every verdict is Match or Divergence and at least one is Divergence.
    let mut caught = 0;
    for d in 1..=8u64 {
        let mut lied = r.receipt.clone();
        lied.sampling.seed = lied.sampling.seed.wrapping_add(d);
        let lied = SignedReceipt::sign(lied, &f.state.key);
        match judge(&f.state, &payload(lied), AuditMethod::Reexecute).await {
            Judgement::Divergence(_) => caught += 1,
            Judgement::Match => {}
            other => panic!("seed +{d}: {other:?}"),
        }
    }
    assert!(caught > 0, "no other seed was caught");
}

/// A chat model sent to embeddings is named as a chat model (400 naming `model`), not
/// answered with a 404 that lists it as available. (The reverse, with the real embedding
/// model, is checked by the devnet end-to-end test.)
#[tokio::test]
async fn a_chat_model_sent_to_embeddings_is_named_as_such() {
    let f = Fixture::start(8, 4).await;
    let resp = f
        .post(
            "/v1/embeddings",
            &json!({"model": MODEL, "input": "hi"}).to_string(),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "wrong_endpoint", "{v}");
    assert_eq!(v["error"]["param"], "model");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("is a chat model") && msg.contains("/v1/chat/completions"),
        "{msg}"
    );
}
