use std::collections::HashMap;
use std::sync::Arc;

use stratus_core::{
    AliasName, ErrorCode, FunctionName, PlatformError, RouteSpec, Target, VersionNumber,
};
use stratus_store::{RoutingSnapshot, VersionRecord};

use crate::policy::{Choice, CompiledPolicy, NoRequest, RequestView, RuleTargetRef};

#[derive(Debug)]
struct FunctionEntry {
    aliases: HashMap<AliasName, Arc<CompiledPolicy>>,
    versions: HashMap<VersionNumber, Arc<VersionRecord>>,
}

#[derive(Debug, Clone)]
struct RouteEntry {
    host: Option<String>,
    path: String,
    function: FunctionName,
    alias: AliasName,
}

/// An immutable view of everything routable.
#[derive(Debug, Default)]
pub struct RoutingTable {
    pub generation: u64,
    functions: HashMap<FunctionName, FunctionEntry>,
    /// Host-specific routes first, then longest path first: the first match is the most specific.
    routes: Vec<RouteEntry>,
}

/// A mirror of the request to send, as the alias's shadow policy asks.
#[derive(Debug, Clone)]
pub struct ShadowTarget {
    pub version: Arc<VersionRecord>,
    pub percent: u32,
    pub compare_body: bool,
    pub alias: AliasName,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub version: Arc<VersionRecord>,
    /// What the request asked for (`latest` when it named no alias).
    pub target: Target,
    /// The `/fn/<name>[@target]` prefix that was stripped, for `x-forwarded-prefix`; empty for
    /// manifest routes, which pass the path through unchanged.
    pub stripped_prefix: String,
    /// The path the function sees.
    pub path: String,
    pub shadow: Option<ShadowTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NoRoute(String),
    FunctionNotFound(String),
    AliasNotFound(String, String),
    VersionNotFound(String, VersionNumber),
    BadTarget(String),
}

impl From<RouteError> for PlatformError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NoRoute(p) => PlatformError::new(
                ErrorCode::RouteNotFound,
                format!("no function serves {p}: call /fn/<name>/"),
            ),
            RouteError::FunctionNotFound(f) => PlatformError::new(
                ErrorCode::FunctionNotFound,
                format!("function `{f}` does not exist"),
            ),
            RouteError::AliasNotFound(f, a) => PlatformError::new(
                ErrorCode::AliasNotFound,
                format!("function `{f}` has no alias `{a}`"),
            ),
            RouteError::VersionNotFound(f, v) => PlatformError::new(
                ErrorCode::VersionNotFound,
                format!("function `{f}` has no version {v}"),
            ),
            RouteError::BadTarget(m) => PlatformError::new(ErrorCode::BadRequest, m),
        }
    }
}

/// Splits `/fn/<name>[@target][/rest]` into name, target and the prefix length.
pub fn parse_fn_path(path: &str) -> Option<(&str, Option<&str>, usize)> {
    let rest = path.strip_prefix("/fn/")?;
    let seg_end = rest.find('/').unwrap_or(rest.len());
    let seg = &rest[..seg_end];
    if seg.is_empty() {
        return None;
    }
    let (name, target) = match seg.split_once('@') {
        Some((n, t)) => (n, Some(t)),
        None => (seg, None),
    };
    Some((name, target, "/fn/".len() + seg_end))
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl RoutingTable {
    pub fn build(snap: RoutingSnapshot) -> Self {
        let mut functions = HashMap::new();
        let mut routes = Vec::new();
        for f in snap.functions {
            let aliases: HashMap<_, _> = f
                .aliases
                .into_iter()
                .map(|a| (a.name, Arc::new(CompiledPolicy::compile(a.policy))))
                .collect();
            let versions: HashMap<_, _> = f.versions.into_iter().map(|v| (v.number, v)).collect();
            // Routes are declared by the manifest `latest` points at: the newest deploy decides.
            let latest = aliases
                .get(&AliasName::latest())
                .map(|p| p.policy.primary());
            if let Some(latest) = latest.and_then(|n| versions.get(&n)) {
                for r in &latest.spec.routes {
                    routes.push(RouteEntry {
                        host: r.host.clone(),
                        path: r.path.clone(),
                        function: f.name.clone(),
                        alias: r.alias.clone(),
                    });
                }
            }
            functions.insert(f.name, FunctionEntry { aliases, versions });
        }
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.path.len().cmp(&a.path.len()))
        });
        Self {
            generation: snap.generation,
            functions,
            routes,
        }
    }

    pub fn function_names(&self) -> impl Iterator<Item = &FunctionName> {
        self.functions.keys()
    }

    /// Versions that some alias can send traffic to.
    pub fn routable_versions(&self) -> impl Iterator<Item = (FunctionName, VersionNumber)> + '_ {
        self.functions.iter().flat_map(|(name, f)| {
            f.aliases.values().flat_map(move |p| {
                p.policy
                    .versions()
                    .into_iter()
                    .map(move |v| (name.clone(), v))
            })
        })
    }

    fn entry(&self, function: &str) -> Result<&FunctionEntry, RouteError> {
        // By `&str` (names are keys as validated): no allocation on the request path.
        self.functions
            .get(function)
            .ok_or_else(|| RouteError::FunctionNotFound(function.to_string()))
    }

    fn version(
        f: &FunctionEntry,
        function: &str,
        number: VersionNumber,
    ) -> Result<Arc<VersionRecord>, RouteError> {
        f.versions
            .get(&number)
            .cloned()
            .ok_or_else(|| RouteError::VersionNotFound(function.to_string(), number))
    }

    /// The version a target resolves to for a request that carries nothing (an alias's primary
    /// version when it splits).
    pub fn version_of(
        &self,
        function: &str,
        target: &Target,
    ) -> Result<Arc<VersionRecord>, RouteError> {
        let f = self.entry(function)?;
        let number = match target {
            Target::Version(v) => *v,
            Target::Alias(a) => f
                .aliases
                .get(a)
                .ok_or_else(|| RouteError::AliasNotFound(function.to_string(), a.to_string()))?
                .policy
                .primary(),
        };
        Self::version(f, function, number)
    }

    /// Applies an alias's policy to a request: rules first, then weights (sticky or random).
    fn choose(
        &self,
        function: &str,
        alias: &AliasName,
        req: &dyn RequestView,
        random: u32,
    ) -> Result<(Arc<VersionRecord>, Option<ShadowTarget>), RouteError> {
        let f = self.entry(function)?;
        let policy = f
            .aliases
            .get(alias)
            .ok_or_else(|| RouteError::AliasNotFound(function.to_string(), alias.to_string()))?;
        // The sticky hash is salted per alias so aliases bucket keys independently.
        let salt = if policy.sticky().is_some() {
            format!("{function}@{alias}")
        } else {
            String::new()
        };
        let number = match policy.choose(req, random, &salt) {
            Choice::Weight(v) | Choice::Rule(_, RuleTargetRef::Version(v)) => v,
            Choice::Rule(i, RuleTargetRef::Alias) => {
                // Another alias's weights, not its rules: rule chains cannot loop.
                let other = policy.rule_alias(i).expect("alias rule");
                let op = f.aliases.get(other).ok_or_else(|| {
                    RouteError::AliasNotFound(function.to_string(), other.to_string())
                })?;
                op.pick_weighted(req, random, &format!("{function}@{other}"))
            }
        };
        let shadow = match policy.shadow() {
            Some(s) => Some(ShadowTarget {
                version: Self::version(f, function, s.version)?,
                percent: s.percent,
                compare_body: s.compare_body,
                alias: alias.clone(),
            }),
            None => None,
        };
        Ok((Self::version(f, function, number)?, shadow))
    }

    /// Resolves a request. `host` is the request's host without port, lowercased; `random` is
    /// any random number (the weighted choice when no stickiness key decides).
    pub fn resolve(
        &self,
        host: Option<&str>,
        path: &str,
        req: &dyn RequestView,
        random: u32,
    ) -> Result<Resolved, RouteError> {
        if let Some((name, target, prefix_len)) = parse_fn_path(path) {
            let target = match target {
                None => Target::default(),
                Some(t) => Target::parse(t).map_err(|e| RouteError::BadTarget(e.to_string()))?,
            };
            let (version, shadow) = match &target {
                Target::Version(v) => (Self::version(self.entry(name)?, name, *v)?, None),
                Target::Alias(a) => self.choose(name, a, req, random)?,
            };
            let rest = &path[prefix_len..];
            return Ok(Resolved {
                version,
                target,
                stripped_prefix: path[..prefix_len].to_string(),
                path: if rest.is_empty() {
                    "/".to_string()
                } else {
                    rest.to_string()
                },
                shadow,
            });
        }
        let route = self
            .routes
            .iter()
            .find(|r| {
                r.host.as_deref().is_none_or(|h| Some(h) == host) && prefix_matches(&r.path, path)
            })
            .ok_or_else(|| RouteError::NoRoute(path.to_string()))?;
        let (version, shadow) = self.choose(route.function.as_str(), &route.alias, req, random)?;
        Ok(Resolved {
            version,
            target: Target::Alias(route.alias.clone()),
            stripped_prefix: String::new(),
            path: path.to_string(),
            shadow,
        })
    }

    /// Like [`resolve`](Self::resolve) for a request that carries nothing.
    pub fn resolve_plain(&self, host: Option<&str>, path: &str) -> Result<Resolved, RouteError> {
        self.resolve(host, path, &NoRequest, 0)
    }
}

/// A route of `routes` that another function than `function` already serves.
pub fn conflicting_route(
    table: &RoutingTable,
    function: &FunctionName,
    routes: &[RouteSpec],
) -> Option<(RouteSpec, FunctionName)> {
    routes.iter().find_map(|r| {
        table
            .routes
            .iter()
            .find(|e| &e.function != function && e.path == r.path && e.host == r.host)
            .map(|e| (r.clone(), e.function.clone()))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use stratus_core::{Build, FunctionSpec, Health, Limits, RuntimeKind, Scaling};
    use stratus_store::{AliasRecord, RoutableFunction};

    use super::*;

    fn version(name: &str, n: u32, routes: Vec<RouteSpec>) -> VersionRecord {
        VersionRecord {
            function: FunctionName::new(name).unwrap(),
            number: VersionNumber(n),
            spec: FunctionSpec {
                name: FunctionName::new(name).unwrap(),
                runtime: RuntimeKind::Process,
                command: vec!["x".into()],
                env: BTreeMap::new(),
                limits: Limits::default(),
                scaling: Scaling::default(),
                health: Health::default(),
                routes,
                build: Build::default(),
                events: Default::default(),
                capture: None,
            },
            artifact: String::new(),
            artifact_size: 0,
            created_at: 0,
            created_by: String::new(),
        }
    }

    fn alias(f: &str, a: &str, v: u32) -> AliasRecord {
        AliasRecord {
            function: FunctionName::new(f).unwrap(),
            name: AliasName::new(a).unwrap(),
            version: VersionNumber(v),
            policy: stratus_core::TrafficPolicy::single(VersionNumber(v)),
            updated_at: 0,
        }
    }

    fn route(path: &str, host: Option<&str>, alias: &str) -> RouteSpec {
        RouteSpec {
            path: path.into(),
            host: host.map(Into::into),
            alias: AliasName::new(alias).unwrap(),
        }
    }

    fn table() -> RoutingTable {
        RoutingTable::build(RoutingSnapshot {
            generation: 7,
            functions: vec![
                RoutableFunction {
                    name: FunctionName::new("hello").unwrap(),
                    aliases: vec![alias("hello", "latest", 2), alias("hello", "release", 1)],
                    versions: vec![
                        Arc::new(version("hello", 1, vec![])),
                        Arc::new(version(
                            "hello",
                            2,
                            vec![
                                route("/api/hello", None, "release"),
                                route("/", Some("hello.test"), "latest"),
                            ],
                        )),
                    ],
                },
                RoutableFunction {
                    name: FunctionName::new("other").unwrap(),
                    aliases: vec![alias("other", "latest", 1)],
                    versions: vec![Arc::new(version(
                        "other",
                        1,
                        vec![route("/api", None, "latest")],
                    ))],
                },
            ],
        })
    }

    fn served(t: &RoutingTable, host: Option<&str>, path: &str) -> (String, u32, String, String) {
        let r = t.resolve_plain(host, path).unwrap();
        (
            r.version.function.to_string(),
            r.version.number.0,
            r.stripped_prefix,
            r.path,
        )
    }

    #[test]
    fn fn_paths_strip_the_prefix() {
        let t = table();
        assert_eq!(
            served(&t, None, "/fn/hello/"),
            ("hello".into(), 2, "/fn/hello".into(), "/".into())
        );
        assert_eq!(
            served(&t, None, "/fn/hello"),
            ("hello".into(), 2, "/fn/hello".into(), "/".into())
        );
        assert_eq!(
            served(&t, None, "/fn/hello@release/a/b"),
            ("hello".into(), 1, "/fn/hello@release".into(), "/a/b".into())
        );
        assert_eq!(
            served(&t, None, "/fn/hello@2/x"),
            ("hello".into(), 2, "/fn/hello@2".into(), "/x".into())
        );
    }

    #[test]
    fn unknown_things_are_named() {
        let t = table();
        assert_eq!(
            t.resolve_plain(None, "/fn/nope/").unwrap_err(),
            RouteError::FunctionNotFound("nope".into())
        );
        assert_eq!(
            t.resolve_plain(None, "/fn/hello@beta/").unwrap_err(),
            RouteError::AliasNotFound("hello".into(), "beta".into())
        );
        assert_eq!(
            t.resolve_plain(None, "/fn/hello@9/").unwrap_err(),
            RouteError::VersionNotFound("hello".into(), VersionNumber(9))
        );
        assert!(matches!(
            t.resolve_plain(None, "/fn/hello@B!/").unwrap_err(),
            RouteError::BadTarget(_)
        ));
        assert_eq!(
            t.resolve_plain(None, "/nothing").unwrap_err(),
            RouteError::NoRoute("/nothing".into())
        );
    }

    #[test]
    fn manifest_routes_match_on_segments_most_specific_first() {
        let t = table();
        assert_eq!(served(&t, None, "/api/hello/x").0, "hello");
        assert_eq!(
            served(&t, None, "/api/hello/x").1,
            1,
            "route serves its alias"
        );
        assert_eq!(
            served(&t, None, "/api/hello").3,
            "/api/hello",
            "path passes through"
        );
        assert_eq!(
            served(&t, None, "/api/helloo").0,
            "other",
            "segment boundary"
        );
        assert_eq!(
            served(&t, Some("hello.test"), "/api").0,
            "hello",
            "host routes win"
        );
        assert_eq!(served(&t, Some("elsewhere"), "/api").0, "other");
    }

    #[test]
    fn conflicts_are_found_across_functions_only() {
        let t = table();
        let hello = FunctionName::new("hello").unwrap();
        let other = FunctionName::new("other").unwrap();
        assert!(conflicting_route(&t, &hello, &[route("/api", None, "latest")]).is_some());
        assert!(conflicting_route(&t, &other, &[route("/api", None, "latest")]).is_none());
        assert!(conflicting_route(&t, &hello, &[route("/api", Some("h"), "latest")]).is_none());
    }
}
