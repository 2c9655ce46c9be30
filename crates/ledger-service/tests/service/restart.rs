//! Restart: the state is rebuilt by replay, checked against the stored roots; another genesis
//! is refused.

use sortition_ledger::TxKind;
use sortition_ledger_service::{
    LedgerServiceConfig, ServiceError, run_in_background, start_sequencer,
};
use sortition_types::{Amount, Keypair};

use crate::genesis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replays_to_the_same_root_and_refuses_other_genesis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = genesis();
    g.models.push(sortition_ledger::ModelSpec {
        id: sortition_types::ModelId::new("m"),
        weights_digest: sortition_types::sha256(b"w"),
        tokenizer_digest: sortition_types::sha256(b"t"),
        policy: Default::default(),
    });
    let cfg = LedgerServiceConfig::new(dir.path(), g);
    let bg = run_in_background(cfg.clone()).await.expect("start");
    let c = bg.client();
    let k = Keypair::from_seed(b"k");
    for i in 1..=5 {
        c.send(
            &crate::admin(),
            TxKind::Faucet {
                to: k.public(),
                amount: Amount(i),
            },
        )
        .await
        .expect("faucet");
    }
    // A node registered, then updated twice (same class, then a new one): blocks holding
    // every shape of `UpdateNode` decode again on restart.
    let node = Keypair::from_seed(b"node");
    c.send(
        &k,
        TxKind::Transfer {
            to: node.public(),
            amount: Amount(5),
        },
    )
    .await
    .expect("transfer");
    let class = |engine: &str| sortition_types::NodeClass {
        engine_version: engine.into(),
        model_digest: sortition_types::sha256(b"w"),
        quantization: "q8_0".into(),
        device: "cpu".into(),
        kernels: "k".into(),
    };
    let register = TxKind::RegisterNode {
        endpoint: "http://127.0.0.1:9".into(),
        confidential_key: sortition_ledger::SealingKey(sortition_types::Hash32([0; 32])),
        attestation: Vec::new(),
        class: class("e1"),
        offers: vec![sortition_ledger::Offer {
            model: sortition_types::ModelId::new("m"),
            price_per_m_input: Amount(1),
            price_per_m_output: Amount(1),
        }],
        capacity: 1,
        collateral: Amount(0),
    };
    c.send(&node, register).await.expect("registered");
    for new_class in [None, Some(class("e2"))] {
        let update = TxKind::UpdateNode {
            endpoint: None,
            offers: None,
            capacity: Some(2),
            add_collateral: Amount::ZERO,
            class: new_class,
        };
        c.send(&node, update).await.expect("updated");
    }
    let before = c.status().await.expect("status");
    bg.shutdown().await.expect("shutdown");

    let bg = run_in_background(cfg.clone()).await.expect("restart");
    assert_eq!(bg.client().status().await.expect("status"), before);
    assert_eq!(
        bg.client()
            .account(&k.public())
            .await
            .expect("acct")
            .balance,
        Amount(10)
    );
    let nodes = bg.client().nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].class, class("e2"));
    bg.shutdown().await.expect("shutdown");

    let mut other = cfg.clone();
    other.genesis.chain_id = "other".into();
    let err = start_sequencer(&other).err().expect("refused");
    assert!(matches!(err, ServiceError::GenesisMismatch), "{err}");
}
