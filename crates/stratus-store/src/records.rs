use serde::{Deserialize, Serialize};
use stratus_core::{AliasName, FunctionName, FunctionSpec, VersionNumber};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: FunctionName,
    pub created_at: i64,
    pub updated_at: i64,
    pub latest_version: Option<VersionNumber>,
    pub version_count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub function: FunctionName,
    pub number: VersionNumber,
    pub spec: FunctionSpec,
    pub artifact: String,
    pub artifact_size: u64,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub function: FunctionName,
    pub name: AliasName,
    pub version: VersionNumber,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeReason {
    Deploy,
    Manual,
    Rollback,
}

impl ChangeReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeReason::Deploy => "deploy",
            ChangeReason::Manual => "manual",
            ChangeReason::Rollback => "rollback",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "deploy" => ChangeReason::Deploy,
            "manual" => ChangeReason::Manual,
            "rollback" => ChangeReason::Rollback,
            _ => return None,
        })
    }
}

/// One entry of an alias's history: who moved it, when, from where to where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasChange {
    pub seq: i64,
    pub function: FunctionName,
    pub alias: AliasName,
    pub from: Option<VersionNumber>,
    pub to: VersionNumber,
    pub reason: ChangeReason,
    pub actor: String,
    pub at: i64,
}

/// Where an alias should go if rolled back now, derived from its history: the history is an undo
/// stack where deploys and manual sets push, and rollbacks pop. Pure, so every backend shares it.
pub fn rollback_target(history: &[AliasChange]) -> Option<VersionNumber> {
    let mut stack: Vec<VersionNumber> = Vec::new();
    for c in history {
        match c.reason {
            ChangeReason::Rollback => {
                stack.pop();
            }
            _ => stack.push(c.to),
        }
    }
    stack.pop()?;
    stack.last().copied()
}

/// The routable state of the platform at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingSnapshot {
    pub generation: u64,
    pub functions: Vec<RoutableFunction>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutableFunction {
    pub name: FunctionName,
    pub aliases: Vec<AliasRecord>,
    pub versions: Vec<VersionRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines the platform writes about an instance (started, exited, killed).
    Platform,
}

impl LogStream {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Platform => "platform",
        }
    }
    pub fn parse(s: &str) -> Self {
        match s {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            _ => LogStream::Platform,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Assigned by the store; 0 before.
    #[serde(default)]
    pub id: i64,
    pub at: i64,
    pub function: String,
    pub version: u32,
    pub instance: String,
    pub stream: LogStream,
    pub line: String,
}

#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub function: Option<String>,
    pub version: Option<u32>,
    /// Only lines with an id greater than this (for tailing).
    pub after_id: Option<i64>,
    pub since_ms: Option<i64>,
    /// The newest `limit` lines are returned, oldest first.
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(to: u32, reason: ChangeReason) -> AliasChange {
        AliasChange {
            seq: 0,
            function: FunctionName::new("f").unwrap(),
            alias: AliasName::latest(),
            from: None,
            to: VersionNumber(to),
            reason,
            actor: "t".into(),
            at: 0,
        }
    }

    #[test]
    fn rollback_walks_back_one_step_at_a_time() {
        use ChangeReason::*;
        let mut h = vec![change(1, Deploy), change(2, Deploy), change(3, Manual)];
        assert_eq!(rollback_target(&h), Some(VersionNumber(2)));
        h.push(change(2, Rollback));
        assert_eq!(rollback_target(&h), Some(VersionNumber(1)));
        h.push(change(1, Rollback));
        assert_eq!(rollback_target(&h), None);
        assert_eq!(rollback_target(&[]), None);
    }
}
