//! Crash safety: the real service in a child process, killed with SIGKILL while transactions
//! are in flight, five times. Every acknowledged transaction must survive, and the final state
//! root must equal a fresh replay of the database.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use sortition_ledger_client::LedgerClient;
use sortition_ledger_service::{LedgerServiceConfig, run_in_background};
use sortition_types::{Hash32, Keypair};

use crate::{genesis, self_transfer, writer};

fn spawn(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledger-devnode"))
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ledger-devnode");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read url");
    let url = line
        .trim()
        .strip_prefix("LISTENING ")
        .expect("LISTENING line")
        .to_string();
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<Keypair> = (0..8).map(writer).collect();
    let mut acked: Vec<Hash32> = Vec::new();
    for round in 0..5u64 {
        let (mut child, url) = spawn(dir.path());
        let c = LedgerClient::new(&url);
        // Every earlier acknowledgement survived the previous SIGKILL.
        for h in &acked {
            c.find_tx(h)
                .await
                .unwrap_or_else(|e| panic!("round {round}: acknowledged tx {h} lost: {e}"));
        }
        // Eight writers submit in a loop; the process is killed once 40 more acks arrived,
        // while other submissions are still in flight.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut writers = Vec::new();
        for k in keys.clone() {
            let (c, tx) = (c.clone(), tx.clone());
            writers.push(tokio::spawn(async move {
                let mut nonce = c.next_nonce(&k.public()).await.expect("nonce");
                loop {
                    match c.submit(&self_transfer(&k, nonce, 1 + round)).await {
                        Ok(r) => {
                            nonce += 1;
                            if tx.send(r.tx_hash).is_err() {
                                return;
                            }
                        }
                        Err(_) => return, // the server died mid-request: not acknowledged
                    }
                }
            }));
        }
        drop(tx);
        for _ in 0..40 {
            acked.push(rx.recv().await.expect("ack"));
        }
        child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
        child.wait().expect("reap");
        for w in writers {
            let _ = w.await;
        }
        while let Ok(h) = rx.try_recv() {
            acked.push(h); // acknowledged before the kill landed
        }
    }
    let (mut child, url) = spawn(dir.path());
    let c = LedgerClient::new(&url);
    for h in &acked {
        c.find_tx(h)
            .await
            .unwrap_or_else(|e| panic!("acknowledged tx {h} lost: {e}"));
    }
    let served = c.status().await.expect("status");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // A fresh in-process replay of the same database agrees.
    let bg = run_in_background(LedgerServiceConfig::new(dir.path(), genesis()))
        .await
        .expect("replay");
    assert_eq!(
        bg.client().status().await.expect("status").state_root,
        served.state_root
    );
    assert!(acked.len() >= 200);
    bg.shutdown().await.expect("shutdown");
}
