//! Reading a stream's repeat chunks without parsing them again.
//!
//! A provider writes every content chunk of a stream the same way: the same id, model, created
//! time and choice, in the same order and spacing, around a different piece of text (and, from
//! OpenAI, a different `obfuscation` padding string). [`ChunkReader`] parses a chunk in full
//! ([`Payload::parse`]) and, when it is such a plain content chunk, remembers its bytes outside
//! those variable strings. A later payload made of exactly those bytes around well-formed JSON
//! strings is that chunk with other strings, so its view is built without a parse: the bytes are
//! compared, and the strings scanned (escaped ones decoded by `serde_json`). Anything else —
//! another layout, a finish or usage chunk, a string that is not well-formed — is parsed in full,
//! so what is read never differs from [`Payload::parse`].

use super::chunk::{ChoiceView, ChunkView, DeltaView, Padding, Payload, Text};
use std::borrow::Cow;
use std::ops::Range;

/// Layouts learned in a row without a chunk read from any of them, after which a stream stops
/// learning: its provider writes each content chunk differently (a per-chunk id or time), and
/// learning would only add work to every full parse.
const MAX_UNUSED_LAYOUTS: u8 = 4;

/// Reads one stream's payloads, remembering the layout of its last plain content chunk.
#[derive(Debug, Default)]
pub struct ChunkReader {
    layout: Option<Layout>,
    /// Layouts learned since a chunk was last read from one.
    unused: u8,
}

impl ChunkReader {
    /// What `data` is; the same answer as [`Payload::parse`].
    pub fn parse<'a>(&mut self, data: &'a str) -> Payload<'a> {
        if let Some(view) = self.layout.as_ref().and_then(|l| l.read(data)) {
            self.unused = 0;
            return Payload::Chunk(view);
        }
        let payload = Payload::parse(data);
        if self.unused >= MAX_UNUSED_LAYOUTS {
            return payload;
        }
        if let Payload::Chunk(view) = &payload {
            if let Some(layout) = Layout::learn(data, view) {
                self.layout = Some(layout);
                self.unused += 1;
            }
        }
        payload
    }
}

/// Which variable string a hole holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hole {
    /// The choice's `delta.content`.
    Content,
    /// The top-level `obfuscation` padding (read by nothing).
    Padding,
}

/// A string of the learned chunk the view reads (id, model): where it lies in the learned bytes.
#[derive(Debug, Clone)]
struct Fixed {
    /// The literal part holding it.
    part: usize,
    /// Its bytes within that part.
    within: Range<usize>,
}

/// A plain content chunk's bytes outside its variable strings.
#[derive(Debug)]
struct Layout {
    /// The bytes before the first hole, between holes, and after the last: each hole's
    /// opening quote ends the part before it, and its closing quote starts the part after it.
    parts: Vec<Box<str>>,
    /// The holes, in order (`parts.len() - 1` of them).
    holes: Vec<Hole>,
    index: Option<u64>,
    id: Option<Fixed>,
    model: Option<Fixed>,
    created: Option<u64>,
}

/// Where `text` (a string borrowed from `data`) lies in `data`, if it does.
fn span_in(data: &str, text: &str) -> Option<Range<usize>> {
    let start = (text.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    let end = start.checked_add(text.len())?;
    (end <= data.len()).then_some(start..end)
}

/// The text of a string read without decoding (it held no escapes): it lies in the chunk.
fn borrowed<'a>(text: &Cow<'a, str>) -> Option<&'a str> {
    match text {
        Cow::Borrowed(text) => Some(text),
        Cow::Owned(_) => None,
    }
}

/// The span of `text`, a string of `data`, strictly between two quotes; `None` when it does not
/// lie there.
fn quoted_span(data: &str, text: &str) -> Option<Range<usize>> {
    let span = span_in(data, text)?;
    let bytes = data.as_bytes();
    let quoted = span.start > 0
        && bytes.get(span.start - 1) == Some(&b'"')
        && bytes.get(span.end) == Some(&b'"');
    quoted.then_some(span)
}

impl Layout {
    /// The layout of `view` (read from `data`) when it is a plain content chunk: one choice
    /// whose delta holds only a `content` string, no finish reason, no usage, and every string
    /// the view keeps borrowed from `data`.
    fn learn(data: &str, view: &ChunkView<'_>) -> Option<Layout> {
        if view.usage.is_some() || view.error.is_some() {
            return None;
        }
        let [choice] = view.choices.as_deref()? else {
            return None;
        };
        let delta = choice.delta.as_ref()?;
        if choice.finish_reason.is_some()
            || delta.refusal.is_some()
            || delta.tool_calls.is_some()
            || delta.other_keys
        {
            return None;
        }
        let mut holes = vec![(
            quoted_span(data, borrowed(delta.content.as_ref()?)?)?,
            Hole::Content,
        )];
        if let Some(padding) = view.obfuscation.0 {
            holes.push((quoted_span(data, padding)?, Hole::Padding));
        }
        holes.sort_by_key(|(span, _)| span.start);
        let mut parts: Vec<Box<str>> = Vec::with_capacity(holes.len() + 1);
        let mut part_starts = Vec::with_capacity(holes.len() + 1);
        let mut at = 0;
        for (span, _) in &holes {
            parts.push(data.get(at..span.start)?.into());
            part_starts.push(at);
            at = span.end;
        }
        parts.push(data.get(at..)?.into());
        part_starts.push(at);
        // The fixed strings the view reads lie inside one part each (holes are other strings).
        let fixed = |text: &Option<Text<'_>>| -> Option<Option<Fixed>> {
            let Some(Text(text)) = text else {
                return Some(None);
            };
            let span = quoted_span(data, borrowed(text)?)?;
            let part = part_starts.iter().rposition(|&s| s <= span.start)?;
            let within = span.start - part_starts[part]..span.end - part_starts[part];
            (within.end <= parts[part].len()).then_some(Some(Fixed { part, within }))
        };
        let (id, model) = (fixed(&view.id)?, fixed(&view.model)?);
        Some(Layout {
            parts,
            holes: holes.into_iter().map(|(_, hole)| hole).collect(),
            index: choice.index,
            id,
            model,
            created: view.created,
        })
    }

    /// `data`'s view when it is this layout around well-formed strings.
    fn read<'a>(&self, data: &'a str) -> Option<ChunkView<'a>> {
        let mut part_starts = [0usize; 3];
        let mut content = None;
        let mut padding = None;
        let mut at = 0;
        for (k, part) in self.parts.iter().enumerate() {
            let rest = data.get(at..)?;
            if !rest.starts_with(part.as_ref()) {
                return None;
            }
            *part_starts.get_mut(k)? = at;
            at += part.len();
            let Some(hole) = self.holes.get(k) else {
                break;
            };
            let (text, end) = read_string(data, at)?;
            match hole {
                Hole::Content => content = Some(text),
                // An escaped padding string is not kept, as in a full parse.
                Hole::Padding => {
                    padding = match text {
                        Cow::Borrowed(text) => Some(text),
                        Cow::Owned(_) => None,
                    }
                }
            }
            at = end;
        }
        if at != data.len() {
            return None;
        }
        let fixed = |fixed: &Option<Fixed>| {
            fixed.as_ref().and_then(|f| {
                let start = part_starts[f.part];
                let text = data.get(start + f.within.start..start + f.within.end)?;
                Some(Text(Cow::Borrowed(text)))
            })
        };
        Some(ChunkView {
            id: fixed(&self.id),
            model: fixed(&self.model),
            created: self.created,
            choices: Some(smallvec::smallvec![ChoiceView {
                index: self.index,
                delta: Some(DeltaView {
                    content: Some(content?),
                    ..DeltaView::default()
                }),
                finish_reason: None,
            }]),
            usage: None,
            error: None,
            obfuscation: Padding(padding),
        })
    }
}

/// The JSON string whose text starts at `start` (just past its opening quote) and the index of
/// its closing quote; `None` when it is not a well-formed string there.
fn read_string(data: &str, start: usize) -> Option<(Cow<'_, str>, usize)> {
    let bytes = data.as_bytes();
    let tail = bytes.get(start..)?;
    let stop = tail
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    match tail[stop] {
        b'"' => Some((Cow::Borrowed(data.get(start..start + stop)?), start + stop)),
        b'\\' => {
            // Find the closing quote past the escapes; serde_json checks and decodes them.
            let mut i = start + stop;
            while *bytes.get(i)? != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let literal = data.get(start - 1..=i)?;
            let text = serde_json::from_str::<String>(literal).ok()?;
            Some((Cow::Owned(text), i))
        }
        _ => None, // a raw control character: not JSON
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The view as `Payload::parse` would give it, in a comparable form.
    fn described(payload: &Payload<'_>) -> String {
        format!("{payload:?}")
    }

    /// Reads `chunks` in order through one reader, checking each against a full parse, and
    /// returns how many were read from the layout (without a parse).
    fn read_all(chunks: &[String]) -> usize {
        let mut reader = ChunkReader::default();
        let mut from_layout = 0;
        for chunk in chunks {
            let expected = described(&Payload::parse(chunk));
            from_layout += usize::from(
                reader
                    .layout
                    .as_ref()
                    .is_some_and(|l| l.read(chunk).is_some()),
            );
            assert_eq!(described(&reader.parse(chunk)), expected, "{chunk}");
        }
        from_layout
    }

    fn openai(text: &str, padding: &str) -> String {
        format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{{"index":0,"delta":{{"content":{}}},"logprobs":null,"finish_reason":null}}],"usage":null,"obfuscation":"{padding}"}}"#,
            serde_json::to_string(text).unwrap_or_default()
        )
    }

    #[test]
    fn repeat_content_chunks_are_read_from_the_layout() {
        let chunks = vec![
            openai("Hello", "ab"),
            openai(" world", "x"),
            openai("", "longer-padding"),
            openai("line\nbreak \"quoted\" é \u{1F600}", "p"),
            openai(" again", ""),
        ];
        // The first is parsed and learned; the other four are read from its layout.
        assert_eq!(read_all(&chunks), 4);
        let mut reader = ChunkReader::default();
        reader.parse(&chunks[0]);
        let Payload::Chunk(view) = reader.parse(&chunks[1]) else {
            panic!("expected a chunk")
        };
        assert_eq!(view.id, Some(Text(Cow::Borrowed("chatcmpl-1"))));
        assert_eq!(view.model, Some(Text(Cow::Borrowed("gpt-4o"))));
        assert_eq!(view.created, Some(7));
        let content = &view.choices()[0].delta.as_ref().unwrap().content;
        assert!(matches!(content, Some(Cow::Borrowed(" world"))));
    }

    #[test]
    fn anything_off_the_layout_is_parsed_in_full() {
        let base = openai("Hello", "ab");
        let variants = [
            // Another id, a finish reason, a usage report, an error, [DONE].
            base.replace("chatcmpl-1", "chatcmpl-2"),
            base.replace(r#""finish_reason":null"#, r#""finish_reason":"stop""#),
            base.replace(
                r#""usage":null"#,
                r#""usage":{"prompt_tokens":1,"completion_tokens":2}"#,
            ),
            base.replace(r#""usage":null"#, r#""error":{"message":"x"}"#),
            "[DONE]".to_string(),
            // A string that is not JSON: a raw control character, a bad escape, an unpaired
            // surrogate, a quote that ends the string early.
            base.replace("Hello", "a\u{1}b"),
            base.replace("Hello", "a\\qb"),
            base.replace("Hello", "a\\ud800b"),
            base.replace("Hello", "a\"b"),
            // Trailing bytes, a cut chunk, a duplicated key after the content.
            format!("{base} "),
            base[..base.len() - 1].to_string(),
            base.replace(r#","logprobs":null"#, r#","logprobs":null,"index":3"#),
        ];
        for variant in variants {
            // Read after the base chunk: parsed in full, the same as without a layout.
            assert_eq!(read_all(&[base.clone(), variant.clone()]), 0, "{variant}");
        }
        assert_eq!(read_all(&[base.clone(), base.clone()]), 1);
    }

    #[test]
    fn chunks_that_do_not_qualify_are_not_learned() {
        let mut reader = ChunkReader::default();
        // A role chunk, a tool call, an escaped id: parsed, not remembered.
        for chunk in [
            r#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"id":"c\u0031","choices":[{"index":0,"delta":{"content":"x"}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"x"}},{"index":1,"delta":{"content":"y"}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"a\nb"}}]}"#,
        ] {
            assert!(matches!(reader.parse(chunk), Payload::Chunk(_)), "{chunk}");
            assert!(reader.layout.is_none(), "{chunk}");
        }
        // A model written after the content is found in the part after it.
        let late =
            |t: &str| format!(r#"{{"choices":[{{"delta":{{"content":"{t}"}}}}],"model":"m1"}}"#);
        assert_eq!(read_all(&[late("a"), late("bb"), late("")]), 2);
        let (first, second) = (late("a"), late("bbb"));
        let mut reader = ChunkReader::default();
        reader.parse(&first);
        let Payload::Chunk(view) = reader.parse(&second) else {
            panic!("expected a chunk")
        };
        assert_eq!(view.model, Some(Text(Cow::Borrowed("m1"))));
    }

    #[test]
    fn a_stream_whose_chunks_never_repeat_stops_learning() {
        let chunks: Vec<String> = (0..10)
            .map(|i| openai("Hello", "ab").replace("chatcmpl-1", &format!("chatcmpl-{i}")))
            .collect();
        assert_eq!(read_all(&chunks), 0);
        let mut reader = ChunkReader::default();
        for chunk in &chunks {
            reader.parse(chunk);
        }
        assert_eq!(reader.unused, MAX_UNUSED_LAYOUTS);
        // The last layout learned is the fourth chunk's: the later ones were not learned.
        assert!(reader
            .layout
            .as_ref()
            .is_some_and(|l| l.read(&chunks[3]).is_some()));
        // A layout that is read from keeps being learned after misses.
        let mut reader = ChunkReader::default();
        for chunk in [&chunks[0], &chunks[1], &chunks[2], &chunks[2], &chunks[5]] {
            reader.parse(chunk);
        }
        assert_eq!(reader.unused, 1);
    }

    fn json_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ a-z]{0,8}",
            any::<String>(),
            prop::collection::vec(
                prop_oneof![Just('"'), Just('\\'), Just('\n'), Just('é')],
                0..4
            )
            .prop_map(|c| c.into_iter().collect()),
        ]
    }

    /// A chunk of one of a few layouts, its strings escaped as JSON, then maybe edited at one
    /// byte (which may break it in any way).
    fn chunk() -> impl Strategy<Value = String> {
        (
            0..3usize,
            json_text(),
            json_text(),
            prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        )
            .prop_map(|(layout, text, padding, edit)| {
                let text = serde_json::to_string(&text).unwrap_or_default();
                let padding = serde_json::to_string(&padding).unwrap_or_default();
                let mut chunk = match layout {
                    0 => format!(
                        r#"{{"id":"c","model":"m","created":1,"choices":[{{"index":0,"delta":{{"content":{text}}},"finish_reason":null}}],"obfuscation":{padding}}}"#
                    ),
                    1 => format!(
                        r#"{{"choices":[{{"delta":{{"content":{text}}}}}],"obfuscation":{padding},"id":"c"}}"#
                    ),
                    _ => format!(
                        r#"{{"id":"c","choices":[{{"index":0,"delta":{{"content":{text}}},"finish_reason":"stop"}}]}}"#
                    ),
                }
                .into_bytes();
                if let Some((at, byte)) = edit {
                    let i = at.index(chunk.len());
                    chunk[i] = byte;
                }
                String::from_utf8_lossy(&chunk).into_owned()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn reads_what_a_full_parse_reads(chunks in prop::collection::vec(chunk(), 1..12)) {
            read_all(&chunks);
        }
    }
}
