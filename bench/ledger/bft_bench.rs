//! Finalized transactions per second and finality latency over HTTP, side by side in one run:
//! the embedded single sequencer, one validator, and four validators under BFT consensus
//! (commonware simplex), all on loopback in this process.
//!
//! Each of SENDERS accounts (funded in the genesis) sends TXS transfers one after another
//! (`POST /v1/tx`, answered when the transaction is final and persisted), all senders at once,
//! spread over the validators' APIs. Latency is submit → acknowledgement.
//!
//! ```text
//! cargo run --release -p sortition-validator --example bft_bench [SENDERS=400] [TXS=10]
//! ```

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sortition_ledger::{Genesis, Tx, TxKind};
use sortition_types::{Amount, Keypair};
use sortition_validator::{Timing, ValidatorConfig};

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Outcome {
    txs: usize,
    refused: usize,
    secs: f64,
    latencies_ms: Vec<f64>,
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn load(urls: Vec<String>, chain: String, senders: Vec<Keypair>, txs: usize) -> Outcome {
    let http = reqwest::Client::new();
    let sink = Keypair::from_seed(b"bench-sink").public();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, k) in senders.into_iter().enumerate() {
        let url = format!("{}/v1/tx", urls[i % urls.len()]);
        let http = http.clone();
        let chain = chain.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut refused = 0;
            for nonce in 0..txs as u64 {
                let exp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64 + 120_000);
                let tx = Tx {
                    chain_id: chain.clone(),
                    sender: k.public(),
                    nonce,
                    expires_at_ms: exp,
                    kind: TxKind::Transfer {
                        to: sink,
                        amount: Amount(1),
                    },
                }
                .sign(&k);
                let t0 = Instant::now();
                let ok = match http.post(&url).json(&tx).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                } else {
                    refused += 1;
                }
            }
            (lat, refused)
        }));
    }
    let mut all = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (l, r) = t.await.expect("sender");
        all.extend(l);
        refused += r;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Outcome {
        txs: all.len(),
        refused,
        secs,
        latencies_ms: all,
    }
}

fn report(name: &str, o: &Outcome) {
    println!(
        "{name:<28} {:>6} txs in {:>6.2}s = {:>7.0} tx/s final; latency p50 {:>7.1} ms, p99 {:>7.1} ms; {} refused",
        o.txs,
        o.secs,
        o.txs as f64 / o.secs,
        pct(&o.latencies_ms, 0.5),
        pct(&o.latencies_ms, 0.99),
        o.refused
    );
}

fn genesis(senders: &[Keypair], chain: &str) -> Genesis {
    let admin = Keypair::from_seed(b"bench-admin");
    let mut g = Genesis::devnet(chain, admin.public());
    g.balances = senders
        .iter()
        .map(|k| (k.public(), Amount(1_000_000)))
        .collect();
    g
}

fn start_validators(
    tmp: &std::path::Path,
    n: usize,
    g: &mut Genesis,
    interval: Duration,
) -> Vec<String> {
    let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.join(format!("v{n}-{i}"))).collect();
    let keys = sortition_validator::setup::deal(g, &dirs).expect("deal");
    let apis: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
    let p2ps: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
    let peers: Vec<(String, SocketAddr)> = keys.into_iter().zip(p2ps.iter().copied()).collect();
    for i in 0..n {
        let cfg = ValidatorConfig {
            data_dir: dirs[i].clone(),
            genesis: g.clone(),
            listen: apis[i],
            p2p: p2ps[i],
            peers: peers.clone(),
            timing: Timing {
                block_interval: interval,
                ..Timing::default()
            },
            ack_timeout: Duration::from_secs(60),
            on_listening: None,
            byzantine_conflicter: false,
        };
        std::thread::spawn(move || {
            let _ = sortition_validator::run(cfg);
        });
    }
    apis.iter().map(|a| format!("http://{a}")).collect()
}

async fn wait_up(urls: &[String]) {
    let http = reqwest::Client::new();
    for u in urls {
        for _ in 0..200 {
            if http
                .get(format!("{u}/v1/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Each configuration runs in its own process (validator threads cannot be stopped, and idle
/// ones would steal CPU from the next measurement): without `BENCH_MODE` this runs itself once
/// per mode, in order.
fn main() {
    match std::env::var("BENCH_MODE") {
        Ok(mode) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(measure(&mode));
            // Validator threads run until the process ends.
            std::process::exit(0);
        }
        Err(_) => {
            let exe = std::env::current_exe().expect("exe");
            for mode in ["sequencer", "1", "4"] {
                let status = std::process::Command::new(&exe)
                    .args(std::env::args().skip(1))
                    .env("BENCH_MODE", mode)
                    .status()
                    .expect("run");
                assert!(status.success(), "mode {mode} failed");
            }
        }
    }
}

async fn measure(mode: &str) {
    let n_senders = arg(1, 400);
    let txs = arg(2, 10);
    let interval = Duration::from_millis(
        std::env::var("BLOCK_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    if mode == "sequencer" {
        println!(
            "{n_senders} senders x {txs} transfers each, sequential per sender; block interval {} ms; HTTP on loopback",
            interval.as_millis()
        );
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let senders: Vec<Keypair> = (0..n_senders)
        .map(|i| Keypair::from_seed(format!("bench-sender-{i}").as_bytes()))
        .collect();
    if mode == "sequencer" {
        // Today's single sequencer, over the same HTTP API.
        let g = genesis(&senders, "bench-seq");
        let mut cfg = sortition_ledger_service::LedgerServiceConfig::new(tmp.path().join("seq"), g);
        cfg.block_interval = interval;
        let bg = sortition_ledger_service::run_in_background(cfg)
            .await
            .expect("sequencer");
        let o = load(
            vec![bg.url.clone()],
            "bench-seq".into(),
            senders.clone(),
            txs,
        )
        .await;
        report("single sequencer", &o);
        let _ = bg.shutdown().await;
        return;
    }
    let n: usize = mode.parse().expect("mode");
    let chain = format!("bench-bft-{n}");
    let mut g = genesis(&senders, &chain);
    let urls = start_validators(tmp.path(), n, &mut g, interval);
    wait_up(&urls).await;
    let o = load(urls, chain, senders.clone(), txs).await;
    report(&format!("{n} validator(s), simplex"), &o);
}
