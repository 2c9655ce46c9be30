//! Four validators on loopback, in one process (each with its own runtime on its own thread):
//! transactions submitted at any of them become final at all of them, with the same state
//! roots, and σ_h checks against the group key.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use sortition_ledger::{Genesis, TxKind};
use sortition_ledger_client::LedgerClient;
use sortition_types::{Amount, Keypair};
use sortition_validator::{Timing, ValidatorConfig};

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

async fn wait_for_height(clients: &[LedgerClient], height: u64) {
    for c in clients {
        for _ in 0..400 {
            if c.status()
                .await
                .map(|s| s.height >= height)
                .unwrap_or(false)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_validators_finalize_the_same_ledger() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tmp");
    let admin = Keypair::from_seed(b"validators-admin");
    let mut genesis = Genesis::devnet("bft-test", admin.public());
    let dirs: Vec<PathBuf> = (0..4).map(|i| tmp.path().join(format!("v{i}"))).collect();
    let keys = sortition_validator::setup::deal(&mut genesis, &dirs).expect("deal");
    let apis: Vec<SocketAddr> = (0..4).map(|_| free_port()).collect();
    let p2ps: Vec<SocketAddr> = (0..4).map(|_| free_port()).collect();
    let peers: Vec<(String, SocketAddr)> = keys.iter().cloned().zip(p2ps.iter().copied()).collect();
    for i in 0..4 {
        let cfg = ValidatorConfig {
            data_dir: dirs[i].clone(),
            genesis: genesis.clone(),
            listen: apis[i],
            p2p: p2ps[i],
            peers: peers.clone(),
            timing: Timing::default(),
            ack_timeout: Duration::from_secs(30),
            on_listening: None,
            byzantine_conflicter: false,
        };
        std::thread::spawn(move || {
            if let Err(e) = sortition_validator::run(cfg) {
                eprintln!("validator {i} stopped: {e}");
            }
        });
    }
    let clients: Vec<LedgerClient> = apis
        .iter()
        .map(|a| LedgerClient::new(format!("http://{a}")))
        .collect();
    // Wait for the APIs.
    for c in &clients {
        for _ in 0..100 {
            if c.status().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Submit at each validator in turn.
    let user = Keypair::from_seed(b"validators-user");
    for (i, c) in clients.iter().enumerate() {
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            c.send(
                &admin,
                TxKind::Faucet {
                    to: user.public(),
                    amount: Amount(10 + i as u64),
                },
            ),
        )
        .await
        .expect("final within 60 s")
        .expect("accepted");
        assert!(r.height >= 1, "faucet {i}: {r:?}");
        // Replicas apply final blocks independently: the next sender reads its nonce from
        // another validator, so wait until all of them have this block.
        wait_for_height(&clients, r.height).await;
    }
    // Every replica reaches the same height with the same root.
    let target = clients[0].status().await.expect("status").height;
    for c in &clients {
        for _ in 0..200 {
            if c.status().await.expect("status").height >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let a = c.account(&user.public()).await.expect("account");
        assert_eq!(a.balance, Amount(10 + 11 + 12 + 13));
    }
    let url = |i: usize, h: u64| format!("http://{}/v1/blocks/{h}", apis[i]);
    let http = reqwest::Client::new();
    for h in 1..=target {
        let mut roots = Vec::new();
        for i in 0..4 {
            let b: serde_json::Value = http
                .get(url(i, h))
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            roots.push((b["state_root"].clone(), b["beacon"].clone()));
        }
        assert!(
            roots.windows(2).all(|w| w[0] == w[1]),
            "height {h}: {roots:?}"
        );
    }
    light_client_checks(&genesis, &clients, target).await;
}

/// A light client holding only the genesis verifies, at every validator, that each block's
/// header is final (a quorum's certificate over its recomputed digest, directly or through a
/// descendant's parent links), and refuses headers that were altered or a foreign validator set.
async fn light_client_checks(genesis: &Genesis, clients: &[LedgerClient], target: u64) {
    use sortition_validator::light::{LightError, verify_block, verify_headers};
    for c in clients {
        for h in 1..=target {
            let f = verify_block(c, genesis, h, 64)
                .await
                .unwrap_or_else(|e| panic!("block {h}: {e}"));
            assert_eq!(f.from, h);
            assert!(f.signers >= 3 && f.validators == 4, "{f:?}");
        }
    }
    // The newest block with a certificate of its own, and its header altered in each field the
    // certificate covers.
    let c = &clients[0];
    let mut h = target;
    let b = loop {
        let b = c.block(h).await.expect("block");
        if verify_headers(genesis, std::slice::from_ref(&b)).is_ok() {
            break b;
        }
        h -= 1;
        assert!(h > 0, "no block with its own certificate");
    };
    let mut later = b.clone();
    later.timestamp_ms += 1;
    let mut other_beacon = b.clone();
    other_beacon.beacon = match b.beacon {
        Some(_) => None,
        None => Some(sortition_ledger::BeaconSig([1; 48])),
    };
    for (what, bad) in [("timestamp", later), ("beacon", other_beacon)] {
        assert!(
            matches!(
                verify_headers(genesis, &[bad]),
                Err(LightError::WrongPayload { .. })
            ),
            "altered {what} accepted"
        );
    }
    let mut no_proof = b.clone();
    no_proof.certificate = None;
    assert!(matches!(
        verify_headers(genesis, &[no_proof]),
        Err(LightError::NoProof { .. })
    ));
    // A chain whose parent link is broken: the block before, with its timestamp altered.
    if h >= 2 {
        let mut prev = c.block(h - 1).await.expect("block");
        prev.timestamp_ms += 1;
        assert!(matches!(
            verify_headers(genesis, &[prev, b.clone()]),
            Err(LightError::BrokenLink { .. })
        ));
    }
    // Another validator set (same chain otherwise) does not accept these signatures.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut foreign = genesis.clone();
    let dirs: Vec<PathBuf> = (0..4).map(|i| tmp.path().join(format!("f{i}"))).collect();
    sortition_validator::setup::deal(&mut foreign, &dirs).expect("deal");
    assert!(matches!(
        verify_headers(&foreign, &[b]),
        Err(LightError::BadSignatures { .. })
    ));
}

/// A validator refuses to start, saying why, when its genesis, key or share do not fit.
#[test]
fn a_validator_with_an_inconsistent_setup_is_refused_at_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let admin = Keypair::from_seed(b"validators-admin");
    let mut genesis = Genesis::devnet("bft-refuse", admin.public());
    let dirs: Vec<PathBuf> = (0..4).map(|i| tmp.path().join(format!("v{i}"))).collect();
    sortition_validator::setup::deal(&mut genesis, &dirs).expect("deal");
    let cfg = |g: Genesis, dir: PathBuf| ValidatorConfig {
        data_dir: dir,
        genesis: g,
        listen: free_port(),
        p2p: free_port(),
        peers: vec![],
        timing: Timing::default(),
        ack_timeout: Duration::from_secs(1),
        on_listening: None,
        byzantine_conflicter: false,
    };
    let mut g = genesis.clone();
    g.beacon.threshold = 4;
    let e = sortition_validator::run(cfg(g, dirs[0].clone())).unwrap_err();
    assert!(e.to_string().contains("quorum of 3"), "{e}");
    // A directory with no key.
    let e = sortition_validator::run(cfg(genesis.clone(), tmp.path().join("empty"))).unwrap_err();
    assert!(e.to_string().contains("no validator key"), "{e}");
    // Another chain's validator: its key is not in this genesis.
    let mut other = Genesis::devnet("bft-other", admin.public());
    let odirs: Vec<PathBuf> = (0..4).map(|i| tmp.path().join(format!("o{i}"))).collect();
    sortition_validator::setup::deal(&mut other, &odirs).expect("deal");
    let e = sortition_validator::run(cfg(genesis.clone(), odirs[0].clone())).unwrap_err();
    assert!(e.to_string().contains("not in the genesis"), "{e}");
    // A peer that is not a validator.
    let mut c = cfg(genesis, dirs[1].clone());
    c.peers = vec![(other.validators[0].clone(), free_port())];
    let e = sortition_validator::run(c).unwrap_err();
    assert!(
        e.to_string().contains("not a validator of the genesis"),
        "{e}"
    );
}
