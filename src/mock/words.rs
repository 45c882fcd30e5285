//! The mock provider's deterministic vocabulary: which text token `i` of a reply is.
//!
//! Every entry of [`WORDS`] is a lower-case word with a leading space that is exactly one token in
//! both `o200k_base` and `cl100k_base`, and any run of consecutive entries (wrapping around)
//! tokenizes word by word, so a reply of `n` generated tokens counts as exactly `n` completion
//! tokens for either encoding. The unit test below proves it for every run of up to 200 words.
//! It also holds the fixed arguments of the mock's tool call and how a stream cuts them into
//! fragments. This module owns nothing else: no I/O, no knowledge of requests.

/// The cycle of words the mock generates, in order.
pub const WORDS: &[&str] = &[
    " the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", " and", " then",
    " runs", " back", " to", " its", " warm", " home", " in", " the", " green", " valley",
    " under", " blue", " sky",
];

/// The arguments of every mock tool call, as the JSON text the reply carries.
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Paris","days":3}"#;

/// How a stream sends [`TOOL_ARGUMENTS`]: fragments cut mid-key and mid-value, as real providers
/// do; they concatenate to the arguments.
pub const TOOL_ARGUMENT_FRAGMENTS: &[&str] = &[r#"{"ci"#, r#"ty":"Par"#, r#"is","da"#, r#"ys":3}"#];

/// Text of generated token `i` (0-based): `WORDS[i % WORDS.len()]`.
pub fn token_text(i: u32) -> &'static str {
    // `u32` always fits in `usize` on the targets tollgate supports (32- and 64-bit).
    WORDS[i as usize % WORDS.len()]
}

/// The full text of a reply of `n` generated tokens.
pub fn generated_text(n: u32) -> String {
    (0..n).map(token_text).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiktoken_rs::{cl100k_base_singleton, o200k_base_singleton, CoreBPE};

    fn encodings() -> [(&'static str, &'static CoreBPE); 2] {
        [
            ("o200k_base", o200k_base_singleton()),
            ("cl100k_base", cl100k_base_singleton()),
        ]
    }

    #[test]
    fn has_enough_words_and_each_is_a_spaced_lowercase_word() {
        assert!(WORDS.len() >= 16);
        for word in WORDS {
            let letters = word.strip_prefix(' ').unwrap_or("");
            assert!(!letters.is_empty(), "{word:?} lacks a leading space");
            assert!(letters.chars().all(|c| c.is_ascii_lowercase()), "{word:?}");
        }
    }

    #[test]
    fn every_word_is_one_token_in_both_encodings() {
        for (name, bpe) in encodings() {
            for word in WORDS {
                assert_eq!(bpe.encode_ordinary(word).len(), 1, "{word:?} in {name}");
            }
        }
    }

    #[test]
    fn any_run_of_up_to_200_words_is_that_many_tokens_in_both_encodings() {
        // The vocabulary is cyclic, so runs starting at each offset cover every possible run.
        for (name, bpe) in encodings() {
            for start in 0..WORDS.len() as u32 {
                let mut text = String::new();
                for n in 1..=200u32 {
                    text.push_str(token_text(start + n - 1));
                    let count = bpe.encode_ordinary(&text).len();
                    assert_eq!(count, n as usize, "start {start}, n {n}, {name}");
                }
            }
        }
    }

    #[test]
    fn tool_argument_fragments_concatenate_to_an_object() {
        assert_eq!(TOOL_ARGUMENT_FRAGMENTS.concat(), TOOL_ARGUMENTS);
        let parsed = serde_json::from_str::<serde_json::Value>(TOOL_ARGUMENTS);
        assert!(parsed.is_ok_and(|v| v.is_object()));
    }

    #[test]
    fn token_text_cycles_and_generated_text_concatenates() {
        let len = WORDS.len() as u32;
        assert_eq!(token_text(0), " the");
        assert_eq!(token_text(3), " fox");
        assert_eq!(token_text(len), token_text(0));
        assert_eq!(token_text(u32::MAX), WORDS[(u32::MAX % len) as usize]);
        assert_eq!(generated_text(0), "");
        assert_eq!(generated_text(4), " the quick brown fox");
    }
}
