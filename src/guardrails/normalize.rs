//! Text normalisation for the prompt-injection detector.
//!
//! [`normalize`] folds the many ways of writing the same words into one skeleton so that phrase and
//! regex rules see "ignore previous instructions" whether it arrived in fullwidth letters, with
//! zero-width characters inside words, with Cyrillic or Greek look-alikes, or spread over odd
//! whitespace. The output is for matching only; it is never shown to anyone or sent upstream.
//! This module depends on nothing else in the crate.

use unicode_normalization::UnicodeNormalization;

/// Normalise `text` for matching.
///
/// Steps, in one linear pass over the input:
/// 1. remove invisible format characters: zero-width space/joiners and direction marks
///    (U+200B..U+200F), word joiner and invisible operators (U+2060..U+2064), BOM (U+FEFF), soft
///    hyphen (U+00AD), Unicode TAG characters (U+E0000..U+E007F), and also the other invisible
///    controls attackers use the same way (bidi embeddings U+202A..U+202E and isolates
///    U+2066..U+2069, U+180E, U+034F, U+061C, variation selectors U+FE00..U+FE0F);
/// 2. Unicode NFKC (fullwidth, mathematical and circled letters become plain ones);
/// 3. map common confusables (Cyrillic and Greek look-alikes of Latin letters) to Latin;
/// 4. lowercase;
/// 5. collapse every run of whitespace to one space and trim both ends.
pub fn normalize(text: &str) -> String {
    // ASCII has no invisible or confusable characters and is its own NFKC: only case and
    // whitespace change (a test holds this to the general path).
    if text.is_ascii() {
        return normalize_ascii(text);
    }
    normalize_general(text)
}

/// Every step of [`normalize`], for any text.
fn normalize_general(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // `true` while the last pushed char is a space (or nothing was pushed yet: trims the start).
    let mut in_space = true;
    for c in text.chars().filter(|&c| !is_invisible(c)).nfkc() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
                in_space = true;
            }
            continue;
        }
        in_space = false;
        match confusable(c) {
            Some(latin) => out.push(latin),
            None => out.extend(c.to_lowercase()),
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// [`normalize`] for ASCII text: lowercase, whitespace runs collapsed, both ends trimmed.
fn normalize_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = true;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
                in_space = true;
            }
            continue;
        }
        in_space = false;
        out.push(c.to_ascii_lowercase());
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Whether `c` is an invisible format character removed by [`normalize`].
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{2060}'..='\u{2064}'
            | '\u{FEFF}'
            | '\u{00AD}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{180E}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{FE00}'..='\u{FE0F}'
    )
}

/// The Latin letter a Cyrillic or Greek look-alike stands for, decided on the original case
/// (Greek capital `Ν` looks like `N`, small `ν` like `v`). Returns `None` for everything else.
fn confusable(c: char) -> Option<char> {
    let latin = match c {
        // Cyrillic capitals
        'А' => 'a',
        'В' => 'b',
        'С' => 'c',
        'Е' | 'Ё' => 'e',
        'Н' => 'h',
        'І' | 'Ӏ' => 'i',
        'Ј' => 'j',
        'К' => 'k',
        'М' => 'm',
        'О' => 'o',
        'Р' => 'p',
        'Ѕ' => 's',
        'Т' => 't',
        'Х' => 'x',
        'У' | 'Ү' => 'y',
        'Ԛ' => 'q',
        'Ԝ' => 'w',
        // Cyrillic small letters
        'а' => 'a',
        'Ь' | 'ь' => 'b',
        'с' => 'c',
        'ԁ' => 'd',
        'е' | 'ё' => 'e',
        'һ' => 'h',
        'і' | 'ї' => 'i',
        'ј' => 'j',
        'ӏ' => 'l',
        'о' => 'o',
        'р' => 'p',
        'ԛ' => 'q',
        'ѕ' => 's',
        'у' | 'ү' => 'y',
        'ԝ' => 'w',
        'х' => 'x',
        'п' => 'n',
        'т' => 't',
        'к' => 'k',
        'м' => 'm',
        'в' => 'b',
        'н' => 'h',
        // Greek capitals
        'Α' => 'a',
        'Β' => 'b',
        'Ε' => 'e',
        'Ζ' => 'z',
        'Η' => 'h',
        'Ι' => 'i',
        'Κ' => 'k',
        'Μ' => 'm',
        'Ν' => 'n',
        'Ο' => 'o',
        'Ρ' => 'p',
        'Τ' => 't',
        'Υ' => 'y',
        'Χ' => 'x',
        // Greek small letters
        'α' => 'a',
        'ϲ' => 'c',
        'ε' => 'e',
        'ι' => 'i',
        'ϳ' => 'j',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        'γ' => 'y',
        // Latin look-alikes NFKC leaves alone
        'ı' => 'i',
        'ɡ' => 'g',
        'ɑ' => 'a',
        'ℓ' => 'l',
        _ => return None,
    };
    Some(latin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_takes_a_shortcut_to_the_same_answer() {
        let every: String = (0u8..128).map(char::from).collect();
        assert_eq!(normalize(&every), normalize_general(&every));
        for c in (0u8..128).map(char::from) {
            let text = format!(" a{c}{c}B \t{c}\n");
            assert_eq!(normalize(&text), normalize_general(&text), "{:?}", c);
        }
    }

    proptest::proptest! {
        #[test]
        fn ascii_normalizes_as_the_general_path(text in "[\\x00-\\x7F]{0,60}") {
            proptest::prop_assert_eq!(normalize(&text), normalize_general(&text));
        }
    }

    #[test]
    fn folds_case_and_whitespace() {
        assert_eq!(
            normalize("  IGNORE\t\tall \n\n previous  "),
            "ignore all previous"
        );
    }

    #[test]
    fn removes_zero_width_and_format_characters() {
        assert_eq!(normalize("ig\u{200B}no\u{200D}re"), "ignore");
        assert_eq!(
            normalize("in\u{00AD}struc\u{FEFF}tions\u{2060}"),
            "instructions"
        );
        assert_eq!(normalize("sys\u{E0041}tem"), "system");
    }

    #[test]
    fn nfkc_maps_fullwidth_and_math_letters() {
        assert_eq!(normalize("ＩＧＮＯＲＥ"), "ignore");
        assert_eq!(normalize("𝐢𝐠𝐧𝐨𝐫𝐞"), "ignore");
        assert_eq!(normalize("ⓘⓖⓝⓞⓡⓔ"), "ignore");
    }

    #[test]
    fn maps_cyrillic_and_greek_confusables() {
        // Cyrillic о, е, р, а, с and Greek ο, ι.
        assert_eq!(normalize("ignоrе prеviоus"), "ignore previous");
        assert_eq!(normalize("systеm рrompt"), "system prompt");
        assert_eq!(normalize("ΙGΝΟRΕ"), "ignore");
        assert_eq!(normalize("instructιοns"), "instructions");
        assert_eq!(normalize("АСЕ"), "ace");
    }

    #[test]
    fn keeps_ordinary_text() {
        assert_eq!(normalize("Grüße, señor! 42"), "grüße, señor! 42");
        assert_eq!(normalize(""), "");
        assert_eq!(normalize(" \u{200B} "), "");
    }
}
