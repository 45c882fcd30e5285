//! Output guardrails on a relayed reply: every choice's content goes through its own
//! [`StreamScanner`], so a forbidden string split over any number of chunks never reaches the
//! client. Chunks are rewritten with what the scanner releases (the held-back tail goes out with
//! a later chunk or at the finish); a block ends the stream after the safe prefix.

use crate::guardrails::{OutputRule, ScanOutput, StreamScanner};
use serde_json::Value;

/// The rule id reported if a scanner could not be built (the reply is blocked: fail closed).
const GUARD_UNAVAILABLE: &str = "guard_unavailable";

/// What to do with one upstream chunk.
#[derive(Debug, PartialEq)]
pub enum Filtered {
    /// Send this payload.
    Send(String),
    /// Nothing left to send from this chunk (its text is held back).
    Skip,
    /// A block rule matched: send the payload, if any (the safe prefix), then cut the stream.
    Blocked {
        payload: Option<String>,
        rule_id: String,
    },
}

/// Held text released at the end: (choice index, text) pairs.
pub type Tails = Vec<(usize, String)>;

/// The scanners of one reply.
#[derive(Debug)]
pub struct OutputGuard {
    /// A fresh scanner with the reply's rules, cloned for each choice (cloning a compiled
    /// scanner costs microseconds; compiling one, milliseconds).
    template: StreamScanner,
    scanners: Vec<Option<StreamScanner>>,
}

impl OutputGuard {
    /// Compiles `rules` (tests; the gateway clones a template compiled at start-up).
    pub fn new(rules: Vec<OutputRule>) -> Result<Self, String> {
        Ok(Self::from_template(StreamScanner::new(rules)?))
    }

    /// A guard whose choices each get a clone of `template`.
    pub fn from_template(template: StreamScanner) -> Self {
        Self {
            template,
            scanners: Vec::new(),
        }
    }

    /// The scanner of choice `index`, created on first use.
    fn scanner(&mut self, index: usize) -> Option<&mut StreamScanner> {
        if self.scanners.len() <= index {
            self.scanners.resize_with(index + 1, || None);
        }
        let template = &self.template;
        Some(self.scanners[index].get_or_insert_with(|| template.clone()))
    }

    /// Passes a chunk's content through the scanners; a choice that finishes in this chunk
    /// also releases its held tail.
    pub fn filter_chunk(&mut self, data: &str) -> Filtered {
        let Ok(mut value) = serde_json::from_str::<Value>(data) else {
            return Filtered::Send(data.to_string());
        };
        let mut blocked = None;
        let mut anything_to_send = false;
        if let Some(choices) = value.get_mut("choices").and_then(Value::as_array_mut) {
            for choice in choices.iter_mut() {
                let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let finishing = choice.get("finish_reason").is_some_and(|r| !r.is_null());
                let text = choice
                    .pointer("/delta/content")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let Some(scanner) = self.scanner(index) else {
                    return Filtered::Blocked {
                        payload: None,
                        rule_id: GUARD_UNAVAILABLE.into(),
                    };
                };
                let mut out = match &text {
                    Some(t) => scanner.push(t),
                    None => ScanOutput::Text(String::new()),
                };
                if finishing {
                    if let ScanOutput::Text(released) = &mut out {
                        match scanner.finish() {
                            ScanOutput::Text(tail) => released.push_str(&tail),
                            ScanOutput::Blocked {
                                rule_id,
                                safe_prefix,
                            } => {
                                released.push_str(&safe_prefix);
                                out = ScanOutput::Blocked {
                                    rule_id,
                                    safe_prefix: std::mem::take(released),
                                };
                            }
                        }
                    }
                }
                let (released, rule) = match out {
                    ScanOutput::Text(t) => (t, None),
                    ScanOutput::Blocked {
                        rule_id,
                        safe_prefix,
                    } => (safe_prefix, Some(rule_id)),
                };
                if text.is_some() || !released.is_empty() {
                    if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                        delta.insert("content".into(), Value::String(released.clone()));
                    }
                }
                anything_to_send |= !released.is_empty() || has_more_than_content(choice);
                if let Some(rule) = rule {
                    if let Some(reason) = choice.get_mut("finish_reason") {
                        *reason = Value::Null;
                    }
                    blocked.get_or_insert(rule);
                }
            }
        } else {
            anything_to_send = true; // a usage-only chunk
        }
        let payload = anything_to_send.then(|| value.to_string());
        match (blocked, payload) {
            (Some(rule_id), payload) => Filtered::Blocked { payload, rule_id },
            (None, Some(payload)) => Filtered::Send(payload),
            (None, None) => Filtered::Skip,
        }
    }

    /// The end of the reply (without a finish chunk): each choice's held tail, released or
    /// blocked. Returns (choice index, text) pairs to send, or the rule that blocked.
    pub fn finish(&mut self) -> Result<Tails, (Tails, String)> {
        let mut tails = Vec::new();
        for (index, scanner) in self.scanners.iter_mut().enumerate() {
            let Some(scanner) = scanner else { continue };
            match scanner.finish() {
                ScanOutput::Text(t) if !t.is_empty() => tails.push((index, t)),
                ScanOutput::Text(_) => {}
                ScanOutput::Blocked {
                    rule_id,
                    safe_prefix,
                } => {
                    if !safe_prefix.is_empty() {
                        tails.push((index, safe_prefix));
                    }
                    return Err((tails, rule_id));
                }
            }
        }
        Ok(tails)
    }

    /// Scans a whole (non-streamed) text: the text to return, or the safe prefix and the rule.
    pub fn scan_whole(&mut self, index: usize, text: &str) -> Result<String, (String, String)> {
        let Some(scanner) = self.scanner(index) else {
            return Err((String::new(), GUARD_UNAVAILABLE.into()));
        };
        let mut released = String::new();
        for out in [scanner.push(text), scanner.finish()] {
            match out {
                ScanOutput::Text(t) => released.push_str(&t),
                ScanOutput::Blocked {
                    rule_id,
                    safe_prefix,
                } => {
                    released.push_str(&safe_prefix);
                    return Err((released, rule_id));
                }
            }
        }
        Ok(released)
    }
}

/// A choice that carries more than text (a role, a finish reason, tool calls) is sent even
/// when its text is held back.
fn has_more_than_content(choice: &Value) -> bool {
    choice.get("finish_reason").is_some_and(|r| !r.is_null())
        || choice
            .get("delta")
            .and_then(Value::as_object)
            .is_some_and(|d| d.keys().any(|k| k != "content"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardrails::{canary_rule, default_secret_rules};
    use serde_json::json;

    fn chunk(content: &str, finish: Option<&str>) -> String {
        json!({"id":"c","choices":[{"index":0,"delta":{"content":content},"finish_reason":finish}]})
            .to_string()
    }

    fn content(payload: &str) -> String {
        let v: Value = serde_json::from_str(payload).unwrap();
        v["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn a_canary_split_over_one_character_chunks_never_reaches_the_client() {
        let canary = "cnry-0123456789abcdef";
        let mut guard = OutputGuard::new(vec![canary_rule(canary)]).unwrap();
        let text = format!("hello {canary} world");
        let mut released = String::new();
        let mut blocked = None;
        for c in text.chars() {
            match guard.filter_chunk(&chunk(&c.to_string(), None)) {
                Filtered::Send(p) => released.push_str(&content(&p)),
                Filtered::Skip => {}
                Filtered::Blocked { payload, rule_id } => {
                    if let Some(p) = payload {
                        released.push_str(&content(&p));
                    }
                    blocked = Some(rule_id);
                    break;
                }
            }
        }
        assert!(blocked.is_some());
        assert!(!released.contains(canary));
        assert!(released.starts_with("hello"));
    }

    #[test]
    fn clean_text_comes_out_whole_by_the_finish() {
        let mut guard = OutputGuard::new(default_secret_rules()).unwrap();
        let mut released = String::new();
        for piece in [" the quick", " brown fox", " jumps"] {
            if let Filtered::Send(p) = guard.filter_chunk(&chunk(piece, None)) {
                released.push_str(&content(&p));
            }
        }
        match guard.filter_chunk(&chunk("", Some("stop"))) {
            Filtered::Send(p) => released.push_str(&content(&p)),
            other => panic!("{other:?}"),
        }
        assert_eq!(released, " the quick brown fox jumps");
    }
}
