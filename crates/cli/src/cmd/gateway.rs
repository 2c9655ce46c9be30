//! `sortition gateway`: run the gateway service, or administer its users and keys.
//!
//! Settings come from a TOML file (`--config`, see `crates/cli/examples/gateway.toml`),
//! environment variables `SORTITION_GATEWAY_*`, and flags; a flag beats the environment, which
//! beats the file, which beats the default. Everything is merged into one validated
//! [`GatewayRunConfig`] before the service starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Deserialize;
use sortition_gateway::run::GatewayRunConfig;
use sortition_gateway::state::GatewayConfig;

use super::common::{base_url, read_toml, shutdown_signal};
use super::gateway_admin::{KeysCmd, UsersCmd};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GatewayArgs {
    #[command(subcommand)]
    admin: Option<GatewayAdmin>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum GatewayAdmin {
    /// Create, list and revoke users' API keys in the gateway's store.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Create users, add credits, show balances.
    #[command(subcommand)]
    Users(UsersCmd),
}

/// Flags of the service. Each is optional so that the file and the environment can fill it.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (see crates/cli/examples/gateway.toml).
    #[arg(long, env = "SORTITION_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the OpenAI-compatible API [default: 127.0.0.1:8420].
    #[arg(long, env = "SORTITION_GATEWAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve /metrics on this address only, not beside the API [default: beside the API].
    #[arg(long, env = "SORTITION_GATEWAY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Ledger URL [default: http://127.0.0.1:7400].
    #[arg(long, env = "SORTITION_GATEWAY_LEDGER")]
    ledger: Option<String>,
    /// Data directory: server secret and (without --database-url) SQLite [default: gateway-data].
    #[arg(long, env = "SORTITION_GATEWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL (postgres://…) shared by several gateway replicas.
    #[arg(long, env = "SORTITION_GATEWAY_DATABASE_URL")]
    database_url: Option<String>,
    /// The gateway's ledger account key (hex secret; created if missing). It pays for the
    /// stacks the gateway buys, so it must be funded [default: DATA_DIR/account.key].
    #[arg(long, env = "SORTITION_GATEWAY_ACCOUNT_KEY")]
    account_key: Option<PathBuf>,
}

/// The TOML file. Every field is optional; unknown fields are an error (typos don't vanish).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub ledger: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub account_key: Option<PathBuf>,
    pub stack_units: Option<u64>,
    pub request_validity_secs: Option<u64>,
    pub payload_retention_secs: Option<u64>,
    pub max_in_flight: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub cors_origins: Option<Vec<String>>,
    pub upstream_timeout_secs: Option<u64>,
    pub refresh_interval_secs: Option<u64>,
    pub sqlite_flush_ms: Option<u64>,
}

fn secs(name: &str, v: Option<u64>, default: Duration) -> Result<Duration> {
    match v {
        Some(0) => anyhow::bail!("{name} must be at least 1"),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    }
}

fn positive<T: PartialOrd + Default + Copy>(name: &str, v: Option<T>, default: T) -> Result<T> {
    let v = v.unwrap_or(default);
    anyhow::ensure!(v > T::default(), "{name} must be at least 1");
    Ok(v)
}

/// Merges flags (and env, which clap already folded into them) over the file over defaults.
pub fn merge(flags: ServeArgs, file: GatewayFile) -> Result<GatewayRunConfig> {
    let d = GatewayConfig::default();
    let config = GatewayConfig {
        stack_units: positive("stack_units", file.stack_units, d.stack_units)?,
        request_validity: secs(
            "request_validity_secs",
            file.request_validity_secs,
            d.request_validity,
        )?,
        payload_retention: secs(
            "payload_retention_secs",
            file.payload_retention_secs,
            d.payload_retention,
        )?,
        max_in_flight: positive("max_in_flight", file.max_in_flight, d.max_in_flight)?,
        max_body_bytes: positive("max_body_bytes", file.max_body_bytes, d.max_body_bytes)?,
        cors_origins: file.cors_origins.unwrap_or_default(),
        upstream_timeout: secs(
            "upstream_timeout_secs",
            file.upstream_timeout_secs,
            d.upstream_timeout,
        )?,
        refresh_interval: secs(
            "refresh_interval_secs",
            file.refresh_interval_secs,
            d.refresh_interval,
        )?,
    };
    let data_dir = flags
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("gateway-data"));
    let ledger = flags
        .ledger
        .or(file.ledger)
        .unwrap_or_else(|| "http://127.0.0.1:7400".into());
    let database_url = flags.database_url.or(file.database_url);
    if let Some(url) = &database_url {
        anyhow::ensure!(
            url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"),
            "database URL must start with postgres:// or sqlite:"
        );
    }
    Ok(GatewayRunConfig {
        listen: flags
            .listen
            .or(file.listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8420))),
        metrics_listen: flags.metrics_listen.or(file.metrics_listen),
        ledger_url: base_url("ledger", &ledger)?,
        account_key: flags
            .account_key
            .or(file.account_key)
            .unwrap_or_else(|| data_dir.join("account.key")),
        data_dir,
        database_url,
        config,
        store: sortition_gateway::store::StoreOptions {
            sqlite_flush_interval: match file.sqlite_flush_ms {
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
                None => sortition_gateway::store::StoreOptions::default().sqlite_flush_interval,
            },
        },
    })
}

pub async fn run(a: GatewayArgs) -> Result<()> {
    match a.admin {
        Some(GatewayAdmin::Keys(c)) => return super::gateway_admin::keys(c).await,
        Some(GatewayAdmin::Users(c)) => return super::gateway_admin::users(c).await,
        None => {}
    }
    let file = match &a.serve.config {
        Some(path) => read_toml(path)?,
        None => GatewayFile::default(),
    };
    let cfg = merge(a.serve, file)?;
    let key = super::keys::load_or_create(&cfg.account_key)
        .with_context(|| format!("gateway account key {}", cfg.account_key.display()))?;
    eprintln!(
        "gateway account {} (fund it to buy stacks); ledger {}; store {}",
        key.public(),
        cfg.ledger_url,
        cfg.database_url
            .as_deref()
            .map_or_else(|| cfg.data_dir.display().to_string(), redact)
    );
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let stop = shutdown_signal();
    eprintln!("gateway listening on http://{}", listener.local_addr()?);
    sortition_gateway::run::run_on(cfg, key, listener, stop).await?;
    Ok(())
}

/// Hides the password of a database URL for display.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file: GatewayFile =
            toml::from_str("listen = \"127.0.0.1:9000\"\nledger = \"http://l:1\"\nstack_units = 5")
                .unwrap_or_default();
        let flags = ServeArgs {
            ledger: Some("http://flag:2/".into()),
            ..ServeArgs::default()
        };
        let cfg = merge(flags, file).expect("valid");
        assert_eq!(cfg.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(cfg.ledger_url, "http://flag:2");
        assert_eq!(cfg.config.stack_units, 5);
        assert_eq!(cfg.account_key, PathBuf::from("gateway-data/account.key"));
    }

    #[test]
    fn the_example_config_is_valid() {
        let file: GatewayFile =
            toml::from_str(include_str!("../../examples/gateway.toml")).expect("example parses");
        assert!(merge(Default::default(), file).is_ok());
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(toml::from_str::<GatewayFile>("lisen = \"x\"").is_err());
        let file = GatewayFile {
            refresh_interval_secs: Some(0),
            ..GatewayFile::default()
        };
        assert!(merge(ServeArgs::default(), file).is_err());
        let flags = ServeArgs {
            database_url: Some("mysql://x".into()),
            ..ServeArgs::default()
        };
        assert!(merge(flags, GatewayFile::default()).is_err());
    }

    #[test]
    fn sqlite_flush_zero_means_fsync_every_commit() {
        let every = |text: &str| {
            let file: GatewayFile = toml::from_str(text).expect("parses");
            merge(ServeArgs::default(), file)
                .expect("valid")
                .store
                .sqlite_flush_interval
        };
        assert_eq!(every("sqlite_flush_ms = 0"), None);
        assert_eq!(
            every("sqlite_flush_ms = 250"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(every(""), Some(Duration::from_millis(100)));
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://…@h/db");
    }
}
