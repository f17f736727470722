//! Traffic policies: what an alias points at. A plain alias is one version at weight 100; a
//! policy can also split over any number of versions, carry ordered match rules that win over
//! weights, pin callers to a version by a stickiness key, and mirror a share of requests to a
//! shadow version. Everything here is pure: parsing, validation and the routing decision.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{AliasName, VersionNumber};

/// Weights are percentages and must add up to this.
pub const TOTAL_WEIGHT: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedVersion {
    pub version: VersionNumber,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchSource {
    Header,
    Cookie,
    Query,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op", content = "value")]
pub enum MatchOp {
    Equals(String),
    In(Vec<String>),
    /// A regular expression matched against the whole value.
    Matches(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Matcher {
    Value {
        source: MatchSource,
        name: String,
        #[serde(flatten)]
        op: MatchOp,
    },
    /// The caller's address is in one of these networks.
    SourceCidr { cidrs: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleTarget {
    Version(VersionNumber),
    Alias(AliasName),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRule {
    #[serde(rename = "match")]
    pub matcher: Matcher,
    pub target: RuleTarget,
}

/// Where the stickiness key is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sticky {
    pub source: MatchSource,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shadow {
    pub version: VersionNumber,
    /// Share of requests mirrored, 0-100.
    pub percent: u32,
    /// Also compare response bodies (hashes) of primary and mirror.
    #[serde(default)]
    pub compare_body: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    /// Ordered by version number; adds up to [`TOTAL_WEIGHT`].
    pub weights: Vec<WeightedVersion>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn perr(m: impl Into<String>) -> PolicyError {
    PolicyError(m.into())
}

impl TrafficPolicy {
    pub fn single(v: VersionNumber) -> Self {
        Self {
            weights: vec![WeightedVersion {
                version: v,
                weight: TOTAL_WEIGHT,
            }],
            rules: vec![],
            sticky: None,
            shadow: None,
        }
    }

    /// The version with the largest weight (the lowest number on ties): what "the alias's version"
    /// means where one number is wanted.
    pub fn primary(&self) -> VersionNumber {
        self.weights
            .iter()
            .max_by(|a, b| a.weight.cmp(&b.weight).then(b.version.cmp(&a.version)))
            .map(|w| w.version)
            .unwrap_or(VersionNumber(0))
    }

    pub fn is_single(&self) -> bool {
        self.weights.len() == 1 && self.rules.is_empty() && self.shadow.is_none()
    }

    /// Every version the policy can send a request to.
    pub fn versions(&self) -> BTreeSet<VersionNumber> {
        let mut s: BTreeSet<_> = self.weights.iter().map(|w| w.version).collect();
        for r in &self.rules {
            if let RuleTarget::Version(v) = r.target {
                s.insert(v);
            }
        }
        if let Some(sh) = &self.shadow {
            s.insert(sh.version);
        }
        s
    }

    /// Aliases the rules refer to.
    pub fn alias_refs(&self) -> impl Iterator<Item = &AliasName> {
        self.rules.iter().filter_map(|r| match &r.target {
            RuleTarget::Alias(a) => Some(a),
            RuleTarget::Version(_) => None,
        })
    }

    /// Checks the policy on its own terms (versions' existence is the store's to check) and puts
    /// weights in canonical order.
    pub fn validate(mut self) -> Result<Self, PolicyError> {
        if self.weights.is_empty() {
            return Err(perr("a traffic policy needs at least one weighted version"));
        }
        let mut seen = BTreeSet::new();
        for w in &self.weights {
            if !seen.insert(w.version) {
                return Err(perr(format!(
                    "version {} is listed twice in the weights",
                    w.version
                )));
            }
            if w.version.0 == 0 {
                return Err(perr("versions are numbered from 1"));
            }
        }
        let sum: u32 = self.weights.iter().map(|w| w.weight).sum();
        if sum != TOTAL_WEIGHT {
            return Err(perr(format!(
                "weights add up to {sum}, not {TOTAL_WEIGHT}: give percentages like 3=90 4=10"
            )));
        }
        self.weights.retain(|w| w.weight > 0);
        self.weights.sort_by_key(|w| w.version);
        for r in &self.rules {
            match &r.matcher {
                Matcher::Value { source, name, op } => {
                    if *source == MatchSource::Header && !valid_header_name(name) {
                        return Err(perr(format!(
                            "`{name}` is not a valid header name: use letters, digits and - (RFC 9110 token characters)"
                        )));
                    }
                    if name.is_empty() {
                        return Err(perr(
                            "a rule needs the name of the header, cookie or query parameter it reads",
                        ));
                    }
                    if let MatchOp::Matches(p) = op {
                        regex_lite::Regex::new(p)
                            .map_err(|e| perr(format!("invalid pattern `{p}`: {e}")))?;
                    }
                    if let MatchOp::In(set) = op
                        && set.is_empty()
                    {
                        return Err(perr("an `in` rule needs at least one value"));
                    }
                }
                Matcher::SourceCidr { cidrs } => {
                    if cidrs.is_empty() {
                        return Err(perr("a source CIDR rule needs at least one network"));
                    }
                    for c in cidrs {
                        parse_cidr(c).ok_or_else(|| {
                            perr(format!("`{c}` is not a network like 10.0.0.0/8 or ::1/128"))
                        })?;
                    }
                }
            }
        }
        if let Some(s) = &self.sticky
            && s.source == MatchSource::Header
            && !valid_header_name(&s.name)
        {
            return Err(perr(format!(
                "`{}` is not a valid header name for stickiness",
                s.name
            )));
        }
        if let Some(sh) = &self.shadow
            && (sh.percent == 0 || sh.percent > 100)
        {
            return Err(perr(format!(
                "shadow percent must be 1 to 100, not {}",
                sh.percent
            )));
        }
        Ok(self)
    }
}

fn valid_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, b)) => (ip.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
        None => {
            let ip: IpAddr = s.parse().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

pub fn cidr_contains((net, bits): (IpAddr, u8), ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        (IpAddr::V4(n), IpAddr::V6(i)) => i
            .to_ipv4_mapped()
            .is_some_and(|m| cidr_contains((IpAddr::V4(n), bits), IpAddr::V4(m))),
        _ => false,
    }
}

impl fmt::Display for TrafficPolicy {
    /// `3=90 4=10`, or just `3` for a single version; rules and shadow are summarised.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weights.len() == 1 {
            write!(f, "{}", self.weights[0].version)?;
        } else {
            let parts: Vec<String> = self
                .weights
                .iter()
                .map(|w| format!("{}={}", w.version, w.weight))
                .collect();
            f.write_str(&parts.join(" "))?;
        }
        if !self.rules.is_empty() {
            write!(
                f,
                " +{} rule{}",
                self.rules.len(),
                if self.rules.len() == 1 { "" } else { "s" }
            )?;
        }
        if let Some(s) = &self.sticky {
            write!(f, " sticky:{}", s.name)?;
        }
        if let Some(s) = &self.shadow {
            write!(f, " shadow:{}@{}%", s.version, s.percent)?;
        }
        Ok(())
    }
}

/// The compact text forms the CLI accepts: weights `3=90 4=10`, rules
/// `header:x-tenant-id in t1,t7 -> 4`, `cookie:beta=1 -> canary`, `query:v ~ ^2 -> 5`,
/// `cidr:10.0.0.0/8 -> 4`, stickiness `header:x-tenant-id`, shadow `5:10%`.
pub mod syntax {
    use super::*;

    pub fn weights(args: &[String]) -> Result<Vec<WeightedVersion>, PolicyError> {
        if args.len() == 1 && !args[0].contains('=') {
            let v: VersionNumber = args[0]
                .parse()
                .map_err(|e: crate::NameError| perr(e.to_string()))?;
            return Ok(vec![WeightedVersion {
                version: v,
                weight: TOTAL_WEIGHT,
            }]);
        }
        args.iter()
            .map(|a| {
                let (v, w) = a
                    .split_once('=')
                    .ok_or_else(|| perr(format!("`{a}`: write VERSION=WEIGHT, like 3=90")))?;
                let version: VersionNumber = v
                    .trim()
                    .parse()
                    .map_err(|e: crate::NameError| perr(e.to_string()))?;
                let weight: u32 =
                    w.trim().trim_end_matches('%').parse().map_err(|_| {
                        perr(format!("`{a}`: the weight must be a whole percentage"))
                    })?;
                Ok(WeightedVersion { version, weight })
            })
            .collect()
    }

    fn source(s: &str) -> Result<MatchSource, PolicyError> {
        match s {
            "header" => Ok(MatchSource::Header),
            "cookie" => Ok(MatchSource::Cookie),
            "query" => Ok(MatchSource::Query),
            other => Err(perr(format!(
                "unknown rule source `{other}`: use header, cookie, query or cidr"
            ))),
        }
    }

    pub fn target(s: &str) -> Result<RuleTarget, PolicyError> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(RuleTarget::Version)
                .map_err(|e: crate::NameError| perr(e.to_string()));
        }
        AliasName::new(s)
            .map(RuleTarget::Alias)
            .map_err(|e| perr(e.to_string()))
    }

    pub fn rule(s: &str) -> Result<RouteRule, PolicyError> {
        let (cond, tgt) = s.rsplit_once("->").ok_or_else(|| {
            perr(format!(
                "`{s}`: write CONDITION -> TARGET, like `header:x-tenant-id in t1,t7 -> 4`"
            ))
        })?;
        let target = target(tgt)?;
        let cond = cond.trim();
        let (src, rest) = cond.split_once(':').ok_or_else(|| {
            perr(format!(
                "`{cond}`: start with header:, cookie:, query: or cidr:"
            ))
        })?;
        if src == "cidr" {
            let cidrs = rest
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect();
            return Ok(RouteRule {
                matcher: Matcher::SourceCidr { cidrs },
                target,
            });
        }
        let source = source(src)?;
        let rest = rest.trim();
        let (name, op) = if let Some((n, v)) = rest.split_once(" in ") {
            (
                n,
                MatchOp::In(
                    v.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect(),
                ),
            )
        } else if let Some((n, v)) = rest.split_once('~') {
            (n, MatchOp::Matches(v.trim().to_string()))
        } else if let Some((n, v)) = rest.split_once('=') {
            (n, MatchOp::Equals(v.trim().to_string()))
        } else {
            return Err(perr(format!(
                "`{rest}`: compare with NAME=VALUE, NAME in A,B or NAME ~ PATTERN"
            )));
        };
        let name = name.trim();
        let name = if source == MatchSource::Header {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        };
        Ok(RouteRule {
            matcher: Matcher::Value { source, name, op },
            target,
        })
    }

    pub fn sticky(s: &str) -> Result<Sticky, PolicyError> {
        let (src, name) = s.split_once(':').unwrap_or(("header", s));
        let source = source(src)?;
        let name = if source == MatchSource::Header {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        };
        Ok(Sticky { source, name })
    }

    pub fn shadow(s: &str, compare_body: bool) -> Result<Shadow, PolicyError> {
        let (v, p) = s
            .split_once(':')
            .ok_or_else(|| perr(format!("`{s}`: write VERSION:PERCENT, like 5:10%")))?;
        let version: VersionNumber = v
            .parse()
            .map_err(|e: crate::NameError| perr(e.to_string()))?;
        let percent: u32 = p
            .trim_end_matches('%')
            .parse()
            .map_err(|_| perr(format!("`{p}` is not a percentage")))?;
        Ok(Shadow {
            version,
            percent,
            compare_body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u32) -> VersionNumber {
        VersionNumber(n)
    }

    #[test]
    fn weights_must_add_up_and_are_ordered() {
        let p = TrafficPolicy {
            weights: syntax::weights(&["4=10".into(), "3=90".into()]).unwrap(),
            rules: vec![],
            sticky: None,
            shadow: None,
        };
        let p = p.validate().unwrap();
        assert_eq!(
            p.weights.iter().map(|w| w.version).collect::<Vec<_>>(),
            [v(3), v(4)]
        );
        assert_eq!(p.primary(), v(3));
        assert_eq!(p.to_string(), "3=90 4=10");
        let bad = TrafficPolicy {
            weights: syntax::weights(&["3=90".into(), "4=20".into()]).unwrap(),
            ..TrafficPolicy::single(v(1))
        };
        assert!(bad.validate().unwrap_err().0.contains("add up to 110"));
        let dup = TrafficPolicy {
            weights: syntax::weights(&["3=50".into(), "3=50".into()]).unwrap(),
            ..TrafficPolicy::single(v(1))
        };
        assert!(dup.validate().is_err());
        assert_eq!(
            syntax::weights(&["7".into()]).unwrap(),
            vec![WeightedVersion {
                version: v(7),
                weight: 100
            }]
        );
    }

    #[test]
    fn rules_parse_and_validate() {
        let r = syntax::rule("header:X-Tenant-Id in t1, t7 -> 4").unwrap();
        assert_eq!(r.target, RuleTarget::Version(v(4)));
        assert_eq!(
            r.matcher,
            Matcher::Value {
                source: MatchSource::Header,
                name: "x-tenant-id".into(),
                op: MatchOp::In(vec!["t1".into(), "t7".into()])
            }
        );
        let r = syntax::rule("cookie:beta=yes -> canary").unwrap();
        assert_eq!(
            r.target,
            RuleTarget::Alias(AliasName::new("canary").unwrap())
        );
        let r = syntax::rule("cidr:10.0.0.0/8,::1 -> 2").unwrap();
        assert!(matches!(r.matcher, Matcher::SourceCidr { ref cidrs } if cidrs.len() == 2));
        assert!(syntax::rule("header:x=1").is_err());
        assert!(syntax::rule("body:x=1 -> 2").is_err());
        let bad_header = TrafficPolicy {
            rules: vec![syntax::rule("header:bad header=1 -> 2").unwrap()],
            ..TrafficPolicy::single(v(1))
        };
        assert!(
            bad_header
                .validate()
                .unwrap_err()
                .0
                .contains("not a valid header name")
        );
        let bad_re = TrafficPolicy {
            rules: vec![syntax::rule("query:x ~ ( -> 2").unwrap()],
            ..TrafficPolicy::single(v(1))
        };
        assert!(bad_re.validate().unwrap_err().0.contains("invalid pattern"));
        let bad_cidr = TrafficPolicy {
            rules: vec![syntax::rule("cidr:10.0.0.0/40 -> 2").unwrap()],
            ..TrafficPolicy::single(v(1))
        };
        assert!(bad_cidr.validate().is_err());
    }

    #[test]
    fn cidrs_contain_what_they_should() {
        let net = parse_cidr("10.1.0.0/16").unwrap();
        assert!(cidr_contains(net, "10.1.200.3".parse().unwrap()));
        assert!(!cidr_contains(net, "10.2.0.1".parse().unwrap()));
        assert!(cidr_contains(net, "::ffff:10.1.0.9".parse().unwrap()));
        assert!(cidr_contains(
            parse_cidr("0.0.0.0/0").unwrap(),
            "1.2.3.4".parse().unwrap()
        ));
        assert!(cidr_contains(
            parse_cidr("::1").unwrap(),
            "::1".parse().unwrap()
        ));
    }

    #[test]
    fn versions_include_rules_and_shadow() {
        let p = TrafficPolicy {
            weights: vec![WeightedVersion {
                version: v(1),
                weight: 100,
            }],
            rules: vec![
                syntax::rule("header:a=b -> 2").unwrap(),
                syntax::rule("header:a=c -> test").unwrap(),
            ],
            sticky: None,
            shadow: Some(syntax::shadow("3:5%", false).unwrap()),
        };
        assert_eq!(
            p.versions().into_iter().collect::<Vec<_>>(),
            [v(1), v(2), v(3)]
        );
        assert_eq!(
            p.alias_refs().map(|a| a.as_str()).collect::<Vec<_>>(),
            ["test"]
        );
    }
}
