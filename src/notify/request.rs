//! An operator's request to notify devices, checked once for both ways in (REST
//! and the dashboard WebSocket), and the resolution of its targets.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde::Serialize;

use crate::{
    config,
    proto::{notification::Severity, Targets},
};

/// Longest title, in bytes.
pub const MAX_TITLE: usize = 256;
/// Longest body, in bytes.
pub const MAX_BODY: usize = 4096;
/// Largest opaque payload, in bytes (it must fit in one message to the device).
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Longest device id, in bytes.
pub const MAX_ID: usize = 128;
/// Most tags in a selector.
pub const MAX_TAGS: usize = 32;

/// A checked request.
#[derive(Clone, Debug)]
pub struct Request {
    pub target: Target,
    pub severity: Severity,
    pub title: String,
    pub body: String,
    pub payload: Vec<u8>,
    pub ttl: Duration,
}

/// Who a notification is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// These devices, known to the registry or not (unknown ones receive it when they
    /// first connect).
    DeviceIds(BTreeSet<String>),
    /// Registered devices carrying every one of these tags.
    Tags(BTreeMap<String, String>),
    /// Every registered device.
    All,
}

/// Why a request was refused; the message is for the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

impl Request {
    /// Checks every field against the limits above and `config`.
    pub fn new(
        targets: Targets,
        severity: Severity,
        title: String,
        body: String,
        payload: Vec<u8>,
        ttl: Option<Duration>,
        config: &config::Notify,
    ) -> Result<Self, Invalid> {
        let target = match (
            targets.device_ids.is_empty(),
            targets.tags.is_empty(),
            targets.all,
        ) {
            (false, true, false) => {
                if targets.device_ids.len() > config.max_targets {
                    return Err(invalid(format!(
                        "at most {} device ids per notification",
                        config.max_targets
                    )));
                }
                if let Some(bad) = targets
                    .device_ids
                    .iter()
                    .find(|id| id.is_empty() || id.len() > MAX_ID)
                {
                    return Err(invalid(format!(
                        "device ids must be 1..={MAX_ID} bytes: {:?}",
                        bad.chars().take(40).collect::<String>()
                    )));
                }
                Target::DeviceIds(targets.device_ids.into_iter().collect())
            }
            (true, false, false) => {
                if targets.tags.len() > MAX_TAGS {
                    return Err(invalid(format!("at most {MAX_TAGS} tags in a selector")));
                }
                Target::Tags(targets.tags.into_iter().collect())
            }
            (true, true, true) => Target::All,
            _ => {
                return Err(invalid(
                    "targets: give exactly one of device_ids, tags or all",
                ))
            }
        };
        if severity == Severity::Unspecified {
            return Err(invalid("severity: one of INFO, WARNING, CRITICAL"));
        }
        if title.is_empty() || title.len() > MAX_TITLE {
            return Err(invalid(format!("title: 1..={MAX_TITLE} bytes")));
        }
        if body.len() > MAX_BODY {
            return Err(invalid(format!("body: at most {MAX_BODY} bytes")));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(invalid(format!("payload: at most {MAX_PAYLOAD} bytes")));
        }
        let ttl = ttl.unwrap_or(config.default_ttl);
        if ttl.is_zero() || ttl > config.max_ttl {
            return Err(invalid(format!(
                "ttl: more than 0 and at most {}",
                humantime::format_duration(config.max_ttl)
            )));
        }
        Ok(Request {
            target,
            severity,
            title,
            body,
            payload,
            ttl,
        })
    }

    /// The devices this request targets now, sorted: the registry is consulted for
    /// tags and `all`; explicit ids are taken as given.
    pub fn resolve<'a>(
        &self,
        registry: impl IntoIterator<Item = (&'a String, &'a BTreeMap<String, String>)>,
    ) -> Vec<String> {
        let mut out: Vec<String> = match &self.target {
            Target::DeviceIds(ids) => return ids.iter().cloned().collect(),
            Target::Tags(want) => registry
                .into_iter()
                .filter(|(_, tags)| want.iter().all(|(k, v)| tags.get(k) == Some(v)))
                .map(|(id, _)| id.clone())
                .collect(),
            Target::All => registry.into_iter().map(|(id, _)| id.clone()).collect(),
        };
        out.sort_unstable();
        out
    }
}

/// Parses a severity name as the REST API and CLI spell it (any case).
pub fn parse_severity(s: &str) -> Option<Severity> {
    match s.to_ascii_uppercase().as_str() {
        "INFO" => Some(Severity::Info),
        "WARNING" => Some(Severity::Warning),
        "CRITICAL" => Some(Severity::Critical),
        _ => None,
    }
}

pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
        Severity::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(targets: Targets) -> Result<Request, Invalid> {
        Request::new(
            targets,
            Severity::Critical,
            "t".into(),
            String::new(),
            Vec::new(),
            None,
            &config::Notify::default(),
        )
    }

    use std::collections::HashMap;

    #[test]
    fn targets_are_exactly_one_kind_and_resolve_against_the_registry() {
        let registry: HashMap<String, BTreeMap<String, String>> = [
            ("a", vec![("fleet", "north"), ("site", "x")]),
            ("b", vec![("fleet", "north")]),
            ("c", vec![("fleet", "south"), ("site", "x")]),
        ]
        .into_iter()
        .map(|(id, tags)| {
            (
                id.to_string(),
                tags.into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        })
        .collect();
        let tags = |pairs: &[(&str, &str)]| Targets {
            tags: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            req(tags(&[("fleet", "north")])).unwrap().resolve(&registry),
            ["a", "b"]
        );
        assert_eq!(
            req(tags(&[("fleet", "north"), ("site", "x")]))
                .unwrap()
                .resolve(&registry),
            ["a"]
        );
        let all = Targets {
            all: true,
            ..Default::default()
        };
        assert_eq!(req(all).unwrap().resolve(&registry), ["a", "b", "c"]);
        let ids = Targets {
            device_ids: vec!["z".into(), "a".into(), "z".into()],
            ..Default::default()
        };
        assert_eq!(req(ids).unwrap().resolve(&registry), ["a", "z"]);

        assert!(req(Targets::default()).is_err());
        let both = Targets {
            device_ids: vec!["a".into()],
            all: true,
            ..Default::default()
        };
        assert!(req(both).is_err());
    }

    #[test]
    fn fields_are_checked() {
        let ok = Targets {
            all: true,
            ..Default::default()
        };
        let cfg = config::Notify::default();
        let make = |sev, title: &str, ttl| {
            Request::new(
                ok.clone(),
                sev,
                title.into(),
                String::new(),
                Vec::new(),
                ttl,
                &cfg,
            )
        };
        assert!(make(Severity::Unspecified, "t", None).is_err());
        assert!(make(Severity::Info, "", None).is_err());
        assert!(make(Severity::Info, &"x".repeat(MAX_TITLE + 1), None).is_err());
        assert!(make(Severity::Info, "t", Some(Duration::ZERO)).is_err());
        assert!(make(Severity::Info, "t", Some(cfg.max_ttl * 2)).is_err());
        assert_eq!(
            make(Severity::Info, "t", None).unwrap().ttl,
            cfg.default_ttl
        );
        assert_eq!(parse_severity("critical"), Some(Severity::Critical));
        assert_eq!(parse_severity("loud"), None);
    }
}
