//! Server-Sent Events: an incremental parser for the upstream byte stream and the encoder for
//! what the client receives.
//!
//! The parser follows the WHATWG event-stream rules: lines end in CR, LF or CRLF (a CRLF may be
//! split across reads); `:` lines are comments; `field: value` strips one leading space;
//! several `data` lines join with `\n`; a blank line dispatches the event. Unlike a browser it
//! also yields a last event that lacks its blank line when the stream ends ([`SseParser::finish`]).
//! Input is buffered as bytes and decoded only per event, so a read may end anywhere, even
//! inside a UTF-8 sequence. Memory is bounded by `max_event_bytes`.

use bytes::Bytes;

/// One dispatched event. `id` and `retry` fields are dropped (OpenAI streams never need them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, when present.
    pub event: Option<String>,
    /// The joined `data:` lines.
    pub data: String,
}

/// The upstream broke the framing rules this gateway can live with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an upstream event exceeded {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// Incremental parser: feed it reads as they come.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    event: Option<String>,
    after_cr: bool,
    at_start: bool,
    max_event_bytes: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event: None,
            after_cr: false,
            at_start: true,
            max_event_bytes,
        }
    }

    /// Parses `input`, pushing every event it completes onto `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.after_cr && !input.is_empty() {
            self.after_cr = false;
            if let Some(rest) = input.strip_prefix(b"\n") {
                input = rest;
            }
        }
        while !input.is_empty() {
            match memchr::memchr2(b'\n', b'\r', input) {
                None => {
                    self.push_line_bytes(input)?;
                    break;
                }
                Some(i) => {
                    let line = &input[..i];
                    if self.line.is_empty() && !self.at_start {
                        // A whole line in this read: read in place, not copied first.
                        self.check_size(line.len())?;
                        self.take_line(line, out);
                    } else {
                        self.push_line_bytes(line)?;
                        self.end_line(out);
                    }
                    let was_cr = input[i] == b'\r';
                    input = &input[i + 1..];
                    if was_cr {
                        match input.first() {
                            Some(b'\n') => input = &input[1..],
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The stream ended: completes a last line and a last event without their terminators.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.line.is_empty() {
            self.end_line(out);
        }
        self.dispatch(out);
        self.after_cr = false;
    }

    /// Refuses `more` bytes of the current line if the event would pass its bound.
    fn check_size(&self, more: usize) -> Result<(), SseError> {
        if self.line.len() + self.data.len() + more > self.max_event_bytes {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        self.check_size(bytes.len())?;
        self.line.extend_from_slice(bytes);
        if self.at_start {
            if self.line.starts_with(BOM) {
                self.line.drain(..BOM.len());
                self.at_start = false;
            } else if !BOM.starts_with(&self.line) {
                self.at_start = false;
            }
        }
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let mut line = std::mem::take(&mut self.line);
        self.take_line(&line, out);
        line.clear();
        self.line = line;
    }

    /// Acts on one complete line (without its terminator).
    fn take_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        self.at_start = false;
        if line.is_empty() {
            self.dispatch(out);
        } else if line[0] != b':' {
            let (field, value) = match memchr::memchr(b':', line) {
                Some(i) => {
                    let value = &line[i + 1..];
                    (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
                b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: self.event.take(),
                data: String::from_utf8(std::mem::take(&mut self.data))
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            });
        }
        self.event = None;
        self.data.clear();
        self.has_data = false;
    }
}

/// Encodes one `data` event for the client: a `data: ` line per line of `data`, then a blank line.
pub fn encode_data(data: &str) -> Bytes {
    // Exactly the frame's length: a full `Vec` becomes `Bytes` without a second allocation.
    let mut out = Vec::with_capacity(frame_len(data));
    for line in data.split('\n') {
        out.extend_from_slice(DATA_PREFIX);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

const DATA_PREFIX: &[u8] = b"data: ";

/// The length of [`encode_data`]'s frame of `data`: each line with its prefix and terminator
/// (the line breaks of `data` become terminators), then the blank line.
fn frame_len(data: &str) -> usize {
    let lines = 1 + memchr::memchr_iter(b'\n', data.as_bytes()).count();
    data.len() + lines * DATA_PREFIX.len() + 2
}

/// The stream terminator OpenAI clients wait for.
pub const DONE: &str = "[DONE]";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    fn data(d: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: d.into(),
        }
    }

    #[test]
    fn handles_every_line_ending_comments_and_multiline_data() {
        let input = b": keep-alive\r\ndata: one\r\n\r\ndata:two\rdata:  three\r\revent: x\ndata: {}\n\nid: 7\nretry: 5\ndata: last";
        let events = parse_chunks(&[input]);
        assert_eq!(
            events,
            vec![
                data("one"),
                data("two\n three"),
                SseEvent {
                    event: Some("x".into()),
                    data: "{}".into()
                },
                data("last"),
            ]
        );
    }

    #[test]
    fn crlf_split_across_reads_is_one_line_end() {
        let events = parse_chunks(&[b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"]);
        assert_eq!(events, vec![data("a"), data("b")]);
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let whole = "data: héllo 🦀\n\n".as_bytes();
        for i in 0..whole.len() {
            assert_eq!(
                parse_chunks(&[&whole[..i], &whole[i..]]),
                vec![data("héllo 🦀")]
            );
        }
    }

    #[test]
    fn leading_bom_is_skipped_even_when_split() {
        let whole = b"\xEF\xBB\xBFdata: x\n\n";
        for i in 0..whole.len() {
            assert_eq!(parse_chunks(&[&whole[..i], &whole[i..]]), vec![data("x")]);
        }
    }

    #[test]
    fn empty_data_field_still_dispatches_and_empty_events_do_not() {
        assert_eq!(parse_chunks(&[b"data\n\n\n\nevent: y\n\n"]), vec![data("")]);
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        assert!(p.feed(b"data: 0123456789abcdef", &mut out).is_err());
        let mut p = SseParser::new(16);
        p.feed(b"data: 0123456789\n", &mut out).unwrap();
        assert!(p.feed(b"data: 0123456789\n", &mut out).is_err());
    }

    #[test]
    fn encoder_round_trips_multiline_data() {
        let bytes = encode_data("a\nb");
        assert_eq!(&bytes[..], b"data: a\ndata: b\n\n");
        assert_eq!(parse_chunks(&[&bytes]), vec![data("a\nb")]);
    }

    #[derive(Debug, Clone)]
    enum Ending {
        Lf,
        Cr,
        CrLf,
    }

    impl Ending {
        fn bytes(&self) -> &'static [u8] {
            match self {
                Ending::Lf => b"\n",
                Ending::Cr => b"\r",
                Ending::CrLf => b"\r\n",
            }
        }
    }

    fn ending() -> impl Strategy<Value = Ending> {
        prop_oneof![Just(Ending::Lf), Just(Ending::Cr), Just(Ending::CrLf)]
    }

    /// Events as (optional comment, data lines, ending per line).
    fn stream() -> impl Strategy<Value = (Vec<(bool, Vec<String>, Ending)>, bool)> {
        let line = "[^\r\n]{0,24}";
        let event = (any::<bool>(), prop::collection::vec(line, 1..4), ending());
        (prop::collection::vec(event, 0..8), any::<bool>())
    }

    fn render(
        events: &[(bool, Vec<String>, Ending)],
        last_blank: bool,
    ) -> (Vec<u8>, Vec<SseEvent>) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (i, (comment, lines, end)) in events.iter().enumerate() {
            if *comment {
                bytes.extend_from_slice(b": ping");
                bytes.extend_from_slice(end.bytes());
            }
            for l in lines {
                bytes.extend_from_slice(b"data: ");
                bytes.extend_from_slice(l.as_bytes());
                bytes.extend_from_slice(end.bytes());
            }
            if i + 1 < events.len() || last_blank {
                bytes.extend_from_slice(end.bytes());
            }
            expected.push(data(&lines.join("\n")));
        }
        (bytes, expected)
    }

    fn split_at(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(bytes[start..p].to_vec());
            start = p;
        }
        pieces.push(bytes[start..].to_vec());
        pieces
    }

    proptest! {
        #[test]
        fn any_split_of_a_valid_stream_yields_its_events(
            (events, last_blank) in stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let (bytes, expected) = render(&events, last_blank);
            let pieces = split_at(&bytes, &cuts);
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(parse_chunks(&refs), expected);
        }

        #[test]
        fn any_bytes_parse_the_same_however_split(
            bytes in prop::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), any::<u8>(),
                            Just(b'd'), Just(b'a'), Just(b't')], 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let whole = parse_chunks(&[&bytes]);
            let pieces = split_at(&bytes, &cuts);
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(parse_chunks(&refs), whole);
        }

        #[test]
        fn a_frame_is_as_long_as_its_length_says(data in "[a-z\n\u{e9}]{0,40}") {
            let frame = encode_data(&data);
            prop_assert_eq!(frame.len(), frame_len(&data));
            prop_assert_eq!(parse_chunks(&[&frame]), vec![super::SseEvent { event: None, data }]);
        }
    }
}
