//! `LedgerClient`: a typed Rust client of the HTTP API, for nodes, gateways, the CLI and tests.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sortition_ledger_api::records::{
    Account, Audit, Claim, Dispute, Event, Genesis, ModelEntry, Node, SignedTx, SlashRecord, Stack,
    Tx, TxKind,
};
use sortition_types::{
    AuditId, ClaimId, DisputeId, Hash32, Keypair, ModelId, NodeId, PublicKey, StackId,
};

pub use sortition_ledger_api::{
    BlockResponse, Cursor, StatusResponse, TxLocation, TxResponse as TxResult,
};
use sortition_ledger_api::{ErrorBody, MAX_TX_BATCH, TxBatchItem, paths};

/// What one validator says, in [`LedgerClient::replicas`].
#[derive(Debug, Clone)]
pub struct ReplicaView {
    pub url: String,
    /// Its status, or why it did not answer.
    pub status: Result<StatusResponse, String>,
    /// Its state root at the highest height every answering replica has reached.
    pub root_at_common: Option<Hash32>,
}

/// How long a transaction signed by [`LedgerClient::send`] stays valid.
pub const DEFAULT_TX_TTL: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The ledger refused: OpenAI-style `{"error": {message, type, code}}`.
    #[error("ledger refused ({status}, {code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("bad response: {0}")]
    Decode(String),
}

impl ClientError {
    /// The refusal's code (e.g. `wrong_nonce`), if the ledger refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One signing key's transactions waiting to be sent, and the turn to send them.
///
/// A key's nonces are one sequence, so this process keeps one queue per key (whichever client
/// instance sends): each [`LedgerClient::send`] queues its transaction and then waits for the
/// turn; whoever gets it sends everything queued by then as one batch with consecutive
/// nonces. While a batch waits for its block, the next ones queue up behind it, so a busy key
/// sends many transactions per block instead of one (group commit).
#[derive(Default)]
struct KeyQueue {
    waiting: Mutex<Vec<Queued>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

struct Queued {
    kind: TxKind,
    /// `wrong_nonce` refusals that were not caused by an earlier transaction of its batch.
    stale: u32,
    reply: tokio::sync::oneshot::Sender<Result<TxResult, ClientError>>,
}

fn key_queue(pk: &PublicKey) -> Arc<KeyQueue> {
    static QUEUES: LazyLock<Mutex<HashMap<PublicKey, Arc<KeyQueue>>>> =
        LazyLock::new(Default::default);
    QUEUES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(*pk)
        .or_default()
        .clone()
}

/// `wrong_nonce` refusals a transaction gets from other senders of its key (another process)
/// before its error is returned.
const MAX_STALE_NONCES: u32 = 4;

/// A client of one ledger, or of several validators of one replicated ledger.
///
/// `new` takes one URL or a comma-separated list of validator URLs. Requests go to the
/// validator that answered last; when it cannot be reached (or answers 503 to a query), the
/// next one is tried, so a client rides out a crashed or cut-off validator. A transaction is
/// sent again elsewhere only when it could not have reached the first validator (a connection
/// failure), so failing over never submits it twice. The event stream resumes on another
/// validator from the same cursor (replicas have identical blocks, so cursors mean the same).
#[derive(Clone, Debug)]
pub struct LedgerClient {
    urls: Arc<Vec<String>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    http: reqwest::Client,
}

impl LedgerClient {
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let urls: Vec<String> = url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        LedgerClient {
            urls: Arc::new(if urls.is_empty() { vec![url] } else { urls }),
            current: Default::default(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Every URL this client may use, the current one first.
    pub fn urls(&self) -> Vec<String> {
        let n = self.urls.len();
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed) % n;
        (0..n).map(|i| self.urls[(start + i) % n].clone()).collect()
    }

    /// The URL requests go to now.
    pub fn base(&self) -> String {
        self.urls()[0].clone()
    }

    /// Sends `build(base)` to the current validator, failing over to the next ones on a
    /// connection failure, or — when `idempotent` — on any transport error or a 503.
    async fn request(
        &self,
        idempotent: bool,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        use std::sync::atomic::Ordering;
        let n = self.urls.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            match build(&self.urls[at]).send().await {
                Ok(r) if idempotent && r.status().as_u16() == 503 && i + 1 < n => {
                    last = Some(Ok(r));
                }
                Ok(r) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) if e.is_connect() || (idempotent && (e.is_timeout() || e.is_request())) => {
                    last = Some(Err(e));
                }
                Err(e) => return Err(e.into()),
            }
        }
        match last {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(e.into()),
            None => Err(ClientError::Decode("no ledger URL".into())),
        }
    }

    async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            let e = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_default();
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: e.code,
                message: e.message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::decode(
            self.request(true, |b| self.http.get(format!("{b}{path}")))
                .await?,
        )
        .await
    }

    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.get(paths::STATUS).await
    }
    pub async fn genesis(&self) -> Result<Genesis, ClientError> {
        self.get(paths::GENESIS).await
    }
    pub async fn account(&self, pk: &PublicKey) -> Result<Account, ClientError> {
        self.get(&paths::account(pk)).await
    }
    pub async fn next_nonce(&self, pk: &PublicKey) -> Result<u64, ClientError> {
        Ok(self.account(pk).await?.nonce)
    }
    pub async fn nodes(&self) -> Result<Vec<Node>, ClientError> {
        self.get(paths::NODES).await
    }
    pub async fn node(&self, id: NodeId) -> Result<Node, ClientError> {
        self.get(&paths::node(id.0)).await
    }
    pub async fn models(&self) -> Result<Vec<ModelEntry>, ClientError> {
        self.get(paths::MODELS).await
    }
    pub async fn model(&self, id: &ModelId) -> Result<ModelEntry, ClientError> {
        self.get(&paths::model(id)).await
    }
    pub async fn stack(&self, id: StackId) -> Result<Stack, ClientError> {
        self.get(&paths::stack(id.0)).await
    }
    pub async fn stacks_of(&self, owner: &PublicKey) -> Result<Vec<Stack>, ClientError> {
        self.get(&paths::stacks_of(owner)).await
    }
    pub async fn claim(&self, id: ClaimId) -> Result<Claim, ClientError> {
        self.get(&paths::claim(id.0)).await
    }
    pub async fn audit(&self, id: AuditId) -> Result<Audit, ClientError> {
        self.get(&paths::audit(id.0)).await
    }
    /// Every audit, sampled or challenged.
    pub async fn audits(&self) -> Result<Vec<Audit>, ClientError> {
        self.get(paths::AUDITS).await
    }
    /// Audits where `auditor` is drawn; only open ones when `open`.
    pub async fn audits_of(&self, auditor: NodeId, open: bool) -> Result<Vec<Audit>, ClientError> {
        self.get(&paths::audits_of(auditor.0, open)).await
    }
    pub async fn disputes(&self) -> Result<Vec<Dispute>, ClientError> {
        self.get(paths::DISPUTES).await
    }
    pub async fn slashes(&self) -> Result<Vec<SlashRecord>, ClientError> {
        self.get(paths::SLASHES).await
    }
    /// Validators proven to have equivocated (`GET /v1/validator-faults`).
    pub async fn validator_faults(
        &self,
    ) -> Result<Vec<sortition_ledger::validator_faults::ValidatorFault>, ClientError> {
        self.get(paths::VALIDATOR_FAULTS).await
    }
    pub async fn find_tx(&self, hash: &Hash32) -> Result<TxLocation, ClientError> {
        self.get(&paths::tx(hash)).await
    }

    /// Submits a signed transaction and waits until its block is durable.
    pub async fn submit(&self, tx: &SignedTx) -> Result<TxResult, ClientError> {
        Self::decode(
            self.request(false, |b| {
                self.http.post(format!("{b}{}", paths::TX)).json(tx)
            })
            .await?,
        )
        .await
    }

    /// Submits signed transactions in this order (`POST /v1/tx/batch`, at most
    /// [`MAX_TX_BATCH`]) and waits until their blocks are durable; one answer per
    /// transaction.
    pub async fn submit_batch(
        &self,
        txs: &[SignedTx],
    ) -> Result<Vec<Result<TxResult, ClientError>>, ClientError> {
        let items: Vec<TxBatchItem> = Self::decode(
            self.request(false, |b| {
                self.http.post(format!("{b}{}", paths::TX_BATCH)).json(txs)
            })
            .await?,
        )
        .await?;
        if items.len() != txs.len() {
            return Err(ClientError::Decode(format!(
                "{} answers to a batch of {}",
                items.len(),
                txs.len()
            )));
        }
        Ok(items
            .into_iter()
            .map(|i| match i {
                TxBatchItem::Included(t) => Ok(t),
                TxBatchItem::Refused { status, body } => Err(ClientError::Api {
                    status,
                    code: body.error.code,
                    message: body.error.message,
                }),
            })
            .collect())
    }

    /// Signs `kind` with the ledger's chain id, the key's next nonce and a 60 s expiry, sends
    /// it, and waits for its block.
    ///
    /// Sends of one key within this process share one nonce sequence (whichever client
    /// instance they go through) and are pipelined: see [`KeyQueue`]. A transaction refused
    /// `wrong_nonce` because one before it in its batch was refused is sent again at once; a
    /// `wrong_nonce` from another process sending with the same key is retried a few times.
    pub async fn send(&self, key: &Keypair, kind: TxKind) -> Result<TxResult, ClientError> {
        let queue = key_queue(&key.public());
        let (reply, answer) = tokio::sync::oneshot::channel();
        lock(&queue.waiting).push(Queued {
            kind,
            stale: 0,
            reply,
        });
        let mut answer = answer;
        loop {
            // Our transaction is queued, in a batch under way, or answered: whoever holds the
            // turn sends it, and at our turn it is either answered or queued again.
            let turn = queue.turn.clone().lock_owned().await;
            // Answered by an earlier turn (ours or another sender's), or lost with a turn whose
            // task failed.
            match answer.try_recv() {
                Ok(r) => return r,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Err(ClientError::Decode(
                        "the send that carried this transaction failed; it may still be \
                         included"
                            .into(),
                    ));
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<Queued> = {
                let mut w = lock(&queue.waiting);
                let n = w.len().min(MAX_TX_BATCH);
                w.drain(..n).collect()
            };
            if batch.is_empty() {
                drop(turn);
                tokio::task::yield_now().await;
                continue;
            }
            // The batch runs in a task of its own, holding the turn: a caller that gives up
            // waiting (a cancelled future) does not take the other senders' transactions,
            // or the key's nonce order, down with it.
            let (client, signer, q) = (self.clone(), key.clone(), queue.clone());
            let flush = tokio::spawn(async move {
                let again = client.send_batch(&signer, batch).await;
                // Sent again before anything queued later, keeping their order.
                lock(&q.waiting).splice(0..0, again);
                drop(turn);
            });
            let _ = flush.await;
        }
    }

    /// Sends one batch with consecutive nonces from the key's current one, answers each
    /// transaction, and returns those to send again.
    async fn send_batch(&self, key: &Keypair, batch: Vec<Queued>) -> Vec<Queued> {
        let signed = async {
            let chain_id = self.status().await?.chain_id;
            let first = self.next_nonce(&key.public()).await?;
            let expires_at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| (d + DEFAULT_TX_TTL).as_millis() as u64);
            let txs: Vec<SignedTx> = batch
                .iter()
                .zip(first..)
                .map(|(q, nonce)| {
                    Tx {
                        chain_id: chain_id.clone(),
                        sender: key.public(),
                        nonce,
                        expires_at_ms,
                        kind: q.kind.clone(),
                    }
                    .sign(key)
                })
                .collect();
            let answers = if let [one] = txs.as_slice() {
                vec![self.submit(one).await]
            } else {
                self.submit_batch(&txs).await?
            };
            Ok::<_, ClientError>(answers)
        }
        .await;
        let answers = match signed {
            Ok(a) => a,
            Err(e) => {
                // Nothing is known to have been sequenced: every transaction gets the error.
                let message = e.to_string();
                let mut first = Some(e);
                for q in batch {
                    let e = first
                        .take()
                        .unwrap_or_else(|| ClientError::Decode(message.clone()));
                    let _ = q.reply.send(Err(e));
                }
                return Vec::new();
            }
        };
        let mut again = Vec::new();
        let mut earlier_refused = false;
        for (mut q, a) in batch.into_iter().zip(answers) {
            match a {
                Err(e) if e.code() == Some("wrong_nonce") => {
                    if !earlier_refused {
                        q.stale += 1;
                    }
                    earlier_refused = true;
                    if q.stale >= MAX_STALE_NONCES {
                        let _ = q.reply.send(Err(e));
                    } else {
                        again.push(q);
                    }
                }
                Err(e) => {
                    earlier_refused = true;
                    let _ = q.reply.send(Err(e));
                }
                Ok(t) => {
                    let _ = q.reply.send(Ok(t));
                }
            }
        }
        again
    }

    /// One block's header, state root, beacon and (under consensus) certificate.
    pub async fn block(&self, height: u64) -> Result<BlockResponse, ClientError> {
        self.get(&paths::block(height)).await
    }

    /// Asks every validator this client knows for its status and for its state root at the
    /// highest height all answering ones have, so that anyone can see whether they agree
    /// (no single validator is trusted for a fact another can contradict). Returns the common
    /// height too.
    pub async fn replicas(&self) -> (u64, Vec<ReplicaView>) {
        let mut views = Vec::new();
        for url in self.urls.iter() {
            let one = LedgerClient::new(url.clone());
            views.push(ReplicaView {
                url: url.clone(),
                status: one.status().await.map_err(|e| e.to_string()),
                root_at_common: None,
            });
        }
        let common = views
            .iter()
            .filter_map(|v| v.status.as_ref().ok().map(|s| s.height))
            .min()
            .unwrap_or(0);
        for v in &mut views {
            if v.status.is_ok() && common > 0 {
                v.root_at_common = LedgerClient::new(v.url.clone())
                    .block(common)
                    .await
                    .ok()
                    .map(|b| b.state_root);
            }
        }
        (common, views)
    }

    /// Fetches one dispute.
    pub async fn dispute(&self, id: DisputeId) -> Result<Dispute, ClientError> {
        self.get(&paths::dispute(id.0)).await
    }

    /// The ledger's events from `from` on (inclusive), following new blocks.
    pub async fn events(
        &self,
        from: Cursor,
    ) -> Result<impl Stream<Item = Result<(Cursor, Event), ClientError>> + use<>, ClientError> {
        Ok(self
            .sse(&paths::events_from(from))
            .await?
            .filter_map(|item| async move {
                match item {
                    Err(e) => Some(Err(e)),
                    Ok(ev) if ev.data.is_empty() || ev.id.is_empty() => None,
                    Ok(ev) => Some((|| {
                        let c: Cursor = ev.id.parse().map_err(ClientError::Decode)?;
                        let e: Event = serde_json::from_str(&ev.data)
                            .map_err(|e| ClientError::Decode(e.to_string()))?;
                        Ok((c, e))
                    })()),
                }
            }))
    }

    /// The Server-Sent Events of `path` (an idempotent GET, so it fails over).
    async fn sse(
        &self,
        path: &str,
    ) -> Result<
        impl Stream<Item = Result<eventsource_stream::Event, ClientError>> + use<>,
        ClientError,
    > {
        let resp = self
            .request(true, |b| self.http.get(format!("{b}{path}")))
            .await?;
        if !resp.status().is_success() {
            return Err(Self::decode::<Value>(resp)
                .await
                .err()
                .unwrap_or(ClientError::Decode("stream refused".into())));
        }
        Ok(resp
            .bytes_stream()
            .eventsource()
            .map(|item| item.map_err(|e| ClientError::Decode(e.to_string()))))
    }

    /// The ledger's height now, then at each new block (`GET /v1/heads`); see
    /// [`crate::head::ChainHead`] for one that reconnects.
    pub async fn heads(
        &self,
    ) -> Result<impl Stream<Item = Result<u64, ClientError>> + use<>, ClientError> {
        Ok(self.sse(paths::HEADS).await?.filter_map(|item| async move {
            match item {
                Err(e) => Some(Err(e)),
                Ok(ev) if ev.data.is_empty() => None,
                Ok(ev) => Some(
                    ev.data
                        .trim()
                        .parse::<u64>()
                        .map_err(|e| ClientError::Decode(format!("head {:?}: {e}", ev.data))),
                ),
            }
        }))
    }
}
