//! Health probes: what feeds the market score's uptime and queue-depth terms.
//!
//! Every refresh, the gateway asks each node it routes to for `GET /health`, all at once, each
//! with a short deadline. A node that answers `200` with `"status": "ok"` in time counts as up;
//! anything else (refused, timed out, 5xx, another status) as down. The `queue_depth` it
//! reports (requests waiting in its engine) joins the gateway's own in-flight count in the
//! load term. Both feed [`Router::record_health`](crate::router::Router::record_health), so a
//! node that is slow to answer or flaps loses traffic to steady ones before its breaker ever
//! opens.

use std::time::Duration;

use sortition_types::NodeId;

use crate::router::Router;
use crate::state::GatewayState;

/// How long a probe may take before the node counts as down for this round.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub healthy: bool,
    pub queue_depth: u32,
}

/// Probes `url`'s `/health`.
pub async fn probe(http: &reqwest::Client, url: &str, timeout: Duration) -> Probe {
    let down = Probe {
        healthy: false,
        queue_depth: 0,
    };
    let url = format!("{}/health", url.trim_end_matches('/'));
    let answer = tokio::time::timeout(timeout, async {
        let resp = http.get(&url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json::<serde_json::Value>().await.ok()
    })
    .await;
    match answer {
        Ok(Some(v)) if v["status"] == "ok" => Probe {
            healthy: true,
            queue_depth: v["queue_depth"]
                .as_u64()
                .map_or(0, |q| u32::try_from(q).unwrap_or(u32::MAX)),
        },
        _ => down,
    }
}

/// Probes every node `router` knows, concurrently, records what each probe saw in it, and
/// returns the probes.
pub async fn probe_all(
    router: &tokio::sync::Mutex<Router>,
    http: &reqwest::Client,
    timeout: Duration,
) -> Vec<(NodeId, Probe)> {
    let nodes: Vec<(NodeId, String)> = {
        let r = router.lock().await;
        r.in_flight()
            .keys()
            .filter_map(|id| r.node(*id).map(|n| (n.id, n.url.clone())))
            .collect()
    };
    let probes =
        futures::future::join_all(nodes.iter().map(|(_, url)| probe(http, url, timeout))).await;
    let seen: Vec<(NodeId, Probe)> = nodes.into_iter().map(|(id, _)| id).zip(probes).collect();
    let mut r = router.lock().await;
    for (id, p) in &seen {
        r.record_health(*id, p.healthy, p.queue_depth);
    }
    seen
}

/// One round of probes for the gateway, counted in its metrics.
pub async fn probe_round(g: &GatewayState) {
    for (_, p) in probe_all(&g.router, &g.http, PROBE_TIMEOUT).await {
        let label = if p.healthy { "up" } else { "down" };
        g.metrics.inc("health_probes_total", label, 1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::router::{BreakerConfig, Constraints, NodeView, Outcome, RouterWeights};
    use rand::SeedableRng;
    use sortition_types::{Amount, Hash32, ModelId, PublicKey};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    fn view(id: u64, url: String) -> NodeView {
        NodeView {
            id: NodeId(id),
            url,
            operator: PublicKey([id as u8; 32]),
            price_in: Amount(100),
            price_out: Amount(100),
            collateral: Amount(1_000_000),
            class: Hash32([1; 32]),
            confidential: false,
            reputation: 1000,
            slashes: 0,
            models: vec![ModelId::new("m")],
        }
    }

    /// A real HTTP server on port 0 whose `/health` answers with `f(n)` for its n-th probe.
    async fn node(
        f: impl Fn(u32) -> (u16, serde_json::Value, Duration) + Send + Sync + 'static,
    ) -> String {
        let calls = Arc::new(AtomicU32::new(0));
        let f = Arc::new(f);
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let (calls, f) = (calls.clone(), f.clone());
                async move {
                    let (status, body, delay) = f(calls.fetch_add(1, Ordering::SeqCst));
                    tokio::time::sleep(delay).await;
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        axum::Json(body),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// Share of `n` routing decisions that go to `id`, each finished as a success.
    fn share(r: &mut Router, id: NodeId, n: u32) -> f64 {
        let now = Instant::now();
        let mut hits = 0;
        for _ in 0..n {
            let got = r
                .choose(&ModelId::new("m"), &Constraints::default(), &[], now)
                .unwrap();
            hits += u32::from(got == id);
            let ok = Outcome::Success {
                ttft: Duration::from_millis(50),
                itl: None,
            };
            r.finish(got, ok, now);
        }
        f64::from(hits) / f64::from(n)
    }

    /// Issue 18: `Router::record_health` had no caller, so the uptime and queue-depth terms of
    /// the market score were never fed. A node that flaps (every other probe a 503) and one that
    /// is slow (past the probe deadline) lose traffic to a steady node of the same price; a
    /// node reporting a deep queue loses it too.
    #[tokio::test]
    async fn market_score_is_fed_by_health_probes() {
        let ok = |q: u32| {
            (
                200,
                serde_json::json!({"status": "ok", "queue_depth": q}),
                Duration::ZERO,
            )
        };
        let flapping = node(move |n| {
            if n % 2 == 0 {
                (503, serde_json::json!({}), Duration::ZERO)
            } else {
                ok(0)
            }
        })
        .await;
        let slow = node(move |_| {
            (
                200,
                serde_json::json!({"status": "ok"}),
                Duration::from_millis(400),
            )
        })
        .await;
        let busy = node(move |_| ok(40)).await;
        let steady = node(move |_| ok(0)).await;
        let http = reqwest::Client::new();
        for (bad, url) in [(1, flapping), (2, slow), (3, busy)] {
            let router = tokio::sync::Mutex::new(Router::with_rng(
                RouterWeights::default(),
                BreakerConfig::default(),
                rand::rngs::StdRng::seed_from_u64(7),
            ));
            {
                let mut r = router.lock().await;
                r.upsert_node(view(bad, url.clone()));
                r.upsert_node(view(9, steady.clone()));
                // Before any probe the two are equal and share the traffic.
                let before = share(&mut r, NodeId(bad), 200);
                assert!((0.3..0.7).contains(&before), "node {bad}: {before}");
            }
            for _ in 0..6 {
                let seen = probe_all(&router, &http, Duration::from_millis(200)).await;
                assert_eq!(seen.len(), 2);
            }
            let mut r = router.lock().await;
            let stats = r.stats(NodeId(bad)).unwrap().clone();
            match bad {
                1 | 2 => assert!(stats.uptime < 0.9, "node {bad}: uptime {}", stats.uptime),
                _ => assert_eq!(stats.queue_depth, 40),
            }
            assert_eq!(r.stats(NodeId(9)).unwrap().uptime, 1.0);
            let s = share(&mut r, NodeId(bad), 200);
            assert!(s < 0.2, "node {bad} still gets {s} of the traffic");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_down() {
        // A port held by a socket that never listens refuses connections, and no other test
        // can take it meanwhile (a dropped listener's port could be taken and answer).
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}", held.local_addr().unwrap());
        let p = probe(&reqwest::Client::new(), &url, Duration::from_secs(1)).await;
        assert!(!p.healthy);
        drop(held);
    }
}
