//! `sortition faucet`: mint test currency on a devnet ledger.
//!
//! The ledger alone decides whether minting is allowed (only on a devnet chain); this command
//! signs the transaction and reports the ledger's answer, refusal included.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sortition_ledger::TxKind;
use sortition_ledger_client::LedgerClient;
use sortition_types::{Amount, PublicKey};

use super::common::{base_url, parse_units};
use super::keys::load_key;

#[derive(Args, Debug)]
pub struct FaucetArgs {
    /// Ledger URL.
    #[arg(
        long,
        env = "SORTITION_LEDGER",
        default_value = "http://127.0.0.1:7400"
    )]
    ledger: String,
    /// Key file (hex secret) of the account that signs the mint, e.g. a devnet's
    /// `DATA_DIR/keys/admin.key`.
    #[arg(long)]
    admin_key: PathBuf,
    /// Account (hex public key) that receives the currency.
    #[arg(long)]
    to: PublicKey,
    /// How much, in whole units with up to 6 decimals (1 unit = 1000000 micro-units).
    #[arg(long, value_parser = parse_units)]
    amount: Amount,
}

/// A faucet request checked before anything is sent.
struct Faucet {
    ledger: String,
    to: PublicKey,
    amount: Amount,
}

impl TryFrom<&FaucetArgs> for Faucet {
    type Error = anyhow::Error;
    fn try_from(a: &FaucetArgs) -> Result<Self> {
        anyhow::ensure!(a.amount > Amount::ZERO, "--amount must be above zero");
        Ok(Faucet {
            ledger: base_url("ledger", &a.ledger)?,
            to: a.to,
            amount: a.amount,
        })
    }
}

pub async fn run(a: FaucetArgs) -> Result<()> {
    let f = Faucet::try_from(&a)?;
    let admin = load_key(&a.admin_key)?;
    let client = LedgerClient::new(&f.ledger);
    let result = client
        .send(
            &admin,
            TxKind::Faucet {
                to: f.to,
                amount: f.amount,
            },
        )
        .await
        .with_context(|| format!("minting {} to {}", f.amount, f.to))?;
    let balance = client
        .account(&f.to)
        .await
        .map(|acc| acc.balance.to_string())
        .unwrap_or_else(|_| "?".into());
    println!(
        "minted {} to {} (tx {} at height {}); balance now {balance}",
        f.amount, f.to, result.tx_hash, result.height
    );
    Ok(())
}
