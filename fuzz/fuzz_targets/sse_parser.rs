//! The upstream SSE parser: any bytes, split anywhere, parse to the same events as the whole
//! (the first two bytes choose the split points), within the event size bound, never panicking;
//! the split parse hands every event back once read (as the relay does), so recycled buffers
//! must not change what later events read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::relay::sse::{SseEvent, SseParser};

const MAX_EVENT_BYTES: usize = 4096;

fn parse(pieces: &[&[u8]], recycle: bool) -> Result<Vec<SseEvent>, ()> {
    let mut parser = SseParser::new(MAX_EVENT_BYTES);
    let mut read = Vec::new();
    let mut events = Vec::new();
    for piece in pieces {
        parser.feed(piece, &mut events).map_err(|_| ())?;
        if recycle {
            for event in events.drain(..) {
                read.push(event.clone());
                parser.recycle(event);
            }
        }
    }
    parser.finish(&mut events);
    read.append(&mut events);
    Ok(read)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], body)) = data.split_first_chunk::<2>().map(|(h, t)| (h, t)) else {
        return;
    };
    let whole = parse(&[body], false);
    let (x, y) = (usize::from(a) % (body.len() + 1), usize::from(b) % (body.len() + 1));
    let (x, y) = (x.min(y), x.max(y));
    let split = parse(&[&body[..x], &body[x..y], &body[y..]], true);
    if let (Ok(whole), Ok(split)) = (&whole, &split) {
        assert_eq!(whole, split, "a split changed the events");
        for event in whole {
            assert!(event.data.len() <= MAX_EVENT_BYTES, "an event past the bound");
        }
    }
});
