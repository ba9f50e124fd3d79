//! Scopes: what a token allows beyond its role. Three optional claims:
//!
//! - `publish` (devices): the category patterns it may publish to;
//! - `subscribe` (dashboards): the patterns its subscriptions must fall within;
//! - `device_tags` (viewers, operators): the devices it sees and notifies, by tag
//!   (all must match): nothing about another device reaches it (telemetry,
//!   history, presence, fleet statistics, notification progress), and an
//!   operator's notifications target only these devices.
//!
//! A claim that is absent restricts nothing (the behaviour of unscoped tokens).
//! Patterns use the hub's grammar (`env.temperature`, `env.*`, `*`); a token with
//! an invalid one is refused as malformed.

use serde::Deserialize;

use crate::hub::{category::Pattern, Tags};

/// The scope claims as signed.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
pub(super) struct ScopeClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_tags: Option<Tags>,
}

/// A token's scope, parsed. `None` in a field: unrestricted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub publish: Option<Vec<Pattern>>,
    pub subscribe: Option<Vec<Pattern>>,
    pub device_tags: Option<Tags>,
}

impl Scope {
    pub(super) fn parse(c: ScopeClaims) -> Result<Self, String> {
        let patterns = |list: Option<Vec<String>>| -> Result<Option<Vec<Pattern>>, String> {
            list.map(|l| {
                l.iter()
                    .map(|p| Pattern::parse(p).map_err(|e| format!("scope pattern {p:?}: {e}")))
                    .collect()
            })
            .transpose()
        };
        Ok(Scope {
            publish: patterns(c.publish)?,
            subscribe: patterns(c.subscribe)?,
            device_tags: c.device_tags,
        })
    }

    pub(super) fn claims(&self) -> ScopeClaims {
        let text = |l: &Option<Vec<Pattern>>| {
            l.as_ref()
                .map(|l| l.iter().map(|p| p.to_string()).collect())
        };
        ScopeClaims {
            publish: text(&self.publish),
            subscribe: text(&self.subscribe),
            device_tags: self.device_tags.clone(),
        }
    }

    /// Whether a device may publish to `category`.
    pub fn may_publish(&self, category: &str) -> bool {
        self.publish
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|p| p.matches(category)))
    }

    /// Whether a dashboard may subscribe to `pattern`: it falls within one of the
    /// allowed patterns.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.subscribe
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|p| p.covers(pattern)))
    }

    /// Whether a device with these tags is within the scope.
    pub fn sees(&self, tags: &Tags) -> bool {
        self.device_tags
            .as_ref()
            .is_none_or(|want| within(want, tags))
    }
}

/// Whether every tag of `selector` is in `tags` with the same value.
pub fn within(selector: &Tags, tags: &Tags) -> bool {
    selector.iter().all(|(k, v)| tags.get(k) == Some(v))
}

/// A tag filter narrowed to a scope's tags: `Err` with the key when the filter
/// asks for another value of a tag the scope fixes (it could match nothing the
/// scope allows).
pub fn narrow(filter: &Tags, scope: Option<&Tags>) -> Result<Tags, String> {
    let mut out = filter.clone();
    for (k, v) in scope.into_iter().flatten() {
        match out.get(k) {
            Some(mine) if mine != v => return Err(k.clone()),
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(publish: &[&str], subscribe: &[&str], tags: &[(&str, &str)]) -> Scope {
        Scope::parse(ScopeClaims {
            publish: Some(publish.iter().map(|s| s.to_string()).collect()),
            subscribe: Some(subscribe.iter().map(|s| s.to_string()).collect()),
            device_tags: Some(
                tags.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        })
        .unwrap()
    }

    #[test]
    fn patterns_fall_within_patterns() {
        let s = scope(&["env.*"], &["env.*", "power.v"], &[("fleet", "north")]);
        assert!(s.may_publish("env.t") && s.may_publish("env") && !s.may_publish("power.v"));
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert!(s.may_subscribe(&p("env.*")));
        assert!(s.may_subscribe(&p("env.t.inside")));
        assert!(s.may_subscribe(&p("env.a.*")));
        assert!(s.may_subscribe(&p("power.v")));
        assert!(!s.may_subscribe(&p("power.*")));
        assert!(!s.may_subscribe(&p("*")));
        assert!(!s.may_subscribe(&p("environment")));
        let north: Tags = [
            ("fleet".into(), "north".into()),
            ("site".into(), "a".into()),
        ]
        .into();
        let south: Tags = [("fleet".into(), "south".into())].into();
        assert!(s.sees(&north) && !s.sees(&south) && !s.sees(&Tags::new()));
        assert!(Scope::default().sees(&south) && Scope::default().may_publish("x"));
        assert!(Scope::parse(ScopeClaims {
            publish: Some(vec!["bad pattern!".into()]),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn filters_narrow_to_the_scope() {
        let scope: Tags = [("fleet".into(), "north".into())].into();
        let site: Tags = [("site".into(), "a".into())].into();
        let narrowed = narrow(&site, Some(&scope)).unwrap();
        assert_eq!(narrowed.len(), 2);
        let south: Tags = [("fleet".into(), "south".into())].into();
        assert_eq!(narrow(&south, Some(&scope)), Err("fleet".into()));
        assert_eq!(narrow(&south, None).unwrap(), south);
    }
}
