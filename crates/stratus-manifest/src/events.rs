//! `handler`, `[async]` and `[[triggers]]`: what a version needs to be invoked by events.

use std::time::Duration;

use serde::Deserialize;
use stratus_core::{AsyncSpec, Destination, EventSpec, RuntimeKind, TriggerSpec};

use crate::schedule::Schedule;
use crate::schema::{Invalid, count, invalid};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncToml {
    pub retries: Option<i64>,
    pub max_event_age: Option<String>,
    pub backoff: Option<String>,
    pub concurrency: Option<i64>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerToml {
    #[serde(rename = "type")]
    pub kind: String,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub payload: Option<String>,
}

fn duration(
    key: &str,
    v: &Option<String>,
    default: Duration,
    range: (Duration, Duration),
) -> Result<Duration, Invalid> {
    let Some(s) = v else { return Ok(default) };
    let d = humantime::parse_duration(s).map_err(|e| {
        invalid(
            key,
            format!(
                "invalid duration \"{s}\" ({e}): write a number and a unit, like \"30s\" or \"1h\""
            ),
        )
    })?;
    if d < range.0 || d > range.1 {
        return Err(invalid(
            key,
            format!(
                "{s} is out of range: allowed {} to {}",
                humantime::format_duration(range.0),
                humantime::format_duration(range.1)
            ),
        ));
    }
    Ok(d)
}

fn destination(key: &str, v: &Option<String>) -> Result<Option<Destination>, Invalid> {
    v.as_deref()
        .map(|s| Destination::parse(s).map_err(|e| invalid(key, e)))
        .transpose()
}

/// `module.export`: the module is a path relative to the function folder, without extension.
fn handler(runtime: RuntimeKind, h: &Option<String>) -> Result<Option<String>, Invalid> {
    let example = if runtime == RuntimeKind::Python {
        "main.handler"
    } else {
        "index.handler"
    };
    match (runtime, h) {
        (RuntimeKind::Node | RuntimeKind::Python, None) => Err(invalid(
            "runtime",
            format!(
                "runtime \"{}\" needs a `handler`, like handler = \"{example}\" (the file, then the function it exports)",
                runtime.as_str()
            ),
        )),
        (RuntimeKind::Process | RuntimeKind::Wasm, Some(_)) => Err(invalid(
            "handler",
            "`handler` is for runtimes \"node\", \"python\" and \"lambda\"; a process or wasm function serves HTTP itself",
        )),
        (_, None) => Ok(None),
        (_, Some(h)) => {
            let ok = h.rsplit_once('.').is_some_and(|(module, export)| {
                !module.is_empty()
                    && !export.is_empty()
                    && !module.starts_with('/')
                    && !module.split('/').any(|p| p == ".." || p.is_empty())
                    && export
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
            });
            if !ok {
                return Err(invalid(
                    "handler",
                    format!(
                        "invalid handler \"{h}\": write the module path inside the function folder, a dot, and the exported function, like \"{example}\" or \"src/app.handler\""
                    ),
                ));
            }
            Ok(Some(h.clone()))
        }
    }
}

pub fn validate(
    runtime: RuntimeKind,
    h: &Option<String>,
    a: &Option<AsyncToml>,
    triggers: &[TriggerToml],
) -> Result<EventSpec, Invalid> {
    let d = AsyncSpec::default();
    let a_default = AsyncToml::default();
    let a = a.as_ref().unwrap_or(&a_default);
    let async_ = AsyncSpec {
        retries: count(
            "async.retries",
            a.retries,
            d.retries,
            0,
            AsyncSpec::MAX_RETRIES as i64,
        )?,
        max_event_age: duration(
            "async.max_event_age",
            &a.max_event_age,
            d.max_event_age,
            (Duration::from_secs(1), AsyncSpec::MAX_EVENT_AGE),
        )?,
        backoff: duration(
            "async.backoff",
            &a.backoff,
            d.backoff,
            (Duration::from_millis(10), Duration::from_secs(300)),
        )?,
        concurrency: count("async.concurrency", a.concurrency, d.concurrency, 1, 1000)?,
        on_success: destination("async.on_success", &a.on_success)?,
        on_failure: destination("async.on_failure", &a.on_failure)?,
    };
    let mut out = Vec::new();
    for (i, t) in triggers.iter().enumerate() {
        let key = |k: &str| format!("triggers[{i}].{k}");
        if t.kind != "timer" {
            return Err(invalid(
                &key("type"),
                format!(
                    "unknown trigger type \"{}\": the only type is \"timer\"",
                    t.kind
                ),
            ));
        }
        let cron = t.cron.clone().ok_or_else(|| {
            invalid(
                &key("type"),
                "a timer needs a `cron`, like cron = \"0 */5 * * * *\"",
            )
        })?;
        let timezone = t.timezone.clone().unwrap_or_else(|| "UTC".into());
        if let Err(e) = Schedule::parse(&cron, &timezone) {
            let k = if e.starts_with("unknown time zone") {
                "timezone"
            } else {
                "cron"
            };
            return Err(invalid(&key(k), e));
        }
        out.push(TriggerSpec::Timer {
            cron,
            timezone,
            payload: t.payload.clone().unwrap_or_else(|| "{}".into()),
        });
    }
    Ok(EventSpec {
        handler: handler(runtime, h)?,
        async_,
        triggers: out,
    })
}
