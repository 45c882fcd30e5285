//! The body an OpenAI-format provider receives, written straight from the client's parsed body:
//! its fields in key order (serde_json's map keeps keys sorted), with the model, the output cap
//! and the stream options replaced by the gateway's, and nothing of the body copied first (a
//! long conversation is serialized once, not cloned and then serialized).

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use smallvec::SmallVec;

/// The client's body as sent upstream.
pub(super) struct UpstreamBody<'a> {
    pub body: &'a Map<String, Value>,
    /// The provider's name for the model, when it is not the name the client sent.
    pub model: Option<&'a str>,
    /// The field that carries the cap (the one the client used).
    pub cap_field: &'static str,
    pub max_tokens: u32,
    /// Streams ask for the usage report; other requests carry no stream options at all.
    pub stream: bool,
}

/// A value the gateway writes in place of the client's.
enum Own<'a> {
    Text(&'a str),
    Count(u32),
    True,
    /// `stream_options`: the client's options (when they were an object) with `include_usage`
    /// switched on.
    StreamOptions(Option<&'a Map<String, Value>>),
}

impl Serialize for Own<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Own::Text(text) => serializer.serialize_str(text),
            Own::Count(n) => serializer.serialize_u32(*n),
            Own::True => serializer.serialize_bool(true),
            Own::StreamOptions(client) => {
                let empty = Map::new();
                let mut map = serializer.serialize_map(None)?;
                write_merged(
                    &mut map,
                    client.unwrap_or(&empty),
                    &mut [("include_usage", Own::True)],
                    |key| key == "include_usage",
                )?;
                map.end()
            }
        }
    }
}

impl Serialize for UpstreamBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let options = match self.body.get("stream_options") {
            Some(Value::Object(options)) => Some(options),
            _ => None,
        };
        // At most three: held in place, not allocated per request.
        let mut own: SmallVec<[(&str, Own<'_>); 3]> = SmallVec::new();
        if let Some(model) = self.model {
            own.push(("model", Own::Text(model)));
        }
        own.push((self.cap_field, Own::Count(self.max_tokens)));
        if self.stream {
            own.push(("stream_options", Own::StreamOptions(options)));
        }
        let mut map = serializer.serialize_map(None)?;
        write_merged(&mut map, self.body, &mut own, |key| {
            matches!(
                key,
                "max_tokens" | "max_completion_tokens" | "stream_options"
            ) || (key == "model" && self.model.is_some())
        })?;
        map.end()
    }
}

/// Writes `client`'s entries but those `replaced` drops, and `own`'s entries, all in key order
/// (as a sorted map holding both would).
fn write_merged<M: SerializeMap>(
    map: &mut M,
    client: &Map<String, Value>,
    own: &mut [(&str, Own<'_>)],
    replaced: impl Fn(&str) -> bool,
) -> Result<(), M::Error> {
    own.sort_unstable_by_key(|(key, _)| *key);
    let mut own = own.iter().peekable();
    for (key, value) in client {
        while let Some((own_key, own_value)) = own.next_if(|(k, _)| *k < key.as_str()) {
            map.serialize_entry(own_key, own_value)?;
        }
        if !replaced(key) {
            map.serialize_entry(key, value)?;
        }
    }
    for (own_key, own_value) in own {
        map.serialize_entry(own_key, own_value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The body as the gateway built it before: the client's map cloned and edited.
    fn cloned_and_edited(
        body: &Map<String, Value>,
        model: Option<&str>,
        cap_field: &str,
        max_tokens: u32,
        stream: bool,
    ) -> Vec<u8> {
        let mut body = body.clone();
        if let Some(model) = model {
            body.insert("model".into(), Value::from(model));
        }
        body.remove("max_tokens");
        body.remove("max_completion_tokens");
        body.insert(cap_field.into(), Value::from(max_tokens));
        if !stream {
            body.remove("stream_options");
        } else {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(o) = options {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        serde_json::to_vec(&body).unwrap()
    }

    fn written(
        body: &Map<String, Value>,
        model: Option<&str>,
        cap_field: &'static str,
        max_tokens: u32,
        stream: bool,
    ) -> Vec<u8> {
        serde_json::to_vec(&UpstreamBody {
            body,
            model,
            cap_field,
            max_tokens,
            stream,
        })
        .unwrap()
    }

    #[test]
    fn replaces_the_gateways_fields_in_key_order() {
        let body = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5000,
            "model": "gpt-4o",
            "stream": true,
            "stream_options": {"include_usage": false, "x": 1},
            "temperature": 0.2,
        });
        let body = body.as_object().unwrap();
        assert_eq!(
            String::from_utf8(written(body, Some("gpt-4o-2024"), "max_tokens", 77, true)).unwrap(),
            r#"{"max_tokens":77,"messages":[{"content":"hi","role":"user"}],"model":"gpt-4o-2024","stream":true,"stream_options":{"include_usage":true,"x":1},"temperature":0.2}"#
        );
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("model".to_string()),
            Just("max_tokens".to_string()),
            Just("max_completion_tokens".to_string()),
            Just("stream_options".to_string()),
            Just("include_usage".to_string()),
            Just("messages".to_string()),
            "[a-z_]{1,12}",
            "[A-Z0-9~]{1,3}",
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z\"\\\\é ]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(key(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn writes_exactly_what_the_cloned_and_edited_body_serializes_to(
            body in prop::collection::btree_map(key(), value(), 0..8),
            model in prop::option::of("[a-z0-9-]{1,10}"),
            completion_field in any::<bool>(),
            max_tokens in any::<u32>(),
            stream in any::<bool>(),
        ) {
            let body: Map<String, Value> = body.into_iter().collect();
            let cap_field = if completion_field { "max_completion_tokens" } else { "max_tokens" };
            prop_assert_eq!(
                written(&body, model.as_deref(), cap_field, max_tokens, stream),
                cloned_and_edited(&body, model.as_deref(), cap_field, max_tokens, stream)
            );
        }
    }
}
