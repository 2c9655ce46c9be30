//! A devnet ledger service for tests and local runs: `ledger-devnode DATA_DIR [LISTEN_ADDR]`.
//! Genesis: chain `devnet`, faucet on, admin key from seed `admin`, funded accounts from seeds
//! `writer-0`..`writer-7`. Prints `LISTENING <url>`.

use sortition_ledger::Genesis;
use sortition_ledger_service::{LedgerServiceConfig, serve};
use sortition_types::Keypair;

/// The fixed genesis this binary uses: accounts `writer-0`..`writer-7` (key seeds) hold funds
/// from the start, so that load and crash tests can submit transfers from many accounts at
/// once (only the admin may mint).
pub fn devnet_genesis() -> Genesis {
    let mut g = Genesis::devnet("devnet", Keypair::from_seed(b"admin").public());
    g.balances = (0..8)
        .map(|i| {
            let k = Keypair::from_seed(format!("writer-{i}").as_bytes());
            (k.public(), sortition_types::Amount(1_000_000_000))
        })
        .collect();
    g
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: ledger-devnode DATA_DIR [LISTEN_ADDR]")?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("LISTENING http://{}", listener.local_addr()?);
    let config = LedgerServiceConfig::new(dir, devnet_genesis());
    serve(config, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
