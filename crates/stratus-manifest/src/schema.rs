//! The on-disk shape of `stratus.toml` (what users write) and its validation into the domain
//! model (what the platform runs). The two are kept apart so the file format can evolve by
//! `manifest_version` without touching the rest of the platform.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use stratus_core::{
    AliasName, Build, CaptureSpec, FunctionName, FunctionSpec, Health, Limits, RouteSpec,
    RuntimeKind,
};

pub const CURRENT_MANIFEST_VERSION: u32 = 1;

pub(crate) type Invalid = (String, String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version of this file; 1 when absent.
    pub manifest_version: Option<u32>,
    pub name: String,
    pub runtime: RuntimeKind,
    /// `function` (default: scales to zero) or `app` (always on, rolling deploys).
    pub kind: Option<Kind>,
    pub command: Option<Command>,
    /// `wasm`: the component file, relative to the function folder.
    pub component: Option<String>,
    /// `wasm`: where the component may send HTTP requests; nowhere when absent.
    pub allowed_outbound_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: LimitsToml,
    #[serde(default)]
    pub scaling: crate::scaling::ScalingToml,
    #[serde(default)]
    pub health: HealthToml,
    #[serde(default)]
    pub routes: Vec<RouteToml>,
    #[serde(default)]
    pub build: BuildToml,
    /// `node` / `python` (optional for `lambda`): `module.export`.
    pub handler: Option<String>,
    #[serde(rename = "async")]
    pub async_: Option<crate::events::AsyncToml>,
    #[serde(default)]
    pub triggers: Vec<crate::events::TriggerToml>,
    /// Opt-in capture of sampled requests for `stratus replay`.
    pub capture: Option<CaptureToml>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureToml {
    /// Share of requests captured, in (0, 1]; every request when absent.
    pub sample_rate: Option<f64>,
    /// Bytes kept of each body (`"64KiB"` when absent, at most `"1MiB"`).
    pub max_body: Option<String>,
    /// Headers redacted besides `authorization`, `proxy-authorization`, `cookie`, `set-cookie`.
    #[serde(default)]
    pub redact_headers: Vec<String>,
    /// Query, form and JSON field names redacted.
    #[serde(default)]
    pub redact_fields: Vec<String>,
}

impl CaptureToml {
    fn validate(&self) -> Result<CaptureSpec, Invalid> {
        let sample_rate = self.sample_rate.unwrap_or(1.0);
        if !(sample_rate > 0.0 && sample_rate <= 1.0) {
            return Err(invalid(
                "capture.sample_rate",
                format!("sample_rate must be greater than 0 and at most 1, got {sample_rate}"),
            ));
        }
        let max_body_bytes = match &self.max_body {
            None => CaptureSpec::DEFAULT_MAX_BODY_BYTES,
            Some(s) => parse_size(s).ok_or_else(|| {
                invalid(
                    "capture.max_body",
                    format!("invalid size \"{s}\": write a number and a unit, like \"64KiB\""),
                )
            })?,
        };
        if max_body_bytes > CaptureSpec::MAX_MAX_BODY_BYTES {
            return Err(invalid(
                "capture.max_body",
                format!(
                    "max_body is at most 1MiB ({} bytes), got {max_body_bytes} bytes",
                    CaptureSpec::MAX_MAX_BODY_BYTES
                ),
            ));
        }
        let mut redact_headers = Vec::new();
        for h in &self.redact_headers {
            if http_token(h).is_none() {
                return Err(invalid(
                    "capture.redact_headers",
                    format!("\"{h}\" is not a header name"),
                ));
            }
            redact_headers.push(h.to_ascii_lowercase());
        }
        if let Some(f) = self.redact_fields.iter().find(|f| f.is_empty()) {
            return Err(invalid(
                "capture.redact_fields",
                format!("\"{f}\": a field name cannot be empty"),
            ));
        }
        Ok(CaptureSpec {
            sample_rate,
            max_body_bytes,
            redact_headers,
            redact_fields: self.redact_fields.clone(),
        })
    }
}

/// A header name is an RFC 9110 token.
fn http_token(s: &str) -> Option<&str> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then_some(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Function,
    App,
}

/// A command as an argument list, or as one string split on whitespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Args(Vec<String>),
    Line(String),
}

impl Command {
    fn args(&self) -> Vec<String> {
        match self {
            Command::Args(a) => a.clone(),
            Command::Line(l) => l.split_whitespace().map(str::to_string).collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsToml {
    pub timeout: Option<String>,
    pub concurrency: Option<i64>,
    pub max_body: Option<String>,
    /// How much memory one instance may use (wasm: linear memory; processes: a cgroup limit).
    pub memory: Option<String>,
    /// Processes: CPU cores one instance may use, fractional (`0.5`).
    pub cpu: Option<f64>,
    /// Processes: how many processes and threads one instance may run at once.
    pub pids: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthToml {
    pub path: Option<String>,
    pub startup_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteToml {
    pub path: String,
    pub host: Option<String>,
    pub alias: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildToml {
    pub command: Option<Command>,
    pub install: Option<Command>,
}

pub(crate) fn invalid(key: &str, msg: impl Into<String>) -> Invalid {
    (key.to_string(), msg.into())
}

pub(crate) fn duration(
    key: &str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, Invalid> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            invalid(
                key,
                format!("invalid duration \"{s}\" ({e}): write a number and a unit, like \"500ms\", \"30s\" or \"5m\""),
            )
        }),
    }
}

pub(crate) fn count(
    key: &str,
    v: Option<i64>,
    default: u32,
    min: i64,
    max: i64,
) -> Result<u32, Invalid> {
    match v {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n) => Ok(n as u32),
        Some(n) => Err(invalid(
            key,
            format!("{n} is out of range: allowed {min} to {max}"),
        )),
    }
}

/// Parses sizes like `512KiB`, `6MiB`, `1GB` or a plain number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(crate) fn args(key: &str, c: &Option<Command>) -> Result<Option<Vec<String>>, Invalid> {
    match c {
        None => Ok(None),
        Some(c) => {
            let a = c.args();
            if a.is_empty() || a[0].is_empty() {
                return Err(invalid(
                    key,
                    "empty command: give the program and its arguments, like [\"node\", \"server.js\"]",
                ));
            }
            Ok(Some(a))
        }
    }
}

impl Manifest {
    pub fn validate(self) -> Result<FunctionSpec, Invalid> {
        if let Some(v) = self.manifest_version
            && v != CURRENT_MANIFEST_VERSION
        {
            return Err(invalid(
                "manifest_version",
                format!(
                    "unsupported manifest_version {v}: this stratus reads version {CURRENT_MANIFEST_VERSION}"
                ),
            ));
        }
        let name =
            FunctionName::new(self.name.clone()).map_err(|e| invalid("name", e.to_string()))?;
        let runtime = crate::runtime::RuntimeChecks::new(&self)?;
        for k in self.env.keys() {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(invalid(
                    &format!("env.{k}"),
                    format!(
                        "invalid environment variable name `{k}`: use A-Z, a-z, 0-9 and `_`, not starting with a digit"
                    ),
                ));
            }
            if k.starts_with("AWS_LAMBDA_") && self.runtime.is_handler() {
                return Err(invalid(
                    &format!("env.{k}"),
                    format!(
                        "{k} is set by the platform for each instance and cannot be overridden"
                    ),
                ));
            }
            if k == "PORT" && self.runtime == RuntimeKind::Process {
                return Err(invalid(
                    "env.PORT",
                    "PORT is set by the platform for each instance and cannot be overridden",
                ));
            }
        }
        let defaults = Limits::default();
        let max_body_bytes = match &self.limits.max_body {
            None => defaults.max_body_bytes,
            Some(s) => parse_size(s).ok_or_else(|| {
                invalid("limits.max_body", format!("invalid size \"{s}\": write a number and a unit, like \"512KiB\" or \"6MiB\""))
            })?,
        };
        let timeout = duration("limits.timeout", &self.limits.timeout, defaults.timeout)?;
        if timeout.is_zero() {
            return Err(invalid(
                "limits.timeout",
                "timeout must be greater than zero",
            ));
        }
        let limits = Limits {
            timeout,
            concurrency: runtime.concurrency(self.limits.concurrency)?,
            max_body_bytes,
            memory_bytes: runtime.memory_bytes(self.limits.memory.as_deref())?,
            cpu: runtime.cpu(self.limits.cpu)?,
            pids: runtime.pids(self.limits.pids)?,
            allowed_outbound_hosts: runtime.allowed_outbound_hosts()?,
        };
        let scaling = crate::scaling::validate(&self, &limits)?;
        let hd = Health::default();
        if let Some(p) = &self.health.path
            && !p.starts_with('/')
        {
            return Err(invalid(
                "health.path",
                format!("health path \"{p}\" must start with `/`"),
            ));
        }
        let health = Health {
            path: self.health.path.clone(),
            startup_timeout: duration(
                "health.startup_timeout",
                &self.health.startup_timeout,
                hd.startup_timeout,
            )?,
        };
        let mut routes = Vec::new();
        for r in &self.routes {
            if !r.path.starts_with('/') || r.path.contains("//") || r.path.contains(['?', '#']) {
                return Err(invalid(
                    "routes.path",
                    format!(
                        "route path \"{}\" must be a path like \"/api/hello\"",
                        r.path
                    ),
                ));
            }
            if r.path == "/fn" || r.path.starts_with("/fn/") {
                return Err(invalid(
                    "routes.path",
                    format!(
                        "route path \"{}\" is under /fn/, which the platform reserves",
                        r.path
                    ),
                ));
            }
            let alias = match &r.alias {
                None => AliasName::latest(),
                Some(a) => {
                    AliasName::new(a.clone()).map_err(|e| invalid("routes.alias", e.to_string()))?
                }
            };
            let path = if r.path.len() > 1 {
                r.path.trim_end_matches('/').to_string()
            } else {
                r.path.clone()
            };
            routes.push(RouteSpec {
                path,
                host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                alias,
            });
        }
        let build = Build {
            command: args("build.command", &self.build.command)?,
            install: args("build.install", &self.build.install)?,
        };
        Ok(FunctionSpec {
            name,
            runtime: self.runtime,
            command: runtime.command,
            env: self.env,
            limits,
            scaling,
            health,
            routes,
            build,
            events: crate::events::validate(
                self.runtime,
                &self.handler,
                &self.async_,
                &self.triggers,
            )?,
            capture: self
                .capture
                .as_ref()
                .map(CaptureToml::validate)
                .transpose()?,
        })
    }
}
