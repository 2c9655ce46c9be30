//! `sortition gateway keys …` and `sortition gateway users …`: administer a gateway's users,
//! credits and API keys directly in its store (SQLite in a data dir, or PostgreSQL).
//!
//! A plaintext API key is printed once, by `keys create`; listings show only its prefix.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sortition_gateway::keys::ServerSecret;
use sortition_gateway::store::{GatewayStore, KeyId, UserId};
use sortition_types::Amount;

use super::common::parse_units;

/// Where the gateway's store is. The server secret always lives in the data dir.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The gateway's data directory: holds `gateway-secret.key` (needed to hash API keys)
    /// and, without --database-url, the SQLite database `gateway.db`.
    #[arg(
        long,
        env = "SORTITION_GATEWAY_DATA_DIR",
        default_value = "gateway-data"
    )]
    data_dir: PathBuf,
    /// `postgres://user:pass@host/db` to use a shared PostgreSQL database instead of SQLite.
    #[arg(long, env = "SORTITION_GATEWAY_DATABASE_URL")]
    database_url: Option<String>,
}

impl StoreArgs {
    async fn open(&self) -> Result<GatewayStore> {
        let secret = ServerSecret::load_or_create(&self.data_dir)
            .with_context(|| format!("server secret in {}", self.data_dir.display()))?;
        match &self.database_url {
            Some(url) => GatewayStore::open(url, secret)
                .await
                .context("opening the gateway database"),
            None => GatewayStore::open_sqlite(&self.data_dir, secret)
                .await
                .with_context(|| {
                    format!(
                        "opening the gateway database in {}",
                        self.data_dir.display()
                    )
                }),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create an API key for a user and print it (the only time it is shown).
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// The user id (see `sortition gateway users create`).
        #[arg(long)]
        user: i64,
        /// A name to tell the key apart in listings.
        #[arg(long)]
        name: String,
        /// Requests per minute allowed for this key.
        #[arg(long, default_value_t = 600)]
        rpm: u32,
        /// Lifetime spending cap of the key, in units (e.g. 25 or 2.5); none by default.
        #[arg(long, value_parser = parse_units)]
        budget: Option<Amount>,
    },
    /// List a user's keys: id, prefix, name, limits, spend, revoked. Never the key itself.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// The user id.
        #[arg(long)]
        user: i64,
    },
    /// Revoke a key: requests presenting it are refused from now on.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The user id that owns the key.
        #[arg(long)]
        user: i64,
        /// The key id (from `keys list`).
        #[arg(long)]
        key: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// Create a user and print its id.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// The user's display name.
        #[arg(long)]
        name: String,
    },
    /// Add credits to a user's balance.
    TopUp {
        #[command(flatten)]
        store: StoreArgs,
        /// The user id.
        #[arg(long)]
        user: i64,
        /// Credits to add, in units (e.g. 100 or 0.5).
        #[arg(long, value_parser = parse_units)]
        amount: Amount,
    },
    /// Show a user's balance and recent usage.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// The user id.
        #[arg(long)]
        user: i64,
    },
}

pub async fn keys(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Create {
            store,
            user,
            name,
            rpm,
            budget,
        } => {
            anyhow::ensure!(rpm > 0, "--rpm must be at least 1");
            anyhow::ensure!(!name.trim().is_empty(), "--name must not be empty");
            let s = store.open().await?;
            let (id, key) = s
                .create_key(UserId(user), &name, rpm, budget)
                .await
                .context("creating the key")?;
            println!("{id} created for {}: {}", UserId(user), key.expose());
            eprintln!("store it now: the gateway keeps only a keyed hash and cannot show it again");
            s.close().await;
        }
        KeysCmd::List { store, user } => {
            let s = store.open().await?;
            let keys = s.list_keys(UserId(user)).await.context("listing keys")?;
            println!(
                "{:<8} {:<18} {:<16} {:>6} {:>14} {:>14}  STATE",
                "ID", "PREFIX", "NAME", "RPM", "BUDGET", "SPENT"
            );
            for k in keys {
                let budget = k.budget.map_or_else(|| "-".to_string(), |b| b.to_string());
                let state = if k.revoked_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<8} {:<18} {:<16} {:>6} {:>14} {:>14}  {state}",
                    k.id.to_string(),
                    format!("{}…", k.prefix),
                    k.name,
                    k.rate_limit_rpm,
                    budget,
                    k.spent.to_string()
                );
            }
            s.close().await;
        }
        KeysCmd::Revoke { store, user, key } => {
            let s = store.open().await?;
            s.revoke_key(UserId(user), KeyId(key))
                .await
                .context("revoking the key")?;
            println!("{} revoked", KeyId(key));
            s.close().await;
        }
    }
    Ok(())
}

pub async fn users(cmd: UsersCmd) -> Result<()> {
    match cmd {
        UsersCmd::Create { store, name } => {
            anyhow::ensure!(!name.trim().is_empty(), "--name must not be empty");
            let s = store.open().await?;
            let id = s.create_user(&name).await.context("creating the user")?;
            println!("{id} created (id {})", id.0);
            s.close().await;
        }
        UsersCmd::TopUp {
            store,
            user,
            amount,
        } => {
            anyhow::ensure!(amount > Amount::ZERO, "--amount must be above zero");
            let s = store.open().await?;
            let balance = s.top_up(UserId(user), amount).await.context("topping up")?;
            println!("{} topped up by {amount}; balance {balance}", UserId(user));
            s.close().await;
        }
        UsersCmd::Show { store, user } => {
            let s = store.open().await?;
            let u = s.user(UserId(user)).await.context("reading the user")?;
            println!("{} {:?}  credits {}", u.id, u.name, u.credits);
            let keys = s.list_keys(u.id).await?;
            let active = keys.iter().filter(|k| k.revoked_ms.is_none()).count();
            println!("keys: {} ({active} active)", keys.len());
            let usage = s.usage_for_user(u.id, 10).await?;
            if !usage.is_empty() {
                println!("recent usage:");
                for r in usage {
                    println!("  {r:?}");
                }
            }
            s.close().await;
        }
    }
    Ok(())
}
