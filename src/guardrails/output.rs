//! Streaming output validation that never lets a forbidden string reach the client.
//!
//! A [`StreamScanner`] receives the upstream's text deltas in order and answers, for each one, the
//! text that is safe to send now. It holds back only the shortest tail in which a pattern could
//! still be starting (the longest pattern length − 1 characters, see [`StreamScanner::held_chars`]),
//! so a canary or a key split over any number of chunks is caught before its first character is
//! released, and everything else streams with no delay beyond that tail.
//!
//! Semantics (identical for every chunking, so streaming equals a one-shot scan): the text is
//! processed left to right from a cursor. At each position every rule is tried in order; a rule
//! matches at position `s` when its regex matches *starting at `s`* within its window (the next
//! `max_len` characters for [`OutputPattern::Regex`]; a literal's own length, zero-width characters
//! allowed in between, for [`OutputPattern::Literal`]). The first position with a match wins, ties
//! go to the earlier rule. A `Redact` match is replaced and the cursor moves past it; a `Block`
//! match ends the stream, releasing only the text before it. A decision at `s` is taken only once
//! the whole window after `s` has arrived (or the stream has ended), which is why it cannot depend
//! on chunk boundaries. Look-around at the window's edges sees the real neighbouring characters,
//! and a regex whose match can end in a look-around (`\b`, `$`) waits for one extra character.
//!
//! Regexes run on `regex-automata`'s finite automata (linear time, no backtracking) under a size
//! limit. Matching is on the raw text; literal patterns (canaries) also match with invisible
//! format characters (zero-width spaces and joiners, soft hyphens, TAG characters, ...) between
//! their characters, and ignore case. This module depends on nothing else in the crate.

use std::sync::Arc;

use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::meta::{self, Regex};
use regex_automata::util::pool::Pool;
use regex_automata::util::{start, syntax};
use regex_automata::{Anchored, Input};

use super::normalize::is_invisible;
use super::Check;

/// Longest pattern accepted, in characters: bounds the hold-back (and so the added latency).
pub const MAX_PATTERN_CHARS: usize = 1024;

/// Compiled-automaton size limit per rule, in bytes.
const REGEX_SIZE_LIMIT: usize = 4 << 20;

/// The invisible characters a literal may have between its characters; must agree with
/// [`is_invisible`].
const INVISIBLE_CLASS: &str = r"[\x{200B}-\x{200F}\x{2060}-\x{2064}\x{FEFF}\x{00AD}\x{E0000}-\x{E007F}\x{202A}-\x{202E}\x{2066}-\x{2069}\x{180E}\x{034F}\x{061C}\x{FE00}-\x{FE0F}]";

/// What to do when a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputAction {
    /// Cut the stream before the match; nothing from the match on is released.
    Block,
    /// Replace the match with this text and go on.
    Redact(String),
}

/// One output check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRule {
    /// Stable identifier (the request log, the `Blocked` answer).
    pub id: String,
    /// Which kind of check it is (the metric label).
    pub check: Check,
    /// What to look for.
    pub pattern: OutputPattern,
    /// What to do about it.
    pub action: OutputAction,
}

/// What an [`OutputRule`] looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputPattern {
    /// An exact string, e.g. a per-request canary. Case-insensitive; also found with invisible
    /// format characters inserted between its characters.
    Literal(String),
    /// A regex (regex-automata syntax, case-sensitive unless it says `(?i)`) and the longest match
    /// it can have, in characters. Matches are confined to `max_len` characters; `max_len` is what
    /// the scanner holds back, so a secret rule should match a distinctive prefix of the secret
    /// (blocking on the first 20 characters of a key is as good as on all of it) rather than the
    /// whole of a long token.
    Regex {
        /// The pattern; must not match the empty string.
        regex: String,
        /// Longest match, in characters (1..=[`MAX_PATTERN_CHARS`]).
        max_len: usize,
    },
    /// A marker: `prefix` followed by `digits` decimal digits, matched like a
    /// [`Literal`](Self::Literal) (case-insensitive, invisible characters allowed in between).
    /// One compiled rule catches every canary of a family, so nothing is compiled per request.
    Marker { prefix: String, digits: usize },
    /// Like [`Regex`](Self::Regex), but a match counts only if `check` accepts its text; a
    /// rejected match is no match at that position.
    Checked {
        regex: String,
        max_len: usize,
        check: Validator,
    },
}

/// A test a [`OutputPattern::Checked`] match must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validator {
    /// The Luhn checksum of its digits ([`luhn_valid`]).
    Luhn,
}

impl Validator {
    /// Whether `text` passes.
    pub fn accepts(self, text: &str) -> bool {
        match self {
            Validator::Luhn => luhn_valid(text),
        }
    }
}

/// The answer to [`StreamScanner::push`] and [`StreamScanner::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutput {
    /// Safe to send now (redactions applied); may be empty.
    Text(String),
    /// A `Block` rule matched: send `safe_prefix` (the text before the match not yet released),
    /// then end the stream. Every later call answers `Blocked` again with an empty prefix.
    Blocked {
        /// The rule that matched.
        rule: RuleHit,
        /// Text before the match that had not been released yet.
        safe_prefix: String,
    },
}

#[derive(Debug, Clone, Copy)]
enum Window {
    /// A literal of `len` visible characters: its window is its own visible characters.
    Literal { len: usize },
    /// A regex confined to `max_len` characters; `lookahead` when a look-around can end a match
    /// (then deciding needs the character after the window).
    Regex { max_len: usize, lookahead: bool },
}

/// The rule that blocked a reply: its id and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHit {
    pub id: String,
    pub check: Check,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    id: String,
    check: Check,
    action: OutputAction,
    regex: Regex,
    /// The same pattern as a lazy DFA, stepped byte by byte from a candidate start to learn
    /// whether a match can still begin there (shared; each scanner has its own cache).
    dfa: Arc<DFA>,
    window: Window,
    validate: Option<Validator>,
}

/// A match found in the buffer, as byte offsets.
#[derive(Debug, Clone, Copy)]
struct Found {
    start: usize,
    end: usize,
}

/// One lazy-DFA cache per rule, in rule order.
type Caches = Vec<DfaCache>;
/// Makes a scanner's caches: clones of the warmed ones (or fresh ones before a warm-up).
type MakeCaches = Box<dyn Fn() -> Caches + Send + Sync + std::panic::RefUnwindSafe>;

/// The compiled rules a template and all its clones share (compiled once, never copied per
/// reply), with a pool of lazy-DFA caches: a scanner takes one set for the length of a `push`,
/// so the automata states built for one reply serve the next one too.
struct Rules {
    list: Vec<CompiledRule>,
    /// Characters a regex rule needs after its start position before it can be decided, minus one.
    regex_hold: usize,
    /// Visible characters a literal rule needs, minus one.
    literal_hold: usize,
    caches: Pool<Caches, MakeCaches>,
    starts: StartFilter,
}

impl Rules {
    /// Rules whose scanners start from clones of `seed` (one cache per rule).
    fn new(list: Vec<CompiledRule>, regex_hold: usize, literal_hold: usize, seed: Caches) -> Self {
        let make: MakeCaches = Box::new(move || seed.clone());
        Self {
            starts: StartFilter::build(&list),
            list,
            regex_hold,
            literal_hold,
            caches: Pool::new(make),
        }
    }

    /// Fresh (cold) caches for `list`.
    fn cold_caches(list: &[CompiledRule]) -> Caches {
        list.iter().map(|rule| rule.dfa.create_cache()).collect()
    }
}

/// Which bytes may begin a match, by the byte before them: at a position whose byte no rule's
/// anchored automaton survives, no match can begin, and [`could_start`] need not run every
/// rule there (most positions of ordinary text). Read off the automata themselves: the byte
/// before a position only matters through each automaton's start state, so bytes giving every
/// rule the same start state share a class. An automaton that gives up counts as surviving.
struct StartFilter {
    /// The class of the byte before a position; index 256: no byte (the text's start).
    class_of: [u16; 257],
    /// Per class, per byte: some rule may begin a match at a byte of this value.
    may_start: Vec<[bool; 256]>,
}

impl StartFilter {
    fn build(list: &[CompiledRule]) -> Self {
        let mut caches = Rules::cold_caches(list);
        let mut class_of = [0u16; 257];
        let mut starts: Vec<Vec<Option<LazyStateID>>> = Vec::new();
        for (before, class) in class_of.iter_mut().enumerate() {
            let look_behind = u8::try_from(before).ok();
            let config = start::Config::new()
                .anchored(Anchored::Yes)
                .look_behind(look_behind);
            let states: Vec<Option<LazyStateID>> = list
                .iter()
                .zip(caches.iter_mut())
                .map(|(rule, cache)| rule.dfa.start_state(cache, &config).ok())
                .collect();
            let index = match starts.iter().position(|s| *s == states) {
                Some(index) => index,
                None => {
                    starts.push(states);
                    starts.len() - 1
                }
            };
            *class = u16::try_from(index).unwrap_or(u16::MAX);
        }
        let may_start: Vec<[bool; 256]> = starts
            .iter()
            .map(|states| {
                let mut row = [false; 256];
                for (byte, may) in row.iter_mut().enumerate() {
                    let byte = u8::try_from(byte).unwrap_or(u8::MAX);
                    *may = list.iter().zip(caches.iter_mut()).zip(states).any(
                        |((rule, cache), state)| match state {
                            None => true,
                            Some(state) if state.is_dead() => false,
                            Some(state) => rule
                                .dfa
                                .next_state(cache, *state, byte)
                                .map_or(true, |next| !next.is_dead()),
                        },
                    );
                }
                row
            })
            .collect();
        // State ids are valid only while a cache is not cleared: if one was, trust nothing.
        if caches.iter().any(|cache| cache.clear_count() > 0) || starts.len() > 256 {
            return Self {
                class_of: [0; 257],
                may_start: vec![[true; 256]],
            };
        }
        Self {
            class_of,
            may_start,
        }
    }

    /// Whether some rule may begin a match at byte `at` of `buf` (a character boundary).
    fn may_start_at(&self, buf: &[u8], at: usize) -> bool {
        let before = at.checked_sub(1).and_then(|i| buf.get(i)).copied();
        match buf.get(at) {
            Some(&byte) => self.may_start_after(before, byte),
            None => true,
        }
    }

    /// Whether some rule may begin a match at a character starting with `byte`, after the byte
    /// `before` (`None`: the text's start).
    fn may_start_after(&self, before: Option<u8>, byte: u8) -> bool {
        let before = before.map_or(256, usize::from);
        let class = usize::from(self.class_of[before]);
        self.may_start
            .get(class)
            .is_none_or(|row| row[usize::from(byte)])
    }
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("list", &self.list)
            .field("regex_hold", &self.regex_hold)
            .field("literal_hold", &self.literal_hold)
            .finish_non_exhaustive()
    }
}

/// Scans one response stream. Create one per response with [`StreamScanner::new`], feed deltas in
/// order with [`push`](Self::push), then call [`finish`](Self::finish) at the end of the stream.
/// Cloning one is cheap (its compiled rules are shared): clone a compiled template per reply.
#[derive(Debug, Clone)]
pub struct StreamScanner {
    rules: Arc<Rules>,
    /// Raw text: `buf[..start]` is one already-released character kept as look-behind context,
    /// `buf[start..]` is held back.
    buf: String,
    start: usize,
    blocked: Option<RuleHit>,
    finished: bool,
    /// Characters released later than the delta that brought them (the cost of scanning).
    delayed_chars: usize,
}

impl StreamScanner {
    /// Compile `rules` (order is priority when two match at the same position). Fails, naming the
    /// rule id, on an empty or duplicate id, an empty literal, an invalid regex, a regex that can
    /// match the empty string, or a `max_len` outside 1..=[`MAX_PATTERN_CHARS`].
    ///
    /// Compiling is not free (see [`add_rule`](Self::add_rule) for sharing compiled rules).
    pub fn new(rules: Vec<OutputRule>) -> Result<Self, String> {
        let mut scanner = Self {
            rules: Arc::new(Rules::new(Vec::new(), 0, 0, Vec::new())),
            buf: String::new(),
            start: 0,
            blocked: None,
            finished: false,
            delayed_chars: 0,
        };
        for rule in rules {
            scanner.add_rule(rule)?;
        }
        Ok(scanner)
    }

    /// Append one rule (lowest priority so far), with the same checks as [`new`](Self::new).
    /// Meant for a fresh scanner: this scanner gets rules of its own (its clones from here on
    /// share them), with cold caches. Rules shared by every reply belong in the template,
    /// compiled once (as the canary family's rule is).
    pub fn add_rule(&mut self, rule: OutputRule) -> Result<(), String> {
        if rule.id.trim().is_empty() {
            return Err("output rule with an empty id".to_string());
        }
        if self.rules.list.iter().any(|c| c.id == rule.id) {
            return Err(format!("output rule {}: duplicate id", rule.id));
        }
        let (pattern, case_insensitive, window, validate) = match &rule.pattern {
            OutputPattern::Literal(_) | OutputPattern::Marker { .. } => {
                // Each atom is one visible character (escaped) or class.
                let atoms: Vec<String> = match &rule.pattern {
                    OutputPattern::Marker { prefix, digits } => prefix
                        .chars()
                        .filter(|&c| !is_invisible(c))
                        .map(|c| regex_syntax::escape(c.encode_utf8(&mut [0; 4])))
                        .chain(std::iter::repeat_n("[0-9]".to_string(), *digits))
                        .collect(),
                    OutputPattern::Literal(text) => text
                        .chars()
                        .filter(|&c| !is_invisible(c))
                        .map(|c| regex_syntax::escape(c.encode_utf8(&mut [0; 4])))
                        .collect(),
                    _ => Vec::new(),
                };
                if atoms.is_empty() {
                    return Err(format!("output rule {}: empty literal", rule.id));
                }
                if atoms.len() > MAX_PATTERN_CHARS {
                    return Err(format!(
                        "output rule {}: literal longer than {MAX_PATTERN_CHARS} characters",
                        rule.id
                    ));
                }
                // Found anywhere, glued to other text too: a literal is held only from its first
                // character, so choose literals whose first letter rarely ends a chunk (the
                // canary starts with `q`).
                let pattern = atoms.join(&format!("{INVISIBLE_CLASS}*"));
                (pattern, true, Window::Literal { len: atoms.len() }, None)
            }
            OutputPattern::Regex { regex, max_len }
            | OutputPattern::Checked { regex, max_len, .. } => {
                if *max_len == 0 || *max_len > MAX_PATTERN_CHARS {
                    return Err(format!(
                        "output rule {}: max_len must be 1..={MAX_PATTERN_CHARS}",
                        rule.id
                    ));
                }
                let hir = regex_syntax::ParserBuilder::new()
                    .build()
                    .parse(regex)
                    .map_err(|e| format!("output rule {}: invalid regex: {e}", rule.id))?;
                let props = hir.properties();
                if props.minimum_len() == Some(0) {
                    return Err(format!(
                        "output rule {}: regex can match the empty string",
                        rule.id
                    ));
                }
                // A look-around that can end a match needs the character after the window.
                let lookahead = !props.look_set_suffix_any().is_empty();
                let validate = match &rule.pattern {
                    OutputPattern::Checked { check, .. } => Some(*check),
                    _ => None,
                };
                (
                    regex.clone(),
                    false,
                    Window::Regex {
                        max_len: *max_len,
                        lookahead,
                    },
                    validate,
                )
            }
        };
        let regex = compile(&rule.id, &pattern, case_insensitive)?;
        let dfa = compile_dfa(&rule.id, &pattern, case_insensitive)?;
        let (mut regex_hold, mut literal_hold) = (self.rules.regex_hold, self.rules.literal_hold);
        match window {
            Window::Literal { len } => literal_hold = literal_hold.max(len - 1),
            Window::Regex { max_len, lookahead } => {
                regex_hold = regex_hold.max(max_len - 1 + usize::from(lookahead))
            }
        }
        let mut list = self.rules.list.clone();
        list.push(CompiledRule {
            id: rule.id,
            check: rule.check,
            action: rule.action,
            regex,
            dfa: Arc::new(dfa),
            window,
            validate,
        });
        let seed = Rules::cold_caches(&list);
        self.rules = Arc::new(Rules::new(list, regex_hold, literal_hold, seed));
        Ok(())
    }

    /// The most characters this scanner can hold back while the stream runs, not counting
    /// invisible characters inside a partial literal. Ordinary text is held far less: only from
    /// a position where a match could still begin (see [`held_chars`](Self::held_chars)).
    pub fn max_hold_chars(&self) -> usize {
        self.rules.regex_hold.max(self.rules.literal_hold)
    }

    /// Characters currently held back (received, not yet released).
    pub fn held_chars(&self) -> usize {
        self.buf
            .get(self.start..)
            .map_or(0, |held| held.chars().count())
    }

    /// Characters released later than the delta that brought them, over the whole stream so far:
    /// what scanning cost in delay (0 for a reply in which nothing could begin a match).
    pub fn delayed_chars(&self) -> usize {
        self.delayed_chars
    }

    /// Runs a sample of ordinary text (every printable ASCII character, and the first letters of
    /// each rule) through a copy, keeping the automata states it built: clones of a warmed
    /// template (and their clones) start with them instead of building them on a reply's first
    /// characters.
    pub fn warm_up(&mut self) {
        let mut caches = Rules::cold_caches(&self.rules.list);
        let mut probe = self.clone();
        probe.buf.clear();
        probe.start = 0;
        let printable: String = (' '..='~').collect();
        let sample = format!(
            "{printable}\nThe quick brown fox, 42 times; see https://example.com/a?b=c. \
             sk ghp xoxb AKIA ASIA eyJ BEGIN qz Q\n{printable}"
        );
        let rules = Arc::clone(&self.rules);
        for piece in sample.split_inclusive(' ') {
            let _ = probe.push_with(&rules, &mut caches, piece);
        }
        let _ = probe.finish_with(&rules, &mut caches);
        self.rules = Arc::new(Rules::new(
            rules.list.clone(),
            rules.regex_hold,
            rules.literal_hold,
            caches,
        ));
    }

    /// Whether a `Block` rule has matched.
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// Feed the next delta; returns what can be released now.
    pub fn push(&mut self, delta: &str) -> ScanOutput {
        self.push_unless_whole(delta)
            .unwrap_or_else(|| ScanOutput::Text(delta.to_string()))
    }

    /// [`push`](Self::push) without copying ordinary text: `None` when
    /// [`release_whole`](Self::release_whole) took all of `delta`, as it came.
    pub fn push_unless_whole(&mut self, delta: &str) -> Option<ScanOutput> {
        if self.release_whole(delta) {
            return None;
        }
        let rules = Arc::clone(&self.rules);
        let mut caches = rules.caches.get();
        Some(self.push_with(&rules, &mut caches, delta))
    }

    /// End of stream: scan and release the held tail.
    pub fn finish(&mut self) -> ScanOutput {
        let rules = Arc::clone(&self.rules);
        let mut caches = rules.caches.get();
        self.finish_with(&rules, &mut caches)
    }

    /// The fast path of ordinary text: when nothing is held and no rule may begin a match at
    /// any character of `delta` (by the start filter, which sees the character before each
    /// one), takes all of it as released, as it came, without running an automaton (only its
    /// last character stays, as look-behind context) and answers true. Otherwise changes
    /// nothing and answers false. [`push`](Self::push) tries this first.
    fn release_whole(&mut self, delta: &str) -> bool {
        if self.blocked.is_some()
            || self.finished
            || self.start != self.buf.len()
            || delta.is_empty()
        {
            return false;
        }
        let starts = &self.rules.starts;
        let mut before = self.buf.as_bytes().last().copied();
        for &byte in delta.as_bytes() {
            // UTF-8 continuation bytes are inside a character: no match begins there.
            if !is_utf8_continuation(byte) && starts.may_start_after(before, byte) {
                return false;
            }
            before = Some(byte);
        }
        let last = delta.char_indices().next_back().map_or(0, |(i, _)| i);
        self.buf.clear();
        self.buf.push_str(&delta[last..]);
        self.start = self.buf.len();
        true
    }

    /// [`push`](Self::push) with these rules' caches in hand.
    fn push_with(&mut self, rules: &Rules, caches: &mut Caches, delta: &str) -> ScanOutput {
        if let Some(rule) = &self.blocked {
            return ScanOutput::Blocked {
                rule: rule.clone(),
                safe_prefix: String::new(),
            };
        }
        if self.finished {
            // Text after the end of the stream is ignored rather than released unscanned.
            return ScanOutput::Text(String::new());
        }
        self.buf.push_str(delta);
        let out = self.advance(rules, caches, false);
        // Characters of this delta still held are delayed (each is counted once, here).
        self.delayed_chars += self.held_chars().min(delta.chars().count());
        out
    }

    /// [`finish`](Self::finish) with these rules' caches in hand.
    fn finish_with(&mut self, rules: &Rules, caches: &mut Caches) -> ScanOutput {
        if let Some(rule) = &self.blocked {
            return ScanOutput::Blocked {
                rule: rule.clone(),
                safe_prefix: String::new(),
            };
        }
        if self.finished {
            return ScanOutput::Text(String::new());
        }
        self.finished = true;
        let out = self.advance(rules, caches, true);
        self.buf.clear();
        self.start = 0;
        out
    }

    /// Release everything decidable; act on matches.
    fn advance(&mut self, rules: &Rules, caches: &mut Caches, ended: bool) -> ScanOutput {
        let mut out = String::new();
        loop {
            let (decidable, candidates) = if ended {
                let end = self.buf.len();
                (end, self.may_start_in(&rules.starts, end))
            } else {
                self.decidable_end(&rules.list, &rules.starts, caches)
            };
            let mut best: Option<(usize, Found)> = None;
            // No rule can begin a match where the start filter says none may: skip the search.
            if candidates {
                for (index, rule) in rules.list.iter().enumerate() {
                    if let Some(found) = self.first_match(rule, self.start, decidable) {
                        if best.is_none_or(|(_, b)| found.start < b.start) {
                            best = Some((index, found));
                        }
                    }
                }
            }
            let Some((index, found)) = best else {
                if decidable > self.start {
                    out.push_str(&self.buf[self.start..decidable]);
                    self.start = decidable;
                }
                break;
            };
            out.push_str(&self.buf[self.start..found.start]);
            let Some(rule) = rules.list.get(index) else {
                break;
            };
            match &rule.action {
                OutputAction::Block => {
                    let hit = RuleHit {
                        id: rule.id.clone(),
                        check: rule.check,
                    };
                    self.blocked = Some(hit.clone());
                    self.buf.clear();
                    self.start = 0;
                    return ScanOutput::Blocked {
                        rule: hit,
                        safe_prefix: out,
                    };
                }
                OutputAction::Redact(replacement) => {
                    out.push_str(replacement);
                    // The replacement takes the match's place in the buffer, so what follows
                    // is judged with the client's text before it (its look-behind), not the
                    // raw text that was redacted.
                    let replacement = replacement.clone();
                    self.buf.replace_range(found.start..found.end, &replacement);
                    self.start = found.start + replacement.len();
                }
            }
        }
        self.compact();
        ScanOutput::Text(out)
    }

    /// Byte offset of the first held position where some rule could still begin a match (its
    /// automaton, run over the text received so far, has neither died nor filled its window);
    /// everything before it can be decided now. The end of the buffer when there is none. With
    /// it, whether the start filter let any position before that offset through (if not, no
    /// match begins in the decidable text).
    fn decidable_end(
        &self,
        rules: &[CompiledRule],
        starts: &StartFilter,
        caches: &mut Caches,
    ) -> (usize, bool) {
        let mut at = self.start;
        let mut candidates = false;
        while at < self.buf.len() {
            if starts.may_start_at(self.buf.as_bytes(), at) {
                for (rule, cache) in rules.iter().zip(caches.iter_mut()) {
                    if could_start(rule, cache, &self.buf, at) {
                        return (at, candidates);
                    }
                }
                candidates = true;
            }
            at += self.buf[at..].chars().next().map_or(1, char::len_utf8);
        }
        (self.buf.len(), candidates)
    }

    /// Whether the start filter lets some position of the held text before byte `end` through.
    fn may_start_in(&self, starts: &StartFilter, end: usize) -> bool {
        self.buf.get(self.start..end).is_some_and(|held| {
            held.char_indices()
                .any(|(i, _)| starts.may_start_at(self.buf.as_bytes(), self.start + i))
        })
    }

    /// The first match of `rule` starting in `from..decidable`.
    fn first_match(&self, rule: &CompiledRule, from: usize, decidable: usize) -> Option<Found> {
        let mut at = from;
        while at < decidable {
            let candidate = rule
                .regex
                .search(&Input::new(&self.buf).span(at..self.buf.len()))?;
            if candidate.start() >= decidable {
                return None;
            }
            match rule.window {
                Window::Literal { .. } => {
                    return Some(Found {
                        start: candidate.start(),
                        end: candidate.end(),
                    })
                }
                Window::Regex { max_len, .. } => {
                    // Confine the match to the window; look-around still sees the real text.
                    let s = candidate.start();
                    let window_end = self.buf[s..]
                        .char_indices()
                        .nth(max_len)
                        .map_or(self.buf.len(), |(i, _)| s + i);
                    let input = Input::new(&self.buf)
                        .span(s..window_end)
                        .anchored(Anchored::Yes);
                    if let Some(m) = rule.regex.search(&input) {
                        let accepted = rule
                            .validate
                            .is_none_or(|check| check.accepts(&self.buf[m.start()..m.end()]));
                        if accepted {
                            return Some(Found {
                                start: m.start(),
                                end: m.end(),
                            });
                        }
                    }
                    // Only a longer-than-window (or rejected) match starts here; look further on.
                    at = s + self.buf[s..].chars().next().map_or(1, char::len_utf8);
                }
            }
        }
        None
    }

    /// Drop released text, keeping one character of look-behind context.
    fn compact(&mut self) {
        let keep_from = self.buf[..self.start]
            .char_indices()
            .next_back()
            .map_or(self.start, |(i, _)| i);
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.start -= keep_from;
        }
    }
}

/// Whether `byte` continues a UTF-8 character (is not the first byte of one).
fn is_utf8_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

fn compile(id: &str, pattern: &str, case_insensitive: bool) -> Result<Regex, String> {
    meta::Builder::new()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
                .onepass_size_limit(Some(REGEX_SIZE_LIMIT))
                .dfa_size_limit(Some(REGEX_SIZE_LIMIT)),
        )
        .syntax(syntax::Config::new().case_insensitive(case_insensitive))
        .build(pattern)
        .map_err(|e| format!("output rule {id}: invalid regex: {e}"))
}

fn compile_dfa(id: &str, pattern: &str, case_insensitive: bool) -> Result<DFA, String> {
    DFA::builder()
        .configure(
            DFA::config()
                .cache_capacity(REGEX_SIZE_LIMIT)
                // Unicode word boundaries on non-ASCII text give up (conservative: held).
                .unicode_word_boundary(true),
        )
        .syntax(syntax::Config::new().case_insensitive(case_insensitive))
        .thompson(
            regex_automata::nfa::thompson::Config::new().nfa_size_limit(Some(REGEX_SIZE_LIMIT)),
        )
        .build(pattern)
        .map_err(|e| format!("output rule {id}: invalid regex: {e}"))
}

/// Whether `rule` could still match starting at byte `at` of `buf`, given only the text received
/// so far: its anchored automaton, fed `buf[at..]`, is not dead and its window is not yet full.
/// Any doubt (an automaton that gives up) answers yes, which only holds text longer.
fn could_start(rule: &CompiledRule, cache: &mut DfaCache, buf: &str, at: usize) -> bool {
    let input = Input::new(buf).span(at..buf.len()).anchored(Anchored::Yes);
    let Ok(mut state) = rule.dfa.start_state_forward(cache, &input) else {
        return true;
    };
    if state.is_dead() {
        return false;
    }
    let (window, literal) = match rule.window {
        Window::Literal { len } => (len, true),
        Window::Regex { max_len, lookahead } => (max_len + usize::from(lookahead), false),
    };
    let mut seen = 0usize;
    for c in buf[at..].chars() {
        let mut bytes = [0u8; 4];
        for &b in c.encode_utf8(&mut bytes).as_bytes() {
            match rule.dfa.next_state(cache, state, b) {
                Ok(next) if next.is_dead() => return false,
                Ok(next) if next.is_quit() => return true,
                Ok(next) => state = next,
                Err(_) => return true,
            }
        }
        if !(literal && is_invisible(c)) {
            seen += 1;
        }
        if seen >= window {
            // The whole window is here: decidable, whatever follows.
            return false;
        }
    }
    true
}

fn block_regex(id: &str, regex: &str, max_len: usize) -> OutputRule {
    OutputRule {
        id: id.to_string(),
        check: Check::Secret,
        pattern: OutputPattern::Regex {
            regex: regex.to_string(),
            max_len,
        },
        action: OutputAction::Block,
    }
}

/// Secret patterns, all `Block`. Each matches a distinctive prefix of the secret (enough to be
/// sure, short enough to bound the window): OpenAI keys (`sk-` and 20 more, or `sk-proj-`,
/// `sk-svcacct-`, `sk-admin-` and 20 more), Anthropic keys (`sk-ant-api03-` and 16 more), AWS
/// access key ids (`AKIA`/`ASIA` and 16 more), private-key headers (`BEGIN … PRIVATE KEY`: the
/// dashes before it may go out), GitHub tokens (`ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` or
/// `github_pat_` and 20 more), Slack tokens (`xoxb-` … and 10 more) and JWTs (an `eyJ` header of
/// up to 180 characters, `.eyJ`, 8 payload characters).
///
/// Every one must start a word (`(?-u:\b)`: the character before is not a letter, digit or
/// `_`). That is what makes scanning free on ordinary text: a word that merely ends in `s`, `A`
/// or `x` cannot begin a key, so only a chunk ending in a word that starts like a key (a lone
/// `A`, `sk`, `eyJ`…) is held, and only until the next character rules it out. A key glued to a
/// preceding letter is not caught (nor is one spelled out with spaces): the rules catch keys as
/// keys appear, not every encoding of one. The boundary is judged on the text the client gets
/// (a redaction just before counts as its replacement).
pub fn default_secret_rules() -> Vec<OutputRule> {
    vec![
        block_regex(
            "openai_api_key",
            r"(?-u:\b)sk-(?:[A-Za-z0-9]{20}|(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20})",
            31,
        ),
        block_regex(
            "anthropic_api_key",
            r"(?-u:\b)sk-ant-(?:api|admin|sid)[0-9]{2}-[A-Za-z0-9_\-]{16}",
            31,
        ),
        block_regex(
            "aws_access_key_id",
            r"(?-u:\b)(?:AKIA|ASIA)[0-9A-Z]{16}",
            20,
        ),
        block_regex(
            "private_key",
            r"(?-u:\b)BEGIN [A-Z0-9 ]{0,14}PRIVATE KEY",
            31,
        ),
        block_regex(
            "github_token",
            r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{20}|github_pat_[A-Za-z0-9_]{20})",
            31,
        ),
        block_regex("slack_token", r"(?-u:\b)xox[bpars]-[A-Za-z0-9\-]{10}", 15),
        block_regex(
            "jwt",
            r"(?-u:\b)eyJ[A-Za-z0-9_\-]{4,180}\.eyJ[A-Za-z0-9_\-]{8}",
            195,
        ),
    ]
}

/// Payment card numbers → `[card]`, e-mail addresses → `[email]` and phone numbers → `[phone]`
/// (all `Redact`). A card number is 13 to 19 digits starting with 2–6, single spaces or dashes
/// allowed between digits, and must pass the Luhn checksum (so order and tracking numbers of
/// that length mostly pass through: 9 in 10 fail it). Addresses longer than 48 characters and
/// numbers longer than 24 are redacted only in part.
pub fn pii_redaction_rules() -> Vec<OutputRule> {
    vec![
        OutputRule {
            id: "payment_card".to_string(),
            check: Check::Pii,
            pattern: OutputPattern::Checked {
                regex: r"(?-u:\b)[2-6](?:[ \-]?[0-9]){12,18}(?-u:\b)".to_string(),
                max_len: 37,
                check: Validator::Luhn,
            },
            action: OutputAction::Redact("[card]".to_string()),
        },
        OutputRule {
            id: "email".to_string(),
            check: Check::Pii,
            pattern: OutputPattern::Regex {
                regex: r"[A-Za-z0-9._%+\-]{1,32}@[A-Za-z0-9\-]{1,30}(?:\.[A-Za-z0-9\-]{1,30}){0,3}\.[A-Za-z]{2,12}".to_string(),
                max_len: 48,
            },
            action: OutputAction::Redact("[email]".to_string()),
        },
        OutputRule {
            id: "phone".to_string(),
            check: Check::Pii,
            pattern: OutputPattern::Regex {
                regex: r"(?:\+[1-9][0-9]{0,2}[ .\-]?)?(?:\([0-9]{2,4}\)[ .\-]?|[0-9]{2,4}[ .\-])[0-9]{3,4}[ .\-]?[0-9]{3,4}".to_string(),
                max_len: 24,
            },
            action: OutputAction::Redact("[phone]".to_string()),
        },
    ]
}

/// The Luhn checksum of the digits in `text` (other characters ignored).
pub fn luhn_valid(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() < 2 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// The prefix of every canary [`new_canary`] makes.
pub const CANARY_PREFIX: &str = "qzcn-";
/// Decimal digits after [`CANARY_PREFIX`]: 69.8 random bits. Digits, not hex: the token
/// encoders cut a run of digits into groups of three that are each one token, so a canary's
/// token count is known without encoding it ([`TokenCounter::count_with_digits`]).
///
/// [`TokenCounter::count_with_digits`]: crate::tokenize::TokenCounter::count_with_digits
pub const CANARY_DIGITS: usize = 21;

/// A `Block` rule (id `canary`) for every canary [`new_canary`] makes: compiled once and shared,
/// where [`canary_rule`] would compile a regex per request (about half a millisecond). Any
/// canary-shaped string in a reply is a leak: only the system prompt carries one.
pub fn canary_family_rule() -> OutputRule {
    OutputRule {
        id: "canary".to_string(),
        check: Check::Canary,
        pattern: OutputPattern::Marker {
            prefix: CANARY_PREFIX.to_string(),
            digits: CANARY_DIGITS,
        },
        action: OutputAction::Block,
    }
}

/// A `Block` rule for one given canary (id `canary`).
pub fn canary_rule(canary: &str) -> OutputRule {
    OutputRule {
        id: "canary".to_string(),
        check: Check::Canary,
        pattern: OutputPattern::Literal(canary.to_string()),
        action: OutputAction::Block,
    }
}

/// A fresh canary: `qzcn-` followed by 21 random decimal digits (from the 122 random bits of
/// a v4 UUID). It starts with `q`, the letter that least often ends an English word, because
/// the scanner holds a chunk that ends in the canary's first letters (`q`, `qz`, …) until the
/// next character: with `q` that almost never happens to ordinary text.
pub fn new_canary() -> String {
    let bits = uuid::Uuid::new_v4().as_u128();
    // A v4 UUID's fixed bits are its version (bits 76–79) and variant (bits 62–63): the 122
    // others, packed together, are random; the number keeps log2(10^21) ≈ 69.8 of them.
    let random = (bits & ((1 << 62) - 1)) | (((bits >> 64) & 0xFFF) << 62) | ((bits >> 80) << 74);
    let number = random % 10u128.pow(CANARY_DIGITS as u32);
    format!("{CANARY_PREFIX}{number:0width$}", width = CANARY_DIGITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_rules(canary: &str) -> Vec<OutputRule> {
        let mut rules = vec![canary_rule(canary)];
        rules.extend(default_secret_rules());
        rules.extend(pii_redaction_rules());
        rules
    }

    /// Everything released for `chunks`, and the blocking rule if any.
    fn run(rules: Vec<OutputRule>, chunks: &[&str]) -> (String, Option<String>) {
        run_with(&StreamScanner::new(rules).unwrap(), chunks)
    }

    /// Like [`run`] with a compiled template (compiling is the slow part in debug builds).
    fn run_with(template: &StreamScanner, chunks: &[&str]) -> (String, Option<String>) {
        let mut scanner = template.clone();
        let mut released = String::new();
        for chunk in chunks {
            match scanner.push(chunk) {
                ScanOutput::Text(t) => released.push_str(&t),
                ScanOutput::Blocked { rule, safe_prefix } => {
                    released.push_str(&safe_prefix);
                    return (released, Some(rule.id));
                }
            }
            assert!(scanner.held_chars() <= scanner.max_hold_chars() + chunk.chars().count());
        }
        match scanner.finish() {
            ScanOutput::Text(t) => {
                released.push_str(&t);
                (released, None)
            }
            ScanOutput::Blocked { rule, safe_prefix } => {
                released.push_str(&safe_prefix);
                (released, Some(rule.id))
            }
        }
    }

    #[test]
    fn template_clone_plus_canary() {
        let template = StreamScanner::new(default_secret_rules()).unwrap();
        let mut scanner = template.clone();
        scanner.add_rule(canary_rule(CANARY)).unwrap();
        assert!(scanner
            .add_rule(canary_rule(CANARY))
            .unwrap_err()
            .contains("canary"));
        // Caught as soon as its last character arrives.
        assert!(matches!(scanner.push(CANARY), ScanOutput::Blocked { .. }));
        // Without the canary rule it is ordinary text: nothing held.
        let mut other = template.clone();
        assert_eq!(other.push(CANARY), ScanOutput::Text(CANARY.to_string()));
        assert_eq!(other.finish(), ScanOutput::Text(String::new()));
    }

    #[test]
    #[ignore = "timing report, not a pass/fail test"]
    fn scanner_timing() {
        let rules = all_rules(CANARY);
        let start = std::time::Instant::now();
        for _ in 0..100 {
            std::hint::black_box(StreamScanner::new(rules.clone()).unwrap());
        }
        println!("compile canary+secrets+pii: {:?}", start.elapsed() / 100);
        let template = StreamScanner::new(rules.clone()).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            let mut s = template.clone();
            s.add_rule(canary_rule("qzcn-000000000000000000001")).ok();
            std::hint::black_box(s);
        }
        println!("clone template + add canary: {:?}", start.elapsed() / 1000);
        let text = "The quick brown fox jumps over the lazy dog; call me maybe. ".repeat(70);
        let start = std::time::Instant::now();
        for _ in 0..20 {
            let mut s = template.clone();
            for chunk in text.as_bytes().chunks(4) {
                std::hint::black_box(s.push(std::str::from_utf8(chunk).unwrap()));
            }
            std::hint::black_box(s.finish());
        }
        println!(
            "4,200 chars in 4-char deltas (canary+secrets+pii): {:?}",
            start.elapsed() / 20
        );
        // The defaults: secrets and the canary, PII off.
        let mut defaults = vec![canary_rule(CANARY)];
        defaults.extend(default_secret_rules());
        let default_template = StreamScanner::new(defaults).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..20 {
            let mut s = default_template.clone();
            for chunk in text.as_bytes().chunks(4) {
                std::hint::black_box(s.push(std::str::from_utf8(chunk).unwrap()));
            }
            std::hint::black_box(s.finish());
        }
        println!(
            "4,200 chars in 4-char deltas (defaults: canary+secrets): {:?}",
            start.elapsed() / 20
        );
        let mut a = "a".repeat(1 << 20);
        a.push('!');
        let start = std::time::Instant::now();
        let mut s = default_template.clone();
        for chunk in a.as_bytes().chunks(16) {
            std::hint::black_box(s.push(std::str::from_utf8(chunk).unwrap()));
        }
        println!(
            "1 MiB 'aaaa…!' in 16-byte deltas (defaults): {:?}",
            start.elapsed()
        );
        let mut a = "a".repeat(1 << 20);
        a.push('!');
        for (name, big) in [("1 MiB 'aaaa…!'", a), ("50k newlines", "\n".repeat(50_000))] {
            let start = std::time::Instant::now();
            let mut s = template.clone();
            std::hint::black_box(s.push(&big));
            std::hint::black_box(s.finish());
            println!("{name} one push: {:?}", start.elapsed());
            let start = std::time::Instant::now();
            let mut s = template.clone();
            for chunk in big.as_bytes().chunks(16) {
                std::hint::black_box(s.push(std::str::from_utf8(chunk).unwrap()));
            }
            std::hint::black_box(s.finish());
            println!("{name} in 16-byte deltas: {:?}", start.elapsed());
        }
    }

    proptest! {
        /// The start filter only skips positions where no rule could begin a match: wherever
        /// it says no, every rule's automaton says no too.
        #[test]
        fn the_start_filter_skips_only_what_every_rule_would(
            text in r"(\PC|[ \n\r_\x{200B}]|sk-|AKIA|eyJ|ghp_|qzcn-|Q|BEGIN|@|[0-9]{4}){0,40}"
        ) {
            let mut rules = default_secret_rules();
            rules.extend(pii_redaction_rules());
            rules.push(canary_family_rule());
            let mut literal = canary_rule("zq\u{200B}lit");
            literal.id = "literal".into();
            rules.push(literal);
            let scanner = StreamScanner::new(rules).unwrap();
            let shared = &scanner.rules;
            let mut caches = Rules::cold_caches(&shared.list);
            for (at, _) in text.char_indices() {
                if !shared.starts.may_start_at(text.as_bytes(), at) {
                    for (rule, cache) in shared.list.iter().zip(caches.iter_mut()) {
                        prop_assert!(!could_start(rule, cache, &text, at), "{} at {}", rule.id, at);
                    }
                }
            }
        }
    }

    #[test]
    fn the_start_filter_skips_ordinary_words() {
        let mut rules = default_secret_rules();
        rules.push(canary_family_rule());
        let scanner = StreamScanner::new(rules).unwrap();
        let text = "The quick brown fox jumps over the lazy dog, then rests.";
        let skipped = text
            .char_indices()
            .filter(|&(at, _)| !scanner.rules.starts.may_start_at(text.as_bytes(), at))
            .count();
        assert!(skipped * 10 >= text.chars().count() * 8, "{skipped}");
    }

    fn chars_of(text: &str) -> Vec<String> {
        text.chars().map(String::from).collect()
    }

    const CANARY: &str = "qzcn-738190526411804273657";

    #[test]
    fn new_canary_shape() {
        let a = new_canary();
        let b = new_canary();
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + CANARY_DIGITS);
        assert!(a.starts_with("qzcn-"));
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn default_hold_back_lengths() {
        let secrets = StreamScanner::new(default_secret_rules()).unwrap();
        let canary = StreamScanner::new(vec![canary_rule(CANARY)]).unwrap();
        let all = StreamScanner::new(all_rules(CANARY)).unwrap();
        println!(
            "hold-back chars: secrets {}, canary {}, canary+secrets+pii {}",
            secrets.max_hold_chars(),
            canary.max_hold_chars(),
            all.max_hold_chars()
        );
        // Upper bounds (a JWT header is the longest); ordinary text is held far less.
        assert_eq!(canary.max_hold_chars(), CANARY.len() - 1);
        assert_eq!(secrets.max_hold_chars(), 194);
        assert_eq!(all.max_hold_chars(), 194);
    }

    #[test]
    fn invalid_rules_are_named() {
        let bad = |pattern: OutputPattern| {
            StreamScanner::new(vec![OutputRule {
                id: "the_bad_one".into(),
                check: Check::Secret,
                pattern,
                action: OutputAction::Block,
            }])
            .unwrap_err()
        };
        for err in [
            bad(OutputPattern::Literal("\u{200B}".into())),
            bad(OutputPattern::Regex {
                regex: "(".into(),
                max_len: 4,
            }),
            bad(OutputPattern::Regex {
                regex: "a*".into(),
                max_len: 4,
            }),
            bad(OutputPattern::Regex {
                regex: "a".into(),
                max_len: 0,
            }),
        ] {
            assert!(err.contains("the_bad_one"), "{err}");
        }
    }

    #[test]
    fn canary_one_char_per_chunk_is_never_fully_released() {
        let text = format!("Sure! The hidden value is {CANARY} and more text.");
        let chunks = chars_of(&text);
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let (released, blocked) = run(vec![canary_rule(CANARY)], &refs);
        assert_eq!(blocked.as_deref(), Some("canary"));
        assert_eq!(released, "Sure! The hidden value is ");
    }

    #[test]
    fn the_canary_family_rule_catches_every_canary_split_anywhere() {
        let template = {
            let mut rules = default_secret_rules();
            rules.push(canary_family_rule());
            let mut t = StreamScanner::new(rules).unwrap();
            t.warm_up();
            t
        };
        for _ in 0..3 {
            let canary = new_canary();
            let text = format!("The marker is{canary}, as asked.");
            let (whole, blocked) = run_with(&template, &[&text]);
            assert_eq!(blocked.as_deref(), Some("canary"));
            assert_eq!(whole, "The marker is");
            for cut in 0..=text.len() {
                let (released, _) = run_with(&template, &[&text[..cut], &text[cut..]]);
                assert_eq!(released, whole, "cut at {cut}");
            }
            let upper = canary.to_uppercase().replace('-', "\u{200B}-");
            assert_eq!(run_with(&template, &[&upper]).1.as_deref(), Some("canary"));
        }
        // Too few digits, or not digits: not a canary.
        assert_eq!(run_with(&template, &["qzcn-01234567890123456789."]).1, None);
        assert_eq!(run_with(&template, &["qzcn-0123456789012345678a"]).1, None);
        assert_eq!(run_with(&template, &["qzcn-0123456789abcdef01234"]).1, None);
        assert_eq!(
            run_with(&template, &["qzcn-012345678901234567890"])
                .1
                .as_deref(),
            Some("canary")
        );
    }

    #[test]
    fn canary_in_three_chunks_with_zero_width_and_at_the_end() {
        let (released, blocked) = run(
            vec![canary_rule(CANARY)],
            &["leak: QZCN", "-7381", "90526411804273657"],
        );
        assert_eq!(blocked.as_deref(), Some("canary"));
        assert_eq!(released, "leak: ");

        let sneaky = "qz\u{200B}cn-7381\u{200D}90526411\u{FEFF}804273657";
        let (released, blocked) = run(vec![canary_rule(CANARY)], &["x ", sneaky]);
        assert_eq!(blocked.as_deref(), Some("canary"));
        assert_eq!(released, "x ");

        // At the very end of the stream, split before the last character.
        let (released, blocked) = run(
            vec![canary_rule(CANARY)],
            &[
                "ok ",
                &CANARY[..CANARY.len() - 1],
                &CANARY[CANARY.len() - 1..],
            ],
        );
        assert_eq!(blocked.as_deref(), Some("canary"));
        assert_eq!(released, "ok ");

        // A canary cut short at the end of the stream is released (it is not the canary).
        let partial = &CANARY[..CANARY.len() - 1];
        let (released, blocked) = run(vec![canary_rule(CANARY)], &["ok ", partial]);
        assert_eq!(blocked, None);
        assert_eq!(released, format!("ok {partial}"));
    }

    #[test]
    fn secrets_split_at_every_position_are_blocked() {
        let secrets = [
            (
                "openai_api_key",
                "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
            ),
            ("openai_api_key", "sk-AbCdEfGhIjKlMnOpQrStUvWxYz01"),
            ("anthropic_api_key", "sk-ant-api03-AbCdEfGhIjKlMnOpQrSt"),
            ("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
            ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow"),
            ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----"),
            ("github_token", "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
            ("slack_token", "xoxb-1234567890-abcdef"),
            (
                "jwt",
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
            ),
        ];
        let template = StreamScanner::new(default_secret_rules()).unwrap();
        for (rule, secret) in secrets {
            let text = format!("Here you go: {secret} enjoy");
            let (whole, blocked) = run_with(&template, &[&text]);
            assert_eq!(blocked.as_deref(), Some(rule), "{secret}");
            for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                let (released, blocked) = run_with(&template, &[&text[..cut], &text[cut..]]);
                assert_eq!(blocked.as_deref(), Some(rule), "{secret} cut at {cut}");
                assert_eq!(released, whole, "{secret} cut at {cut}");
                assert!(!released.contains(&secret[..secret.len().min(12)]) || rule == "jwt");
            }
            // Every character its own chunk.
            let chunks = chars_of(&text);
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            assert_eq!(run_with(&template, &refs).0, whole);
        }
    }

    #[test]
    fn benign_text_streams_through_unchanged() {
        let text = "The sk-learn-style pipelines; AKIA is not a key and \
                    -----BEGIN CERTIFICATE----- is public.";
        let (released, blocked) = run(all_rules(CANARY), &[text]);
        assert_eq!(blocked, None);
        assert_eq!(released, text);
    }

    #[test]
    fn email_split_across_chunks_is_redacted() {
        let text = "Write to jane.doe@example.co.uk or call +1 555-123-4567 today.";
        let expected = "Write to [email] or call [phone] today.";
        let (whole, _) = run(pii_redaction_rules(), &[text]);
        assert_eq!(whole, expected);
        for cut in 0..=text.len() {
            let (released, blocked) = run(pii_redaction_rules(), &[&text[..cut], &text[cut..]]);
            assert_eq!(blocked, None);
            assert_eq!(released, expected, "cut at {cut}");
        }
        let chunks = chars_of(text);
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        assert_eq!(run(pii_redaction_rules(), &refs).0, expected);
    }

    #[test]
    fn releases_as_soon_as_possible() {
        let mut rules = vec![canary_rule(CANARY)];
        rules.extend(default_secret_rules());
        let mut scanner = StreamScanner::new(rules).unwrap();
        // Nothing in a run of one letter can begin a match: all of it goes out at once.
        let text = "x".repeat(100);
        assert_eq!(scanner.push(&text), ScanOutput::Text(text.clone()));
        assert_eq!(scanner.held_chars(), 0);
        // A word that starts like a key waits only until the next character rules it out.
        assert_eq!(scanner.push(" sk"), ScanOutput::Text(" ".into()));
        assert_eq!(scanner.held_chars(), 2);
        assert_eq!(
            scanner.push("y is blue"),
            ScanOutput::Text("sky is blue".into())
        );
        assert_eq!(scanner.push(" A"), ScanOutput::Text(" ".into()));
        assert_eq!(scanner.push(" cat"), ScanOutput::Text("A cat".into()));
        assert_eq!(scanner.held_chars(), 0);
        assert_eq!(scanner.delayed_chars(), 3);
        assert_eq!(scanner.finish(), ScanOutput::Text(String::new()));
    }

    /// The cost on ordinary text: the mock's words and an ordinary English reply, one word a
    /// chunk, with every output rule on (canary, secrets, PII off as by default): every chunk
    /// comes out whole in the push that brought it.
    #[test]
    fn ordinary_text_streams_with_no_hold_back() {
        let mut rules = vec![canary_rule(CANARY)];
        rules.extend(default_secret_rules());
        let template = StreamScanner::new(rules).unwrap();
        let reply =
            "The quick brown fox jumps over a lazy dog and then runs back to its warm home \
            in the green valley under blue sky. Sure! Here is a summary: the process uses keys, \
            tokens and certificates; a sketch of the design is below. Costs were $12.50 (about \
            15%) - cheaper than last year's. Thanks, and let me know if anything is unclear.";
        let mut scanner = template.clone();
        for word in reply.split_inclusive(' ') {
            assert_eq!(
                scanner.push(word),
                ScanOutput::Text(word.to_string()),
                "{word:?}"
            );
        }
        assert_eq!(scanner.delayed_chars(), 0);
    }

    #[test]
    fn payment_cards_are_redacted_only_when_luhn_valid() {
        let rules = pii_redaction_rules();
        let text = "Card 4111 1111 1111 1111 or 4111111111111112, order 1234567890123456 and 5555555555554444.";
        let (whole, blocked) = run(rules.clone(), &[text]);
        assert_eq!(blocked, None);
        assert_eq!(
            whole,
            "Card [card] or 4111111111111112, order 1234567890123456 and [card]."
        );
        for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let (released, _) = run(rules.clone(), &[&text[..cut], &text[cut..]]);
            assert_eq!(released, whole, "cut at {cut}");
        }
        assert!(luhn_valid("4111111111111111"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("7"));
    }

    #[test]
    fn calls_after_block_stay_blocked() {
        let mut scanner = StreamScanner::new(vec![canary_rule("abc")]).unwrap();
        assert!(matches!(
            scanner.push("xx abc yy"),
            ScanOutput::Blocked { .. }
        ));
        assert_eq!(
            scanner.push("more"),
            ScanOutput::Blocked {
                rule: RuleHit {
                    id: "canary".into(),
                    check: Check::Canary,
                },
                safe_prefix: String::new()
            }
        );
        assert!(matches!(scanner.finish(), ScanOutput::Blocked { .. }));
    }

    #[test]
    fn word_boundary_lookahead_waits_for_the_next_char() {
        let rules = vec![OutputRule {
            id: "word".into(),
            check: Check::Pii,
            pattern: OutputPattern::Regex {
                regex: r"\bfoo\b".into(),
                max_len: 3,
            },
            action: OutputAction::Redact("***".into()),
        }];
        for chunks in [vec!["a foo", "d"], vec!["a foo", " b"], vec!["a foo"]] {
            let text: String = chunks.concat();
            let (one, _) = run(rules.clone(), &[&text]);
            assert_eq!(run(rules.clone(), &chunks).0, one, "{chunks:?}");
        }
        assert_eq!(run(rules.clone(), &["a foo", "d"]).0, "a food");
        assert_eq!(run(rules, &["a foo", " b"]).0, "a *** b");
    }

    #[test]
    fn adversarial_megabyte_is_linear() {
        let mut text = "a".repeat(1 << 20);
        text.push('!');
        let (released, blocked) = run(all_rules(CANARY), &[&text]);
        assert_eq!(blocked, None);
        assert_eq!(released.len(), text.len());
        let lines = "\n".repeat(50_000);
        assert_eq!(run(all_rules(CANARY), &[&lines]).0, lines);
        let digits = "5".repeat(1 << 20);
        let _ = run(all_rules(CANARY), &[&digits]);
    }

    /// Fragments that make matches likely, including pieces of every pattern.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("qzcn-".to_string()),
            Just("7381905".to_string()),
            Just("26411804".to_string()),
            Just("273657".to_string()),
            Just("\u{200B}".to_string()),
            Just("sk-".to_string()),
            Just("proj-".to_string()),
            Just("AbCdEfGhIjKl".to_string()),
            Just("AKIA".to_string()),
            Just("IOSFODNN7EXAMPLE".to_string()),
            Just("-----BEGIN ".to_string()),
            Just("RSA ".to_string()),
            Just("PRIVATE KEY".to_string()),
            Just("ghp_".to_string()),
            Just("xoxb-".to_string()),
            Just("eyJhbGciOi".to_string()),
            Just(".eyJ".to_string()),
            Just("jane.doe".to_string()),
            Just("@".to_string()),
            Just("example.com".to_string()),
            Just("+1 555-123-4567".to_string()),
            Just("555".to_string()),
            Just(" ".to_string()),
            Just("-".to_string()),
            Just("é日".to_string()),
            "[a-z0-9 .@-]{0,6}",
        ]
    }

    fn text_and_cuts() -> impl Strategy<Value = (String, Vec<usize>)> {
        prop::collection::vec(fragment(), 0..24).prop_flat_map(|parts| {
            let text: String = parts.concat();
            let len = text.len();
            (Just(text), prop::collection::vec(0..=len, 0..12))
        })
    }

    fn chunk(text: &str, cuts: &[usize]) -> Vec<String> {
        let mut cuts: Vec<usize> = cuts
            .iter()
            .copied()
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for c in cuts {
            chunks.push(text[last..c].to_string());
            last = c;
        }
        chunks.push(text[last..].to_string());
        chunks
    }

    static TEMPLATE: std::sync::LazyLock<StreamScanner> = std::sync::LazyLock::new(|| {
        StreamScanner::new(all_rules("qzcn-738190526411804273657")).unwrap()
    });

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn chunking_never_changes_what_is_released((text, cuts) in text_and_cuts()) {
            let template = &*TEMPLATE;
            let (one_shot, one_block) = run_with(template, &[&text]);
            let chunks = chunk(&text, &cuts);
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let (streamed, block) = run_with(template, &refs);
            prop_assert_eq!(&streamed, &one_shot);
            prop_assert_eq!(&block, &one_block);

            // Nothing a Block rule matches is ever released (canary also with zero-widths removed).
            let visible: String = streamed.chars().filter(|&c| !is_invisible(c)).collect();
            prop_assert!(!visible.to_lowercase().contains("qzcn-738190526411804273657"));
            for rule in default_secret_rules() {
                if let OutputPattern::Regex { regex, .. } = &rule.pattern {
                    let re = regex::Regex::new(regex).unwrap();
                    prop_assert!(!re.is_match(&streamed), "{} in {:?}", rule.id, streamed);
                }
            }
        }

        #[test]
        fn text_without_rules_passes_unchanged(text in "\\PC{0,80}", cuts in prop::collection::vec(0usize..400, 0..8)) {
            let chunks = chunk(&text, &cuts);
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            prop_assert_eq!(run(Vec::new(), &refs).0, text);
        }
    }
}
