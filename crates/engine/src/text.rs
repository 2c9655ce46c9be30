//! Incremental, UTF-8-safe text of a generation, with stop strings held back until they can
//! no longer match, so streamed text never contains (part of) a stop string.

use crate::tokenizer::ChatTokenizer;

/// Text state of one sequence.
pub struct TextTracker {
    stop: Vec<String>,
    /// Decoded text of all generated tokens (special tokens skipped).
    full: String,
    /// Bytes of `full` already streamed.
    emitted: usize,
    /// Set when a stop string matched: the final text ends there.
    cut: Option<usize>,
}

impl TextTracker {
    pub fn new(stop: Vec<String>) -> Self {
        TextTracker {
            stop,
            full: String::new(),
            emitted: 0,
            cut: None,
        }
    }

    /// Updates with all generated ids; returns the new text that is safe to stream and
    /// whether a stop string matched.
    pub fn push(&mut self, tok: &ChatTokenizer, generated: &[u32], _eos: bool) -> (String, bool) {
        if self.cut.is_some() {
            return (String::new(), true);
        }
        self.full = tok.decode(generated, true).unwrap_or_default();
        if let Some(p) = self
            .stop
            .iter()
            .filter_map(|s| self.full.find(s.as_str()))
            .min()
        {
            self.cut = Some(p);
            let delta = self.full.get(self.emitted..p).unwrap_or("").to_string();
            self.emitted = self.emitted.max(p);
            return (delta, true);
        }
        if self.full.ends_with('\u{FFFD}') {
            return (String::new(), false);
        }
        let mut safe = self.full.len();
        for s in &self.stop {
            for (i, _) in s.char_indices().skip(1) {
                if self.full.ends_with(&s[..i]) {
                    safe = safe.min(self.full.len() - i);
                }
            }
        }
        self.take_until(safe)
    }

    fn take_until(&mut self, end: usize) -> (String, bool) {
        match self.full.get(self.emitted..end) {
            Some(d) if end > self.emitted => {
                let d = d.to_string();
                self.emitted = end;
                (d, false)
            }
            _ => (String::new(), false),
        }
    }

    /// Everything not yet streamed (called when the generation ends without a stop string).
    pub fn flush(&mut self) -> String {
        let end = self.full.len();
        self.take_until(end).0
    }

    /// The generation's text, cut before a matched stop string.
    pub fn final_text(&self) -> String {
        let end = self.cut.unwrap_or(self.full.len());
        self.full.get(..end).unwrap_or(&self.full).to_string()
    }
}
