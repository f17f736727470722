//! What a version says about being invoked by events rather than by HTTP alone: the handler of
//! the handler runtimes (`node`, `python`), the async delivery policy (`[async]`) and timer
//! triggers (`[[triggers]]`). The manifest crate validates these; the events crate acts on them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration_serde;

/// Kept apart from the rest of [`crate::FunctionSpec`] and empty by default, so a version that
/// uses none of it serializes exactly as before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventSpec {
    /// `node` / `python`: `module.export`, like `index.handler` or `main.handler`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    #[serde(rename = "async", skip_serializing_if = "AsyncSpec::is_default")]
    pub async_: AsyncSpec,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerSpec>,
}

impl EventSpec {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// How async invocations (and timer fires) of the function are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AsyncSpec {
    /// Attempts after the first one (0 to 8).
    pub retries: u32,
    /// An event older than this is not attempted again; it goes to the dead-letter list.
    #[serde(with = "duration_serde")]
    pub max_event_age: Duration,
    /// Delay before the first retry; each further retry waits twice as long (capped at 5 min).
    #[serde(with = "duration_serde")]
    pub backoff: Duration,
    /// Async deliveries in flight at once for the whole function (HTTP requests do not count).
    pub concurrency: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Destination>,
}

impl AsyncSpec {
    pub const MAX_RETRIES: u32 = 8;
    /// Lambda's limit, and ours: an event is not kept for retries longer than this.
    pub const MAX_EVENT_AGE: Duration = Duration::from_secs(6 * 3600);

    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

impl Default for AsyncSpec {
    fn default() -> Self {
        Self {
            retries: 2,
            max_event_age: Self::MAX_EVENT_AGE,
            backoff: Duration::from_secs(1),
            concurrency: 10,
            on_success: None,
            on_failure: None,
        }
    }
}

/// Where the record of a finished async invocation is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// Another function (optionally `name@alias`), invoked asynchronously with the record.
    Function(String),
    /// An `http://` URL the record is POSTed to, with the same retries.
    Webhook(String),
}

impl Destination {
    /// `http://` is a webhook; anything else names a function.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with("http://") {
            return Ok(Destination::Webhook(s.to_string()));
        }
        if s.starts_with("https://") {
            // The node has no TLS client (no TLS stack is linked in); saying so beats a delivery
            // that fails on every attempt.
            return Err(format!(
                "destination \"{s}\": https webhooks are not supported yet; use an http:// URL (a local relay)"
            ));
        }
        let (name, alias) = match s.split_once('@') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        crate::FunctionName::new(name).map_err(|e| {
            format!(
                "destination \"{s}\" is neither an http:// URL nor a function name ({e}); write \"audit\", \"audit@release\" or \"http://127.0.0.1:9000/hook\""
            )
        })?;
        if let Some(a) = alias {
            crate::AliasName::new(a)
                .map_err(|e| format!("destination \"{s}\": invalid alias: {e}"))?;
        }
        Ok(Destination::Function(s.to_string()))
    }
}

/// A trigger that invokes the function asynchronously.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TriggerSpec {
    Timer {
        /// Five fields (minute first) or six (seconds first), validated by the manifest.
        cron: String,
        /// An IANA time zone name; `UTC` by default.
        timezone: String,
        /// The event each fire delivers (JSON if it parses as JSON, else a JSON string).
        payload: String,
    },
}
