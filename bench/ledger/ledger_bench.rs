//! Sequencer throughput: pre-signed transfers, stack purchases and claims, applied AND
//! durably persisted (one fsync'd redb commit per block) through the in-process Handle.
//!
//! Run: `cargo run --release -p sortition-ledger-service --example ledger_bench [USERS]`

use std::time::{Duration, Instant};

use sortition_ledger::*;
use sortition_ledger_service::{Handle, LedgerServiceConfig, start_sequencer};
use sortition_types::{Amount, Keypair, ModelId, NodeClass, NodeId, Units, sha256};

const NODES: usize = 32;
const CHAIN: &str = "bench";

fn tx(k: &Keypair, nonce: u64, kind: TxKind) -> SignedTx {
    Tx {
        chain_id: CHAIN.into(),
        sender: k.public(),
        nonce,
        expires_at_ms: u64::MAX,
        kind,
    }
    .sign(k)
}

fn model() -> ModelId {
    ModelId::new("bench-model")
}

fn genesis(admin: &Keypair, funded: &[Keypair]) -> Genesis {
    let mut g = Genesis::devnet(CHAIN, admin.public());
    g.balances = funded
        .iter()
        .map(|k| (k.public(), Amount(1_000_000_000_000)))
        .collect();
    g.models = vec![ModelSpec {
        id: model(),
        weights_digest: sha256(b"w"),
        tokenizer_digest: sha256(b"t"),
        policy: SecurityPolicy {
            audit: Some(AuditPolicy {
                q_ppm: 10_000,
                k: 2,
                method: Default::default(),
            }),
            quorum: None,
            confidential_required: false,
            slash_bps: 5_000,
            cost_per_request: Amount(1_000),
            audit_reward: Amount(1_000),
            colluding_share_ppm: 100_000,
        },
    }];
    g
}

/// Submits each sender's sequence in order (pipelined), all senders concurrently.
async fn run(h: &Handle, per_sender: Vec<Vec<SignedTx>>) -> (usize, usize, Duration) {
    let n: usize = per_sender.iter().map(Vec::len).sum();
    let start = Instant::now();
    let tasks: Vec<_> = per_sender
        .into_iter()
        .map(|txs| {
            let h = h.clone();
            tokio::spawn(async move { h.submit_many(txs).await })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        for r in t.await.expect("task") {
            match r {
                Ok(inc) if inc.result.is_ok() => {}
                _ => refused += 1,
            }
        }
    }
    (n, refused, start.elapsed())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let users_n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_000);
    let admin = Keypair::from_seed(b"admin");
    let users: Vec<Keypair> = (0..users_n)
        .map(|i| Keypair::from_seed(format!("u{i}").as_bytes()))
        .collect();
    let nodes: Vec<Keypair> = (0..NODES)
        .map(|i| Keypair::from_seed(format!("n{i}").as_bytes()))
        .collect();
    let funded: Vec<Keypair> = users.iter().chain(&nodes).cloned().collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = LedgerServiceConfig::new(dir.path(), genesis(&admin, &funded));
    // Bigger blocks amortize the per-block state root and fsync.
    cfg.block_interval = Duration::from_millis(
        std::env::var("BLOCK_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    cfg.max_block_txs = 4096;
    let (h, _task) = start_sequencer(&cfg).expect("sequencer");

    let class = NodeClass {
        engine_version: "e".into(),
        model_digest: sha256(b"w"),
        quantization: "q".into(),
        device: "cpu".into(),
        kernels: "k".into(),
    };
    let regs = nodes
        .iter()
        .map(|k| {
            vec![tx(
                k,
                0,
                TxKind::RegisterNode {
                    endpoint: "http://n".into(),
                    confidential_key: SealingKey(sha256(b"ck")),
                    attestation: vec![],
                    class: class.clone(),
                    offers: vec![Offer {
                        model: model(),
                        price_per_m_input: Amount(100_000),
                        price_per_m_output: Amount(200_000),
                    }],
                    capacity: 8,
                    collateral: Amount(10_000_000_000),
                },
            )]
        })
        .collect();
    let (_, refused, _) = run(&h, regs).await;
    assert_eq!(refused, 0, "node registration");

    // Phase A: each user buys a stack, transfers, buys another stack.
    let t_sign = Instant::now();
    let phase_a: Vec<Vec<SignedTx>> = users
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let node = Some(NodeId((i % NODES) as u64));
            let buy = |n| {
                tx(
                    k,
                    n,
                    TxKind::BuyStack {
                        model: model(),
                        node,
                        max_price_per_m: Amount(1_000_000),
                        units: Units(100_000),
                        expires_at_ms: u64::MAX,
                    },
                )
            };
            vec![
                buy(0),
                tx(
                    k,
                    1,
                    TxKind::Transfer {
                        to: users[(i + 1) % users_n].public(),
                        amount: Amount(1),
                    },
                ),
                buy(2),
            ]
        })
        .collect();
    let sign_a = t_sign.elapsed();
    let (na, ra, ta) = run(&h, phase_a).await;

    // Phase B: each node claims every stack sold by it (4 receipts each), users transfer again.
    // Node ids follow registration order, which concurrency decides: map them back to keys.
    let stacks: Vec<(usize, sortition_types::StackId)> = h.with_ledger(|l| {
        let st = l.state();
        st.stacks
            .values()
            .filter_map(|s| {
                let op = st.nodes.get(&s.node)?.operator;
                Some((nodes.iter().position(|k| k.public() == op)?, s.id))
            })
            .collect()
    });
    let mut per_node: Vec<Vec<SignedTx>> = vec![vec![]; NODES];
    for (ni, stack) in stacks {
        let k = &nodes[ni];
        let nonce = 1 + per_node[ni].len() as u64;
        per_node[ni].push(tx(
            k,
            nonce,
            TxKind::ClaimStack {
                stack,
                units_used: Units(50_000),
                receipts_root: sha256(&stack.0.to_le_bytes()),
                receipt_count: 4,
            },
        ));
    }
    per_node.extend(users.iter().enumerate().map(|(i, k)| {
        vec![tx(
            k,
            3,
            TxKind::Transfer {
                to: users[(i + 7) % users_n].public(),
                amount: Amount(1),
            },
        )]
    }));
    let (nb, rb, tb) = run(&h, per_node).await;

    let m = &h.shared().metrics;
    use std::sync::atomic::Ordering::Relaxed;
    let blocks = m.blocks.load(Relaxed);
    let (apply_us, persist_us) = (
        m.block_apply_us_total.load(Relaxed),
        m.block_persist_us_total.load(Relaxed),
    );
    let (audits, claims) = h.with_ledger(|l| (l.state().audits.len(), l.state().claims.len()));
    println!(
        "phase A (buy/transfer/buy): {na} txs in {:.3}s = {:.0} tx/s ({ra} refused; signing took {:.2}s, untimed)",
        ta.as_secs_f64(),
        na as f64 / ta.as_secs_f64(),
        sign_a.as_secs_f64()
    );
    println!(
        "phase B (claims+transfers): {nb} txs in {:.3}s = {:.0} tx/s ({rb} refused; {claims} claims, {audits} audits opened)",
        tb.as_secs_f64(),
        nb as f64 / tb.as_secs_f64()
    );
    let total = (na + nb) as f64 / (ta + tb).as_secs_f64();
    println!(
        "TOTAL: {} txs in {:.3}s = {:.0} tx/s applied + fsync'd",
        na + nb,
        (ta + tb).as_secs_f64(),
        total
    );
    println!(
        "blocks: {blocks} (avg {:.0} txs), apply {:.2} ms/block, persist {:.2} ms/block (incl. fsync)",
        m.txs_applied.load(Relaxed) as f64 / blocks as f64,
        apply_us as f64 / 1e3 / blocks as f64,
        persist_us as f64 / 1e3 / blocks as f64
    );
}
