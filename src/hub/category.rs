//! Category names and subscription patterns.
//!
//! A category is a dotted name such as `env.temperature`: 1..=128 bytes of
//! `[A-Za-z0-9_-]` segments separated by single dots. A pattern is an exact
//! category, a prefix wildcard `env.*` (matching `env` and every category below
//! it) or `*` (everything).

use std::fmt;

pub const MAX_CATEGORY_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CategoryError {
    #[error("category is empty")]
    Empty,
    #[error("category is longer than {MAX_CATEGORY_LEN} bytes")]
    TooLong,
    #[error("category `{0}` must be dot-separated segments of [A-Za-z0-9_-]")]
    Invalid(String),
}

/// Checks a category name as published by a device.
pub fn validate(category: &str) -> Result<(), CategoryError> {
    if category.is_empty() {
        return Err(CategoryError::Empty);
    }
    if category.len() > MAX_CATEGORY_LEN {
        return Err(CategoryError::TooLong);
    }
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if category.split('.').all(segment_ok) {
        Ok(())
    } else {
        Err(CategoryError::Invalid(category.chars().take(64).collect()))
    }
}

/// A parsed subscription pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Exactly this category.
    Exact(String),
    /// `prefix.*`: the category `prefix` and everything below it.
    Prefix(String),
    /// `*`: every category.
    All,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, CategoryError> {
        if s == "*" {
            return Ok(Pattern::All);
        }
        if let Some(prefix) = s.strip_suffix(".*") {
            validate(prefix)?;
            return Ok(Pattern::Prefix(prefix.to_owned()));
        }
        validate(s)?;
        Ok(Pattern::Exact(s.to_owned()))
    }

    /// Whether every category `other` matches, this one matches too.
    pub fn covers(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::All, _) => true,
            (_, Pattern::All) => false,
            (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
            (Pattern::Exact(_), Pattern::Prefix(_)) => false,
            (Pattern::Prefix(_), Pattern::Exact(c)) => self.matches(c),
            (Pattern::Prefix(p), Pattern::Prefix(q)) => {
                q == p
                    || q.strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            }
        }
    }

    pub fn matches(&self, category: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Exact(c) => c == category,
            Pattern::Prefix(p) => {
                category == p
                    || (category.len() > p.len()
                        && category.starts_with(p.as_str())
                        && category.as_bytes()[p.len()] == b'.')
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::All => f.write_str("*"),
            Pattern::Exact(c) => f.write_str(c),
            Pattern::Prefix(p) => write!(f, "{p}.*"),
        }
    }
}

/// `env.temperature.max` yields `env.temperature.max`, `env.temperature`, `env`:
/// the prefixes a `Prefix` pattern could have to match this category.
pub fn prefixes(category: &str) -> impl Iterator<Item = &str> {
    std::iter::once(category).chain(
        category
            .char_indices()
            .rev()
            .filter(|&(_, c)| c == '.')
            .map(move |(i, _)| &category[..i]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate("env.temperature").is_ok());
        assert!(validate("a-b_c.D9").is_ok());
        for bad in ["", ".a", "a.", "a..b", "a b", "a/b", "é"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(validate(&"a".repeat(129)), Err(CategoryError::TooLong));
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("env.*").unwrap();
        assert!(p.matches("env"));
        assert!(p.matches("env.temperature"));
        assert!(!p.matches("environment"));
        assert!(!p.matches("power.battery"));
        assert!(Pattern::parse("*").unwrap().matches("x.y"));
        assert!(Pattern::parse("env.*.x").is_err());
        assert!(Pattern::parse("**").is_err());
        assert_eq!(Pattern::parse("env.*").unwrap().to_string(), "env.*");
        let all: Vec<_> = prefixes("a.b.c").collect();
        assert_eq!(all, ["a.b.c", "a.b", "a"]);
    }
}
