//! What the default output checks (secrets blocked, canary on) cost per relayed token, in
//! process: the scanner alone ([`StreamScanner::push`]) and the relay's whole filter step
//! ([`OutputFilter::filter_chunk`] on the provider's chunk JSON), over the mock's words and over
//! ordinary English prose cut into token-sized pieces, with a no-op pass (a clone of the text)
//! measured in the same run as the floor.
//!
//! Run: `cargo bench --bench output_scan` (TOKENS=N sets the tokens per reply, REPLIES=N the
//! replies per arm).

#![allow(clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::Instant;

use tollgate::guardrails::{canary_family_rule, default_secret_rules, StreamScanner};
use tollgate::mock::token_text;
use tollgate::relay::output_filter::OutputFilter;

const PROSE: &str = "Sure! To reset your password, open Settings, choose Security and click \
    \"Reset password\". We will e-mail you a link that stays valid for 24 hours; if it does not \
    arrive, check the spam folder or ask support at the address on your invoice. Quick tip: a \
    password manager keeps long, unique passwords for every site, and two-factor authentication \
    (an app such as Authy or a hardware key) stops most account takeovers. Anything else?";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The prose cut at spaces into pieces of about one token (a word with its leading space).
fn prose_tokens(n: usize) -> Vec<String> {
    let words: Vec<String> = PROSE
        .split_inclusive(' ')
        .map(|w| format!(" {}", w.trim_end()))
        .collect();
    (0..n).map(|i| words[i % words.len()].clone()).collect()
}

fn chunk(content: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    })
    .to_string()
}

/// Nanoseconds per token of `step` over `replies` replies of `tokens`.
fn per_token<S, F>(
    replies: usize,
    tokens: &[String],
    mut fresh: impl FnMut() -> S,
    mut step: F,
) -> f64
where
    F: FnMut(&mut S, &str),
{
    let started = Instant::now();
    for _ in 0..replies {
        let mut state = fresh();
        for token in tokens {
            step(&mut state, token);
        }
        black_box(&mut state);
    }
    started.elapsed().as_nanos() as f64 / (replies * tokens.len()) as f64
}

fn main() {
    let n = env_usize("TOKENS", 200);
    let replies = env_usize("REPLIES", 2_000);
    let mut rules = default_secret_rules();
    rules.push(canary_family_rule());
    let mut template = StreamScanner::new(rules).expect("default rules compile");
    template.warm_up();
    let mock: Vec<String> = (0..n as u32).map(|i| token_text(i).to_string()).collect();
    let prose = prose_tokens(n);
    println!("default output checks (secrets + canary), {replies} replies of {n} tokens");
    for (name, tokens) in [("mock words", &mock), ("prose", &prose)] {
        let chunks: Vec<String> = tokens.iter().map(|t| chunk(t)).collect();
        // Interleave the arms over a few rounds so they share the machine's state.
        let mut floor = Vec::new();
        let mut scan = Vec::new();
        let mut filter = Vec::new();
        for _ in 0..3 {
            floor.push(per_token(replies, tokens, String::new, |s, t| {
                s.push_str(t)
            }));
            scan.push(per_token(
                replies,
                tokens,
                || template.clone(),
                |s, t| {
                    black_box(s.push(t));
                },
            ));
            filter.push(per_token(
                replies,
                &chunks,
                || OutputFilter::from_template(template.clone()),
                |f, c| {
                    black_box(f.filter_chunk(c));
                },
            ));
        }
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{name:<11} floor {:>7.1} ns/token   scanner {:>7.1} ns/token   filter (chunk JSON) {:>7.1} ns/token",
            best(&floor),
            best(&scan),
            best(&filter)
        );
    }
}
