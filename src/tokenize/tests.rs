//! The compact encoder against tiktoken-rs: the same vocabulary, the same tokens.

use super::*;
use tiktoken_rs::{cl100k_base_singleton, o200k_base_singleton};

fn pairs() -> [(&'static str, &'static Vocabulary, &'static CoreBPE); 2] {
    [
        ("o200k_base", o200k(), o200k_base_singleton()),
        ("cl100k_base", cl100k(), cl100k_base_singleton()),
    ]
}

/// tiktoken-rs's token ends for `text`.
fn reference_ends(bpe: &'static CoreBPE, text: &str) -> Vec<usize> {
    Encoder::Tiktoken(bpe).token_ends(text)
}

fn compact_ends(vocabulary: &'static Vocabulary, text: &str) -> Vec<usize> {
    Encoder::Compact(vocabulary).token_ends(text)
}

fn assert_same_tokens(text: &str) {
    for (name, vocabulary, bpe) in pairs() {
        assert_eq!(
            compact_ends(vocabulary, text),
            reference_ends(bpe, text),
            "{name} on {text:?}"
        );
        assert_eq!(
            vocabulary.count(text),
            bpe.encode_ordinary(text).len(),
            "{name} on {text:?}"
        );
    }
}

#[test]
fn every_rank_holds_tiktokens_bytes() {
    for (name, vocabulary, bpe) in pairs() {
        for rank in 0..vocabulary.len() as u32 {
            let expected = bpe.decode_bytes(&[rank]).unwrap_or_default();
            assert_eq!(vocabulary.token(rank), &expected[..], "{name} rank {rank}");
            assert_eq!(vocabulary.rank(&expected), Some(rank), "{name} rank {rank}");
        }
        // The first rank after the ordinary ones is a special token or none: not stored.
        let next = bpe.decode_bytes(&[vocabulary.len() as u32]);
        assert!(
            next.is_err() || next.is_ok_and(|b| b.starts_with(b"<|")),
            "{name}"
        );
    }
}

#[test]
fn same_tokens_as_tiktoken_on_prose_code_and_unicode() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "README.md",
        "docs/performance.md",
        "src/tokenize/bpe.rs",
        "config/default.toml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap_or_default();
        assert!(!text.is_empty(), "{file}");
        for line in text.lines() {
            assert_same_tokens(line);
        }
        assert_same_tokens(&text);
    }
    for text in [
        "",
        " ",
        "\n\n\n",
        "   \n  x",
        "hello world",
        "I'm sure they'LL do it, won't they? It's 12345678 o'clock.",
        "🦀 crab 日本語のテキスト Ünïcödé naïve café — “quotes”",
        "\u{0301}\u{0301}a\u{0300}",
        "x\r\n\r\ny \t\t z",
        "https://example.com/a/b?c=d&e=f#g",
        "sk-proj-AbCdEf0123456789abcdef0123456789",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
    ] {
        assert_same_tokens(text);
    }
}

#[test]
fn long_pieces_merge_as_tiktoken_does() {
    // Pieces of 100 bytes and more take the heap-based merge.
    for text in [
        "a".repeat(99),
        "a".repeat(100),
        "a".repeat(1_000),
        "ab".repeat(300),
        "xyzzyplugh".repeat(40),
        " ".repeat(500),
        "0".repeat(400),
        "!@#$%^&*()".repeat(30),
        "日本語".repeat(60),
        "🦀".repeat(120),
        "\u{0301}".repeat(200),
    ] {
        assert_same_tokens(&text);
    }
}

#[test]
fn a_piece_of_200_000_letters_counts_as_tiktoken_does() {
    // 200,000 letters are one piece, merged with the heap (the short merge would rescan
    // ~10^10 pairs). Counted once, compared with tiktoken-rs's count.
    let text = "a".repeat(200_000);
    assert_eq!(
        o200k().count(&text),
        o200k_base_singleton().encode_ordinary(&text).len()
    );
}

proptest::proptest! {
    #[test]
    fn same_tokens_as_tiktoken_on_random_text(text in "(\\PC|\\s){0,120}") {
        assert_same_tokens(&text);
    }

    #[test]
    fn same_tokens_on_random_ascii_words(text in "([a-zA-Z']{1,12}[ ,.!?\\n0-9]{0,3}){0,40}") {
        assert_same_tokens(&text);
    }

    #[test]
    fn same_tokens_around_runs_of_spaces(text in "([ \t\n\r\u{a0}\u{2003}\u{3000}]{0,5}([a-zA-Z]{1,6}|[0-9]{1,5}|[.,!?'/]{1,3}|\u{1F980}|\u{65e5}\u{672c}){0,2}){0,12}[ \t\n\r]{0,4}") {
        assert_same_tokens(&text);
    }

    #[test]
    fn same_tokens_on_long_random_pieces(text in "[a-z]{100,400}|[0-9a-f]{100,300}|[ \\t]{100,200}x") {
        assert_same_tokens(&text);
    }
}

/// Pieces of `text` by the hand-written ASCII split and by the regex, for both encodings.
fn assert_same_ascii_pieces(text: &str) {
    for (name, vocabulary, _) in pairs() {
        let split = match name {
            "o200k_base" => AsciiSplit::O200k,
            _ => AsciiSplit::Cl100k,
        };
        let mut by_hand = Vec::new();
        vocabulary.for_each_piece_with(text, Some(split), |s, e| by_hand.push((s, e)));
        let mut by_regex = Vec::new();
        vocabulary.for_each_piece_with(text, None, |s, e| by_regex.push((s, e)));
        assert_eq!(by_hand, by_regex, "{name} on {text:?}");
    }
}

/// Every ASCII character, with the ones the patterns treat specially weighted up.
fn ascii_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let special = prop::sample::select(vec![
        "'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'Ll", "'d", "'x", "'", " ", "  ",
        "\n", "\r\n", " \n ", "\t", "\x0B", "\x0C", "/", " /", "!/\n/", "A", "AB", "Ab", "aB",
        "ab", "1", "1234", " 12", "-", " -", ".", "\x00", "\x1F", "\x7F", "~",
    ])
    .prop_map(str::to_owned);
    let any = (0u8..128).prop_map(|b| char::from(b).to_string());
    prop::collection::vec(prop_oneof![special, any], 0..60).prop_map(|parts| parts.concat())
}

proptest::proptest! {
    #[test]
    fn the_ascii_split_cuts_as_the_regex_does(text in ascii_text()) {
        assert_same_ascii_pieces(&text);
    }

    #[test]
    fn same_tokens_as_tiktoken_on_random_ascii(text in ascii_text()) {
        assert_same_tokens(&text);
    }
}

#[test]
fn the_ascii_split_cuts_prose_and_code_as_the_regex_does() {
    for text in [
        "",
        "Hello, World! It's a test: don't STOP'S we'LL see.\r\n\tIndented  twice   end  ",
        "fn main() {\n    let x = 42; // answer\n}\n\n",
        "  leading and trailing   ",
        "a\n\n\nb \n \n c\r\r",
        "ALLCAPS lower CamelCase mixedCASE X y Z's",
        "12345678 1.5e10 0x1F -3 +4 a1b2c3",
    ] {
        assert_same_ascii_pieces(text);
        assert_same_tokens(text);
    }
}

#[test]
fn the_table_finds_every_byte_and_no_stranger() {
    for (_, vocabulary, _) in pairs() {
        for b in 0..=255u8 {
            assert!(vocabulary.rank(&[b]).is_some());
        }
        assert_eq!(vocabulary.rank(b"this is certainly not one token"), None);
        assert_eq!(vocabulary.rank(b""), None);
    }
}

#[test]
fn a_damaged_file_is_refused() {
    assert!(Vocabulary::from_file(b"", O200K_PATTERN).is_err());
    assert!(Vocabulary::from_file(&[3, 0, 0, 0, 1, 1], O200K_PATTERN).is_err());
    assert!(Vocabulary::from_file(&[1, 0, 0, 0, 0], O200K_PATTERN).is_err());
    assert!(Vocabulary::from_file(&[2, 0, 0, 0, 1, 1, b'a', b'a'], O200K_PATTERN).is_err());
    // Well formed, but bytes lack tokens of their own.
    assert!(Vocabulary::from_file(&[1, 0, 0, 0, 1, b'a'], O200K_PATTERN).is_err());
}

#[test]
fn every_group_of_one_to_three_digits_is_one_token() {
    // What `TokenCounter::count_with_digits` relies on.
    for (name, vocabulary, _) in pairs() {
        for width in 1..=3 {
            for n in 0..10u32.pow(width) {
                let group = format!("{n:0width$}", width = width as usize);
                assert!(
                    vocabulary.rank(group.as_bytes()).is_some(),
                    "{name}: {group}"
                );
            }
        }
    }
}

#[test]
fn digits_after_punctuation_count_without_encoding() {
    for model in ["gpt-4o", "gpt-4", "mock-gpt"] {
        let counter = TokenCounter::for_model(model);
        for digits in [
            "",
            "7",
            "42",
            "007",
            "1234",
            "000000000000000000001",
            "98765432109876543210",
        ] {
            for text in [
                " qzcn-", "marker:", "x (", " #", "x  ", "x\n  ", "x ", "", "abc", "a1",
            ] {
                assert_eq!(
                    counter.count_with_digits(text, digits),
                    counter.count(&format!("{text}{digits}")),
                    "{model}: {text:?} + {digits:?}"
                );
            }
        }
    }
}
