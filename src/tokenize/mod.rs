//! Token counting per model family.
//!
//! OpenAI models are counted with their real tiktoken encoding (`o200k_base`, `cl100k_base`, …,
//! chosen by tiktoken-rs from the model name). Other models, the mock's included, are estimated
//! with `o200k_base`: close for most modern BPE vocabularies, and exact for the mock, whose
//! words are single `o200k_base` tokens. Encodings are built once per process, on first use
//! (start-up warms the ones the price table names), and shared. `o200k_base` and `cl100k_base`
//! run on the compact encoder of [`bpe`] (≈ 3 MiB resident instead of tiktoken-rs's ≈ 40 MiB);
//! older encodings (`p50k`, `r50k`, `gpt2`) on tiktoken-rs itself.
//!
//! Counts are remembered per thread ([`Memo`]): the same texts come back all the time (a
//! stream's deltas are mostly common one-token words; a chat resends its system prompt and its
//! history with every turn), and the encoder still costs some 25 ns per character of ASCII text.

mod ascii_split;
mod bpe;

use ascii_split::AsciiSplit;
use bpe::Vocabulary;
use rustc_hash::FxBuildHasher;
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::OnceLock;
use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

/// tiktoken's `o200k_base` split pattern (also `o200k_harmony`'s, whose ordinary tokens are
/// `o200k_base`'s), its `\s+(?!\S)|\s+` written as `\s+` (see `bpe::Vocabulary`).
const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

/// tiktoken's `cl100k_base` split pattern, its possessive quantifiers plain (nothing after them
/// could take back what they matched) and its `\s+(?!\S)|\s` written as `\s+`.
const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|\s*[\r\n]|\s+";

static O200K: OnceLock<Vocabulary> = OnceLock::new();
static CL100K: OnceLock<Vocabulary> = OnceLock::new();

fn load(
    cell: &'static OnceLock<Vocabulary>,
    file: &'static [u8],
    pattern: &str,
    ascii: AsciiSplit,
) -> &'static Vocabulary {
    cell.get_or_init(|| {
        // The files are compiled in and checked by this module's tests: a failure here is a
        // broken build, not something input can cause.
        Vocabulary::from_file(file, pattern)
            .unwrap_or_else(|e| panic!("the compiled-in token vocabulary is unreadable: {e}"))
            .with_ascii_split(ascii)
    })
}

fn o200k() -> &'static Vocabulary {
    load(
        &O200K,
        include_bytes!("o200k_base.vocab"),
        O200K_PATTERN,
        AsciiSplit::O200k,
    )
}

fn cl100k() -> &'static Vocabulary {
    load(
        &CL100K,
        include_bytes!("cl100k_base.vocab"),
        CL100K_PATTERN,
        AsciiSplit::Cl100k,
    )
}

/// An encoding: the compact one, or tiktoken-rs's for the older encodings.
#[derive(Clone, Copy)]
enum Encoder {
    Compact(&'static Vocabulary),
    Tiktoken(&'static CoreBPE),
}

impl Encoder {
    fn id(self) -> usize {
        match self {
            Encoder::Compact(v) => std::ptr::from_ref(v) as usize,
            Encoder::Tiktoken(b) => std::ptr::from_ref(b) as usize,
        }
    }

    fn count(self, text: &str) -> u64 {
        match self {
            Encoder::Compact(v) => v.count(text) as u64,
            Encoder::Tiktoken(b) => b.encode_ordinary(text).len() as u64,
        }
    }

    /// Byte offsets where each token of `text` ends.
    fn token_ends(self, text: &str) -> Vec<usize> {
        match self {
            Encoder::Compact(v) => {
                let mut ends = Vec::new();
                v.for_each_token_end(text, |end| ends.push(end));
                ends
            }
            Encoder::Tiktoken(b) => {
                // Tokens of `encode_ordinary` concatenate to the text's bytes.
                let mut end = 0;
                b.encode_ordinary(text)
                    .iter()
                    .map(|&token| {
                        end += b.decode_bytes(&[token]).map(|t| t.len()).unwrap_or(0);
                        end
                    })
                    .collect()
            }
        }
    }
}

/// Counts one thread remembers before it starts over.
const MEMO_ENTRIES: usize = 8192;

/// Token counts of texts seen recently on this thread, by encoding and a keyed 128-bit hash of
/// the text (two independent SipHash keys: no text is kept, and a collision needs one of
/// 2^128 values). The table hashes those keys again with Fx, not a third SipHash: they are
/// already uniform and secret, so no one can aim texts at one bucket.
struct Memo {
    keys: (RandomState, RandomState),
    counts: HashMap<(usize, u64, u64), u64, FxBuildHasher>,
}

impl Memo {
    fn new() -> Self {
        Self {
            keys: (RandomState::new(), RandomState::new()),
            counts: HashMap::default(),
        }
    }

    fn count(&mut self, encoder: Encoder, text: &str) -> u64 {
        let key = (
            encoder.id(),
            self.keys.0.hash_one(text),
            self.keys.1.hash_one(text),
        );
        if let Some(&count) = self.counts.get(&key) {
            return count;
        }
        let count = encoder.count(text);
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
    encoder: Encoder,
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
        let encoder = match get_tokenizer(model) {
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => Some(Encoder::Compact(o200k())),
            Some(Tokenizer::Cl100kBase) => Some(Encoder::Compact(cl100k())),
            Some(older) => tiktoken_rs::bpe_for_tokenizer(older)
                .ok()
                .map(Encoder::Tiktoken),
            None => None,
        };
        match encoder {
            Some(encoder) => Self {
                encoder,
                exact: true,
            },
            None => Self::o200k_estimate(),
        }
    }

    /// The `o200k_base` counter, as an estimate (unknown models, the mock).
    pub fn o200k_estimate() -> Self {
        Self {
            encoder: Encoder::Compact(o200k()),
            exact: false,
        }
    }

    /// Builds the encodings `models` use now, so their first request does not pay for it.
    pub fn warm_up<'m>(models: impl IntoIterator<Item = &'m str>) {
        Self::o200k_estimate();
        for model in models {
            Self::for_model(model);
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
        let encoder = self.encoder;
        MEMO.try_with(|memo| match memo.try_borrow_mut() {
            Ok(mut memo) => memo.count(encoder, text),
            Err(_) => encoder.count(text),
        })
        .unwrap_or_else(|_| encoder.count(text))
    }

    /// Tokens in `text` followed by the ASCII digits `digits`, where `text` ends in a character
    /// that is neither a letter, a digit nor a space (the canary's `-`), and whatever follows
    /// the digits starts a new piece (punctuation, a space). `o200k_base` and `cl100k_base` cut
    /// a run of digits into groups of three from its start, and every group of one to three
    /// digits is a single token in both (the tests check all 1,110): so the digits count
    /// without being encoded. Any other case, and other encodings, encode the whole text.
    pub fn count_with_digits(&self, text: &str, digits: &str) -> u64 {
        let ends_apart = text
            .chars()
            .next_back()
            .is_some_and(|c| !c.is_alphanumeric() && !c.is_whitespace());
        match self.encoder {
            Encoder::Compact(_) if ends_apart && digits.bytes().all(|b| b.is_ascii_digit()) => {
                self.count(text) + digits.len().div_ceil(3) as u64
            }
            _ => self.count(&format!("{text}{digits}")),
        }
    }

    /// The longest prefix of `text` holding at most `max_tokens` tokens, and its token count.
    pub fn truncate<'t>(&self, text: &'t str, max_tokens: u64) -> (&'t str, u64) {
        let ends = self.encoder.token_ends(text);
        if ends.len() as u64 <= max_tokens {
            return (text, ends.len() as u64);
        }
        // The end of the first k tokens is a cut position; step back to a character boundary
        // if a token split one. Re-tokenising a prefix can yield more tokens than it was cut
        // from (BPE merges differ at the new end), so shorten until the recount fits.
        let mut keep = max_tokens as usize;
        loop {
            let mut end = keep
                .checked_sub(1)
                .and_then(|last| ends.get(last))
                .copied()
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
mod tests;

#[cfg(test)]
mod counter_tests {
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
                    assert_eq!(c.count(text), c.encoder.count(text));
                }
            }
        }
        // Past the bound the memo starts over, and still answers right.
        for i in 0..MEMO_ENTRIES + 10 {
            let text = format!(" word{i}");
            assert_eq!(o200k.count(&text), o200k.encoder.count(&text));
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
