//! Names in Redis: channels and keys under the cluster's prefix, and the Redis
//! subscriptions that cover a node's subscription patterns.
//!
//! - `{prefix}t.{category}`: the channel of one category's publications. A
//!   category is `[A-Za-z0-9_-]` segments joined by dots, so it holds no Redis
//!   glob character and `{prefix}t.env.*` matches exactly the categories below
//!   `env`.
//! - `{prefix}ctl`: presence, takeovers, joins and departures of every node, and
//!   History requests.
//! - `{prefix}to.{node}`: what is sent to one node alone (History answers).
//! - `{prefix}nodes`: a sorted set, node (16 hex digits) → its last heartbeat
//!   (Unix ms). A node missing its heartbeats for `node_timeout` is dead.
//! - `{prefix}node.{node}`: a hash, device id → `Held` (protobuf): the devices
//!   the node holds. It expires `node_timeout` after the node's last heartbeat,
//!   so a dead node's hash goes away by itself.

use std::collections::BTreeSet;

use crate::hub::{NodeId, Pattern};

/// What a node subscribes to in Redis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cover {
    /// Exact channels (SUBSCRIBE).
    pub channels: BTreeSet<String>,
    /// Glob patterns (PSUBSCRIBE).
    pub patterns: BTreeSet<String>,
}

/// The prefix-qualified names of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` must hold no Redis glob character (checked by the config).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn category(&self, category: &str) -> String {
        format!("{}t.{category}", self.prefix)
    }

    pub fn control(&self) -> String {
        format!("{}ctl", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// The channel of what is sent to one node alone (History answers).
    pub fn inbox(&self, node: NodeId) -> String {
        format!("{}to.{}", self.prefix, node_name(node))
    }

    pub fn held(&self, node: NodeId) -> String {
        format!("{}node.{}", self.prefix, node_name(node))
    }

    /// The smallest set of Redis subscriptions that receives every category one
    /// of `patterns` matches: `*` covers everything, `a.*` covers `a`, `a.b` and
    /// `a.b.*`. The control channel is always in it.
    pub fn cover(&self, patterns: &[Pattern]) -> Cover {
        let mut cover = Cover::default();
        cover.channels.insert(self.control());
        if patterns.contains(&Pattern::All) {
            cover.patterns.insert(format!("{}t.*", self.prefix));
            return cover;
        }
        let mut prefixes: Vec<&str> = patterns
            .iter()
            .filter_map(|p| match p {
                Pattern::Prefix(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        // Shorter first: a prefix is kept only if no kept one covers it.
        prefixes.sort_by_key(|p| p.len());
        let mut kept: Vec<&str> = Vec::new();
        for p in prefixes {
            if !kept.iter().any(|k| under(p, k)) {
                kept.push(p);
            }
        }
        for p in &kept {
            cover.channels.insert(self.category(p));
            cover.patterns.insert(format!("{}.*", self.category(p)));
        }
        for p in patterns {
            if let Pattern::Exact(c) = p {
                if !kept.iter().any(|k| under(c, k)) {
                    cover.channels.insert(self.category(c));
                }
            }
        }
        cover
    }
}

/// Whether `category` is `prefix` or below it.
fn under(category: &str, prefix: &str) -> bool {
    category
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A node as it is named in Redis: 16 hex digits.
pub fn node_name(node: NodeId) -> String {
    format!("{node:016x}")
}

/// The node a `node_name` names.
pub fn parse_node(name: &str) -> Option<NodeId> {
    (name.len() == 16)
        .then(|| NodeId::from_str_radix(name, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cover(patterns: &[&str]) -> (Vec<String>, Vec<String>) {
        let patterns: Vec<Pattern> = patterns
            .iter()
            .map(|p| Pattern::parse(p).unwrap())
            .collect();
        let c = Keys::new("th:").cover(&patterns);
        (
            c.channels.into_iter().collect(),
            c.patterns.into_iter().collect(),
        )
    }

    #[test]
    fn the_cover_is_the_smallest_set_of_subscriptions() {
        assert_eq!(cover(&[]), (vec!["th:ctl".into()], vec![]));
        assert_eq!(
            cover(&["env.t", "env.h", "power"]),
            (
                vec![
                    "th:ctl".into(),
                    "th:t.env.h".into(),
                    "th:t.env.t".into(),
                    "th:t.power".into()
                ],
                vec![]
            )
        );
        // `env.*` covers `env`, `env.t` and `env.a.*`, not `envx`.
        assert_eq!(
            cover(&["env.t", "env.*", "env.a.*", "envx", "env"]),
            (
                vec!["th:ctl".into(), "th:t.env".into(), "th:t.envx".into()],
                vec!["th:t.env.*".into()]
            )
        );
        assert_eq!(
            cover(&["env.*", "*", "a"]),
            (vec!["th:ctl".into()], vec!["th:t.*".into()])
        );
    }

    #[test]
    fn node_names_round_trip() {
        for node in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(parse_node(&node_name(node)), Some(node));
        }
        assert_eq!(parse_node("xyz"), None);
        assert_eq!(parse_node("0123456789abcdefg"), None);
    }
}
