//! Traffic policies compiled for the request path: regexes and networks parsed once per table,
//! weights as cumulative ranges, and the choice for one request as a pure function of what the
//! request carries and a random number.

use std::net::IpAddr;

use stratus_core::traffic::{cidr_contains, parse_cidr};
use stratus_core::{
    AliasName, MatchOp, MatchSource, Matcher, RuleTarget, Shadow, Sticky, TrafficPolicy,
    VersionNumber,
};

/// What a routing decision may read from a request.
pub trait RequestView {
    fn header(&self, name: &str) -> Option<&str>;
    fn cookie(&self, name: &str) -> Option<&str>;
    fn query(&self, name: &str) -> Option<&str>;
    fn peer(&self) -> IpAddr;
}

/// Requests carry nothing (for lookups outside the request path).
pub struct NoRequest;

impl RequestView for NoRequest {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }
    fn cookie(&self, _: &str) -> Option<&str> {
        None
    }
    fn query(&self, _: &str) -> Option<&str> {
        None
    }
    fn peer(&self) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    }
}

/// The resolution of weights: points are basis points (0..10_000) so a sticky hash spreads finely.
const POINTS: u32 = 10_000;

#[derive(Debug)]
enum CompiledOp {
    Equals(String),
    In(Vec<String>),
    Matches(regex_lite::Regex),
}

#[derive(Debug)]
enum CompiledMatch {
    Value {
        source: MatchSource,
        name: String,
        op: CompiledOp,
    },
    Cidr(Vec<(IpAddr, u8)>),
}

#[derive(Debug)]
struct CompiledRule {
    matcher: CompiledMatch,
    target: RuleTarget,
}

#[derive(Debug)]
pub struct CompiledPolicy {
    pub policy: TrafficPolicy,
    /// (version, upper bound in points), ascending.
    ranges: Vec<(VersionNumber, u32)>,
    rules: Vec<CompiledRule>,
}

/// How a request was assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Rule(usize, RuleTargetRef),
    Weight(VersionNumber),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleTargetRef {
    Version(VersionNumber),
    /// Index into the policy's rules; the alias is resolved by the table.
    Alias,
}

/// FNV-1a: stable across processes and releases, which a sticky assignment must be.
fn stable_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Finalise (from splitmix64) so nearby keys spread over the whole range.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn read<'a>(req: &'a dyn RequestView, source: &MatchSource, name: &str) -> Option<&'a str> {
    match source {
        MatchSource::Header => req.header(name),
        MatchSource::Cookie => req.cookie(name),
        MatchSource::Query => req.query(name),
    }
}

impl CompiledPolicy {
    /// Compiles a policy that the store validated; anything that fails to compile here is
    /// skipped with a log line rather than taking routing down.
    pub fn compile(policy: TrafficPolicy) -> Self {
        let mut acc = 0;
        let ranges = policy
            .weights
            .iter()
            .map(|w| {
                acc += w.weight * (POINTS / 100);
                (w.version, acc)
            })
            .collect();
        let rules = policy
            .rules
            .iter()
            .filter_map(|r| {
                let matcher = match &r.matcher {
                    Matcher::Value { source, name, op } => CompiledMatch::Value {
                        source: source.clone(),
                        name: name.clone(),
                        op: match op {
                            MatchOp::Equals(v) => CompiledOp::Equals(v.clone()),
                            MatchOp::In(vs) => CompiledOp::In(vs.clone()),
                            MatchOp::Matches(p) => {
                                match regex_lite::Regex::new(&format!("^(?:{p})$")) {
                                    Ok(re) => CompiledOp::Matches(re),
                                    Err(e) => {
                                        tracing::error!(
                                            "skipping rule with invalid pattern {p:?}: {e}"
                                        );
                                        return None;
                                    }
                                }
                            }
                        },
                    },
                    Matcher::SourceCidr { cidrs } => {
                        CompiledMatch::Cidr(cidrs.iter().filter_map(|c| parse_cidr(c)).collect())
                    }
                };
                Some(CompiledRule {
                    matcher,
                    target: r.target.clone(),
                })
            })
            .collect();
        Self {
            policy,
            ranges,
            rules,
        }
    }

    pub fn sticky(&self) -> Option<&Sticky> {
        self.policy.sticky.as_ref()
    }

    pub fn shadow(&self) -> Option<&Shadow> {
        self.policy.shadow.as_ref()
    }

    /// The alias a rule points at, if it points at one.
    pub fn rule_alias(&self, i: usize) -> Option<&AliasName> {
        match &self.rules.get(i)?.target {
            RuleTarget::Alias(a) => Some(a),
            RuleTarget::Version(_) => None,
        }
    }

    fn rule_matches(rule: &CompiledRule, req: &dyn RequestView) -> bool {
        match &rule.matcher {
            CompiledMatch::Value { source, name, op } => match read(req, source, name) {
                None => false,
                Some(v) => match op {
                    CompiledOp::Equals(want) => v == want,
                    CompiledOp::In(set) => set.iter().any(|s| s == v),
                    CompiledOp::Matches(re) => re.is_match(v),
                },
            },
            CompiledMatch::Cidr(nets) => {
                let ip = req.peer();
                nets.iter().any(|n| cidr_contains(*n, ip))
            }
        }
    }

    /// The first matching rule.
    pub fn match_rule(&self, req: &dyn RequestView) -> Option<(usize, RuleTargetRef)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| Self::rule_matches(r, req))
            .map(|(i, r)| {
                let t = match r.target {
                    RuleTarget::Version(v) => RuleTargetRef::Version(v),
                    RuleTarget::Alias(_) => RuleTargetRef::Alias,
                };
                (i, t)
            })
    }

    /// The weighted choice. With a stickiness key on the request, the key's hash picks the point,
    /// so the same key lands on the same version, and growing a version's share only moves the
    /// keys in the grown range; otherwise `random` (any u32) does.
    pub fn pick_weighted(&self, req: &dyn RequestView, random: u32, salt: &str) -> VersionNumber {
        if self.ranges.len() == 1 {
            return self.ranges[0].0;
        }
        let point = match self.sticky().and_then(|s| read(req, &s.source, &s.name)) {
            Some(key) => (stable_hash(&format!("{salt}\u{0}{key}")) % POINTS as u64) as u32,
            None => random % POINTS,
        };
        self.ranges
            .iter()
            .find(|(_, upper)| point < *upper)
            .or(self.ranges.last())
            .map(|(v, _)| *v)
            .unwrap_or(VersionNumber(0))
    }

    pub fn choose(&self, req: &dyn RequestView, random: u32, salt: &str) -> Choice {
        match self.match_rule(req) {
            Some((i, t)) => Choice::Rule(i, t),
            None => Choice::Weight(self.pick_weighted(req, random, salt)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use stratus_core::traffic::syntax;

    use super::*;

    #[derive(Default)]
    struct Req {
        headers: HashMap<String, String>,
        peer: Option<IpAddr>,
    }
    impl RequestView for Req {
        fn header(&self, n: &str) -> Option<&str> {
            self.headers.get(n).map(String::as_str)
        }
        fn cookie(&self, _: &str) -> Option<&str> {
            None
        }
        fn query(&self, _: &str) -> Option<&str> {
            None
        }
        fn peer(&self) -> IpAddr {
            self.peer.unwrap_or("127.0.0.1".parse().unwrap())
        }
    }

    fn policy(weights: &[&str], rules: &[&str], sticky: Option<&str>) -> CompiledPolicy {
        let w: Vec<String> = weights.iter().map(|s| s.to_string()).collect();
        let p = TrafficPolicy {
            weights: syntax::weights(&w).unwrap(),
            rules: rules.iter().map(|r| syntax::rule(r).unwrap()).collect(),
            sticky: sticky.map(|s| syntax::sticky(s).unwrap()),
            shadow: None,
        };
        CompiledPolicy::compile(p.validate().unwrap())
    }

    fn tenant(t: &str) -> Req {
        Req {
            headers: HashMap::from([("x-tenant-id".to_string(), t.to_string())]),
            peer: None,
        }
    }

    #[test]
    fn weights_split_in_proportion() {
        let p = policy(&["1=70", "2=20", "3=10"], &[], None);
        let mut counts = HashMap::new();
        // Evenly spread "random" numbers: the split must be exact.
        for r in 0..POINTS {
            *counts
                .entry(p.pick_weighted(&NoRequest, r, "f"))
                .or_insert(0) += 1;
        }
        assert_eq!(counts[&VersionNumber(1)], 7000);
        assert_eq!(counts[&VersionNumber(2)], 2000);
        assert_eq!(counts[&VersionNumber(3)], 1000);
    }

    #[test]
    fn rules_win_first_match() {
        let p = policy(
            &["1"],
            &[
                "header:x-tenant-id in t1,t7 -> 4",
                "header:x-tenant-id ~ t[0-9]+ -> 5",
                "cidr:10.0.0.0/8 -> 6",
            ],
            None,
        );
        assert_eq!(
            p.choose(&tenant("t7"), 0, "f"),
            Choice::Rule(0, RuleTargetRef::Version(VersionNumber(4)))
        );
        assert_eq!(
            p.choose(&tenant("t42"), 0, "f"),
            Choice::Rule(1, RuleTargetRef::Version(VersionNumber(5)))
        );
        assert_eq!(
            p.choose(&tenant("t42x"), 0, "f"),
            Choice::Weight(VersionNumber(1)),
            "patterns match the whole value"
        );
        let from_lan = Req {
            peer: Some("10.2.3.4".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            p.choose(&from_lan, 0, "f"),
            Choice::Rule(2, RuleTargetRef::Version(VersionNumber(6)))
        );
        assert_eq!(
            p.choose(&NoRequest, 0, "f"),
            Choice::Weight(VersionNumber(1))
        );
    }

    #[test]
    fn sticky_keys_stay_put_and_a_bigger_share_moves_only_its_growth() {
        let before = policy(&["1=90", "2=10"], &[], Some("header:x-tenant-id"));
        let after = policy(&["1=80", "2=20"], &[], Some("header:x-tenant-id"));
        let n = 20_000;
        let (mut moved, mut back, mut on_new) = (0, 0, 0);
        for i in 0..n {
            let req = tenant(&format!("tenant-{i}"));
            let a = before.pick_weighted(&req, i, "f");
            // The random number must not matter when a key is present.
            assert_eq!(a, before.pick_weighted(&req, i.wrapping_mul(7919), "f"));
            let b = after.pick_weighted(&req, i, "f");
            if a != b {
                moved += 1;
            }
            if a == VersionNumber(2) && b == VersionNumber(1) {
                back += 1;
            }
            if a == VersionNumber(2) {
                on_new += 1;
            }
        }
        let moved = moved as f64 / n as f64;
        let share = on_new as f64 / n as f64;
        assert!((0.085..0.115).contains(&moved), "moved {moved}");
        assert!((0.085..0.115).contains(&share), "10% split gave {share}");
        assert_eq!(back, 0, "no key flips back to the old version");
    }
}
