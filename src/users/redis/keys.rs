//! Key names. Every key of one user starts with `<prefix>:{<user>}:`, so a user's keys share
//! one Redis Cluster slot (the `{…}` hash tag) and one script can touch them all. The user id
//! is escaped so that no id can close the hash tag early or reach another user's keys. The
//! organisation's counter lives under `<prefix>:org:{org}:`, which no user prefix can equal
//! (theirs continue `<prefix>:{`): its own slot, touched by its own script.
//!
//! Every script call also names its prefix's guard key, in the same slot, which nothing ever
//! writes (see `link`). In Redis Cluster the marker that shows lost keys is one key per master,
//! each in a slot that master serves ([`marker_key_within`]).

/// Hash slots in Redis Cluster.
pub const SLOTS: u16 = 16384;

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

/// The key every script call names beside `prefix` (same hash tag, so same slot) and no script
/// writes: while the slot moves between masters, Redis answers `TRYAGAIN` instead of running a
/// script on a node that holds only some of the slot's keys.
pub fn guard_key(prefix: &str) -> String {
    format!("{prefix}guard")
}

/// A marker key in one of the slot ranges `ranges` (inclusive), as one master of a cluster
/// serves them: `<prefix>:marker:{<n>}` for the smallest `n` that hashes there. `None` only for
/// empty ranges.
pub fn marker_key_within(key_prefix: &str, ranges: &[(u16, u16)]) -> Option<String> {
    if ranges.iter().all(|(start, end)| start > end) {
        return None;
    }
    // A master serving a third of the slots needs about three tries; one slot about 16,384.
    (0u32..1 << 20).find_map(|n| {
        let tag = n.to_string();
        let slot = slot_of(tag.as_bytes());
        ranges
            .iter()
            .any(|&(start, end)| (start..=end).contains(&slot))
            .then(|| format!("{key_prefix}:marker:{{{tag}}}"))
    })
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the
/// first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
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

    #[test]
    fn slots_are_redis_cluster_s() {
        // The Redis Cluster specification's check value, and CLUSTER KEYSLOT's answers.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_ne!(
            slot_of(b"foo{}{bar}"),
            slot_of(b"bar"),
            "an empty tag hashes the key"
        );
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }

    #[test]
    fn a_user_s_guard_and_keys_share_its_slot() {
        let prefix = user_prefix("tollgate", "a}b{c:d%");
        let slot = slot_of(prefix.as_bytes());
        for key in [
            guard_key(&prefix),
            format!("{prefix}open"),
            format!("{prefix}day:1"),
        ] {
            assert_eq!(slot_of(key.as_bytes()), slot, "{key}");
        }
        let org = org_prefix("tollgate");
        assert_eq!(
            slot_of(guard_key(&org).as_bytes()),
            slot_of(format!("{org}day:20000").as_bytes())
        );
    }

    #[test]
    fn each_master_gets_a_marker_in_its_own_slots() {
        for ranges in [
            vec![(0, 5460)],
            vec![(5461, 10922)],
            vec![(10923, 16383)],
            vec![(7, 7)],
        ] {
            let key = marker_key_within("tollgate", &ranges).unwrap();
            assert!(key.starts_with("tollgate:marker:{"), "{key}");
            let slot = slot_of(key.as_bytes());
            assert!(
                ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)),
                "{key}"
            );
        }
        assert_eq!(marker_key_within("tollgate", &[]), None);
    }
}
