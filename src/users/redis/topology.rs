//! Which hash slots each master of a Redis Cluster serves, read from `CLUSTER SLOTS`: the state
//! checks put one marker key in each master's slots, so a master that lost its keys (restarted
//! empty, flushed) is noticed whichever master it is.

use deadpool_redis::redis::Value;
use std::collections::BTreeMap;

/// A master: its address (`host:port`) and the slot ranges it serves (inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub node: String,
    pub ranges: Vec<(u16, u16)>,
}

/// The masters in a `CLUSTER SLOTS` reply (`[[start, end, [host, port, id, …], replica …], …]`),
/// ordered by address; `None` if the reply has another shape.
pub fn masters(reply: &Value) -> Option<Vec<Master>> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let mut by_node: BTreeMap<String, Vec<(u16, u16)>> = BTreeMap::new();
    for entry in entries {
        let Value::Array(items) = entry else {
            return None;
        };
        let [start, end, master, ..] = &items[..] else {
            return None;
        };
        let Value::Array(master) = master else {
            return None;
        };
        let [host, port, ..] = &master[..] else {
            return None;
        };
        let node = format!("{}:{}", text(host)?, int(port)?);
        let range = (slot(start)?, slot(end)?);
        by_node.entry(node).or_default().push(range);
    }
    Some(
        by_node
            .into_iter()
            .map(|(node, mut ranges)| {
                ranges.sort_unstable();
                Master { node, ranges }
            })
            .collect(),
    )
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn slot(value: &Value) -> Option<u16> {
    int(value)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n < super::keys::SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(id.as_bytes().to_vec()),
        ])
    }

    fn entry(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut items = vec![Value::Int(start), Value::Int(end)];
        items.extend(nodes);
        Value::Array(items)
    }

    #[test]
    fn masters_are_grouped_with_their_ranges_and_replicas_ignored() {
        let reply = Value::Array(vec![
            entry(10923, 16383, vec![node("10.0.0.3", 7002, "c")]),
            entry(
                0,
                5460,
                vec![node("10.0.0.1", 7000, "a"), node("10.0.0.9", 7009, "r")],
            ),
            entry(5461, 10921, vec![node("10.0.0.2", 7001, "b")]),
            entry(10922, 10922, vec![node("10.0.0.1", 7000, "a")]),
        ]);
        assert_eq!(
            masters(&reply),
            Some(vec![
                Master {
                    node: "10.0.0.1:7000".into(),
                    ranges: vec![(0, 5460), (10922, 10922)],
                },
                Master {
                    node: "10.0.0.2:7001".into(),
                    ranges: vec![(5461, 10921)],
                },
                Master {
                    node: "10.0.0.3:7002".into(),
                    ranges: vec![(10923, 16383)],
                },
            ])
        );
        assert_eq!(masters(&Value::Array(vec![])), Some(vec![]));
    }

    #[test]
    fn another_shape_is_refused() {
        assert_eq!(masters(&Value::Nil), None);
        assert_eq!(
            masters(&Value::Array(vec![entry(
                0,
                99_999,
                vec![node("h", 1, "a")]
            )])),
            None,
            "no such slot"
        );
        assert_eq!(
            masters(&Value::Array(vec![Value::Array(vec![Value::Int(0)])])),
            None
        );
    }
}
