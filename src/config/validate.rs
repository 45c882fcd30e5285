//! Start-up validation of a loaded [`Config`]: every rule names the key it checks.

use super::{Config, ConfigError, DEFAULT_UPSTREAM};
use std::net::SocketAddr;

pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    if c.server.listen.parse::<SocketAddr>().is_err() {
        return Err(ConfigError::invalid(
            "server.listen",
            format!("expected IP:PORT, got {:?}", c.server.listen),
        ));
    }
    if !c.server.metrics_listen.is_empty() && c.server.metrics_listen.parse::<SocketAddr>().is_err()
    {
        return Err(ConfigError::invalid(
            "server.metrics_listen",
            format!(
                "expected IP:PORT or empty, got {:?}",
                c.server.metrics_listen
            ),
        ));
    }
    validate_admin(c)?;
    if !c.upstream.url.is_empty() {
        match url::Url::parse(&c.upstream.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "upstream.url",
                    "expected an http:// or https:// base URL",
                ))
            }
        }
    }
    positive(
        "server.client_body_timeout_secs",
        c.server.client_body_timeout_secs,
    )?;
    positive(
        "server.client_write_timeout_secs",
        c.server.client_write_timeout_secs,
    )?;
    positive("server.max_connections", c.server.max_connections as u64)?;
    positive("server.max_header_bytes", c.server.max_header_bytes as u64)?;
    if c.server.max_headers_total_bytes < c.server.max_header_bytes {
        return Err(ConfigError::invalid(
            "server.max_headers_total_bytes",
            "must be at least server.max_header_bytes",
        ));
    }
    // actix-web refuses a request head over 128 KiB itself, with a bare 431.
    if c.server.max_headers_total_bytes > 96 * 1024 {
        return Err(ConfigError::invalid(
            "server.max_headers_total_bytes",
            "must be at most 98304 (96 KiB)",
        ));
    }
    positive(
        "upstream.connect_timeout_secs",
        c.upstream.connect_timeout_secs,
    )?;
    positive("upstream.idle_timeout_secs", c.upstream.idle_timeout_secs)?;
    positive(
        "upstream.max_connections",
        c.upstream.max_connections as u64,
    )?;
    positive(
        "upstream.max_event_bytes",
        c.upstream.max_event_bytes as u64,
    )?;
    positive(
        "upstream.first_byte_timeout_secs",
        c.upstream.first_byte_timeout_secs,
    )?;
    validate_upstreams(c)?;
    if c.auth.algorithms.is_empty() {
        return Err(ConfigError::invalid(
            "auth.algorithms",
            "name at least one algorithm",
        ));
    }
    for alg in &c.auth.algorithms {
        match alg.as_str() {
            "HS256" => {}
            // With a JWKS the keys come from the identity provider; a PEM key is optional.
            "RS256" | "ES256"
                if !c.auth.jwks_url.is_empty() && c.auth.public_key_path.is_empty() => {}
            "RS256" | "ES256" => {
                let pem = std::fs::read_to_string(&c.auth.public_key_path).map_err(|e| {
                    ConfigError::invalid(
                        "auth.public_key_path",
                        format!("{alg} needs a readable PEM public key: {e}"),
                    )
                })?;
                if !pem.contains("-----BEGIN") {
                    return Err(ConfigError::invalid(
                        "auth.public_key_path",
                        "the file is not PEM",
                    ));
                }
            }
            other => {
                return Err(ConfigError::invalid(
                    "auth.algorithms",
                    format!("unsupported algorithm {other:?} (HS256, RS256, ES256)"),
                ))
            }
        }
    }
    if c.auth.jwt_secret.is_empty() {
        return Err(ConfigError::invalid("auth.jwt_secret", "must not be empty"));
    }
    if c.auth.leeway_secs > 300 {
        return Err(ConfigError::invalid(
            "auth.leeway_secs",
            "must be at most 300",
        ));
    }
    positive(
        "auth.max_token_lifetime_secs",
        c.auth.max_token_lifetime_secs,
    )?;
    positive("auth.max_token_bytes", c.auth.max_token_bytes as u64)?;
    if c.auth.max_token_bytes > c.server.max_header_bytes {
        return Err(ConfigError::invalid(
            "auth.max_token_bytes",
            "must be at most server.max_header_bytes (the Authorization header holds the token)",
        ));
    }
    positive(
        "auth.max_tracked_addresses",
        c.auth.max_tracked_addresses as u64,
    )?;
    validate_identity_provider(c)?;
    positive(
        "limits.max_message_chars",
        c.limits.max_message_chars as u64,
    )?;
    positive(
        "limits.max_history_turns",
        c.limits.max_history_turns as u64,
    )?;
    positive("limits.max_context_tokens", c.limits.max_context_tokens)?;
    positive(
        "limits.default_max_tokens",
        c.limits.default_max_tokens.into(),
    )?;
    positive("limits.max_body_bytes", c.limits.max_body_bytes as u64)?;
    positive("limits.deadline_secs", c.limits.deadline_secs)?;
    usd("cost.max_daily_usd", c.cost.max_daily_usd)?;
    usd("cost.max_org_daily_usd", c.cost.max_org_daily_usd)?;
    positive("rate.min_granted_tokens", c.rate.min_granted_tokens.into())?;
    positive("users.idle_evict_secs", c.users.idle_evict_secs)?;
    positive(
        "users.snapshot_interval_secs",
        c.users.snapshot_interval_secs,
    )?;
    for (plan, p) in &c.plans {
        if let Some(model) = p.models.iter().find(|m| !c.pricing.contains_key(*m)) {
            return Err(ConfigError::invalid(
                format!("plans.{plan}.models"),
                format!("{model:?} has no [pricing] entry"),
            ));
        }
        if let Some(name) = p
            .denied_parameters
            .iter()
            .find(|name| name.is_empty() || ["model", "messages"].contains(&name.as_str()))
        {
            return Err(ConfigError::invalid(
                format!("plans.{plan}.denied_parameters"),
                format!("{name:?} cannot be denied (every request needs model and messages)"),
            ));
        }
        if p.max_output_tokens == Some(0) {
            return Err(ConfigError::invalid(
                format!("plans.{plan}.max_output_tokens"),
                "must be greater than 0",
            ));
        }
        if let Some(v) = p.cost.max_daily_usd {
            usd(&format!("plans.{plan}.cost.max_daily_usd"), v)?;
        }
        if let Some(v) = p.cost.max_monthly_usd {
            usd(&format!("plans.{plan}.cost.max_monthly_usd"), v)?;
        }
        if let Some(v) = p.cost.alert_threshold_percent {
            if !(1..=100).contains(&v) {
                return Err(ConfigError::invalid(
                    format!("plans.{plan}.cost.alert_threshold_percent"),
                    "must be between 1 and 100",
                ));
            }
        }
    }
    usd("cost.max_monthly_usd", c.cost.max_monthly_usd)?;
    if !(1..=100).contains(&c.cost.alert_threshold_percent) {
        return Err(ConfigError::invalid(
            "cost.alert_threshold_percent",
            "must be between 1 and 100",
        ));
    }
    for (model, price) in &c.pricing {
        usd(
            &format!("pricing.{model}.input_per_million_usd"),
            price.input_per_million_usd,
        )?;
        usd(
            &format!("pricing.{model}.output_per_million_usd"),
            price.output_per_million_usd,
        )?;
    }
    validate_model_routes(c)?;
    validate_guardrails(&c.guardrails)?;
    validate_service_keys(c)?;
    positive(
        "relay.meter_batch_tokens",
        c.relay.meter_batch_tokens.into(),
    )?;
    if c.relay.meter_batch_max_tokens < c.relay.meter_batch_tokens {
        return Err(ConfigError::invalid(
            "relay.meter_batch_max_tokens",
            "must be at least relay.meter_batch_tokens",
        ));
    }
    positive(
        "relay.client_buffer_events",
        c.relay.client_buffer_events as u64,
    )?;
    positive("users.mailbox_capacity", c.users.mailbox_capacity as u64)?;
    validate_redis(c)?;
    if c.mock.tokens_per_second.is_nan() || c.mock.tokens_per_second < 0.0 {
        return Err(ConfigError::invalid(
            "mock.tokens_per_second",
            "must be a number >= 0 (0 = no pacing)",
        ));
    }
    Ok(())
}

/// `[upstreams.<name>]`: a name that can be referenced, a usable URL, positive limits.
fn validate_upstreams(c: &Config) -> Result<(), ConfigError> {
    for (name, u) in &c.upstreams {
        let key = |field: &str| format!("upstreams.{name}.{field}");
        if name == DEFAULT_UPSTREAM {
            return Err(ConfigError::invalid(
                format!("upstreams.{name}"),
                "`default` is the provider [upstream] configures; give this one another name",
            ));
        }
        if !super::is_service_key_name(name) {
            return Err(ConfigError::invalid(
                format!("upstreams.{name}"),
                "a provider name is letters, digits, `_` and `-`",
            ));
        }
        match url::Url::parse(&u.url) {
            // Empty: the built-in mock serves it (for trying a format without a provider).
            _ if u.url.is_empty() => {}
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
            _ => {
                return Err(ConfigError::invalid(
                    key("url"),
                    "expected an http:// or https:// base URL (or \"\": the built-in mock)",
                ))
            }
        }
        let limits = [
            ("connect_timeout_secs", u.connect_timeout_secs),
            ("idle_timeout_secs", u.idle_timeout_secs),
            ("first_byte_timeout_secs", u.first_byte_timeout_secs),
            ("max_connections", u.max_connections.map(|v| v as u64)),
            ("max_event_bytes", u.max_event_bytes.map(|v| v as u64)),
        ];
        for (field, value) in limits {
            if let Some(value) = value {
                positive(&key(field), value)?;
            }
        }
    }
    Ok(())
}

/// `pricing.<model>.{upstream,fallback}`: a known provider, priced fallbacks, no cycle.
fn validate_model_routes(c: &Config) -> Result<(), ConfigError> {
    for (model, m) in &c.pricing {
        if m.upstream != DEFAULT_UPSTREAM && !c.upstreams.contains_key(&m.upstream) {
            return Err(ConfigError::invalid(
                format!("pricing.{model}.upstream"),
                format!(
                    "{:?} is not a provider: name `default` or one in [upstreams]",
                    m.upstream
                ),
            ));
        }
        if let Some(unpriced) = m.fallback.iter().find(|f| !c.pricing.contains_key(*f)) {
            return Err(ConfigError::invalid(
                format!("pricing.{model}.fallback"),
                format!("{unpriced:?} has no [pricing] entry"),
            ));
        }
    }
    // A model must not reach itself by following fallbacks (depth-first over the graph).
    for start in c.pricing.keys() {
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(start.as_str(), vec![start.as_str()])];
        while let Some((model, path)) = stack.pop() {
            for next in c.pricing.get(model).map_or(&[][..], |m| &m.fallback[..]) {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(next);
                    return Err(ConfigError::invalid(
                        format!("pricing.{start}.fallback"),
                        format!("fallbacks form a cycle: {}", cycle.join(" -> ")),
                    ));
                }
                if !path.contains(&next.as_str()) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push((next.as_str(), longer));
                }
            }
        }
    }
    Ok(())
}

/// `auth.jwks_url` and the claim mapping of client JWTs.
fn validate_identity_provider(c: &Config) -> Result<(), ConfigError> {
    let a = &c.auth;
    if !a.jwks_url.is_empty() {
        match url::Url::parse(&a.jwks_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "auth.jwks_url",
                    "expected an http:// or https:// URL, or \"\" (off)",
                ))
            }
        }
        if !a
            .algorithms
            .iter()
            .any(|alg| alg == "RS256" || alg == "ES256")
        {
            return Err(ConfigError::invalid(
                "auth.jwks_url",
                "a JWKS holds RS256 / ES256 keys: add one of them to auth.algorithms",
            ));
        }
        // An IdP signs every client's (and, for Entra, every tenant's) tokens with the same
        // keys: only the audience says a token was minted for this gateway.
        if a.audience.is_empty() {
            return Err(ConfigError::invalid(
                "auth.audience",
                "a JWKS needs the audience your identity provider puts in tokens for this gateway \
                 (its keys sign every client's tokens)",
            ));
        }
    }
    positive("auth.jwks_refresh_secs", a.jwks_refresh_secs)?;
    for (key, claim) in [
        ("auth.user_claim", &a.user_claim),
        ("auth.plan_claim", &a.plan_claim),
    ] {
        if claim.is_empty() {
            return Err(ConfigError::invalid(key, "must name a claim"));
        }
    }
    if a.user_claim == a.plan_claim {
        return Err(ConfigError::invalid(
            "auth.plan_claim",
            "must differ from auth.user_claim",
        ));
    }
    if !a.default_plan.is_empty() && !c.plans.contains_key(&a.default_plan) {
        return Err(ConfigError::invalid(
            "auth.default_plan",
            format!("no plan {:?} in [plans]", a.default_plan),
        ));
    }
    Ok(())
}

/// `[admin]`: a usable key hash when on; a listener address when set.
fn validate_admin(c: &Config) -> Result<(), ConfigError> {
    let hash = &c.admin.key_sha256;
    if !hash.is_empty() && (hash.len() != 64 || !hash.chars().all(|ch| ch.is_ascii_hexdigit())) {
        return Err(ConfigError::invalid(
            "admin.key_sha256",
            "expected the 64 hex digits of the admin key's SHA-256 (`tollgate key new --name admin` prints a key and its hash)",
        ));
    }
    if !c.admin.listen.is_empty() && c.admin.listen.parse::<SocketAddr>().is_err() {
        return Err(ConfigError::invalid(
            "admin.listen",
            format!("expected IP:PORT or empty, got {:?}", c.admin.listen),
        ));
    }
    Ok(())
}

/// `auth.service_keys.<name>`: a usable key hash, a way to name the user, known plans.
fn validate_service_keys(c: &Config) -> Result<(), ConfigError> {
    let mut hashes = std::collections::BTreeSet::new();
    for (name, key) in &c.auth.service_keys {
        let at = |field: &str| format!("auth.service_keys.{name}.{field}");
        if !super::is_service_key_name(name) {
            return Err(ConfigError::invalid(
                format!("auth.service_keys.{name}"),
                "a key's name may hold only letters, digits, '_' and '-' (it prefixes its users' ids)",
            ));
        }
        let hash = key.key_sha256.to_ascii_lowercase();
        if hash.is_empty() {
            continue; // off (e.g. a compose file's unset variable); start-up logs it
        }
        if hash.len() != 64 || !hash.chars().all(|ch| ch.is_ascii_hexdigit()) {
            return Err(ConfigError::invalid(
                at("key_sha256"),
                "expected the 64 hex digits of the key's SHA-256 (`tollgate key new --name NAME`)",
            ));
        }
        if !hashes.insert(hash) {
            return Err(ConfigError::invalid(
                at("key_sha256"),
                "another service key has the same key",
            ));
        }
        if key.user_header.is_empty() && key.user_jwt_header.is_empty() {
            return Err(ConfigError::invalid(
                at("user_header"),
                "set user_header or user_jwt_header: the header that names the end user",
            ));
        }
        for (field, header) in [
            ("user_header", &key.user_header),
            ("user_jwt_header", &key.user_jwt_header),
            ("role_header", &key.role_header),
            ("session_header", &key.session_header),
        ] {
            let token = |ch: char| ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch);
            if !header.chars().all(token) {
                return Err(ConfigError::invalid(at(field), "not a valid header name"));
            }
            // The key itself (or a browser's cookies) must never become a user or session id.
            if ["authorization", "cookie", "proxy-authorization"]
                .contains(&header.to_ascii_lowercase().as_str())
            {
                return Err(ConfigError::invalid(
                    at(field),
                    "must not name a credential header",
                ));
            }
        }
        if key.max_message_chars == Some(0) {
            return Err(ConfigError::invalid(
                at("max_message_chars"),
                "must be positive (leave it unset for limits.max_message_chars)",
            ));
        }
        if !key.user_jwt_header.is_empty() && key.user_jwt_secret.is_empty() {
            return Err(ConfigError::invalid(
                at("user_jwt_secret"),
                "user_jwt_header needs the JWT's HS256 secret",
            ));
        }
        if !c.plans.contains_key(&key.plan) {
            return Err(ConfigError::invalid(
                at("plan"),
                format!("no plan {:?} in [plans]", key.plan),
            ));
        }
        for (role, plan) in &key.role_plans {
            if !c.plans.contains_key(plan) {
                return Err(ConfigError::invalid(
                    at(&format!("role_plans.{role}")),
                    format!("no plan {plan:?} in [plans]"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_redis(c: &Config) -> Result<(), ConfigError> {
    let r = &c.redis;
    r.nodes()?;
    if r.key_prefix.is_empty() || r.key_prefix.contains(['{', '}']) {
        return Err(ConfigError::invalid(
            "redis.key_prefix",
            "must be non-empty, without { or }",
        ));
    }
    positive("redis.op_timeout_ms", r.op_timeout_ms)?;
    positive("redis.connect_timeout_ms", r.connect_timeout_ms)?;
    positive("redis.breaker_failures", r.breaker_failures.into())?;
    positive("redis.probe_interval_ms", r.probe_interval_ms)?;
    positive("redis.expected_replicas", r.expected_replicas)?;
    positive("redis.journal_max", r.journal_max as u64)?;
    usd("redis.outage_allowance_usd", r.outage_allowance_usd)?;
    if r.lease_secs > 86_400 {
        return Err(ConfigError::invalid(
            "redis.lease_secs",
            "must be at most 86400 (a day)",
        ));
    }
    if !r.url.is_empty() && r.lease_secs <= c.limits.deadline_secs {
        return Err(ConfigError::invalid(
            "redis.lease_secs",
            format!(
                "must exceed limits.deadline_secs ({}): a live stream must never lose its slot",
                c.limits.deadline_secs
            ),
        ));
    }
    Ok(())
}

fn validate_guardrails(g: &super::GuardrailsConfig) -> Result<(), ConfigError> {
    use super::GuardAction::{Block, Flag, Off, Redact};
    let input_actions = std::iter::once(("guardrails.input_action".to_string(), g.input_action))
        .chain(
            g.input_action_by_feature
                .iter()
                .map(|(f, a)| (format!("guardrails.input_action_by_feature.{f}"), *a)),
        );
    for (key, action) in input_actions {
        if !matches!(action, Block | Flag | Off) {
            return Err(ConfigError::invalid(key, "expected block, flag or off"));
        }
    }
    if !matches!(g.output_secrets, Block | Off) {
        return Err(ConfigError::invalid(
            "guardrails.output_secrets",
            "expected block or off",
        ));
    }
    if !matches!(g.output_pii, Redact | Block | Off) {
        return Err(ConfigError::invalid(
            "guardrails.output_pii",
            "expected redact, block or off",
        ));
    }
    positive("guardrails.input_threshold", g.input_threshold.into())
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be greater than 0"));
    }
    Ok(())
}

fn usd(key: &str, value: f64) -> Result<(), ConfigError> {
    if !value.is_finite() || value < 0.0 {
        return Err(ConfigError::invalid(key, "must be a finite amount >= 0"));
    }
    Ok(())
}
