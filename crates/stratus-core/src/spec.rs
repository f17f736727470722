//! The normalized, validated description of a function version. The manifest crate produces it
//! from `stratus.toml`; the store keeps it (as JSON) with each immutable version; runtimes and
//! the scaler read it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{AliasName, EventSpec, FunctionName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Any program that serves HTTP on `$PORT`.
    Process,
    /// A WebAssembly component exporting `wasi:http/incoming-handler`, instantiated per request.
    Wasm,
    /// A `bootstrap` (the manifest's `command`) speaking the AWS Lambda Runtime API.
    Lambda,
    /// A Node.js handler (`handler = "index.handler"`) run by the platform's bootstrap.
    Node,
    /// A Python handler (`handler = "main.handler"`) run by the platform's bootstrap.
    Python,
}

impl RuntimeKind {
    pub const ALL: &'static [&'static str] = &["process", "wasm", "lambda", "node", "python"];
    pub fn as_str(&self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Wasm => "wasm",
            RuntimeKind::Lambda => "lambda",
            RuntimeKind::Node => "node",
            RuntimeKind::Python => "python",
        }
    }

    /// Runtimes whose instances run one invocation at a time through the Runtime API.
    pub fn is_handler(&self) -> bool {
        matches!(
            self,
            RuntimeKind::Lambda | RuntimeKind::Node | RuntimeKind::Python
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: FunctionName,
    pub runtime: RuntimeKind,
    /// Program and arguments, run in the version's folder. For `wasm`, one element: the
    /// component file, relative to the version's folder (the manifest's `component`).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub scaling: Scaling,
    pub health: Health,
    pub routes: Vec<RouteSpec>,
    pub build: Build,
    /// Handler, async delivery and triggers; empty (and not serialized) unless the manifest uses
    /// them.
    #[serde(default, skip_serializing_if = "EventSpec::is_empty")]
    pub events: EventSpec,
    /// Opt-in capture of sampled full requests for `stratus replay` (the manifest's
    /// `[capture]`); `None` captures nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureSpec>,
}

impl FunctionSpec {
    /// A `wasm` function's component file, relative to the version's folder (the manifest's
    /// `component`). It is stored as `command[0]` rather than a field of its own so stored specs
    /// and every hand-built spec stay as they are; this names it.
    pub fn component(&self) -> Option<&str> {
        match self.runtime {
            RuntimeKind::Wasm => self.command.first().map(String::as_str),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Per-request deadline, enforced by the gateway (504 past it).
    #[serde(with = "duration_serde")]
    pub timeout: Duration,
    /// Concurrent requests one instance is given.
    pub concurrency: u32,
    /// Largest request body accepted (413 past it).
    pub max_body_bytes: u64,
    /// Memory one instance may use: a wasm instance's linear memory (500 past it), or a process
    /// instance's resident memory including its children (cgroup limit; OOM-killed past it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU one process instance may use, in cores (`0.5` = half a core; cgroup CPU quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Processes and threads one process instance may run at once (cgroup `pids.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// Where an instance may send HTTP requests (`wasm` only; everything else is denied), as
    /// `scheme://host[:port]` patterns (the manifest's top-level `allowed_outbound_hosts`).
    ///
    /// These two live in `Limits`, not beside `command`, because they are sandbox limits and so
    /// that code building a `FunctionSpec` by hand keeps compiling with `Limits::default()`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
}

impl Limits {
    /// Concurrency per instance when the manifest does not say: a wasm instance is only a
    /// compiled component, and every request gets its own store, so one instance can take many.
    pub const WASM_CONCURRENCY: u32 = 1000;
    /// Memory per wasm instance when the manifest does not say.
    pub const WASM_MEMORY_BYTES: u64 = 128 * 1024 * 1024;
    /// The largest `limits.memory`: a 32-bit linear memory cannot grow past 4 GiB.
    pub const WASM_MAX_MEMORY_BYTES: u64 = 4 * 1024 * 1024 * 1024;
    /// The range of `limits.memory` for process instances.
    pub const PROCESS_MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;
    pub const PROCESS_MAX_MEMORY_BYTES: u64 = 1024 * 1024 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            concurrency: 50,
            max_body_bytes: 32 * 1024 * 1024,
            memory_bytes: None,
            cpu: None,
            pids: None,
            allowed_outbound_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scaling {
    pub min: u32,
    pub max: u32,
    #[serde(with = "duration_serde")]
    pub idle_timeout: Duration,
    /// Share of an instance's `concurrency` the autoscaler aims to use (headroom for bursts).
    pub target_utilization: f64,
    /// Requests that may wait for a slot per version; past it, 429.
    pub max_queue: u32,
    /// How long a request may wait for a slot; past it, 503. Defaults to the function's timeout.
    #[serde(with = "opt_duration_serde", skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Duration>,
    /// Demand must stay low this long before busy instances are removed (idle ones still go
    /// after `idle_timeout`).
    #[serde(with = "duration_serde")]
    pub scale_down_delay: Duration,
    /// Hard cap on in-flight requests over all versions of the function (reserved
    /// concurrency); past it, 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_concurrency: Option<u32>,
    /// `kind = "app"`: an always-on service (`min` ≥ 1); a deploy starts `min` instances of the
    /// new version and waits for all of them to be ready before traffic moves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub app: bool,
    /// Instances kept ready with no traffic (FC's provisioned instances) when no `schedule`
    /// entry has fired. The warm floor is `max(min, provisioned at t)`: `min` is the part that
    /// never changes (and an app's rolling-deploy size), `provisioned` the part a schedule moves.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub provisioned: u32,
    /// Scheduled provisioning: from each entry's fire time the provisioned count is the entry's,
    /// until the next entry fires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<ProvisionedSchedule>,
    /// Per-instance CPU use the autoscaler aims at, as a share of `limits.cpu` (HPA-style
    /// target utilisation): over it by more than the tolerance, more instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_target: Option<f64>,
    /// Per-instance memory use the autoscaler aims at, as a share of `limits.memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_target: Option<f64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One `[[scaling.schedule]]` entry: at every time `cron` matches (in `timezone`, like timer
/// triggers), the provisioned count becomes `provisioned`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionedSchedule {
    pub cron: String,
    pub timezone: String,
    pub provisioned: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min: 0,
            max: 4,
            idle_timeout: Duration::from_secs(300),
            target_utilization: 0.7,
            max_queue: 100,
            queue_timeout: None,
            scale_down_delay: Duration::from_secs(30),
            reserved_concurrency: None,
            app: false,
            provisioned: 0,
            schedule: Vec::new(),
            cpu_target: None,
            memory_target: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// When set, an instance is ready once `GET path` answers 2xx; otherwise once its port accepts.
    pub path: Option<String>,
    /// How long an instance may take to become ready before its start counts as failed.
    #[serde(with = "duration_serde")]
    pub startup_timeout: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            path: None,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// A public route besides the always-present `/fn/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Path prefix, starting with `/`, matched on segment boundaries.
    pub path: String,
    /// Optional `Host` the route is limited to (without port).
    pub host: Option<String>,
    pub alias: AliasName,
}

/// What the gateway keeps of a sampled request and its response, for replay. Redaction happens
/// before anything is stored, so a redacted value never reaches the log store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureSpec {
    /// Share of requests captured, in (0, 1].
    pub sample_rate: f64,
    /// Bytes kept of each body (request and response); the rest is cut and the cut flagged.
    pub max_body_bytes: u64,
    /// Header names (lowercase) whose values are replaced, besides [`Self::ALWAYS_REDACTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_headers: Vec<String>,
    /// Field names whose values are replaced in query strings, form bodies and JSON bodies (at
    /// any depth).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_fields: Vec<String>,
}

impl CaptureSpec {
    /// Credentials are never stored, whatever the manifest says.
    pub const ALWAYS_REDACTED: &'static [&'static str] = &[
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ];
    /// What replaces a redacted value.
    pub const REDACTED: &'static str = "[REDACTED]";
    pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
    /// The largest `capture.max_body`: captures live in the log store beside small records.
    pub const MAX_MAX_BODY_BYTES: u64 = 1024 * 1024;

    /// Whether a header's value is redacted (`name` in any case).
    pub fn redacts_header(&self, name: &str) -> bool {
        Self::ALWAYS_REDACTED
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
            || self
                .redact_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// Run by `stratus deploy` in the source folder before packing.
    pub command: Option<Vec<String>>,
    /// Run by the server in the unpacked version folder before its first instance starts
    /// (dependency installs such as `npm install`); its output is cached with the artifact.
    pub install: Option<Vec<String>>,
}

/// One entry of `allowed_outbound_hosts`: `scheme://host[:port]`, where the scheme is `http`,
/// `https` or `*`, the host is a name, an IP, `*` or `*.suffix`, and the port is a number or
/// `*`. Without a port only the scheme's default port (80, 443) matches, so
/// `https://api.example.com` does not open `http://api.example.com:8080` (Spin's rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// `None` is `*`.
    scheme: Option<String>,
    host: String,
    port: PortPattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Default,
    Any,
    Exactly(u16),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid outbound host \"{s}\": {why}; write scheme://host[:port], like \"https://api.example.com\", \"http://127.0.0.1:8080\" or \"https://*.example.com\""
            )
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_string()),
            _ => return Err(bad("the scheme must be http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only a scheme, a host and a port are allowed, not a path",
            ));
        }
        // An IPv6 literal is bracketed; its colons are not a port separator.
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => {
                PortPattern::Exactly(p.parse().map_err(|_| bad("the port is not a number"))?)
            }
        };
        let host = host.to_ascii_lowercase();
        let wild_ok = host == "*" || host.strip_prefix("*.").is_some_and(|r| !r.contains('*'));
        if host.is_empty() || (host.contains('*') && !wild_ok) {
            return Err(bad("the host must be a name, an IP address, * or *.domain"));
        }
        Ok(Self { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is allowed by this pattern.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Exactly(p) => p == port,
            PortPattern::Default => match scheme {
                "http" => port == 80,
                "https" => port == 443,
                _ => false,
            },
        };
        let host = host.to_ascii_lowercase();
        let host_ok = if self.host == "*" {
            true
        } else if let Some(suffix) = self.host.strip_prefix("*.") {
            // `*.example.com` is any subdomain, not `example.com` itself.
            host.strip_suffix(suffix)
                .and_then(|h| h.strip_suffix('.'))
                .is_some_and(|h| !h.is_empty())
        } else {
            self.host == host
        };
        port_ok && host_ok
    }
}

/// Optional durations as humantime strings.
pub mod opt_duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_serde::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Durations as humantime strings (`"30s"`, `"5m"`) on the wire.
pub mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{s}` ({e}): write a number and a unit, like \"500ms\", \"30s\" or \"5m\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::HostPattern;

    #[test]
    fn outbound_patterns_match_scheme_host_and_port() {
        let cases = [
            (
                "https://api.example.com",
                "https",
                "api.example.com",
                443,
                true,
            ),
            (
                "https://API.example.com/",
                "https",
                "api.Example.com",
                443,
                true,
            ),
            (
                "https://api.example.com",
                "http",
                "api.example.com",
                80,
                false,
            ),
            (
                "https://api.example.com",
                "https",
                "api.example.com",
                8443,
                false,
            ),
            ("https://api.example.com", "https", "evil.com", 443, false),
            ("http://127.0.0.1:8080", "http", "127.0.0.1", 8080, true),
            ("http://127.0.0.1:8080", "http", "127.0.0.1", 8081, false),
            ("*://127.0.0.1:*", "https", "127.0.0.1", 1, true),
            (
                "https://*.example.com",
                "https",
                "a.b.example.com",
                443,
                true,
            ),
            ("https://*.example.com", "https", "example.com", 443, false),
            (
                "https://*.example.com",
                "https",
                "badexample.com",
                443,
                false,
            ),
            ("*://*:*", "http", "anything", 9, true),
            ("http://[::1]:8080", "http", "[::1]", 8080, true),
        ];
        for (pattern, scheme, host, port, expected) in cases {
            let p = HostPattern::parse(pattern).unwrap();
            assert_eq!(
                p.allows(scheme, host, port),
                expected,
                "{pattern} vs {scheme}://{host}:{port}"
            );
        }
    }

    #[test]
    fn bad_outbound_patterns_say_why() {
        for (p, why) in [
            ("api.example.com", "no scheme"),
            ("ftp://x", "scheme must be"),
            ("https://x/path", "not a path"),
            ("https://x:port", "not a number"),
            ("https://a*b.com", "the host must be"),
            ("https://", "the host must be"),
        ] {
            let e = HostPattern::parse(p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
    }
}
