//! Token counting per model family.
//!
//! OpenAI models are counted with their real tiktoken encoding (`o200k_base`, `cl100k_base`, …,
//! chosen by tiktoken-rs from the model name). Other models, the mock's included, are estimated
//! with `o200k_base`: close for most modern BPE vocabularies, and exact for the mock, whose
//! words are single `o200k_base` tokens. Encodings are built once per process and shared.
//!
//! Counts are remembered per thread ([`Memo`]): the same texts come back all the time (a
//! stream's deltas are mostly common one-token words; a chat resends its system prompt and its
//! history with every turn), and the encoder costs about half a microsecond per character.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

/// Counts one thread remembers before it starts over.
const MEMO_ENTRIES: usize = 8192;

/// Token counts of texts seen recently on this thread, by encoding and a keyed 128-bit hash of
/// the text (two independent SipHash keys: no text is kept, and a collision needs one of
/// 2^128 values).
struct Memo {
    keys: (RandomState, RandomState),
    counts: HashMap<(usize, u64, u64), u64>,
}

impl Memo {
    fn new() -> Self {
        Self {
            keys: (RandomState::new(), RandomState::new()),
            counts: HashMap::new(),
        }
    }

    fn count(&mut self, bpe: &'static CoreBPE, text: &str) -> u64 {
        let key = (
            std::ptr::from_ref(bpe) as usize,
            self.keys.0.hash_one(text),
            self.keys.1.hash_one(text),
        );
        if let Some(&count) = self.counts.get(&key) {
            return count;
        }
        let count = bpe.encode_ordinary(text).len() as u64;
        if self.counts.len() >= MEMO_ENTRIES {
            self.counts.clear();
        }
        self.counts.insert(key, count);
        count
    }
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo::new());
}

/// Counts tokens for one model.
#[derive(Clone, Copy)]
pub struct TokenCounter {
    bpe: &'static CoreBPE,
    exact: bool,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter")
            .field("exact", &self.exact)
            .finish()
    }
}

impl TokenCounter {
    /// The counter for `model`: its own encoding when known, the `o200k_base` estimate otherwise.
    pub fn for_model(model: &str) -> Self {
        let known = get_tokenizer(model).and_then(|t| tiktoken_rs::bpe_for_tokenizer(t).ok());
        match known {
            Some(bpe) => Self { bpe, exact: true },
            None => Self {
                bpe: tiktoken_rs::o200k_base_singleton(),
                exact: false,
            },
        }
    }

    /// Builds the common encodings now, so the first request does not pay for it.
    pub fn warm_up() {
        for t in [Tokenizer::O200kBase, Tokenizer::Cl100kBase] {
            let _ = tiktoken_rs::bpe_for_tokenizer(t);
        }
    }

    /// Whether counts are the model's real tokenization (false: an estimate).
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    pub fn count(&self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let bpe = self.bpe;
        MEMO.try_with(|memo| match memo.try_borrow_mut() {
            Ok(mut memo) => memo.count(bpe, text),
            Err(_) => bpe.encode_ordinary(text).len() as u64,
        })
        .unwrap_or_else(|_| bpe.encode_ordinary(text).len() as u64)
    }

    /// The longest prefix of `text` holding at most `max_tokens` tokens, and its token count.
    pub fn truncate<'t>(&self, text: &'t str, max_tokens: u64) -> (&'t str, u64) {
        let tokens = self.bpe.encode_ordinary(text);
        if tokens.len() as u64 <= max_tokens {
            return (text, tokens.len() as u64);
        }
        // Tokens of `encode_ordinary` concatenate to the text's bytes, so the byte length of
        // the first k tokens is a cut position; step back to a character boundary if a token
        // split one. Re-tokenising a prefix can yield more tokens than it was cut from (BPE
        // merges differ at the new end), so shorten until the recount fits.
        let mut keep = max_tokens as usize;
        loop {
            let mut end = self
                .bpe
                .decode_bytes(&tokens[..keep])
                .map(|b| b.len())
                .unwrap_or(0)
                .min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let prefix = &text[..end];
            let count = self.count(prefix);
            if count <= max_tokens || keep == 0 {
                return (prefix, count.min(max_tokens));
            }
            keep -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_models_use_their_encoding() {
        assert!(TokenCounter::for_model("gpt-4o").is_exact());
        assert!(TokenCounter::for_model("gpt-3.5-turbo").is_exact());
        assert!(!TokenCounter::for_model("mock-gpt").is_exact());
        assert_eq!(TokenCounter::for_model("gpt-4o").count("hello world"), 2);
        assert_eq!(TokenCounter::for_model("gpt-4o").count(""), 0);
    }

    #[test]
    fn remembered_counts_are_the_encoders() {
        let (o200k, cl100k) = (
            TokenCounter::for_model("gpt-4o"),
            TokenCounter::for_model("gpt-4"),
        );
        let texts = [" the", "hello world", " 12345", "🦀 crab", " the"];
        for _ in 0..3 {
            for text in texts {
                for c in [o200k, cl100k] {
                    assert_eq!(c.count(text), c.bpe.encode_ordinary(text).len() as u64);
                }
            }
        }
        // Past the bound the memo starts over, and still answers right.
        for i in 0..MEMO_ENTRIES + 10 {
            let text = format!(" word{i}");
            assert_eq!(
                o200k.count(&text),
                o200k.bpe.encode_ordinary(&text).len() as u64
            );
        }
        MEMO.with(|memo| assert!(memo.borrow().counts.len() <= MEMO_ENTRIES));
    }

    #[test]
    fn truncate_keeps_at_most_the_limit() {
        let c = TokenCounter::for_model("gpt-4o");
        let text = " the quick brown fox jumps over the lazy dog";
        assert_eq!(c.truncate(text, 3), (" the quick brown", 3));
        assert_eq!(c.truncate(text, 0), ("", 0));
        assert_eq!(c.truncate(text, 100), (text, 9));
    }

    proptest::proptest! {
        #[test]
        fn truncate_never_exceeds_the_limit(text in "(\\PC|\\s){0,80}", max in 0u64..40) {
            let c = TokenCounter::for_model("gpt-4o");
            let (prefix, count) = c.truncate(&text, max);
            proptest::prop_assert!(count <= max);
            proptest::prop_assert_eq!(count, c.count(prefix));
            proptest::prop_assert!(text.starts_with(prefix));
        }
    }

    #[test]
    fn truncate_recounts_when_a_prefix_tokenizes_longer() {
        // Found by the property test: this prefix of 16 tokens recounts as 17.
        let text = "a0\u{103c8}\u{17e0} \u{202f}A{0\u{3000}  \u{3000} \u{2005}0 \u{3000}\u{3000}a a \u{3000}0";
        let c = TokenCounter::for_model("gpt-4o");
        for max in 0..30 {
            let (prefix, count) = c.truncate(text, max);
            assert!(count <= max && c.count(prefix) == count);
        }
    }

    #[test]
    fn truncate_never_splits_a_character() {
        let c = TokenCounter::for_model("gpt-4o");
        let text = "🦀🦀🦀 日本語のテキスト";
        for n in 0..20 {
            let (prefix, count) = c.truncate(text, n);
            assert!(count <= n);
            assert!(text.starts_with(prefix));
        }
    }
}
