//! The client's per-key sender against a real ledger: concurrent sends of one key are
//! pipelined (consecutive nonces, several per block), and one refused transaction does not
//! take the others of its batch down with it.

use std::collections::BTreeSet;

use sortition_ledger::TxKind;
use sortition_ledger_service::{LedgerServiceConfig, run_in_background};
use sortition_types::{Amount, Keypair};

use crate::{genesis, writer};

fn transfer(to: &Keypair, amount: u64) -> TxKind {
    TxKind::Transfer {
        to: to.public(),
        amount: Amount(amount),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_of_one_key_share_blocks_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = LedgerServiceConfig::new(dir.path(), genesis());
    cfg.idle_block_interval = None;
    let bg = run_in_background(cfg).await.expect("start");
    let client = bg.client();
    let (from, to) = (writer(3), Keypair::from_seed(b"sender-to"));
    let before = client.account(&from.public()).await.expect("account").nonce;

    // 24 transfers at once, the 6th more than the sender holds: refused by the state
    // machine, which leaves its nonce unused, so the ones after it in its batch are refused
    // `wrong_nonce` and sent again by the client.
    let too_much = 10_000_000_000;
    let sends = (0..24u64).map(|i| {
        let (client, from, to) = (client.clone(), from.clone(), to.clone());
        tokio::spawn(async move {
            let amount = if i == 5 { too_much } else { 1 + i };
            (i, client.send(&from, transfer(&to, amount)).await)
        })
    });
    let mut heights = BTreeSet::new();
    let mut paid = 0;
    for s in futures::future::join_all(sends).await {
        let (i, r) = s.expect("task");
        match r {
            Ok(t) => {
                assert_ne!(i, 5, "the overspend was applied");
                heights.insert(t.height);
                paid += 1 + i;
            }
            Err(e) => {
                assert_eq!(i, 5, "transfer {i} failed: {e}");
                assert_eq!(e.code(), Some("insufficient_funds"), "{e}");
            }
        }
    }
    let after = client.account(&from.public()).await.expect("account").nonce;
    assert_eq!(
        after,
        before + 23,
        "one nonce per applied transaction, none skipped"
    );
    assert_eq!(
        client.account(&to.public()).await.expect("account").balance,
        Amount(paid)
    );
    eprintln!(
        "23 applied transactions of one key in {} blocks",
        heights.len()
    );
    assert!(
        heights.len() < 23,
        "23 transactions took {} blocks: they were not pipelined",
        heights.len()
    );
    bg.shutdown().await.expect("stop");
}

/// A caller that stops waiting (its future dropped while its batch is on the way) does not
/// take the other transactions of that batch down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_send_leaves_the_rest_of_its_batch_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = LedgerServiceConfig::new(dir.path(), genesis());
    cfg.idle_block_interval = None;
    let bg = run_in_background(cfg).await.expect("start");
    let client = bg.client();
    let (from, to) = (writer(4), Keypair::from_seed(b"sender-cancel-to"));
    let before = client.account(&from.public()).await.expect("account").nonce;
    let sends: Vec<_> = (0..10u64)
        .map(|i| {
            let (client, from, to) = (client.clone(), from.clone(), to.clone());
            tokio::spawn(async move { client.send(&from, transfer(&to, 1 + i)).await })
        })
        .collect();
    // The first caller gives up at once, whether or not it was the one sending the batch.
    sends[0].abort();
    let mut answered = 0;
    for s in sends.into_iter().skip(1) {
        s.await.expect("task").expect("send");
        answered += 1;
    }
    assert_eq!(answered, 9);
    let after = client.account(&from.public()).await.expect("account").nonce;
    assert!(
        after == before + 9 || after == before + 10,
        "nonce {before} -> {after}"
    );
    bg.shutdown().await.expect("stop");
}
