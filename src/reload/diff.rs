//! What a reload changes: the dotted keys whose values differ between two configs (names only,
//! never values: secrets are keys too), and the keys only a restart applies, which a reload
//! names and leaves as they were.

use crate::config::{Config, ConfigError};
use toml::{Table, Value};

/// Keys, or whole sections, that take effect only at start-up: the listeners and their
/// connection handling, the worker count, where state lives, the log and metrics set-up.
pub const RESTART_ONLY: &[&str] = &[
    "server.listen",
    "server.workers",
    "server.shutdown_timeout_secs",
    "server.metrics_listen",
    "server.max_connections",
    "server.keep_alive_timeout_secs",
    "server.max_header_bytes",
    "server.max_headers_total_bytes",
    "admin.listen",
    "redis",
    "users",
    "logging",
    "metrics",
    "mock",
];

/// The organisation cap may change its value on a reload, not appear or disappear: whether
/// the organisation's counter exists is decided at start-up, the same on every replica.
const ORG_CAP: &str = "cost.max_org_daily_usd";

/// The keys a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Applied: new requests see them.
    pub applied: Vec<String>,
    /// Changed in the file or environment but kept as they were until a restart.
    pub need_restart: Vec<String>,
}

/// The config a reload installs: `new`, with every restart-only key put back as `old` has it,
/// and the keys that changed.
pub fn settle(old: &Config, new: &Config) -> Result<(Config, Changes), ConfigError> {
    let old_tree = tree(old)?;
    let mut new_tree = tree(new)?;
    let mut changed = Vec::new();
    diff_tables("", &old_tree, &new_tree, &mut changed);
    let mut changes = Changes::default();
    for key in changed {
        if needs_restart(&key, old, new) {
            changes.need_restart.push(key);
        } else {
            changes.applied.push(key);
        }
    }
    for key in &changes.need_restart {
        restore(&mut new_tree, &old_tree, key);
    }
    let settled = crate::config::from_tree(new_tree)?;
    Ok((settled, changes))
}

fn needs_restart(key: &str, old: &Config, new: &Config) -> bool {
    if key == ORG_CAP {
        return (old.cost.max_org_daily_usd > 0.0) != (new.cost.max_org_daily_usd > 0.0);
    }
    RESTART_ONLY
        .iter()
        .any(|prefix| key == *prefix || key.starts_with(&format!("{prefix}.")))
}

fn tree(config: &Config) -> Result<Table, ConfigError> {
    Table::try_from(config).map_err(|e| ConfigError::invalid("(config)", e.to_string()))
}

/// Appends the dotted keys under `prefix` whose values differ (a key only one side has counts).
fn diff_tables(prefix: &str, old: &Table, new: &Table, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (old.get(key), new.get(key)) {
            (Some(Value::Table(a)), Some(Value::Table(b))) => diff_tables(&path, a, b, out),
            (a, b) if a != b => out.push(path),
            _ => {}
        }
    }
}

/// Sets `key` in `target` to its value in `source` (removing it when `source` has none).
fn restore(target: &mut Table, source: &Table, key: &str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(leaf) = parts.pop() else { return };
    let mut into = target;
    let mut from = Some(source);
    for part in parts {
        from = from.and_then(|t| t.get(part)).and_then(Value::as_table);
        let entry = into
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        match entry {
            Value::Table(t) => into = t,
            _ => return,
        }
    }
    match from.and_then(|t| t.get(leaf)) {
        Some(value) => {
            into.insert(leaf.to_string(), value.clone());
        }
        None => {
            into.remove(leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn changed_keys_are_listed_by_name_and_restart_only_ones_are_kept() {
        let old = Config::default();
        let mut new = old.clone();
        new.rate.requests_per_minute += 5;
        new.auth.jwt_secret = Secret::new("a-new-secret-that-is-long-enough-000000");
        new.server.listen = "127.0.0.1:9999".into();
        new.server.workers = 7;
        new.pricing
            .get_mut("mock-gpt")
            .unwrap()
            .output_per_million_usd += 1.0;
        let (settled, changes) = settle(&old, &new).unwrap();
        assert_eq!(
            changes.applied,
            [
                "auth.jwt_secret",
                "pricing.mock-gpt.output_per_million_usd",
                "rate.requests_per_minute"
            ]
        );
        assert_eq!(changes.need_restart, ["server.listen", "server.workers"]);
        assert_eq!(settled.server.listen, old.server.listen);
        assert_eq!(settled.server.workers, old.server.workers);
        assert_eq!(
            settled.rate.requests_per_minute,
            new.rate.requests_per_minute
        );
        assert_eq!(settled.auth.jwt_secret, new.auth.jwt_secret);
        // Names only: no value of any key is in the lists.
        let listed = format!("{changes:?}");
        assert!(!listed.contains("a-new-secret"), "{listed}");
    }

    #[test]
    fn a_whole_restart_only_section_is_kept_and_added_models_are_applied() {
        let old = Config::default();
        let mut new = old.clone();
        new.redis.op_timeout_ms += 1;
        new.metrics.max_user_series += 1;
        let price = new.pricing["mock-gpt"].clone();
        new.pricing.insert("mock-new".into(), price);
        let (settled, changes) = settle(&old, &new).unwrap();
        assert_eq!(
            changes.need_restart,
            ["metrics.max_user_series", "redis.op_timeout_ms"]
        );
        assert_eq!(settled.redis.op_timeout_ms, old.redis.op_timeout_ms);
        assert_eq!(changes.applied, ["pricing.mock-new"]);
        assert!(settled.pricing.contains_key("mock-new"));
    }

    #[test]
    fn the_organisation_cap_may_change_but_not_appear() {
        let mut old = Config::default();
        old.cost.max_org_daily_usd = 0.0;
        let mut new = old.clone();
        new.cost.max_org_daily_usd = 5.0;
        let (settled, changes) = settle(&old, &new).unwrap();
        assert_eq!(changes.need_restart, [ORG_CAP]);
        assert_eq!(settled.cost.max_org_daily_usd, 0.0);

        old.cost.max_org_daily_usd = 2.0;
        let (settled, changes) = settle(&old, &new).unwrap();
        assert_eq!(changes.applied, [ORG_CAP]);
        assert_eq!(settled.cost.max_org_daily_usd, 5.0);
    }

    #[test]
    fn nothing_changed_lists_nothing() {
        let config = Config::default();
        let (_, changes) = settle(&config, &config).unwrap();
        assert_eq!(changes, Changes::default());
    }
}
