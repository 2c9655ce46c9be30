//! The one path of a generation request through the node, plain or sealed alike:
//!
//! 1. the route reads its request into a [`Request`] (prompt, sampling parameters, the
//!    [`Extras`] the answer carries, the hash of the exact bytes received, and who keeps the
//!    request for audits);
//! 2. [`start`] reserves the request's worst case on its stack and starts the generation:
//!    an [`Admitted`] request, whose reservation goes back to the stack if it is dropped;
//! 3. [`whole`] runs it to its end for a unary answer, or [`sse`] streams it into a [`Sink`]
//!    (plain chunks, or chunks sealed to the client);
//! 4. [`Job::complete`] signs and persists the receipt before the answer's last part leaves.
//!
//! Routes only read requests and shape responses; money and receipts are decided here once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use sortition_api::Usage;
use sortition_api::{ApiError, SortitionExt};
use sortition_engine::{
    FinishReason, GenerationStream, Prompt, SamplingParams, StreamEvent, TokenLogprobs,
};
use sortition_types::{Custody, Hash32, ModelId, SignedReceipt, TokenLogprobCommit};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::accounts::{Reservation, StackInfo};
use crate::chunks::{TokenClock, chunk_with, render, usage_json};
use crate::error::NodeError;
use crate::logprobs::{Rendered, Renderer};
use crate::request::{Extras, Kind};
use crate::service::{NodeState, Outcome};
use sortition_api::tools;

/// Who keeps a request for its audits.
pub(crate) enum Keep {
    /// The gateway that sent it (a plain request).
    Gateway,
    /// This node, sealed at rest with the receipt: the opened plaintext of a sealed request,
    /// which nobody else can ever hand to auditors.
    Executor(Zeroizing<Vec<u8>>),
}

/// A generation request as the pipeline takes it.
pub(crate) struct Request {
    pub model: ModelId,
    pub prompt: Prompt,
    pub params: SamplingParams,
    pub extras: Extras,
    /// SHA-256 of the exact request bytes (the opened plaintext of a sealed one).
    pub request_hash: Hash32,
    pub keep: Keep,
}

/// What is needed to receipt a request once its generation ends.
pub(crate) struct Job {
    pub state: Arc<NodeState>,
    reservation: Reservation,
    pub model: ModelId,
    params: SamplingParams,
    request_hash: Hash32,
    pub started: Instant,
    pub extras: Extras,
    keep: Keep,
}

/// A request whose units are reserved and whose generation runs.
pub(crate) struct Admitted {
    pub job: Job,
    stream: GenerationStream,
    /// Renders the tokens' log-probabilities, when they are asked for.
    renderer: Option<Renderer>,
}

/// Reserves the worst case (prompt plus `max_tokens`) on `stack` and starts the generation.
pub(crate) fn start(
    s: &Arc<NodeState>,
    stack: &StackInfo,
    r: Request,
) -> Result<Admitted, ApiError> {
    let chat = s.engine(r.model.as_str())?;
    let renderer = r.extras.renderer(chat);
    let prompt_tokens = chat
        .engine
        .prompt_tokens(&r.prompt)
        .map_err(NodeError::from)?;
    let (reservation, stream) = s.start_generation(
        stack,
        chat,
        &r.model,
        prompt_tokens,
        crate::service::GenerationOptions {
            params: r.params.clone(),
            logprobs: r.extras.logprobs,
            constraint: r.extras.engine_constraint(),
        },
    )?;
    Ok(Admitted {
        job: Job {
            state: s.clone(),
            reservation,
            model: r.model,
            params: r.params,
            request_hash: r.request_hash,
            started: Instant::now(),
            extras: r.extras,
            keep: r.keep,
        },
        stream,
        renderer,
    })
}

impl Job {
    /// Receipts the delivered text (and log-probabilities, when asked for): signed and
    /// persisted, with the request itself when this node keeps it.
    fn complete(
        self,
        usage: (u64, u64),
        text: &str,
        finish: &str,
        logprobs: Option<&[TokenLogprobCommit]>,
    ) -> Result<SignedReceipt, ApiError> {
        let state = self.state;
        let digest = state.engine(self.model.as_str())?.engine.info().digest;
        let outcome = Outcome {
            model: self.model,
            model_digest: digest,
            request_hash: self.request_hash,
            response_hash: self.extras.response_hash(text, finish, logprobs),
            input_tokens: usage.0,
            output_tokens: usage.1,
            sampling: self.params.to_record(),
            custody: match self.keep {
                Keep::Gateway => Custody::Gateway,
                Keep::Executor(_) => Custody::Executor,
            },
        };
        let signed = match self.keep {
            Keep::Gateway => state.finish(self.reservation, outcome),
            // The sealed request is kept in the same write as its receipt: a receipt in this
            // node's custody whose request could not be kept is not delivered either.
            Keep::Executor(plaintext) => state.finish_with(self.reservation, outcome, |r| {
                let ring = state.confidential.as_ref()?;
                ring.keep_for_audit(r, &plaintext, text, finish)
            }),
        };
        Ok(signed?)
    }

    /// Ends a generation that failed or was abandoned after `usage`: billed for what it
    /// generated (ending with `why`), or its units released when it generated nothing.
    fn end_early(
        self,
        usage: (u64, u64),
        sent: &str,
        why: &str,
        lp: Option<&[TokenLogprobCommit]>,
    ) {
        if usage.1 == 0 {
            self.state.release(self.reservation);
        } else if let Err(e) = self.complete(usage, sent, why, lp) {
            tracing::warn!(error = %e, "could not receipt an interrupted generation");
        }
    }
}

pub(crate) fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn counts(u: sortition_engine::Usage) -> (u64, u64) {
    (u64::from(u.prompt_tokens), u64::from(u.completion_tokens))
}

/// A whole, receipted answer.
pub(crate) struct Whole {
    pub delivery: tools::Delivery,
    pub usage: (u64, u64),
    pub rendered: Option<Rendered>,
    pub receipt: SignedReceipt,
    pub elapsed: Duration,
}

/// Runs the generation to its end and receipts it. It runs in its own task, so the work is
/// receipted even if the client leaves.
pub(crate) async fn whole(a: Admitted, kind: Kind) -> Result<Whole, ApiError> {
    tokio::spawn(whole_task(a, kind))
        .await
        .map_err(|e| ApiError::internal(format!("generation task failed: {e}")))?
}

async fn whole_task(a: Admitted, kind: Kind) -> Result<Whole, ApiError> {
    let Admitted {
        job,
        mut stream,
        mut renderer,
    } = a;
    let mut clock = TokenClock::new(job.started);
    let mut lps = Vec::new();
    let (finish, usage, text) = loop {
        match stream.next().await {
            Some(StreamEvent::Done {
                finish_reason,
                usage,
                text,
                ..
            }) => break (finish_reason, counts(usage), text),
            Some(StreamEvent::Error(e)) => return Err(NodeError::from(e).into()),
            Some(StreamEvent::Token { logprobs, .. }) => {
                clock.tick(&job.state.metrics);
                lps.extend(logprobs);
            }
            None => return Err(ApiError::internal("generation ended without a result")),
        }
    };
    let text = job.state.behaviour.answer(text);
    let text = format!("{}{text}", job.extras.echo.as_deref().unwrap_or(""));
    let chat = job.state.engine(job.model.as_str())?;
    let delivery = job.extras.deliver(chat, &text, finish_str(finish));
    let rendered = renderer.as_mut().map(|r| render(kind, r, &lps));
    let commit = rendered.as_ref().map(Rendered::commit);
    let elapsed = job.started.elapsed();
    let committed = delivery.committed_text();
    let receipt = job.complete(usage, &committed, &delivery.finish, commit.as_deref())?;
    Ok(Whole {
        delivery,
        usage,
        rendered,
        receipt,
        elapsed,
    })
}

/// How a stream's parts go on the wire.
pub(crate) trait Sink: Send + 'static {
    /// The message carrying one chunk (its JSON as a plain stream carries it); `None` when it
    /// cannot be made, which ends the stream as a client that left does.
    fn chunk(&mut self, json: String) -> Option<String>;
    /// The messages that end a receipted answer: its finish chunk (`finish` makes it, with the
    /// receipt on it or not) and whatever else carries the receipt.
    fn end(
        &mut self,
        finish: &dyn Fn(Option<SortitionExt>) -> String,
        usage: Usage,
        receipt: SortitionExt,
    ) -> Vec<String>;
}

/// A plain stream: chunks as they are; the receipt rides on the last event, which is the
/// finish chunk (with its choice, as OpenAI SDK loops that index `choices[0]` expect) unless
/// the client asked for the usage chunk, which then comes last and carries it. Whoever relays
/// the stream checks the receipt on that event and relays nothing after it.
pub(crate) struct PlainSink {
    pub kind: Kind,
    pub id: String,
    pub model: String,
    pub include_usage: bool,
}

impl Sink for PlainSink {
    fn chunk(&mut self, json: String) -> Option<String> {
        Some(json)
    }
    fn end(
        &mut self,
        finish: &dyn Fn(Option<SortitionExt>) -> String,
        usage: Usage,
        receipt: SortitionExt,
    ) -> Vec<String> {
        if self.include_usage {
            let last = usage_json(self.kind, &self.id, &self.model, usage, receipt);
            vec![finish(None), last]
        } else {
            vec![finish(Some(receipt))]
        }
    }
}

/// Streams the generation as SSE into `sink`. A driver task owns the generation: if the
/// client disconnects, the generation is cancelled and the tokens generated so far are
/// receipted and billed.
pub(crate) fn sse(
    a: Admitted,
    kind: Kind,
    id: String,
    model: String,
    sink: impl Sink,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, mut rx) = mpsc::channel::<String>(64);
    tokio::spawn(drive(a, kind, id, model, sink, tx));
    let stream = async_stream::stream! {
        while let Some(data) = rx.recv().await {
            yield Ok(Event::default().data(data));
        }
        yield Ok(Event::default().data("[DONE]"));
    };
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn error_json(e: &ApiError) -> String {
    serde_json::to_string(&e.body()).unwrap_or_default()
}

async fn drive(
    a: Admitted,
    kind: Kind,
    id: String,
    model: String,
    mut sink: impl Sink,
    tx: mpsc::Sender<String>,
) {
    let Admitted {
        job,
        mut stream,
        mut renderer,
    } = a;
    let s = job.state.clone();
    let usage_handle = stream.usage_handle();
    let mut first = true;
    let mut sent_text = String::new();
    // Log-probabilities of tokens whose text is not out yet (held back), and the commitment
    // of those already sent: every chunk carries the entries of the tokens it completes.
    let mut pending: Vec<TokenLogprobs> = Vec::new();
    let mut sent_lp: Vec<TokenLogprobCommit> = Vec::new();
    let mut take = |pending: &mut Vec<TokenLogprobs>, sent_lp: &mut Vec<TokenLogprobCommit>| {
        renderer.as_mut().map(|r| {
            let rendered = render(kind, r, pending);
            sent_lp.extend(rendered.commit());
            pending.clear();
            rendered
        })
    };
    let lp_sent = |sent_lp: &[TokenLogprobCommit]| job.extras.logprobs.map(|_| sent_lp.to_vec());
    // With tools, the text is read into content and calls once it is whole.
    let buffered = job.extras.tools.is_some();
    let mut clock = TokenClock::new(job.started);
    let send = async |sink: &mut dyn Sink, json: String| match sink.chunk(json) {
        Some(m) => tx.send(m).await.is_ok(),
        None => false,
    };
    if let Some(echo) = job.extras.echo.clone() {
        sent_text.push_str(&echo);
        let chunk = chunk_with(kind, &id, &model, Some(echo), None, first, None, None);
        if !send(&mut sink, chunk).await {
            drop(stream);
            s.release(job.reservation);
            return;
        }
        first = false;
    }
    loop {
        match stream.next().await {
            Some(StreamEvent::Token { text, logprobs, .. }) => {
                clock.tick(&s.metrics);
                pending.extend(logprobs);
                if text.is_empty() || buffered {
                    continue;
                }
                sent_text.push_str(&text);
                let lp = take(&mut pending, &mut sent_lp);
                let chunk = chunk_with(kind, &id, &model, Some(text), None, first, lp, None);
                if !send(&mut sink, chunk).await {
                    // Client left: cancel generation, bill what was generated.
                    drop(stream);
                    s.metrics.inc("client_disconnects_total", "", 1);
                    let lp = lp_sent(&sent_lp);
                    let usage = counts(usage_handle.usage());
                    job.end_early(usage, &sent_text, "cancelled", lp.as_deref());
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
                let echo = job.extras.echo.as_deref().unwrap_or("");
                // Any text held back (e.g. a partial stop-string match that did not complete)
                // is flushed so that the stream equals the non-streamed answer.
                if let Some(rest) = format!("{echo}{text}").strip_prefix(sent_text.as_str())
                    && !rest.is_empty()
                    && !buffered
                {
                    let lp = take(&mut pending, &mut sent_lp);
                    let rest = Some(rest.to_string());
                    let chunk = chunk_with(kind, &id, &model, rest, None, first, lp, None);
                    send(&mut sink, chunk).await;
                    first = false;
                }
                let finish = finish_str(finish_reason);
                let text = format!("{echo}{}", s.behaviour.answer(text));
                let delivery = match s.engine(job.model.as_str()) {
                    Ok(chat) => job.extras.deliver(chat, &text, finish),
                    Err(e) => {
                        let _ = tx.send(error_json(&e.into())).await;
                        return;
                    }
                };
                if buffered {
                    send(&mut sink, whole_chunk(&id, &model, &delivery, first)).await;
                }
                // The finish chunk is held until the receipt is signed. With
                // log-probabilities, it carries the entries of any token not sent yet (an
                // empty list if none), so a stream always delivers some.
                let finish = delivery.finish.as_str();
                let last_lp = take(&mut pending, &mut sent_lp);
                let lp = lp_sent(&sent_lp);
                let usage = counts(usage);
                let committed = delivery.committed_text();
                let messages = match job.complete(usage, &committed, finish, lp.as_deref()) {
                    Ok(receipt) => {
                        let ext = SortitionExt {
                            node: s.id,
                            receipt,
                            verified_by_gateway: None,
                        };
                        let finish_chunk = |ext| {
                            let lp = last_lp.clone();
                            chunk_with(kind, &id, &model, None, Some(finish), false, lp, ext)
                        };
                        sink.end(&finish_chunk, Usage::new(usage.0, usage.1), ext)
                    }
                    Err(e) => vec![error_json(&e)],
                };
                for m in messages {
                    let _ = tx.send(m).await;
                }
                return;
            }
            Some(StreamEvent::Error(e)) => {
                let usage = counts(usage_handle.usage());
                let _ = tx.send(error_json(&NodeError::from(e).into())).await;
                let lp = lp_sent(&sent_lp);
                job.end_early(usage, &sent_text, "error", lp.as_deref());
                return;
            }
            None => {
                s.release(job.reservation);
                return;
            }
        }
    }
}

/// A chat chunk that delivers a whole answer read for tool calls: its content, and each call
/// whole (id, name and arguments) in OpenAI's `delta.tool_calls` shape.
fn whole_chunk(id: &str, model: &str, d: &tools::Delivery, first: bool) -> String {
    use sortition_api::{ChatCompletionChunk, Delta};
    let calls = d.tool_calls(id).map(|calls| {
        calls
            .into_iter()
            .enumerate()
            .map(|(i, c)| sortition_api::tools::ToolCallDelta {
                index: i as u32,
                id: Some(c.id),
                r#type: Some(c.r#type),
                function: sortition_api::tools::FunctionCallDelta {
                    name: Some(c.function.name),
                    arguments: Some(c.function.arguments),
                },
            })
            .collect()
    });
    let delta = Delta {
        role: first.then(|| "assistant".into()),
        content: d.content.clone(),
        tool_calls: calls,
    };
    serde_json::to_string(&ChatCompletionChunk::single(
        id, model, delta, None, None, None,
    ))
    .unwrap_or_default()
}
