//! The mock provider's knobs: server-wide [`MockOptions`], the [`Fault`] it can inject, the
//! [`Framing`] of its streams, the tool call it can end with, and how a single request overrides
//! them; also which API families ([`MockFormats`]) an instance serves (server-wide only).
//!
//! Precedence per request is headers > model-name suffix > server options. Headers are
//! `x-mock-tokens`, `x-mock-tokens-per-second`, `x-mock-first-token-delay-ms`,
//! `x-mock-ignore-max-tokens`, `x-mock-fault`, `x-mock-framing` and `x-mock-tool`; the model
//! suffix is everything after the first colon, comma-separated `key=value` pairs with keys
//! `tokens`, `tps`, `delay_ms`, `ignore_max_tokens`, `fault`, `framing` and `tool`
//! (`mock-gpt:tokens=20,fault=stall@5`, `mock-claude:tool=get_weather,framing=bytes+crlf`).
//!
//! - Fault: `error@N`, `close@N`, `stall@N`, `status@CODE` (400..=599) or `none`.
//! - Framing: `normal` (the default), or one or more of `bytes` (every byte of the SSE body is its
//!   own body chunk), `crlf` (lines end in `\r\n`) and `pings` (a keep-alive before every content
//!   event, i.e. each text or tool-argument delta: an Anthropic `ping` event, an OpenAI `: ping`
//!   comment) joined by `+` (`bytes+crlf+pings`).
//! - Tool: a tool name (`[A-Za-z0-9_-]{1,64}`) or `none`. The reply's text is followed by a call
//!   of that tool with fixed arguments ([`super::TOOL_ARGUMENTS`]); the o200k tokens of that
//!   arguments string count as output tokens in the usage, on both formats. The call is sent only
//!   when the text was not cut and the call fits in what `max_tokens` leaves.
//!
//! This module only parses; it knows nothing about HTTP or streams.

use std::str::FromStr;

/// Requests the mock's recorder keeps by default (the most recent): about 3 KB each, so a mock
/// left running under load stays within a few MB.
pub const DEFAULT_KEPT_REQUESTS: usize = 1000;

/// Server-wide behaviour of the mock provider; every field but `formats` and `keep_requests`
/// can be overridden per request.
#[derive(Clone, Debug, PartialEq)]
pub struct MockOptions {
    /// Tokens to generate per reply (before `max_tokens` is applied).
    pub tokens: u32,
    /// Pace of content tokens; `<= 0`, infinite or NaN means no delay between tokens.
    pub tokens_per_second: f64,
    /// Delay before the role chunk of a stream, or before a non-streamed reply.
    pub first_token_delay_ms: u64,
    /// Generate `tokens` even when the request's `max_tokens` is lower.
    pub ignore_max_tokens: bool,
    /// A failure to inject into every reply.
    pub fault: Option<Fault>,
    /// Which API families are served; the other family's routes answer 404.
    pub formats: MockFormats,
    /// How stream bodies are cut into chunks and lines.
    pub framing: Framing,
    /// End every reply with a call of this tool.
    pub tool: Option<String>,
    /// Requests the recorder keeps, the most recent (a ring); `None` keeps every one (tests that
    /// assert on all they sent).
    pub keep_requests: Option<usize>,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            tokens: 40,
            tokens_per_second: 50.0,
            first_token_delay_ms: 100,
            ignore_max_tokens: false,
            fault: None,
            formats: MockFormats::Both,
            framing: Framing::default(),
            tool: None,
            keep_requests: Some(DEFAULT_KEPT_REQUESTS),
        }
    }
}

/// One API family the mock speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// `POST /chat/completions`, `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
}

/// Which API families a mock instance serves: `openai`, `anthropic` or `both` (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MockFormats {
    OpenAi,
    Anthropic,
    #[default]
    Both,
}

impl MockFormats {
    /// Whether requests of `api` are answered (else 404).
    pub(crate) fn serves(self, api: Api) -> bool {
        matches!(
            (self, api),
            (Self::Both, _) | (Self::OpenAi, Api::OpenAi) | (Self::Anthropic, Api::Anthropic)
        )
    }
}

impl FromStr for MockFormats {
    type Err = KnobError;

    /// Parses `openai`, `anthropic` or `both` (any case).
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(Self::OpenAi),
            "anthropic" => Ok(Self::Anthropic),
            "both" => Ok(Self::Both),
            _ => Err(KnobError::new(
                "format",
                format!("expected openai, anthropic or both (got {raw:?})"),
            )),
        }
    }
}

/// How a stream body is cut and terminated; all off is `normal` framing (one chunk per event,
/// `\n` line ends, no extra keep-alives).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    /// Every byte of the body is its own chunk, written on its own.
    pub bytes: bool,
    /// Lines end in `\r\n`.
    pub crlf: bool,
    /// A keep-alive (Anthropic `ping` event, OpenAI `: ping` comment) before every content event.
    pub pings: bool,
}

impl FromStr for Framing {
    type Err = KnobError;

    /// Parses `normal`, or `bytes`, `crlf` and `pings` joined by `+`.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| KnobError::new("framing", format!("{reason} (got {raw:?})"));
        let mut framing = Self::default();
        for part in raw.trim().split('+').map(str::trim) {
            match part {
                "normal" => {}
                "bytes" => framing.bytes = true,
                "crlf" => framing.crlf = true,
                "pings" => framing.pings = true,
                _ => return Err(bad("expected normal, or bytes, crlf and pings joined by +")),
            }
        }
        Ok(framing)
    }
}

/// A failure the mock injects into a reply.
///
/// The mid-stream faults fire after `min(after_tokens, tokens to generate)` content tokens, so
/// they always fire; they replace the rest of the reply (OpenAI: the finish chunk, the usage chunk
/// and `[DONE]`; Anthropic: `content_block_stop` onwards), tool call included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Send the content tokens, then an error event and end the body: OpenAI
    /// `data: {"error":{...}}` (no `[DONE]`), Anthropic `event: error` with an `overloaded_error`.
    ErrorEvent { after_tokens: u32 },
    /// Send the content tokens, then fail the body stream so the connection is aborted.
    AbruptClose { after_tokens: u32 },
    /// Send the content tokens, then never send another byte.
    Stall { after_tokens: u32 },
    /// Answer with this 4xx/5xx status and the API family's error body before any stream starts.
    Status(u16),
}

/// A knob whose value could not be parsed; `knob` is the header name or model-suffix key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mock knob `{knob}`: {reason}")]
pub struct KnobError {
    pub knob: String,
    pub reason: String,
}

impl KnobError {
    fn new(knob: &str, reason: impl Into<String>) -> Self {
        Self {
            knob: knob.to_owned(),
            reason: reason.into(),
        }
    }
}

impl FromStr for Fault {
    type Err = KnobError;

    /// Parses `error@N`, `close@N`, `stall@N` or `status@CODE` (CODE in 400..=599).
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| KnobError::new("fault", format!("{reason} (got {raw:?})"));
        let (kind, number) = raw
            .trim()
            .split_once('@')
            .ok_or_else(|| bad("expected error@N, close@N, stall@N or status@CODE"))?;
        let count = || number.parse::<u32>().map_err(|_| bad("N must be a u32"));
        match kind {
            "error" => Ok(Self::ErrorEvent {
                after_tokens: count()?,
            }),
            "close" => Ok(Self::AbruptClose {
                after_tokens: count()?,
            }),
            "stall" => Ok(Self::Stall {
                after_tokens: count()?,
            }),
            "status" => match number.parse::<u16>() {
                Ok(code @ 400..=599) => Ok(Self::Status(code)),
                _ => Err(bad("status must be 400..=599")),
            },
            _ => Err(bad("unknown fault kind")),
        }
    }
}

/// One overridable field of [`MockOptions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Knob {
    Tokens,
    TokensPerSecond,
    FirstTokenDelayMs,
    IgnoreMaxTokens,
    Fault,
    Framing,
    Tool,
}

/// Each knob with its header name and model-suffix key.
const KNOBS: &[(Knob, &str, &str)] = &[
    (Knob::Tokens, "x-mock-tokens", "tokens"),
    (Knob::TokensPerSecond, "x-mock-tokens-per-second", "tps"),
    (
        Knob::FirstTokenDelayMs,
        "x-mock-first-token-delay-ms",
        "delay_ms",
    ),
    (
        Knob::IgnoreMaxTokens,
        "x-mock-ignore-max-tokens",
        "ignore_max_tokens",
    ),
    (Knob::Fault, "x-mock-fault", "fault"),
    (Knob::Framing, "x-mock-framing", "framing"),
    (Knob::Tool, "x-mock-tool", "tool"),
];

/// The options for one request: `options`, then the model suffix, then the headers
/// (lower-case names) applied on top.
pub fn resolve(
    options: &MockOptions,
    model: &str,
    headers: &[(String, String)],
) -> Result<MockOptions, KnobError> {
    let mut resolved = options.clone();
    apply_model_suffix(&mut resolved, model)?;
    apply_headers(&mut resolved, headers)?;
    Ok(resolved)
}

fn apply_model_suffix(options: &mut MockOptions, model: &str) -> Result<(), KnobError> {
    let Some((_, suffix)) = model.split_once(':') else {
        return Ok(());
    };
    for entry in suffix.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| KnobError::new(entry, "expected key=value in the model suffix"))?;
        let key = key.trim();
        let knob = KNOBS
            .iter()
            .find(|(_, _, suffix_key)| *suffix_key == key)
            .map(|(knob, _, _)| *knob)
            .ok_or_else(|| KnobError::new(key, "unknown knob"))?;
        apply(options, knob, key, value.trim())?;
    }
    Ok(())
}

fn apply_headers(options: &mut MockOptions, headers: &[(String, String)]) -> Result<(), KnobError> {
    for (knob, header, _) in KNOBS {
        if let Some((_, value)) = headers.iter().find(|(name, _)| name == header) {
            apply(options, *knob, header, value.trim())?;
        }
    }
    Ok(())
}

fn apply(options: &mut MockOptions, knob: Knob, name: &str, value: &str) -> Result<(), KnobError> {
    match knob {
        Knob::Tokens => options.tokens = parse_number(name, value)?,
        Knob::TokensPerSecond => options.tokens_per_second = parse_rate(name, value)?,
        Knob::FirstTokenDelayMs => options.first_token_delay_ms = parse_number(name, value)?,
        Knob::IgnoreMaxTokens => options.ignore_max_tokens = parse_bool(name, value)?,
        Knob::Fault => options.fault = parse_fault(name, value)?,
        Knob::Framing => options.framing = rename(name, value.parse())?,
        Knob::Tool => options.tool = parse_tool(name, value)?,
    }
    Ok(())
}

fn parse_number<T: FromStr>(name: &str, value: &str) -> Result<T, KnobError> {
    value.parse().map_err(|_| {
        KnobError::new(
            name,
            format!("expected a non-negative integer, got {value:?}"),
        )
    })
}

fn parse_rate(name: &str, value: &str) -> Result<f64, KnobError> {
    match value.parse::<f64>() {
        Ok(rate) if !rate.is_nan() => Ok(rate),
        _ => Err(KnobError::new(
            name,
            format!("expected a number, got {value:?}"),
        )),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, KnobError> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(KnobError::new(
            name,
            format!("expected true or false, got {value:?}"),
        )),
    }
}

fn parse_fault(name: &str, value: &str) -> Result<Option<Fault>, KnobError> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    rename(name, value.parse()).map(Some)
}

/// A tool name as both APIs accept it (`[A-Za-z0-9_-]{1,64}`), or `none`.
fn parse_tool(name: &str, value: &str) -> Result<Option<String>, KnobError> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let valid = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(Some(value.to_owned()))
    } else {
        Err(KnobError::new(
            name,
            format!("expected a tool name of 1 to 64 letters, digits, '_' or '-', or none (got {value:?})"),
        ))
    }
}

/// A value parser's error, renamed after the header or suffix key that carried the value.
fn rename<T>(name: &str, parsed: Result<T, KnobError>) -> Result<T, KnobError> {
    parsed.map_err(|err| KnobError::new(name, err.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn resolve_ok(model: &str, pairs: &[(&str, &str)]) -> MockOptions {
        match resolve(&MockOptions::default(), model, &headers(pairs)) {
            Ok(options) => options,
            Err(err) => panic!("unexpected knob error: {err}"),
        }
    }

    fn resolve_err(model: &str, pairs: &[(&str, &str)]) -> KnobError {
        match resolve(&MockOptions::default(), model, &headers(pairs)) {
            Ok(options) => panic!("expected a knob error, got {options:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn defaults_are_documented_values() {
        let options = MockOptions::default();
        assert_eq!(options.tokens, 40);
        assert_eq!(options.tokens_per_second, 50.0);
        assert_eq!(options.first_token_delay_ms, 100);
        assert!(!options.ignore_max_tokens);
        assert_eq!(options.fault, None);
    }

    #[test]
    fn plain_model_keeps_server_options() {
        assert_eq!(resolve_ok("mock-gpt", &[]), MockOptions::default());
        assert_eq!(resolve_ok("mock-gpt:", &[]), MockOptions::default());
    }

    #[test]
    fn model_suffix_sets_every_knob() {
        let options = resolve_ok(
            "mock-gpt:tokens=20,tps=100,delay_ms=0,ignore_max_tokens=true,fault=stall@5",
            &[],
        );
        assert_eq!(options.tokens, 20);
        assert_eq!(options.tokens_per_second, 100.0);
        assert_eq!(options.first_token_delay_ms, 0);
        assert!(options.ignore_max_tokens);
        assert_eq!(options.fault, Some(Fault::Stall { after_tokens: 5 }));
        let status = resolve_ok("mock-gpt-mini:fault=status@500", &[]);
        assert_eq!(status.fault, Some(Fault::Status(500)));
    }

    #[test]
    fn headers_set_every_knob() {
        let options = resolve_ok(
            "mock-gpt",
            &[
                ("x-mock-tokens", "7"),
                ("x-mock-tokens-per-second", "inf"),
                ("x-mock-first-token-delay-ms", "5"),
                ("x-mock-ignore-max-tokens", "TRUE"),
                ("x-mock-fault", "close@3"),
            ],
        );
        assert_eq!(options.tokens, 7);
        assert!(options.tokens_per_second.is_infinite());
        assert_eq!(options.first_token_delay_ms, 5);
        assert!(options.ignore_max_tokens);
        assert_eq!(options.fault, Some(Fault::AbruptClose { after_tokens: 3 }));
    }

    #[test]
    fn headers_beat_model_suffix_beats_options() {
        let server = MockOptions {
            tokens: 1,
            fault: Some(Fault::ErrorEvent { after_tokens: 0 }),
            ..MockOptions::default()
        };
        let model = "mock-gpt:tokens=2,tps=3";
        let resolved = resolve(&server, model, &headers(&[("x-mock-tokens", "4")]));
        let Ok(resolved) = resolved else {
            panic!("unexpected error {resolved:?}");
        };
        assert_eq!(resolved.tokens, 4);
        assert_eq!(resolved.tokens_per_second, 3.0);
        assert_eq!(resolved.fault, Some(Fault::ErrorEvent { after_tokens: 0 }));
        let cleared = resolve(&server, "mock-gpt:fault=none", &[]);
        assert_eq!(cleared.map(|o| o.fault), Ok(None));
    }

    #[test]
    fn bad_values_name_the_knob() {
        assert_eq!(
            resolve_err("m", &[("x-mock-tokens", "-1")]).knob,
            "x-mock-tokens"
        );
        assert_eq!(resolve_err("m:tps=fast", &[]).knob, "tps");
        assert_eq!(resolve_err("m:tps=NaN", &[]).knob, "tps");
        assert_eq!(resolve_err("m:delay_ms=1.5", &[]).knob, "delay_ms");
        let bool_err = resolve_err("m", &[("x-mock-ignore-max-tokens", "yes")]);
        assert_eq!(bool_err.knob, "x-mock-ignore-max-tokens");
        assert_eq!(resolve_err("m:fault=boom@1", &[]).knob, "fault");
        assert_eq!(
            resolve_err("m", &[("x-mock-fault", "stall")]).knob,
            "x-mock-fault"
        );
        assert_eq!(resolve_err("m:colour=red", &[]).knob, "colour");
        assert_eq!(resolve_err("m:tokens", &[]).knob, "tokens");
    }

    #[test]
    fn fault_syntax() {
        assert_eq!("error@2".parse(), Ok(Fault::ErrorEvent { after_tokens: 2 }));
        assert_eq!(
            "close@0".parse(),
            Ok(Fault::AbruptClose { after_tokens: 0 })
        );
        assert_eq!("stall@9".parse(), Ok(Fault::Stall { after_tokens: 9 }));
        assert_eq!("status@429".parse(), Ok(Fault::Status(429)));
        assert!("status@200".parse::<Fault>().is_err());
        assert!("status@600".parse::<Fault>().is_err());
        assert!("error@x".parse::<Fault>().is_err());
    }

    #[test]
    fn framing_syntax() {
        let all = Framing {
            bytes: true,
            crlf: true,
            pings: true,
        };
        assert_eq!("normal".parse(), Ok(Framing::default()));
        assert_eq!("bytes+crlf+pings".parse(), Ok(all));
        assert!(" pings + bytes "
            .parse::<Framing>()
            .is_ok_and(|f| f.bytes && f.pings));
        assert_eq!(
            "crlf".parse(),
            Ok(Framing {
                crlf: true,
                ..Framing::default()
            })
        );
        assert!("bytes+".parse::<Framing>().is_err());
        assert!("lines".parse::<Framing>().is_err());
        let options = resolve_ok("m:framing=bytes+crlf", &[("x-mock-framing", "pings")]);
        assert_eq!(
            options.framing,
            Framing {
                pings: true,
                ..Framing::default()
            }
        );
        assert!(resolve_ok("m:framing=bytes+pings", &[]).framing.bytes);
        assert_eq!(resolve_err("m:framing=bits", &[]).knob, "framing");
        assert_eq!(
            resolve_err("m", &[("x-mock-framing", "crlf+x")]).knob,
            "x-mock-framing"
        );
    }

    #[test]
    fn tool_knob() {
        assert_eq!(resolve_ok("m", &[]).tool, None);
        let suffix = resolve_ok("m:tool=get_weather", &[]);
        assert_eq!(suffix.tool.as_deref(), Some("get_weather"));
        let header = resolve_ok("m:tool=a", &[("x-mock-tool", "lookup-2")]);
        assert_eq!(header.tool.as_deref(), Some("lookup-2"));
        let server = MockOptions {
            tool: Some("t".to_owned()),
            ..MockOptions::default()
        };
        let cleared = resolve(&server, "m:tool=none", &[]);
        assert_eq!(cleared.map(|o| o.tool), Ok(None));
        assert_eq!(resolve_err("m:tool=a.b", &[]).knob, "tool");
        let long = "t".repeat(65);
        assert_eq!(
            resolve_err("m", &[("x-mock-tool", &long)]).knob,
            "x-mock-tool"
        );
    }

    #[test]
    fn formats_syntax_and_what_they_serve() {
        assert_eq!(MockFormats::default(), MockFormats::Both);
        assert_eq!("openai".parse(), Ok(MockFormats::OpenAi));
        assert_eq!("Anthropic".parse(), Ok(MockFormats::Anthropic));
        assert_eq!("both".parse(), Ok(MockFormats::Both));
        assert!("gemini".parse::<MockFormats>().is_err());
        assert!(MockFormats::Both.serves(Api::OpenAi) && MockFormats::Both.serves(Api::Anthropic));
        assert!(MockFormats::OpenAi.serves(Api::OpenAi));
        assert!(!MockFormats::OpenAi.serves(Api::Anthropic));
        assert!(MockFormats::Anthropic.serves(Api::Anthropic));
        assert!(!MockFormats::Anthropic.serves(Api::OpenAi));
    }
}
