//! Whole flows: `sortition node` as a service, and `chat` through a devnet.

use super::*;

/// The whole network in-process with a tiny random-weight model: `chat --prompt` streams an
/// answer whose receipt checks out against the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_an_answer_with_a_verified_receipt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = sortition_engine::testutil::write_tiny_llama(dir.path(), 11).expect("tiny model");
    let mut cfg = sortition_devnet::DevnetConfig::new(dir.path().join("devnet"));
    cfg.nodes = 1;
    cfg.chat_model = model.display().to_string();
    cfg.embed_model = None;
    let net = sortition_devnet::Devnet::start(cfg)
        .await
        .expect("devnet starts");
    let info = net.info.clone();
    let model_id = info.models.first().cloned().expect("a model is served");

    let args = [
        "chat",
        "--gateway",
        &info.gateway_url,
        "--api-key",
        &info.api_key,
        "--model",
        &model_id,
    ];
    let mut with_prompt = args.to_vec();
    with_prompt.extend([
        "--prompt",
        "Hello",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        "--ledger",
        &info.ledger_url,
    ]);
    let out = sortition(&with_prompt, None).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("verified (gateway + ledger key)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("node {}", info.nodes[0].id)),
        "{stdout}"
    );

    // Interactive: two turns, then /exit. Answers are bounded: a random-weight model need
    // not stop by itself, and an unbounded first answer can fill the context.
    let mut interactive = args.to_vec();
    interactive.extend(["--max-tokens", "8"]);
    let out = sortition(&interactive, Some("Hi\nAgain\n/exit\nnever sent\n")).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stdout.matches("[receipt: verified").count(), 2, "{stdout}");

    // A wrong key: the gateway's OpenAI-shaped error is shown and the exit status is non-zero.
    let bad = [
        "chat",
        "--gateway",
        &info.gateway_url,
        "--api-key",
        "sk-sort-nope",
        "--model",
        &model_id,
        "--prompt",
        "x",
    ];
    let out = sortition(&bad, None).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("HTTP 401"),
        "{}",
        text(&out.stderr)
    );
    net.shutdown().await;
}

/// `sortition node`: file, environment and flags merge (flag > env > file), the node registers
/// on the ledger with those settings, and SIGTERM shuts it down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_service_registers_with_merged_settings_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = sortition_engine::testutil::write_tiny_llama(dir.path(), 12).expect("tiny model");
    let digest = sortition_models::file_digest(&model).expect("digest");
    let admin = Keypair::from_secret([10; 32]);
    let mut g = Genesis::devnet("cli-node", admin.public());
    let plain = SecurityPolicy {
        audit: None,
        quorum: None,
        ..audited_policy()
    };
    g.models.push(ModelSpec {
        id: ModelId::new("tiny-llama-12"),
        weights_digest: digest,
        tokenizer_digest: digest,
        policy: plain,
    });
    let l = sortition_ledger_service::run_in_background(LedgerServiceConfig::new(
        dir.path().join("ledger"),
        g,
    ))
    .await
    .expect("ledger starts");
    let operator = Keypair::from_secret([11; 32]);
    let key = key_file(dir.path(), "node.key", &operator);
    l.client()
        .send(
            &admin,
            TxKind::Faucet {
                to: operator.public(),
                amount: Amount::from_units(10).expect("amount"),
            },
        )
        .await
        .expect("funded");
    let config = dir.path().join("node.toml");
    let toml = format!(
        "ledger = \"{}\"\nmodels = [{:?}]\nprice_in = 11\nprice_out = 22\ncollateral = \"3\"\nlisten = \"127.0.0.1:1\"\n",
        l.url,
        model.display().to_string()
    );
    std::fs::write(&config, toml).expect("config");
    let data = dir.path().join("node-data").display().to_string();
    let config = config.display().to_string();
    let args = [
        "node",
        "--config",
        &config,
        "--listen",
        "127.0.0.1:0",
        "--key",
        &key,
    ];
    let args = [&args[..], &["--data-dir", &data, "--price-out", "33"]].concat();
    let env = [
        ("SORTITION_NODE_PRICE_IN", "44"),
        ("SORTITION_NODE_PRICE_OUT", "55"),
    ];
    let mut node = Service::spawn(&args, &env);
    node.wait_for(" serving on ").await;
    let nodes = l.client().nodes().await.expect("nodes");
    let n = nodes
        .iter()
        .find(|n| n.operator == operator.public())
        .expect("registered");
    assert_eq!(n.collateral, Amount(3_000_000), "collateral from the file");
    assert_eq!(
        n.offers[0].price_per_m_input,
        Amount(44),
        "env beats the file"
    );
    assert_eq!(
        n.offers[0].price_per_m_output,
        Amount(33),
        "the flag beats env and file"
    );
    let status = node.terminate().await;
    assert!(status.success(), "{status:?}");
    l.shutdown().await.expect("ledger stops");
}
