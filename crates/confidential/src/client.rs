//! The client side of flow 7 (feature `client`): a Rust SDK that talks to a ledger and a
//! gateway over HTTP and trusts neither.
//!
//! 1. Reads the ledger's status (current epoch and its nonce) and node registry.
//! 2. Keeps the nodes that are active, serve the model, and published a key in the current
//!    epoch whose evidence verifies under the caller's [`Policy`] with report data binding
//!    (key, epoch nonce, node id). Everything else is refused, with the reason kept
//!    ([`Selection::refused`]); no verified node means no request (fail closed).
//! 3. Seals the OpenAI body to the chosen node ([`prepare`]) with the routing metadata as
//!    associated data, and posts the [`Envelope`] to the gateway.
//! 4. Opens the answer chunk by chunk ([`Decoder`]): reordered, replayed, dropped, tampered or
//!    truncated chunks are refused; then checks the receipt: signed by the key the ledger holds
//!    for the node, committing to the plaintext request and to the decrypted answer, and
//!    leaving the request in the node's custody for audits (nobody else can deliver it, and
//!    the ledger slashes a node that withholds it).
//!
//! Depends on no node or gateway code: only HTTP and the wire shapes in [`crate::wire`].

use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use sortition_types::{
    Custody, Hash32, NodeId, PublicKey, SignedReceipt, sha256, text_response_hash,
};

use crate::attest::{Evidence, Policy, PolicyVerifier, VerifiedReport};
use crate::keys::RecipientKey;
use crate::seal::{SealError, seal_request};
use crate::stream::{ResponseOpener, StreamError};
use crate::wire::{
    CONFIDENTIAL_CHAT_PATH, Envelope, SealedCompletion, StreamItem, requested_max_tokens,
};

/// Everything that can go wrong on the client. None of them carries plaintext.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ledger: {0}")]
    Ledger(String),
    #[error(
        "no node serving {model} has a verified current-epoch confidential key; refusing to \
         send (refused: {refused})"
    )]
    NoAttestedNode { model: String, refused: String },
    #[error("the request body is not usable: {0}")]
    BadRequest(String),
    #[error("gateway answered {status} ({code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("http: {0}")]
    Http(String),
    #[error("sealing failed: {0}")]
    Seal(#[from] SealError),
    #[error("sealed answer refused: {0}")]
    Stream(#[from] StreamError),
    #[error("receipt refused: {0}")]
    Receipt(String),
    #[error("malformed answer: {0}")]
    Decode(String),
}

/// The ledger's current epoch, as its status reports it.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct LedgerEpoch {
    pub epoch: u64,
    pub epoch_nonce: Hash32,
}

/// The fields of a ledger node record that confidential requests use.
#[derive(Clone, Debug, Deserialize)]
pub struct LedgerNode {
    pub id: NodeId,
    pub operator: PublicKey,
    pub status: Value,
    pub offers: Vec<LedgerOffer>,
    pub confidential_key: Hash32,
    pub attestation: Vec<u8>,
    #[serde(default)]
    pub key_epoch: u64,
    #[serde(default)]
    pub key_nonce: Hash32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LedgerOffer {
    pub model: String,
}

/// A node whose confidential key the client verified itself.
#[derive(Clone, Debug)]
pub struct AttestedNode {
    pub id: NodeId,
    /// The receipt-signing key the ledger holds for the node.
    pub operator: PublicKey,
    pub recipient: RecipientKey,
    pub report: VerifiedReport,
}

/// The outcome of node selection: the verified nodes and why the others were refused.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub nodes: Vec<AttestedNode>,
    pub refused: Vec<(NodeId, String)>,
}

/// Checks one ledger node for `model` in `epoch` under `verifier` at `now_unix`.
pub fn verify_node(
    n: &LedgerNode,
    epoch: &LedgerEpoch,
    model: &str,
    verifier: &PolicyVerifier,
    now_unix: u64,
) -> Result<AttestedNode, String> {
    if n.status.get("status").and_then(Value::as_str) != Some("active") {
        return Err("not active".into());
    }
    if !n.offers.iter().any(|o| o.model == model) {
        return Err(format!("does not serve {model}"));
    }
    if n.attestation.is_empty() || n.confidential_key == Hash32::ZERO {
        return Err("published no confidential key".into());
    }
    if n.key_epoch != epoch.epoch || n.key_nonce != epoch.epoch_nonce {
        return Err(format!(
            "key is from epoch {}, the ledger is in epoch {} (stale)",
            n.key_epoch, epoch.epoch
        ));
    }
    let evidence: Evidence = serde_json::from_slice(&n.attestation)
        .map_err(|e| format!("evidence does not parse: {e}"))?;
    let (recipient, report) = RecipientKey::verify_attested(
        n.id,
        n.key_epoch,
        &epoch.epoch_nonce,
        n.confidential_key.0,
        &evidence,
        verifier,
        now_unix,
    )
    .map_err(|e| format!("evidence refused: {e}"))?;
    Ok(AttestedNode {
        id: n.id,
        operator: n.operator,
        recipient,
        report,
    })
}

/// A sealed request ready to send, and what is needed to read its answer.
#[derive(Debug)]
pub struct Prepared {
    pub envelope: Envelope,
    pub node: AttestedNode,
    opener: ResponseOpener,
    request_hash: Hash32,
}

/// Seals an OpenAI chat body to `node`. The metadata comes from the body itself.
pub fn prepare(node: &AttestedNode, body: &Value) -> Result<Prepared, ClientError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::BadRequest("`model` (a string) is required".into()))?
        .to_string();
    let max_tokens = requested_max_tokens(body)
        .ok_or_else(|| ClientError::BadRequest("`max_tokens` must be a u32".into()))?;
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let plaintext = serde_json::to_vec(body).map_err(|e| ClientError::BadRequest(e.to_string()))?;
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| ClientError::BadRequest(format!("no randomness: {e}")))?;
    let aad = Envelope::metadata_aad(&model, node.id, max_tokens, stream);
    let (sealed, opener) = seal_request(&node.recipient, Hash32(id), &plaintext, &aad)?;
    Ok(Prepared {
        envelope: Envelope {
            model,
            node: node.id,
            max_tokens,
            stream,
            sealed,
        },
        node: node.clone(),
        opener,
        request_hash: sha256(&plaintext),
    })
}

/// A decrypted, checked answer.
#[derive(Clone, Debug)]
pub struct ConfidentialAnswer {
    pub node: NodeId,
    pub text: String,
    pub finish_reason: String,
    pub receipt: SignedReceipt,
    /// Whether the gateway said it checked the receipt (the client checked it regardless).
    pub verified_by_gateway: bool,
    /// The decrypted `chat.completion` object (non-streamed answers only).
    pub completion: Option<Value>,
    /// What the node's evidence established (INSECURE for dev evidence).
    pub report: VerifiedReport,
}

/// Opens a sealed answer in order and checks its receipt at the end.
#[derive(Debug)]
pub struct Decoder {
    prepared: Prepared,
    text: String,
    finish: Option<String>,
    receipt: Option<(SignedReceipt, bool)>,
    completion: Option<Value>,
}

fn decode_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Decode(e.to_string())
}

impl Decoder {
    pub fn new(prepared: Prepared) -> Self {
        Decoder {
            prepared,
            text: String::new(),
            finish: None,
            receipt: None,
            completion: None,
        }
    }

    /// One streamed event; returns the new text it carried, if any.
    pub fn push(&mut self, item: StreamItem) -> Result<Option<String>, ClientError> {
        match item {
            StreamItem::Error { error } => Err(api_error(502, &error)),
            StreamItem::Receipt { sortition } => {
                if !self.prepared.opener.is_finished() {
                    return Err(ClientError::Stream(
                        self.prepared
                            .opener
                            .finish()
                            .err()
                            .unwrap_or(StreamError::Truncated { received: 0 }),
                    ));
                }
                self.receipt = Some((
                    sortition.receipt,
                    sortition.verified_by_gateway == Some(true),
                ));
                Ok(None)
            }
            StreamItem::Sealed { sealed } => {
                if self.receipt.is_some() {
                    return Err(ClientError::Stream(StreamError::AfterFinal {
                        seq: sealed.seq,
                    }));
                }
                let plain = self.prepared.opener.open_chunk(&sealed)?;
                let v: Value = serde_json::from_slice(&plain).map_err(decode_err)?;
                let choice = &v["choices"][0];
                if let Some(f) = choice["finish_reason"].as_str() {
                    self.finish = Some(f.to_string());
                }
                match choice["delta"]["content"].as_str() {
                    Some(t) if !t.is_empty() => {
                        self.text.push_str(t);
                        Ok(Some(t.to_string()))
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    /// A whole (non-streamed) answer.
    pub fn push_whole(&mut self, c: SealedCompletion) -> Result<(), ClientError> {
        if !c.sealed.is_final {
            return Err(ClientError::Stream(StreamError::Truncated { received: 0 }));
        }
        let plain = self.prepared.opener.open_chunk(&c.sealed)?;
        let v: Value = serde_json::from_slice(&plain).map_err(decode_err)?;
        let choice = &v["choices"][0];
        self.text = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| decode_err("answer has no message content"))?
            .to_string();
        self.finish = choice["finish_reason"].as_str().map(str::to_string);
        self.completion = Some(v);
        self.receipt = Some((
            c.sortition.receipt,
            c.sortition.verified_by_gateway == Some(true),
        ));
        Ok(())
    }

    /// Ends the answer: every chunk arrived, and the receipt is the node's own (ledger key),
    /// for this request's plaintext and this decrypted answer.
    pub fn finish(self) -> Result<ConfidentialAnswer, ClientError> {
        self.prepared.opener.finish()?;
        let (receipt, by_gateway) = self
            .receipt
            .ok_or_else(|| ClientError::Receipt("the answer carries no receipt".into()))?;
        let finish = self
            .finish
            .ok_or_else(|| decode_err("the answer has no finish_reason"))?;
        let node = &self.prepared.node;
        let r = &receipt.receipt;
        if r.node != node.id {
            return Err(ClientError::Receipt(format!(
                "receipt is from {}, the request was sealed to {}",
                r.node, node.id
            )));
        }
        receipt.verify(&node.operator).map_err(|_| {
            ClientError::Receipt(format!(
                "signature does not match the ledger's key for {}",
                node.id
            ))
        })?;
        if r.request_hash != self.prepared.request_hash {
            return Err(ClientError::Receipt(
                "receipt does not commit to the request that was sealed".into(),
            ));
        }
        if r.response_hash != text_response_hash(&self.text, &finish) {
            return Err(ClientError::Receipt(
                "receipt does not commit to the decrypted answer".into(),
            ));
        }
        if r.custody != Custody::Executor {
            return Err(ClientError::Receipt(format!(
                "receipt leaves the request to the {} for audits; only the node can deliver it",
                r.custody
            )));
        }
        Ok(ConfidentialAnswer {
            node: node.id,
            text: self.text,
            finish_reason: finish,
            receipt,
            verified_by_gateway: by_gateway,
            completion: self.completion,
            report: node.report.clone(),
        })
    }
}

fn api_error(status: u16, error: &Value) -> ClientError {
    let field = |k: &str| error[k].as_str().unwrap_or_default().to_string();
    ClientError::Api {
        status,
        code: field("code"),
        message: field("message"),
    }
}

/// What the gateway sent back, before opening. (Short-lived; the size difference between
/// the variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum RawAnswer {
    Whole(SealedCompletion),
    Stream(Vec<StreamItem>),
}

/// A confidential-chat client: the ledger it reads keys from, the gateway it sends through,
/// and the policy it verifies evidence with.
#[derive(Clone, Debug)]
pub struct ConfidentialClient {
    http: reqwest::Client,
    ledger: String,
    gateway: String,
    api_key: String,
    verifier: PolicyVerifier,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ConfidentialClient {
    pub fn new(ledger: &str, gateway: &str, api_key: &str, policy: Policy) -> Self {
        ConfidentialClient {
            http: reqwest::Client::new(),
            ledger: ledger.trim_end_matches('/').to_string(),
            gateway: gateway.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            verifier: PolicyVerifier::new(policy),
        }
    }

    async fn ledger_get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.ledger))
            .send()
            .await
            .map_err(|e| ClientError::Ledger(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(ClientError::Ledger(format!("{path}: {}", resp.status())));
        }
        resp.json()
            .await
            .map_err(|e| ClientError::Ledger(format!("{path}: {e}")))
    }

    /// The nodes the client would seal `model` requests to, verified now.
    pub async fn select(&self, model: &str) -> Result<Selection, ClientError> {
        let epoch: LedgerEpoch = self.ledger_get("/v1/status").await?;
        let nodes: Vec<LedgerNode> = self.ledger_get("/v1/nodes").await?;
        let now = now_unix();
        let mut sel = Selection::default();
        for n in &nodes {
            match verify_node(n, &epoch, model, &self.verifier, now) {
                Ok(a) => sel.nodes.push(a),
                Err(why) => sel.refused.push((n.id, why)),
            }
        }
        Ok(sel)
    }

    /// One verified node for `model`, chosen at random; fails closed when there is none.
    ///
    /// Right after an epoch turn the nodes' keys are stale until they publish new ones (one
    /// block later): when every refusal is a stale key, selection is retried a few times.
    pub async fn choose(&self, model: &str) -> Result<AttestedNode, ClientError> {
        let mut sel = self.select(model).await?;
        for _ in 0..5 {
            let rotating = !sel.refused.is_empty()
                && sel.nodes.is_empty()
                && sel.refused.iter().any(|(_, why)| why.ends_with("(stale)"));
            if !rotating {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            sel = self.select(model).await?;
        }
        if sel.nodes.is_empty() {
            let refused = sel
                .refused
                .iter()
                .map(|(id, why)| format!("{id}: {why}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ClientError::NoAttestedNode {
                model: model.into(),
                refused: if refused.is_empty() {
                    "no nodes on the ledger".into()
                } else {
                    refused
                },
            });
        }
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| ClientError::BadRequest(e.to_string()))?;
        let i = (u64::from_le_bytes(b) % sel.nodes.len() as u64) as usize;
        Ok(sel.nodes.swap_remove(i))
    }

    async fn post(&self, envelope: &Envelope) -> Result<reqwest::Response, ClientError> {
        let resp = self
            .http
            .post(format!("{}{CONFIDENTIAL_CHAT_PATH}", self.gateway))
            .bearer_auth(&self.api_key)
            .json(envelope)
            .send()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or_default();
        Err(api_error(status, &v["error"]))
    }

    /// Sends a prepared request and collects the answer without opening it (for tests and
    /// tools that inspect the wire).
    pub async fn send_raw(&self, envelope: &Envelope) -> Result<RawAnswer, ClientError> {
        let resp = self.post(envelope).await?;
        if !envelope.stream {
            return Ok(RawAnswer::Whole(resp.json().await.map_err(decode_err)?));
        }
        let mut items = Vec::new();
        let mut events = resp.bytes_stream().eventsource();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(decode_err)?;
            if ev.data == "[DONE]" {
                break;
            }
            items.push(serde_json::from_str(&ev.data).map_err(decode_err)?);
        }
        Ok(RawAnswer::Stream(items))
    }

    /// Opens and checks a raw answer.
    pub fn open(prepared: Prepared, raw: RawAnswer) -> Result<ConfidentialAnswer, ClientError> {
        let mut d = Decoder::new(prepared);
        match raw {
            RawAnswer::Whole(c) => d.push_whole(c)?,
            RawAnswer::Stream(items) => {
                for i in items {
                    d.push(i)?;
                }
            }
        }
        d.finish()
    }

    /// Chooses a verified node, seals `body` to it, sends it through the gateway, and opens
    /// the answer; `on_text` sees each piece of text as it is opened (streamed bodies).
    pub async fn chat(
        &self,
        body: &Value,
        mut on_text: impl FnMut(&str) + Send,
    ) -> Result<ConfidentialAnswer, ClientError> {
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| ClientError::BadRequest("`model` (a string) is required".into()))?;
        let node = self.choose(model).await?;
        self.chat_to(&node, body, &mut on_text).await
    }

    /// As [`ConfidentialClient::chat`], to a node the caller verified.
    pub async fn chat_to(
        &self,
        node: &AttestedNode,
        body: &Value,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ConfidentialAnswer, ClientError> {
        let prepared = prepare(node, body)?;
        let resp = self.post(&prepared.envelope).await?;
        let stream = prepared.envelope.stream;
        let mut d = Decoder::new(prepared);
        if !stream {
            d.push_whole(resp.json().await.map_err(decode_err)?)?;
            if let Some(t) = d.text_so_far() {
                on_text(&t);
            }
            return d.finish();
        }
        let mut events = resp.bytes_stream().eventsource();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(decode_err)?;
            if ev.data == "[DONE]" {
                break;
            }
            let item: StreamItem = serde_json::from_str(&ev.data).map_err(decode_err)?;
            if let Some(t) = d.push(item)? {
                on_text(&t);
            }
        }
        d.finish()
    }
}

impl Decoder {
    fn text_so_far(&self) -> Option<String> {
        (!self.text.is_empty()).then(|| self.text.clone())
    }
}

use eventsource_stream::Eventsource;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::attest::TeeKind;
    use crate::keys::ConfidentialKey;
    use crate::seal::open_request;
    use crate::wire::{ReceiptExt, SEALED_COMPLETION_OBJECT};
    use sortition_types::{Custody, Keypair, ModelId, Receipt, StackId};

    /// A node's whole answer "hi" to a sealed request, its receipt keeping the request with
    /// `custody`, opened and checked by the client.
    fn answer(custody: Custody) -> Result<ConfidentialAnswer, ClientError> {
        let operator = Keypair::from_seed(b"node");
        let id = NodeId(3);
        let key = ConfidentialKey::from_seed(id, &[5; 32], 1, sha256(b"epoch 1"));
        let node = AttestedNode {
            id,
            operator: operator.public(),
            recipient: key.recipient(),
            report: VerifiedReport {
                tee: TeeKind::InsecureDev,
                measurement: vec![],
                report_data: [0; 64],
                tcb_status: "INSECURE".into(),
                advisory_ids: vec![],
                insecure: true,
            },
        };
        let body = serde_json::json!({"model": "m", "messages": [], "max_tokens": 4});
        let p = prepare(&node, &body).unwrap();
        let (plain, sealer) = open_request(&key, &p.envelope.sealed).unwrap();
        let completion = serde_json::json!({"choices": [{"index": 0,
            "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]});
        let sealed = sealer
            .seal_whole(&serde_json::to_vec(&completion).unwrap())
            .unwrap();
        let receipt = Receipt {
            node: id,
            stack: StackId(1),
            sequence: 0,
            model: ModelId::new("m"),
            model_digest: Hash32::ZERO,
            node_class: Hash32::ZERO,
            request_hash: sha256(&plain),
            response_hash: text_response_hash("hi", "stop"),
            input_tokens: 1,
            output_tokens: 1,
            sampling: Default::default(),
            timestamp_ms: 0,
            custody,
        };
        let whole = SealedCompletion {
            id: "c".into(),
            object: SEALED_COMPLETION_OBJECT.into(),
            sealed,
            sortition: ReceiptExt {
                node: id,
                receipt: SignedReceipt::sign(receipt, &operator),
                verified_by_gateway: None,
            },
        };
        ConfidentialClient::open(p, RawAnswer::Whole(whole))
    }

    #[test]
    fn receipts_must_leave_the_request_in_the_nodes_custody() {
        assert_eq!(answer(Custody::Executor).unwrap().text, "hi");
        match answer(Custody::Gateway) {
            Err(ClientError::Receipt(why)) => assert!(why.contains("gateway"), "{why}"),
            other => panic!("a gateway-kept receipt was accepted: {other:?}"),
        }
    }
}
