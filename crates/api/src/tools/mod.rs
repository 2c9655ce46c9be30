//! Tool calling as OpenAI defines it: `tools`, `tool_choice`, `parallel_tool_calls`, tool
//! calls in assistant messages and `role: "tool"` results in the history.
//!
//! How a model is asked and answered, the same on every node and auditor:
//! - The tools are listed in a system message ([`ToolSpec::system_text`]): each function's
//!   JSON definition, and the format of a call, `<tool_call>{"name": …, "arguments": {…}}
//!   </tool_call>` (the Hermes convention that small instruct models are trained on).
//! - `tool_choice: "required"` or a named function **forces** a call: the generation is
//!   constrained (by the same constraint library as structured outputs) to the JSON object
//!   `{"name": <one of the tools>, "arguments": <that function's parameters schema>}`, so the
//!   arguments always satisfy the schema (objects that list `properties` get no others unless
//!   the schema says `additionalProperties`). The schema is the request's constraint, named by
//!   digest in the receipt's `response_hash`.
//! - `tool_choice: "auto"` leaves the model free: `<tool_call>` blocks in its text (each one
//!   call, or a JSON list of calls as SmolLM2 writes them) are read as calls (a block that is not a call to a listed function, or whose arguments break the
//!   schema of a `strict` function, leaves the whole text as the answer's content).
//! - `tool_choice: "none"` (or no tools) renders no tools and reads no calls.
//!
//! What a receipt commits to ([`committed_text`]): the content, then the calls (names and
//! argument strings, in order); the finish reason is `tool_calls` when there are calls. The
//! calls' `id`s are labels derived from the response id, like the response id itself.

use serde_json::{Value, json};

use crate::error::ApiError;

mod wire;
pub use wire::*;

/// How the model may use the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The model decides; calls are read from its text.
    Auto,
    /// A call to one of the tools is forced.
    Required,
    /// A call to this function is forced.
    Named(String),
}

/// The tools of a request that uses them (`tool_choice` other than `none`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub tools: Vec<Tool>,
    pub mode: Mode,
    /// Whether an `auto` answer may carry several calls (`parallel_tool_calls`, default true).
    pub parallel: bool,
}

/// A function's name as OpenAI allows it: 1 to 64 of `a-z A-Z 0-9 _ -`.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn refuse(param: &str, code: &'static str, msg: String) -> ApiError {
    ApiError::invalid(code, msg).with_param(param.to_string())
}

impl ToolSpec {
    /// The tools a chat request uses: `None` without tools or with `tool_choice: "none"`.
    /// Refused (400, naming the field): a tool that is not a function, a name OpenAI would
    /// not accept or given twice, parameters that are not a schema object, a `tool_choice`
    /// without tools or naming an unknown function.
    pub fn read(
        tools: Option<&[Tool]>,
        choice: Option<&ToolChoice>,
        parallel: Option<bool>,
    ) -> Result<Option<ToolSpec>, ApiError> {
        let tools = tools.unwrap_or_default();
        for (i, t) in tools.iter().enumerate() {
            if t.r#type != "function" {
                return Err(refuse(
                    "tools",
                    "invalid_value",
                    format!(
                        "'tools[{i}].type' is '{}'; only \"function\" is supported",
                        t.r#type
                    ),
                ));
            }
            let name = &t.function.name;
            if !valid_name(name) {
                return Err(refuse(
                    "tools",
                    "invalid_value",
                    format!(
                        "'tools[{i}].function.name' must be 1 to 64 letters, digits, '_' or '-'"
                    ),
                ));
            }
            if tools[..i].iter().any(|o| &o.function.name == name) {
                return Err(refuse(
                    "tools",
                    "invalid_value",
                    format!("function '{name}' is listed twice in 'tools'"),
                ));
            }
            if let Some(p) = &t.function.parameters
                && !p.is_object()
            {
                return Err(refuse(
                    "tools",
                    "invalid_value",
                    format!("'tools[{i}].function.parameters' must be a JSON schema object"),
                ));
            }
        }
        let mode = match choice {
            None => Mode::Auto,
            Some(ToolChoice::Mode(m)) => match m.as_str() {
                "none" => return Ok(None),
                "auto" => Mode::Auto,
                "required" => Mode::Required,
                other => {
                    return Err(refuse(
                        "tool_choice",
                        "invalid_value",
                        format!(
                            "'tool_choice' is '{other}'; it must be \"none\", \"auto\", \
                             \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                        ),
                    ));
                }
            },
            Some(ToolChoice::Named(n)) => {
                if n.r#type != "function" {
                    return Err(refuse(
                        "tool_choice",
                        "invalid_value",
                        format!(
                            "'tool_choice.type' is '{}'; it must be \"function\"",
                            n.r#type
                        ),
                    ));
                }
                if !tools.iter().any(|t| t.function.name == n.function.name) {
                    return Err(refuse(
                        "tool_choice",
                        "invalid_value",
                        format!(
                            "'tool_choice' names function '{}', which is not in 'tools'",
                            n.function.name
                        ),
                    ));
                }
                Mode::Named(n.function.name.clone())
            }
        };
        if tools.is_empty() {
            return match choice {
                None => Ok(None),
                Some(_) => Err(refuse(
                    "tool_choice",
                    "invalid_value",
                    "'tool_choice' is only allowed when 'tools' are given".into(),
                )),
            };
        }
        Ok(Some(ToolSpec {
            tools: tools.to_vec(),
            mode,
            parallel: parallel.unwrap_or(true),
        }))
    }

    /// The tools this answer may call: all of them, or the one a named choice forces.
    fn callable(&self) -> impl Iterator<Item = &FunctionDef> {
        self.tools
            .iter()
            .map(|t| &t.function)
            .filter(|f| match &self.mode {
                Mode::Named(n) => &f.name == n,
                _ => true,
            })
    }

    /// The JSON schema a forced call is generated under (`None` for `auto`): an object with
    /// the function's `name` (a constant) and its `arguments`.
    pub fn forced_schema(&self) -> Option<Value> {
        if self.mode == Mode::Auto {
            return None;
        }
        let one = |f: &FunctionDef| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": f.name},
                    "arguments": closed(parameters_schema(f)),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        };
        let alternatives: Vec<Value> = self.callable().map(one).collect();
        Some(match <[Value; 1]>::try_from(alternatives) {
            Ok([only]) => only,
            Err(all) => json!({"anyOf": all}),
        })
    }

    /// The system text that lists the tools and how to call them.
    pub fn system_text(&self) -> String {
        let mut s = String::from(
            "You may call functions to answer. The functions you can call, as JSON:\n<tools>\n",
        );
        for f in self.callable() {
            let def = json!({
                "name": f.name,
                "description": f.description.clone().unwrap_or_default(),
                "parameters": parameters_schema(f),
            });
            s.push_str(&def.to_string());
            s.push('\n');
        }
        s.push_str(
            "</tools>\nTo call a function, answer with <tool_call>{\"name\": <function name>, \
             \"arguments\": <arguments as a JSON object>}</tool_call>.",
        );
        s
    }

    /// What a generation delivers: `raw` (the model's text) read into content and calls.
    /// `accepts(schema, arguments)` says whether arguments satisfy a `strict` function's
    /// schema (the constraint library decides, for `auto` calls).
    pub fn deliver(
        &self,
        raw: &str,
        finish: &str,
        accepts: &dyn Fn(&Value, &str) -> bool,
    ) -> Delivery {
        let as_text = || Delivery {
            content: Some(raw.to_string()),
            calls: Vec::new(),
            finish: finish.to_string(),
        };
        let calls = match self.mode {
            Mode::Auto => self.read_tagged(raw, accepts),
            Mode::Required | Mode::Named(_) => {
                self.read_call(raw).map(|c| (String::new(), vec![c]))
            }
        };
        match calls {
            Some((content, calls)) if !calls.is_empty() => Delivery {
                content: (!content.trim().is_empty()).then(|| content.trim().to_string()),
                calls,
                finish: "tool_calls".into(),
            },
            _ => as_text(),
        }
    }

    /// One call written as `{"name": …, "arguments": {…}}` (arguments may also be a string
    /// holding the object), to a function this answer may call.
    fn read_call(&self, text: &str) -> Option<CallOut> {
        self.call_of(&serde_json::from_str(text.trim()).ok()?)
    }

    /// [`ToolSpec::read_call`] of a parsed value.
    fn call_of(&self, v: &Value) -> Option<CallOut> {
        let o = v.as_object()?;
        let name = o.get("name")?.as_str()?;
        let args = match o.get("arguments") {
            None => Value::Object(Default::default()),
            Some(Value::String(s)) => serde_json::from_str(s).ok()?,
            Some(a) => a.clone(),
        };
        let f = self.callable().find(|f| f.name == name)?;
        args.is_object().then(|| CallOut {
            name: name.to_string(),
            arguments: schema_ordered(&args, &parameters_schema(f)).to_string(),
        })
    }

    /// Calls written as `<tool_call>…</tool_call>` blocks (the closing tag may be cut by the
    /// end of the text), with the text around them as content; `None` when any block is not a
    /// valid call.
    fn read_tagged(
        &self,
        raw: &str,
        accepts: &dyn Fn(&Value, &str) -> bool,
    ) -> Option<(String, Vec<CallOut>)> {
        const OPEN: &str = "<tool_call>";
        const CLOSE: &str = "</tool_call>";
        let mut content = String::new();
        let mut calls = Vec::new();
        let mut rest = raw;
        while let Some(at) = rest.find(OPEN) {
            content.push_str(&rest[..at]);
            let after = &rest[at + OPEN.len()..];
            let (body, next) = match after.find(CLOSE) {
                Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
                None => (after, ""),
            };
            // One call, or (SmolLM2's own format) a list of calls.
            let v: Value = serde_json::from_str(body.trim()).ok()?;
            let block = match &v {
                Value::Array(list) if !list.is_empty() => list.iter().collect(),
                _ => vec![&v],
            };
            for one in block {
                let call = self.call_of(one)?;
                let strict_ok = self
                    .callable()
                    .find(|f| f.name == call.name)
                    .is_none_or(|f| {
                        f.strict != Some(true) || accepts(&parameters_schema(f), &call.arguments)
                    });
                if !strict_ok {
                    return None;
                }
                calls.push(call);
            }
            rest = next;
        }
        content.push_str(rest);
        if !self.parallel {
            calls.truncate(1);
        }
        Some((content, calls))
    }
}

/// `v` with every object's keys in the order its `schema` lists them under `properties`
/// (others after, in their own order), through `properties` and `items`: the order a constrained generation writes them in, which is
/// the order the constraint library checks. (`serde_json` keeps insertion order here: the
/// workspace enables `preserve_order`.)
fn schema_ordered(v: &Value, schema: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let mut out = serde_json::Map::new();
            for (k, sub) in props.into_iter().flatten() {
                if let Some(x) = o.get(k) {
                    out.insert(k.clone(), schema_ordered(x, sub));
                }
            }
            for (k, x) in o {
                if !out.contains_key(k) {
                    out.insert(k.clone(), x.clone());
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => {
            let item = schema.get("items").cloned().unwrap_or(Value::Null);
            Value::Array(a.iter().map(|x| schema_ordered(x, &item)).collect())
        }
        other => other.clone(),
    }
}

/// `v` as compact JSON with sorted keys, whatever `serde_json`'s features.
fn canonical(v: &Value) -> String {
    let mut s = String::new();
    crate::constraint::write_canonical(v, &mut s);
    s
}

/// `schema` with `additionalProperties: false` on every object schema that lists
/// `properties` and says nothing of others: a forced call writes the parameters the function
/// declares, not invented ones (every document this allows is valid under `schema`).
fn closed(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        if o.contains_key("properties") && !o.contains_key("additionalProperties") {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
        for key in ["properties", "$defs", "definitions"] {
            if let Some(Value::Object(props)) = o.get_mut(key) {
                for sub in props.values_mut() {
                    *sub = closed(std::mem::take(sub));
                }
            }
        }
        for key in ["items", "anyOf", "oneOf", "allOf"] {
            match o.get_mut(key) {
                Some(Value::Array(list)) => {
                    for sub in list.iter_mut() {
                        *sub = closed(std::mem::take(sub));
                    }
                }
                Some(sub @ Value::Object(_)) => *sub = closed(std::mem::take(sub)),
                _ => {}
            }
        }
    }
    schema
}

/// A function's parameters schema; no parameters is the empty object.
fn parameters_schema(f: &FunctionDef) -> Value {
    f.parameters.clone().unwrap_or_else(
        || json!({"type": "object", "properties": {}, "additionalProperties": false}),
    )
}

/// A call read from a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOut {
    pub name: String,
    /// The arguments object as compact JSON.
    pub arguments: String,
}

/// What an answer delivers once its calls are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub content: Option<String>,
    pub calls: Vec<CallOut>,
    pub finish: String,
}

impl Delivery {
    /// The text a receipt's `response_hash` commits to ([`committed_text`]).
    pub fn committed_text(&self) -> String {
        committed_text(self.content.as_deref().unwrap_or(""), &self.calls)
    }

    /// The calls as OpenAI writes them, with ids derived from the response id.
    pub fn tool_calls(&self, response_id: &str) -> Option<Vec<ToolCall>> {
        (!self.calls.is_empty()).then(|| {
            self.calls
                .iter()
                .enumerate()
                .map(|(i, c)| ToolCall {
                    id: call_id(response_id, i),
                    r#type: "function".into(),
                    function: FunctionCall {
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    },
                })
                .collect()
        })
    }
}

/// The id of call `index` of the answer `response_id`: unique per answer, as the response id.
pub fn call_id(response_id: &str, index: usize) -> String {
    let h = sortition_types::sha256(format!("{response_id}/{index}").as_bytes());
    let hex: String = h.0[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("call_{hex}")
}

/// The text a receipt commits to for an answer with `content` and `calls`: the content alone
/// when there are no calls; otherwise the content followed by the calls (name and arguments,
/// in order) as a JSON list between `<tool_calls>` tags.
pub fn committed_text(content: &str, calls: &[CallOut]) -> String {
    if calls.is_empty() {
        return content.to_string();
    }
    let list: Vec<Value> = calls.iter().map(|c| json!([c.name, c.arguments])).collect();
    format!("{content}<tool_calls>{}</tool_calls>", Value::Array(list))
}

/// Accumulates the calls of an answer or of a stream's `delta.tool_calls` (by index: the
/// name once, the arguments in pieces), for whoever hashes a delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallsSeen {
    calls: Vec<CallOut>,
}

impl CallsSeen {
    /// Adds the `tool_calls` list of a message or a delta; `false` when it is malformed.
    pub fn absorb(&mut self, list: &Value) -> bool {
        let Some(list) = list.as_array() else {
            return list.is_null();
        };
        for (pos, c) in list.iter().enumerate() {
            let index = c
                .get("index")
                .and_then(Value::as_u64)
                .map_or(pos, |i| i as usize);
            if index > self.calls.len() {
                return false;
            }
            if index == self.calls.len() {
                self.calls.push(CallOut {
                    name: String::new(),
                    arguments: String::new(),
                });
            }
            let f = &c["function"];
            let slot = &mut self.calls[index];
            if let Some(n) = f["name"].as_str() {
                slot.name.push_str(n);
            }
            if let Some(a) = f["arguments"].as_str() {
                slot.arguments.push_str(a);
            }
        }
        true
    }

    pub fn calls(&self) -> &[CallOut] {
        &self.calls
    }
}

/// A message of the history as the model reads it: assistant calls written as
/// `<tool_call>` blocks after the content, tool results as `<tool_response>` blocks in a user
/// turn (`role`, text).
pub fn history_turn(role: &str, text: &str, calls: Option<&[ToolCall]>) -> (String, String) {
    match role {
        "tool" => (
            "user".into(),
            format!("<tool_response>\n{text}\n</tool_response>"),
        ),
        _ => {
            let mut t = text.to_string();
            for c in calls.unwrap_or_default() {
                let args: Value = serde_json::from_str(&c.function.arguments)
                    .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
                if !t.is_empty() {
                    t.push('\n');
                }
                t.push_str(&format!(
                    "<tool_call>{{\"name\": {}, \"arguments\": {}}}</tool_call>",
                    Value::String(c.function.name.clone()),
                    canonical(&args)
                ));
            }
            (role.to_string(), t)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn weather() -> Vec<Tool> {
        serde_json::from_value(json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}, "strict": true}},
            {"type": "function", "function": {"name": "now"}}
        ]))
        .unwrap()
    }

    fn choice(v: Value) -> ToolChoice {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn choices_read_and_refused_naming_the_field() {
        let t = weather();
        assert_eq!(ToolSpec::read(None, None, None).unwrap(), None);
        assert_eq!(
            ToolSpec::read(Some(&t), Some(&choice(json!("none"))), None).unwrap(),
            None
        );
        let auto = ToolSpec::read(Some(&t), None, None).unwrap().unwrap();
        assert_eq!((auto.mode, auto.parallel), (Mode::Auto, true));
        let named = choice(json!({"type": "function", "function": {"name": "now"}}));
        let n = ToolSpec::read(Some(&t), Some(&named), Some(false))
            .unwrap()
            .unwrap();
        assert_eq!(n.mode, Mode::Named("now".into()));
        let bad = [
            (
                Some(t.as_slice()),
                choice(json!("sometimes")),
                "tool_choice",
            ),
            (
                Some(t.as_slice()),
                choice(json!({"type": "function", "function": {"name": "nope"}})),
                "tool_choice",
            ),
            (None, choice(json!("required")), "tool_choice"),
        ];
        for (tools, c, param) in bad {
            let e = ToolSpec::read(tools, Some(&c), None).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{}", e.message);
            assert!(!e.message.contains("enum"), "{}", e.message);
        }
        let mut twice = weather();
        twice[1].function.name = "get_weather".into();
        assert!(ToolSpec::read(Some(&twice), None, None).is_err());
        let mut spaced = weather();
        spaced[0].function.name = "get weather".into();
        assert!(ToolSpec::read(Some(&spaced), None, None).is_err());
    }

    #[test]
    fn forced_calls_are_read_from_the_constrained_json() {
        let t = weather();
        let named = choice(json!({"type": "function", "function": {"name": "get_weather"}}));
        let spec = ToolSpec::read(Some(&t), Some(&named), None)
            .unwrap()
            .unwrap();
        let schema = spec.forced_schema().unwrap();
        assert_eq!(schema["properties"]["name"]["const"], "get_weather");
        let args = &schema["properties"]["arguments"];
        assert_eq!(args["additionalProperties"], false);
        let open = json!({"type": "object", "properties": {"a": {"type": "object",
            "properties": {"b": {"type": "string"}}}}, "additionalProperties": true});
        let c = closed(open);
        assert_eq!(c["additionalProperties"], true);
        assert_eq!(c["properties"]["a"]["additionalProperties"], false);
        let required = ToolSpec::read(Some(&t), Some(&choice(json!("required"))), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            required.forced_schema().unwrap()["anyOf"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let yes = |_: &Value, _: &str| true;
        let d = spec.deliver(
            r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#,
            "stop",
            &yes,
        );
        assert_eq!(d.finish, "tool_calls");
        assert_eq!(d.content, None);
        assert_eq!(d.calls[0].arguments, r#"{"city":"Paris"}"#);
        let calls = d.tool_calls("chatcmpl-1").unwrap();
        assert_eq!(calls[0].function.name, "get_weather");
        assert_ne!(calls[0].id, call_id("chatcmpl-2", 0));
        // Cut by max_tokens: delivered as the text it is.
        let cut = spec.deliver(r#"{"name":"get_weather","argu"#, "length", &yes);
        assert_eq!((cut.calls.len(), cut.finish.as_str()), (0, "length"));
        assert_eq!(cut.committed_text(), r#"{"name":"get_weather","argu"#);
    }

    #[test]
    fn auto_calls_are_read_from_tags_and_strict_schemas_are_checked() {
        let t = weather();
        let spec = ToolSpec::read(Some(&t), None, None).unwrap().unwrap();
        let yes = |_: &Value, _: &str| true;
        let no = |_: &Value, _: &str| false;
        let raw = "Let me look.\n<tool_call>{\"name\": \"get_weather\", \"arguments\": \
                   {\"city\": \"Oslo\"}}</tool_call>\n<tool_call>{\"name\": \"now\"}</tool_call>";
        let d = spec.deliver(raw, "stop", &yes);
        assert_eq!(d.content.as_deref(), Some("Let me look."));
        assert_eq!(d.calls.len(), 2);
        assert_eq!(d.calls[1].arguments, "{}");
        // A strict function's arguments must satisfy its schema.
        assert_eq!(spec.deliver(raw, "stop", &no).calls.len(), 0);
        // A list of calls in one block (SmolLM2's format) reads the same.
        let listed = "<tool_call>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}, \
                      {\"name\": \"now\", \"arguments\": {}}]</tool_call>";
        let l = spec.deliver(listed, "stop", &yes);
        assert_eq!((l.calls, l.content), (d.calls.clone(), None));
        // Not parallel: the first call only.
        let one = ToolSpec {
            parallel: false,
            ..spec.clone()
        };
        assert_eq!(one.deliver(raw, "stop", &yes).calls.len(), 1);
        // An unknown function or broken JSON: the text is the answer.
        for text in [
            "<tool_call>{\"name\": \"rm\"}</tool_call>",
            "<tool_call>{oops",
            "plain",
        ] {
            let d = spec.deliver(text, "stop", &yes);
            assert_eq!((d.calls.len(), d.content.as_deref()), (0, Some(text)));
            assert_eq!(d.committed_text(), text);
        }
    }

    #[test]
    fn streamed_call_pieces_add_up_to_the_committed_calls() {
        let mut seen = CallsSeen::default();
        assert!(
            seen.absorb(&json!([{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]))
        );
        assert!(seen.absorb(&json!([{"index": 0, "function": {"arguments": "{\"city\":"}}])));
        assert!(seen.absorb(&json!([{"index": 0, "function": {"arguments": "\"Oslo\"}"}}])));
        assert!(!seen.absorb(&json!([{"index": 5, "function": {}}])));
        let want = vec![CallOut {
            name: "get_weather".into(),
            arguments: "{\"city\":\"Oslo\"}".into(),
        }];
        assert_eq!(seen.calls(), want.as_slice());
        assert_eq!(
            committed_text("", &want),
            r#"<tool_calls>[["get_weather","{\"city\":\"Oslo\"}"]]</tool_calls>"#
        );
    }

    #[test]
    fn history_turns_render_calls_and_results() {
        let calls = vec![ToolCall {
            id: "call_1".into(),
            r#type: "function".into(),
            function: FunctionCall {
                name: "now".into(),
                arguments: "{}".into(),
            },
        }];
        let (r, t) = history_turn("assistant", "", Some(&calls));
        assert_eq!(
            (r.as_str(), t.as_str()),
            (
                "assistant",
                "<tool_call>{\"name\": \"now\", \"arguments\": {}}</tool_call>"
            )
        );
        let (r, t) = history_turn("tool", "12:00", None);
        assert_eq!(r, "user");
        assert!(t.contains("12:00"));
    }
}
