//! Gateway overhead benchmark: the gateway's added latency (p50, p99) and maximum requests/s
//! in front of one fast upstream on loopback, beside LiteLLM's proxy in front of the same
//! upstream, in the same run. See bench/gateway/README.md.
//!
//! Usage: `gateway_bench [--litellm PATH] [--requests N] [--seconds S] [--concurrency C,C..]`
//!
//! It starts a real in-process ledger, the fast upstream fixture (`upstream.rs`) registered
//! on it as a node, and a real gateway (`sortition_gateway::run::run_on`, SQLite store), then
//! LiteLLM's proxy (when `--litellm` names its executable) pointed at the same upstream.

mod load;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use load::{Latency, Target, Throughput};
use sortition_gateway::keys::ServerSecret;
use sortition_gateway::run::GatewayRunConfig;
use sortition_gateway::state::GatewayConfig;
use sortition_gateway::store::GatewayStore;
use sortition_ledger::{Genesis, ModelSpec, Offer};
use sortition_ledger_service::{Background, LedgerServiceConfig};
use sortition_node::ledger::{Registration, register};
use sortition_types::{Amount, Keypair, ModelId, NodeClass};

/// The model name every target serves.
const MODEL: &str = "bench-echo";

/// What to run, from the command line.
struct Args {
    litellm: Option<PathBuf>,
    requests: usize,
    warmup: usize,
    seconds: u64,
    concurrency: Vec<usize>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        litellm: None,
        requests: 2_000,
        warmup: 300,
        seconds: 10,
        concurrency: vec![16, 64],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--litellm" => a.litellm = Some(PathBuf::from(value()?)),
            "--requests" => a.requests = num(value()?)?.max(1) as usize,
            "--warmup" => a.warmup = num(value()?)? as usize,
            "--seconds" => a.seconds = num(value()?)?.max(1),
            "--concurrency" => {
                a.concurrency = value()?
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("{flag}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn keypair() -> Keypair {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("OS randomness");
    Keypair::from_secret(secret)
}

/// A ledger whose genesis offers `MODEL` and funds the node and the gateway account.
async fn start_ledger(dir: &Path, funded: &[&Keypair]) -> Background {
    let admin = keypair();
    let mut genesis = Genesis::devnet("sortition-bench", admin.public());
    let devnet_cfg = sortition_devnet::DevnetConfig {
        audit_q_ppm: 0,
        ..sortition_devnet::DevnetConfig::new(dir)
    };
    genesis.models.push(ModelSpec {
        id: ModelId::new(MODEL),
        weights_digest: sortition_types::sha256(MODEL.as_bytes()),
        tokenizer_digest: sortition_types::sha256(MODEL.as_bytes()),
        policy: sortition_devnet::genesis::policy(&devnet_cfg),
    });
    let float = Amount::from_units(1_000_000).expect("fits");
    genesis.balances = funded.iter().map(|k| (k.public(), float)).collect();
    sortition_ledger_service::run_in_background(LedgerServiceConfig::new(
        dir.join("ledger"),
        genesis,
    ))
    .await
    .expect("ledger starts")
}

/// Starts the fixture and registers it on the ledger; returns its base URL.
async fn start_upstream(ledger: &Background, key: Keypair) -> String {
    let class = NodeClass {
        engine_version: "bench-fixture".into(),
        model_digest: sortition_types::sha256(MODEL.as_bytes()),
        quantization: "none".into(),
        device: "none".into(),
        kernels: "none".into(),
    };
    let up = upstream::Upstream::new(key.clone(), ModelId::new(MODEL), class.fingerprint());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    tokio::spawn(upstream::serve(up.clone(), listener));
    let price = Amount(1_000);
    let id = register(
        &ledger.client(),
        &key,
        None,
        Registration {
            endpoint: url.clone(),
            class,
            offers: vec![Offer {
                model: ModelId::new(MODEL),
                price_per_m_input: price,
                price_per_m_output: price,
            }],
            capacity: 1_024,
            collateral: Some(Amount::from_units(100).expect("fits")),
            confidential_key: [0; 32],
            attestation: Vec::new(),
        },
    )
    .await
    .expect("register the upstream");
    let _ = up.node.set(id);
    url
}

/// Starts a gateway the way the `sortition gateway` service does; returns its URL and a key.
async fn start_gateway(dir: &Path, ledger: &Background, account: Keypair) -> (String, String) {
    let data_dir = dir.join("gateway");
    let secret = ServerSecret::load_or_create(&data_dir).expect("server secret");
    let store = GatewayStore::open_sqlite(&data_dir, secret)
        .await
        .expect("gateway store");
    let user = store.create_user("bench").await.expect("user");
    store
        .top_up(user, Amount::from_units(1_000_000).expect("fits"))
        .await
        .expect("top up");
    let (_, key) = store
        .create_key(user, "bench", 1_000_000_000, None)
        .await
        .expect("key");
    store.close().await;
    let cfg = GatewayRunConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: None,
        ledger_url: ledger.url.clone(),
        data_dir,
        database_url: None,
        account_key: dir.join("gateway.key"),
        config: GatewayConfig {
            // One purchase (during warm-up) covers the whole run.
            stack_units: 100_000_000,
            ..GatewayConfig::default()
        },
        store: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .expect("bind gateway");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    tokio::spawn(async move {
        if let Err(e) =
            sortition_gateway::run::run_on(cfg, account, listener, std::future::pending()).await
        {
            eprintln!("gateway stopped: {e}");
        }
    });
    (url, key.expose().to_string())
}

/// LiteLLM's proxy, in its own process group so that every process it starts is stopped.
struct LiteLlm {
    child: std::process::Child,
    url: String,
    /// LiteLLM refuses to start without one; requests present it as their bearer token.
    master_key: String,
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &pgid])
            .status();
        let _ = self.child.wait();
    }
}

async fn start_litellm(bin: &Path, dir: &Path, upstream: &str) -> Result<LiteLlm, String> {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n      api_base: {upstream}/v1\n      api_key: bench-unused\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let master_key = format!(
        "sk-bench-{}",
        sortition_types::sha256(&port.to_le_bytes()).to_hex()
    );
    let log = std::fs::File::create(dir.join("litellm.log")).map_err(|e| e.to_string())?;
    let child = std::process::Command::new(bin)
        .args(["--config", &config.to_string_lossy()])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        // Use the cost map shipped in the package instead of fetching one (no internet here).
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_MASTER_KEY", &master_key)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut proxy = LiteLlm {
        child,
        url: format!("http://127.0.0.1:{port}"),
        master_key,
    };
    // An external process: poll its health route, at most 3 minutes.
    let client = load::client();
    for _ in 0..360 {
        let ok = client
            .get(format!("{}/health/liveliness", proxy.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(proxy);
        }
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!(
                "LiteLLM exited ({status}); see {}",
                dir.join("litellm.log").display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "LiteLLM did not become ready; see {}",
        dir.join("litellm.log").display()
    ))
}

/// One target's results.
struct Row {
    target: Target,
    latency: Latency,
    throughput: Vec<Throughput>,
}

impl Row {
    fn max_rps(&self) -> f64 {
        self.throughput.iter().map(|t| t.rps).fold(0.0, f64::max)
    }
}

async fn measure(client: &reqwest::Client, t: Target, a: &Args) -> Result<Row, String> {
    load::latency(client, &t, a.warmup).await?;
    load::throughput(client, &t, 16, Duration::from_secs(1)).await;
    let latency = load::latency(client, &t, a.requests).await?;
    let mut throughput = Vec::new();
    for &c in &a.concurrency {
        throughput.push(load::throughput(client, &t, c, Duration::from_secs(a.seconds)).await);
    }
    Ok(Row {
        target: t,
        latency,
        throughput,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print(rows: &[Row], a: &Args) {
    println!();
    print!(
        "{:<10} {:>9} {:>9} {:>9}",
        "target", "p50 ms", "p99 ms", "mean ms"
    );
    for c in &a.concurrency {
        print!(" {:>10}", format!("rps@c{c}"));
    }
    println!(" {:>8}", "errors");
    for r in rows {
        print!(
            "{:<10} {:>9.3} {:>9.3} {:>9.3}",
            r.target.name,
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.mean)
        );
        for t in &r.throughput {
            print!(" {:>10.0}", t.rps);
        }
        println!(" {:>8}", r.throughput.iter().map(|t| t.errors).sum::<u64>());
    }
    let Some(direct) = rows.first() else { return };
    println!();
    let added = |r: &Row| {
        (
            ms(r.latency.p50) - ms(direct.latency.p50),
            ms(r.latency.p99) - ms(direct.latency.p99),
        )
    };
    for r in &rows[1..] {
        let (p50, p99) = added(r);
        println!(
            "{:<10} added latency: p50 {p50:.3} ms, p99 {p99:.3} ms; max {:.0} req/s",
            r.target.name,
            r.max_rps()
        );
    }
    let gw = rows.iter().find(|r| r.target.name == "gateway");
    let lite = rows.iter().find(|r| r.target.name == "litellm");
    if let (Some(gw), Some(lite)) = (gw, lite) {
        let (g50, g99) = added(gw);
        let (l50, l99) = added(lite);
        println!(
            "ratios: throughput gateway/litellm {:.2}x; added p50 litellm/gateway {:.1}x, p99 {:.1}x",
            gw.max_rps() / lite.max_rps().max(f64::MIN_POSITIVE),
            l50 / g50.max(1e-3),
            l99 / g99.max(1e-3),
        );
    }
    if let Some(gw) = gw {
        let (g50, g99) = added(gw);
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!("goal added p50 < 1 ms: {}", verdict(g50 < 1.0));
        println!("goal added p99 < 5 ms: {}", verdict(g99 < 5.0));
        if let Some(lite) = lite {
            println!(
                "goal throughput >= 5x LiteLLM: {}",
                verdict(gw.max_rps() >= 5.0 * lite.max_rps())
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (node_key, account) = (keypair(), keypair());
    let ledger = start_ledger(dir.path(), &[&node_key, &account]).await;
    let upstream = start_upstream(&ledger, node_key).await;
    let (gateway, api_key) = start_gateway(dir.path(), &ledger, account).await;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "gateway_bench: {} CPUs, load average {} | {} requests at c=1 after {} warm-up, {} s per concurrency {:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        a.requests,
        a.warmup,
        a.seconds,
        a.concurrency
    );
    let chat = "/v1/chat/completions";
    let targets = vec![
        Target {
            name: "direct",
            url: format!("{upstream}{chat}"),
            api_key: None,
        },
        Target {
            name: "gateway",
            url: format!("{gateway}{chat}"),
            api_key: Some(api_key),
        },
    ];
    let client = load::client();
    let mut rows = Vec::new();
    let fail = |e: String| -> ! {
        eprintln!("{e}");
        std::process::exit(1)
    };
    for t in targets {
        rows.push(measure(&client, t, &a).await.unwrap_or_else(|e| fail(e)));
    }
    // LiteLLM starts only now, so that its idle process does not share the cores while the
    // gateway is measured (the gateway, idle, stays up while LiteLLM is).
    let litellm = match &a.litellm {
        Some(bin) => Some(
            start_litellm(bin, dir.path(), &upstream)
                .await
                .unwrap_or_else(|e| fail(e)),
        ),
        None => None,
    };
    if let Some(l) = &litellm {
        let t = Target {
            name: "litellm",
            url: format!("{}{chat}", l.url),
            api_key: Some(l.master_key.clone()),
        };
        rows.push(measure(&client, t, &a).await.unwrap_or_else(|e| fail(e)));
    }
    print(&rows, &a);
    drop(litellm);
    // The gateway is still up, and its keep-alive connections to the ledger keep the ledger's
    // sequencer from stopping: waiting for `ledger.shutdown()` would never end. Remove the
    // temporary directory and end the process instead.
    drop((ledger, dir));
    std::process::exit(0);
}
