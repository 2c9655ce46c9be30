#![allow(clippy::unwrap_used)]
//! Verification end to end: devnets with every receipt audited and one adversarial node each.
//! A cheating executor is caught (by re-execution or scoring), loses a dispute and is slashed,
//! and the owner is refunded; an auditor that skips its duty is slashed for the missed
//! deadline; honest nodes are paid and never slashed, and only the adversary is disputed.
//!
//! The scenarios run one at a time (a lock below): each is a whole network with real models
//! and deadlines counted in blocks, and two at once on a 2-core machine only slows both.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sortition_devnet::{Devnet, DevnetConfig, default_score_method};
use sortition_ledger::{AuditMethod, Event, SlashReason};
use sortition_ledger_client::{Cursor, LedgerClient};
use sortition_node::adversary::Mode;
use sortition_node::claims::ClaimPolicy;
use sortition_types::NodeId;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Asks for a short greedy answer from one of `only` (the gateway's `nodes` constraint), so
/// that a scenario decides who serves instead of hoping the router picks the adversary.
async fn ask(gateway: &str, key: &str, i: u32, only: &[NodeId]) -> (u16, Value) {
    let body = json!({"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 8,
        "messages": [{"role": "user", "content": format!("Say the number {i}.")}]});
    let resp = reqwest::Client::new()
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .header(
            "x-sortition-constraints",
            json!({"nodes": only}).to_string(),
        )
        .json(&body)
        .send()
        .await
        .expect("gateway answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

/// Whether the adversary cheats as an auditor (rather than as an executor).
fn cheats_as_auditor(mode: Mode) -> bool {
    matches!(mode, Mode::SkipAudits | Mode::Copy)
}

/// What a scenario must show on the ledger.
struct Expect {
    /// The adversary's slash reason.
    slashed_for: SlashReason,
    /// The owner gets a refund (the adversary cheated as executor).
    refund: bool,
}

struct Outcome {
    net: Devnet,
    _dir: tempfile::TempDir,
    honest: HashSet<NodeId>,
}

async fn scenario(mode: Mode, method: AuditMethod, expect: Expect) -> Outcome {
    scenario_at(mode, method, 1_000_000, expect).await
}

/// [`scenario`] with the claims' receipts sampled for audit at `q_ppm` (parts per million).
async fn scenario_at(mode: Mode, method: AuditMethod, q_ppm: u32, expect: Expect) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DevnetConfig::new(dir.path());
    cfg.audit_q_ppm = q_ppm;
    cfg.audit_method = method;
    cfg.adversary = Some(mode);
    cfg.embed_model = None;
    cfg.node_claim_interval = Duration::from_millis(500);
    cfg.claim_policy = ClaimPolicy {
        max_age_ms: 1_000,
        ..ClaimPolicy::default()
    };
    let net = Devnet::start(cfg).await.expect("devnet starts");
    let adversary = net
        .info
        .nodes
        .iter()
        .find(|n| n.adversary.is_some())
        .expect("adversary")
        .id;
    let honest: HashSet<NodeId> = net
        .info
        .nodes
        .iter()
        .filter(|n| n.adversary.is_none())
        .map(|n| n.id)
        .collect();

    // Follow the ledger from its start while requests are sent.
    let ledger = LedgerClient::new(&net.info.ledger_url);
    let mut events = Box::pin(ledger.events(Cursor::START).await.expect("event stream"));

    // A cheating executor serves two requests and honest nodes two. A cheating auditor only
    // shows itself when drawn to audit an honest receipt (k of the other nodes are drawn per
    // audit), so honest nodes serve until the ledger has drawn it, at most 60 requests.
    let drawn = Arc::new(AtomicBool::new(false));
    let sender = {
        let (gateway, key) = (net.info.gateway_url.clone(), net.info.api_key.clone());
        let honest: Vec<NodeId> = honest.iter().copied().collect();
        let drawn = drawn.clone();
        tokio::spawn(async move {
            let auditor = cheats_as_auditor(mode);
            let mut i = 0;
            if !auditor {
                for _ in 0..2 {
                    let (status, v) = ask(&gateway, &key, i, &[adversary]).await;
                    // An over-reporting node's answers are refused by the gateway: that
                    // still leaves its signed receipt with the node, which claims it.
                    let refused = status == 502 && v["error"]["code"] == "receipt_invalid";
                    assert!(status == 200 || refused, "adversary answered {status}: {v}");
                    i += 1;
                }
            }
            while i < 60 && !(i >= 4 && (!auditor || drawn.load(Ordering::Relaxed))) {
                let (status, v) = ask(&gateway, &key, i, &honest).await;
                assert_eq!(status, 200, "honest answer: {v}");
                let node: NodeId = serde_json::from_value(v["sortition"]["node"].clone()).unwrap();
                assert!(honest.contains(&node), "{node} is not one of {honest:?}");
                i += 1;
                if i >= 4 {
                    // Let claims and audits catch up before asking for more.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            i
        })
    };

    // Follow the ledger until the adversary is slashed and an honest claim is settled.
    let (mut adversary_slashed, mut honest_paid, mut refunded) = (false, false, false);
    let mut honest_slashes = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(item) = events.next().await {
            let (_, ev) = item.expect("event");
            match ev {
                Event::AuditOpened { auditors, .. } if auditors.contains(&adversary) => {
                    drawn.store(true, Ordering::Relaxed);
                }
                Event::Slashed { node, reason, .. } if node == adversary => {
                    adversary_slashed |= reason == expect.slashed_for;
                }
                Event::Slashed { node, reason, .. } => honest_slashes.push((node, reason)),
                Event::Settled { node, paid, .. } if honest.contains(&node) && paid.0 > 0 => {
                    honest_paid = true
                }
                Event::Refunded { .. } => refunded = true,
                _ => {}
            }
            if adversary_slashed && honest_paid && (refunded || !expect.refund) {
                return;
            }
        }
    })
    .await;
    if outcome.is_err() {
        sender.abort();
    }
    let sent = sender.await;
    if let Err(e) = &sent
        && e.is_panic()
    {
        panic!("a request failed: {e}");
    }
    let drawn = drawn.load(Ordering::Relaxed);
    assert!(
        outcome.is_ok(),
        "timed out after {sent:?} requests: adversary drawn to audit {drawn}, slashed \
         {adversary_slashed}, honest paid {honest_paid}, refunded {refunded}"
    );
    assert!(
        honest_slashes.is_empty(),
        "honest nodes were slashed: {honest_slashes:?}"
    );
    // An adversary that also audits may dispute honest receipts: those disputes must clear
    // the honest executor (its wrong verdict is the adversary's loss).
    let disputes = ledger.disputes().await.unwrap();
    assert!(
        disputes
            .iter()
            .all(|d| d.executor == adversary || d.resolution != Some(true)),
        "an honest executor lost a dispute: {disputes:?}"
    );
    drop(events);
    Outcome {
        net,
        _dir: dir,
        honest,
    }
}

/// Sum over the given nodes of `sortition_node_audits_total{label="LABEL"}`.
async fn audit_count(net: &Devnet, nodes: &HashSet<NodeId>, label: &str) -> u64 {
    let mut total = 0;
    for n in net.info.nodes.iter().filter(|n| nodes.contains(&n.id)) {
        let text = reqwest::get(format!("{}/metrics", n.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let key = format!("sortition_node_audits_total{{label=\"{label}\"}} ");
        total += text
            .lines()
            .filter_map(|l| l.strip_prefix(&key))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .sum::<u64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncating_node_is_caught_by_reexecution_slashed_and_owner_refunded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let o = scenario(
        Mode::Truncate,
        AuditMethod::Reexecute,
        Expect {
            slashed_for: SlashReason::ExecutorAtFault,
            refund: true,
        },
    )
    .await;
    assert!(audit_count(&o.net, &o.honest, "reexecuted_mismatch").await > 0);
    o.net.shutdown().await;
}

/// Under the scoring policy, honest receipts are cleared by one teacher-forced pass and the
/// scrambled answers fail scoring, are confirmed by re-execution, and lose their dispute.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_answers_fail_scoring_and_are_slashed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let o = scenario(
        Mode::Random,
        default_score_method(),
        Expect {
            slashed_for: SlashReason::ExecutorAtFault,
            refund: true,
        },
    )
    .await;
    assert!(
        audit_count(&o.net, &o.honest, "scored_match").await > 0,
        "honest receipts were never cleared by scoring"
    );
    assert!(audit_count(&o.net, &o.honest, "reexecuted_mismatch").await > 0);
    o.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_reporting_node_is_caught_and_slashed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let o = scenario(
        Mode::OverReport,
        AuditMethod::Reexecute,
        Expect {
            slashed_for: SlashReason::ExecutorAtFault,
            refund: true,
        },
    )
    .await;
    o.net.shutdown().await;
}

/// With no receipt sampled for audit, receipts the gateway refused for claiming more units
/// than the request could use are still audited: the gateway challenges them (the node
/// signed them, and claims them), and the node is slashed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_reported_receipts_are_challenged_without_sampling() {
    let _one = ONE_AT_A_TIME.lock().await;
    let o = scenario_at(
        Mode::OverReportBlatant,
        AuditMethod::Reexecute,
        0,
        Expect {
            slashed_for: SlashReason::ExecutorAtFault,
            refund: true,
        },
    )
    .await;
    let ledger = LedgerClient::new(&o.net.info.ledger_url);
    let challenged = ledger.audits().await.unwrap();
    assert!(
        !challenged.is_empty() && challenged.iter().all(|a| a.challenge_bond.is_some()),
        "only challenges may have been audited at q = 0: {challenged:?}"
    );
    o.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auditor_skipping_its_duty_is_slashed_for_the_missed_deadline() {
    let _one = ONE_AT_A_TIME.lock().await;
    let o = scenario(
        Mode::SkipAudits,
        AuditMethod::Reexecute,
        Expect {
            slashed_for: SlashReason::MissedDeadline,
            refund: false,
        },
    )
    .await;
    o.net.shutdown().await;
}

/// A node serving a smaller model under the full model's name and class is caught by
/// re-execution (its answers differ), slashed, and the owner refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_serving_a_smaller_model_is_caught_and_slashed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let o = scenario(
        Mode::SmallerModel,
        default_score_method(),
        Expect {
            slashed_for: SlashReason::ExecutorAtFault,
            refund: true,
        },
    )
    .await;
    o.net.shutdown().await;
}

/// A node that gives the gateway one receipt and claims another for the same position (with
/// doubled tokens) is caught by an auditor holding both (the gateway's delivery and the
/// receipt the ledger took), slashed on that proof alone, and the owner refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn equivocating_node_is_slashed_on_proof() {
    let _one = ONE_AT_A_TIME.lock().await;
    let o = scenario(
        Mode::Equivocate,
        AuditMethod::Reexecute,
        Expect {
            slashed_for: SlashReason::Equivocation,
            refund: true,
        },
    )
    .await;
    o.net.shutdown().await;
}

/// An auditor that would copy another auditor's verdict instead of re-executing finds
/// nothing to copy before its commit is too late, and is slashed for the missed deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auditor_copying_verdicts_is_slashed_for_the_missed_deadline() {
    let _one = ONE_AT_A_TIME.lock().await;
    let o = scenario(
        Mode::Copy,
        AuditMethod::Reexecute,
        Expect {
            slashed_for: SlashReason::MissedDeadline,
            refund: false,
        },
    )
    .await;
    o.net.shutdown().await;
}

/// Synchronous quorum: three nodes of one class (two honest, one answering scrambled text)
/// serve every request, with no sampled audits. The answer is the honest majority's, the
/// adversary is named as the dissenter, and the gateway's challenges of its receipts get it
/// slashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_answers_from_the_majority_and_challenges_the_dissenter() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DevnetConfig::new(dir.path());
    cfg.nodes = 2;
    cfg.adversary = Some(Mode::Random);
    cfg.embed_model = None;
    let net = Devnet::start(cfg).await.expect("devnet starts");
    let adversary = net
        .info
        .nodes
        .iter()
        .find(|n| n.adversary.is_some())
        .unwrap()
        .id;
    let honest: HashSet<NodeId> = net
        .info
        .nodes
        .iter()
        .filter(|n| n.adversary.is_none())
        .map(|n| n.id)
        .collect();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", net.info.gateway_url);
    let post = |body: Value, quorum: u8| {
        http.post(&url)
            .bearer_auth(&net.info.api_key)
            .header(
                "x-sortition-constraints",
                json!({"require_quorum": quorum}).to_string(),
            )
            .json(&body)
            .send()
    };
    let mut texts = Vec::new();
    for (i, topic) in ["colors", "fruits", "planets"].iter().enumerate() {
        let body = json!({"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": format!("Name three {topic}.")}]});
        let resp = post(body, 3).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        let v: Value = resp.json().await.unwrap();
        texts.push(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        let q = &v["sortition"]["quorum"];
        assert_eq!(q["size"], 3, "{v}");
        let agreeing: HashSet<NodeId> = serde_json::from_value(q["agreeing"].clone()).unwrap();
        let dissenting: Vec<NodeId> = serde_json::from_value(q["dissenting"].clone()).unwrap();
        assert_eq!(agreeing, honest, "{v}");
        assert_eq!(dissenting, vec![adversary], "{v}");
        let node: NodeId = serde_json::from_value(v["sortition"]["node"].clone()).unwrap();
        assert!(honest.contains(&node));
        assert_eq!(v["sortition"]["verified_by_gateway"], true);
    }
    // Streamed: the majority's answer arrives as a stream once the quorum agreed.
    let body = json!({"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 12,
        "stream": true, "messages": [{"role": "user", "content": "Name three colors."}]});
    let resp = post(body, 3).await.unwrap();
    assert_eq!(resp.status(), 200);
    let raw = resp.text().await.unwrap();
    let data: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{raw}");
    let events: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, texts[0], "{raw}");
    let last = events.last().unwrap();
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(
        last["sortition"]["quorum"]["dissenting"],
        json!([adversary]),
        "{raw}"
    );
    assert_eq!(last["sortition"]["verified_by_gateway"], true);
    // A quorum larger than the class is refused with a clear error.
    let body = json!({"model": "smollm2-135m-instruct", "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hi"}]});
    let resp = post(body, 4).await.unwrap();
    assert_eq!(resp.status(), 503, "a quorum of 4 with 3 nodes");
    let metrics = reqwest::get(format!("{}/metrics", net.info.gateway_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sortition_gateway_quorum_dissent_total 4"),
        "{metrics}"
    );

    // No audits are sampled on this chain (q = 0): the gateway's challenges of the dissenting
    // receipts alone get the adversary audited, disputed and slashed, and its stack refunded.
    let ledger = LedgerClient::new(&net.info.ledger_url);
    let mut events = Box::pin(ledger.events(Cursor::START).await.expect("event stream"));
    let (mut challenged, mut slashed, mut refunded) = (0, false, false);
    let mut honest_slashes = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(item) = events.next().await {
            match item.expect("event").1 {
                Event::ReceiptChallenged { .. } => challenged += 1,
                Event::Slashed { node, reason, .. } if node == adversary => {
                    slashed |= reason == SlashReason::ExecutorAtFault;
                }
                Event::Slashed { node, reason, .. } => honest_slashes.push((node, reason)),
                Event::Refunded { .. } => refunded = true,
                _ => {}
            }
            if slashed && refunded && challenged == 4 {
                return;
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "timed out: {challenged} challenges, adversary slashed {slashed}, refunded {refunded}"
    );
    assert!(honest_slashes.is_empty(), "{honest_slashes:?}");
    let audits = ledger.audits().await.unwrap();
    assert!(
        audits
            .iter()
            .all(|a| a.challenge_bond.is_some() && a.executor == adversary),
        "only the dissenter's receipts were audited: {audits:?}"
    );
    drop(events);
    net.shutdown().await;
}

/// False positives: an honest network serving concurrent requests (greedy and seeded
/// sampling, batched together by the engines) with every receipt audited never disputes
/// anyone: auditors re-running a request alone reproduce exactly what the executor produced
/// inside a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn honest_network_under_concurrent_load_has_no_false_positives() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DevnetConfig::new(dir.path());
    cfg.audit_q_ppm = 1_000_000;
    cfg.audit_method = default_score_method();
    // Every request audited twice on a 2-core machine running all three nodes: give each
    // phase 2 minutes, so that only verdicts (not capacity) are under test.
    cfg.audit_phase_blocks = 480;
    cfg.embed_model = None;
    cfg.node_claim_interval = Duration::from_millis(500);
    cfg.claim_policy = ClaimPolicy {
        max_age_ms: 1_000,
        ..ClaimPolicy::default()
    };
    let net = Devnet::start(cfg).await.expect("devnet starts");
    const REQUESTS: usize = 24;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", net.info.gateway_url);
    let topics = ["rivers", "birds", "tools", "songs", "stars", "boats"];
    let sends = (0..REQUESTS).map(|i| {
        let mut body = json!({"model": "smollm2-135m-instruct", "max_tokens": 10 + (i % 4) * 4,
            "messages": [{"role": "user", "content": format!("Tell me about {}.", topics[i % 6])}]});
        if i % 2 == 0 {
            body["temperature"] = json!(0);
        } else {
            body["temperature"] = json!(0.8);
            body["seed"] = json!(i);
        }
        let req = http.post(&url).bearer_auth(&net.info.api_key).json(&body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    });
    // Eight at a time, so the engines batch requests of different lengths together.
    futures::stream::iter(sends)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;

    // Every receipt is claimed and audited; wait until all those audits have closed. They
    // close as soon as every auditor revealed, or at the reveal deadline (4 minutes after
    // opening here): the wait covers one whole audit lifetime after the last claim, and on
    // timeout says which audits were still open and how far they got.
    let audits_url = format!("{}/v1/audits", net.info.ledger_url);
    let last = std::sync::Mutex::new(Vec::<Value>::new());
    let closed = tokio::time::timeout(Duration::from_secs(420), async {
        loop {
            let all: Vec<Value> = reqwest::get(&audits_url)
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if all.len() >= REQUESTS && all.iter().all(|a| !a["outcome"].is_null()) {
                return all;
            }
            *last.lock().unwrap() = all;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let all = last.lock().unwrap().clone();
        let open: Vec<&Value> = all.iter().filter(|a| a["outcome"].is_null()).collect();
        panic!(
            "not every request audited and closed within 420 s: {} audits, {} open: {open:#?}",
            all.len(),
            open.len()
        )
    });
    let ledger = LedgerClient::new(&net.info.ledger_url);
    let disputes = ledger.disputes().await.unwrap();
    assert!(disputes.is_empty(), "no disputes: {disputes:?}");
    let slashes = ledger.slashes().await.unwrap();
    assert!(slashes.is_empty(), "no slashes: {slashes:?}");
    assert!(
        closed.iter().all(|a| a["outcome"]["outcome"] == "passed"),
        "every audit passed: {closed:?}"
    );
    let everyone: HashSet<NodeId> = net.info.nodes.iter().map(|n| n.id).collect();
    assert!(audit_count(&net, &everyone, "scored_match").await > 0);
    // Honest answers, greedy and sampled, pass scoring itself (a sampled token is the one its
    // seeded draw picks from the auditor's row): none needed re-execution to be cleared.
    assert_eq!(audit_count(&net, &everyone, "scored_fail").await, 0);
    assert_eq!(audit_count(&net, &everyone, "reexecuted_mismatch").await, 0);
    net.shutdown().await;
}
