//! OpenAI request bodies (the subset Sortition serves) and how their fields are read; the
//! responses are in `crate::responses`, embeddings in `crate::embeddings`.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// `stop` is a string or a list of strings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

/// A message's `content`: a string, or a list of typed parts of which only text is supported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContentPart {
    pub r#type: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl MessageContent {
    /// The text of the message; non-text parts are refused.
    pub fn text(&self) -> Result<String, ApiError> {
        match self {
            MessageContent::Text(s) => Ok(s.clone()),
            MessageContent::Parts(parts) => {
                let mut out = String::new();
                for p in parts {
                    match (p.r#type.as_str(), &p.text) {
                        ("text", Some(t)) => out.push_str(t),
                        (other, _) => {
                            return Err(ApiError::invalid(
                                "unsupported_content",
                                format!("content part of type '{other}' is not supported"),
                            ));
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An assistant message's calls (the history a client sends back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<crate::tools::ToolCall>>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and text completions.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct SamplingFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Extension (not in OpenAI): top-k sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Chat: `true` for each token's log-probability; text completions: how many
    /// alternatives (0 to 5) to list with each token's. Read by [`SamplingFields::logprobs_for`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<LogprobsSpec>,
    /// Chat only: alternatives (0 to 20) listed with each token's log-probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Text completions only: the answer's text starts with the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Chat only: `text`, `json_object` or `json_schema`, enforced by constrained decoding
    /// (read by [`SamplingFields::constraint_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<crate::constraint::ResponseFormat>,
    /// Chat only: functions the model may call (read by [`SamplingFields::tools_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<crate::tools::Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<crate::tools::ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Every other field of the request, kept so that none is silently ignored: see
    /// [`SamplingFields::check_supported`].
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `max_tokens` of a chat completion that names none.
pub const DEFAULT_MAX_TOKENS_CHAT: u32 = 256;
/// `max_tokens` of a text completion that names none (OpenAI's default).
pub const DEFAULT_MAX_TOKENS_COMPLETIONS: u32 = 16;

/// `logprobs`: a flag on chat, a count of alternatives on text completions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LogprobsSpec {
    Flag(bool),
    Count(u32),
}

/// Which generation endpoint a request came to (fields differ between the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// Fields that change nothing Sortition computes (bookkeeping for the caller), accepted as
/// OpenAI accepts them.
const HARMLESS_FIELDS: &[&str] = &["store", "metadata", "service_tier"];

/// OpenAI fields Sortition does not serve yet, with what to do instead. A request that sets
/// one to anything but its neutral value is refused with a 400 naming it, never answered as
/// if the field were not there.
const UNSUPPORTED_FIELDS: &[(&str, &str)] = &[
    (
        "functions",
        "the legacy 'functions' field is not served; use 'tools'",
    ),
    (
        "function_call",
        "the legacy 'function_call' field is not served; use 'tool_choice'",
    ),
    ("logit_bias", "logit_bias is not supported"),
    ("suffix", "suffix is not supported"),
    ("best_of", "best_of is not supported; use n=1"),
    ("modalities", "only text output is supported"),
    ("audio", "only text output is supported"),
    ("prediction", "predicted outputs are not supported"),
    (
        "reasoning_effort",
        "reasoning_effort is not supported by these models",
    ),
    ("web_search_options", "web search is not supported"),
];

/// Whether `value` is the neutral setting of the unsupported field `name` (what a client that
/// does not use the feature may still send).
fn neutral(name: &str, value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (name, value) {
        (_, Value::Null) => true,
        ("functions", Value::Array(a)) => a.is_empty(),
        ("function_call", Value::String(s)) => s == "none",
        ("logit_bias", Value::Object(o)) => o.is_empty(),
        ("best_of", v) => v.as_u64() == Some(1),
        ("modalities", Value::Array(a)) => a.iter().all(|m| m == "text"),
        _ => false,
    }
}

/// Refuses (400, naming the `param`) the first of `extra` (fields no typed field read) that
/// is neither bookkeeping nor set to its neutral value.
pub(crate) fn refuse_extra(
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ApiError> {
    for (name, value) in extra {
        if HARMLESS_FIELDS.contains(&name.as_str()) || neutral(name, value) {
            continue;
        }
        let err = match UNSUPPORTED_FIELDS.iter().find(|(f, _)| f == name) {
            Some((_, why)) => ApiError::invalid(
                "unsupported_parameter",
                format!("'{name}' is not supported: {why}"),
            ),
            None => ApiError::invalid(
                "unknown_parameter",
                format!("unrecognized request argument supplied: '{name}'"),
            ),
        };
        return Err(err.with_param(name.clone()));
    }
    Ok(())
}

impl SamplingFields {
    /// Refuses (400, naming the `param`) every field that would change the answer but that
    /// Sortition does not serve, and every field it does not know, as OpenAI refuses an
    /// unrecognized argument. Fields that are bookkeeping only are accepted.
    pub fn check_supported(&self) -> Result<(), ApiError> {
        self.check_n()?;
        refuse_extra(&self.extra)
    }

    /// How many alternatives to list with each generated token's log-probability, or `None`
    /// when the request asks for no log-probabilities, as `endpoint` defines its fields: chat
    /// takes `logprobs: true` with `top_logprobs` (0 to 20), text completions `logprobs` (0 to
    /// 5); `echo` belongs to text completions. Anything else is refused naming the field.
    pub fn logprobs_for(&self, endpoint: Endpoint) -> Result<Option<u8>, ApiError> {
        use crate::logprobs::{MAX_CHAT_TOP_LOGPROBS, MAX_COMPLETION_LOGPROBS};
        let refuse = |param: &str, code: &'static str, msg: String| {
            Err(ApiError::invalid(code, msg).with_param(param.to_string()))
        };
        match endpoint {
            Endpoint::Chat => {
                if self.echo == Some(true) {
                    return refuse(
                        "echo",
                        "unknown_parameter",
                        "'echo' belongs to /v1/completions; chat completions do not echo".into(),
                    );
                }
                let on = match self.logprobs {
                    None | Some(LogprobsSpec::Flag(false)) => false,
                    Some(LogprobsSpec::Flag(true)) => true,
                    Some(LogprobsSpec::Count(_)) => {
                        return refuse(
                            "logprobs",
                            "invalid_type",
                            "'logprobs' must be true or false on chat completions; \
                             use top_logprobs (0 to 20) for alternatives"
                                .into(),
                        );
                    }
                };
                match (on, self.top_logprobs) {
                    (_, Some(n)) if n > MAX_CHAT_TOP_LOGPROBS => refuse(
                        "top_logprobs",
                        "invalid_value",
                        format!(
                            "'top_logprobs' is {n}; it must be from 0 to {MAX_CHAT_TOP_LOGPROBS}"
                        ),
                    ),
                    (false, Some(n)) if n > 0 => refuse(
                        "top_logprobs",
                        "invalid_value",
                        "'top_logprobs' needs 'logprobs': true".into(),
                    ),
                    (false, _) => Ok(None),
                    (true, n) => Ok(Some(n.unwrap_or(0) as u8)),
                }
            }
            Endpoint::Completions => {
                if self.top_logprobs.is_some() {
                    return refuse(
                        "top_logprobs",
                        "unknown_parameter",
                        "'top_logprobs' belongs to chat completions; on /v1/completions \
                         'logprobs' (0 to 5) is the number of alternatives"
                            .into(),
                    );
                }
                match self.logprobs {
                    None => Ok(None),
                    Some(LogprobsSpec::Count(n)) if n <= MAX_COMPLETION_LOGPROBS => {
                        Ok(Some(n as u8))
                    }
                    Some(_) => refuse(
                        "logprobs",
                        "invalid_value",
                        format!(
                            "'logprobs' must be a whole number from 0 to \
                             {MAX_COMPLETION_LOGPROBS} on /v1/completions"
                        ),
                    ),
                }
            }
        }
    }

    /// The tools the answer may call (chat only: on `/v1/completions` the fields are refused
    /// naming them); `None` without tools or with `tool_choice: "none"`. Log-probabilities
    /// and a `response_format` other than text are not served together with tools (400).
    pub fn tools_for(
        &self,
        endpoint: Endpoint,
    ) -> Result<Option<crate::tools::ToolSpec>, ApiError> {
        use crate::constraint::ResponseFormat;
        if endpoint == Endpoint::Completions {
            let set = [
                ("tools", self.tools.as_ref().is_some_and(|t| !t.is_empty())),
                ("tool_choice", self.tool_choice.is_some()),
                ("parallel_tool_calls", self.parallel_tool_calls.is_some()),
            ];
            if let Some((name, _)) = set.iter().find(|(_, on)| *on) {
                return Err(ApiError::invalid(
                    "unknown_parameter",
                    format!("'{name}' belongs to chat completions; /v1/completions has no tools"),
                )
                .with_param(*name));
            }
            return Ok(None);
        }
        let spec = crate::tools::ToolSpec::read(
            self.tools.as_deref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
        )?;
        if spec.is_some() {
            if matches!(self.logprobs, Some(LogprobsSpec::Flag(true))) {
                return Err(ApiError::invalid(
                    "unsupported_parameter",
                    "'logprobs' is not served together with tools; ask without one of them",
                )
                .with_param("logprobs"));
            }
            if !matches!(self.response_format, None | Some(ResponseFormat::Text)) {
                return Err(ApiError::invalid(
                    "unsupported_parameter",
                    "'response_format' other than text is not served together with tools; \
                     a forced tool call (tool_choice \"required\" or a named function) \
                     already gives JSON under the function's schema",
                )
                .with_param("response_format"));
            }
        }
        Ok(spec)
    }

    /// The constraint the answer must satisfy: `response_format` other than `text`, or the
    /// schema of a forced tool call. Chat only: on `/v1/completions` the field is refused
    /// naming it.
    pub fn constraint_for(
        &self,
        endpoint: Endpoint,
    ) -> Result<Option<crate::constraint::ConstraintSpec>, ApiError> {
        use crate::constraint::{ConstraintSpec, ResponseFormat};
        if let Some(t) = self.tools_for(endpoint)? {
            return Ok(t.forced_schema().map(|schema| ConstraintSpec { schema }));
        }
        match (&self.response_format, endpoint) {
            (None | Some(ResponseFormat::Text), _) => Ok(None),
            (Some(f), Endpoint::Chat) => ConstraintSpec::of(f),
            (Some(_), Endpoint::Completions) => Err(ApiError::invalid(
                "unknown_parameter",
                "'response_format' belongs to chat completions; /v1/completions has none",
            )
            .with_param("response_format")),
        }
    }

    /// Whether a text completion's answer starts with its prompt.
    pub fn echo(&self) -> bool {
        self.echo == Some(true)
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
    /// Refuses `n > 1` at a node, which answers one choice per request (one receipt per
    /// answer); gateways split such requests before they reach a node.
    pub fn check_n(&self) -> Result<(), ApiError> {
        match self.n {
            None | Some(1) => Ok(()),
            Some(n) => Err(ApiError::invalid(
                "unsupported_n",
                format!(
                    "n={n}: a node answers one choice per request; gateways serve n > 1 as \
                     one receipted request per choice"
                ),
            )
            .with_param("n")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PromptSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptSpec,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

impl CompletionRequest {
    /// The single prompt; lists of more than one prompt are refused.
    pub fn single_prompt(&self) -> Result<String, ApiError> {
        match &self.prompt {
            PromptSpec::One(s) => Ok(s.clone()),
            PromptSpec::Many(v) if v.len() == 1 => Ok(v[0].clone()),
            PromptSpec::Many(_) => Err(ApiError::invalid(
                "unsupported_prompt",
                "a node answers one prompt per request (a receipt commits to one answer); \
                 gateways serve several, as one receipted request per prompt",
            )
            .with_param("prompt")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::{embeddings::*, responses::*};

    #[test]
    fn parses_what_the_openai_sdk_sends() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
            "stream":true,"stream_options":{"include_usage":true},"stop":"\n","logit_bias":{}}"#;
        let r: ChatCompletionRequest = serde_json::from_str(body).unwrap();
        assert!(r.sampling.is_stream() && r.sampling.include_usage());
        assert_eq!(
            r.messages[1].content.as_ref().unwrap().text().unwrap(),
            "ab"
        );
        assert_eq!(
            r.sampling.stop.clone().unwrap().into_vec(),
            vec!["\n".to_string()]
        );
    }

    #[test]
    fn base64_embeddings_are_little_endian_f32() {
        let EmbeddingVector::Base64(s) =
            EmbeddingVector::encode(vec![1.0], Some("base64")).unwrap()
        else {
            panic!("expected base64")
        };
        assert_eq!(s, "AACAPw==");
        assert!(EmbeddingVector::encode(vec![1.0], Some("int8")).is_err());
    }

    #[test]
    fn error_shape_and_status() {
        let e = ApiError::new(crate::ErrorKind::RateLimited, "rate_limited", "slow down")
            .with_retry_after(3);
        assert_eq!(e.status().as_u16(), 429);
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["message"], "slow down");
    }

    /// Issue 21: fields were answered with a 200 and silently ignored. Each one not served
    /// (the legacy `functions`, `logit_bias`, …) is now refused with a 400 naming it, unless
    /// set to its neutral value; unknown fields are refused as OpenAI refuses them; bookkeeping fields
    /// pass.
    #[test]
    fn fields_that_would_be_ignored_are_refused_by_name() {
        let chat = |extra: serde_json::Value| {
            let mut v =
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            serde_json::from_value::<ChatCompletionRequest>(v).unwrap()
        };
        let refused = |extra: serde_json::Value| {
            let e = chat(extra.clone()).sampling.check_supported().unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{extra}");
            (e.param.clone().unwrap_or_default(), e.code, e.message)
        };
        for (field, value) in [
            ("functions", serde_json::json!([{"name": "f"}])),
            ("function_call", serde_json::json!("auto")),
            ("logit_bias", serde_json::json!({"50256": -100})),
        ] {
            let (param, code, msg) = refused(serde_json::json!({ field: value }));
            assert_eq!(param, field);
            assert_eq!(code, "unsupported_parameter");
            assert!(msg.contains(field), "{msg}");
        }
        let (param, code, _) = refused(serde_json::json!({"temprature": 0.5}));
        assert_eq!((param.as_str(), code), ("temprature", "unknown_parameter"));
        // Neutral values and bookkeeping pass; known fields are read, not kept as extra.
        for ok in [
            serde_json::json!({"tools": [], "tool_choice": "none", "logprobs": false}),
            serde_json::json!({"response_format": {"type": "text"}, "parallel_tool_calls": true}),
            serde_json::json!({"store": true, "metadata": {"a": "b"}, "user": "u", "seed": 3}),
        ] {
            let r = chat(ok.clone());
            r.sampling
                .check_supported()
                .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        let r = chat(serde_json::json!({"temperature": 0.5, "stream": true}));
        assert!(r.sampling.extra.is_empty());
        assert_eq!(r.sampling.temperature, Some(0.5));
        // Completions share the check.
        let c: CompletionRequest =
            serde_json::from_value(serde_json::json!({"model": "m", "prompt": "x", "suffix": "y"}))
                .unwrap();
        assert_eq!(
            c.sampling.check_supported().unwrap_err().param.as_deref(),
            Some("suffix")
        );
        // Embeddings too: a field nothing reads is refused by name; known ones pass.
        let e: EmbeddingRequest = serde_json::from_value(serde_json::json!(
            {"model": "m", "input": "x", "encoding_format": "base64", "user": "u", "truncate": true}))
        .unwrap();
        assert_eq!(
            e.check_supported().unwrap_err().param.as_deref(),
            Some("truncate")
        );
        let e: EmbeddingRequest = serde_json::from_value(serde_json::json!(
            {"model": "m", "input": ["x"], "dimensions": 384, "metadata": {}}))
        .unwrap();
        e.check_supported().unwrap();
    }

    /// Issue 21: log-probabilities are served in each endpoint's own terms; a value out of
    /// range, or a field of the other endpoint, is refused naming it.
    #[test]
    fn logprobs_fields_are_read_per_endpoint() {
        let fields = |v: serde_json::Value| {
            let mut body = serde_json::json!({"model": "m", "prompt": "x"});
            for (k, x) in v.as_object().unwrap() {
                body[k] = x.clone();
            }
            let r: CompletionRequest = serde_json::from_value(body).unwrap();
            r.sampling.check_supported().unwrap();
            r.sampling
        };
        let chat = |v| fields(v).logprobs_for(Endpoint::Chat);
        let text = |v| fields(v).logprobs_for(Endpoint::Completions);
        let param = |r: Result<Option<u8>, ApiError>| r.unwrap_err().param.unwrap_or_default();
        use serde_json::json;
        assert_eq!(chat(json!({})).unwrap(), None);
        assert_eq!(chat(json!({"logprobs": false})).unwrap(), None);
        assert_eq!(chat(json!({"logprobs": true})).unwrap(), Some(0));
        assert_eq!(
            chat(json!({"logprobs": true, "top_logprobs": 20})).unwrap(),
            Some(20)
        );
        assert_eq!(
            param(chat(json!({"logprobs": true, "top_logprobs": 21}))),
            "top_logprobs"
        );
        assert_eq!(param(chat(json!({"top_logprobs": 2}))), "top_logprobs");
        assert_eq!(param(chat(json!({"logprobs": 3}))), "logprobs");
        assert_eq!(param(chat(json!({"echo": true}))), "echo");
        assert_eq!(text(json!({"logprobs": 0})).unwrap(), Some(0));
        assert_eq!(text(json!({"logprobs": 5})).unwrap(), Some(5));
        assert_eq!(param(text(json!({"logprobs": 6}))), "logprobs");
        assert_eq!(param(text(json!({"logprobs": true}))), "logprobs");
        assert_eq!(param(text(json!({"top_logprobs": 1}))), "top_logprobs");
        assert!(fields(json!({"echo": true})).echo());
    }

    /// Issue 21: token-id inputs (one list, or a list of lists) as LangChain sends them, and
    /// up to 2048 inputs per call.
    #[test]
    fn embedding_inputs_take_token_ids_and_up_to_2048() {
        let parse = |input: serde_json::Value| {
            serde_json::from_value::<EmbeddingRequest>(
                serde_json::json!({"model": "m", "input": input}),
            )
            .unwrap()
            .input
        };
        assert_eq!(
            parse(serde_json::json!([1, 2, 3])).into_items(),
            vec![EmbeddingItem::Tokens(vec![1, 2, 3])]
        );
        let lists = parse(serde_json::json!([[1, 2], [3]]));
        assert_eq!(lists.count(), 2);
        assert_eq!(lists.token_bound(512), 3);
        assert_eq!(
            parse(serde_json::json!(["a", "b"])).into_items(),
            vec![
                EmbeddingItem::Text("a".into()),
                EmbeddingItem::Text("b".into())
            ]
        );
        let many = parse(serde_json::json!(vec!["x"; MAX_EMBEDDING_INPUTS]));
        many.check_count().unwrap();
        let too_many = parse(serde_json::json!(vec!["x"; MAX_EMBEDDING_INPUTS + 1]));
        assert_eq!(
            too_many.check_count().unwrap_err().param.as_deref(),
            Some("input")
        );
        assert!(parse(serde_json::json!([])).check_count().is_err());
    }
}
