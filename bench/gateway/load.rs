//! The load generator: latency at concurrency 1, throughput with a closed loop.
//!
//! Every loop is bounded: a fixed number of requests, or a fixed duration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One endpoint under test.
#[derive(Clone)]
pub struct Target {
    pub name: &'static str,
    /// Full URL of the chat completions route.
    pub url: String,
    /// Bearer token, if the target wants one.
    pub api_key: Option<String>,
}

/// The request every target gets.
pub const BODY: &str = r#"{"model":"bench-echo","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":16,"temperature":0}"#;

/// Latency percentiles of a run at concurrency 1.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

/// Throughput of a closed-loop run.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    pub rps: f64,
    pub errors: u64,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a plain HTTP client builds")
}

/// Sends one request; `Ok` only for a 200 whose body was read.
async fn one(client: &reqwest::Client, t: &Target) -> Result<(), String> {
    let mut req = client
        .post(&t.url)
        .header("content-type", "application/json")
        .body(BODY);
    if let Some(k) = &t.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

/// `n` sequential requests; fails on the first error (a benchmark of errors means nothing).
pub async fn latency(client: &reqwest::Client, t: &Target, n: usize) -> Result<Latency, String> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        one(client, t)
            .await
            .map_err(|e| format!("{}: {e}", t.name))?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let total: Duration = samples.iter().sum();
    Ok(Latency {
        p50: percentile(&samples, 50.0),
        p99: percentile(&samples, 99.0),
        mean: total / u32::try_from(n.max(1)).unwrap_or(u32::MAX),
    })
}

/// The nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `concurrency` workers each send requests back to back for `duration`.
pub async fn throughput(
    client: &reqwest::Client,
    t: &Target,
    concurrency: usize,
    duration: Duration,
) -> Throughput {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, t) = (client.clone(), t.clone());
        let (ok, errors, first_error) = (ok.clone(), errors.clone(), first_error.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match one(&client, &t).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed();
    if let Some(e) = first_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        eprintln!("{} at concurrency {concurrency}: first error: {e}", t.name);
    }
    Throughput {
        rps: ok.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        errors: errors.load(Ordering::Relaxed),
    }
}
