//! The HTTP API and client against a real server.

use futures::StreamExt;
use sortition_ledger::{Event, Tx, TxKind};
use sortition_ledger_client::Cursor;
use sortition_ledger_service::{LedgerServiceConfig, run_in_background};
use sortition_types::{Amount, Keypair};

use crate::{admin, faucet, genesis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_query_refuse_and_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bg = run_in_background(LedgerServiceConfig::new(dir.path(), genesis()))
        .await
        .expect("start");
    let c = bg.client();
    let alice = Keypair::from_seed(b"alice");
    let bob = Keypair::from_seed(b"bob");

    // Only the genesis admin may mint: alice's own faucet is refused (422, nothing minted).
    let e = c
        .send(
            &alice,
            TxKind::Faucet {
                to: alice.public(),
                amount: Amount(1_000),
            },
        )
        .await
        .expect_err("a non-admin faucet");
    assert_eq!(e.code(), Some("not_admin"), "{e}");
    let r = c
        .send(
            &admin(),
            TxKind::Faucet {
                to: alice.public(),
                amount: Amount(1_000),
            },
        )
        .await
        .expect("faucet");
    assert_eq!(
        r.events,
        vec![Event::Minted {
            to: alice.public(),
            amount: Amount(1_000)
        }]
    );
    let r2 = c
        .send(
            &alice,
            TxKind::Transfer {
                to: bob.public(),
                amount: Amount(400),
            },
        )
        .await
        .expect("transfer");
    assert!(r2.height > r.height);
    assert_eq!(
        c.account(&bob.public()).await.expect("account").balance,
        Amount(400)
    );
    // The refused faucet used no nonce; the transfer used alice's first.
    assert_eq!(c.next_nonce(&alice.public()).await.expect("nonce"), 1);
    assert_eq!(
        c.find_tx(&r2.tx_hash).await.expect("located").height,
        r2.height
    );

    // Refusals: replay (409), bad signature (400), insufficient funds (422), unknown (404).
    let replay = faucet(&alice, 0, 1);
    let e = c.submit(&replay).await.expect_err("replay");
    assert_eq!(e.code(), Some("wrong_nonce"));
    assert!(matches!(
        e,
        sortition_ledger_client::ClientError::Api { status: 409, .. }
    ));
    let mut forged = faucet(&alice, 2, 1);
    forged.signature.0[3] ^= 1;
    assert!(matches!(
        c.submit(&forged).await,
        Err(sortition_ledger_client::ClientError::Api { status: 400, .. })
    ));
    let e = c
        .send(
            &bob,
            TxKind::Transfer {
                to: alice.public(),
                amount: Amount(401),
            },
        )
        .await
        .expect_err("too poor");
    assert!(
        matches!(e, sortition_ledger_client::ClientError::Api { status: 422, ref code, .. } if code == "insufficient_funds")
    );
    assert!(c.stack(sortition_types::StackId(7)).await.is_err());
    let wrong_chain = Tx {
        chain_id: "other".into(),
        sender: bob.public(),
        nonce: 0,
        expires_at_ms: u64::MAX,
        kind: TxKind::PauseNode,
    }
    .sign(&bob);
    assert!(matches!(
        c.submit(&wrong_chain).await,
        Err(sortition_ledger_client::ClientError::Api { status: 400, .. })
    ));

    let status = c.status().await.expect("status");
    assert_eq!(status.chain_id, "devnet");
    assert_eq!(c.genesis().await.expect("genesis"), genesis());
    assert!(c.nodes().await.expect("nodes").is_empty());
    assert!(
        c.stacks_of(&alice.public())
            .await
            .expect("stacks")
            .is_empty()
    );
    assert!(c.slashes().await.expect("slashes").is_empty());

    // Events: catch-up from storage, then live, with resumable cursors.
    let mut s = Box::pin(c.events(Cursor::START).await.expect("stream"));
    let (c1, e1) = s.next().await.expect("item").expect("event");
    assert_eq!(
        e1,
        Event::Minted {
            to: alice.public(),
            amount: Amount(1_000)
        }
    );
    let (c2, e2) = s.next().await.expect("item").expect("event");
    assert!(c2 > c1 && matches!(e2, Event::Transferred { .. }));
    let live = c
        .send(
            &bob,
            TxKind::Transfer {
                to: alice.public(),
                amount: Amount(1),
            },
        )
        .await
        .expect("transfer");
    let (c3, _) = s.next().await.expect("item").expect("event");
    assert_eq!(c3.height, live.height);
    let mut resumed = Box::pin(c.events(c2).await.expect("stream"));
    assert_eq!(resumed.next().await.expect("item").expect("event").0, c2);

    let metrics = reqwest::get(format!("{}/metrics", bg.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(metrics.contains("sortition_ledger_height"), "{metrics}");
    assert!(metrics.contains("sortition_ledger_tx_errors_total"));
    drop((s, resumed));
    bg.shutdown().await.expect("shutdown");
}

/// Issue 18: a block that cannot be persisted (a full disk) is not acknowledged — its
/// submitter gets 503 with `Retry-After`, and nothing of it is visible — and the ledger heals
/// by itself: once writes succeed again the same transaction is accepted, without a restart,
/// and a replay of the database agrees with the served state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpersisted_block_is_not_acknowledged_and_the_ledger_heals() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No idle blocks: only these transactions' blocks meet the injected failures.
    let mut cfg = LedgerServiceConfig::new(dir.path(), genesis());
    cfg.idle_block_interval = None;
    let bg = run_in_background(cfg.clone()).await.expect("start");
    let c = bg.client();
    let w = crate::writer(0);
    c.submit(&crate::self_transfer(&w, 0, 1))
        .await
        .expect("a first transfer");
    bg.handle.fail_next_block_writes(3);
    let tx = crate::self_transfer(&w, 1, 2);
    let e = c
        .submit(&tx)
        .await
        .expect_err("refused while the disk is full");
    assert!(
        matches!(
            e,
            sortition_ledger_client::ClientError::Api { status: 503, .. }
        ),
        "{e}"
    );
    assert!(
        c.find_tx(&tx.hash()).await.is_err(),
        "an unacknowledged tx is visible"
    );
    assert_eq!(c.next_nonce(&w.public()).await.expect("nonce"), 1);
    // The fault passes (the injected failures run out): the same transaction goes through.
    let mut accepted = None;
    for _ in 0..20 {
        match c.submit(&tx).await {
            Ok(r) => {
                accepted = Some(r);
                break;
            }
            Err(e) => assert!(
                matches!(
                    e,
                    sortition_ledger_client::ClientError::Api { status: 503, .. }
                ),
                "{e}"
            ),
        }
    }
    let r = accepted.expect("the ledger healed without a restart");
    assert_eq!(
        c.find_tx(&r.tx_hash).await.expect("located").height,
        r.height
    );
    assert_eq!(c.next_nonce(&w.public()).await.expect("nonce"), 2);
    let served = c.status().await.expect("status");
    bg.shutdown().await.expect("shutdown");
    let again = run_in_background(cfg).await.expect("restart");
    let replayed = again.client().status().await.expect("status");
    assert_eq!(replayed.state_root, served.state_root);
    assert_eq!(replayed.height, served.height);
    again.shutdown().await.expect("shutdown");
}
