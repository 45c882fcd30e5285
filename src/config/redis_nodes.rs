//! `redis.url`'s node list and the mode it selects. One URL is a single Redis server; a
//! comma-separated list of `redis://` node URLs, or one URL with `redis.cluster = true`, is a
//! Redis Cluster reached through those seed nodes. Parsed once here, both to validate the config
//! (errors name the key; a URL is never quoted back, it may hold a password) and for the Redis
//! layer, which connects in the mode chosen.

use super::{ConfigError, RedisConfig};

/// Where tollgate's shared state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisNodes {
    /// One Redis server (`redis://`, or a Unix socket).
    Single(String),
    /// A Redis Cluster, reached through these seed nodes (at least one); the client learns the
    /// rest of the cluster from them.
    Cluster(Vec<String>),
}

impl RedisNodes {
    /// For the start-up log: `single node`, or `cluster` (with its seeds counted apart).
    pub fn mode(&self) -> &'static str {
        match self {
            RedisNodes::Single(_) => "single node",
            RedisNodes::Cluster(_) => "cluster",
        }
    }

    /// The URLs given (one for a single node).
    pub fn urls(&self) -> Vec<&str> {
        match self {
            RedisNodes::Single(url) => vec![url.as_str()],
            RedisNodes::Cluster(urls) => urls.iter().map(String::as_str).collect(),
        }
    }
}

impl RedisConfig {
    /// The nodes `redis.url` names and the mode they select; `None` without Redis (embedded
    /// mode).
    pub fn nodes(&self) -> Result<Option<RedisNodes>, ConfigError> {
        parse(self.url.expose(), self.cluster)
    }
}

fn parse(url: &str, cluster: bool) -> Result<Option<RedisNodes>, ConfigError> {
    if url.trim().is_empty() {
        if cluster {
            return Err(ConfigError::invalid(
                "redis.cluster",
                "needs redis.url (TOLLGATE_REDIS_URL): one or more redis:// node URLs of the \
                 cluster",
            ));
        }
        return Ok(None);
    }
    let entries: Vec<&str> = url.split(',').map(str::trim).collect();
    let cluster = cluster || entries.len() > 1;
    let count = entries.len();
    let mut parsed = Vec::with_capacity(count);
    for (i, entry) in entries.iter().enumerate() {
        // Entries are named by position, never quoted: they may hold a password.
        let at = || {
            if count > 1 {
                format!("node {} of {count}: ", i + 1)
            } else {
                String::new()
            }
        };
        if entry.is_empty() {
            return Err(ConfigError::invalid(
                "redis.url",
                format!("{}empty entry in the node list (a stray comma?)", at()),
            ));
        }
        let u = match url::Url::parse(entry) {
            Ok(u) => u,
            Err(_) => {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!("{}expected a redis:// URL (TOLLGATE_REDIS_URL)", at()),
                ))
            }
        };
        match u.scheme() {
            "redis" => {}
            "redis+unix" | "unix" if !cluster => {}
            "redis+unix" | "unix" => {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!(
                        "{}a Redis Cluster node needs a redis://host:port URL (the cluster \
                         hands out TCP addresses, not sockets)",
                        at()
                    ),
                ))
            }
            "rediss" => {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!(
                        "{}rediss:// (TLS) is not built in: reach Redis over a private network \
                         or a local TLS tunnel with redis://",
                        at()
                    ),
                ))
            }
            _ => {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!("{}expected a redis:// URL (TOLLGATE_REDIS_URL)", at()),
                ))
            }
        }
        if cluster {
            if u.host_str().is_none_or(str::is_empty) {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!("{}a Redis Cluster node needs a host", at()),
                ));
            }
            if !matches!(u.path(), "" | "/" | "/0") {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!("{}Redis Cluster has only database 0", at()),
                ));
            }
        }
        parsed.push(u);
    }
    if let Some(first) = parsed.first() {
        let same_credentials = parsed
            .iter()
            .all(|u| u.username() == first.username() && u.password() == first.password());
        if !same_credentials {
            return Err(ConfigError::invalid(
                "redis.url",
                "every node of the list needs the same username and password",
            ));
        }
    }
    let mut urls: Vec<String> = entries.into_iter().map(String::from).collect();
    if cluster {
        return Ok(Some(RedisNodes::Cluster(urls)));
    }
    Ok(urls.pop().map(RedisNodes::Single))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(result: Result<Option<RedisNodes>, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { key, message }) => {
                assert!(
                    !message.contains("secret"),
                    "a password was quoted: {message}"
                );
                key
            }
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn one_url_is_a_single_node_and_none_is_embedded_mode() {
        assert_eq!(parse("", false).unwrap(), None);
        assert_eq!(parse("  ", false).unwrap(), None);
        assert_eq!(
            parse("redis://127.0.0.1:6379/", false).unwrap(),
            Some(RedisNodes::Single("redis://127.0.0.1:6379/".into()))
        );
        assert_eq!(
            parse("redis+unix:///run/redis.sock", false).unwrap(),
            Some(RedisNodes::Single("redis+unix:///run/redis.sock".into()))
        );
        // A single server may use another database.
        assert!(parse("redis://h:6379/3", false).is_ok());
    }

    #[test]
    fn a_list_is_a_cluster_and_so_is_one_seed_with_cluster_set() {
        let nodes = parse("redis://a:7000/, redis://b:7001 ,redis://c:7002", false).unwrap();
        assert_eq!(
            nodes,
            Some(RedisNodes::Cluster(vec![
                "redis://a:7000/".into(),
                "redis://b:7001".into(),
                "redis://c:7002".into()
            ]))
        );
        assert_eq!(nodes.as_ref().map(RedisNodes::mode), Some("cluster"));
        let one_seed = parse("redis://a:7000/", true).unwrap();
        assert_eq!(
            one_seed,
            Some(RedisNodes::Cluster(vec!["redis://a:7000/".into()]))
        );
        assert_eq!(one_seed.unwrap().urls(), vec!["redis://a:7000/"]);
        assert_eq!(
            parse("redis://:pw@a:7000,redis://:pw@b:7001", false)
                .unwrap()
                .map(|n| n.urls().len()),
            Some(2)
        );
    }

    #[test]
    fn a_bad_entry_anywhere_names_the_key_without_quoting_it() {
        for bad in [
            "redis://a:7000,http://secret@b:7001",
            "redis://a:7000,,redis://b:7001",
            "redis://a:7000,",
            "redis://a:7000,not a url secret",
            "redis://a:7000,rediss://b:7001",
            "redis://a:7000,redis+unix:///secret.sock",
            "redis://a:7000/1,redis://b:7001/1",
            "redis://:secret@a:7000,redis://b:7001",
            "redis://u:secret@a:7000,redis://v:secret@b:7001",
            "http://secret@x/",
        ] {
            assert_eq!(key_of(parse(bad, false)), "redis.url", "{bad}");
        }
        // One seed, cluster set: the same cluster rules.
        assert_eq!(key_of(parse("redis://a:7000/2", true)), "redis.url");
        assert_eq!(key_of(parse("unix:///secret.sock", true)), "redis.url");
        assert_eq!(key_of(parse("", true)), "redis.cluster");
    }

    /// Through the whole loader: the variable holds the list, the flag is a `[redis]` key.
    #[test]
    fn the_environment_selects_the_mode() {
        let load = |vars: &[(&str, &str)]| {
            super::super::load(&super::super::ConfigSource {
                file: None,
                env: vars
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
        };
        let nodes = |vars: &[(&str, &str)]| load(vars).unwrap().redis.nodes().unwrap();
        assert_eq!(nodes(&[]), None);
        let list = [("TOLLGATE_REDIS_URL", "redis://a:7000,redis://b:7001")];
        assert_eq!(nodes(&list).map(|n| n.urls().len()), Some(2));
        let one_seed = [
            ("TOLLGATE_REDIS_URL", "redis://a:7000"),
            ("TOLLGATE__REDIS__CLUSTER", "true"),
        ];
        assert_eq!(
            nodes(&one_seed).as_ref().map(RedisNodes::mode),
            Some("cluster")
        );
        let bad = [("TOLLGATE_REDIS_URL", "redis://a:7000,http://b:7001")];
        assert_eq!(key_of(load(&bad).map(|_| None)), "redis.url");
        assert_eq!(
            key_of(load(&[("TOLLGATE__REDIS__CLUSTER", "true")]).map(|_| None)),
            "redis.cluster"
        );
    }
}
