//! The node's OpenAI-compatible routes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use sortition_api::tools;
use sortition_api::*;
use sortition_engine::{FinishReason, Prompt, SamplingParams, StreamEvent, TokenLogprobs};
use sortition_types::{
    Custody, ModelId, SignedReceipt, TokenLogprobCommit, embedding_response_hash, sha256,
};
use tokio::sync::mpsc;

use crate::auth::authenticate;
use crate::logprobs::{Rendered, Renderer};
use crate::service::{ChatModel, EmbedModel, NodeState, Outcome, engine_error};

type S = State<Arc<NodeState>>;

/// Converts OpenAI sampling fields into engine parameters (validated by the engine). A request
/// without `seed` gets a fresh one from the operating system, so that two identical requests
/// sampled at a temperature above 0 are two independent draws (as OpenAI answers them); the
/// seed used is recorded in the receipt's sampling record, where auditors read it.
pub fn sampling_params(f: &SamplingFields, default_max: u32) -> Result<SamplingParams, ApiError> {
    let seed = match f.seed {
        Some(s) => s,
        None => fresh_seed()?,
    };
    sampling_params_seeded(f, default_max, seed)
}

/// [`sampling_params`] with the seed to use when the request names none: an auditor passes the
/// seed the receipt records, so it re-executes exactly what the node ran. A request that names
/// a seed is always run with it.
pub fn sampling_params_seeded(
    f: &SamplingFields,
    default_max: u32,
    seed_if_absent: u64,
) -> Result<SamplingParams, ApiError> {
    f.check_supported()?;
    let d = SamplingParams::default();
    let p = SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_p: f.top_p.unwrap_or(d.top_p),
        top_k: f.top_k.unwrap_or(d.top_k),
        seed: f.seed.unwrap_or(seed_if_absent),
        max_tokens: f
            .max_completion_tokens
            .or(f.max_tokens)
            .unwrap_or(default_max),
        stop: f.stop.clone().map(StopSpec::into_vec).unwrap_or_default(),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
    };
    p.validate().map_err(engine_error)?;
    Ok(p)
}

/// What an answer carries besides the generated text, read from the request as its endpoint
/// defines the fields. Executors and auditors read it here alike: the receipt commits to all
/// of it.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// Alternatives listed with each token's log-probability, when they are asked for.
    pub logprobs: Option<u8>,
    /// The prompt, delivered before the generated text (text completions' `echo`).
    pub echo: Option<String>,
    /// The constraint on the text (chat `response_format`), enforced by the engine and named
    /// by digest in the response hash.
    pub constraint: Option<sortition_api::constraint::ConstraintSpec>,
    /// The tools the answer may call (chat `tools` with a `tool_choice` other than `none`):
    /// the answer's text is read into content and calls.
    pub tools: Option<sortition_api::tools::ToolSpec>,
}

impl Extras {
    /// The extras of a request to `kind` with these fields and prompt.
    pub fn read(kind: Kind, fields: &SamplingFields, prompt: &Prompt) -> Result<Self, ApiError> {
        let endpoint = match kind {
            Kind::Chat => Endpoint::Chat,
            Kind::Text => Endpoint::Completions,
        };
        let logprobs = fields.logprobs_for(endpoint)?;
        let echo = match (fields.echo(), prompt) {
            (false, _) => None,
            (true, _) if logprobs.is_some() => {
                return Err(ApiError::invalid(
                    "unsupported_parameter",
                    "'echo' with 'logprobs' is not supported: the prompt's log-probabilities \
                     are not served; ask for one or the other",
                )
                .with_param("echo"));
            }
            (true, Prompt::Text(t)) => Some(t.clone()),
            (true, _) => {
                return Err(ApiError::invalid(
                    "unsupported_parameter",
                    "'echo' needs a text prompt",
                )
                .with_param("echo"));
            }
        };
        let constraint = fields.constraint_for(endpoint)?;
        let tools = fields.tools_for(endpoint)?;
        Ok(Extras {
            logprobs,
            echo,
            constraint,
            tools,
        })
    }

    /// What the generated `text` delivers: with tools, its content and calls (a `strict`
    /// function's `auto` arguments checked against its schema by `chat`'s constraint
    /// library); otherwise the text itself.
    pub fn deliver(&self, chat: &ChatModel, text: &str, finish: &str) -> tools::Delivery {
        match &self.tools {
            Some(t) => t.deliver(text, finish, &|schema, args| {
                chat.engine.accepts_json(schema, args)
            }),
            None => tools::Delivery {
                content: Some(text.to_string()),
                calls: Vec::new(),
                finish: finish.to_string(),
            },
        }
    }

    /// The engine's form of the constraint.
    pub fn engine_constraint(&self) -> Option<sortition_engine::Constraint> {
        self.constraint
            .as_ref()
            .map(|c| sortition_engine::Constraint::JsonSchema(c.schema.clone()))
    }

    /// The `response_hash` of an answer with these extras: the text (echo included), why it
    /// ended, the constraint's digest and the delivered log-probabilities.
    pub fn response_hash(
        &self,
        text: &str,
        finish: &str,
        logprobs: Option<&[TokenLogprobCommit]>,
    ) -> sortition_types::Hash32 {
        let constraint = self.constraint.as_ref().map(|c| c.digest());
        sortition_types::answer_response_hash(text, finish, constraint, logprobs)
    }

    /// A renderer for this answer's log-probabilities, when asked for.
    fn renderer(&self, chat: &ChatModel) -> Option<Renderer> {
        self.logprobs.map(|_| {
            let offset = self.echo.as_deref().map_or(0, |e| e.chars().count() as u32);
            Renderer::new(chat.engine.tokenizer().clone(), offset)
        })
    }
}

/// Renders `lps` for `kind`.
fn render(kind: Kind, r: &mut Renderer, lps: &[TokenLogprobs]) -> Rendered {
    match kind {
        Kind::Chat => Rendered::Chat(r.chat(lps)),
        Kind::Text => Rendered::Text(r.text(lps)),
    }
}

/// The default `max_tokens` of an endpoint (OpenAI's 16 for text completions).
pub fn default_max_tokens(kind: Kind) -> u32 {
    match kind {
        Kind::Chat => DEFAULT_MAX_TOKENS_CHAT,
        Kind::Text => DEFAULT_MAX_TOKENS_COMPLETIONS,
    }
}

/// The chat model `model`; an embedding model named here is refused as such (400), not as
/// unknown.
pub fn chat_model<'a>(s: &'a NodeState, model: &str) -> Result<&'a ChatModel, ApiError> {
    if s.embed.contains_key(&ModelId::new(model)) && !s.chat.contains_key(&ModelId::new(model)) {
        return Err(ApiError::invalid(
            "wrong_endpoint",
            format!("'{model}' is an embedding model; use /v1/embeddings"),
        )
        .with_param("model"));
    }
    s.engine(model)
}

/// The embedding model `model`; a chat model named here is refused as such (400).
pub fn embed_model<'a>(s: &'a NodeState, model: &str) -> Result<&'a EmbedModel, ApiError> {
    if s.chat.contains_key(&ModelId::new(model)) && !s.embed.contains_key(&ModelId::new(model)) {
        return Err(ApiError::invalid(
            "wrong_endpoint",
            format!("'{model}' is a chat model; use /v1/chat/completions or /v1/completions"),
        )
        .with_param("model"));
    }
    s.embedder(model)
}

/// A sampling seed drawn from the operating system.
fn fresh_seed() -> Result<u64, ApiError> {
    getrandom::u64().map_err(|e| ApiError::internal(format!("no randomness for a seed: {e}")))
}

/// A response id unique to this call (`chatcmpl-…`, `cmpl-…`): 96 random bits, so that two
/// identical requests never share an id.
pub(crate) fn response_id(prefix: &str) -> Result<String, ApiError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::internal(format!("no randomness for an id: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}-{hex}"))
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn receipt_header(r: &SignedReceipt) -> Option<HeaderValue> {
    serde_json::to_string(r)
        .ok()
        .and_then(|s| HeaderValue::from_str(&s).ok())
}

/// A request after authentication, reservation and admission, ready to stream.
struct Admitted {
    job: Job,
    stream: sortition_engine::GenerationStream,
    /// Renders the tokens' log-probabilities, when they are asked for.
    renderer: Option<Renderer>,
}

/// What is needed to receipt a request once its generation ends.
struct Job {
    state: Arc<NodeState>,
    reservation: crate::accounts::Reservation,
    model: ModelId,
    params: SamplingParams,
    request_hash: sortition_types::Hash32,
    started: Instant,
    extras: Extras,
}

async fn admit(
    s: Arc<NodeState>,
    stack: crate::accounts::StackInfo,
    body: &Bytes,
    model: &str,
    prompt: Prompt,
    fields: &SamplingFields,
    kind: Kind,
) -> Result<Admitted, ApiError> {
    let chat = chat_model(&s, model)?;
    let params = sampling_params(fields, default_max_tokens(kind))?;
    let extras = Extras::read(kind, fields, &prompt)?;
    let renderer = extras.renderer(chat);
    let prompt_tokens = chat.engine.prompt_tokens(&prompt).map_err(engine_error)?;
    let model_id = ModelId::new(model);
    let (reservation, stream) = s.start_generation(
        &stack,
        chat,
        &model_id,
        prompt_tokens,
        crate::service::GenerationOptions {
            params: params.clone(),
            logprobs: extras.logprobs,
            constraint: extras.engine_constraint(),
        },
    )?;
    let job = Job {
        state: s.clone(),
        reservation,
        model: model_id,
        params,
        request_hash: sha256(body),
        started: Instant::now(),
        extras,
    };
    Ok(Admitted {
        job,
        stream,
        renderer,
    })
}

impl Job {
    /// Finishes with the delivered text (and log-probabilities, when asked for): receipt
    /// signed and persisted.
    fn complete(
        self,
        prompt_tokens: u64,
        completion_tokens: u64,
        text: &str,
        finish: &str,
        logprobs: Option<&[TokenLogprobCommit]>,
    ) -> Result<SignedReceipt, ApiError> {
        let digest = self.state.engine(self.model.as_str())?.engine.info().digest;
        self.state.finish(
            self.reservation,
            Outcome {
                model: self.model,
                model_digest: digest,
                request_hash: self.request_hash,
                response_hash: self.extras.response_hash(text, finish, logprobs),
                input_tokens: prompt_tokens,
                output_tokens: completion_tokens,
                sampling: self.params.to_record(),
                custody: Custody::Gateway,
            },
        )
    }
}

pub async fn chat_completions(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.inc("requests_total", "chat", 1);
    generation(&s, &headers, &body, Kind::Chat)
        .await
        .unwrap_or_else(|e| error(&s, e))
}

pub async fn completions(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.inc("requests_total", "completions", 1);
    generation(&s, &headers, &body, Kind::Text)
        .await
        .unwrap_or_else(|e| error(&s, e))
}

/// Chat and text completions: authenticate first (so an unauthenticated caller learns nothing
/// about the body), then parse, admit, and answer as a stream or at once.
async fn generation(
    s: &Arc<NodeState>,
    headers: &HeaderMap,
    body: &Bytes,
    kind: Kind,
) -> Result<Response, ApiError> {
    let path = match kind {
        Kind::Chat => "/v1/chat/completions",
        Kind::Text => "/v1/completions",
    };
    let stack = authenticate(
        s.stacks.as_ref(),
        &s.store,
        "POST",
        path,
        headers,
        body,
        unix_now_ms(),
    )
    .await?;
    let (model, prompt, sampling) = match kind {
        Kind::Chat => {
            let req: ChatCompletionRequest = parse_json(body)?;
            (
                req.model,
                Prompt::Chat(chat_messages(&req.messages, &req.sampling)?),
                req.sampling,
            )
        }
        Kind::Text => {
            let req: CompletionRequest = parse_json(body)?;
            let prompt = req.single_prompt()?;
            (req.model, Prompt::Text(prompt), req.sampling)
        }
    };
    let id = response_id(match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    })?;
    let admitted = admit(s.clone(), stack, body, &model, prompt, &sampling, kind).await?;
    if sampling.is_stream() {
        Ok(sse(admitted, id, model, sampling.include_usage(), kind).into_response())
    } else {
        Ok(unary(admitted, id, model, kind).await)
    }
}

/// The conversation as the model reads it: the history (assistant tool calls and `tool`
/// results written as the model's tool-call format), with the tools the request lets the
/// model call listed in the system message. Refused (400, naming the message): an unknown
/// role, a `tool` message without a `tool_call_id` that an earlier assistant call carries,
/// tool calls on a message that is not the assistant's.
pub fn chat_messages(
    msgs: &[ChatMessage],
    fields: &SamplingFields,
) -> Result<Vec<sortition_engine::ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(
            ApiError::invalid("empty_messages", "messages must not be empty")
                .with_param("messages"),
        );
    }
    let mut call_ids: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(msgs.len() + 1);
    for (i, m) in msgs.iter().enumerate() {
        let text = m
            .content
            .as_ref()
            .map(|c| c.text())
            .transpose()?
            .unwrap_or_default();
        let refuse = |field: &str, msg: String| {
            ApiError::invalid("invalid_message", msg).with_param(format!("messages[{i}].{field}"))
        };
        match m.role.as_str() {
            "system" | "user" | "assistant" | "developer" | "tool" => {}
            other => {
                return Err(ApiError::invalid(
                    "invalid_role",
                    format!(
                        "unsupported role '{other}'; roles are system, developer, user, \
                         assistant and tool"
                    ),
                )
                .with_param(format!("messages[{i}].role")));
            }
        }
        if m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) && m.role != "assistant" {
            return Err(refuse(
                "tool_calls",
                "only assistant messages carry tool calls".into(),
            ));
        }
        if m.role == "tool" {
            match m.tool_call_id.as_deref() {
                Some(id) if call_ids.contains(&id) => {}
                Some(id) => {
                    return Err(refuse(
                        "tool_call_id",
                        format!(
                            "tool message answers call '{id}', which no earlier assistant \
                             message made"
                        ),
                    ));
                }
                None => {
                    return Err(refuse(
                        "tool_call_id",
                        "a tool message needs the 'tool_call_id' of the call it answers".into(),
                    ));
                }
            }
        }
        call_ids.extend(m.tool_calls.iter().flatten().map(|c| c.id.as_str()));
        let role = if m.role == "developer" {
            "system"
        } else {
            m.role.as_str()
        };
        let (role, text) = tools::history_turn(role, &text, m.tool_calls.as_deref());
        out.push(sortition_engine::ChatMessage::new(role, text));
    }
    if let Some(t) = fields.tools_for(Endpoint::Chat)? {
        let listed = t.system_text();
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{listed}", first.content);
            }
            _ => out.insert(0, sortition_engine::ChatMessage::new("system", listed)),
        }
    }
    Ok(out)
}

fn error(s: &NodeState, e: ApiError) -> Response {
    s.metrics.inc("errors_total", e.code, 1);
    e.into_response()
}

/// Observes time to first token and inter-token latency as a request's tokens arrive.
struct TokenClock {
    started: Instant,
    last: Option<Instant>,
}

impl TokenClock {
    fn new(started: Instant) -> Self {
        TokenClock {
            started,
            last: None,
        }
    }

    fn tick(&mut self, m: &sortition_api::metrics::Registry) {
        let now = Instant::now();
        match self.last {
            None => m.observe(
                "time_to_first_token_seconds",
                (now - self.started).as_secs_f64(),
            ),
            Some(prev) => m.observe("inter_token_seconds", (now - prev).as_secs_f64()),
        }
        self.last = Some(now);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

async fn unary(a: Admitted, id: String, model: String, kind: Kind) -> Response {
    let s = a.job.state.clone();
    // The generation runs to completion in its own task even if the client leaves, so the
    // work done is always receipted.
    let task = tokio::spawn(async move {
        let Admitted {
            job,
            mut stream,
            mut renderer,
        } = a;
        let mut clock = TokenClock::new(job.started);
        let mut lps = Vec::new();
        let result = loop {
            match stream.next().await {
                Some(StreamEvent::Done {
                    finish_reason,
                    usage,
                    text,
                    ..
                }) => break Ok((finish_reason, usage, text)),
                Some(StreamEvent::Error(e)) => break Err(engine_error(e)),
                Some(StreamEvent::Token { logprobs, .. }) => {
                    clock.tick(&job.state.metrics);
                    lps.extend(logprobs);
                }
                None => break Err(ApiError::internal("generation ended without a result")),
            }
        };
        match result {
            Ok((finish, usage, text)) => {
                let (p, c) = (
                    u64::from(usage.prompt_tokens),
                    u64::from(usage.completion_tokens),
                );
                let text = crate::adversary::rewrite_text(job.state.adversary, text);
                let text = format!("{}{text}", job.extras.echo.as_deref().unwrap_or(""));
                let chat = job.state.engine(job.model.as_str())?;
                let delivery = job.extras.deliver(chat, &text, finish_str(finish));
                let rendered = renderer.as_mut().map(|r| render(kind, r, &lps));
                let commit = rendered.as_ref().map(Rendered::commit);
                let elapsed = job.started.elapsed();
                let receipt = job.complete(
                    p,
                    c,
                    &delivery.committed_text(),
                    &delivery.finish,
                    commit.as_deref(),
                )?;
                Ok((delivery, p, c, rendered, receipt, elapsed))
            }
            Err(e) => {
                job.state.release(job.reservation);
                Err(e)
            }
        }
    });
    let (delivery, p, c, rendered, receipt, elapsed) = match task.await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return error(&s, e),
        Err(e) => {
            return error(
                &s,
                ApiError::internal(format!("generation task failed: {e}")),
            );
        }
    };
    s.metrics.observe("request_seconds", elapsed.as_secs_f64());
    let ext = Some(SortitionExt {
        node: s.id,
        receipt: receipt.clone(),
        verified_by_gateway: None,
    });
    let usage = Usage::new(p, c);
    // Written from the typed answer (never through a `Value`, which would print f32
    // log-probabilities with f64 digits).
    let tool_calls = delivery.tool_calls(&id);
    let body = match kind {
        Kind::Chat => serde_json::to_string(&ChatCompletion {
            id,
            object: "chat.completion".into(),
            created: unix_now(),
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".into(),
                    tool_calls,
                    content: delivery.content,
                },
                finish_reason: delivery.finish,
                logprobs: match rendered {
                    Some(Rendered::Chat(c)) => Some(c),
                    _ => None,
                },
            }],
            usage,
            sortition: ext,
        }),
        Kind::Text => serde_json::to_string(&Completion {
            id,
            object: "text_completion".into(),
            created: unix_now(),
            model,
            choices: vec![CompletionChoice {
                index: 0,
                text: delivery.content.unwrap_or_default(),
                finish_reason: Some(delivery.finish),
                logprobs: match rendered {
                    Some(Rendered::Text(t)) => Some(t),
                    _ => None,
                },
            }],
            usage: Some(usage),
            sortition: ext,
        }),
    };
    let mut resp = match body {
        Ok(v) => ([(axum::http::header::CONTENT_TYPE, "application/json")], v).into_response(),
        Err(e) => return error(&s, ApiError::internal(e.to_string())),
    };
    if let Some(h) = receipt_header(&receipt) {
        resp.headers_mut().insert(RECEIPT_HEADER, h);
    }
    resp
}

pub(crate) fn chunk_json(
    kind: Kind,
    id: &str,
    model: &str,
    text: Option<String>,
    finish: Option<&str>,
    first: bool,
) -> String {
    chunk_with(kind, id, model, text, finish, first, None, None)
}

/// A stream chunk with its one choice (index 0) and the log-probabilities of the tokens it
/// completes; `ext` puts the receipt on it (the finish chunk, when no usage chunk follows).
#[allow(clippy::too_many_arguments)]
fn chunk_with(
    kind: Kind,
    id: &str,
    model: &str,
    text: Option<String>,
    finish: Option<&str>,
    first: bool,
    logprobs: Option<Rendered>,
    ext: Option<SortitionExt>,
) -> String {
    let (chat_lp, text_lp) = match logprobs {
        Some(Rendered::Chat(c)) => (Some(c), None),
        Some(Rendered::Text(t)) => (None, Some(t)),
        None => (None, None),
    };
    let v = match kind {
        Kind::Chat => serde_json::to_string(&ChatCompletionChunk::single(
            id,
            model,
            Delta {
                role: first.then(|| "assistant".into()),
                content: text,
                tool_calls: None,
            },
            finish.map(Into::into),
            chat_lp,
            ext,
        )),
        Kind::Text => serde_json::to_string(&Completion {
            id: id.into(),
            object: "text_completion".into(),
            created: unix_now(),
            model: model.into(),
            choices: vec![CompletionChoice {
                index: 0,
                text: text.unwrap_or_default(),
                finish_reason: finish.map(Into::into),
                logprobs: text_lp,
            }],
            usage: None,
            sortition: ext,
        }),
    };
    v.unwrap_or_else(|e| format!("{{\"error\":{{\"message\":\"{e}\"}}}}"))
}

/// A chat chunk that delivers a whole answer read for tool calls: its content, and each call
/// whole (id, name and arguments) in OpenAI's `delta.tool_calls` shape.
fn whole_chunk(id: &str, model: &str, d: &tools::Delivery, first: bool) -> String {
    let calls = d.tool_calls(id).map(|calls| {
        calls
            .into_iter()
            .enumerate()
            .map(|(i, c)| tools::ToolCallDelta {
                index: i as u32,
                id: Some(c.id),
                r#type: Some(c.r#type),
                function: tools::FunctionCallDelta {
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

/// The usage chunk OpenAI sends after the finish chunk when `stream_options.include_usage`
/// is set: no choices, the usage, and (being the last event) the receipt.
fn usage_json(kind: Kind, id: &str, model: &str, usage: Usage, ext: SortitionExt) -> String {
    let usage = Some(usage);
    let v = match kind {
        Kind::Chat => serde_json::to_string(&ChatCompletionChunk {
            id: id.into(),
            object: "chat.completion.chunk".into(),
            created: unix_now(),
            model: model.into(),
            choices: vec![],
            usage,
            sortition: Some(ext),
        }),
        Kind::Text => serde_json::to_string(&Completion {
            id: id.into(),
            object: "text_completion".into(),
            created: unix_now(),
            model: model.into(),
            choices: vec![],
            usage,
            sortition: Some(ext),
        }),
    };
    v.unwrap_or_default()
}

/// Streams tokens as SSE. A driver task owns the generation: if the client disconnects, the
/// generation is cancelled and the tokens generated so far are receipted and billed.
fn sse(
    a: Admitted,
    id: String,
    model: String,
    include_usage: bool,
    kind: Kind,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, mut rx) = mpsc::channel::<String>(64);
    tokio::spawn(drive_stream(a, id, model, include_usage, kind, tx));
    let stream = async_stream::stream! {
        while let Some(data) = rx.recv().await {
            yield Ok(Event::default().data(data));
        }
        yield Ok(Event::default().data("[DONE]"));
    };
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn drive_stream(
    a: Admitted,
    id: String,
    model: String,
    include_usage: bool,
    kind: Kind,
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
    let mut clock = TokenClock::new(job.started);
    if let Some(echo) = job.extras.echo.clone() {
        sent_text.push_str(&echo);
        if tx
            .send(chunk_json(kind, &id, &model, Some(echo), None, first))
            .await
            .is_err()
        {
            drop(stream);
            s.release(job.reservation);
            return;
        }
        first = false;
    }
    loop {
        let ev = stream.next().await;
        match ev {
            Some(StreamEvent::Token { text, logprobs, .. }) => {
                clock.tick(&s.metrics);
                pending.extend(logprobs);
                // With tools, the text is read into content and calls once it is whole.
                if text.is_empty() || job.extras.tools.is_some() {
                    continue;
                }
                sent_text.push_str(&text);
                let lp = take(&mut pending, &mut sent_lp);
                let chunk = chunk_with(kind, &id, &model, Some(text), None, first, lp, None);
                if tx.send(chunk).await.is_err() {
                    // Client left: cancel generation, bill what was generated.
                    drop(stream);
                    let usage = usage_handle.usage();
                    s.metrics.inc("client_disconnects_total", "", 1);
                    let p = u64::from(usage.prompt_tokens);
                    let c = u64::from(usage.completion_tokens);
                    let lp = lp_sent(&sent_lp);
                    let _ = job.complete(p, c, &sent_text, "cancelled", lp.as_deref());
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
                let text = format!("{}{text}", job.extras.echo.as_deref().unwrap_or(""));
                let buffered = job.extras.tools.is_some();
                // Any text held back (e.g. a partial stop-string match that did not complete)
                // is flushed so that the stream equals the non-streamed answer.
                if let Some(rest) = text.strip_prefix(sent_text.as_str())
                    && !rest.is_empty()
                    && !buffered
                {
                    let lp = take(&mut pending, &mut sent_lp);
                    let rest = Some(rest.to_string());
                    let chunk = chunk_with(kind, &id, &model, rest, None, first, lp, None);
                    let _ = tx.send(chunk).await;
                }
                // The finish chunk is held until the receipt is signed: the receipt rides on
                // the last event of the stream, which is the finish chunk (with its choice, as
                // OpenAI SDK loops that index `choices[0]` expect) unless the client asked for
                // the usage chunk, which then comes last and carries it. Whoever relays the
                // stream checks the receipt on that event and relays nothing after it. With
                // log-probabilities, the finish chunk carries the entries of any token not
                // sent yet (an empty list if none), so a stream always delivers some.
                let finish = finish_str(finish_reason);
                let (p, c) = (
                    u64::from(usage.prompt_tokens),
                    u64::from(usage.completion_tokens),
                );
                let text = crate::adversary::rewrite_text(s.adversary, text);
                let delivery = match s.engine(job.model.as_str()) {
                    Ok(chat) => job.extras.deliver(chat, &text, finish),
                    Err(e) => {
                        s.release(job.reservation);
                        let _ = tx
                            .send(serde_json::to_string(&e.body()).unwrap_or_default())
                            .await;
                        return;
                    }
                };
                if buffered {
                    let _ = tx.send(whole_chunk(&id, &model, &delivery, first)).await;
                }
                let finish = delivery.finish.as_str();
                let last_lp = take(&mut pending, &mut sent_lp);
                let lp = lp_sent(&sent_lp);
                let committed = delivery.committed_text();
                match job.complete(p, c, &committed, finish, lp.as_deref()) {
                    Ok(receipt) => {
                        let ext = SortitionExt {
                            node: s.id,
                            receipt,
                            verified_by_gateway: None,
                        };
                        let (finish_ext, usage_event) = match include_usage {
                            true => (None, Some(ext)),
                            false => (Some(ext), None),
                        };
                        let _ = tx
                            .send(chunk_with(
                                kind,
                                &id,
                                &model,
                                None,
                                Some(finish),
                                false,
                                last_lp,
                                finish_ext,
                            ))
                            .await;
                        if let Some(ext) = usage_event {
                            let usage = Usage::new(p, c);
                            let _ = tx.send(usage_json(kind, &id, &model, usage, ext)).await;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(serde_json::to_string(&e.body()).unwrap_or_default())
                            .await;
                    }
                }
                return;
            }
            Some(StreamEvent::Error(e)) => {
                let usage = usage_handle.usage();
                let e = engine_error(e);
                let _ = tx
                    .send(serde_json::to_string(&e.body()).unwrap_or_default())
                    .await;
                let p = u64::from(usage.prompt_tokens);
                let c = u64::from(usage.completion_tokens);
                if c == 0 {
                    s.release(job.reservation);
                } else {
                    let lp = lp_sent(&sent_lp);
                    let _ = job.complete(p, c, &sent_text, "error", lp.as_deref());
                }
                return;
            }
            None => {
                s.release(job.reservation);
                return;
            }
        }
    }
}

/// An embeddings request's inputs as the engine takes them.
pub fn embed_inputs(input: EmbeddingInput) -> Vec<sortition_engine::EmbedInput> {
    input
        .into_items()
        .into_iter()
        .map(|i| match i {
            EmbeddingItem::Text(t) => sortition_engine::EmbedInput::Text(t),
            EmbeddingItem::Tokens(ids) => sortition_engine::EmbedInput::Tokens(ids),
        })
        .collect()
}

pub async fn embeddings(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.inc("requests_total", "embeddings", 1);
    match embeddings_inner(&s, &headers, &body).await {
        Ok(r) => r,
        Err(e) => error(&s, e),
    }
}

async fn embeddings_inner(
    s: &Arc<NodeState>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let stack = authenticate(
        s.stacks.as_ref(),
        &s.store,
        "POST",
        "/v1/embeddings",
        headers,
        body,
        unix_now_ms(),
    )
    .await?;
    let req: EmbeddingRequest = parse_json(body)?;
    req.check_supported()?;
    let m = embed_model(s, &req.model)?;
    let format = req.encoding_format.clone();
    EmbeddingVector::encode(vec![], format.as_deref())?;
    if req.dimensions.is_some_and(|d| d as usize != m.embedder.dim) {
        return Err(ApiError::invalid(
            "unsupported_dimensions",
            format!("this model returns {} dimensions", m.embedder.dim),
        )
        .with_param("dimensions"));
    }
    req.input.check_count()?;
    let max = sortition_engine::embed::MAX_TOKENS as u64;
    let bound = req.input.token_bound(max);
    let inputs = embed_inputs(req.input);
    // Every input is tokenized and checked (length, ids) before units are reserved: an
    // over-long input is refused by index, never truncated.
    let embedder = m.embedder.clone();
    let ids = tokio::task::spawn_blocking(move || embedder.tokenize(&inputs))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(engine_error)?;
    let reservation = s.reserve(&stack, &m.id, bound)?;
    let embedder = m.embedder.clone();
    let result = tokio::task::spawn_blocking(move || embedder.embed_tokens(&ids)).await;
    let (vectors, tokens) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            s.release(reservation);
            return Err(engine_error(e));
        }
        Err(e) => {
            s.release(reservation);
            return Err(ApiError::internal(e.to_string()));
        }
    };
    let receipt = s.finish(
        reservation,
        Outcome {
            model: m.id.clone(),
            model_digest: m.digest,
            request_hash: sha256(body),
            response_hash: embedding_response_hash(&vectors),
            input_tokens: tokens as u64,
            output_tokens: 0,
            sampling: Default::default(),
            custody: Custody::Gateway,
        },
    )?;
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            Ok(EmbeddingData {
                object: "embedding".into(),
                index: i as u32,
                embedding: EmbeddingVector::encode(v, format.as_deref())?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut resp = Json(EmbeddingResponse {
        object: "list".into(),
        data,
        model: req.model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens as u64,
            total_tokens: tokens as u64,
        },
        sortition: Some(SortitionExt {
            node: s.id,
            receipt: receipt.clone(),
            verified_by_gateway: None,
        }),
    })
    .into_response();
    if let Some(h) = receipt_header(&receipt) {
        resp.headers_mut().insert(RECEIPT_HEADER, h);
    }
    Ok(resp)
}

pub async fn models(State(s): S) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: s
            .model_names()
            .into_iter()
            .map(|id| ModelCard {
                id,
                object: "model".into(),
                created: 0,
                owned_by: format!("{}", s.id),
            })
            .collect(),
    })
}

/// `POST /sortition/v1/audits/{id}/payload`: the holder of an audited request delivers it.
pub async fn audit_payload(
    State(s): S,
    axum::extract::Path(id): axum::extract::Path<u64>,
    body: Bytes,
) -> Response {
    let payload: crate::audit::AuditPayload = match parse_json(&body) {
        Ok(p) => p,
        Err(e) => return error(&s, e),
    };
    match s.audits.deliver(sortition_types::AuditId(id), payload) {
        Ok(()) => axum::http::StatusCode::ACCEPTED.into_response(),
        Err(e) => error(&s, e),
    }
}

/// `GET /sortition/v1/stacks/{stack}/receipts/{sequence}/proof`: the receipt and its inclusion
/// proof under the Merkle root of all receipts this node holds for the stack (the root its
/// claim for the stack commits to, once claimed). Receipts carry hashes only, no content.
pub async fn receipt_proof(
    State(s): S,
    axum::extract::Path((stack, sequence)): axum::extract::Path<(u64, u64)>,
) -> Response {
    let all = match s.store.receipts(sortition_types::StackId(stack)) {
        Ok(r) => r,
        Err(e) => return error(&s, ApiError::internal(format!("receipt store: {e}"))),
    };
    // The receipts a claim holds (in position): the proof is under the root it commits to.
    let receipts = crate::claims::in_position(&all);
    let Some(index) = receipts.iter().position(|r| r.receipt.sequence == sequence) else {
        return error(
            &s,
            ApiError::new(
                ErrorKind::NotFound,
                "receipt_not_found",
                format!("no receipt {sequence} for stack {stack} on this node"),
            ),
        );
    };
    let material = crate::claims::claim_material(receipts);
    match crate::claims::receipt_with_proof(receipts, index as u64) {
        Some((receipt, proof)) => Json(ReceiptProof {
            receipt,
            proof,
            receipts_root: material.receipts_root,
            receipt_count: material.receipt_count,
        })
        .into_response(),
        None => error(&s, ApiError::internal("proof construction failed")),
    }
}

/// Answer of the inclusion-proof route.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReceiptProof {
    pub receipt: sortition_types::SignedReceipt,
    pub proof: sortition_types::MerkleProof,
    pub receipts_root: sortition_types::Hash32,
    pub receipt_count: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "routes_tests.rs"]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "logprobs_tests.rs"]
mod logprobs_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "tools_tests.rs"]
mod tools_tests;
