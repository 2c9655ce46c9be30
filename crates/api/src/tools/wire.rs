//! The tool-calling fields as OpenAI writes them: `tools`, `tool_choice`, an assistant's
//! `tool_calls` and their stream deltas.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One tool of `tools`: only functions exist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tool {
    pub r#type: String,
    pub function: FunctionDef,
}

/// A function the model may call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments (an object); none means no parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// With `auto`, calls whose arguments break the schema are not delivered as calls; forced
    /// calls always satisfy it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or `{"type": "function", "function":
/// {"name": …}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named(NamedChoice),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamedChoice {
    pub r#type: String,
    pub function: NamedFunction,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamedFunction {
    pub name: String,
}

/// A call in an assistant message (answers, and the history a client sends back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(default = "function_type")]
    pub r#type: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

/// The function called and its arguments, a JSON object as text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// A call in a stream chunk's `delta.tool_calls`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    pub function: FunctionCallDelta,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}
