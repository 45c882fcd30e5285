//! tiktoken's split patterns for ASCII text, written out by hand: the same pieces as the regexes
//! `O200K_PATTERN` and `CL100K_PATTERN` in `super` (with `\s+(?!\S)` as `\s+`, as there), at a
//! fraction of the cost of one regex search per piece. Only for text that is ASCII throughout:
//! any other byte and the caller takes the regex. The tests compare both on random ASCII text.
//!
//! Each function follows its pattern's alternatives in order, as a leftmost-first regex tries
//! them; the comments name the alternative. In ASCII, `\p{L}` is `[A-Za-z]` (upper case `\p{Lu}`,
//! lower case `\p{Ll}`; no `\p{Lt}`, `\p{Lm}`, `\p{Lo}` or `\p{M}`), `\p{N}` is `[0-9]` and `\s`
//! is `[\t\n\x0B\x0C\r ]`.

/// Which pattern to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsciiSplit {
    O200k,
    Cl100k,
}

impl AsciiSplit {
    /// End of the pattern's match that starts at byte `at` of the ASCII text `text`
    /// (`at < text.len()`): every byte starts one.
    pub fn match_end(self, text: &[u8], at: usize) -> usize {
        match self {
            AsciiSplit::O200k => o200k_end(text, at),
            AsciiSplit::Cl100k => cl100k_end(text, at),
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
}

fn is_line_break(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// `[^\r\n\p{L}\p{N}]`: what may come before a word.
fn is_word_prefix(b: u8) -> bool {
    !is_line_break(b) && !b.is_ascii_alphanumeric()
}

/// `[^\s\p{L}\p{N}]`: punctuation and symbols.
fn is_symbol(b: u8) -> bool {
    !is_space(b) && !b.is_ascii_alphanumeric()
}

/// The end of the run of bytes from `from` that `keep` accepts.
fn run(text: &[u8], from: usize, keep: impl Fn(u8) -> bool) -> usize {
    from + text[from..].iter().take_while(|&&b| keep(b)).count()
}

/// Length of a contraction at `at`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)`, 0 if none.
fn contraction(text: &[u8], at: usize) -> usize {
    let lower = |i: usize| text.get(i).map(u8::to_ascii_lowercase);
    if text.get(at) != Some(&b'\'') {
        return 0;
    }
    match (lower(at + 1), lower(at + 2)) {
        (Some(b's' | b't' | b'm' | b'd'), _) => 2,
        (Some(b'r' | b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => 3,
        _ => 0,
    }
}

/// `\s*[\r\n]+` then `\s+` (o200k) or `\s*[\r\n]` then `\s+` (cl100k), from a space at `at`:
/// the spaces up to the last line break among them, or all of them if none.
fn spaces_end(text: &[u8], at: usize) -> usize {
    let end = run(text, at, is_space);
    (at..end)
        .rev()
        .find(|&i| is_line_break(text[i]))
        .map_or(end, |i| i + 1)
}

fn o200k_end(text: &[u8], at: usize) -> usize {
    let first = text[at];
    // The optional `[^\r\n\p{L}\p{N}]` before a word: taken when it is one (without it, the
    // word alternatives cannot match at such a byte).
    let word = if is_word_prefix(first) { at + 1 } else { at };
    let uppers = run(text, word, |b| b.is_ascii_uppercase());
    // `…[\p{Lu}…]*[\p{Ll}…]+(?i:'s|…)?`: upper-case letters, then at least one lower-case.
    if text.get(uppers).is_some_and(u8::is_ascii_lowercase) {
        let end = run(text, uppers, |b| b.is_ascii_lowercase());
        return end + contraction(text, end);
    }
    // `…[\p{Lu}…]+[\p{Ll}…]*(?i:'s|…)?`: at least one upper-case letter (no lower-case follows).
    if uppers > word {
        return uppers + contraction(text, uppers);
    }
    // `\p{N}{1,3}`
    if first.is_ascii_digit() {
        return run(text, at, |b| b.is_ascii_digit()).min(at + 3);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
    let symbols = if first == b' ' { at + 1 } else { at };
    if text.get(symbols).is_some_and(|&b| is_symbol(b)) {
        let end = run(text, symbols, is_symbol);
        return run(text, end, |b| is_line_break(b) || b == b'/');
    }
    // `\s*[\r\n]+`, `\s+`
    spaces_end(text, at)
}

fn cl100k_end(text: &[u8], at: usize) -> usize {
    let first = text[at];
    // `'(?i:[sdmt]|ll|ve|re)`
    let contracted = contraction(text, at);
    if contracted > 0 {
        return at + contracted;
    }
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    let word = if is_word_prefix(first) { at + 1 } else { at };
    let letters = run(text, word, |b| b.is_ascii_alphabetic());
    if letters > word {
        return letters;
    }
    // `\p{N}{1,3}`
    if first.is_ascii_digit() {
        return run(text, at, |b| b.is_ascii_digit()).min(at + 3);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let symbols = if first == b' ' { at + 1 } else { at };
    if text.get(symbols).is_some_and(|&b| is_symbol(b)) {
        let end = run(text, symbols, is_symbol);
        return run(text, end, is_line_break);
    }
    // `\s+$`
    let spaces = run(text, at, is_space);
    if spaces == text.len() {
        return spaces;
    }
    // `\s*[\r\n]`, `\s+`
    spaces_end(text, at)
}
