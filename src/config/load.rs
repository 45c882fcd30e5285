//! Builds a [`Config`] from its sources: built-in defaults < TOML file < environment.
//!
//! The sources are merged as TOML trees, so a file or variable only has to name the keys it
//! changes. The environment is passed in as a map (tests never touch the process environment).

use super::{validate, Config};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml::{Table, Value};

/// Variables with fixed names, and the key each one sets.
const NAMED_VARIABLES: &[(&str, &str)] = &[
    ("TOLLGATE_LISTEN", "server.listen"),
    ("TOLLGATE_UPSTREAM_URL", "upstream.url"),
    ("TOLLGATE_UPSTREAM_API_KEY", "upstream.api_key"),
    ("TOLLGATE_JWT_SECRET", "auth.jwt_secret"),
    ("TOLLGATE_REDIS_URL", "redis.url"),
];

/// Prefix of the generic `TOLLGATE__SECTION__KEY` variables.
const KEY_PREFIX: &str = "TOLLGATE__";

/// The variable naming the config file when `--config` is not given.
pub const CONFIG_PATH_VARIABLE: &str = "TOLLGATE_CONFIG";

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config PATH`; falls back to `TOLLGATE_CONFIG` from `env`.
    pub file: Option<PathBuf>,
    /// The environment (normally `std::env::vars()`).
    pub env: BTreeMap<String, String>,
}

/// Why the configuration could not be loaded. Every variant names what to fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Loads, merges and validates the configuration.
pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
    let mut tree = defaults_tree()?;
    let file = source
        .file
        .clone()
        .or_else(|| source.env.get(CONFIG_PATH_VARIABLE).map(PathBuf::from));
    if let Some(path) = file {
        merge(&mut tree, read_file(&path)?);
    }
    apply_env(&mut tree, &source.env)?;
    let config = deserialize(tree)?;
    validate::validate(&config)?;
    Ok(config)
}

/// A config from a whole TOML tree (a reload's settled tree), validated as at start-up.
pub(crate) fn from_tree(tree: Table) -> Result<Config, ConfigError> {
    let config = deserialize(tree)?;
    validate::validate(&config)?;
    Ok(config)
}

fn defaults_tree() -> Result<Table, ConfigError> {
    Table::try_from(Config::default())
        .map_err(|e| ConfigError::invalid("(defaults)", e.to_string()))
}

fn read_file(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Table, overlay: Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(incoming)) => merge(existing, incoming),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn apply_env(tree: &mut Table, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (variable, key) in NAMED_VARIABLES {
        if let Some(raw) = env.get(*variable) {
            set_key(tree, key, raw)?;
        }
    }
    for (variable, raw) in env {
        if let Some(rest) = variable.strip_prefix(KEY_PREFIX) {
            let key = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            if key.is_empty() || key.split('.').any(str::is_empty) {
                return Err(ConfigError::invalid(
                    variable.as_str(),
                    "expected TOLLGATE__SECTION__KEY",
                ));
            }
            set_key(tree, &key, raw)?;
        }
    }
    Ok(())
}

/// Sets `key` (dotted path) from a string, typed like the value it replaces.
fn set_key(tree: &mut Table, key: &str, raw: &str) -> Result<(), ConfigError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let leaf = parts.pop().unwrap_or_default();
    let mut table = tree;
    for part in parts {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            _ => return Err(ConfigError::invalid(key, "is not a section")),
        };
    }
    let value = typed_like(table.get(leaf), raw).map_err(|m| ConfigError::invalid(key, m))?;
    table.insert(leaf.to_string(), value);
    Ok(())
}

fn typed_like(existing: Option<&Value>, raw: &str) -> Result<Value, String> {
    let trimmed = raw.trim();
    match existing {
        Some(Value::String(_)) => Ok(Value::String(raw.to_string())),
        Some(Value::Integer(_)) => trimmed
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, got {trimmed:?}")),
        Some(Value::Float(_)) => trimmed
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, got {trimmed:?}")),
        Some(Value::Boolean(_)) => trimmed
            .parse::<bool>()
            .map(Value::Boolean)
            .map_err(|_| format!("expected true or false, got {trimmed:?}")),
        Some(Value::Array(_)) => parse_literal(trimmed)
            .filter(Value::is_array)
            .ok_or_else(|| {
                format!("expected a TOML array such as [\"a\", \"b\"], got {trimmed:?}")
            }),
        Some(Value::Table(_)) => Err("is a section; set its keys instead".into()),
        Some(Value::Datetime(_)) => Err("datetimes are not configurable".into()),
        None => Ok(parse_literal(trimmed).unwrap_or_else(|| Value::String(raw.to_string()))),
    }
}

fn parse_literal(text: &str) -> Option<Value> {
    format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
}

fn deserialize(tree: Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(Value::Table(tree)).map_err(|err| {
        // The path names the offending key, unknown keys included.
        ConfigError::invalid(err.path().to_string(), err.inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_with(file: Option<&str>, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.toml");
        let file = file.map(|text| {
            std::fs::write(&path, text).unwrap();
            path.clone()
        });
        load(&ConfigSource {
            file,
            env: env(vars),
        })
    }

    fn invalid_key(result: Result<Config, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn providers_inherit_from_upstream_and_their_keys_come_from_the_environment() {
        let file = r#"
            [upstream]
            first_byte_timeout_secs = 7
            [upstreams.claude]
            url = "https://api.anthropic.com"
            format = "anthropic"
            idle_timeout_secs = 30
            [pricing.claude-x]
            input_per_million_usd = 3.0
            output_per_million_usd = 15.0
            upstream = "claude"
            upstream_model = "claude-x-2026"
            fallback = ["gpt-4o"]
        "#;
        let c = load_with(
            Some(file),
            &[("TOLLGATE__UPSTREAMS__CLAUDE__API_KEY", "sk-ant-secret")],
        )
        .unwrap();
        let providers = c.providers();
        assert_eq!(providers.len(), 2);
        assert_eq!(providers[0].name, "default");
        let claude = &providers[1];
        assert_eq!(claude.format, super::super::UpstreamFormat::Anthropic);
        assert_eq!(claude.api_key.expose(), "sk-ant-secret");
        assert_eq!(
            (claude.idle_timeout_secs, claude.first_byte_timeout_secs),
            (30, 7),
            "own idle timeout, inherited first-byte timeout"
        );
        assert_eq!(c.pricing["claude-x"].fallback, ["gpt-4o"]);
        assert_eq!(c.pricing["gpt-4o"].upstream, "default");
    }

    #[test]
    fn bad_model_routes_are_refused_naming_the_key() {
        let route = |extra: &str| {
            let file = format!(
                "[upstreams.claude]\nurl = \"https://api.anthropic.com\"\nformat = \"anthropic\"\n\
                 [pricing.a]\ninput_per_million_usd = 1.0\noutput_per_million_usd = 1.0\n{extra}"
            );
            load_with(Some(&file), &[])
        };
        assert!(route("upstream = \"claude\"\nfallback = [\"gpt-4o\"]").is_ok());
        assert_eq!(
            invalid_key(route("upstream = \"nowhere\"")),
            "pricing.a.upstream"
        );
        assert_eq!(
            invalid_key(route("fallback = [\"unpriced\"]")),
            "pricing.a.fallback"
        );
        let cycle = route(
            "fallback = [\"b\"]\n[pricing.b]\ninput_per_million_usd = 1.0\n\
             output_per_million_usd = 1.0\nfallback = [\"a\"]",
        );
        assert!(invalid_key(cycle).ends_with(".fallback"));
        let own = load_with(
            Some("[upstreams.default]\nurl = \"https://x.example\""),
            &[],
        );
        assert_eq!(invalid_key(own), "upstreams.default");
        let bad_url = load_with(Some("[upstreams.x]\nurl = \"ftp://x\""), &[]);
        assert_eq!(invalid_key(bad_url), "upstreams.x.url");
        let mock = load_with(Some("[upstreams.x]\nformat = \"anthropic\""), &[]);
        assert!(mock.is_ok(), "no url: the built-in mock");
        let bad_format = load_with(
            Some("[upstreams.x]\nurl = \"https://x.example\"\nformat = \"gemini\""),
            &[],
        );
        assert_eq!(invalid_key(bad_format), "upstreams.x.format");
    }

    #[test]
    fn service_keys_are_validated_and_an_empty_hash_turns_one_off() {
        let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let key = |field: &str| format!("TOLLGATE__AUTH__SERVICE_KEYS__WEBUI__{field}");
        let ok = load_with(
            None,
            &[(&key("KEY_SHA256"), hash), (&key("USER_HEADER"), "x-user")],
        )
        .unwrap();
        assert_eq!(ok.auth.service_keys["webui"].plan, "basic");
        // Unset in a compose file: off, not an error.
        assert!(load_with(
            None,
            &[(&key("KEY_SHA256"), ""), (&key("USER_HEADER"), "x-user")]
        )
        .is_ok());
        let cases: [(&[(&str, &str)], &str); 6] = [
            (
                &[("KEY_SHA256", "abc"), ("USER_HEADER", "x-user")],
                "key_sha256",
            ),
            (&[("KEY_SHA256", hash)], "user_header"),
            (
                &[("KEY_SHA256", hash), ("USER_JWT_HEADER", "x-jwt")],
                "user_jwt_secret",
            ),
            (
                &[("KEY_SHA256", hash), ("USER_HEADER", "x user")],
                "user_header",
            ),
            (
                &[("KEY_SHA256", hash), ("USER_HEADER", "Authorization")],
                "user_header",
            ),
            (
                &[
                    ("KEY_SHA256", hash),
                    ("USER_HEADER", "x-user"),
                    ("PLAN", "gold"),
                ],
                "plan",
            ),
        ];
        for (fields, bad) in cases {
            let vars: Vec<(String, &str)> = fields.iter().map(|(f, v)| (key(f), *v)).collect();
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            assert_eq!(
                invalid_key(load_with(None, &vars)),
                format!("auth.service_keys.webui.{bad}")
            );
        }
    }

    #[test]
    fn defaults_match_the_reference_checklist() {
        let c = load_with(None, &[]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.limits.default_max_tokens, 1000);
        assert_eq!(c.limits.deadline_secs, 30);
        assert_eq!(c.rate.requests_per_minute, 10);
        assert_eq!(c.cost.max_daily_usd, 0.50);
        assert!(c.upstream.url.is_empty());
        assert!(c.pricing.contains_key("mock-gpt"));
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let c = load_with(
            Some("[limits]\ndeadline_secs = 5\ndefault_max_tokens = 7\n[plans.gold]\nfeatures = [\"x\"]\n"),
            &[
                ("TOLLGATE__LIMITS__DEADLINE_SECS", "9"),
                ("TOLLGATE_LISTEN", "0.0.0.0:9999"),
                ("TOLLGATE_UPSTREAM_API_KEY", "12345"),
                ("TOLLGATE__PLANS__BASIC__FEATURES", "[\"a\", \"b\"]"),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.deadline_secs, 9);
        assert_eq!(c.limits.default_max_tokens, 7);
        assert_eq!(c.server.listen, "0.0.0.0:9999");
        assert_eq!(c.upstream.api_key.expose(), "12345");
        assert_eq!(c.plans["gold"].features, vec!["x"]);
        assert_eq!(c.plans["basic"].features, vec!["a", "b"]);
        assert!(c.plans.contains_key("pro"), "maps merge, not replace");
    }

    #[test]
    fn config_path_comes_from_the_environment_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[limits]\ndeadline_secs = 3\n").unwrap();
        let c = load(&ConfigSource {
            file: None,
            env: env(&[("TOLLGATE_CONFIG", path.to_str().unwrap())]),
        })
        .unwrap();
        assert_eq!(c.limits.deadline_secs, 3);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            invalid_key(load_with(Some("[limits]\ndeadline_secs = \"soon\"\n"), &[])),
            "limits.deadline_secs"
        );
        assert_eq!(
            invalid_key(load_with(Some("[limits]\ndeadline_sec = 3\n"), &[])),
            "limits.deadline_sec"
        );
        assert_eq!(
            invalid_key(load_with(
                None,
                &[("TOLLGATE__LIMITS__MAX_BODY_BYTES", "lots")]
            )),
            "limits.max_body_bytes"
        );
        assert_eq!(
            invalid_key(load_with(None, &[("TOLLGATE__NOPE__KEY", "1")])),
            "nope"
        );
        assert_eq!(
            invalid_key(load_with(None, &[("TOLLGATE__LIMITS__DEADLINE_SECS", "0")])),
            "limits.deadline_secs"
        );
    }

    #[test]
    fn the_hardening_keys_are_checked() {
        let cases = [
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[server]\nmax_header_bytes = 0\n",
                "server.max_header_bytes",
            ),
            (
                "[server]\nmax_header_bytes = 9000\nmax_headers_total_bytes = 8000\n",
                "server.max_headers_total_bytes",
            ),
            (
                "[server]\nmax_headers_total_bytes = 200000\n",
                "server.max_headers_total_bytes",
            ),
            (
                "[plans.basic]\nfeatures = []\ndenied_parameters = [\"messages\"]\n",
                "plans.basic.denied_parameters",
            ),
        ];
        for (file, key) in cases {
            assert_eq!(invalid_key(load_with(Some(file), &[])), key, "{file}");
        }
        let config = load_with(
            Some("[plans.basic]\nfeatures = []\ndenied_parameters = [\"n\", \"tools\"]\n"),
            &[],
        )
        .unwrap();
        assert_eq!(config.plans["basic"].denied_parameters, ["n", "tools"]);
    }

    #[test]
    fn the_identity_provider_keys_are_checked() {
        let auth = |lines: &str| load_with(Some(&format!("[auth]\n{lines}\n")), &[]);
        let jwks = "algorithms = [\"RS256\"]\naudience = \"tollgate\"\njwks_url = \"https://idp.example.com/jwks\"";
        assert!(auth(jwks).is_ok(), "a JWKS needs no PEM key");
        assert_eq!(
            invalid_key(auth(
                "algorithms = [\"RS256\"]\njwks_url = \"https://idp.example.com/jwks\""
            )),
            "auth.audience",
            "a JWKS without an audience would take any client's tokens"
        );
        assert_eq!(
            invalid_key(auth(
                "algorithms = [\"RS256\"]\njwks_url = \"ftp://idp/jwks\""
            )),
            "auth.jwks_url"
        );
        assert_eq!(
            invalid_key(auth("jwks_url = \"https://idp.example.com/jwks\"")),
            "auth.jwks_url",
            "HS256 alone cannot use a JWKS"
        );
        assert_eq!(
            invalid_key(auth(&format!("{jwks}\njwks_refresh_secs = 0"))),
            "auth.jwks_refresh_secs"
        );
        assert_eq!(
            invalid_key(auth("algorithms = [\"RS256\"]")),
            "auth.public_key_path",
            "without a JWKS, RS256 still needs the PEM key"
        );
        assert_eq!(invalid_key(auth("user_claim = \"\"")), "auth.user_claim");
        assert_eq!(invalid_key(auth("plan_claim = \"sub\"")), "auth.plan_claim");
        assert_eq!(
            invalid_key(auth("default_plan = \"platinum\"")),
            "auth.default_plan"
        );
        let c = auth("user_claim = \"email\"\nplan_claim = \"tier\"\ndefault_plan = \"basic\"")
            .unwrap();
        assert_eq!(
            (c.auth.user_claim, c.auth.plan_claim, c.auth.default_plan),
            ("email".into(), "tier".into(), "basic".into())
        );
    }

    #[test]
    fn the_redis_lease_must_outlive_the_deadline_only_in_redis_mode() {
        let long_deadline = ("TOLLGATE__LIMITS__DEADLINE_SECS", "60");
        assert!(load_with(None, &[long_deadline]).is_ok());
        assert_eq!(
            invalid_key(load_with(
                None,
                &[
                    long_deadline,
                    ("TOLLGATE_REDIS_URL", "redis://127.0.0.1:6379/")
                ]
            )),
            "redis.lease_secs"
        );
        assert_eq!(
            invalid_key(load_with(None, &[("TOLLGATE_REDIS_URL", "http://x/")])),
            "redis.url"
        );
        assert_eq!(
            invalid_key(load_with(
                None,
                &[("TOLLGATE_REDIS_URL", "rediss://x:6380/")]
            )),
            "redis.url"
        );
    }

    #[test]
    fn the_reference_file_documents_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let reference = read_file(&path).unwrap();
        assert_eq!(
            Value::Table(reference),
            Value::Table(defaults_tree().unwrap())
        );
    }

    #[test]
    fn unreadable_and_malformed_files_are_reported() {
        let missing = load(&ConfigSource {
            file: Some("/nonexistent/tollgate.toml".into()),
            env: BTreeMap::new(),
        });
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
        assert!(matches!(
            load_with(Some("[limits\n"), &[]),
            Err(ConfigError::Syntax { .. })
        ));
    }
}
