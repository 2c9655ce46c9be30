//! The `sortition` binary, driven as a user would: real processes against a real ledger
//! started in-process on port 0.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use sortition_ledger::{
    AuditPolicy, Genesis, ModelSpec, Offer, SealingKey, SecurityPolicy, TxKind,
};
use sortition_ledger_service::{Background, LedgerServiceConfig};
use sortition_types::{
    Amount, Hash32, Keypair, ModelId, NodeClass, NodeId, Receipt, SamplingRecord, SignedReceipt,
    StackId, text_response_hash,
};
use tokio::io::AsyncWriteExt;

#[path = "cli/gateway.rs"]
mod gateway;
#[path = "cli/ledger.rs"]
mod ledger;
#[path = "cli/services.rs"]
mod services;

const BIN: &str = env!("CARGO_BIN_EXE_sortition");

/// Runs the binary with `args` (and `stdin`), returning its output.
async fn sortition(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Keep the user's environment from filling flags.
    for (k, _) in std::env::vars() {
        if k.starts_with("SORTITION_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("spawn sortition");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .await
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().await.expect("sortition ran")
}

/// A long-running `sortition` service started by a test; stderr is read line by line so a
/// test waits on the line that says the service is up, never on the clock.
struct Service {
    child: tokio::process::Child,
    stderr: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
}

impl Service {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Service {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(BIN);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SORTITION_")) {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn service");
        let stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        Service { child, stderr }
    }

    /// The first stderr line containing `needle`; panics (after killing the service) if it
    /// does not come within [`SERVICE_PATIENCE`].
    async fn wait_for(&mut self, needle: &str) -> String {
        let seen = tokio::time::timeout(SERVICE_PATIENCE, async {
            loop {
                let line = self.stderr.next_line().await.expect("read stderr");
                let line =
                    line.unwrap_or_else(|| panic!("service exited before printing {needle:?}"));
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await;
        match seen {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill().await;
                panic!("the service did not print {needle:?} within {SERVICE_PATIENCE:?}")
            }
        }
    }

    /// Sends SIGTERM (to this child, by its pid) and returns how it exited. A service that is
    /// still running [`SERVICE_PATIENCE`] later is killed and the test fails, printing what it
    /// wrote meanwhile.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        assert!(sent.expect("kill").success());
        match tokio::time::timeout(SERVICE_PATIENCE, self.child.wait()).await {
            Ok(status) => status.expect("service exits"),
            Err(_) => {
                let _ = self.child.kill().await;
                let mut rest = Vec::new();
                while let Ok(Ok(Some(line))) =
                    tokio::time::timeout(Duration::from_secs(1), self.stderr.next_line()).await
                {
                    rest.push(line);
                }
                panic!(
                    "the service did not stop within {SERVICE_PATIENCE:?} of SIGTERM; it printed:\n{}",
                    rest.join("\n")
                )
            }
        }
    }
}

/// How long a spawned service may take to come up or to stop.
const SERVICE_PATIENCE: Duration = Duration::from_secs(90);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn audited_policy() -> SecurityPolicy {
    SecurityPolicy {
        audit: Some(AuditPolicy {
            q_ppm: 100_000,
            k: 2,
            method: Default::default(),
        }),
        quorum: Some(3),
        confidential_required: false,
        slash_bps: 5_000,
        cost_per_request: Amount(1_000),
        audit_reward: Amount(1_200),
        colluding_share_ppm: 500_000,
    }
}

fn spec(id: &str, policy: SecurityPolicy) -> ModelSpec {
    ModelSpec {
        id: ModelId::new(id),
        weights_digest: Hash32([7; 32]),
        tokenizer_digest: Hash32([7; 32]),
        policy,
    }
}

/// A ledger with an audited model and a plain one.
async fn ledger(dir: &Path, admin: &Keypair, devnet: bool) -> Background {
    let mut g = Genesis::devnet("cli-test", admin.public());
    g.devnet = devnet;
    g.models.push(spec("audited", audited_policy()));
    g.models.push(spec(
        "plain",
        SecurityPolicy {
            audit: None,
            quorum: None,
            ..audited_policy()
        },
    ));
    // Its own beacon group, dealt here, the share in the ledger's data directory (only a devnet
    // genesis may fall back to the public test group).
    let (beacon, shares) =
        sortition_ledger::beacon::deal_from_seed([9; 32], 1).expect("deal a beacon group");
    g.beacon = beacon;
    sortition_ledger_service::store::write_beacon_share(&dir.join("ledger"), &shares[0])
        .expect("beacon share");
    sortition_ledger_service::run_in_background(LedgerServiceConfig::new(dir.join("ledger"), g))
        .await
        .expect("ledger starts")
}

fn key_file(dir: &Path, name: &str, k: &Keypair) -> String {
    let path = dir.join(name);
    std::fs::write(&path, hex::encode(k.secret_bytes())).expect("write key");
    path.display().to_string()
}

#[tokio::test]
async fn every_subcommand_documents_its_flags() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["chat"],
            &[
                "--gateway",
                "--api-key",
                "--model",
                "--prompt",
                "--max-tokens",
                "--temperature",
                "--ledger",
            ],
        ),
        (&["policy", "explain"], &["MODEL", "--ledger"]),
        (
            &["faucet"],
            &["--ledger", "--admin-key", "--to", "--amount"],
        ),
        (
            &["gateway"],
            &[
                "--config",
                "--listen",
                "--ledger",
                "--data-dir",
                "--database-url",
                "--account-key",
                "keys",
                "users",
            ],
        ),
        (
            &["gateway", "keys", "create"],
            &[
                "--user",
                "--name",
                "--rpm",
                "--budget",
                "--data-dir",
                "--database-url",
            ],
        ),
        (&["gateway", "keys", "list"], &["--user", "--data-dir"]),
        (&["gateway", "keys", "revoke"], &["--user", "--key"]),
        (&["gateway", "users", "create"], &["--name", "--data-dir"]),
        (&["gateway", "users", "top-up"], &["--user", "--amount"]),
        (&["gateway", "users", "show"], &["--user"]),
        (
            &["node"],
            &[
                "--config",
                "--listen",
                "--ledger",
                "--data-dir",
                "--model",
                "--embed-model",
                "--price-in",
                "--price-out",
                "--collateral",
                "--key",
            ],
        ),
        (&["receipt", "verify"], &["--ledger"]),
    ];
    for (cmd, flags) in cases {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = sortition(&args, None).await;
        let help = text(&out.stdout);
        assert!(
            out.status.success(),
            "{cmd:?} --help failed: {}",
            text(&out.stderr)
        );
        for f in *flags {
            assert!(
                help.contains(f),
                "{cmd:?} --help does not mention {f}:\n{help}"
            );
        }
    }
}
