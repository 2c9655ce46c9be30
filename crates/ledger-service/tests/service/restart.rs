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
    let cfg = LedgerServiceConfig::new(dir.path(), genesis());
    let bg = run_in_background(cfg.clone()).await.expect("start");
    let c = bg.client();
    let k = Keypair::from_seed(b"k");
    for i in 1..=5 {
        c.send(
            &k,
            TxKind::Faucet {
                to: k.public(),
                amount: Amount(i),
            },
        )
        .await
        .expect("faucet");
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
        Amount(15)
    );
    bg.shutdown().await.expect("shutdown");

    let mut other = cfg.clone();
    other.genesis.chain_id = "other".into();
    let err = start_sequencer(&other).err().expect("refused");
    assert!(matches!(err, ServiceError::GenesisMismatch), "{err}");
}
