#![allow(clippy::unwrap_used)]
//! Confidential requests end to end (DESIGN flow 7, issue 7): a real devnet (ledger, two nodes
//! with the INSECURE dev attester running the default model, a gateway) on loopback; the
//! client SDK verifies the nodes' evidence itself, seals a prompt holding a unique marker, and
//! sends it through the gateway. The marker must reach nobody but the node: not the gateway's
//! logs (captured at debug level), its SQLite files, or its stored audit payloads. Confidential
//! requests are audited through their executor, which is slashed if it withholds them.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sortition_confidential::client::{
    ClientError, ConfidentialClient, LedgerEpoch, LedgerNode, RawAnswer, prepare, verify_node,
};
use sortition_confidential::wire::StreamItem;
use sortition_confidential::{
    Attester, AttesterKind, ConfidentialKey, DevAttester, Policy, PolicyVerifier, StreamError,
};
use sortition_devnet::{Devnet, DevnetConfig};
use sortition_ledger::{AuditOutcome, Event, SealingKey, SlashReason, TxKind};
use sortition_ledger_client::{Cursor, LedgerClient};
use sortition_types::{Custody, Hash32, Keypair, NodeId, sha256};

const CHAT: &str = "smollm2-135m-instruct";

/// Every log line of the process (all targets, debug and up).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Captured {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    logs
}

fn dev_policy() -> Policy {
    Policy {
        allow_insecure_dev: true,
        ..Policy::default()
    }
}

fn body(prompt: &str, max_tokens: u32, stream: bool) -> Value {
    json!({"model": CHAT, "messages": [{"role": "user", "content": prompt}],
           "max_tokens": max_tokens, "temperature": 0, "stream": stream})
}

/// Every file under `dir` (the gateway's SQLite database, its WAL, keys, cursors), as bytes.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn ledger_view(ledger: &str) -> (LedgerEpoch, Vec<LedgerNode>) {
    let http = reqwest::Client::new();
    let epoch = http
        .get(format!("{ledger}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nodes = http
        .get(format!("{ledger}/v1/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (epoch, nodes)
}

/// Waits (on the ledger's event stream) until every node in `nodes` rotated in an epoch > `after`.
async fn wait_rotation(ledger: &LedgerClient, nodes: &[NodeId], after: u64) {
    let from = Cursor {
        height: ledger
            .status()
            .await
            .unwrap()
            .height
            .saturating_sub(2)
            .max(1),
        index: 0,
    };
    let mut events = Box::pin(ledger.events(from).await.unwrap());
    let mut seen = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(deadline);
    while seen.len() < nodes.len() {
        tokio::select! {
            _ = &mut deadline => panic!("keys did not rotate after epoch {after}: {seen:?}"),
            ev = events.next() => {
                if let Some(Ok((_, Event::KeyRotated { node, epoch, .. }))) = ev
                    && epoch > after && nodes.contains(&node) && !seen.contains(&node)
                {
                    seen.push(node);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_prompts_reach_only_the_attested_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DevnetConfig::new(dir.path());
    cfg.nodes = 2;
    cfg.embed_model = None;
    cfg.attester = Some(AttesterKind::InsecureDev);
    // 80 blocks of 250 ms: keys rotate every ~20 s, so the test sees a rotation.
    cfg.epoch_length_blocks = Some(80);
    let net = Devnet::start(cfg).await.expect("devnet starts");
    let info = net.info.clone();
    let ledger = LedgerClient::new(&info.ledger_url);
    let ids: Vec<NodeId> = info.nodes.iter().map(|n| n.id).collect();
    let client = ConfidentialClient::new(
        &info.ledger_url,
        &info.gateway_url,
        &info.api_key,
        dev_policy(),
    );

    // Keys are on the ledger for the current epoch, bound by evidence the client verifies.
    let sel = client.select(CHAT).await.unwrap();
    assert_eq!(sel.nodes.len(), 2, "refused: {:?}", sel.refused);
    assert!(sel.nodes.iter().all(|n| n.report.insecure));

    // Fail closed: the default policy refuses the INSECURE dev evidence, and sends nothing.
    let strict = ConfidentialClient::new(
        &info.ledger_url,
        &info.gateway_url,
        &info.api_key,
        Policy::default(),
    );
    let refused = strict
        .chat(&body("hello", 4, false), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::NoAttestedNode { refused, .. } if refused.contains("INSECURE")),
        "{refused}"
    );

    // The marker request, not streamed, then streamed.
    let marker = format!("zq{}", &hex::encode(sha256(&rand_bytes()).0)[..20]);
    let prompt = format!("My secret code word is {marker}. Say hello.");
    let whole = client
        .chat(&body(&prompt, 12, false), |_| {})
        .await
        .unwrap();
    assert!(!whole.text.is_empty());
    assert_eq!(whole.receipt.receipt.node, whole.node);
    assert!(whole.verified_by_gateway);
    let node = ledger.node(whole.node).await.unwrap();
    whole.receipt.verify(&node.operator).unwrap();
    assert_eq!(
        whole.receipt.receipt.request_hash,
        sha256(&serde_json::to_vec(&body(&prompt, 12, false)).unwrap()),
        "the receipt commits to the plaintext request"
    );
    let mut pieces = String::new();
    let streamed = client
        .chat(&body(&prompt, 12, true), |t| pieces.push_str(t))
        .await
        .unwrap();
    assert_eq!(streamed.text, pieces);
    assert_eq!(streamed.text, whole.text, "greedy: streamed == whole");
    assert_eq!(streamed.finish_reason, whole.finish_reason);

    // The gateway only relayed ciphertext: the marker is in none of its logs, files or
    // payloads. (Checked before any plain request could put it there.)
    let gw_dir = dir.path().canonicalize().unwrap().join("gateway");
    for (path, bytes) in files_under(&gw_dir) {
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "marker found in {path}"
        );
    }
    // (Stored audit payloads live in that SQLite database, WAL included: scanned above.)
    let captured = logs.0.lock().unwrap().clone();
    assert!(
        contains(&captured, b"sortition_gateway"),
        "the gateway's debug logs were captured"
    );
    assert!(
        !contains(&captured, marker.as_bytes()),
        "marker found in the process's logs"
    );

    // The answer is right: the same prompt in the clear gives the same greedy text.
    let plain: Value = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", info.gateway_url))
        .bearer_auth(&info.api_key)
        .json(
            &json!({"model": CHAT, "messages": [{"role": "user", "content": prompt}],
                      "max_tokens": 12, "temperature": 0}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        plain["choices"][0]["message"]["content"].as_str(),
        Some(whole.text.as_str()),
        "{plain}"
    );

    // Tampered, replayed, reordered and truncated chunks are refused by the client.
    let target = sel.nodes[0].clone();
    let raw_stream = || async {
        let p = prepare(&target, &body("Count to five.", 6, true)).unwrap();
        let raw = client.send_raw(&p.envelope).await.unwrap();
        let RawAnswer::Stream(items) = raw.clone() else {
            panic!("streamed")
        };
        assert!(items.len() >= 3, "{items:?}");
        (p, items)
    };
    let (p, items) = raw_stream().await;
    ConfidentialClient::open(p, RawAnswer::Stream(items.clone())).unwrap();
    let sealed_at = |items: &[StreamItem]| {
        items
            .iter()
            .position(|i| matches!(i, StreamItem::Sealed { .. }))
            .unwrap()
    };
    let stream_err = |r: Result<_, ClientError>| match r {
        Err(ClientError::Stream(e)) => e,
        other => panic!("expected a stream error, got {other:?}"),
    };
    let (p, mut items) = raw_stream().await;
    let i = sealed_at(&items);
    if let StreamItem::Sealed { sealed } = &mut items[i] {
        sealed.ciphertext[0] ^= 1;
    }
    assert!(matches!(
        stream_err(ConfidentialClient::open(p, RawAnswer::Stream(items))),
        StreamError::Tampered { .. }
    ));
    let (p, mut items) = raw_stream().await;
    let i = sealed_at(&items);
    items.insert(i + 1, items[i].clone());
    assert!(matches!(
        stream_err(ConfidentialClient::open(p, RawAnswer::Stream(items))),
        StreamError::Replayed { .. }
    ));
    let (p, mut items) = raw_stream().await;
    let i = sealed_at(&items);
    items.swap(i, i + 1);
    assert!(matches!(
        stream_err(ConfidentialClient::open(p, RawAnswer::Stream(items))),
        StreamError::OutOfOrder { .. }
    ));
    let (p, mut items) = raw_stream().await;
    let last_sealed = items
        .iter()
        .rposition(|i| matches!(i, StreamItem::Sealed { .. }))
        .unwrap();
    items.remove(last_sealed);
    assert!(matches!(
        stream_err(ConfidentialClient::open(p, RawAnswer::Stream(items))),
        StreamError::Truncated { .. }
    ));
    // A chunk of another request does not open under this request's key.
    let (p1, items1) = raw_stream().await;
    let (_, items2) = raw_stream().await;
    let mut mixed = items1.clone();
    let i = sealed_at(&mixed);
    mixed[i] = items2[sealed_at(&items2)].clone();
    assert!(matches!(
        stream_err(ConfidentialClient::open(p1, RawAnswer::Stream(mixed))),
        StreamError::Tampered { .. }
    ));

    // A gateway that rewrites the clear metadata makes the node refuse (400), unbilled.
    let mut p = prepare(&target, &body("hi", 4, false)).unwrap();
    p.envelope.max_tokens = 400;
    match client.send_raw(&p.envelope).await {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (400, "metadata_mismatch"))
        }
        other => panic!("{other:?}"),
    }

    // Fail closed on evidence that does not verify. Re-bound evidence (the key of another
    // node, or another epoch's nonce) is refused by the client's own check...
    let (epoch, nodes) = ledger_view(&info.ledger_url).await;
    let verifier = PolicyVerifier::new(dev_policy());
    let mut swapped = nodes[0].clone();
    swapped.confidential_key = nodes[1].confidential_key;
    assert!(verify_node(&swapped, &epoch, CHAT, &verifier, now()).is_err());
    let mut stale = nodes[0].clone();
    stale.key_nonce = sha256(b"another epoch");
    assert!(verify_node(&stale, &epoch, CHAT, &verifier, now()).is_err());
    // ...and a node that publishes evidence not binding its key is refused by selection and
    // never sent to: node 1's operator publishes evidence made for another node id.
    let operator = node_key(dir.path(), 1);
    let forged_key =
        ConfidentialKey::generate(NodeId(999), epoch.epoch, epoch.epoch_nonce).unwrap();
    let forged = DevAttester
        .evidence(&forged_key.report_data(), now())
        .unwrap();
    ledger
        .send(
            &operator,
            TxKind::RotateConfidentialKey {
                key: SealingKey(Hash32(forged_key.public_key())),
                attestation: serde_json::to_vec(&forged).unwrap(),
                epoch: epoch.epoch,
            },
        )
        .await
        .unwrap();
    let sel = client.select(CHAT).await.unwrap();
    assert_eq!(sel.nodes.len(), 1);
    assert_ne!(sel.nodes[0].id, ids[1]);
    let (_, why) = sel.refused.iter().find(|(id, _)| *id == ids[1]).unwrap();
    assert!(why.contains("report data"), "{why}");
    for _ in 0..3 {
        let a = client.chat(&body("hi", 4, false), |_| {}).await.unwrap();
        assert_ne!(a.node, ids[1]);
    }

    // Keys rotate at the epoch turn with fresh evidence; the client then uses the new key.
    wait_rotation(&ledger, &ids, epoch.epoch).await;
    let (epoch2, _) = ledger_view(&info.ledger_url).await;
    assert!(epoch2.epoch > epoch.epoch);
    assert_ne!(epoch2.epoch_nonce, epoch.epoch_nonce);
    let old = sel.nodes[0].clone();
    let after = client.chat(&body("hi", 4, false), |_| {}).await.unwrap();
    assert!(after.receipt.receipt.request_hash != Hash32::ZERO);
    let fresh = client.select(CHAT).await.unwrap();
    assert_eq!(fresh.nodes.len(), 2, "{:?}", fresh.refused);
    let renewed = fresh.nodes.iter().find(|n| n.id == old.id).unwrap();
    assert_ne!(renewed.recipient.public_key, old.recipient.public_key);
    assert!(renewed.recipient.key_epoch > old.recipient.key_epoch);

    net.shutdown().await;
}

fn node_key(dir: &Path, i: usize) -> Keypair {
    let text = std::fs::read_to_string(dir.join("keys").join(format!("node-{i}.key"))).unwrap();
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).unwrap();
    Keypair::from_secret(secret)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    b
}

/// A devnet whose nodes all run the dev attester, one of them adversary `mode`, every claim
/// audited and claimed quickly; `tune` adjusts the config. Returns the network, the
/// adversary's id and a client that accepts dev evidence.
async fn audited_devnet(
    dir: &std::path::Path,
    mode: sortition_node::adversary::Mode,
    tune: impl FnOnce(&mut DevnetConfig),
) -> (Devnet, NodeId, ConfidentialClient) {
    let mut cfg = DevnetConfig::new(dir);
    cfg.embed_model = None;
    cfg.attester = Some(AttesterKind::InsecureDev);
    cfg.adversary = Some(mode);
    cfg.audit_q_ppm = 1_000_000;
    cfg.node_claim_interval = Duration::from_millis(500);
    cfg.claim_policy = sortition_node::claims::ClaimPolicy {
        max_age_ms: 1_000,
        ..Default::default()
    };
    tune(&mut cfg);
    let net = Devnet::start(cfg).await.expect("devnet starts");
    let info = &net.info;
    let adversary = info
        .nodes
        .iter()
        .find(|n| n.adversary.is_some())
        .unwrap()
        .id;
    let client = ConfidentialClient::new(
        &info.ledger_url,
        &info.gateway_url,
        &info.api_key,
        dev_policy(),
    );
    (net, adversary, client)
}

/// Confidential requests are audited too (issue 7): every receipt is sampled, the executor
/// re-seals each request to its attested auditors, and a node that scrambles its sealed
/// answers is caught, disputed and slashed while the honest executors' audits pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confidential_requests_are_audited_by_attested_peers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (net, adversary, client) =
        audited_devnet(dir.path(), sortition_node::adversary::Mode::Random, |_| {}).await;
    let info = net.info.clone();
    let sel = client.select(CHAT).await.unwrap();
    assert_eq!(sel.nodes.len(), 4, "refused: {:?}", sel.refused);
    // One sealed request to each node, the adversary included.
    for (i, target) in sel.nodes.iter().enumerate() {
        let p = prepare(
            target,
            &body(&format!("Name a color, number {i}."), 8, false),
        )
        .unwrap();
        let raw = client.send_raw(&p.envelope).await.unwrap();
        let answer = ConfidentialClient::open(p, raw).unwrap();
        assert_eq!(answer.node, target.id);
    }

    let ledger = LedgerClient::new(&info.ledger_url);
    let mut events = Box::pin(ledger.events(Cursor::START).await.unwrap());
    let (mut slashed, mut honest_passed) = (false, 0);
    let mut honest_slashes = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(item) = events.next().await {
            match item.unwrap().1 {
                Event::Slashed { node, reason, .. } if node == adversary => {
                    slashed |= reason == sortition_ledger::SlashReason::ExecutorAtFault;
                }
                Event::Slashed { node, reason, .. } => honest_slashes.push((node, reason)),
                Event::AuditClosed { audit, outcome } => {
                    let a = ledger.audit(audit).await.unwrap();
                    use sortition_ledger::AuditOutcome::{ExecutorCleared, Passed};
                    if a.executor != adversary && matches!(outcome, Passed | ExecutorCleared) {
                        honest_passed += 1;
                    }
                }
                _ => {}
            }
            if slashed && honest_passed >= 3 {
                return;
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "timed out: adversary slashed {slashed}, honest audits passed {honest_passed}"
    );
    assert!(honest_slashes.is_empty(), "{honest_slashes:?}");
    // The payloads reached the auditors sealed, from the executors (the gateway has none).
    let mut delivered = 0;
    for n in &info.nodes {
        let m = reqwest::get(format!("{}/metrics", n.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        delivered += m
            .lines()
            .filter_map(|l| {
                l.strip_prefix(
                    "sortition_node_confidential_audit_deliveries_total{label=\"delivered\"} ",
                )
            })
            .map(|v| v.trim().parse::<u64>().unwrap())
            .sum::<u64>();
    }
    assert!(delivered >= 8, "sealed deliveries: {delivered}");
    drop(events);
    net.shutdown().await;
}

/// Withholding does not pay (issue: confidential custody): a node that truncates its sealed
/// answers and never re-seals the requests it keeps to its auditors. Every receipt is audited;
/// the auditors, then a dispute's committee, never get the request and say so, and since its
/// receipts put the requests in the executor's custody the ledger slashes it for withholding
/// them and refunds the owner, while no honest node is slashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executor_withholding_confidential_requests_is_slashed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (net, adversary, client) = audited_devnet(
        dir.path(),
        sortition_node::adversary::Mode::WithholdCustody,
        // Nobody re-executes anything here (nobody gets a request): 10 s phases are plenty.
        |cfg| cfg.audit_phase_blocks = 40,
    )
    .await;
    let info = net.info.clone();
    let sel = client.select(CHAT).await.unwrap();
    let target = sel.nodes.iter().find(|n| n.id == adversary).unwrap();
    // Two sealed requests to the adversary: answered (truncated), receipted, and the receipts
    // say the node keeps the requests (the gateway and the client both check it).
    let mut stacks = Vec::new();
    for i in 0..2 {
        let p = prepare(
            target,
            &body(&format!("Name a fruit, number {i}."), 8, false),
        )
        .unwrap();
        let raw = client.send_raw(&p.envelope).await.unwrap();
        let answer = ConfidentialClient::open(p, raw).unwrap();
        assert_eq!(answer.node, adversary);
        assert!(answer.verified_by_gateway);
        assert_eq!(answer.receipt.receipt.custody, Custody::Executor);
        stacks.push(answer.receipt.receipt.stack);
    }

    let ledger = LedgerClient::new(&info.ledger_url);
    let mut events = Box::pin(ledger.events(Cursor::START).await.unwrap());
    let (mut slashed, mut refunded, mut unavailable_votes) = (false, false, 0);
    let mut other_slashes = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(item) = events.next().await {
            match item.unwrap().1 {
                Event::Slashed { node, reason, .. } if node == adversary => {
                    slashed |= reason == SlashReason::PayloadWithheld;
                    if reason != SlashReason::PayloadWithheld {
                        other_slashes.push((node, reason));
                    }
                }
                Event::Slashed { node, reason, .. } => other_slashes.push((node, reason)),
                Event::Refunded { stack, .. } if stacks.contains(&stack) => refunded = true,
                Event::DisputeResolved {
                    executor_at_fault: true,
                    unavailable_votes: n,
                    ..
                } => unavailable_votes += n,
                _ => {}
            }
            if slashed && refunded {
                return;
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "timed out: adversary slashed for withholding {slashed}, owner refunded {refunded}"
    );
    assert!(other_slashes.is_empty(), "{other_slashes:?}");
    assert!(unavailable_votes > 0, "the committee said it never got it");
    let audits = ledger.audits().await.unwrap();
    assert!(
        audits.iter().all(|a| a.executor == adversary),
        "only the adversary served: {audits:?}"
    );
    assert!(
        audits
            .iter()
            .any(|a| a.outcome == Some(AuditOutcome::ExecutorAtFault)),
        "{audits:?}"
    );
    assert!(
        audits.iter().all(|a| !matches!(
            a.outcome,
            Some(AuditOutcome::Passed | AuditOutcome::Unverifiable)
        )),
        "no audit of the withheld requests passed or ended unverifiable: {audits:?}"
    );
    // Nothing was ever delivered: the honest nodes judged nothing.
    let adversary_url = &info.nodes.iter().find(|n| n.id == adversary).unwrap().url;
    let m = reqwest::get(format!("{adversary_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let delivered: u64 = m
        .lines()
        .filter_map(|l| {
            l.strip_prefix(
                "sortition_node_confidential_audit_deliveries_total{label=\"delivered\"} ",
            )
        })
        .map(|v| v.trim().parse::<u64>().unwrap())
        .sum();
    assert_eq!(delivered, 0, "the adversary delivered a sealed request");
    drop(events);
    net.shutdown().await;
}

/// The devnets of this file run one at a time (each is a whole network on two cores).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
