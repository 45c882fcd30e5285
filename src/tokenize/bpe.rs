//! A compact byte-pair encoder over tiktoken's vocabularies, for counting and cutting text.
//!
//! tiktoken-rs keeps each encoding as three maps of owned byte strings (≈ 40 MiB resident for
//! `o200k_base`, ≈ 23 MiB for `cl100k_base`). This one reads the tokens from a vocabulary file
//! compiled into the binary (`*.vocab`, written by `examples/tokenizer_vocab.rs`) and keeps only
//! an offset per rank and an open-addressing table of ranks: ≈ 3 MiB for `o200k_base`. The merge
//! rule is tiktoken's own (lowest rank first, leftmost on a tie). The split into pieces is
//! tiktoken's pattern run as an anchored search on `regex-automata` (about three times faster
//! than `fancy-regex`, and twice the plain `regex` crate's `find_at`): its one look-ahead,
//! `\s+(?!\S)` (a run of spaces leaves its last one to the word after it), becomes a plain
//! `\s+` whose match gives back its last character when a non-space follows
//! ([`Vocabulary::for_each_piece`]). ASCII text is split by the same pattern written out by hand
//! ([`AsciiSplit`]: the split costs a quarter of the regex's instructions, a whole count 1.7×
//! fewer). The tests check the tokens against tiktoken-rs, and the hand-written split against
//! the regex.

use super::ascii_split::AsciiSplit;
use regex_automata::{meta, Anchored, Input};
use rustc_hash::FxBuildHasher;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;

type Rank = u32;

/// Where each ordinary token's bytes are, and a table to find a token's rank from its bytes.
pub struct Vocabulary {
    /// The tokens' bytes, concatenated in rank order (a slice of the compiled-in file).
    bytes: &'static [u8],
    /// `starts[r]..starts[r + 1]` are rank `r`'s bytes.
    starts: Vec<u32>,
    /// Open addressing, linear probing: `rank + 1`, or 0 for an empty slot.
    slots: Vec<u32>,
    /// The pre-tokenizer: text is cut into pieces first, and each piece is encoded on its own.
    /// tiktoken's pattern with `\s+(?!\S)` written as `\s+` (see [`Vocabulary::for_each_piece`]).
    splitter: meta::Regex,
    /// The same split for ASCII text, by hand (see [`AsciiSplit`]); `None`: the regex only.
    ascii_split: Option<AsciiSplit>,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary")
            .field("tokens", &self.len())
            .finish()
    }
}

/// Pieces at least this long are merged with a heap (O(n log n)) instead of rescanning (O(n²)):
/// one run of 100,000 letters is a single piece.
const LONG_PIECE: usize = 100;

impl Vocabulary {
    /// Reads a vocabulary file (see `examples/tokenizer_vocab.rs` for the format); `pattern` is
    /// the split pattern without look-around (see [`Vocabulary::for_each_piece`]).
    pub fn from_file(file: &'static [u8], pattern: &str) -> Result<Self, String> {
        let (count, rest) = file
            .split_first_chunk::<4>()
            .ok_or("shorter than its header")?;
        let count = u32::from_le_bytes(*count) as usize;
        if rest.len() < count {
            return Err(format!("{count} tokens but {} bytes", rest.len()));
        }
        let (lengths, bytes) = rest.split_at(count);
        let mut starts = Vec::with_capacity(count + 1);
        let mut at = 0u32;
        starts.push(0);
        for &len in lengths {
            if len == 0 {
                return Err("an empty token".to_owned());
            }
            at += u32::from(len);
            starts.push(at);
        }
        if at as usize != bytes.len() {
            return Err(format!("lengths add up to {at}, data is {}", bytes.len()));
        }
        let splitter = meta::Regex::new(pattern).map_err(|e| e.to_string())?;
        let mut vocabulary = Self {
            bytes,
            starts,
            slots: vec![0; (count * 2).next_power_of_two()],
            splitter,
            ascii_split: None,
        };
        for rank in 0..count as Rank {
            let token = vocabulary.token(rank);
            let mut slot = vocabulary.home(token);
            while vocabulary.slots[slot] != 0 {
                if vocabulary.token(vocabulary.slots[slot] - 1) == token {
                    return Err(format!("rank {rank} repeats a token"));
                }
                slot = (slot + 1) & (vocabulary.slots.len() - 1);
            }
            vocabulary.slots[slot] = rank + 1;
        }
        if (0..=255u8).any(|b| vocabulary.rank(&[b]).is_none()) {
            return Err("a byte has no token of its own".to_owned());
        }
        Ok(vocabulary)
    }

    /// Cuts ASCII text with `split`, which must cut it as this vocabulary's pattern does.
    pub fn with_ascii_split(mut self, split: AsciiSplit) -> Self {
        self.ascii_split = Some(split);
        self
    }

    /// Number of ordinary tokens.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Rank `rank`'s bytes.
    pub fn token(&self, rank: Rank) -> &[u8] {
        let r = rank as usize;
        &self.bytes[self.starts[r] as usize..self.starts[r + 1] as usize]
    }

    fn home(&self, bytes: &[u8]) -> usize {
        FxBuildHasher.hash_one(bytes) as usize & (self.slots.len() - 1)
    }

    /// The rank of the token made of exactly `bytes`, if there is one.
    pub fn rank(&self, bytes: &[u8]) -> Option<Rank> {
        let mask = self.slots.len() - 1;
        let mut slot = self.home(bytes);
        loop {
            let entry = self.slots[slot];
            if entry == 0 {
                return None;
            }
            if self.token(entry - 1) == bytes {
                return Some(entry - 1);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Number of tokens in `text` (tiktoken's `encode_ordinary(text).len()`).
    pub fn count(&self, text: &str) -> usize {
        let mut count = 0;
        self.for_each_token_end(text, |_| count += 1);
        count
    }

    /// Calls `token_end` with the byte offset where each of `text`'s tokens ends, in order.
    pub fn for_each_token_end(&self, text: &str, mut token_end: impl FnMut(usize)) {
        self.for_each_piece(text, |start, end| {
            self.piece_token_ends(start, &text.as_bytes()[start..end], &mut token_end);
        });
    }

    /// Calls `piece` with the bounds of each piece of `text`, as tiktoken's pattern cuts it.
    ///
    /// tiktoken's patterns end in `\s+(?!\S)|\s+` (`o200k_base`) or `\s+(?!\S)|\s`
    /// (`cl100k_base`): a run of spaces followed by a non-space is one piece without its last
    /// space (which then starts the next piece, ` word`), unless the run is one character long;
    /// at the end of the text the run is whole. Both become `\s+` here, and a match of it gives
    /// back its last character when it is at least two characters long and text follows. Only
    /// that alternative yields a run of spaces with no line break that is not at the end: a run
    /// holding `\r` or `\n` is taken by the line-break alternatives before it, and a run at the
    /// end of the text gives nothing back.
    ///
    /// ASCII text is cut by [`AsciiSplit`] (the same pieces, written out by hand) when the
    /// vocabulary has one; other text by the regex.
    fn for_each_piece(&self, text: &str, piece: impl FnMut(usize, usize)) {
        let ascii = self.ascii_split.filter(|_| text.is_ascii());
        self.for_each_piece_with(text, ascii, piece);
    }

    /// [`for_each_piece`](Self::for_each_piece), by `ascii` (the caller has checked that the
    /// text is ASCII) or, without it, by the regex.
    pub(super) fn for_each_piece_with(
        &self,
        text: &str,
        ascii: Option<AsciiSplit>,
        mut piece: impl FnMut(usize, usize),
    ) {
        let mut at = 0;
        while at < text.len() {
            let by_hand = ascii
                .map(|split| (at, split.match_end(text.as_bytes(), at)))
                .filter(|&(start, end)| end > start && end <= text.len());
            let Some((start, mut end)) = by_hand.or_else(|| self.regex_match(text, at)) else {
                break;
            };
            let run = &text[start..end];
            if end < text.len()
                && run
                    .chars()
                    .all(|c| c.is_whitespace() && c != '\r' && c != '\n')
            {
                let mut chars = run.chars();
                if let (Some(last), Some(_)) = (chars.next_back(), chars.next()) {
                    end -= last.len_utf8();
                }
            }
            piece(start, end);
            at = end;
        }
    }

    /// The split pattern's next match in `text` from byte `at`, as byte bounds.
    fn regex_match(&self, text: &str, at: usize) -> Option<(usize, usize)> {
        // Every character starts a match of some alternative of tiktoken's patterns, so the
        // next piece starts where the last one ended: an anchored search finds it without the
        // reverse scan an unanchored one needs for the start (the unanchored search stays as
        // the rule, should a pattern ever leave a character unmatched).
        let rest = Input::new(text).range(at..);
        self.splitter
            .search(&rest.clone().anchored(Anchored::Yes))
            .or_else(|| self.splitter.search(&rest))
            .map(|found| (found.start(), found.end()))
    }

    fn piece_token_ends(&self, start: usize, piece: &[u8], token_end: &mut impl FnMut(usize)) {
        if piece.is_empty() {
            return;
        }
        if piece.len() == 1 || self.rank(piece).is_some() {
            token_end(start + piece.len());
        } else if piece.len() < LONG_PIECE {
            self.merge_short(start, piece, token_end);
        } else {
            self.merge_long(start, piece, token_end);
        }
    }

    fn pair_rank(&self, piece: &[u8], from: usize, to: usize) -> Rank {
        self.rank(&piece[from..to]).unwrap_or(Rank::MAX)
    }

    /// tiktoken's `_byte_pair_merge`: parts are `(start, rank of merging it with the next)`.
    fn merge_short(&self, start: usize, piece: &[u8], token_end: &mut impl FnMut(usize)) {
        let mut parts: Vec<(usize, Rank)> = Vec::with_capacity(piece.len() + 1);
        let mut min_rank = (Rank::MAX, usize::MAX);
        for i in 0..piece.len() - 1 {
            let rank = self.pair_rank(piece, i, i + 2);
            if rank < min_rank.0 {
                min_rank = (rank, i);
            }
            parts.push((i, rank));
        }
        parts.push((piece.len() - 1, Rank::MAX));
        parts.push((piece.len(), Rank::MAX));

        let rank_at = |parts: &Vec<(usize, Rank)>, i: usize| {
            if i + 3 < parts.len() {
                self.pair_rank(piece, parts[i].0, parts[i + 3].0)
            } else {
                Rank::MAX
            }
        };
        while min_rank.0 != Rank::MAX {
            let i = min_rank.1;
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, i - 1);
            }
            parts[i].1 = rank_at(&parts, i);
            parts.remove(i + 1);
            min_rank = (Rank::MAX, usize::MAX);
            for (i, &(_, rank)) in parts[..parts.len() - 1].iter().enumerate() {
                if rank < min_rank.0 {
                    min_rank = (rank, i);
                }
            }
        }
        for &(end, _) in &parts[1..] {
            token_end(start + end);
        }
    }

    /// tiktoken-rs's `_byte_pair_merge_large`: the same merges, the next one taken from a heap.
    fn merge_long(&self, start: usize, piece: &[u8], token_end: &mut impl FnMut(usize)) {
        let len = piece.len();
        // For each token start: where the token ends, where the token after it ends, the rank
        // of merging the two (MAX: none) and the start of the token before.
        let mut state: Vec<Span> = (0..len)
            .map(|i| Span {
                prev: i.wrapping_sub(1),
                end: i + 1,
                next_end: i + 2,
                next_rank: Rank::MAX,
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(len);
        for (i, span) in state.iter_mut().take(len - 1).enumerate() {
            let rank = self.pair_rank(piece, i, i + 2);
            if rank != Rank::MAX {
                heap.push(Merge { start: i, rank });
                span.next_rank = rank;
            }
        }
        let propose =
            |state: &mut Vec<Span>, heap: &mut BinaryHeap<Merge>, at: usize, end: usize| {
                state[at].next_end = end;
                state[at].next_rank = Rank::MAX;
                if end <= len {
                    let rank = self.pair_rank(piece, at, end);
                    if rank != Rank::MAX {
                        heap.push(Merge { start: at, rank });
                        state[at].next_rank = rank;
                    }
                }
            };
        while let Some(left) = heap.pop() {
            if left.rank != state[left.start].next_rank {
                continue; // overtaken by an earlier merge
            }
            let left_start = left.start;
            let right_start = state[left_start].end;
            let right_end = state[left_start].next_end;
            let right_next_end = state[right_start].next_end;
            state[left_start].end = right_end;
            propose(&mut state, &mut heap, left_start, right_next_end);
            if right_end < len {
                state[right_end].prev = left_start;
            }
            if left_start > 0 {
                let prev_start = state[left_start].prev;
                propose(&mut state, &mut heap, prev_start, right_end);
            }
            state[right_start].next_rank = Rank::MAX;
        }
        let mut i = 0;
        while i < len {
            i = state[i].end;
            token_end(start + i);
        }
    }
}

struct Span {
    prev: usize,
    end: usize,
    next_end: usize,
    next_rank: Rank,
}

/// A candidate merge in [`Vocabulary::merge_long`]: lowest rank first, then leftmost.
#[derive(Eq, PartialEq)]
struct Merge {
    start: usize,
    rank: Rank,
}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.start.cmp(&self.start))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
