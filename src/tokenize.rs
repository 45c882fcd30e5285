//! Token counting per model family.
//!
//! OpenAI models are counted with their real tiktoken encoding (`o200k_base`, `cl100k_base`, …,
//! chosen by tiktoken-rs from the model name). Other models, the mock's included, are estimated
//! with `o200k_base`: close for most modern BPE vocabularies, and exact for the mock, whose
//! words are single `o200k_base` tokens. Encodings are built once per process and shared.

use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

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
        self.bpe.encode_ordinary(text).len() as u64
    }

    /// The longest prefix of `text` holding at most `max_tokens` tokens, and its token count.
    pub fn truncate<'t>(&self, text: &'t str, max_tokens: u64) -> (&'t str, u64) {
        let tokens = self.bpe.encode_ordinary(text);
        if tokens.len() as u64 <= max_tokens {
            return (text, tokens.len() as u64);
        }
        let keep = &tokens[..max_tokens as usize];
        // Tokens of `encode_ordinary` concatenate to the text's bytes, so their byte lengths
        // give the cut position; step back to a character boundary if a token split one.
        let mut end = self
            .bpe
            .decode_bytes(keep)
            .map(|b| b.len())
            .unwrap_or(0)
            .min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let prefix = &text[..end];
        (prefix, self.count(prefix))
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
    fn truncate_keeps_at_most_the_limit() {
        let c = TokenCounter::for_model("gpt-4o");
        let text = " the quick brown fox jumps over the lazy dog";
        assert_eq!(c.truncate(text, 3), (" the quick brown", 3));
        assert_eq!(c.truncate(text, 0), ("", 0));
        assert_eq!(c.truncate(text, 100), (text, 9));
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
