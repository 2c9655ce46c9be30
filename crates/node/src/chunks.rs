//! The wire shapes of a streamed answer: chunks with their one choice, the usage chunk, and
//! log-probabilities rendered for an endpoint; and the clock of its tokens.

use std::time::Instant;

use sortition_api::*;
use sortition_engine::TokenLogprobs;

use crate::logprobs::{Rendered, Renderer};
use crate::request::Kind;

/// Renders `lps` for `kind`.
pub(crate) fn render(kind: Kind, r: &mut Renderer, lps: &[TokenLogprobs]) -> Rendered {
    match kind {
        Kind::Chat => Rendered::Chat(r.chat(lps)),
        Kind::Text => Rendered::Text(r.text(lps)),
    }
}

/// Observes time to first token and inter-token latency as a request's tokens arrive.
pub(crate) struct TokenClock {
    started: Instant,
    last: Option<Instant>,
}

impl TokenClock {
    pub(crate) fn new(started: Instant) -> Self {
        TokenClock {
            started,
            last: None,
        }
    }

    pub(crate) fn tick(&mut self, m: &sortition_api::metrics::Registry) {
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

/// A stream chunk with its one choice (index 0) and the log-probabilities of the tokens it
/// completes; `ext` puts the receipt on it (the finish chunk, when no usage chunk follows).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_with(
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

/// The usage chunk OpenAI sends after the finish chunk when `stream_options.include_usage`
/// is set: no choices, the usage, and (being the last event) the receipt.
pub(crate) fn usage_json(
    kind: Kind,
    id: &str,
    model: &str,
    usage: Usage,
    ext: SortitionExt,
) -> String {
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
