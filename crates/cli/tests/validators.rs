//! Four `sortition validator` processes on loopback, and the faults they must survive: one
//! killed with SIGKILL while transactions flow (the rest go on, the client fails over, the
//! killed one catches up to identical state roots), two of four down (finality stops, nothing
//! is acknowledged, it resumes when one returns), and every validator killed at once (the
//! restarted network has the same roots and every acknowledged transaction).
//!
//! Each test is bounded: every wait has a deadline, and the processes are killed on drop.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sortition_ledger::{Genesis, TxKind};
use sortition_ledger_client::LedgerClient;
use sortition_types::{Amount, Hash32, Keypair};

const BIN: &str = env!("CARGO_BIN_EXE_sortition");

/// One network at a time: four validator processes per test on a 2-core machine already make
/// views time out when several tests run at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

struct Net {
    _tmp: tempfile::TempDir,
    genesis_path: PathBuf,
    dirs: Vec<PathBuf>,
    apis: Vec<SocketAddr>,
    p2ps: Vec<SocketAddr>,
    peers: String,
    procs: Vec<Option<Child>>,
    admin: Keypair,
    /// Each validator's acknowledgement timeout (s).
    ack: &'static str,
}

impl Net {
    fn new(n: usize) -> Net {
        Self::with_byzantine(n, None)
    }

    /// `byzantine`: that validator signs conflicting votes instead of following the protocol.
    fn with_byzantine(n: usize, byzantine: Option<usize>) -> Net {
        let tmp = tempfile::tempdir().expect("tmp");
        let admin = Keypair::from_seed(b"validators-cli-admin");
        let mut genesis = Genesis::devnet("bft-cli", admin.public());
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("v{i}"))).collect();
        let keys = sortition_validator::setup::deal(&mut genesis, &dirs).expect("deal");
        let genesis_path = tmp.path().join("genesis.json");
        std::fs::write(
            &genesis_path,
            serde_json::to_string(&genesis).expect("json"),
        )
        .expect("genesis");
        let apis: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let p2ps: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let peers = keys
            .iter()
            .zip(&p2ps)
            .map(|(k, a)| format!("{k}@{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut net = Net {
            _tmp: tmp,
            genesis_path,
            dirs,
            apis,
            p2ps,
            peers,
            procs: (0..n).map(|_| None).collect(),
            admin,
            // A byzantine leader's views time out (seconds each): wait longer for finality.
            ack: if byzantine.is_some() { "30" } else { "4" },
        };
        for i in 0..n {
            if Some(i) == byzantine {
                net.start_with(i, &["--byzantine", "conflicter"]);
            } else {
                net.start(i);
            }
        }
        net
    }

    fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    fn start_with(&mut self, i: usize, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dirs[i].join("stderr.log"))
            .expect("log");
        let child = Command::new(BIN)
            .args([
                "validator",
                "--data-dir",
                &self.dirs[i].display().to_string(),
                "--genesis",
                &self.genesis_path.display().to_string(),
                "--listen",
                &self.apis[i].to_string(),
                "--p2p",
                &self.p2ps[i].to_string(),
                "--peers",
                &self.peers,
                "--block-interval-ms",
                "50",
                "--ack-timeout-secs",
                self.ack,
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("SORTITION_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn validator");
        self.procs[i] = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, i: usize) -> String {
        format!("http://{}", self.apis[i])
    }

    fn client(&self, i: usize) -> LedgerClient {
        LedgerClient::new(self.url(i))
    }

    /// A client of every validator, `first` first (fails over to the others).
    fn failover_client(&self, first: usize) -> LedgerClient {
        let n = self.apis.len();
        let urls: Vec<String> = (0..n).map(|k| self.url((first + k) % n)).collect();
        LedgerClient::new(urls.join(","))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dirs[i].join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
        // A failed test shows what each validator said (the end of it).
        if std::thread::panicking() {
            for i in 0..self.procs.len() {
                let log = self.log(i);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!(
                    "--- validator {i} (last {} lines) ---\n{tail}",
                    lines.len().min(40)
                );
            }
        }
    }
}

async fn height(c: &LedgerClient) -> Option<u64> {
    c.status().await.ok().map(|s| s.height)
}

/// Waits until validator `i` is at `h` or above (bounded).
async fn wait_height(net: &Net, i: usize, h: u64, limit: Duration) {
    let c = net.client(i);
    let start = Instant::now();
    while start.elapsed() < limit {
        if height(&c).await.is_some_and(|x| x >= h) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "validator {i} did not reach height {h} within {limit:?} (at {:?}); its log:\n{}",
        height(&c).await,
        net.log(i)
    );
}

/// Each block's (state root, beacon) at validator `i`, heights 1..=h.
async fn roots(net: &Net, i: usize, h: u64) -> BTreeMap<u64, (String, String)> {
    let http = reqwest::Client::new();
    let mut out = BTreeMap::new();
    for height in 1..=h {
        let b: serde_json::Value = http
            .get(format!("{}/v1/blocks/{height}", net.url(i)))
            .send()
            .await
            .expect("block")
            .json()
            .await
            .expect("json");
        out.insert(
            height,
            (b["state_root"].to_string(), b["beacon"].to_string()),
        );
    }
    out
}

/// Sends a faucet of `amount` to `to`, returning the transaction's hash once final. A
/// validator answers 503 "not final" when its acknowledgement timeout passes first (a view
/// that timed out on a dead leader, a loaded machine): the transaction may still be included,
/// so a careful client then looks it up, as this does (bounded).
async fn faucet(c: &LedgerClient, admin: &Keypair, to: &Keypair, amount: u64) -> Hash32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = c.status().await.expect("status");
        let nonce = c.next_nonce(&admin.public()).await.expect("nonce");
        let tx = sortition_ledger::Tx {
            chain_id: status.chain_id,
            sender: admin.public(),
            nonce,
            expires_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                + 120_000,
            kind: TxKind::Faucet {
                to: to.public(),
                amount: Amount(amount),
            },
        }
        .sign(admin);
        let hash = tx.hash();
        match c.submit(&tx).await {
            Ok(r) => return r.tx_hash,
            Err(e) if e.to_string().contains("not final") => {
                while Instant::now() < deadline {
                    if c.find_tx(&hash).await.is_ok() {
                        return hash;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("transaction {hash} never became final: {e}");
            }
            Err(e) => {
                // The previous attempt's transaction may have taken the nonce meanwhile.
                assert!(
                    e.code() == Some("wrong_nonce") && Instant::now() < deadline,
                    "faucet refused: {e}"
                );
            }
        }
    }
}

async fn wait_all_up(net: &Net) {
    for i in 0..net.apis.len() {
        wait_height(net, i, 0, Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_validator_does_not_stop_the_others_and_catches_up() {
    let _serial = SERIAL.lock().await;
    let mut net = Net::new(4);
    wait_all_up(&net).await;
    let user = Keypair::from_seed(b"validators-cli-user");
    // The client starts at validator 0: the one about to be killed.
    let c = net.failover_client(0);
    let mut acknowledged = Vec::new();
    for _ in 0..3 {
        acknowledged.push(faucet(&c, &net.admin, &user, 1).await);
    }
    net.kill(0);
    for _ in 0..5 {
        acknowledged.push(faucet(&c, &net.admin, &user, 1).await);
    }
    let h = height(&net.client(1)).await.expect("status");
    for i in 1..4 {
        wait_height(&net, i, h, Duration::from_secs(20)).await;
    }
    // Back from the dead: it catches up from its peers, block by block.
    net.start(0);
    wait_height(&net, 0, h, Duration::from_secs(60)).await;
    let reference = roots(&net, 1, h).await;
    for i in [0, 2, 3] {
        assert_eq!(
            roots(&net, i, h).await,
            reference,
            "validator {i} disagrees"
        );
    }
    for i in 0..4 {
        let ci = net.client(i);
        for t in &acknowledged {
            ci.find_tx(t)
                .await
                .expect("every acknowledged transaction is everywhere");
        }
        assert_eq!(
            ci.account(&user.public()).await.expect("account").balance,
            Amount(8)
        );
    }
    // `sortition status` with every validator and our own genesis: they agree, and each one's
    // block at the common height verifies as final against the genesis' validator set.
    let urls: Vec<String> = (0..4).map(|i| net.url(i)).collect();
    let out = Command::new(BIN)
        .args(["status", "--json", "--ledger", &urls.join(",")])
        .arg("--genesis")
        .arg(&net.genesis_path)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["replicas"]["agree"], true, "{v}");
    let reps = v["replicas"]["validators"].as_array().expect("validators");
    assert_eq!(reps.len(), 4);
    for r in reps {
        assert_eq!(r["finality_at_common_height"]["verified"], true, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_four_down_stops_finality_without_acknowledging_and_resumes() {
    let _serial = SERIAL.lock().await;
    let mut net = Net::new(4);
    wait_all_up(&net).await;
    let user = Keypair::from_seed(b"validators-cli-user-2");
    let c = net.client(0);
    faucet(&c, &net.admin, &user, 1).await;
    net.kill(2);
    net.kill(3);
    // With two of four, no quorum: the submission is not acknowledged (503 after the
    // validator's 4 s acknowledgement timeout), and no block is finalized.
    let stalled = height(&c).await.expect("status");
    let r = c
        .send(
            &net.admin,
            TxKind::Faucet {
                to: user.public(),
                amount: Amount(1),
            },
        )
        .await;
    let err = r.expect_err("no quorum, no acknowledgement");
    assert_eq!(err.code(), Some("unavailable"), "{err}");
    assert!(err.to_string().contains("not final"), "{err}");
    let later = height(&c).await.expect("status");
    assert!(
        later <= stalled + 1,
        "finality went on without a quorum: {stalled} → {later}"
    );
    // The other survivor learns what the quorum finalized before it broke (certificates are
    // re-sent with each timed-out vote), and no more: no fork, no progress.
    wait_height(&net, 1, later, Duration::from_secs(20)).await;
    assert_eq!(height(&net.client(1)).await.expect("status"), later);
    assert_eq!(roots(&net, 1, later).await, roots(&net, 0, later).await);
    // One returns: a quorum again; the waiting transaction is included and the chain goes on.
    net.start(2);
    faucet(&c, &net.admin, &user, 1).await;
    let h = height(&c).await.expect("status");
    wait_height(&net, 2, h, Duration::from_secs(60)).await;
    assert_eq!(roots(&net, 2, h).await, roots(&net, 0, h).await);
    let balance = c.account(&user.public()).await.expect("account").balance;
    // The refused-for-now transaction may or may not have been included after the quorum
    // came back (it stayed in the mempool); either way nothing was lost or doubled.
    assert!(balance == Amount(2) || balance == Amount(3), "{balance:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validator_killed_at_once_restarts_with_the_same_roots() {
    let _serial = SERIAL.lock().await;
    let mut net = Net::new(4);
    wait_all_up(&net).await;
    let user = Keypair::from_seed(b"validators-cli-user-3");
    let c = net.failover_client(1);
    let mut acknowledged = Vec::new();
    // Three rounds: a kill at a random point often leaves the newest block notarized with its
    // own finalization lost; the network must finalize it through a (bridge) child and go on.
    for round in 0..3 {
        for _ in 0..3 {
            acknowledged.push(faucet(&c, &net.admin, &user, 1).await);
        }
        let h = height(&net.client(1)).await.expect("status");
        for i in 0..4 {
            wait_height(&net, i, h, Duration::from_secs(20)).await;
        }
        let before = roots(&net, 0, h).await;
        for i in 0..4 {
            net.kill(i);
        }
        for i in 0..4 {
            net.start(i);
        }
        wait_all_up(&net).await;
        for i in 0..4 {
            let r = roots(&net, i, h).await;
            assert_eq!(r, before, "validator {i} after restart {round}");
            for t in &acknowledged {
                net.client(i)
                    .find_tx(t)
                    .await
                    .expect("acknowledged, so kept");
            }
        }
    }
    // And it goes on.
    faucet(&c, &net.admin, &user, 1).await;
    assert_eq!(
        c.account(&user.public()).await.expect("account").balance,
        Amount(10)
    );
}

/// The whole devnet on four validator processes: chat requests through the gateway keep
/// succeeding (stacks bought, receipts verified against the ledger) while the validator every
/// client tries first is killed with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_requests_keep_succeeding_when_a_validator_is_killed() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("dn");
    let log = std::fs::File::create(tmp.path().join("devnet.log")).expect("log");
    let mut devnet = Command::new(BIN)
        .args([
            "devnet",
            "--validators",
            "4",
            "--nodes",
            "2",
            "--embed-model",
            "none",
        ])
        .args(["--gateway-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("devnet");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut devnet);
    let info_path = dir.join("devnet.json");
    let start = Instant::now();
    let info: serde_json::Value = loop {
        if let Ok(t) = std::fs::read_to_string(&info_path)
            && let Ok(v) = serde_json::from_str(&t)
        {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "devnet did not come up: {}",
            std::fs::read_to_string(tmp.path().join("devnet.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let validators = info["validators"].as_array().expect("validators").clone();
    // Killing the devnet with SIGKILL leaves its children: they are killed here, whatever
    // happens to the test.
    struct KillPids(Vec<u64>);
    impl Drop for KillPids {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
        }
    }
    let _children = KillPids(
        validators
            .iter()
            .filter_map(|v| v["pid"].as_u64())
            .collect(),
    );
    assert_eq!(validators.len(), 4);
    assert_eq!(
        info["ledger_url"]
            .as_str()
            .expect("ledger_url")
            .split(',')
            .count(),
        4
    );
    let gw = info["gateway_url"].as_str().expect("gateway").to_string();
    let key = info["api_key"].as_str().expect("key").to_string();
    let http = reqwest::Client::new();
    let chat = |i: usize| {
        let http = http.clone();
        let (gw, key) = (gw.clone(), key.clone());
        async move {
            let r = http
                .post(format!("{gw}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&serde_json::json!({
                    "model": "smollm2-135m-instruct",
                    "messages": [{"role": "user", "content": format!("Count to {i}.")}],
                    "max_tokens": 8, "temperature": 0
                }))
                .send()
                .await
                .expect("gateway reachable");
            let status = r.status();
            let v: serde_json::Value = r.json().await.expect("json");
            assert_eq!(status, 200, "request {i}: {v}");
            assert_eq!(
                v["sortition"]["verified_by_gateway"],
                serde_json::json!(true),
                "request {i}: {v}"
            );
        }
    };
    for i in 0..2 {
        chat(i).await;
    }
    // Kill the validator every client tries first.
    let pid = validators[0]["pid"].as_u64().expect("pid");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    for i in 2..6 {
        chat(i).await;
    }
    // The other three go on and agree.
    let urls: Vec<String> = validators[1..]
        .iter()
        .map(|v| v["url"].as_str().expect("url").to_string())
        .collect();
    let c = LedgerClient::new(urls.join(","));
    let (common, views) = c.replicas().await;
    assert!(common > 0);
    let roots: std::collections::BTreeSet<_> =
        views.iter().filter_map(|v| v.root_at_common).collect();
    assert_eq!(roots.len(), 1, "{views:?}");
    drop(guard);
}

/// A validator cut off from the others (frozen with SIGSTOP: its connections stay open but
/// carry nothing, as under a partition) does not hold the rest up; once it is back (SIGCONT)
/// it catches up to the same roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_validator_rejoins_and_catches_up() {
    let _serial = SERIAL.lock().await;
    let net = Net::new(4);
    wait_all_up(&net).await;
    let user = Keypair::from_seed(b"validators-cli-user-4");
    let pid = net.procs[3].as_ref().expect("running").id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let c = net.failover_client(0);
    for _ in 0..4 {
        faucet(&c, &net.admin, &user, 1).await;
    }
    let h = height(&c).await.expect("status");
    signal("-CONT");
    wait_height(&net, 3, h, Duration::from_secs(60)).await;
    assert_eq!(roots(&net, 3, h).await, roots(&net, 0, h).await);
    assert_eq!(
        net.client(3)
            .account(&user.public())
            .await
            .expect("account")
            .balance,
        Amount(4)
    );
}

/// One validator of four equivocates (signs conflicting notarize and finalize votes for every
/// proposal): the three honest ones still finalize one chain with identical roots, and each
/// reports the equivocation with the offender's key (the ed25519 votes are attributable), and
/// the ledger records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_validator_breaks_nothing_and_is_reported() {
    let _serial = SERIAL.lock().await;
    let net = Net::with_byzantine(4, Some(3));
    for i in 0..3 {
        wait_height(&net, i, 0, Duration::from_secs(30)).await;
    }
    let user = Keypair::from_seed(b"validators-cli-user-5");
    let c = net.client(0);
    for _ in 0..4 {
        faucet(&c, &net.admin, &user, 1).await;
    }
    let h = height(&c).await.expect("status");
    for i in 1..3 {
        wait_height(&net, i, h, Duration::from_secs(20)).await;
    }
    let reference = roots(&net, 0, h).await;
    for i in 1..3 {
        assert_eq!(roots(&net, i, h).await, reference, "validator {i}");
    }
    let offender = {
        let g: Genesis =
            serde_json::from_str(&std::fs::read_to_string(&net.genesis_path).expect("genesis"))
                .expect("json");
        let key = sortition_validator::keys::load(&net.dirs[3]).expect("key");
        let hex = sortition_validator::keys::public_hex(&key);
        assert!(g.validators.contains(&hex));
        hex
    };
    // Evidence comes when an honest validator sees a conflicting pair of votes, which may be
    // a few views after the blocks above were final here.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reported = (0..3).any(|i| {
            let log = net.log(i);
            log.contains("equivocation evidence") && log.contains(&offender)
        });
        if reported {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no honest validator reported the equivocation within 30 s:\n{}",
            net.log(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the ledger records it: every honest replica lists the offender (checked against the
    // genesis' validator set when the report was applied), and nobody else.
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..3 {
        loop {
            let faults = net.client(i).validator_faults().await.expect("faults");
            if !faults.is_empty() {
                assert!(
                    faults.iter().all(|f| f.validator == offender),
                    "validator {i}: {faults:?}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "validator {i} recorded no fault:\n{}",
                net.log(i)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
