//! The upstream SSE parser: any bytes, split anywhere, parse to the same events as the whole
//! (the first two bytes choose the split points), within the event size bound, never panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::relay::sse::{SseEvent, SseParser};

const MAX_EVENT_BYTES: usize = 4096;

fn parse(pieces: &[&[u8]]) -> Result<Vec<SseEvent>, ()> {
    let mut parser = SseParser::new(MAX_EVENT_BYTES);
    let mut events = Vec::new();
    for piece in pieces {
        parser.feed(piece, &mut events).map_err(|_| ())?;
    }
    parser.finish(&mut events);
    Ok(events)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], body)) = data.split_first_chunk::<2>().map(|(h, t)| (h, t)) else {
        return;
    };
    let whole = parse(&[body]);
    let (x, y) = (usize::from(a) % (body.len() + 1), usize::from(b) % (body.len() + 1));
    let (x, y) = (x.min(y), x.max(y));
    let split = parse(&[&body[..x], &body[x..y], &body[y..]]);
    if let (Ok(whole), Ok(split)) = (&whole, &split) {
        assert_eq!(whole, split, "a split changed the events");
        for event in whole {
            assert!(event.data.len() <= MAX_EVENT_BYTES, "an event past the bound");
        }
    }
});
