//! Structured outputs on the wire: `response_format` read into the constraint the engine
//! enforces, and the digest that names it.
//!
//! `{"type": "json_object"}` is the schema `{"type": "object"}`; `{"type": "json_schema",
//! "json_schema": {"name", "schema", "strict"}}` is its `schema` (always enforced: `strict`
//! only says the client asks for it). The digest covers the schema in canonical JSON (keys
//! sorted) and [`CONSTRAINT_LIBRARY`], the library and version that enforce it: the receipt's
//! `response_hash` commits to it, so an executor, a gateway and an auditor agree on which
//! constraint produced the text.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sortition_types::{Hash32, sha256};

use crate::error::ApiError;

/// The library (and exact version) that enforces constraints; the engine's
/// `CONSTRAINT_LIBRARY` must say the same (tested there).
pub const CONSTRAINT_LIBRARY: &str = "llguidance 1.9.1";

/// `response_format`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// The JSON schema an answer must satisfy.
#[derive(Debug, Clone, PartialEq)]
pub struct ConstraintSpec {
    pub schema: Value,
}

impl ConstraintSpec {
    /// The constraint from a `response_format`; `None` for plain text. A schema that is not a
    /// JSON object is refused naming `response_format`.
    pub fn of(format: &ResponseFormat) -> Result<Option<Self>, ApiError> {
        let schema = match format {
            ResponseFormat::Text => return Ok(None),
            ResponseFormat::JsonObject => json!({"type": "object"}),
            ResponseFormat::JsonSchema { json_schema } => match &json_schema.schema {
                Some(s @ Value::Object(_)) => s.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        "invalid_response_format",
                        "'response_format.json_schema.schema' must be a JSON schema object",
                    )
                    .with_param("response_format"));
                }
            },
        };
        Ok(Some(ConstraintSpec { schema }))
    }

    /// The digest a receipt's `response_hash` names: the canonical JSON of the schema (every
    /// object's keys sorted, whatever order the request wrote them in) with the enforcing
    /// library's version.
    pub fn digest(&self) -> Hash32 {
        let canonical = json!({"library": CONSTRAINT_LIBRARY, "schema": self.schema});
        let mut text = String::new();
        write_canonical(&canonical, &mut text);
        sha256(text.as_bytes())
    }
}

/// `v` as JSON text with every object's keys in sorted order (`serde_json`'s maps may keep
/// insertion order, depending on its features), numbers and strings as `serde_json` writes
/// them.
pub(crate) fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = o.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The digest of the constraint a request body asks for (`None` without one, or for a body
/// that does not say): what whoever checks a delivered answer hashes along with it.
/// A chat request's constraint is its `response_format` or the schema of a forced tool call
/// (see [`crate::SamplingFields::constraint_for`]).
pub fn digest_of_body(body: &[u8]) -> Option<Hash32> {
    let fields: crate::SamplingFields = serde_json::from_slice(body).ok()?;
    fields
        .constraint_for(crate::Endpoint::Chat)
        .ok()
        .flatten()
        .map(|c| c.digest())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_into_schemas_with_a_key_order_free_digest() {
        let f: ResponseFormat = serde_json::from_value(json!({"type": "json_schema",
            "json_schema": {"name": "p", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}))
        .unwrap();
        let c = ConstraintSpec::of(&f).unwrap().unwrap();
        let reordered: Value =
            serde_json::from_str(r#"{"properties": {"a": {"type": "integer"}}, "type": "object"}"#)
                .unwrap();
        assert_eq!(c.digest(), ConstraintSpec { schema: reordered }.digest());
        let obj = ConstraintSpec::of(&ResponseFormat::JsonObject)
            .unwrap()
            .unwrap();
        assert_ne!(obj.digest(), c.digest());
        assert_eq!(ConstraintSpec::of(&ResponseFormat::Text).unwrap(), None);
        let body = json!({"model": "m", "response_format": {"type": "json_object"}});
        assert_eq!(
            digest_of_body(body.to_string().as_bytes()),
            Some(obj.digest())
        );
        assert_eq!(digest_of_body(b"{\"model\": \"m\"}"), None);
        let missing: ResponseFormat =
            serde_json::from_value(json!({"type": "json_schema", "json_schema": {"name": "p"}}))
                .unwrap();
        assert_eq!(
            ConstraintSpec::of(&missing).unwrap_err().param.as_deref(),
            Some("response_format")
        );
    }
}
