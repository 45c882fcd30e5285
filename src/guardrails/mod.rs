//! Guardrails: a prompt-injection input filter and a streaming output scanner.
//!
//! This module owns the text checks only; it decides nothing about HTTP, config or metrics and
//! depends on nothing else in the crate, so the relay and the request pipeline call it and map its
//! answers to actions:
//!
//! - [`input`]: [`InjectionDetector`] scores a request message against weighted phrase and regex
//!   rules after [`normalize`] (NFKC, case folding, zero-width removal, confusables, whitespace),
//!   also looking inside one level of Base64 and Unicode TAG "ASCII smuggling". The caller compares
//!   [`InjectionScore::score`] with a threshold ([`DEFAULT_THRESHOLD`]) and blocks or flags.
//! - [`output`]: [`StreamScanner`] sits between the upstream's deltas and the client. It releases
//!   text as soon as no forbidden pattern can still start in it, holding back only from the first
//!   position where a match could still begin (a key's prefix, the canary's first letters) until
//!   the text rules it out ([`StreamScanner::held_chars`]), and either redacts a match in place or
//!   cuts the stream before the first character of a blocked one. What reaches the client does
//!   not depend on how the output was chunked.
//! - [`classifier`]: the linear n-gram model the input filter adds to its rules.
//!
//! Everything here runs in time linear in its input (finite-automaton regexes under size limits,
//! Aho-Corasick for phrases).

pub mod classifier;
pub mod input;
pub mod normalize;
pub mod output;
mod rules;

pub use input::{
    InjectionDetector, InjectionScore, Rule, RulePattern, CLASSIFIER_ID, DEFAULT_THRESHOLD,
    MIN_BASE64_LEN,
};
pub use normalize::normalize;
pub use output::{
    canary_family_rule, canary_rule, default_secret_rules, luhn_valid, new_canary,
    pii_redaction_rules, OutputAction, OutputPattern, OutputRule, RuleHit, ScanOutput,
    StreamScanner, Validator, CANARY_PREFIX,
};

/// What a guardrail checks for (the `check` label of `tollgate_guardrail_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// The input filter: an attempt to override the model's instructions.
    PromptInjection,
    /// Output: a credential (API keys, tokens, private keys).
    Secret,
    /// Output: personal data (payment card numbers, e-mail addresses, phone numbers).
    Pii,
    /// Output: the per-request canary (the system prompt leaked).
    Canary,
}

impl Check {
    pub const ALL: [Check; 4] = [
        Check::PromptInjection,
        Check::Secret,
        Check::Pii,
        Check::Canary,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::PromptInjection => "prompt_injection",
            Check::Secret => "secret",
            Check::Pii => "pii",
            Check::Canary => "canary",
        }
    }
}
