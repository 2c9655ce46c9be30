//! `LedgerClient`: a typed Rust client of the HTTP API, for nodes, gateways, the CLI and tests.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sortition_ledger::{
    Account, Audit, Claim, Dispute, Event, Genesis, ModelEntry, Node, SignedTx, SlashRecord, Stack,
    Tx, TxKind,
};
use sortition_types::{
    AuditId, ClaimId, DisputeId, Hash32, Keypair, ModelId, NodeId, PublicKey, StackId,
};

pub use sortition_ledger_api::{
    BlockResponse, Cursor, StatusResponse, TxLocation, TxResponse as TxResult,
};
use sortition_ledger_api::{ErrorBody, paths};

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

/// One async mutex per signing key in this process, held across nonce lookup and submission.
fn sender_lock(pk: &PublicKey) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<PublicKey, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    LOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(*pk)
        .or_default()
        .clone()
}

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

    /// Fetches the nonce, signs with the ledger's chain id and a 60 s expiry, submits, and
    /// waits for the block.
    ///
    /// Sends of one key are serialized within this process (whichever client instance they
    /// go through), so concurrent tasks of one node never race for a nonce; a `wrong_nonce`
    /// refusal can then only come from another process using the same key, and is retried
    /// a few times with a fresh nonce.
    pub async fn send(&self, key: &Keypair, kind: TxKind) -> Result<TxResult, ClientError> {
        let sender_lock = sender_lock(&key.public());
        let _turn = sender_lock.lock().await;
        let chain_id = self.status().await?.chain_id;
        let mut last = None;
        for _ in 0..4 {
            let nonce = self.next_nonce(&key.public()).await?;
            let expires_at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| (d + DEFAULT_TX_TTL).as_millis() as u64);
            let tx = Tx {
                chain_id: chain_id.clone(),
                sender: key.public(),
                nonce,
                expires_at_ms,
                kind: kind.clone(),
            }
            .sign(key);
            match self.submit(&tx).await {
                Err(e) if e.code() == Some("wrong_nonce") => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(ClientError::Decode("no attempt made".into())))
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
        let resp = self
            .request(true, |b| {
                self.http.get(format!("{b}{}", paths::events_from(from)))
            })
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
            .filter_map(|item| async move {
                match item {
                    Err(e) => Some(Err(ClientError::Decode(e.to_string()))),
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
}
