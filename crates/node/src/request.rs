//! Reading a request into what the engine runs and the receipt commits to: sampling
//! parameters, the [`Extras`] an answer carries, the conversation as the model reads it, and
//! the model it names. Executors (plain and sealed routes) and auditors read requests here
//! alike, so an audit re-executes exactly what was served.

use sortition_api::tools;
use sortition_api::*;
use sortition_engine::{Prompt, SamplingParams};
use sortition_types::{ModelId, TokenLogprobCommit};

use crate::error::NodeError;
use crate::logprobs::Renderer;
use crate::service::{ChatModel, EmbedModel, NodeState};

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
    p.validate().map_err(NodeError::from)?;
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
    pub(crate) fn renderer(&self, chat: &ChatModel) -> Option<Renderer> {
        self.logprobs.map(|_| {
            let offset = self.echo.as_deref().map_or(0, |e| e.chars().count() as u32);
            Renderer::new(chat.engine.tokenizer().clone(), offset)
        })
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
    Ok(s.engine(model)?)
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
    Ok(s.embedder(model)?)
}

/// A sampling seed drawn from the operating system.
fn fresh_seed() -> Result<u64, ApiError> {
    getrandom::u64().map_err(|e| ApiError::internal(format!("no randomness for a seed: {e}")))
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
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
