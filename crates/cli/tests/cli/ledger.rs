//! Commands that talk to the ledger: `policy explain`, `faucet`, `receipt verify`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_explain_prints_the_ledgers_minimum_collateral() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = Keypair::from_secret([1; 32]);
    let l = ledger(dir.path(), &admin, true).await;
    let want = sortition_ledger::min_collateral(&audited_policy()).expect("valid policy");
    let out = sortition(&["policy", "explain", "audited", "--ledger", &l.url], None).await;
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        s.contains(&format!(
            "S_min = C/((1-r^k) q) - R = {want} ({} micro)",
            want.0
        )),
        "{s}"
    );
    assert!(s.contains("k = 2") && s.contains("n = 3"), "{s}");
    assert!(
        s.contains("0.075000"),
        "d = 0.1 * (1 - 0.5^2) is shown: {s}"
    );

    let missing = sortition(&["policy", "explain", "nope", "--ledger", &l.url], None).await;
    assert!(!missing.status.success());
    l.shutdown().await.expect("ledger stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faucet_mints_on_a_devnet_and_the_ledger_refuses_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = Keypair::from_secret([2; 32]);
    let admin_file = key_file(dir.path(), "admin.key", &admin);
    let to = Keypair::from_secret([3; 32]).public().to_string();

    let dev = ledger(&dir.path().join("dev"), &admin, true).await;
    let out = sortition(
        &[
            "faucet",
            "--ledger",
            &dev.url,
            "--admin-key",
            &admin_file,
            "--to",
            &to,
            "--amount",
            "2.5",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("balance now 2.500000"),
        "{}",
        text(&out.stdout)
    );
    dev.shutdown().await.expect("ledger stops");

    let prod = ledger(&dir.path().join("prod"), &admin, false).await;
    let out = sortition(
        &[
            "faucet",
            "--ledger",
            &prod.url,
            "--admin-key",
            &admin_file,
            "--to",
            &to,
            "--amount",
            "1",
        ],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ledger refused"),
        "{}",
        text(&out.stderr)
    );
    prod.shutdown().await.expect("ledger stops");
}

/// A JSON chat response carrying `receipt`, as a node or gateway would return it.
fn response(node: NodeId, receipt: SignedReceipt, content: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "plain",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", "logprobs": null}],
        "sortition": {"node": node, "receipt": receipt},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_verify_rejects_a_receipt_not_signed_by_the_nodes_ledger_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = Keypair::from_secret([4; 32]);
    let l = ledger(dir.path(), &admin, true).await;
    let client = l.client();
    let operator = Keypair::from_secret([5; 32]);
    client
        .send(
            &admin,
            TxKind::Faucet {
                to: operator.public(),
                amount: Amount::from_units(10).expect("amount"),
            },
        )
        .await
        .expect("funded");
    let class = NodeClass {
        engine_version: "test".into(),
        model_digest: Hash32([7; 32]),
        quantization: "q8_0".into(),
        device: "cpu".into(),
        kernels: "scalar".into(),
    };
    let offer = Offer {
        model: ModelId::new("plain"),
        price_per_m_input: Amount(1),
        price_per_m_output: Amount(1),
    };
    client
        .send(
            &operator,
            TxKind::RegisterNode {
                endpoint: "http://127.0.0.1:9".into(),
                confidential_key: SealingKey(Hash32([9; 32])),
                attestation: vec![],
                class: class.clone(),
                offers: vec![offer],
                capacity: 1,
                collateral: Amount::from_units(1).expect("amount"),
            },
        )
        .await
        .expect("registered");
    let node = client.nodes().await.expect("nodes")[0].id;
    let receipt = Receipt {
        node,
        stack: StackId(1),
        sequence: 0,
        model: ModelId::new("plain"),
        model_digest: Hash32([7; 32]),
        node_class: class.fingerprint(),
        request_hash: Hash32([1; 32]),
        response_hash: text_response_hash("hello", "stop"),
        input_tokens: 3,
        output_tokens: 1,
        sampling: SamplingRecord::default(),
        timestamp_ms: 1,
        custody: sortition_types::Custody::Gateway,
    };
    let honest = SignedReceipt::sign(receipt.clone(), &operator);
    let honest_receipt = honest.clone();
    let out = sortition(
        &["receipt", "verify", "--ledger", &l.url],
        Some(&response(node, honest.clone(), "hello")),
    )
    .await;
    assert!(
        out.status.success(),
        "the genuine receipt verifies: {}",
        text(&out.stderr)
    );

    let forged = SignedReceipt::sign(receipt, &Keypair::from_secret([6; 32]));
    let out = sortition(
        &["receipt", "verify", "--ledger", &l.url],
        Some(&response(node, forged, "hello")),
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not signed by the key the ledger holds"),
        "{}",
        text(&out.stderr)
    );

    let out = sortition(
        &["receipt", "verify", "--ledger", &l.url],
        Some(&response(node, honest, "hell0")),
    )
    .await;
    assert!(!out.status.success(), "tampered text is refused");

    // An answer of several choices (a gateway's split of n > 1): each choice is checked
    // against its own receipt and the body listed with it.
    let bodies = [
        r#"{"model":"plain","prompt":"a","seed":1}"#,
        r#"{"model":"plain","prompt":"b","seed":1}"#,
    ];
    let signed = |i: usize, text: &str| {
        SignedReceipt::sign(
            Receipt {
                request_hash: sortition_types::sha256(bodies[i].as_bytes()),
                response_hash: text_response_hash(text, "stop"),
                ..honest_receipt.receipt.clone()
            },
            &operator,
        )
    };
    let several = |second: &str, body1: &str| {
        serde_json::json!({
            "object": "text_completion",
            "choices": [{"index": 0, "text": "x", "finish_reason": "stop", "logprobs": null},
                        {"index": 1, "text": second, "finish_reason": "stop", "logprobs": null}],
            "sortition": {"choices": [
                {"index": 0, "node": node, "receipt": signed(0, "x"), "request": bodies[0]},
                {"index": 1, "node": node, "receipt": signed(1, "y"), "request": body1}]},
        })
        .to_string()
    };
    let verify = |input: String| {
        let url = l.url.clone();
        async move { sortition(&["receipt", "verify", "--ledger", &url], Some(&input)).await }
    };
    let out = verify(several("y", bodies[1])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("choice 1   ok"),
        "{}",
        text(&out.stdout)
    );
    let out = verify(several("z", bodies[1])).await;
    assert!(
        text(&out.stderr).contains("choice 1 does not match"),
        "{}",
        text(&out.stderr)
    );
    let out = verify(several("y", bodies[0])).await;
    assert!(
        text(&out.stderr).contains("another request"),
        "{}",
        text(&out.stderr)
    );
    l.shutdown().await.expect("ledger stops");
}
