//! Router scenarios: market score, constraints, breakers, power of two choices, quorum.

use super::*;

fn model() -> ModelId {
    ModelId::new("smollm2-135m-instruct")
}

fn node(id: u64, price: u64) -> NodeView {
    NodeView {
        id: NodeId(id),
        url: format!("http://node-{id}"),
        operator: PublicKey([id as u8; 32]),
        price_in: Amount(price),
        price_out: Amount(price),
        collateral: Amount(1_000_000),
        class: Hash32([1; 32]),
        confidential: false,
        reputation: 1000,
        slashes: 0,
        models: vec![model()],
    }
}

fn router(nodes: impl IntoIterator<Item = NodeView>) -> Router {
    let mut r = Router::with_rng(
        RouterWeights::default(),
        BreakerConfig::default(),
        StdRng::seed_from_u64(7),
    );
    for n in nodes {
        r.upsert_node(n);
    }
    r
}

fn ok() -> Outcome {
    Outcome::Success {
        ttft: Duration::from_millis(100),
        itl: Some(Duration::from_millis(20)),
    }
}

#[test]
fn cheapest_but_overloaded_loses_to_slightly_pricier_idle() {
    let now = Instant::now();
    let mut r = router([node(1, 100), node(2, 110)]);
    // Equal load: the cheaper one wins.
    assert_eq!(
        r.choose(&model(), &Constraints::default(), &[], now),
        Ok(NodeId(1))
    );
    r.finish(NodeId(1), ok(), now);
    // The cheap node reports a deep queue: the idle, 10% pricier node wins every time.
    r.record_health(NodeId(1), true, 20);
    for _ in 0..10 {
        let id = r
            .choose(&model(), &Constraints::default(), &[], now)
            .expect("route");
        assert_eq!(id, NodeId(2));
        r.finish(id, ok(), now);
    }
}

#[test]
fn constraints_filter_nodes() {
    let now = Instant::now();
    let mut conf = node(2, 500);
    conf.confidential = true;
    conf.collateral = Amount(50_000_000);
    let mut other_class = node(3, 50);
    other_class.class = Hash32([9; 32]);
    let mut r = router([node(1, 100), conf, other_class]);
    let m = model();

    let c = Constraints {
        require_confidential: true,
        ..Default::default()
    };
    assert_eq!(r.choose(&m, &c, &[], now), Ok(NodeId(2)));
    let c = Constraints {
        min_collateral: Some(Amount(10_000_000)),
        ..Default::default()
    };
    assert_eq!(r.choose(&m, &c, &[], now), Ok(NodeId(2)));
    let c = Constraints {
        node_class: Some(Hash32([9; 32])),
        ..Default::default()
    };
    assert_eq!(r.choose(&m, &c, &[], now), Ok(NodeId(3)));
    // An allow-list: the pricier listed node serves although a cheaper one is free.
    let c = Constraints {
        nodes: Some(vec![NodeId(2), NodeId(42)]),
        ..Default::default()
    };
    for _ in 0..5 {
        assert_eq!(r.choose(&m, &c, &[], now), Ok(NodeId(2)));
    }
    let c = Constraints {
        nodes: Some(vec![NodeId(1)]),
        require_confidential: true,
        ..Default::default()
    };
    assert_eq!(
        r.choose(&m, &c, &[], now),
        Err(NoRoute::Unsatisfiable(m.clone()))
    );
    let c = Constraints {
        max_price: Some(Amount(100)),
        require_confidential: true,
        ..Default::default()
    };
    assert_eq!(
        r.choose(&m, &c, &[], now),
        Err(NoRoute::Unsatisfiable(m.clone()))
    );
    let c = Constraints {
        max_price: Some(Amount(100)),
        ..Default::default()
    };
    for _ in 0..20 {
        let id = r.choose(&m, &c, &[], now).expect("route");
        assert!(id == NodeId(1) || id == NodeId(3));
    }
    // Excluding every match leaves nothing available.
    assert_eq!(
        r.choose(&m, &c, &[NodeId(1), NodeId(3)], now),
        Err(NoRoute::AllUnavailable(m.clone()))
    );
    let unknown = ModelId::new("nope");
    let err = r
        .choose(&unknown, &Constraints::default(), &[], now)
        .expect_err("unknown");
    assert_eq!(ApiError::from(err).status().as_u16(), 404);
}

#[test]
fn breaker_takes_a_failing_node_out_and_probes_it_back() {
    let t0 = Instant::now();
    let cfg = BreakerConfig {
        failure_threshold: 3,
        cooldown: Duration::from_secs(30),
    };
    let mut r = Router::with_rng(RouterWeights::default(), cfg, StdRng::seed_from_u64(1));
    r.upsert_node(node(1, 100));
    r.upsert_node(node(2, 200));
    let m = model();
    let c = Constraints::default();
    for _ in 0..3 {
        assert_eq!(r.choose(&m, &c, &[NodeId(2)], t0), Ok(NodeId(1)));
        r.finish(NodeId(1), Outcome::Failure, t0);
    }
    assert!(matches!(
        r.breaker_state(NodeId(1), t0),
        Some(BreakerState::Open { .. })
    ));
    assert_eq!(r.stats(NodeId(1)).map(|s| s.consecutive_failures), Some(3));
    // While open, everything goes to node 2.
    assert_eq!(
        r.choose(&m, &c, &[], t0 + Duration::from_secs(29)),
        Ok(NodeId(2))
    );
    r.finish(NodeId(2), ok(), t0);
    // After the cooldown node 1 gets exactly one probe.
    let t1 = t0 + Duration::from_secs(30);
    assert_eq!(r.choose(&m, &c, &[NodeId(2)], t1), Ok(NodeId(1)));
    assert_eq!(
        r.choose(&m, &c, &[NodeId(2)], t1),
        Err(NoRoute::AllUnavailable(m.clone()))
    );
    r.finish(NodeId(1), ok(), t1);
    assert_eq!(
        r.breaker_state(NodeId(1), t1),
        Some(BreakerState::Closed { failures: 0 })
    );
}

#[test]
fn power_of_two_choices_spreads_load_deterministically() {
    let now = Instant::now();
    let m = model();
    let c = Constraints::default();
    // Identical nodes, each request finished at once: draws are spread evenly.
    let mut r = router((1..=4).map(|i| node(i, 100)));
    let mut counts = BTreeMap::new();
    for _ in 0..400 {
        let id = r.choose(&m, &c, &[], now).expect("route");
        r.finish(id, ok(), now);
        *counts.entry(id).or_insert(0u32) += 1;
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(
        counts.values().all(|&n| (60..=140).contains(&n)),
        "{counts:?}"
    );

    // Requests held open: in-flight counts stay balanced.
    let mut r = router((1..=4).map(|i| node(i, 100)));
    for _ in 0..40 {
        r.choose(&m, &c, &[], now).expect("route");
    }
    let inflight = r.in_flight();
    let (lo, hi) = (
        inflight.values().min().copied(),
        inflight.values().max().copied(),
    );
    assert_eq!(inflight.values().sum::<u32>(), 40);
    assert!(hi.unwrap_or(0) - lo.unwrap_or(0) <= 2, "{inflight:?}");
}

#[test]
fn quorum_picks_one_class_with_distinct_operators() {
    let now = Instant::now();
    let m = model();
    // Class A: three nodes but two share an operator. Class B: three distinct operators.
    let mut a1 = node(1, 100);
    let mut a2 = node(2, 100);
    a2.operator = a1.operator;
    let mut a3 = node(3, 100);
    for n in [&mut a1, &mut a2, &mut a3] {
        n.class = Hash32([0xA; 32]);
    }
    let mut bs: Vec<NodeView> = (4..=6).map(|i| node(i, 150)).collect();
    for n in &mut bs {
        n.class = Hash32([0xB; 32]);
    }
    let mut r = router([a1, a2, a3].into_iter().chain(bs));
    let c = Constraints::default();
    let two = r
        .choose_quorum(&m, &c, 2, &[], now)
        .expect("class A has 2 operators");
    assert_eq!(two.len(), 2);
    assert!(two.contains(&NodeId(3)), "{two:?}");
    let three = r.choose_quorum(&m, &c, 3, &[], now).expect("class B");
    assert_eq!(three, vec![NodeId(4), NodeId(5), NodeId(6)]);
    let err = r.choose_quorum(&m, &c, 4, &[], now).expect_err("too many");
    assert_eq!(
        err,
        NoRoute::NoQuorum {
            model: m.clone(),
            wanted: 4,
            have: 3
        }
    );
    assert_eq!(ApiError::from(err).status().as_u16(), 503);
}
