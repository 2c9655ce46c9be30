//! OpenAI response bodies (chat, text completions, their stream chunks, the model list), plus
//! the `sortition` extension that carries receipts.

use serde::{Deserialize, Serialize};
use sortition_types::{NodeId, SignedReceipt};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt: u64, completion: u64) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

/// The `sortition` extension field on responses and on the final stream event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SortitionExt {
    pub node: NodeId,
    pub receipt: SignedReceipt,
    /// Set by a gateway once it checked the receipt against the ledger's key for the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by_gateway: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssistantMessage {
    pub role: String,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<crate::tools::ToolCall>>,
}

impl AssistantMessage {
    /// The text a receipt commits to: the content, then the calls
    /// ([`crate::tools::committed_text`]).
    pub fn committed_text(&self) -> String {
        let calls: Vec<crate::tools::CallOut> = self
            .tool_calls
            .iter()
            .flatten()
            .map(|c| crate::tools::CallOut {
                name: c.function.name.clone(),
                arguments: c.function.arguments.clone(),
            })
            .collect();
        crate::tools::committed_text(self.content.as_deref().unwrap_or(""), &calls)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: String,
    pub logprobs: Option<crate::logprobs::ChatLogprobs>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sortition: Option<SortitionExt>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<crate::tools::ToolCallDelta>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    pub logprobs: Option<crate::logprobs::ChatLogprobs>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sortition: Option<SortitionExt>,
}

impl ChatCompletionChunk {
    /// A chunk with its one choice (index 0), created now.
    pub fn single(
        id: &str,
        model: &str,
        delta: Delta,
        finish_reason: Option<String>,
        logprobs: Option<crate::logprobs::ChatLogprobs>,
        sortition: Option<SortitionExt>,
    ) -> Self {
        ChatCompletionChunk {
            id: id.into(),
            object: "chat.completion.chunk".into(),
            created: crate::unix_now(),
            model: model.into(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs,
            }],
            usage: None,
            sortition,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub finish_reason: Option<String>,
    pub logprobs: Option<crate::logprobs::CompletionLogprobs>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sortition: Option<SortitionExt>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}
