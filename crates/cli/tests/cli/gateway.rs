//! `sortition gateway`: administering users and keys, and running the service.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_keys_are_shown_once_and_listed_by_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let out = sortition(
        &[
            "gateway",
            "users",
            "create",
            "--data-dir",
            &d,
            "--name",
            "alice",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let user = text(&out.stdout)
        .split("(id ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(str::to_string)
        .expect("user id");

    let out = sortition(
        &[
            "gateway",
            "keys",
            "create",
            "--data-dir",
            &d,
            "--user",
            &user,
            "--name",
            "ci",
            "--budget",
            "5",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let key = stdout
        .split_whitespace()
        .find(|w| w.starts_with("sk-sort-"))
        .expect("key printed")
        .to_string();

    let out = sortition(
        &["gateway", "keys", "list", "--data-dir", &d, "--user", &user],
        None,
    )
    .await;
    let list = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(list.contains(&key[..16]), "prefix listed: {list}");
    assert!(
        !list.contains(&key),
        "full key must never be listed: {list}"
    );
    assert!(
        list.contains("active") && list.contains("5.000000"),
        "{list}"
    );

    let out = sortition(
        &[
            "gateway",
            "keys",
            "revoke",
            "--data-dir",
            &d,
            "--user",
            &user,
            "--key",
            "1",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = text(
        &sortition(
            &["gateway", "keys", "list", "--data-dir", &d, "--user", &user],
            None,
        )
        .await
        .stdout,
    );
    assert!(list.contains("revoked"), "{list}");

    let out = sortition(
        &[
            "gateway",
            "users",
            "top-up",
            "--data-dir",
            &d,
            "--user",
            &user,
            "--amount",
            "1.25",
        ],
        None,
    )
    .await;
    assert!(
        text(&out.stdout).contains("balance 1.250000"),
        "{}",
        text(&out.stdout)
    );
    let out = sortition(
        &[
            "gateway",
            "keys",
            "create",
            "--data-dir",
            &d,
            "--user",
            "999",
            "--name",
            "x",
        ],
        None,
    )
    .await;
    assert!(!out.status.success(), "a key for a missing user is refused");
}

/// `sortition gateway` as a service: flags override defaults, it serves, and SIGTERM stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_service_starts_from_a_config_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = Keypair::from_secret([8; 32]);
    let l = ledger(&dir.path().join("l"), &admin, true).await;
    let config = dir.path().join("gateway.toml");
    let data = dir.path().join("gw");
    std::fs::write(&config, format!("listen = \"127.0.0.1:1\"\nledger = \"{}\"\ndata_dir = {:?}\nrefresh_interval_secs = 1\n", l.url, data))
        .expect("config");
    let config = config.display().to_string();
    let mut gw = Service::spawn(
        &["gateway", "--config", &config, "--listen", "127.0.0.1:0"],
        &[],
    );
    let line = gw.wait_for("gateway listening on ").await;
    let url = line.trim_start_matches("gateway listening on ").to_string();
    let health = reqwest::get(format!("{url}/health")).await.expect("health");
    assert!(health.status().is_success());
    assert!(
        data.join("account.key").exists(),
        "the account key is created in the data dir"
    );
    let status = gw.terminate().await;
    assert!(status.success(), "{status:?}");
    l.shutdown().await.expect("ledger stops");
}
