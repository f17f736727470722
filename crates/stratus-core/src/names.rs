use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The alias every deploy moves.
pub const LATEST: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

fn check_name(kind: &str, s: &str, max: usize) -> Result<(), NameError> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if s.is_empty() || s.len() > max || !ok_chars || !first_ok {
        return Err(NameError(format!(
            "invalid {kind} `{s}`: use 1 to {max} characters of a-z, 0-9, `-` or `_`, starting with a letter"
        )));
    }
    Ok(())
}

/// A function's name: also its URL segment (`/fn/<name>/`), so it is kept URL- and DNS-friendly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionName(String);

/// Lets maps keyed by name be searched with a `&str` (no allocation on the request path). Hash
/// and Eq are derived from the one `String` field, so they agree with `str`'s.
impl std::borrow::Borrow<str> for FunctionName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FunctionName {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        check_name("function name", &s, 63)?;
        Ok(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An alias name such as `latest`, `release` or `test`. Digits-only names are refused so that
/// `hello@3` always means version 3.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AliasName(String);

impl AliasName {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        check_name("alias name", &s, 63)?;
        Ok(Self(s))
    }
    pub fn latest() -> Self {
        Self(LATEST.to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_latest(&self) -> bool {
        self.0 == LATEST
    }
}

/// An immutable version of a function, numbered from 1 per function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionNumber(pub u32);

impl fmt::Display for VersionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for VersionNumber {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Self(n)),
            _ => Err(NameError(format!(
                "invalid version `{s}`: versions are whole numbers from 1"
            ))),
        }
    }
}

macro_rules! string_newtype {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    };
}
string_newtype!(FunctionName);
string_newtype!(AliasName);

/// What a request or a command addresses after the function name: `@release`, `@3`, or nothing
/// (which means `latest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Alias(AliasName),
    Version(VersionNumber),
}

impl Target {
    /// Parses the part after `@` in `name@target`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(Target::Version);
        }
        AliasName::new(s).map(Target::Alias)
    }
}

impl Default for Target {
    fn default() -> Self {
        Target::Alias(AliasName::latest())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Alias(a) => a.fmt(f),
            Target::Version(v) => v.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_url_safe() {
        assert!(FunctionName::new("hello-world_2").is_ok());
        for bad in ["", "Hello", "1abc", "a/b", "a@b", "a.b", &"x".repeat(64)] {
            assert!(FunctionName::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn target_distinguishes_versions_from_aliases() {
        assert_eq!(
            Target::parse("3").unwrap(),
            Target::Version(VersionNumber(3))
        );
        assert_eq!(
            Target::parse("release").unwrap(),
            Target::Alias(AliasName::new("release").unwrap())
        );
        assert!(Target::parse("0").is_err());
        assert!(Target::parse("").is_err());
    }
}
