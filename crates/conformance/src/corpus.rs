//! The requests replayed: chat and text completions, greedy and seeded sampling, short and long
//! prompts, several answer lengths, and answers constrained by a JSON schema (structured
//! outputs) and by a forced tool call's schema. Fixed and deterministic, so every process,
//! kernel and thread count runs exactly the same list.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sortition_engine::{ChatMessage, Constraint, Prompt, SamplingParams};

/// How much to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    /// Minutes: the CI run.
    Small,
    /// Tens of minutes to hours: the published run (`bench/conformance`).
    Long,
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "small" => Ok(Size::Small),
            "long" => Ok(Size::Long),
            other => Err(format!("size {other:?}: expected small or long")),
        }
    }
}

/// One request of the corpus.
#[derive(Clone, Debug)]
pub struct Case {
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// The schema the answer is generated under, if any (scoring audits do not model
    /// constraints: such answers are re-executed, and the scoring analysis leaves them out).
    pub constraint: Option<Constraint>,
    /// e.g. `chat/greedy/short/16`.
    pub label: String,
}

const QUESTIONS: &[&str] = &[
    "What is the capital of France?",
    "Write a haiku about rust.",
    "2+2=?",
    "List three colors.",
    "Explain why the sky is blue.",
    "Give me a synonym for happy.",
    "Translate 'good morning' into Spanish.",
    "What is a prime number?",
    "Name a planet in the solar system.",
    "How many legs does a spider have?",
    "Tell me a joke.",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "What is the boiling point of water in Celsius?",
    "Write a short poem about the sea.",
    "What does CPU stand for?",
    "Suggest a name for a cat.",
];

const TEXTS: &[&str] = &[
    "Once upon a time",
    "The three primary colors are",
    "In 1969, the first humans",
    "def fibonacci(n):",
    "The recipe calls for two cups of",
    "Dear hiring manager,",
];

/// Sentences a variant puts before a text prompt.
const OPENINGS: &[&str] = &[
    "Chapter one.",
    "From the notebook:",
    "It was late.",
    "Note:",
    "Here is the text.",
    "Page 12.",
];

/// A long prompt: a question after a few paragraphs of context.
fn long_prompt(i: usize) -> String {
    let mut s = String::new();
    for p in 0..6 {
        s.push_str(&format!(
            "Paragraph {p}: the committee met on day {} to review item {} of the agenda, \
             noting that the previous decision had been deferred twice and that the budget \
             for the {} department remained unchanged. ",
            i + p,
            (i * 7 + p) % 13,
            ["finance", "research", "operations", "sales"][(i + p) % 4]
        ));
    }
    s.push_str("In one sentence, what did the committee review?");
    s
}

/// System messages that make a variant's chat prompts differ from round 0's.
const VOICES: &[&str] = &[
    "You are a helpful assistant.",
    "Answer in one short sentence.",
    "You are a patient teacher talking to a child.",
    "Reply formally.",
    "You are a pirate.",
    "Answer as briefly as you can.",
    "You are an enthusiastic tour guide.",
    "Explain your reasoning step by step.",
];

/// Variant `v`'s chat messages for the user message `user`: variant 0 is the bare message;
/// every other variant puts a system message of its own before it.
fn chat(v: u32, i: usize, user: String) -> Prompt {
    let mut messages = Vec::new();
    if v > 0 {
        let voice = VOICES[(v as usize + i) % VOICES.len()];
        messages.push(ChatMessage::new(
            "system",
            format!("{voice} (Conversation {v}.)"),
        ));
    }
    messages.push(ChatMessage::new("user", user));
    Prompt::Chat(messages)
}

/// The corpus of `size`, in a fixed order: [`corpus_variant`] 0.
pub fn corpus(size: Size) -> Vec<Case> {
    corpus_variant(size, 0)
}

/// Variant `v` of the corpus of `size`: the same kinds and counts of requests, with other
/// prompts (a system message, another context, another text opening), other seeds and the
/// answer lengths rotated, so the rounds of a long run (`sortition conformance --rounds`)
/// each replay requests no earlier round did. Variant 0 is the fixed corpus.
pub fn corpus_variant(size: Size, v: u32) -> Vec<Case> {
    let (n_chat, n_text, n_long, n_constrained, lengths): (usize, usize, usize, usize, &[u32]) =
        match size {
            Size::Small => (8, 3, 1, 2, &[8, 16, 24]),
            Size::Long => (QUESTIONS.len(), TEXTS.len(), 8, 4, &[16, 48, 96, 128]),
        };
    let mut cases = Vec::new();
    let tag = if v == 0 {
        String::new()
    } else {
        format!("v{v}/")
    };
    let params = |i: usize, sampled: bool| {
        let max_tokens = lengths[(i + v as usize) % lengths.len()];
        if sampled {
            SamplingParams {
                temperature: 0.7,
                top_p: 0.95,
                seed: 1_000 + i as u64 + 100_000 * u64::from(v),
                max_tokens,
                ..Default::default()
            }
        } else {
            SamplingParams::greedy(max_tokens)
        }
    };
    for sampled in [false, true] {
        let mode = if sampled { "seeded" } else { "greedy" };
        for (i, q) in QUESTIONS.iter().take(n_chat).enumerate() {
            let p = params(i, sampled);
            cases.push(Case {
                label: format!("{tag}chat/{mode}/short/{}", p.max_tokens),
                prompt: chat(v, i, (*q).to_string()),
                params: p,
                constraint: None,
            });
        }
        for (i, t) in TEXTS.iter().take(n_text).enumerate() {
            let p = params(i + 1, sampled);
            cases.push(Case {
                label: format!("{tag}text/{mode}/short/{}", p.max_tokens),
                prompt: Prompt::Text(if v == 0 {
                    (*t).to_string()
                } else {
                    format!("{} {t}", OPENINGS[(v as usize + i) % OPENINGS.len()])
                }),
                params: p,
                constraint: None,
            });
        }
        for i in 0..n_long {
            let p = params(i + 2, sampled);
            cases.push(Case {
                label: format!("{tag}chat/{mode}/long/{}", p.max_tokens),
                prompt: chat(v, i, long_prompt(i + n_long * v as usize)),
                params: p,
                constraint: None,
            });
        }
        for (i, (kind, ask, schema)) in constrained().into_iter().take(n_constrained).enumerate() {
            let mut p = params(i + 3, sampled);
            p.max_tokens = 96;
            cases.push(Case {
                label: format!("{tag}{kind}/{mode}/96"),
                prompt: chat(v, i, ask.to_string()),
                params: p,
                constraint: Some(Constraint::JsonSchema(schema)),
            });
        }
    }
    cases
}

/// Constrained requests, alternating structured outputs (`json`) and forced tool calls
/// (`tool`: the schema the API builds for a forced call, `{"name": const, "arguments": …}`).
fn constrained() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    let person = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
        "mood": {"enum": ["happy", "sad", "calm"]}},
        "required": ["name", "age", "mood"], "additionalProperties": false});
    let weather = json!({"type": "object", "properties": {
        "name": {"const": "get_weather"},
        "arguments": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}},
        "required": ["name", "arguments"], "additionalProperties": false});
    let list = json!({"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4}},
        "required": ["items"], "additionalProperties": false});
    let search = json!({"type": "object", "properties": {
        "name": {"const": "search"},
        "arguments": {"type": "object", "properties": {
            "query": {"type": "string", "maxLength": 32}, "limit": {"type": "integer"}},
            "required": ["query", "limit"], "additionalProperties": false}},
        "required": ["name", "arguments"], "additionalProperties": false});
    vec![
        ("json", "Describe a character from a story.", person),
        ("tool", "What is the weather in Oslo?", weather),
        ("json", "List a few fruits.", list),
        ("tool", "Find books about the sea.", search),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpora_are_fixed_and_cover_every_kind() {
        let small = corpus(Size::Small);
        assert_eq!(small.len(), 28);
        let labels: Vec<&str> = small.iter().map(|c| c.label.as_str()).collect();
        for kind in [
            "chat/greedy/short",
            "chat/seeded/short",
            "text/greedy",
            "text/seeded",
            "json/greedy",
            "tool/seeded",
        ] {
            assert!(labels.iter().any(|l| l.starts_with(kind)), "{kind}");
        }
        assert!(labels.iter().any(|l| l.contains("/long/")));
        assert_eq!(
            format!("{:?}", corpus(Size::Small)),
            format!("{small:?}"),
            "deterministic"
        );
        assert!(corpus(Size::Long).len() > small.len());
        assert!("medium".parse::<Size>().is_err());
    }

    #[test]
    fn variants_keep_the_kinds_and_change_every_request() {
        let base = corpus(Size::Long);
        let v1 = corpus_variant(Size::Long, 1);
        let v2 = corpus_variant(Size::Long, 2);
        assert_eq!(
            format!("{base:?}"),
            format!("{:?}", corpus_variant(Size::Long, 0))
        );
        for v in [&v1, &v2] {
            assert_eq!(v.len(), base.len());
            for (a, b) in base.iter().zip(v.iter()) {
                // The same kind of request (the label past the variant's tag, but the length),
                // the same constraint, and another prompt or seed.
                let kind = |l: &str| l.rsplit_once('/').map(|(k, _)| k.to_string());
                let bl = b.label.split_once('/').map(|(_, l)| l).unwrap_or_default();
                assert_eq!(kind(&a.label), kind(bl), "{} vs {}", a.label, b.label);
                assert_eq!(format!("{:?}", a.constraint), format!("{:?}", b.constraint));
                assert_ne!(
                    format!("{:?}", a.prompt),
                    format!("{:?}", b.prompt),
                    "{}",
                    b.label
                );
            }
        }
        // Two variants differ from each other too, in prompts and seeds.
        for (a, b) in v1.iter().zip(v2.iter()) {
            assert_ne!(format!("{:?}", a.prompt), format!("{:?}", b.prompt));
            if a.params.temperature > 0.0 {
                assert_ne!(a.params.seed, b.params.seed);
            }
        }
    }
}
