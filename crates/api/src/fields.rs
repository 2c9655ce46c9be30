//! Why a request body does not parse, in the words of the API: the field at fault (as the
//! error's `param`) and what it may hold, never the name of a Rust type ("untagged enum
//! EmbeddingInput", "expected u64").
//!
//! Serde reports a type error without its place; so a body that fails to parse is checked here
//! field by field against what each known field of the OpenAI requests accepts.

use serde_json::Value;

use crate::error::ApiError;

/// What a field accepts.
#[derive(Clone, Copy)]
enum Shape {
    Str,
    Number,
    Bool,
    /// A whole number from 0 to `u32::MAX`.
    U32,
    /// A whole number from 0 to `u64::MAX`.
    U64,
    /// A string or a list of strings.
    StrOrStrs,
    /// `logprobs`: true or false (chat), a whole number (completions).
    BoolOrU32,
    /// The `input` of embeddings.
    EmbeddingInput,
    /// `response_format`.
    ResponseFormat,
    StreamOptions,
    Messages,
    /// `tools`: a list of `{"type": "function", "function": {"name": …}}`.
    Tools,
    /// `tool_choice`: a string or `{"type": "function", "function": {"name": …}}`.
    ToolChoice,
}

const U32_TEXT: &str = "a whole number from 0 to 4294967295";
const U64_TEXT: &str = "a whole number from 0 to 18446744073709551615";

impl Shape {
    fn describe(self) -> &'static str {
        match self {
            Shape::Str => "a string",
            Shape::Number => "a number",
            Shape::Bool => "true or false",
            Shape::U32 => U32_TEXT,
            Shape::U64 => U64_TEXT,
            Shape::StrOrStrs => "a string or a list of strings",
            Shape::BoolOrU32 => "true or false (chat), or a whole number from 0 to 5 (completions)",
            Shape::EmbeddingInput => {
                "a string, a list of strings, a list of token ids or a list of lists of token ids"
            }
            Shape::StreamOptions => "an object such as {\"include_usage\": true}",
            Shape::ResponseFormat => {
                "{\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \
                 \"json_schema\": {\"name\": \"…\", \"schema\": {…}, \"strict\": true}}"
            }
            Shape::Messages => "a list of message objects",
            Shape::Tools => {
                "a list of tools such as {\"type\": \"function\", \"function\": {\"name\": \"…\", \
                 \"description\": \"…\", \"parameters\": {…}}}"
            }
            Shape::ToolChoice => {
                "\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": \
                 {\"name\": \"…\"}}"
            }
        }
    }

    fn accepts(self, v: &Value) -> bool {
        let u32_ok = |v: &Value| v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX));
        let strs = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
        match self {
            Shape::Str => v.is_string(),
            Shape::Number => v.is_number(),
            Shape::Bool => v.is_boolean(),
            Shape::U32 => u32_ok(v),
            Shape::U64 => v.as_u64().is_some(),
            Shape::StrOrStrs => v.is_string() || strs(v),
            Shape::BoolOrU32 => v.is_boolean() || u32_ok(v),
            Shape::EmbeddingInput => {
                let ids = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(u32_ok));
                let lists = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(ids));
                v.is_string() || strs(v) || ids(v) || lists(v)
            }
            Shape::StreamOptions => v
                .as_object()
                .is_some_and(|o| o.get("include_usage").is_none_or(Value::is_boolean)),
            Shape::Messages => v.is_array(),
            Shape::Tools => v.as_array().is_some_and(|a| {
                a.iter().all(|t| {
                    t.get("type").is_some_and(Value::is_string)
                        && t.get("function").is_some_and(|f| {
                            f.get("name").is_some_and(Value::is_string)
                                && f.get("description")
                                    .is_none_or(|d| d.is_string() || d.is_null())
                                && f.get("strict")
                                    .is_none_or(|d| d.is_boolean() || d.is_null())
                        })
                })
            }),
            Shape::ToolChoice => {
                v.is_string()
                    || (v.get("type").is_some_and(Value::is_string)
                        && v["function"].get("name").is_some_and(Value::is_string))
            }
            Shape::ResponseFormat => match v.get("type").and_then(Value::as_str) {
                Some("text" | "json_object") => true,
                Some("json_schema") => v.get("json_schema").is_some_and(|j| {
                    j.get("name").is_some_and(Value::is_string)
                        && j.get("strict")
                            .is_none_or(|s| s.is_boolean() || s.is_null())
                }),
                _ => false,
            },
        }
    }
}

/// The fields of the chat, completions and embeddings requests, with what each accepts.
const FIELDS: &[(&str, Shape)] = &[
    ("model", Shape::Str),
    ("messages", Shape::Messages),
    ("prompt", Shape::StrOrStrs),
    ("input", Shape::EmbeddingInput),
    ("temperature", Shape::Number),
    ("top_p", Shape::Number),
    ("presence_penalty", Shape::Number),
    ("frequency_penalty", Shape::Number),
    ("top_k", Shape::U32),
    ("max_tokens", Shape::U32),
    ("max_completion_tokens", Shape::U32),
    ("n", Shape::U32),
    ("dimensions", Shape::U32),
    ("seed", Shape::U64),
    ("stop", Shape::StrOrStrs),
    ("stream", Shape::Bool),
    ("stream_options", Shape::StreamOptions),
    ("user", Shape::Str),
    ("encoding_format", Shape::Str),
    ("logprobs", Shape::BoolOrU32),
    ("top_logprobs", Shape::U32),
    ("echo", Shape::Bool),
    ("response_format", Shape::ResponseFormat),
    ("tools", Shape::Tools),
    ("tool_choice", Shape::ToolChoice),
    ("parallel_tool_calls", Shape::Bool),
];

fn bad(param: impl Into<String>, what: &str) -> ApiError {
    let param = param.into();
    ApiError::invalid("invalid_type", format!("'{param}' must be {what}")).with_param(param)
}

/// The first problem with one chat message, named by its place (`messages[1].content`).
fn check_message(i: usize, m: &Value) -> Option<ApiError> {
    let at = |f: &str| format!("messages[{i}].{f}");
    let Some(o) = m.as_object() else {
        return Some(bad(
            format!("messages[{i}]"),
            "an object with a 'role' and a 'content'",
        ));
    };
    match o.get("role") {
        Some(Value::String(_)) => {}
        None => {
            return Some(
                ApiError::invalid(
                    "missing_required_parameter",
                    format!("'{}' is required", at("role")),
                )
                .with_param(at("role")),
            );
        }
        Some(_) => return Some(bad(at("role"), "a string such as \"user\"")),
    }
    if let Some(n) = o.get("name")
        && !n.is_string()
        && !n.is_null()
    {
        return Some(bad(at("name"), "a string"));
    }
    if let Some(id) = o.get("tool_call_id")
        && !id.is_string()
        && !id.is_null()
    {
        return Some(bad(at("tool_call_id"), "a string"));
    }
    let call_ok = |c: &Value| {
        c.get("id").is_some_and(Value::is_string)
            && c.get("function").is_some_and(|f| {
                f.get("name").is_some_and(Value::is_string)
                    && f.get("arguments").is_some_and(Value::is_string)
            })
    };
    if let Some(calls) = o.get("tool_calls")
        && !calls.is_null()
        && !calls.as_array().is_some_and(|a| a.iter().all(call_ok))
    {
        return Some(bad(
            at("tool_calls"),
            "a list of calls such as {\"id\": \"…\", \"type\": \"function\", \"function\": \
             {\"name\": \"…\", \"arguments\": \"{…}\"}}",
        ));
    }
    let content_text =
        "a string or a list of content parts such as {\"type\": \"text\", \"text\": \"…\"}";
    match o.get("content") {
        None | Some(Value::Null) | Some(Value::String(_)) => None,
        Some(Value::Array(parts)) => parts.iter().enumerate().find_map(|(j, p)| {
            let ok = p.get("type").is_some_and(Value::is_string)
                && p.get("text").is_none_or(|t| t.is_string() || t.is_null());
            (!ok).then(|| {
                bad(
                    format!("messages[{i}].content[{j}]"),
                    "a content part such as {\"type\": \"text\", \"text\": \"…\"}",
                )
            })
        }),
        Some(_) => Some(bad(at("content"), content_text)),
    }
}

/// Why `body` (valid JSON that did not parse as the request) is refused: the field at fault and
/// what it accepts, when a known field is at fault; `None` otherwise.
pub fn diagnose(body: &Value) -> Option<ApiError> {
    let Some(o) = body.as_object() else {
        return Some(ApiError::invalid(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    };
    for (name, shape) in FIELDS {
        let Some(v) = o.get(*name) else { continue };
        let required = matches!(*name, "model" | "messages" | "prompt" | "input");
        if v.is_null() && !required {
            continue;
        }
        if !shape.accepts(v) {
            return Some(bad(*name, shape.describe()));
        }
        if let (Shape::Messages, Some(list)) = (shape, v.as_array())
            && let Some(e) = list
                .iter()
                .enumerate()
                .find_map(|(i, m)| check_message(i, m))
        {
            return Some(e);
        }
    }
    None
}

/// A serde message without Rust's type names, for what [`diagnose`] does not place: `missing
/// field `model`` becomes "'model' is required".
pub fn describe_serde(message: &str) -> ApiError {
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(field) = rest.split('`').next()
    {
        return ApiError::invalid(
            "missing_required_parameter",
            format!("'{field}' is required"),
        )
        .with_param(field);
    }
    // Anything else: keep serde's words up to its type vocabulary.
    let words = message
        .split(", expected")
        .next()
        .unwrap_or(message)
        .replace(
            "data did not match any variant of untagged enum",
            "no accepted form matches",
        );
    let words: String = words
        .split_whitespace()
        .filter(|w| !is_rust_name(w))
        .collect::<Vec<_>>()
        .join(" ");
    ApiError::invalid("invalid_request", format!("invalid request body: {words}"))
}

fn is_rust_name(w: &str) -> bool {
    let w = w.trim_matches(|c: char| !c.is_alphanumeric());
    matches!(
        w,
        "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64" | "f32" | "f64" | "usize"
    ) || (w.len() > 1
        && w.chars().next().is_some_and(char::is_uppercase)
        && w.chars().skip(1).any(char::is_uppercase)
        && w.chars().all(char::is_alphanumeric))
}

/// Parses a JSON body into `T`, with OpenAI-shaped errors for malformed input: JSON that does
/// not parse is named as such; a field of the wrong type is named (as the error's `param`)
/// with what it accepts, never with the Rust type behind it (see [`diagnose`]).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let value: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(syntax) => {
                return ApiError::invalid("invalid_json", format!("invalid JSON body: {syntax}"));
            }
        };
        diagnose(&value).unwrap_or_else(|| describe_serde(&e.to_string()))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_json};

    /// Words of Rust's type vocabulary that leaked into messages before (issue 21).
    const LEAKS: &[&str] = &[
        "untagged",
        "enum",
        "struct",
        "u64",
        "u32",
        "f32",
        "f64",
        "i64",
        "Vec",
        "Option",
        "EmbeddingInput",
        "PromptSpec",
        "StopSpec",
        "MessageContent",
    ];

    fn refused<T: serde::de::DeserializeOwned + std::fmt::Debug>(body: &str) -> (String, String) {
        let e = parse_json::<T>(body.as_bytes()).unwrap_err();
        assert_eq!(e.status().as_u16(), 400, "{body}");
        for leak in LEAKS {
            assert!(
                !e.message.contains(leak),
                "{body}: '{}' leaks {leak}",
                e.message
            );
        }
        (e.param.clone().unwrap_or_default(), e.message)
    }

    /// Bad bodies of every route, each refused with the field at fault as `param` and a message
    /// that names it and what it accepts. Before: "data did not match any variant of untagged
    /// enum EmbeddingInput", "invalid type: string \"x\", expected u64", "untagged enum
    /// PromptSpec", and no `param`.
    #[test]
    fn bad_fields_are_named_with_what_they_accept() {
        let m = r#""model":"m","messages":[{"role":"user","content":"hi"}]"#;
        let chat: &[(String, &str, &str)] = &[
            (format!(r#"{{{m},"seed":"x"}}"#), "seed", "whole number"),
            (format!(r#"{{{m},"seed":-1}}"#), "seed", "whole number"),
            (format!(r#"{{{m},"max_tokens":1.5}}"#), "max_tokens", "whole number"),
            (format!(r#"{{{m},"max_tokens":-3}}"#), "max_tokens", "whole number"),
            (format!(r#"{{{m},"n":"two"}}"#), "n", "whole number"),
            (format!(r#"{{{m},"temperature":"hot"}}"#), "temperature", "a number"),
            (format!(r#"{{{m},"top_p":[1]}}"#), "top_p", "a number"),
            (format!(r#"{{{m},"stop":5}}"#), "stop", "a string or a list of strings"),
            (format!(r#"{{{m},"stop":["a",1]}}"#), "stop", "list of strings"),
            (format!(r#"{{{m},"stream":"yes"}}"#), "stream", "true or false"),
            (
                format!(r#"{{{m},"stream_options":{{"include_usage":"y"}}}}"#),
                "stream_options",
                "include_usage",
            ),
            (r#"{"model":5,"messages":[]}"#.into(), "model", "a string"),
            (r#"{"messages":[]}"#.into(), "model", "required"),
            (r#"{"model":"m"}"#.into(), "messages", "required"),
            (r#"{"model":"m","messages":"hi"}"#.into(), "messages", "list of message"),
            (r#"{"model":"m","messages":["hi"]}"#.into(), "messages[0]", "an object"),
            (
                r#"{"model":"m","messages":[{"content":"hi"}]}"#.into(),
                "messages[0].role",
                "required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":5}]}"#
                    .into(),
                "messages[1].content",
                "a string or a list of content parts",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"text":"a"}]}]}"#.into(),
                "messages[0].content[0]",
                "content part",
            ),
        ];
        for (body, param, says) in chat {
            let (p, msg) = refused::<ChatCompletionRequest>(body);
            assert_eq!(&p, param, "{body}: {msg}");
            assert!(msg.contains(param) && msg.contains(says), "{body}: {msg}");
        }
        for (body, param, says) in [
            (
                r#"{"model":"m","prompt":5}"#,
                "prompt",
                "a string or a list of strings",
            ),
            (
                r#"{"model":"m","prompt":[{"a":1}]}"#,
                "prompt",
                "list of strings",
            ),
            (r#"{"model":"m"}"#, "prompt", "required"),
        ] {
            let (p, msg) = refused::<CompletionRequest>(body);
            assert_eq!(p, param, "{body}: {msg}");
            assert!(msg.contains(param) && msg.contains(says), "{body}: {msg}");
        }
        for (body, param, says) in [
            (
                r#"{"model":"m","input":{"a":1}}"#,
                "input",
                "a string, a list of strings, a list of token ids",
            ),
            (
                r#"{"model":"m","input":[1,"a"]}"#,
                "input",
                "list of lists of token ids",
            ),
            (r#"{"model":"m","input":[[1],[-2]]}"#, "input", "token ids"),
            (
                r#"{"model":"m","input":[true]}"#,
                "input",
                "list of strings",
            ),
            (
                r#"{"model":"m","input":"a","dimensions":"big"}"#,
                "dimensions",
                "whole number",
            ),
            (
                r#"{"model":"m","input":"a","encoding_format":1}"#,
                "encoding_format",
                "a string",
            ),
            (r#"{"model":"m"}"#, "input", "required"),
        ] {
            let (p, msg) = refused::<EmbeddingRequest>(body);
            assert_eq!(p, param, "{body}: {msg}");
            assert!(msg.contains(param) && msg.contains(says), "{body}: {msg}");
        }
        // Not JSON, or not an object: said so.
        let e = parse_json::<ChatCompletionRequest>(b"{not json").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse_json::<ChatCompletionRequest>(b"[1]").unwrap_err();
        assert!(e.message.contains("JSON object"), "{}", e.message);
        // Good bodies still parse.
        parse_json::<ChatCompletionRequest>(format!("{{{m},\"seed\":3,\"stop\":null}}").as_bytes())
            .unwrap();
    }

    #[test]
    fn serde_leftovers_lose_their_rust_names() {
        let e = super::describe_serde(
            "data did not match any variant of untagged enum PromptSpec at line 1 column 9",
        );
        assert!(
            !e.message.contains("PromptSpec") && !e.message.contains("untagged"),
            "{}",
            e.message
        );
        let e =
            super::describe_serde("invalid type: string \"x\", expected u64 at line 1 column 3");
        assert!(!e.message.contains("u64"), "{}", e.message);
    }
}
