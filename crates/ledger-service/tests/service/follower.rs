//! The event follower of `sortition-ledger-client` against a real ledger, through a TCP relay
//! that the test cuts to break the stream as a network fault would.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sortition_ledger::{Event, TxKind};
use sortition_ledger_client::{Cursor, CursorStore, EventHandler, LedgerClient, MemoryCursor};
use sortition_ledger_service::{LedgerServiceConfig, run_in_background};
use sortition_types::{Amount, Keypair};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{admin, genesis};

/// Relays connections on a port of its own to `to`; `cut` closes every open one.
struct Relay {
    url: String,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(to: &str) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let to = to.trim_start_matches("http://").to_string();
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let to = to.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().expect("relay").push(task);
            }
        });
        Relay { url, conns, accept }
    }
    fn cut(&self) {
        for t in self.conns.lock().expect("relay").drain(..) {
            t.abort();
        }
    }
}

/// Forwards every event and counts the (re)connections.
struct Tap {
    events: mpsc::UnboundedSender<(Cursor, Event)>,
    connected: Arc<AtomicUsize>,
}

impl EventHandler for Tap {
    async fn connected(&mut self, _client: &LedgerClient) {
        self.connected.fetch_add(1, Ordering::SeqCst);
    }
    async fn handle(&mut self, _client: &LedgerClient, at: Cursor, event: Event) {
        let _ = self.events.send((at, event));
    }
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<(Cursor, Event)>) -> (Cursor, Event) {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
        .expect("follower alive")
}

fn mint(to: &Keypair, amount: u64) -> TxKind {
    TxKind::Faucet {
        to: to.public(),
        amount: Amount(amount),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_resumes_after_a_cut_stream_without_losing_or_repeating_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = LedgerServiceConfig::new(dir.path(), genesis());
    cfg.idle_block_interval = None;
    let bg = run_in_background(cfg).await.expect("start");
    let direct = bg.client();
    let relay = Relay::start(&bg.url).await;
    let alice = Keypair::from_seed(b"follower-alice");
    direct
        .send(&admin(), mint(&alice, 1))
        .await
        .expect("mint 1");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let connected = Arc::new(AtomicUsize::new(0));
    let cursor = MemoryCursor::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let follower = tokio::spawn(sortition_ledger_client::follow(
        "test",
        LedgerClient::new(&relay.url),
        cursor.clone(),
        Tap {
            events: tx,
            connected: connected.clone(),
        },
        async move {
            let _ = stopped.await;
        },
    ));

    // No stored cursor: the first event of the chain comes first.
    let (c1, e1) = next_event(&mut rx).await;
    assert_eq!(
        e1,
        Event::Minted {
            to: alice.public(),
            amount: Amount(1)
        }
    );
    assert_eq!(connected.load(Ordering::SeqCst), 1);

    // The stream breaks; the event sent meanwhile arrives after the reconnection, once.
    relay.cut();
    direct
        .send(&admin(), mint(&alice, 2))
        .await
        .expect("mint 2");
    let (c2, e2) = next_event(&mut rx).await;
    assert!(c2 > c1);
    assert_eq!(
        e2,
        Event::Minted {
            to: alice.public(),
            amount: Amount(2)
        }
    );
    assert_eq!(connected.load(Ordering::SeqCst), 2, "reconnected once");
    direct
        .send(&admin(), mint(&alice, 3))
        .await
        .expect("mint 3");
    let (c3, e3) = next_event(&mut rx).await;
    assert!(c3 > c2);
    assert_eq!(
        e3,
        Event::Minted {
            to: alice.public(),
            amount: Amount(3)
        }
    );

    // The cursor is stored after each handled event; shutdown ends the follower.
    stop.send(()).expect("follower alive");
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("follower stops")
        .expect("no panic");
    assert_eq!(cursor.load(), Some(c3.next()));
    assert!(rx.try_recv().is_err(), "no event handled twice");

    relay.accept.abort();
    relay.cut();
    drop(direct);
    bg.shutdown().await.expect("shutdown");
}

/// A follower started from a stored cursor hands only the events from it on, and one whose
/// ledger cannot be reached keeps trying until it can, or until its shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_starts_at_the_stored_cursor_and_stops_while_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = LedgerServiceConfig::new(dir.path(), genesis());
    cfg.idle_block_interval = None;
    let bg = run_in_background(cfg).await.expect("start");
    let bob = Keypair::from_seed(b"follower-bob");
    let first = bg
        .client()
        .send(&admin(), mint(&bob, 1))
        .await
        .expect("mint");
    bg.client()
        .send(&admin(), mint(&bob, 2))
        .await
        .expect("mint");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let from = Cursor {
        height: first.height + 1,
        index: 0,
    };
    let follower = tokio::spawn(sortition_ledger_client::follow(
        "test",
        bg.client(),
        MemoryCursor::starting_at(from),
        Tap {
            events: tx,
            connected: Default::default(),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let (_, e) = next_event(&mut rx).await;
    assert_eq!(
        e,
        Event::Minted {
            to: bob.public(),
            amount: Amount(2)
        }
    );
    stop.send(()).expect("alive");
    follower.await.expect("stops");
    bg.shutdown().await.expect("shutdown");

    // Nothing listens on a port just released: the follower retries until told to stop.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let (tx, _rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let follower = tokio::spawn(sortition_ledger_client::follow(
        "test",
        LedgerClient::new(url),
        MemoryCursor::default(),
        Tap {
            events: tx,
            connected: Default::default(),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!follower.is_finished(), "keeps retrying");
    stop.send(()).expect("alive");
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("stops while unreachable")
        .expect("no panic");
}

/// The chain head follows every block, empty ones included, so that a duty waiting for a
/// height (a deadline) is woken by the block that reaches it without asking for the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_head_sees_empty_blocks_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = LedgerServiceConfig::new(dir.path(), genesis());
    cfg.idle_block_interval = Some(Duration::from_millis(100));
    let bg = run_in_background(cfg).await.expect("start");
    let (stop, stopped) = oneshot::channel::<()>();
    let (head, follower) = sortition_ledger_client::ChainHead::follow(bg.client(), async move {
        let _ = stopped.await;
    });
    let follower = tokio::spawn(follower);
    let target = bg.client().status().await.expect("status").height + 5;
    tokio::time::timeout(Duration::from_secs(20), head.reached(target))
        .await
        .expect("five empty blocks within 20 s");
    assert!(head.now() >= target);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower stops on shutdown")
        .expect("task");
    bg.shutdown().await.expect("stop");
}
