//! The stream's chunk reader: any sequence of payloads (the input's lines) read through one
//! `ChunkReader` gives, payload by payload, exactly what a full parse of each gives — including
//! payloads that repeat a learned layout around other strings, valid or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::relay::chunk::Payload;
use tollgate::relay::chunk_layout::ChunkReader;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut reader = ChunkReader::default();
    for payload in text.split('\n') {
        let read = format!("{:?}", reader.parse(payload));
        let parsed = format!("{:?}", Payload::parse(payload));
        assert_eq!(read, parsed, "the reader and a full parse differ on {payload:?}");
    }
});
