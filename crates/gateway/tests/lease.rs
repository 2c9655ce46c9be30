//! The gateway's request pipeline over HTTP, against a node server on port 0: what a request
//! holds while a node serves it (its credit hold, its stack units, the router's count of it in
//! flight) comes back when the client leaves before the answer, and nothing is billed; the
//! next request is served and billed as usual.

use std::sync::Arc;
use std::time::Duration;

use sortition_gateway::keys::ServerSecret;
use sortition_gateway::state::GatewayState;
use sortition_gateway::store::GatewayStore;
use sortition_types::{Amount, NodeId, StackId};

mod common;
use common::gateway_with_one_node;

/// A gateway on port 0 whose one node answers after `delay`; returns its state, its chat URL,
/// the store and a user's key with `credits`.
async fn gateway(
    dir: &std::path::Path,
    delay: Duration,
    credits: u64,
) -> (
    Arc<GatewayState>,
    String,
    GatewayStore,
    sortition_gateway::store::UserId,
    String,
) {
    let store = GatewayStore::open_sqlite(dir, ServerSecret::from_bytes([7u8; 32]))
        .await
        .expect("open sqlite");
    let (g, url) = gateway_with_one_node(&store, delay).await;
    let user = store.create_user("lease").await.expect("user");
    store.top_up(user, Amount(credits)).await.expect("top up");
    let (_, key) = store
        .create_key(user, "k", 10_000, None)
        .await
        .expect("key");
    (g, url, store, user, key.expose().to_string())
}

fn body() -> String {
    serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "seed": 7,
    })
    .to_string()
}

/// What the request held, read back: the node's requests in flight (router), the stack's
/// reserved units, and the user's held credit.
async fn held(
    g: &GatewayState,
    store: &GatewayStore,
    user: sortition_gateway::store::UserId,
) -> (u32, u64, Amount) {
    let in_flight = g
        .router
        .lock()
        .await
        .in_flight()
        .get(&NodeId(1))
        .copied()
        .unwrap_or(0);
    let reserved = store
        .stack(StackId(100))
        .await
        .map(|s| s.units_reserved)
        .unwrap_or(0);
    let credit = store.user(user).await.expect("user").held;
    (in_flight, reserved, credit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_gets_everything_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (g, url, store, user, key) =
        gateway(dir.path(), Duration::from_millis(1500), 1_000_000).await;
    let before = store.user(user).await.expect("user").credits;

    // The client gives up while the node is still working on its answer.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .expect("client");
    let r = impatient
        .post(&url)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(body())
        .send()
        .await;
    assert!(r.is_err(), "the client left before the answer: {r:?}");
    // While the request was open it held all three (the stack was bought for it).
    let mut released = None;
    for _ in 0..100 {
        let now = held(&g, &store, user).await;
        if now == (0, 0, Amount(0)) {
            released = Some(now);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        released,
        Some((0, 0, Amount(0))),
        "in flight, stack units reserved, credit held: {:?}",
        held(&g, &store, user).await
    );
    assert_eq!(
        store.user(user).await.expect("user").credits,
        before,
        "nothing was billed"
    );
    assert!(
        store
            .usage_for_user(user, 10)
            .await
            .expect("usage")
            .is_empty()
    );
    assert!(
        g.metrics
            .render("sortition_gateway")
            .contains("leases_dropped_total"),
        "the dropped lease is counted"
    );

    // The next request is served from the same stack and billed as usual.
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(body())
        .send()
        .await
        .expect("answer");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let after = held(&g, &store, user).await;
    assert_eq!(
        after,
        (0, 0, Amount(0)),
        "the served request ended its lease"
    );
    let stack = store.stack(StackId(100)).await.expect("stack");
    assert_eq!(
        stack.units_used, 15,
        "the answer's 15 units settled on the stack"
    );
    assert_eq!(
        before.0 - store.user(user).await.expect("user").credits.0,
        15,
        "charged once, for the served answer"
    );
    store.close().await;
}
