//! The output filter: the output guardrails applied to a relayed reply. Every choice's content
//! goes through its own [`StreamScanner`], so a forbidden string split over any number of chunks never reaches the
//! client. Chunks are rewritten with what the scanner releases (the held-back tail goes out with
//! a later chunk or at the finish); a block ends the stream after the safe prefix.
//!
//! The common case costs nothing beyond the relay's own borrowed [`ChunkView`] of the chunk: a
//! chunk whose texts the scanners release whole goes out as the provider wrote it
//! ([`Filtered::Unchanged`]). Only a chunk the scanners change (text held back, redacted,
//! blocked, or tails released at its finish) is parsed into a `serde_json::Value` and written
//! again; a chunk the view cannot read (unexpected types, duplicate fields) takes that path
//! from the start.

use super::chunk::ChunkView;
use crate::guardrails::{Check, OutputRule, RuleHit, ScanOutput, StreamScanner};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The rule id reported when the provider's indexes are out of range (fail closed).
const FILTER_UNAVAILABLE: &str = "guard_unavailable";
/// Choice and tool-call indexes the filter accepts from the provider.
const MAX_INDEX: u64 = 128;

/// What to do with one upstream chunk.
#[derive(Debug, PartialEq)]
pub enum Filtered {
    /// Send the chunk as it came: the scanners released its texts whole.
    Unchanged,
    /// Send this payload (the chunk rewritten).
    Send(String),
    /// Nothing left to send from this chunk (its text is held back).
    Skip,
    /// A block rule matched: send the payload, if any (the safe prefix), then cut the stream.
    Blocked {
        payload: Option<String>,
        rule: RuleHit,
    },
}

/// Which text of a choice a scanner watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Content,
    Refusal,
    ToolArguments(usize),
}

/// One choice's held text by slot.
type SlotTails = Vec<(Slot, String)>;

/// Held text released at the end: (choice index, the delta that carries it).
pub type Tails = Vec<(usize, Value)>;

/// The scanners of one reply: one per text of each choice (content, refusal, each tool call's
/// arguments), so nothing the model writes reaches the client unscanned.
#[derive(Debug)]
pub struct OutputFilter {
    /// A fresh scanner with the reply's rules, cloned for each text (cloning a compiled
    /// scanner costs microseconds; compiling one, milliseconds).
    template: StreamScanner,
    scanners: BTreeMap<(usize, Slot), StreamScanner>,
}

impl OutputFilter {
    /// Compiles `rules` (tests; the gateway clones a template compiled at start-up).
    pub fn new(rules: Vec<OutputRule>) -> Result<Self, String> {
        Ok(Self::from_template(StreamScanner::new(rules)?))
    }

    /// A filter whose texts each get a clone of `template`.
    pub fn from_template(template: StreamScanner) -> Self {
        Self {
            template,
            scanners: BTreeMap::new(),
        }
    }

    fn push(&mut self, key: (usize, Slot), text: &str) -> ScanOutput {
        self.scanner(key).push(text)
    }

    /// [`push`](Self::push) without a copy when the text is released whole, as it came
    /// (ordinary text): `None` then.
    fn scan(&mut self, key: (usize, Slot), text: &str) -> Option<ScanOutput> {
        self.scanner(key).push_unless_whole(text)
    }

    fn scanner(&mut self, key: (usize, Slot)) -> &mut StreamScanner {
        let template = &self.template;
        self.scanners.entry(key).or_insert_with(|| template.clone())
    }

    /// Passes a chunk's texts through the scanners; a choice that finishes in this chunk also
    /// releases its held tails.
    pub fn filter_chunk(&mut self, data: &str) -> Filtered {
        match serde_json::from_str::<ChunkView>(data) {
            Ok(view) => self.filter_view(data, &view),
            Err(_) => self.filter_value(data),
        }
    }

    /// [`filter_chunk`](Self::filter_chunk) for a chunk `data` already read as `view`: the
    /// scanners see the same texts in the same order as in
    /// [`filter_value`](Self::filter_value); the chunk is rewritten only if they changed
    /// something.
    pub fn filter_view(&mut self, data: &str, view: &ChunkView<'_>) -> Filtered {
        let choices = view.choices();
        if choices.is_empty() {
            return Filtered::Unchanged; // usage-only or not a chunk
        }
        let mut blocked: Option<RuleHit> = None;
        let mut anything_to_send = false;
        let mut changed = false;
        let mut edits: Vec<ChoiceEdits> = Vec::new();
        for (position, choice) in choices.iter().enumerate() {
            let index = match choice.index.unwrap_or(0) {
                i if i < MAX_INDEX => i as usize,
                _ => return unavailable(),
            };
            let finishing = choice.finish_reason.is_some();
            let Some(delta) = &choice.delta else {
                anything_to_send |= finishing;
                continue;
            };
            let mut edit = ChoiceEdits {
                position,
                ..ChoiceEdits::default()
            };
            for (slot, text) in [
                (Slot::Content, &delta.content),
                (Slot::Refusal, &delta.refusal),
            ] {
                if let Some(text) = text {
                    let Some(out) = self.scan((index, slot), text) else {
                        anything_to_send |= !text.is_empty();
                        continue;
                    };
                    let mut released = String::new();
                    let unchanged =
                        matches!(&out, ScanOutput::Text(t) if t.as_str() == text.as_ref());
                    anything_to_send |= apply(out, &mut released, &mut blocked);
                    if !unchanged {
                        changed = true;
                        edit.texts.push((slot, released));
                    }
                }
            }
            if let Some(calls) = &delta.tool_calls {
                anything_to_send = true; // ids and names go out even while arguments are held
                for (call_position, call) in calls.iter().enumerate() {
                    let tool = call.index.unwrap_or(call_position as u64);
                    if tool >= MAX_INDEX {
                        return unavailable();
                    }
                    let key = (index, Slot::ToolArguments(tool as usize));
                    let args = call.function.as_ref().and_then(|f| f.arguments.as_ref());
                    if let Some(args) = args.map(|a| a.0.as_ref()) {
                        let Some(out) = self.scan(key, args) else {
                            continue;
                        };
                        let mut released = String::new();
                        let unchanged = matches!(&out, ScanOutput::Text(t) if t == args);
                        apply(out, &mut released, &mut blocked);
                        if !unchanged {
                            changed = true;
                            edit.texts
                                .push((Slot::ToolArguments(call_position), released));
                        }
                    }
                }
            }
            anything_to_send |= delta.other_keys;
            if finishing && blocked.is_none() {
                let tails = match self.finish_choice(index) {
                    Ok(tails) => tails,
                    Err((tails, rule)) => {
                        blocked = Some(rule);
                        tails
                    }
                };
                changed |= !tails.is_empty();
                edit.tails = tails;
                anything_to_send = true;
            }
            edit.null_finish = blocked.is_some();
            if !edit.texts.is_empty() || !edit.tails.is_empty() || edit.null_finish {
                edits.push(edit);
            }
        }
        if !changed && blocked.is_none() {
            return if anything_to_send {
                Filtered::Unchanged
            } else {
                Filtered::Skip
            };
        }
        let payload = if anything_to_send {
            match rewrite(data, edits) {
                Some(payload) => Some(payload),
                // Read by the view but not as a value: nothing of it may go out.
                None => return unavailable(),
            }
        } else {
            None
        };
        match (blocked, payload) {
            (Some(rule), payload) => Filtered::Blocked { payload, rule },
            (None, Some(payload)) => Filtered::Send(payload),
            (None, None) => Filtered::Skip,
        }
    }

    /// [`filter_chunk`](Self::filter_chunk) on the chunk as a `serde_json::Value`, rewritten
    /// with what the scanners release.
    fn filter_value(&mut self, data: &str) -> Filtered {
        let Ok(mut value) = serde_json::from_str::<Value>(data) else {
            return Filtered::Unchanged;
        };
        let mut blocked: Option<RuleHit> = None;
        let mut anything_to_send = false;
        let choices = match value.get_mut("choices").and_then(Value::as_array_mut) {
            Some(choices) if !choices.is_empty() => choices,
            _ => return Filtered::Unchanged, // usage-only or not a chunk
        };
        for choice in choices.iter_mut() {
            let index = match choice.get("index").and_then(Value::as_u64).unwrap_or(0) {
                i if i < MAX_INDEX => i as usize,
                _ => return unavailable(),
            };
            let finishing = choice.get("finish_reason").is_some_and(|r| !r.is_null());
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
                anything_to_send |= finishing;
                continue;
            };
            for (slot, field) in [(Slot::Content, "content"), (Slot::Refusal, "refusal")] {
                if let Some(Value::String(text)) = delta.get_mut(field) {
                    let out = self.push((index, slot), text);
                    anything_to_send |= apply(out, text, &mut blocked);
                }
            }
            if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                anything_to_send = true; // ids and names go out even while arguments are held
                for (position, call) in calls.iter_mut().enumerate() {
                    let tool = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(position as u64);
                    if tool >= MAX_INDEX {
                        return unavailable();
                    }
                    let key = (index, Slot::ToolArguments(tool as usize));
                    if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                        let out = self.push(key, args);
                        apply(out, args, &mut blocked);
                    }
                }
            }
            anything_to_send |= delta.keys().any(|k| k != "content" && k != "refusal");
            if finishing && blocked.is_none() {
                match self.finish_choice(index) {
                    Ok(tails) => merge_tails(delta, tails),
                    Err((tails, rule)) => {
                        merge_tails(delta, tails);
                        blocked = Some(rule);
                    }
                }
                anything_to_send = true;
            }
            if blocked.is_some() {
                if let Some(reason) = choice.get_mut("finish_reason") {
                    *reason = Value::Null;
                }
            }
        }
        let payload = anything_to_send.then(|| value.to_string());
        match (blocked, payload) {
            (Some(rule), payload) => Filtered::Blocked { payload, rule },
            (None, Some(payload)) => Filtered::Send(payload),
            (None, None) => Filtered::Skip,
        }
    }

    /// Ends the scanners of one choice: its held tails by slot, or the rule that blocked.
    fn finish_choice(&mut self, index: usize) -> Result<SlotTails, (SlotTails, RuleHit)> {
        let mut tails = Vec::new();
        for ((choice, slot), scanner) in self.scanners.iter_mut() {
            if *choice != index {
                continue;
            }
            match scanner.finish() {
                ScanOutput::Text(t) if !t.is_empty() => tails.push((*slot, t)),
                ScanOutput::Text(_) => {}
                ScanOutput::Blocked { rule, safe_prefix } => {
                    if !safe_prefix.is_empty() {
                        tails.push((*slot, safe_prefix));
                    }
                    return Err((tails, rule));
                }
            }
        }
        Ok(tails)
    }

    /// The end of the reply (without a finish chunk): every choice's held tails as deltas to
    /// send, or those before the block and the rule that blocked.
    pub fn finish(&mut self) -> Result<Tails, (Tails, RuleHit)> {
        let choices: Vec<usize> = self.scanners.keys().map(|(c, _)| *c).collect();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for index in choices {
            if seen.contains(&index) {
                continue;
            }
            seen.push(index);
            let mut delta = Map::new();
            let result = self.finish_choice(index);
            let (tails, rule) = match result {
                Ok(tails) => (tails, None),
                Err((tails, rule)) => (tails, Some(rule)),
            };
            merge_tails(&mut delta, tails);
            if !delta.is_empty() {
                out.push((index, Value::Object(delta)));
            }
            if let Some(rule) = rule {
                return Err((out, rule));
            }
        }
        Ok(out)
    }

    /// Characters this reply's scanners released later than they arrived, over every text.
    pub fn delayed_chars(&self) -> usize {
        self.scanners
            .values()
            .map(StreamScanner::delayed_chars)
            .sum()
    }

    /// Scans one whole (non-streamed) text with a fresh scanner: the text to return, or the
    /// safe prefix and the rule.
    pub fn scan_whole(&self, text: &str) -> Result<String, (String, RuleHit)> {
        let mut scanner = self.template.clone();
        let mut released = String::new();
        for out in [scanner.push(text), scanner.finish()] {
            match out {
                ScanOutput::Text(t) => released.push_str(&t),
                ScanOutput::Blocked { rule, safe_prefix } => {
                    released.push_str(&safe_prefix);
                    return Err((released, rule));
                }
            }
        }
        Ok(released)
    }
}

fn unavailable() -> Filtered {
    Filtered::Blocked {
        payload: None,
        rule: RuleHit {
            id: FILTER_UNAVAILABLE.into(),
            check: Check::Secret,
        },
    }
}

/// What the scanners changed in one choice of a chunk read by the borrowed view.
#[derive(Debug, Default)]
struct ChoiceEdits {
    /// The choice's position in `choices`.
    position: usize,
    /// Texts to replace: content, refusal, or the arguments of the tool call at a position in
    /// `tool_calls` (the slot's number is the position, not the tool's index).
    texts: Vec<(Slot, String)>,
    /// Held tails the choice's finish releases.
    tails: SlotTails,
    /// A block came before the end of this choice: its `finish_reason` is cleared.
    null_finish: bool,
}

/// `data` with the edits applied (as [`OutputFilter::filter_value`] would have written it);
/// `None` if it does not read as a value.
fn rewrite(data: &str, edits: Vec<ChoiceEdits>) -> Option<String> {
    let mut value = serde_json::from_str::<Value>(data).ok()?;
    let choices = value.get_mut("choices")?.as_array_mut()?;
    for edit in edits {
        let choice = choices.get_mut(edit.position)?;
        let delta = choice.get_mut("delta")?.as_object_mut()?;
        for (slot, text) in edit.texts {
            match slot {
                Slot::Content => {
                    delta.insert("content".into(), Value::String(text));
                }
                Slot::Refusal => {
                    delta.insert("refusal".into(), Value::String(text));
                }
                Slot::ToolArguments(position) => {
                    let call = delta.get_mut("tool_calls")?.get_mut(position)?;
                    *call.pointer_mut("/function/arguments")? = Value::String(text);
                }
            }
        }
        merge_tails(delta, edit.tails);
        if edit.null_finish {
            if let Some(reason) = choice.get_mut("finish_reason") {
                *reason = Value::Null;
            }
        }
    }
    Some(value.to_string())
}

/// Writes a scanner's answer into `text`; true when there is something to send.
fn apply(out: ScanOutput, text: &mut String, blocked: &mut Option<RuleHit>) -> bool {
    match out {
        ScanOutput::Text(released) => {
            *text = released;
        }
        ScanOutput::Blocked { rule, safe_prefix } => {
            *text = safe_prefix;
            blocked.get_or_insert(rule);
        }
    }
    !text.is_empty()
}

/// Appends held tails to a delta: text fields by name, tool-call arguments to the entry of
/// their tool index (added if the delta has none).
fn merge_tails(delta: &mut Map<String, Value>, tails: Vec<(Slot, String)>) {
    for (slot, tail) in tails {
        match slot {
            Slot::Content | Slot::Refusal => {
                let field = if slot == Slot::Content {
                    "content"
                } else {
                    "refusal"
                };
                let entry = delta
                    .entry(field)
                    .or_insert_with(|| Value::String(String::new()));
                if let Value::String(text) = entry {
                    text.push_str(&tail);
                } else {
                    *entry = Value::String(tail);
                }
            }
            Slot::ToolArguments(tool) => {
                let calls = delta
                    .entry("tool_calls")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !calls.is_array() {
                    *calls = Value::Array(Vec::new());
                }
                if let Value::Array(calls) = calls {
                    let existing = calls
                        .iter_mut()
                        .find(|c| c.get("index").and_then(Value::as_u64) == Some(tool as u64));
                    match existing {
                        Some(call) => {
                            let args = call
                                .pointer("/function/arguments")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string();
                            call["function"]["arguments"] = Value::String(args + &tail);
                        }
                        None => calls.push(serde_json::json!({
                            "index": tool,
                            "function": {"arguments": tail}
                        })),
                    }
                }
            }
        }
    }
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
        let canary = "qzcn-012345678901234567890";
        let mut filter = OutputFilter::new(vec![canary_rule(canary)]).unwrap();
        let text = format!("hello {canary} world");
        let mut released = String::new();
        let mut blocked = None;
        for c in text.chars() {
            let data = chunk(&c.to_string(), None);
            match filter.filter_chunk(&data) {
                Filtered::Unchanged => released.push_str(&content(&data)),
                Filtered::Send(p) => released.push_str(&content(&p)),
                Filtered::Skip => {}
                Filtered::Blocked { payload, rule } => {
                    if let Some(p) = payload {
                        released.push_str(&content(&p));
                    }
                    blocked = Some(rule);
                    break;
                }
            }
        }
        assert!(blocked.is_some());
        assert!(!released.contains(canary));
        assert!(released.starts_with("hello"));
    }

    #[test]
    fn refusals_tool_arguments_usage_and_wild_indexes() {
        let canary = "qzcn-987654321098765432109";
        let mut filter = OutputFilter::new(vec![canary_rule(canary)]).unwrap();
        let refusal = json!({"choices":[{"index":0,"delta":{"refusal":format!("no: {canary}")},"finish_reason":null}]});
        assert!(matches!(
            filter.filter_chunk(&refusal.to_string()),
            Filtered::Blocked { .. }
        ));

        let mut filter = OutputFilter::new(vec![canary_rule(canary)]).unwrap();
        let tool = json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":format!("{{\"x\":\"{canary}\"}}")}}]},"finish_reason":null}]});
        match filter.filter_chunk(&tool.to_string()) {
            Filtered::Blocked { payload, .. } => {
                assert!(!payload.unwrap_or_default().contains(canary))
            }
            other => panic!("{other:?}"),
        }

        let mut filter = OutputFilter::new(default_secret_rules()).unwrap();
        let usage =
            json!({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}).to_string();
        assert_eq!(filter.filter_chunk(&usage), Filtered::Unchanged);
        let wild = json!({"choices":[{"index":u64::MAX,"delta":{"content":"x"}}]}).to_string();
        assert!(matches!(
            filter.filter_chunk(&wild),
            Filtered::Blocked { .. }
        ));
    }

    #[test]
    fn clean_text_comes_out_whole_by_the_finish() {
        let mut filter = OutputFilter::new(default_secret_rules()).unwrap();
        let mut released = String::new();
        for piece in [" the quick", " brown fox", " jumps"] {
            let data = chunk(piece, None);
            match filter.filter_chunk(&data) {
                Filtered::Unchanged => released.push_str(&content(&data)),
                Filtered::Send(p) => released.push_str(&content(&p)),
                Filtered::Skip => {}
                other => panic!("{other:?}"),
            }
        }
        let last = chunk("", Some("stop"));
        match filter.filter_chunk(&last) {
            Filtered::Unchanged => released.push_str(&content(&last)),
            Filtered::Send(p) => released.push_str(&content(&p)),
            other => panic!("{other:?}"),
        }
        assert_eq!(released, " the quick brown fox jumps");
    }

    /// What the client gets for a chunk: the payload as a value (`None`: nothing sent), and
    /// the rule that blocked.
    fn sent(data: &str, filtered: Filtered) -> (Option<Value>, Option<String>) {
        let value = |p: &str| serde_json::from_str::<Value>(p).unwrap_or(Value::String(p.into()));
        match filtered {
            Filtered::Unchanged => (Some(value(data)), None),
            Filtered::Send(p) => (Some(value(&p)), None),
            Filtered::Skip => (None, None),
            Filtered::Blocked { payload, rule } => (payload.as_deref().map(value), Some(rule.id)),
        }
    }

    /// A chunk of `choices` (index, content, tool arguments, finish) with an id, a role and
    /// whatever else a provider writes.
    fn chunk_of(choices: &[(u64, Option<&str>, Option<&str>, bool)]) -> String {
        let choices: Vec<Value> = choices
            .iter()
            .map(|(index, text, args, finish)| {
                let mut delta = Map::new();
                if let Some(text) = text {
                    delta.insert("content".into(), json!(text));
                }
                if let Some(args) = args {
                    delta.insert(
                        "tool_calls".into(),
                        json!([{"index": 0, "id": "t", "function": {"arguments": args}}]),
                    );
                }
                json!({
                    "index": index,
                    "delta": delta,
                    "finish_reason": if *finish { json!("stop") } else { Value::Null },
                })
            })
            .collect();
        json!({"id": "c", "object": "chat.completion.chunk", "choices": choices}).to_string()
    }

    use proptest::prelude::*;

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(" the".to_string()),
            Just(" quick\nbrown".to_string()),
            Just(" \"quoted\" é".to_string()),
            Just(" sk".to_string()),
            Just("-proj-".to_string()),
            Just("abcdefghijklmnopqrstuvwxyz0123".to_string()),
            Just(" qzcn-".to_string()),
            Just("0123456789abcdef".to_string()),
            Just(" A".to_string()),
            Just("KIA".to_string()),
            Just("{\"x\":".to_string()),
            Just(String::new()),
        ]
    }

    proptest! {
        /// The borrowed view and the value path send the client the same thing, chunk by
        /// chunk, whatever the scanners hold back, block or release at a finish.
        #[test]
        fn the_borrowed_view_sends_what_the_value_path_sends(
            steps in prop::collection::vec(
                (0u64..2, prop::option::of(piece()), prop::option::of(piece()), any::<bool>()),
                1..24,
            ),
        ) {
            let mut rules = crate::guardrails::default_secret_rules();
            rules.push(crate::guardrails::canary_family_rule());
            let template = crate::guardrails::StreamScanner::new(rules).unwrap();
            let mut view = OutputFilter::from_template(template.clone());
            let mut value = OutputFilter::from_template(template);
            for (index, text, args, finish) in &steps {
                let data = chunk_of(&[(*index, text.as_deref(), args.as_deref(), *finish)]);
                let a = sent(&data, view.filter_chunk(&data));
                let b = sent(&data, value.filter_value(&data));
                prop_assert_eq!(&a, &b, "chunk {}", data);
                if a.1.is_some() {
                    break;
                }
            }
            let (a, b) = (view.finish(), value.finish());
            prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
    }

    #[test]
    fn chunks_the_view_cannot_read_take_the_value_path() {
        let mut filter = OutputFilter::new(default_secret_rules()).unwrap();
        // Duplicate text fields: the value keeps the last one, which is what gets scanned.
        let twice = r#"{"choices":[{"index":0,"delta":{"content":"ok","content":" sk-proj-abcdefghijklmnopqrstuvwxyz"}}]}"#;
        assert!(matches!(
            filter.filter_chunk(twice),
            Filtered::Blocked { .. }
        ));
        // A key with escapes, a content of another type: read as a value.
        let mut filter = OutputFilter::new(default_secret_rules()).unwrap();
        let escaped = r#"{"choices":[{"index":0,"delta":{"content":" sk-proj-abcdefghijklmnopqrstuvwxyz"}}]}"#;
        assert!(matches!(
            filter.filter_chunk(escaped),
            Filtered::Blocked { .. }
        ));
        let number = r#"{"choices":[{"index":0,"delta":{"content":7,"role":"assistant"}}]}"#;
        assert_eq!(
            filter.filter_chunk(number),
            Filtered::Send(serde_json::from_str::<Value>(number).unwrap().to_string())
        );
    }
}
