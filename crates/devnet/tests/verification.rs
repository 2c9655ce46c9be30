#![allow(clippy::unwrap_used)]
//! Verification end to end: a devnet with every receipt audited and one cheating node. The
//! cheater is caught by re-execution, loses a dispute and is slashed; the owner is refunded;
//! honest nodes are paid and never slashed.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sortition_devnet::{Devnet, DevnetConfig};
use sortition_ledger::{Event, SlashReason};
use sortition_ledger_service::{Cursor, LedgerClient};
use sortition_node::adversary::Mode;
use sortition_node::claims::ClaimPolicy;
use sortition_types::NodeId;

async fn ask(gateway: &str, key: &str, i: u32) -> Value {
    let body = json!({"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 6,
        "messages": [{"role": "user", "content": format!("Say the number {i}.")}]});
    let resp = reqwest::Client::new()
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncating_node_is_caught_slashed_and_owner_refunded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DevnetConfig::new(dir.path());
    cfg.audit_q_ppm = 1_000_000;
    cfg.adversary = Some(Mode::Truncate);
    cfg.embed_model = None;
    cfg.node_claim_interval = Duration::from_millis(500);
    cfg.claim_policy = ClaimPolicy {
        max_age_ms: 1_000,
        ..ClaimPolicy::default()
    };
    let net = Devnet::start(cfg).await.expect("devnet starts");
    let cheater = net
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

    // Send requests until the cheater and at least one honest node have served some.
    let mut served: Vec<NodeId> = Vec::new();
    for i in 0..40 {
        let v = ask(&net.info.gateway_url, &net.info.api_key, i).await;
        served.push(serde_json::from_value(v["sortition"]["node"].clone()).unwrap());
        if served.contains(&cheater)
            && served.iter().any(|n| honest.contains(n))
            && served.len() >= 4
        {
            break;
        }
    }
    assert!(
        served.contains(&cheater),
        "the router never chose the cheater in 40 requests"
    );

    // Follow the ledger until the cheater is slashed and an honest claim is settled.
    let ledger = LedgerClient::new(&net.info.ledger_url);
    let mut events = Box::pin(ledger.events(Cursor::START).await.expect("event stream"));
    let (mut cheater_slashed, mut honest_paid, mut refunded) = (false, false, false);
    let mut honest_slashes = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(item) = events.next().await {
            let (_, ev) = item.expect("event");
            match ev {
                Event::Slashed { node, reason, .. } if node == cheater => {
                    cheater_slashed |= reason == SlashReason::ExecutorAtFault;
                }
                Event::Slashed { node, reason, .. } => honest_slashes.push((node, reason)),
                Event::Settled { node, paid, .. } if honest.contains(&node) && paid.0 > 0 => {
                    honest_paid = true
                }
                Event::Refunded { .. } => refunded = true,
                _ => {}
            }
            if cheater_slashed && honest_paid && refunded {
                return;
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "timed out: cheater slashed {cheater_slashed}, honest paid {honest_paid}, refunded {refunded}"
    );
    assert!(
        honest_slashes.is_empty(),
        "honest nodes were slashed: {honest_slashes:?}"
    );
    let disputes = ledger.disputes().await.unwrap();
    assert!(
        disputes
            .iter()
            .all(|d| d.resolution.is_some() || d.executor == cheater)
    );
    assert!(
        disputes.iter().all(|d| d.executor == cheater),
        "only the cheater is ever disputed: {disputes:?}"
    );
    drop(events);
    net.shutdown().await;
}
