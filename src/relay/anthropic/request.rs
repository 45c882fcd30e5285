//! OpenAI chat request → Anthropic Messages request body.
//!
//! The body is rebuilt from a whitelist: every OpenAI field that has an Anthropic meaning is
//! translated, `model`, `max_tokens` and `stream` come from the caller, and everything else is
//! dropped (the known OpenAI ones are listed in [`DROPPED_PARAMETERS`]), so no OpenAI-only field
//! ever reaches Anthropic, which would refuse it.
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages, wherever they are | top-level `system` (texts joined by a blank line) |
//! | `user` text and `image_url` parts (`data:` or http(s) URLs) | `text` and `image` blocks |
//! | `assistant` content and `tool_calls` | `text` and `tool_use` blocks (`input` = the parsed `arguments`) |
//! | `tool` messages | `tool_result` blocks in a user turn |
//! | consecutive messages of one role | one turn (Anthropic needs alternating roles) |
//! | `tools` (`function`), `tool_choice`, `parallel_tool_calls: false` | `tools`, `tool_choice`, `disable_parallel_tool_use` |
//! | `stop` | `stop_sequences` |
//! | `temperature` (clamped to Anthropic's 0–1), `top_p` | the same |
//! | `user` | `metadata.user_id` |
//!
//! Refused with a 400 rather than silently changed, as `invalid_messages`: tool-call `arguments`
//! that are not a JSON object, image URLs that are neither `data:` nor http(s), image types
//! Anthropic cannot read, audio and file parts, and the legacy `function` role and assistant
//! `function_call` (legacy calls carry no ids, so results cannot be matched to calls; clients use
//! `tool_calls` and `tool` messages instead); as `invalid_json`: `n` other than 1 (Anthropic has
//! one choice per reply), the legacy `functions` / `function_call` parameters, and tools that
//! are not `function` tools.
//!
//! Adjusted to what Anthropic accepts: empty text is left out (it refuses empty text blocks, and a
//! turn left empty goes), empty tool-call `arguments` are `{}`, a user turn's tool results come
//! first, a final assistant turn (a prefill) loses its trailing whitespace, and `tool_choice` /
//! `parallel_tool_calls` are sent only with tools.

use crate::error::{ApiError, ErrorCode};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// The OpenAI request parameters that have no Anthropic counterpart: dropped, never forwarded.
/// (`n` is dropped when it is 1 and refused otherwise; the body's `model`, `max_tokens`,
/// `max_completion_tokens` and `stream` are replaced by the caller's values.)
pub const DROPPED_PARAMETERS: &[&str] = &[
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "seed",
    "response_format",
    "stream_options",
    "service_tier",
    "store",
    "metadata",
    "reasoning_effort",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "verbosity",
    "prompt_cache_key",
    "safety_identifier",
];

/// Image types the Messages API reads.
const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

/// The Messages API body for an OpenAI chat request body (already validated by policy).
///
/// Errors are 400s: `invalid_json` for request parameters Anthropic cannot serve (`n` other than
/// 1, `functions`, non-`function` tools, ill-typed `tool_choice`, `stop`, `temperature`,
/// `top_p`), `invalid_messages` for messages it cannot take (see the module documentation).
pub fn request_body(
    openai: &Map<String, Value>,
    model: &str,
    max_tokens: u32,
    stream: bool,
) -> Result<Bytes, ApiError> {
    match openai.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                "`n` must be 1 for this model",
            ))
        }
    }
    for legacy in ["functions", "function_call"] {
        if openai.get(legacy).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                format!("`{legacy}` is not supported for this model; use `tools` instead"),
            ));
        }
    }
    let (system, turns) = conversation(openai.get("messages"))?;
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("max_tokens".into(), max_tokens.into());
    body.insert("stream".into(), stream.into());
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    body.insert(
        "messages".into(),
        Value::Array(turns.into_iter().map(Turn::into_message).collect()),
    );
    let tools = tools(openai.get("tools"))?;
    if !tools.is_empty() {
        if let Some(choice) = tool_choice(openai)? {
            body.insert("tool_choice".into(), choice);
        }
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(stop) = stop_sequences(openai.get("stop"))? {
        body.insert("stop_sequences".into(), stop);
    }
    if let Some(t) = number(openai, "temperature")? {
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = number(openai, "top_p")? {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(Value::String(user)) = openai.get("user") {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    serde_json::to_vec(&Value::Object(body))
        .map(Bytes::from)
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Internal,
                "the upstream request could not be built",
            )
        })
}

/// One Anthropic turn being built: its role and content blocks.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

impl Turn {
    /// The message; a turn of one plain text block is written as a string.
    fn into_message(self) -> Value {
        let content = match self.blocks.as_slice() {
            [Value::Object(block)]
                if block.len() == 2 && block.get("type") == Some(&"text".into()) =>
            {
                block.get("text").cloned().unwrap_or_default()
            }
            _ => Value::Array(self.blocks),
        };
        json!({ "role": self.role, "content": content })
    }
}

/// The system texts and the alternating turns of `messages`.
fn conversation(messages: Option<&Value>) -> Result<(Vec<String>, Vec<Turn>), ApiError> {
    let Some(Value::Array(messages)) = messages else {
        return Err(invalid_messages("`messages` must be a non-empty array"));
    };
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(system_texts(i, content)?);
                continue;
            }
            "user" => ("user", user_blocks(i, content)?),
            "assistant" => ("assistant", assistant_blocks(i, message)?),
            "tool" => ("user", vec![tool_result(i, message)?]),
            "function" => {
                return Err(invalid_messages(&format!(
                    "messages[{i}]: the legacy `function` role is not supported for this model; \
                     use `tool` messages"
                )))
            }
            _ => {
                return Err(invalid_messages(&format!(
                    "messages[{i}].role is not one this model accepts"
                )))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(turn) if turn.role == role => turn.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    }
    if turns.is_empty() {
        return Err(invalid_messages(
            "the conversation needs a user or assistant message besides the system messages",
        ));
    }
    for turn in &mut turns {
        if turn.role == "user" {
            // Anthropic wants a turn's tool results before anything else in it.
            turn.blocks
                .sort_by_key(|b| b.get("type") != Some(&Value::from("tool_result")));
        }
    }
    // A last assistant turn is a prefill, which Anthropic refuses when it ends in whitespace.
    if let Some(turn) = turns.last_mut().filter(|t| t.role == "assistant") {
        if let Some(Value::String(text)) = turn.blocks.last_mut().and_then(|b| b.get_mut("text")) {
            text.truncate(text.trim_end().len());
        }
        turn.blocks
            .retain(|b| b.get("text").is_none_or(|t| t.as_str() != Some("")));
        if turn.blocks.is_empty() {
            turns.pop();
        }
    }
    if turns.is_empty() {
        return Err(invalid_messages(
            "the conversation needs a user or assistant message besides the system messages",
        ));
    }
    Ok((system, turns))
}

/// A system or developer message's texts (only text is allowed there).
fn system_texts(i: usize, content: &Value) -> Result<Vec<String>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| match part_type(part) {
                "text" => match part.get("text") {
                    Some(Value::String(t)) if t.is_empty() => None,
                    Some(Value::String(t)) => Some(Ok(t.clone())),
                    _ => Some(Err(invalid_messages(&format!(
                        "messages[{i}]: a text part needs a string `text`"
                    )))),
                },
                other => Some(Err(invalid_messages(&format!(
                    "messages[{i}]: a system message may hold only text parts, not `{other}`"
                )))),
            })
            .collect(),
        _ => Err(content_shape(i)),
    }
}

/// A user message's blocks: text and images.
fn user_blocks(i: usize, content: &Value) -> Result<Vec<Value>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(text_block(s).into_iter().collect()),
        Value::Array(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                match part_type(part) {
                    "text" => blocks.extend(text_block(part_text(i, part, "text")?)),
                    "image_url" => blocks.push(image_block(i, part)?),
                    other => {
                        return Err(invalid_messages(&format!(
                            "messages[{i}]: content parts of type `{other}` are not supported \
                             for this model"
                        )))
                    }
                }
            }
            Ok(blocks)
        }
        _ => Err(content_shape(i)),
    }
}

/// An assistant message's blocks: its text, then its tool calls as `tool_use` blocks.
fn assistant_blocks(i: usize, message: &Value) -> Result<Vec<Value>, ApiError> {
    if message.get("function_call").is_some_and(|v| !v.is_null()) {
        return Err(invalid_messages(&format!(
            "messages[{i}]: the legacy `function_call` is not supported for this model; use \
             `tool_calls`"
        )));
    }
    let mut blocks = Vec::new();
    match message.get("content").unwrap_or(&Value::Null) {
        Value::Null => {}
        Value::String(s) => blocks.extend(text_block(s)),
        Value::Array(parts) => {
            for part in parts {
                match part_type(part) {
                    "text" => blocks.extend(text_block(part_text(i, part, "text")?)),
                    "refusal" => blocks.extend(text_block(part_text(i, part, "refusal")?)),
                    other => {
                        return Err(invalid_messages(&format!(
                            "messages[{i}]: an assistant message may not hold `{other}` parts"
                        )))
                    }
                }
            }
        }
        _ => return Err(content_shape(i)),
    }
    if blocks.is_empty() {
        // A refusal the model gave earlier is what it said.
        if let Some(Value::String(refusal)) = message.get("refusal") {
            blocks.extend(text_block(refusal));
        }
    }
    match message.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                blocks.push(tool_use(i, j, call)?);
            }
        }
        Some(_) => {
            return Err(invalid_messages(&format!(
                "messages[{i}].tool_calls must be an array"
            )))
        }
    }
    Ok(blocks)
}

/// One OpenAI tool call as a `tool_use` block.
fn tool_use(i: usize, j: usize, call: &Value) -> Result<Value, ApiError> {
    let function = call.get("function");
    let (Some(id), Some(name)) = (
        call.get("id").and_then(Value::as_str),
        function.and_then(|f| f.get("name")).and_then(Value::as_str),
    ) else {
        return Err(invalid_messages(&format!(
            "messages[{i}].tool_calls[{j}] needs an `id` and a `function.name`"
        )));
    };
    let input = match function.and_then(|f| f.get("arguments")) {
        // No-argument calls are often sent with empty arguments.
        None | Some(Value::Null) => Some(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Some(Map::new()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(input)) => Some(input),
            _ => None,
        },
        Some(_) => None,
    };
    let Some(input) = input else {
        return Err(invalid_messages(&format!(
            "messages[{i}].tool_calls[{j}].function.arguments must be a JSON object"
        )));
    };
    Ok(json!({ "type": "tool_use", "id": id, "name": name, "input": input }))
}

/// A `tool` message as a `tool_result` block.
fn tool_result(i: usize, message: &Value) -> Result<Value, ApiError> {
    let Some(id) = message.get("tool_call_id").and_then(Value::as_str) else {
        return Err(invalid_messages(&format!(
            "messages[{i}] (a tool message) needs a string `tool_call_id`"
        )));
    };
    let text = match message.get("content").unwrap_or(&Value::Null) {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match part_type(part) {
                    "text" => texts.push(part_text(i, part, "text")?),
                    other => {
                        return Err(invalid_messages(&format!(
                            "messages[{i}]: a tool message may hold only text parts, not \
                             `{other}`"
                        )))
                    }
                }
            }
            texts.join("\n\n")
        }
        _ => return Err(content_shape(i)),
    };
    let mut block = json!({ "type": "tool_result", "tool_use_id": id });
    if !text.is_empty() {
        block["content"] = text.into();
    }
    Ok(block)
}

/// An `image_url` part as an `image` block: a `data:` URL inline, an http(s) URL by reference.
fn image_block(i: usize, part: &Value) -> Result<Value, ApiError> {
    let url = match part.get("image_url") {
        Some(Value::Object(image)) => image.get("url").and_then(Value::as_str),
        Some(Value::String(url)) => Some(url.as_str()),
        _ => None,
    };
    let Some(url) = url else {
        return Err(invalid_messages(&format!(
            "messages[{i}]: an `image_url` part needs `image_url.url`"
        )));
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((media_type, data)) = rest
            .split_once(',')
            .and_then(|(meta, data)| Some((meta.strip_suffix(";base64")?, data)))
        else {
            return Err(invalid_messages(&format!(
                "messages[{i}]: an image `data:` URL must be base64 (`data:<type>;base64,…`)"
            )));
        };
        if !IMAGE_TYPES.contains(&media_type) {
            return Err(invalid_messages(&format!(
                "messages[{i}]: images must be one of {}",
                IMAGE_TYPES.join(", ")
            )));
        }
        return Ok(json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        }));
    }
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("http" | "https")) {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    Err(invalid_messages(&format!(
        "messages[{i}]: an image URL must be a `data:` or http(s) URL"
    )))
}

/// `tools` as Anthropic tools (only `function` tools exist in both APIs).
fn tools(tools: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(invalid_json("`tools` must be an array")),
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let function = match (
                tool.get("type").and_then(Value::as_str),
                tool.get("function"),
            ) {
                (Some("function"), Some(Value::Object(f))) => f,
                _ => {
                    return Err(invalid_json(&format!(
                        "tools[{i}] must be a `function` tool (the only kind this model takes)"
                    )))
                }
            };
            let Some(name) = function.get("name").and_then(Value::as_str) else {
                return Err(invalid_json(&format!(
                    "tools[{i}].function.name must be a string"
                )));
            };
            let mut out = json!({
                "name": name,
                "input_schema": match function.get("parameters") {
                    Some(Value::Object(schema)) => Value::Object(schema.clone()),
                    _ => json!({ "type": "object", "properties": {} }),
                },
            });
            if let Some(Value::String(description)) = function.get("description") {
                out["description"] = description.as_str().into();
            }
            Ok(out)
        })
        .collect()
}

/// `tool_choice` and `parallel_tool_calls` as Anthropic's `tool_choice` (only sent with tools).
fn tool_choice(openai: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let mut choice = match openai.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({ "type": "auto" }),
            "required" => json!({ "type": "any" }),
            "none" => json!({ "type": "none" }),
            _ => {
                return Err(invalid_json(
                    "`tool_choice` must be auto, required, none or a function",
                ))
            }
        }),
        Some(Value::Object(o)) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) if o.get("type").and_then(Value::as_str) == Some("function") => {
                Some(json!({ "type": "tool", "name": name }))
            }
            _ => return Err(invalid_json("`tool_choice` must name a function")),
        },
        Some(_) => return Err(invalid_json("`tool_choice` must be a string or an object")),
    };
    match openai.get("parallel_tool_calls") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let choice = choice.get_or_insert_with(|| json!({ "type": "auto" }));
            if choice.get("type") != Some(&Value::from("none")) {
                choice["disable_parallel_tool_use"] = true.into();
            }
        }
        Some(_) => return Err(invalid_json("`parallel_tool_calls` must be a boolean")),
    }
    Ok(choice)
}

/// `stop` (a string or an array of strings) as `stop_sequences`.
fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, ApiError> {
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(json!([s]))),
        Some(Value::Array(a)) if a.is_empty() => Ok(None),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            Ok(Some(Value::Array(a.clone())))
        }
        Some(_) => Err(invalid_json(
            "`stop` must be a string or an array of strings",
        )),
    }
}

/// An optional number field.
fn number(openai: &Map<String, Value>, field: &str) -> Result<Option<f64>, ApiError> {
    match openai.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) => Ok(Some(n)),
            None => Err(invalid_json(&format!("`{field}` must be a number"))),
        },
    }
}

/// A content part's `type` (empty when it has none).
fn part_type(part: &Value) -> &str {
    part.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The string `field` of a content part.
fn part_text<'a>(i: usize, part: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    part.get(field).and_then(Value::as_str).ok_or_else(|| {
        invalid_messages(&format!(
            "messages[{i}]: a `{field}` part needs a string `{field}`"
        ))
    })
}

/// A text block, or nothing for empty text (Anthropic refuses empty text blocks).
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "type": "text", "text": text }))
}

fn content_shape(i: usize) -> ApiError {
    invalid_messages(&format!(
        "messages[{i}].content must be a string or an array of content parts"
    ))
}

fn invalid_messages(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidMessages, message)
}

fn invalid_json(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidJson, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(openai: Value) -> Result<Value, ApiError> {
        let Value::Object(openai) = openai else {
            panic!("test bodies are objects")
        };
        let bytes = request_body(&openai, "claude-sonnet-4-5", 1024, true)?;
        Ok(serde_json::from_slice(&bytes).unwrap())
    }

    fn code(result: Result<Value, ApiError>) -> (u16, &'static str) {
        let error = result.unwrap_err();
        (error.code.status(), error.code.as_str())
    }

    #[test]
    fn arguments_set_model_max_tokens_and_stream() {
        let out = translate(json!({
            "model": "gpt-4o", "max_tokens": 9, "max_completion_tokens": 8, "stream": false,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
                "messages": [{"role": "user", "content": "hi"}],
            })
        );
    }

    #[test]
    fn system_and_developer_messages_become_the_system_prompt() {
        let out = translate(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [
                {"type": "text", "text": "Answer in French."},
                {"type": "text", "text": "No emoji."},
            ]},
            {"role": "assistant", "content": "Salut"},
        ]}))
        .unwrap();
        assert_eq!(out["system"], "Be brief.\n\nAnswer in French.\n\nNo emoji.");
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Salut"},
            ])
        );
        let images_in_system = translate(json!({"messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "user", "content": "hi"},
        ]}));
        assert_eq!(code(images_in_system), (400, "invalid_messages"));
    }

    #[test]
    fn only_system_messages_is_refused() {
        let out = translate(json!({"messages": [{"role": "system", "content": "Be brief."}]}));
        assert_eq!(code(out), (400, "invalid_messages"));
        let empty = translate(json!({"messages": [
            {"role": "system", "content": "x"}, {"role": "user", "content": ""},
        ]}));
        assert_eq!(code(empty), (400, "invalid_messages"));
    }

    #[test]
    fn consecutive_roles_merge_into_alternating_turns() {
        let out = translate(json!({"messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "system", "content": "between"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "one"}, {"type": "text", "text": "two"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "three"}, {"type": "text", "text": "four"},
                ]},
                {"role": "user", "content": "five"},
            ])
        );
        assert_eq!(out["system"], "between");
    }

    #[test]
    fn tool_calls_and_results_round_trip() {
        let out = translate(json!({"messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"location\":\"Rome\"}"}},
                {"id": "call_3", "type": "function", "function": {"name": "now", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
            {"role": "tool", "tool_call_id": "call_3", "content": ""},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_4", "type": "function", "function": {"name": "now", "arguments": "{}"}},
            ]},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"location": "Rome"}},
                    {"type": "tool_use", "id": "call_3", "name": "now", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "21C"},
                    {"type": "tool_result", "tool_use_id": "call_3"},
                    {"type": "text", "text": "Thanks"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_4", "name": "now", "input": {}},
                ]},
            ])
        );
    }

    #[test]
    fn tool_results_go_first_in_their_turn() {
        let out = translate(json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ]},
            {"role": "user", "content": "also"},
            {"role": "tool", "tool_call_id": "c", "content": "done"},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"][1]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "c", "content": "done"},
                {"type": "text", "text": "also"},
            ])
        );
    }

    #[test]
    fn bad_tool_arguments_are_refused() {
        for arguments in ["[1, 2]", "{\"a\":", "\"text\"", "3"] {
            let out = translate(json!({"messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}},
                ]},
            ]}));
            assert_eq!(code(out), (400, "invalid_messages"), "{arguments}");
        }
        let no_id = translate(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]},
        ]}));
        assert_eq!(code(no_id), (400, "invalid_messages"));
        let no_call_id = translate(json!({"messages": [{"role": "tool", "content": "x"}]}));
        assert_eq!(code(no_call_id), (400, "invalid_messages"));
    }

    #[test]
    fn legacy_functions_are_refused() {
        let function_role = translate(json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "function", "name": "f", "content": "x"},
        ]}));
        assert_eq!(code(function_role), (400, "invalid_messages"));
        let function_call = translate(json!({"messages": [
            {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
        ]}));
        assert_eq!(code(function_call), (400, "invalid_messages"));
        let functions = translate(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "functions": [{"name": "f"}],
        }));
        assert_eq!(code(functions), (400, "invalid_json"));
    }

    #[test]
    fn images_from_data_and_https_urls() {
        let out = translate(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]}]}))
        .unwrap();
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ])
        );
        for url in [
            "ftp://example.com/cat.jpg",
            "data:image/png,raw",
            "data:image/bmp;base64,Qk0=",
            "cat.jpg",
        ] {
            let out = translate(json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
            ]}]}));
            assert_eq!(code(out), (400, "invalid_messages"), "{url}");
        }
        let audio = translate(json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
        ]}]}));
        assert_eq!(code(audio), (400, "invalid_messages"));
    }

    #[test]
    fn tools_and_tool_choice_map() {
        let base = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {
                    "name": "get_weather", "description": "Weather now",
                    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                                   "required": ["location"]},
                    "strict": true,
                }},
                {"type": "function", "function": {"name": "now"}},
            ],
        });
        let out = translate(base.clone()).unwrap();
        assert_eq!(
            out["tools"],
            json!([
                {"name": "get_weather", "description": "Weather now",
                 "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                                  "required": ["location"]}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert!(out.get("tool_choice").is_none());
        let with = |choice: Value, parallel: Value| {
            let mut body = base.clone();
            body["tool_choice"] = choice;
            body["parallel_tool_calls"] = parallel;
            translate(body).unwrap().get("tool_choice").cloned()
        };
        assert_eq!(
            with(json!("auto"), Value::Null),
            Some(json!({"type": "auto"}))
        );
        assert_eq!(
            with(json!("required"), json!(true)),
            Some(json!({"type": "any"}))
        );
        assert_eq!(
            with(json!("none"), Value::Null),
            Some(json!({"type": "none"}))
        );
        assert_eq!(
            with(
                json!({"type": "function", "function": {"name": "now"}}),
                Value::Null
            ),
            Some(json!({"type": "tool", "name": "now"}))
        );
        assert_eq!(
            with(Value::Null, json!(false)),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            with(json!("required"), json!(false)),
            Some(json!({"type": "any", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            with(
                json!({"type": "function", "function": {"name": "now"}}),
                json!(false)
            ),
            Some(json!({"type": "tool", "name": "now", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            with(json!("none"), json!(false)),
            Some(json!({"type": "none"}))
        );
        // Without tools there is nothing to choose from.
        let no_tools = translate(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tool_choice": "required", "parallel_tool_calls": false,
        }))
        .unwrap();
        assert!(no_tools.get("tool_choice").is_none() && no_tools.get("tools").is_none());
        let mut custom = base.clone();
        custom["tools"] = json!([{"type": "custom", "custom": {"name": "x"}}]);
        assert_eq!(code(translate(custom)), (400, "invalid_json"));
    }

    #[test]
    fn stop_sampling_and_user() {
        let out = translate(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "stop": "END", "temperature": 1.7, "top_p": 0.9, "user": "u-42",
            "metadata": {"team": "x"},
        }))
        .unwrap();
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["temperature"], json!(1.0));
        assert_eq!(out["top_p"], json!(0.9));
        assert_eq!(out["metadata"], json!({"user_id": "u-42"}));
        let out = translate(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "stop": ["a", "b"], "temperature": 0.2,
        }))
        .unwrap();
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
        assert_eq!(out["temperature"], json!(0.2));
        assert!(out.get("metadata").is_none());
    }

    #[test]
    fn dropped_parameters_are_never_forwarded() {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "top_k": 3});
        for name in DROPPED_PARAMETERS {
            body[*name] = match *name {
                "n" => json!(1),
                "metadata" => json!({"k": "v"}),
                "stream_options" => json!({"include_usage": true}),
                _ => json!("x"),
            };
        }
        let out = translate(body).unwrap();
        for name in DROPPED_PARAMETERS {
            assert!(out.get(*name).is_none(), "{name} was forwarded");
        }
        assert!(out.get("top_k").is_none());
        let keys: Vec<&str> = out
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["max_tokens", "messages", "model", "stream"]);
    }

    #[test]
    fn more_than_one_choice_is_refused() {
        let out = translate(json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}));
        assert_eq!(code(out), (400, "invalid_json"));
    }

    #[test]
    fn a_prefill_loses_its_trailing_whitespace() {
        let out = translate(json!({"messages": [
            {"role": "user", "content": "Pick one"},
            {"role": "assistant", "content": "The answer is ( "},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"][1],
            json!({"role": "assistant", "content": "The answer is ("})
        );
    }
}
