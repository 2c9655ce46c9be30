//! Confidential requests on the node (DESIGN flow 7).
//!
//! Keys: with an attester configured, the node keeps a [`KeyRing`]: one X25519 key per epoch,
//! generated inside the (claimed) TEE, bound by evidence to (key, the ledger's epoch nonce, node
//! id), and published with `RotateConfidentialKey` at start and at every `EpochTurned` event.
//! The previous epoch's key is kept so requests sealed just before a turn still open.
//!
//! Requests: `POST /v1/confidential/chat/completions` carries an
//! [`Envelope`](sortition_confidential::wire::Envelope) signed with stack auth like any other
//! request. The node opens it, checks that the plaintext agrees with the clear metadata, runs it
//! on the same engine path as a plain request, seals every response chunk under its own nonce,
//! and returns the receipt in the clear; the receipt's hashes commit to the plaintext request and
//! answer, exactly as for a plain request. Errors about the plaintext never quote it.
//!
//! Audits: the gateway holds only ciphertext, so the node itself keeps every confidential
//! request it receipted (with its answer), sealed at rest under its custody key
//! (`sortition_confidential::custody`). When the ledger samples or a stack owner challenges one,
//! the node checks each drawn auditor's published key and evidence (the same policy checks a
//! client makes), re-seals the request with HPKE to that key, bound to the audit and the
//! auditor, and posts it to the auditor's `/sortition/v1/audits/{id}/sealed-payload`. An auditor
//! without an attested key gets nothing and votes `Unavailable`.
//!
//! Withholding does not pay: a confidential receipt says the request is in the executor's
//! custody (`Custody::Executor`; the gateway refuses any other), so when most auditors, and then
//! most of a dispute's committee, vote `Unavailable`, the ledger slashes this node for
//! withholding it (`SlashReason::PayloadWithheld`).

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use sortition_api::*;
use sortition_confidential::custody::{CustodyKey, audit_aad, audit_request_id};
use sortition_confidential::wire::{
    CONFIDENTIAL_CHAT_PATH, Envelope, ReceiptExt, SEALED_COMPLETION_OBJECT, SealedCompletion,
    StreamItem,
};
use sortition_confidential::{
    Attester, AttesterConfig, AttesterError, AttesterKind, ConfidentialKey, Evidence, Policy,
    PolicyVerifier, RecipientKey, ResponseSealer, SealError, SealedRequest, open_request,
    seal_request,
};
use sortition_engine::{FinishReason, Prompt, StreamEvent};
use sortition_ledger::{Event as LedgerEvent, SealingKey, TxKind};
use sortition_ledger_client::{ClientError, Cursor, EventHandler, LedgerClient, MemoryCursor};
use sortition_types::{
    AuditId, Custody, Hash32, Keypair, ModelId, NodeId, SignedReceipt, StackId, sha256,
    text_response_hash,
};
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use crate::audit::{Answer, AuditPayload};
use crate::auth::authenticate;
use crate::service::{NodeState, Outcome, engine_error};

/// This epoch's key and the previous one.
#[derive(Default)]
struct Keys {
    current: Option<ConfidentialKey>,
    previous: Option<ConfidentialKey>,
}

/// The node's confidential keys and the attester that vouches for them.
pub struct KeyRing {
    node: NodeId,
    kind: AttesterKind,
    attester: Box<dyn Attester>,
    /// Whose evidence an auditor must carry to be sent this node's confidential requests.
    auditors: Policy,
    keys: RwLock<Keys>,
    /// Seals the confidential requests kept for audits at rest.
    custody: CustodyKey,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl KeyRing {
    /// `custody_key`: the file of the key requests kept for audits are sealed under (created
    /// on first use). `auditors`: whose evidence is accepted before a confidential request is
    /// re-sealed to an auditor; required for a hardware attester, the dev attester's only on a
    /// dev node otherwise (see [`KeyRing::auditor_verifier`]).
    pub fn new(
        node: NodeId,
        kind: AttesterKind,
        cfg: &AttesterConfig,
        auditors: Option<Policy>,
        custody_key: &Path,
    ) -> Result<KeyRing, String> {
        let attester = kind.build(cfg).map_err(|e: AttesterError| e.to_string())?;
        let auditors = match auditors {
            Some(p) => p,
            None if attester.is_insecure() => Policy {
                allow_insecure_dev: true,
                ..Policy::default()
            },
            None => {
                return Err(
                    "a hardware attester needs an auditor policy (the measurements of \
                     the auditors' TEEs this node re-seals its confidential requests to): \
                     without one no auditor could be sent them, and withholding them is slashed"
                        .into(),
                );
            }
        };
        if auditors.allow_insecure_dev && !attester.is_insecure() {
            return Err(
                "a node with a hardware attester must not re-seal its requests to \
                 INSECURE dev auditors (allow_insecure_dev in the auditor policy)"
                    .into(),
            );
        }
        Ok(KeyRing {
            node,
            kind,
            attester,
            auditors,
            keys: RwLock::new(Keys::default()),
            custody: CustodyKey::load_or_create(custody_key).map_err(|e| e.to_string())?,
        })
    }

    /// What this node accepts as an auditor's evidence before re-sealing a request to it.
    fn auditor_verifier(&self) -> PolicyVerifier {
        PolicyVerifier::new(self.auditors.clone())
    }

    /// The attester in words; says INSECURE for the dev attester.
    pub fn label(&self) -> String {
        self.kind.to_string()
    }

    pub fn is_insecure(&self) -> bool {
        self.attester.is_insecure()
    }

    /// The epoch of the current key, if one is published.
    pub fn current_epoch(&self) -> Option<u64> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .as_ref()
            .map(ConfidentialKey::epoch)
    }

    /// The key of `epoch`: the current one or the one before it.
    fn key_for(&self, epoch: u64) -> Option<ConfidentialKey> {
        let k = self.keys.read().unwrap_or_else(|e| e.into_inner());
        [&k.current, &k.previous]
            .into_iter()
            .flatten()
            .find(|key| key.epoch() == epoch)
            .cloned()
    }

    /// The key of `epoch`, or the error that tells the sender to fetch the current one.
    fn key_or_stale(&self, epoch: u64) -> Result<ConfidentialKey, ApiError> {
        self.key_for(epoch).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Conflict,
                "stale_confidential_key",
                format!(
                    "sealed to key epoch {epoch}, which this node no longer holds; fetch the \
                     current key"
                ),
            )
        })
    }

    /// Makes a key for the ledger's current epoch, attests it and publishes it. A turn that
    /// races the transaction (`StaleEpoch`) is retried against the new epoch.
    pub async fn publish(&self, client: &LedgerClient, signer: &Keypair) -> Result<u64, String> {
        for _ in 0..4 {
            let status = client.status().await.map_err(|e| e.to_string())?;
            if self.current_epoch() == Some(status.epoch) {
                return Ok(status.epoch);
            }
            let key = {
                let k = self.keys.read().unwrap_or_else(|e| e.into_inner());
                match &k.current {
                    Some(cur) if cur.epoch() < status.epoch => {
                        cur.rotate(status.epoch, status.epoch_nonce)
                    }
                    _ => ConfidentialKey::generate(self.node, status.epoch, status.epoch_nonce),
                }
                .map_err(|e| e.to_string())?
            };
            let evidence = self
                .attester
                .evidence(&key.report_data(), unix_now())
                .map_err(|e| e.to_string())?;
            let attestation = serde_json::to_vec(&evidence).map_err(|e| e.to_string())?;
            let tx = TxKind::RotateConfidentialKey {
                key: SealingKey(Hash32(key.public_key())),
                attestation,
                epoch: status.epoch,
            };
            match client.send(signer, tx).await {
                Ok(_) => {
                    let epoch = key.epoch();
                    let mut k = self.keys.write().unwrap_or_else(|e| e.into_inner());
                    k.previous = k.current.take();
                    k.current = Some(key);
                    return Ok(epoch);
                }
                Err(ClientError::Api { code, .. }) if code == STALE_EPOCH => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the epoch kept turning while the key was being published".into())
    }
}

/// The ledger's refusal code of `LedgerError::StaleEpoch`.
const STALE_EPOCH: &str = "stale_epoch";

/// Publishes a fresh key at every `EpochTurned` event until `stop`. Starts from `from`, the
/// ledger height before the first key was published, so no turn is missed.
pub async fn follow_epochs(
    ring: Arc<KeyRing>,
    client: LedgerClient,
    signer: Keypair,
    from: Cursor,
    mut stop: watch::Receiver<bool>,
) {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let rotator = Rotator { ring, signer };
    sortition_ledger_client::follow(
        "epochs",
        client,
        MemoryCursor::starting_at(from),
        rotator,
        shutdown,
    )
    .await
}

/// Rotates the node's confidential key when the epoch turns.
struct Rotator {
    ring: Arc<KeyRing>,
    signer: Keypair,
}

impl EventHandler for Rotator {
    /// Catches up with a turn missed while the stream was down.
    async fn connected(&mut self, client: &LedgerClient) {
        if let Ok(st) = client.status().await
            && self.ring.current_epoch().is_some_and(|e| e < st.epoch)
        {
            rotate(&self.ring, client, &self.signer).await;
        }
    }

    async fn handle(&mut self, client: &LedgerClient, _at: Cursor, event: LedgerEvent) {
        if let LedgerEvent::EpochTurned { epoch, .. } = event
            && self.ring.current_epoch().is_none_or(|e| e < epoch)
        {
            rotate(&self.ring, client, &self.signer).await;
        }
    }
}

async fn rotate(ring: &KeyRing, client: &LedgerClient, signer: &Keypair) {
    match ring.publish(client, signer).await {
        Ok(epoch) => {
            tracing::info!(node = %ring.node, epoch, attester = %ring.label(), "confidential key rotated")
        }
        Err(e) => {
            tracing::error!(node = %ring.node, error = %e, "confidential key rotation failed")
        }
    }
}

type S = State<Arc<NodeState>>;

/// The node's key ring, or the error of a node without an attester.
fn ring_of(s: &NodeState) -> Result<&KeyRing, ApiError> {
    s.confidential.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "confidential_unavailable",
            "this node runs without an attester and publishes no confidential key",
        )
    })
}

fn sealed_error(code: &'static str, e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(code, e.to_string())
}

/// An error about the plaintext, with its message withheld (it could quote the prompt).
fn redact(e: ApiError) -> ApiError {
    let keep = matches!(
        e.code,
        "context_length_exceeded" | "overloaded" | "stack_exhausted" | "stack_closed"
    ) || !matches!(e.kind, ErrorKind::InvalidRequest);
    if keep {
        return e;
    }
    ApiError {
        message: format!(
            "the sealed request is invalid ({}); details withheld because the request is \
             confidential",
            e.code
        ),
        ..e
    }
}

/// `POST /v1/confidential/chat/completions`.
pub async fn chat_completions(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.inc("requests_total", "confidential_chat", 1);
    match handle(&s, &headers, &body).await {
        Ok(r) => r,
        Err(e) => {
            s.metrics.inc("errors_total", e.code, 1);
            e.into_response()
        }
    }
}

/// A confidential request after opening and admission.
struct Admitted {
    state: Arc<NodeState>,
    job: Job,
    sealer: ResponseSealer,
    stream: sortition_engine::GenerationStream,
    id: String,
}

async fn handle(
    s: &Arc<NodeState>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let stack = authenticate(
        s.stacks.as_ref(),
        &s.store,
        "POST",
        CONFIDENTIAL_CHAT_PATH,
        headers,
        body,
        unix_now_ms(),
    )
    .await?;
    let ring = ring_of(s)?;
    let env: Envelope = parse_json(body)?;
    if env.node != s.id || !env.metadata_bound() {
        return Err(sealed_error(
            "metadata_mismatch",
            "the envelope's metadata does not match what was sealed (or the target is another node)",
        ));
    }
    let key = ring.key_or_stale(env.sealed.key_epoch)?;
    let (plaintext, sealer) = open_request(&key, &env.sealed).map_err(|e| match e {
        SealError::OpenFailed => sealed_error("sealed_request_invalid", e),
        other => sealed_error("sealed_request_invalid", other),
    })?;
    let stream = env.stream;
    let a = admit(s, stack, &env, plaintext, sealer).await?;
    if stream {
        return Ok(sse(a).into_response());
    }
    // The generation runs to completion in its own task even if the client leaves, so the
    // work done is always receipted.
    tokio::spawn(unary(a))
        .await
        .map_err(|e| ApiError::internal(format!("generation task failed: {e}")))?
}

/// Checks the plaintext against the metadata, reserves units and starts the generation.
async fn admit(
    s: &Arc<NodeState>,
    stack: crate::accounts::StackInfo,
    env: &Envelope,
    plaintext: Zeroizing<Vec<u8>>,
    sealer: ResponseSealer,
) -> Result<Admitted, ApiError> {
    let req: ChatCompletionRequest = parse_json(&plaintext).map_err(redact)?;
    let wanted_max = req
        .sampling
        .max_completion_tokens
        .or(req.sampling.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS_CHAT);
    if req.model != env.model
        || wanted_max != env.max_tokens
        || req.sampling.is_stream() != env.stream
    {
        return Err(sealed_error(
            "metadata_mismatch",
            "the sealed request's model, max_tokens or stream flag differs from the envelope's",
        ));
    }
    if req
        .sampling
        .logprobs_for(sortition_api::Endpoint::Chat)
        .map_err(redact)?
        .is_some()
    {
        return Err(sealed_error(
            "unsupported_parameter",
            "logprobs are not served for sealed requests",
        )
        .with_param("logprobs"));
    }
    if req
        .sampling
        .tools_for(sortition_api::Endpoint::Chat)
        .map_err(redact)?
        .is_some()
    {
        return Err(sealed_error(
            "unsupported_parameter",
            "tools are not served for sealed requests yet",
        )
        .with_param("tools"));
    }
    if req
        .sampling
        .constraint_for(sortition_api::Endpoint::Chat)
        .map_err(redact)?
        .is_some()
    {
        return Err(sealed_error(
            "unsupported_parameter",
            "response_format is not served for sealed requests",
        )
        .with_param("response_format"));
    }
    let prompt =
        Prompt::Chat(crate::routes::chat_messages(&req.messages, &req.sampling).map_err(redact)?);
    let chat = s.engine(&req.model)?;
    let params =
        crate::routes::sampling_params(&req.sampling, DEFAULT_MAX_TOKENS_CHAT).map_err(redact)?;
    let prompt_tokens = chat.engine.prompt_tokens(&prompt).map_err(engine_error)?;
    let model = ModelId::new(&req.model);
    let (reservation, stream) = s.start_generation(
        &stack,
        chat,
        &model,
        prompt_tokens,
        crate::service::GenerationOptions {
            params: params.clone(),
            logprobs: None,
            constraint: None,
        },
    )?;
    let request_hash = sha256(&plaintext);
    Ok(Admitted {
        state: s.clone(),
        job: Job {
            reservation,
            model,
            params,
            request_hash,
            plaintext,
        },
        sealer,
        stream,
        id: format!("chatcmpl-{}", &env.sealed.request_id.to_hex()[..24]),
    })
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// What is needed to receipt a request once its generation ends.
struct Job {
    reservation: crate::accounts::Reservation,
    model: ModelId,
    params: sortition_engine::SamplingParams,
    request_hash: Hash32,
    /// The opened request, kept (sealed at rest) for audits once receipted.
    plaintext: Zeroizing<Vec<u8>>,
}

impl Job {
    /// Receipts what was generated: hashes of the plaintext request and answer.
    fn complete(
        self,
        state: &NodeState,
        usage: (u64, u64),
        text: &str,
        finish: &str,
    ) -> Result<SignedReceipt, ApiError> {
        let digest = state.engine(self.model.as_str())?.engine.info().digest;
        let plaintext = self.plaintext;
        // The sealed request is kept in the same write as its receipt: a receipt in this
        // node's custody whose request could not be kept is not delivered either.
        state.finish_with(
            self.reservation,
            Outcome {
                model: self.model,
                model_digest: digest,
                request_hash: self.request_hash,
                response_hash: text_response_hash(text, finish),
                input_tokens: usage.0,
                output_tokens: usage.1,
                sampling: self.params.to_record(),
                // Only this node can ever hand the plaintext to auditors.
                custody: Custody::Executor,
            },
            |receipt| custody_record(state, receipt, &plaintext, text, finish),
        )
    }
}

fn ext(state: &NodeState, receipt: SignedReceipt) -> ReceiptExt {
    ReceiptExt {
        node: state.id,
        receipt,
        verified_by_gateway: None,
    }
}

async fn unary(a: Admitted) -> Result<Response, ApiError> {
    let Admitted {
        state,
        job,
        sealer,
        mut stream,
        id,
    } = a;
    let result = loop {
        match stream.next().await {
            Some(StreamEvent::Done {
                finish_reason,
                usage,
                text,
                ..
            }) => break Ok((finish_reason, usage, text)),
            Some(StreamEvent::Error(e)) => break Err(engine_error(e)),
            Some(StreamEvent::Token { .. }) => {}
            None => break Err(ApiError::internal("generation ended without a result")),
        }
    };
    let (finish, usage, text) = match result {
        Ok(v) => v,
        Err(e) => {
            state.release(job.reservation);
            return Err(e);
        }
    };
    let usage = (
        u64::from(usage.prompt_tokens),
        u64::from(usage.completion_tokens),
    );
    let text = crate::adversary::rewrite_text(state.adversary, text);
    let finish = finish_str(finish);
    let model = job.model.0.clone();
    let receipt = job.complete(&state, usage, &text, finish)?;
    let completion = ChatCompletion {
        id: id.clone(),
        object: "chat.completion".into(),
        created: unix_now_secs(),
        model: model.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".into(),
                content: Some(text),
                tool_calls: None,
            },
            finish_reason: finish.into(),
            logprobs: None,
        }],
        usage: Usage::new(usage.0, usage.1),
        sortition: None,
    };
    let plain = Zeroizing::new(
        serde_json::to_vec(&completion).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    let sealed = sealer
        .seal_whole(&plain)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(SealedCompletion {
        id,
        object: SEALED_COMPLETION_OBJECT.into(),
        sealed,
        sortition: ext(&state, receipt),
    })
    .into_response())
}

fn unix_now_secs() -> u64 {
    unix_now()
}

fn chunk_plain(
    id: &str,
    model: &str,
    text: Option<String>,
    finish: Option<&str>,
    first: bool,
) -> Vec<u8> {
    crate::routes::chunk_json(crate::routes::Kind::Chat, id, model, text, finish, first)
        .into_bytes()
}

fn item_json(item: &StreamItem) -> String {
    serde_json::to_string(item).unwrap_or_default()
}

/// Streams sealed chunks as SSE; a driver task owns the generation (as for plain streams).
fn sse(a: Admitted) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, mut rx) = mpsc::channel::<String>(64);
    tokio::spawn(drive(a, tx));
    let stream = async_stream::stream! {
        while let Some(data) = rx.recv().await {
            yield Ok(Event::default().data(data));
        }
        yield Ok(Event::default().data("[DONE]"));
    };
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn drive(a: Admitted, tx: mpsc::Sender<String>) {
    let Admitted {
        state,
        job,
        mut sealer,
        mut stream,
        id,
    } = a;
    let usage_handle = stream.usage_handle();
    let model = job.model.0.clone();
    let mut first = true;
    let mut sent = String::new();
    let seal = |sealer: &mut ResponseSealer, plain: Vec<u8>, last: bool| {
        let plain = Zeroizing::new(plain);
        sealer
            .seal_chunk(&plain, last)
            .map(|sealed| item_json(&StreamItem::Sealed { sealed }))
    };
    loop {
        match stream.next().await {
            Some(StreamEvent::Token { text, .. }) => {
                if text.is_empty() {
                    continue;
                }
                sent.push_str(&text);
                let msg = seal(
                    &mut sealer,
                    chunk_plain(&id, &model, Some(text), None, first),
                    false,
                );
                let gone = match msg {
                    Ok(m) => tx.send(m).await.is_err(),
                    Err(_) => true,
                };
                if gone {
                    // Client left: cancel generation, bill what was generated.
                    drop(stream);
                    let u = usage_handle.usage();
                    state.metrics.inc("client_disconnects_total", "", 1);
                    let usage = (u64::from(u.prompt_tokens), u64::from(u.completion_tokens));
                    let _ = job.complete(&state, usage, &sent, "cancelled");
                    return;
                }
                first = false;
            }
            Some(StreamEvent::Done {
                finish_reason,
                usage,
                text,
                ..
            }) => {
                let finish = finish_str(finish_reason);
                // Any text held back (a partial stop-string match) is flushed, so the stream
                // equals the non-streamed answer; it rides in the final chunk.
                let rest = text
                    .strip_prefix(sent.as_str())
                    .filter(|r| !r.is_empty())
                    .map(str::to_string);
                if let Ok(m) = seal(
                    &mut sealer,
                    chunk_plain(&id, &model, rest, Some(finish), first),
                    true,
                ) {
                    let _ = tx.send(m).await;
                }
                let usage = (
                    u64::from(usage.prompt_tokens),
                    u64::from(usage.completion_tokens),
                );
                let text = crate::adversary::rewrite_text(state.adversary, text);
                let msg = match job.complete(&state, usage, &text, finish) {
                    Ok(receipt) => item_json(&StreamItem::Receipt {
                        sortition: ext(&state, receipt),
                    }),
                    Err(e) => serde_json::to_string(&e.body()).unwrap_or_default(),
                };
                let _ = tx.send(msg).await;
                return;
            }
            Some(StreamEvent::Error(e)) => {
                let u = usage_handle.usage();
                let e = engine_error(e);
                let _ = tx
                    .send(serde_json::to_string(&e.body()).unwrap_or_default())
                    .await;
                let usage = (u64::from(u.prompt_tokens), u64::from(u.completion_tokens));
                if usage.1 == 0 {
                    state.release(job.reservation);
                } else {
                    let _ = job.complete(&state, usage, &sent, "error");
                }
                return;
            }
            None => {
                state.release(job.reservation);
                return;
            }
        }
    }
}

/// A receipted confidential request and its answer, sealed at rest for its audits (stored
/// with the receipt). `None` (logged) if it cannot be sealed: the audit will then be
/// unverifiable, as before this record was kept with the receipt.
fn custody_record(
    state: &NodeState,
    receipt: &SignedReceipt,
    plaintext: &[u8],
    text: &str,
    finish: &str,
) -> Option<Vec<u8>> {
    let ring = state.confidential.as_ref()?;
    let r = &receipt.receipt;
    let record = (|| {
        let payload = AuditPayload {
            path: CONFIDENTIAL_AUDIT_PATH.into(),
            body: String::from_utf8(plaintext.to_vec()).map_err(|_| "request is not UTF-8")?,
            receipt: receipt.clone(),
            answer: Some(Answer {
                text: text.into(),
                finish_reason: finish.into(),
            }),
        };
        let json = Zeroizing::new(serde_json::to_vec(&payload).map_err(|_| "encoding failed")?);
        ring.custody
            .seal(r.stack.0, r.sequence, &json)
            .map_err(|_| "sealing failed")
    })();
    match record {
        Ok(sealed) => Some(sealed),
        Err(e) => {
            tracing::error!(stack = %r.stack, seq = r.sequence, error = e, "could not keep a confidential request for audit");
            None
        }
    }
}

/// The route a confidential request is re-executed on by its auditors (its plaintext is a
/// plain chat completion request).
const CONFIDENTIAL_AUDIT_PATH: &str = "/v1/chat/completions";

/// Whether this node keeps the confidential request behind receipt `seq` of `stack`.
pub fn holds(state: &NodeState, stack: StackId, seq: u64) -> bool {
    state.confidential.is_some() && matches!(state.store.custody(stack, seq), Ok(Some(_)))
}

/// Re-seals the confidential request behind receipt `seq` of `stack` to each of `nodes` (the
/// auditors or committee of `audit`) and delivers it; nodes whose key or evidence does not
/// verify get nothing.
pub async fn deliver_for_audit(
    state: Arc<NodeState>,
    client: LedgerClient,
    audit: AuditId,
    stack: StackId,
    seq: u64,
    nodes: Vec<NodeId>,
) {
    let Some(ring) = state.confidential.clone() else {
        return;
    };
    if !crate::adversary::delivers_custody(state.adversary) {
        return tracing::warn!(%audit, "adversary: withholding the confidential request");
    }
    let plaintext = match state.store.custody(stack, seq) {
        Ok(Some(sealed)) => match ring.custody.open(stack.0, seq, &sealed) {
            Ok(p) => p,
            Err(e) => return tracing::error!(%audit, error = %e, "custody record unreadable"),
        },
        Ok(None) => return,
        Err(e) => return tracing::error!(%audit, error = %e, "custody lookup failed"),
    };
    let verifier = ring.auditor_verifier();
    let to = |node| deliver_sealed(&state, &client, &verifier, audit, node, &plaintext);
    futures::future::join_all(nodes.into_iter().map(to)).await;
}

/// Re-seals `plaintext` to auditor `node` and posts it (see
/// [`sortition_ledger_client::delivery`] for the retry policy).
async fn deliver_sealed(
    state: &NodeState,
    client: &LedgerClient,
    verifier: &PolicyVerifier,
    audit: AuditId,
    node: NodeId,
    plaintext: &[u8],
) {
    use sortition_ledger_client::delivery::{Delivery, post_with_patience};
    let count = |label| {
        state
            .metrics
            .inc("confidential_audit_deliveries_total", label, 1)
    };
    let (sealed, endpoint) = match reseal(client, verifier, audit, node, plaintext).await {
        Ok(s) => s,
        Err(why) => {
            count("refused");
            return tracing::warn!(%audit, %node, %why, "not re-sealing a confidential request to this auditor");
        }
    };
    let url = format!(
        "{}/sortition/v1/audits/{}/sealed-payload",
        endpoint.trim_end_matches('/'),
        audit.0
    );
    match post_with_patience(&reqwest::Client::new(), &url, &sealed).await {
        Delivery::Delivered => count("delivered"),
        Delivery::Refused(why) => {
            tracing::warn!(%audit, %node, %why, "auditor refused the sealed payload")
        }
        Delivery::GaveUp(why) => {
            tracing::warn!(%audit, %node, %why, "sealed payload not delivered in time")
        }
    }
}

/// Checks `node`'s published key like a client would and seals `plaintext` to it for `audit`.
/// Returns the sealed request and the node's endpoint.
async fn reseal(
    client: &LedgerClient,
    verifier: &PolicyVerifier,
    audit: AuditId,
    node: NodeId,
    plaintext: &[u8],
) -> Result<(SealedRequest, String), String> {
    let status = client.status().await.map_err(|e| e.to_string())?;
    let n = client.node(node).await.map_err(|e| e.to_string())?;
    if n.attestation.is_empty() {
        return Err("the auditor publishes no attested confidential key".into());
    }
    if n.key_epoch != status.epoch || n.key_nonce != status.epoch_nonce {
        return Err(format!(
            "the auditor's key is from epoch {}, the ledger is in epoch {}",
            n.key_epoch, status.epoch
        ));
    }
    let evidence: Evidence =
        serde_json::from_slice(&n.attestation).map_err(|e| format!("evidence: {e}"))?;
    let (recipient, _) = RecipientKey::verify_attested(
        node,
        n.key_epoch,
        &status.epoch_nonce,
        n.confidential_key.0.0,
        &evidence,
        verifier,
        unix_now(),
    )
    .map_err(|e| format!("evidence refused: {e}"))?;
    let (sealed, _) = seal_request(
        &recipient,
        audit_request_id(audit.0, node),
        plaintext,
        &audit_aad(audit.0, node),
    )
    .map_err(|e| e.to_string())?;
    Ok((sealed, n.endpoint))
}

/// `POST /sortition/v1/audits/{id}/sealed-payload`: an executor re-sealed a confidential
/// request to this auditor. Opened with this node's key, checked to be for this audit and this
/// node, then judged like any payload.
pub async fn audit_sealed_payload(
    State(s): S,
    axum::extract::Path(id): axum::extract::Path<u64>,
    body: Bytes,
) -> Response {
    match open_audit_payload(&s, AuditId(id), &body) {
        Ok(()) => Json(serde_json::json!({"accepted": true})).into_response(),
        Err(e) => {
            s.metrics.inc("errors_total", e.code, 1);
            e.into_response()
        }
    }
}

fn open_audit_payload(s: &NodeState, audit: AuditId, body: &[u8]) -> Result<(), ApiError> {
    let ring = ring_of(s)?;
    let sealed: SealedRequest = parse_json(body)?;
    if sealed.aad != audit_aad(audit.0, s.id)
        || sealed.request_id != audit_request_id(audit.0, s.id)
    {
        return Err(sealed_error(
            "sealed_payload_invalid",
            "the sealed payload is bound to another audit or auditor",
        ));
    }
    let key = ring.key_or_stale(sealed.key_epoch)?;
    let (plaintext, _) =
        open_request(&key, &sealed).map_err(|e| sealed_error("sealed_payload_invalid", e))?;
    let payload: AuditPayload = parse_json(&plaintext).map_err(|_| {
        sealed_error(
            "sealed_payload_invalid",
            "the opened payload does not parse",
        )
    })?;
    s.audits.deliver(audit, payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod ring_tests {
    use super::*;

    fn tdx_config() -> AttesterConfig {
        AttesterConfig {
            tdx_collateral: Some(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../confidential/testdata/tdx_quote_collateral.json"),
            ),
            ..AttesterConfig::default()
        }
    }

    #[test]
    fn a_hardware_node_needs_a_hardware_auditor_policy() {
        let dir = tempfile::tempdir().unwrap();
        let custody = dir.path().join("custody.key");
        let new = |kind, policy| KeyRing::new(NodeId(1), kind, &tdx_config(), policy, &custody);
        let err = new(AttesterKind::IntelTdx, None).err().unwrap();
        assert!(err.contains("auditor policy"), "{err}");
        let dev_auditors = Policy {
            allow_insecure_dev: true,
            ..Policy::default()
        };
        let err = new(AttesterKind::IntelTdx, Some(dev_auditors))
            .err()
            .unwrap();
        assert!(err.contains("INSECURE"), "{err}");
        let ring = new(AttesterKind::IntelTdx, Some(Policy::default())).unwrap();
        assert!(!ring.is_insecure());
        // A dev node accepts dev auditors by default.
        let ring = new(AttesterKind::InsecureDev, None).unwrap();
        assert!(ring.auditors.allow_insecure_dev);
    }
}
