//! The normalized, validated description of a function version. The manifest crate produces it
//! from `stratus.toml`; the store keeps it (as JSON) with each immutable version; runtimes and
//! the scaler read it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{AliasName, FunctionName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Any program that serves HTTP on `$PORT`.
    Process,
}

impl RuntimeKind {
    pub const ALL: &'static [&'static str] = &["process"];
    pub fn as_str(&self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: FunctionName,
    pub runtime: RuntimeKind,
    /// Program and arguments, run in the version's folder.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub scaling: Scaling,
    pub health: Health,
    pub routes: Vec<RouteSpec>,
    pub build: Build,
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            concurrency: 50,
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    pub min: u32,
    pub max: u32,
    #[serde(with = "duration_serde")]
    pub idle_timeout: Duration,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min: 0,
            max: 4,
            idle_timeout: Duration::from_secs(300),
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// Run by `stratus deploy` in the source folder before packing.
    pub command: Option<Vec<String>>,
    /// Run by the server in the unpacked version folder before its first instance starts
    /// (dependency installs such as `npm install`); its output is cached with the artifact.
    pub install: Option<Vec<String>>,
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
