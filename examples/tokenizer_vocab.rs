//! Writes the compact vocabularies `src/tokenize/*.vocab` from tiktoken-rs's encodings.
//!
//! `cargo run --example tokenizer_vocab` after a tiktoken-rs upgrade; the tokenizer's tests check
//! the files against tiktoken-rs on every test run, so a stale file fails CI rather than
//! miscounting. Format: the number of tokens N (u32, little-endian), N byte lengths (one byte
//! each, ranks 0..N in order), then the tokens' bytes concatenated in rank order. Ranks are the
//! encoding's ordinary (mergeable) tokens, which are numbered 0..N without gaps; special tokens
//! come after them and are not stored.

use std::error::Error;
use tiktoken_rs::CoreBPE;

fn write(bpe: &CoreBPE, path: &str) -> Result<(), Box<dyn Error>> {
    let mut tokens = Vec::new();
    while let Ok(bytes) = bpe.decode_bytes(&[tokens.len() as u32]) {
        tokens.push(bytes);
    }
    let count = u32::try_from(tokens.len())?;
    let mut out = count.to_le_bytes().to_vec();
    for token in &tokens {
        out.push(u8::try_from(token.len())?);
    }
    for token in &tokens {
        out.extend_from_slice(token);
    }
    std::fs::write(path, &out)?;
    eprintln!("{path}: {count} tokens, {} bytes", out.len());
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    write(
        tiktoken_rs::o200k_base_singleton(),
        "src/tokenize/o200k_base.vocab",
    )?;
    write(
        tiktoken_rs::cl100k_base_singleton(),
        "src/tokenize/cl100k_base.vocab",
    )?;
    Ok(())
}
