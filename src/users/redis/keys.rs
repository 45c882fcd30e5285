//! Key names. Every key of one user starts with `<prefix>:{<user>}:`, so a user's keys share
//! one Redis Cluster slot (the `{…}` hash tag) and one script can touch them all. The user id
//! is escaped so that no id can close the hash tag early or reach another user's keys. The
//! organisation's counter lives under `<prefix>:org:{org}:`, which no user prefix can equal
//! (theirs continue `<prefix>:{`): its own slot, touched by its own script.

/// The key prefix of the organisation's counter.
pub fn org_prefix(key_prefix: &str) -> String {
    format!("{key_prefix}:org:{{org}}:")
}

/// The key prefix of `user_id`'s keys.
pub fn user_prefix(key_prefix: &str, user_id: &str) -> String {
    let mut out = String::with_capacity(key_prefix.len() + user_id.len() + 4);
    out.push_str(key_prefix);
    out.push_str(":{");
    for c in user_id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    out.push_str("}:");
    out
}

/// The user id whose key `key` is (`<prefix>:{<escaped user>}:…`), unescaped.
pub fn user_of(key_prefix: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(key_prefix)?.strip_prefix(":{")?;
    let escaped = &rest[..rest.find('}')?];
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let code: String = chars.by_ref().take(2).collect();
        out.push(match code.as_str() {
            "25" => '%',
            "7B" => '{',
            "7D" => '}',
            "3A" => ':',
            _ => return None,
        });
    }
    Some(out)
}

/// The marker key whose loss shows that Redis lost tollgate's keys (`persistence`). No user's
/// key can be it: theirs all hold a `{` right after the prefix.
pub fn marker_key(key_prefix: &str) -> String {
    format!("{key_prefix}:marker")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_id_comes_back_from_any_of_its_keys() {
        for user in ["alice", "openwebui:bob", "a{b}c%7B", "%", "}:{"] {
            let key = format!("{}day:20000", user_prefix("tollgate", user));
            assert_eq!(user_of("tollgate", &key).as_deref(), Some(user), "{key}");
        }
        assert_eq!(user_of("tollgate", "tollgate:org:{org}:day:1"), None);
        assert_eq!(user_of("other", "tollgate:{a}:day:1"), None);
    }

    #[test]
    fn the_hash_tag_holds_the_whole_user_id() {
        assert_eq!(user_prefix("tollgate", "ana"), "tollgate:{ana}:");
        let p = user_prefix("tollgate", "a}b{c:d%");
        assert_eq!(p, "tollgate:{a%7Db%7Bc%3Ad%25}:");
        // Redis hashes the text between the first `{` and the next `}`: the whole id.
        let open = p.find('{').unwrap();
        let close = open + p[open..].find('}').unwrap();
        assert_eq!(&p[open + 1..close], "a%7Db%7Bc%3Ad%25");
    }

    #[test]
    fn no_user_prefix_is_the_organisation_s() {
        let org = org_prefix("tollgate");
        assert_eq!(org, "tollgate:org:{org}:");
        for id in ["org", "org}:", ":org:{org", "{org}"] {
            assert!(!user_prefix("tollgate", id).starts_with(&org));
            assert!(!org.starts_with(&user_prefix("tollgate", id)));
        }
    }

    #[test]
    fn distinct_ids_get_distinct_prefixes() {
        let ids = ["a", "a:", "a%3A", "a}", "a%7D", "{a}", "", "%"];
        let prefixes: std::collections::HashSet<_> =
            ids.iter().map(|id| user_prefix("t", id)).collect();
        assert_eq!(prefixes.len(), ids.len());
    }
}
