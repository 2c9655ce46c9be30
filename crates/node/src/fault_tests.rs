//! Regression tests of the node under faults and load (issue 18): a receipt write that fails
//! after its sequence number was handed out, an auditor saturated by its users or short of
//! its engine, and what a client gets when its receipt cannot be kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sortition_engine::engine::Lane;
use sortition_engine::{EngineError, GenerateRequest, Prompt, SamplingParams};
use sortition_ledger::{AuditMethod, Verdict};
use sortition_types::{AuditId, SignedReceipt, sha256};

use crate::audit::{AuditPayload, Expected};
use crate::judge::{Backoff, judge_in_time};
use crate::testkit::{Fixture, chat_body};

const CHAT: &str = "/v1/chat/completions";

/// Posts a greedy chat request and returns its receipt (the answer must be 200).
async fn served(f: &Fixture, body: &str) -> SignedReceipt {
    let resp = f.post(CHAT, body).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    serde_json::from_value(v["sortition"]["receipt"].clone()).unwrap()
}

fn payload(body: &str, receipt: SignedReceipt) -> AuditPayload {
    AuditPayload {
        path: CHAT.into(),
        body: body.into(),
        receipt,
        answer: None,
    }
}

fn quick() -> Backoff {
    Backoff {
        first: Duration::from_millis(20),
        max: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(120),
    }
}

/// A receipt write fails after its sequence number was allocated: the client gets a 503
/// with `Retry-After` (not the answer), nothing is charged, the next receipt takes the same
/// number, so receipt `i` of the stack is still its `i`-th leaf, and the audit of position 1
/// is the request actually receipted there. Before the fix the lost write left a gap:
/// position 1 held sequence 2, and an audit of position 1 looked for the wrong request.
#[tokio::test]
async fn receipt_sequence_gap_cannot_misdirect_audits() {
    let f = Fixture::start(8, 4).await;
    let bodies: Vec<String> = ["first question", "second question", "third question"]
        .iter()
        .map(|p| chat_body(p, 6, false))
        .collect();
    let r0 = served(&f, &bodies[0]).await;
    let used = f.state.accounts.used(f.stack);

    f.state.store.fail_next_receipt_writes(1);
    let lost = f.post(CHAT, &bodies[1]).await;
    assert_eq!(lost.status(), 503);
    assert!(lost.headers().contains_key("retry-after"));
    let err: serde_json::Value = lost.json().await.unwrap();
    assert_eq!(err["error"]["code"], "receipt_not_persisted");
    assert!(
        err.get("choices").is_none(),
        "no answer without its receipt"
    );
    assert_eq!(f.state.accounts.used(f.stack), used, "nothing charged");
    assert_eq!(f.state.accounts.in_flight(f.stack), 0);

    let r2 = served(&f, &bodies[2]).await;
    assert_eq!((r0.receipt.sequence, r2.receipt.sequence), (0, 1));
    let stored = f.state.store.receipts(f.stack).unwrap();
    let claimable = crate::claims::in_position(&stored);
    assert_eq!(claimable.len(), 2);
    let material = crate::claims::claim_material(claimable);
    for (i, body) in [(0u64, &bodies[0]), (1, &bodies[2])] {
        let (r, proof) = crate::claims::receipt_with_proof(claimable, i).unwrap();
        assert_eq!(r.receipt.sequence, i);
        assert_eq!(r.receipt.request_hash, sha256(body.as_bytes()));
        assert!(proof.verify(&r.receipt.digest(), &material.receipts_root));
    }

    // An auditor of position 1 takes the request receipted there, and no other.
    let desk = crate::audit::AuditDesk::default();
    let id = AuditId(1);
    desk.expect(
        id,
        Expected {
            executor: f.state.id,
            key: Some(f.state.key.public()),
            stack: f.stack,
            sequence: 1,
            digest: Some(r2.receipt.digest()),
            kept: Some(r2.clone()),
        },
    );
    assert!(desk.deliver(id, payload(&bodies[0], r0)).is_err());
    assert!(desk.deliver(id, payload(&bodies[2], r2)).is_ok());
}

/// A streamed answer whose receipt cannot be persisted ends with the error event, not the
/// receipt, and nothing is charged.
#[tokio::test]
async fn unpersisted_streamed_receipt_is_not_delivered() {
    let f = Fixture::start(8, 4).await;
    f.state.store.fail_next_receipt_writes(1);
    let resp = f.post(CHAT, &chat_body("stream it", 6, true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("receipt_not_persisted"), "{text}");
    assert!(!text.contains("\"receipt\""), "{text}");
    assert_eq!(f.state.accounts.used(f.stack), 0);
    assert!(f.state.store.receipts(f.stack).unwrap().is_empty());
    // The next one is receipted at position 0.
    let r = served(&f, &chat_body("again", 6, false)).await;
    assert_eq!(r.receipt.sequence, 0);
}

/// An auditor whose engine cannot take the work (its audit lane full), that does not serve
/// the model, or whose work does not finish before the vote must go out, votes
/// `Unavailable`: never `Mismatch`, for which it would be slashed `WrongVerdict` when the
/// committee finds the (honest) receipt matches. Before the fix each of these voted
/// `Mismatch`.
#[tokio::test]
async fn honest_auditor_busy_is_not_slashed() {
    let executor = Fixture::start(8, 4).await;
    let body = chat_body("an honest request", 6, false);
    let receipt = served(&executor, &body).await;
    let honest = payload(&body, receipt.clone());

    // The auditor's engine is stalled and its audit lane full: every attempt is refused.
    let auditor = Fixture::start_with(8, 4, true).await;
    let mut held = Vec::new();
    loop {
        let req = GenerateRequest::new(Prompt::Text("x".into()), SamplingParams::greedy(1));
        match auditor.engine().generate_in(req, Lane::Audit) {
            Ok(s) => held.push(s),
            Err(EngineError::Overloaded) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(held.len() < 1_000, "the audit lane is bounded");
    }
    let soon = || tokio::time::sleep(Duration::from_millis(400));
    let v = judge_in_time(
        &auditor.state,
        &honest,
        AuditMethod::Reexecute,
        quick(),
        soon(),
    )
    .await;
    assert_eq!(v, Verdict::Unavailable, "busy");

    // Accepted, but not done before the deadline.
    drop(held);
    let v = judge_in_time(
        &auditor.state,
        &honest,
        AuditMethod::Reexecute,
        quick(),
        soon(),
    )
    .await;
    assert_eq!(v, Verdict::Unavailable, "timeout");

    // A model this auditor does not serve.
    let other = body.replace("\"tiny\"", "\"absent\"");
    let missing = payload(&other, receipt.clone());
    let v = judge_in_time(
        &auditor.state,
        &missing,
        AuditMethod::Reexecute,
        quick(),
        soon(),
    )
    .await;
    assert_eq!(v, Verdict::Unavailable, "model missing");

    // Once the engine runs, the same auditor finds the honest receipt matches, and a receipt
    // that claims another answer diverges (a real divergence still votes Mismatch).
    auditor.engine().resume();
    let later = || tokio::time::sleep(Duration::from_secs(60));
    let v = judge_in_time(
        &auditor.state,
        &honest,
        AuditMethod::Reexecute,
        quick(),
        later(),
    )
    .await;
    assert_eq!(v, Verdict::Match);
    let mut forged = receipt.receipt.clone();
    forged.response_hash = sha256(b"another answer");
    let cheat = payload(&body, SignedReceipt::sign(forged, &executor.state.key));
    let v = judge_in_time(
        &auditor.state,
        &cheat,
        AuditMethod::Reexecute,
        quick(),
        later(),
    )
    .await;
    assert!(matches!(v, Verdict::Mismatch { .. }), "{v:?}");
}

/// An auditor whose users keep its engine's queue full (user requests are being refused
/// `Overloaded` all along) judges many honest requests: every one matches, none is voted
/// `Mismatch`, and no attempt even needed a retry (audit work has its own lane). Before the
/// fix, audit work entered the user queue and each refusal became a `Mismatch` vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saturated_auditor_votes_no_mismatch_on_honest_requests() {
    let f = Arc::new(Fixture::start(2, 2).await);
    let mut honest = Vec::new();
    for i in 0..10 {
        let body = chat_body(&format!("honest request number {i}"), 8, false);
        let receipt = served(&f, &body).await;
        honest.push(payload(&body, receipt));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..6)
        .map(|u| {
            let (f, stop, refused) = (f.clone(), stop.clone(), refused.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = GenerateRequest::new(
                        Prompt::Text(format!("user traffic {u}")),
                        SamplingParams::greedy(32),
                    );
                    match f.engine().generate(req) {
                        Ok(s) => {
                            let _ = s.collect().await;
                        }
                        Err(EngineError::Overloaded) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::task::yield_now().await;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    // The user lane is saturated before the audits start.
    while refused.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = refused.load(Ordering::Relaxed);
    let judged = futures::future::join_all(honest.iter().map(|p| {
        let deadline = tokio::time::sleep(Duration::from_secs(120));
        judge_in_time(&f.state, p, AuditMethod::Reexecute, quick(), deadline)
    }))
    .await;
    let during = refused.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.await.unwrap();
    }
    let mismatches = judged
        .iter()
        .filter(|v| matches!(v, Verdict::Mismatch { .. }))
        .count();
    assert_eq!(mismatches, 0, "{judged:?}");
    assert!(judged.iter().all(|v| *v == Verdict::Match), "{judged:?}");
    assert!(during > 0, "users were refused while the audits ran");
    // Not by retrying: no audit attempt was ever refused or troubled.
    let metrics = f.state.metrics.render("node");
    assert!(!metrics.contains("audit_trouble_total"), "{metrics}");
}
