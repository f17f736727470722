//! The dispatcher: claims due invocations, delivers each once, records the outcome.

use std::sync::Arc;
use std::time::Duration;

use stratus_core::{AliasName, AsyncSpec, Destination, Target, now_ms};
use stratus_store::{Invocation, NewInvocation, Outcome};
use tokio::sync::Semaphore;

use crate::mapping::{destination_record, failure_text};
use crate::retry::{Condition, after_failure, expired};
use crate::{Attempt, Engine, TYPE_DESTINATION, result_text};

/// Deliveries in flight on this node at once, over all functions.
const MAX_IN_FLIGHT: u32 = 256;
/// Invocations claimed per store call.
const BATCH: u32 = 64;
/// How often the queue is looked at when nothing woke the dispatcher (retries coming due).
const POLL: Duration = Duration::from_millis(100);
/// How long a delivery that found no capacity waits before it asks again (doubling up to max).
const CAPACITY_PAUSE_MIN: Duration = Duration::from_millis(10);
const CAPACITY_PAUSE_MAX: Duration = Duration::from_millis(500);

impl Engine {
    /// The async policy of the version an invocation's target resolves to now.
    fn policy(&self, inv: &Invocation) -> AsyncSpec {
        let target = Target::parse(&inv.target).unwrap_or(Target::Alias(AliasName::latest()));
        self.router
            .table()
            .version_of(&inv.function, &target)
            .map(|v| v.spec.events.async_.clone())
            .unwrap_or_default()
    }

    /// Functions at their async concurrency cap, to skip in the next claim.
    fn saturated(&self) -> (u32, Vec<String>) {
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let total = inflight.values().sum();
        let table = self.router.table();
        let full = inflight
            .iter()
            .filter(|(f, n)| {
                let cap = table
                    .version_of(f, &Target::Alias(AliasName::latest()))
                    .map(|v| v.spec.events.async_.concurrency)
                    .unwrap_or(AsyncSpec::default().concurrency);
                **n >= cap
            })
            .map(|(f, _)| f.clone())
            .collect();
        (total, full)
    }

    /// Wakes the dispatcher for a new invocation of `function`, unless the function is at its
    /// async concurrency cap: a claim would then skip the function's due rows one by one (its
    /// whole backlog) and find nothing. The completion that frees a slot wakes it instead.
    pub(crate) fn wake_for(&self, function: &str) {
        let n = {
            let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.get(function).copied().unwrap_or(0)
        };
        if n > 0 {
            let cap = self
                .router
                .table()
                .version_of(function, &Target::Alias(AliasName::latest()))
                .map(|v| v.spec.events.async_.concurrency)
                .unwrap_or(AsyncSpec::default().concurrency);
            if n >= cap {
                return;
            }
        }
        self.wake.notify_one();
    }

    fn track(&self, function: &str, delta: i32) {
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(function.to_string()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            m.remove(function);
        }
    }

    /// One attempt of a claimed invocation, start to recorded outcome.
    async fn attempt(self: Arc<Self>, inv: Invocation) {
        let spec = self.policy(&inv);
        // A batch may claim past a function's cap (the cap is checked per claim, not per row);
        // the semaphore holds the extra ones back, so no more than `concurrency` run.
        let sem = {
            let mut m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let e = m.entry(inv.function.clone()).or_insert_with(|| {
                (
                    spec.concurrency,
                    Arc::new(Semaphore::new(spec.concurrency as usize)),
                )
            });
            if e.0 != spec.concurrency {
                *e = (
                    spec.concurrency,
                    Arc::new(Semaphore::new(spec.concurrency as usize)),
                );
            }
            e.1.clone()
        };
        let _permit = sem.acquire_owned().await;
        let now = now_ms();
        let result: Result<(u16, String), String> = if expired(&spec, inv.created_at, now) {
            Err("the event is older than its max_event_age".into())
        } else if let Some(url) = &inv.webhook {
            self.post_webhook(url, &inv).await
        } else {
            match self.deliver(&inv, &spec).await {
                Ok(r) if (200..300).contains(&r.status) => Ok((r.status, result_text(&r.body))),
                Ok(r) => Err(failure_text(r.status, &r.body)),
                Err(e) => Err(format!("{}: {}", e.code.as_str(), e.message)),
            }
        };
        let now = now_ms();
        let (outcome, condition, response, error) = match result {
            Ok((status, body)) => (
                Outcome::Succeeded {
                    status: Some(status),
                    result: Some(body.clone()),
                },
                Some(Condition::Success),
                Some(body),
                None,
            ),
            Err(e) if expired(&spec, inv.created_at, now) => (
                Outcome::DeadLetter { error: e.clone() },
                Some(Condition::EventAgeExceeded),
                None,
                Some(e),
            ),
            Err(e) => {
                tracing::debug!(invocation = %inv.id, "attempt {} failed: {e}", inv.attempts);
                let (o, c) = after_failure(&spec, inv.attempts, inv.created_at, now, e.clone());
                (o, c, None, Some(e))
            }
        };
        let then = condition.and_then(|c| {
            self.destination(&inv, &spec, c, response.as_deref(), error.as_deref(), now)
        });
        if let Err(e) = self
            .store
            .complete(&inv.id, &self.owner, outcome, then)
            .await
        {
            // The claim stays; the next start of this node delivers it again.
            tracing::error!(invocation = %inv.id, "cannot record the outcome: {e}");
        }
        self.track(&inv.function, -1);
        self.wake.notify_one();
    }

    /// Runs the invocation, waiting while the function has no capacity for it (its version's
    /// wait queue full, or its reserved concurrency reached: `[async] concurrency` may exceed
    /// what the instances take). Waiting is not an attempt: the claim already counted this one,
    /// and a full queue says nothing about the event. Bounded by the event's max age.
    async fn deliver(
        &self,
        inv: &Invocation,
        spec: &AsyncSpec,
    ) -> Result<crate::Response, stratus_core::PlatformError> {
        let mut pause = CAPACITY_PAUSE_MIN;
        loop {
            match self.try_invoke(inv).await {
                Ok(r) => return Ok(r),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::NoCapacity(e)) => {
                    if expired(spec, inv.created_at, now_ms() + pause.as_millis() as i64) {
                        return Err(e);
                    }
                    tracing::debug!(invocation = %inv.id, "waiting for capacity: {}", e.message);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(CAPACITY_PAUSE_MAX);
                }
            }
        }
    }

    /// The record for the function's destination of `condition`, as an invocation to enqueue.
    /// Destination deliveries have no destinations of their own, so records cannot loop.
    fn destination(
        &self,
        inv: &Invocation,
        spec: &AsyncSpec,
        condition: Condition,
        response: Option<&str>,
        error: Option<&str>,
        now: i64,
    ) -> Option<NewInvocation> {
        if inv.event_type == TYPE_DESTINATION || inv.webhook.is_some() {
            return None;
        }
        let dest = match condition {
            Condition::Success => spec.on_success.as_ref()?,
            _ => spec.on_failure.as_ref()?,
        };
        let record = destination_record(inv, condition, response, error, now);
        let (function, target, webhook) = match dest {
            Destination::Function(f) => match f.split_once('@') {
                Some((n, a)) => (n.to_string(), a.to_string(), None),
                None => (f.clone(), "latest".to_string(), None),
            },
            Destination::Webhook(url) => {
                (inv.function.clone(), inv.target.clone(), Some(url.clone()))
            }
        };
        Some(NewInvocation {
            // Unique per completion (a redriven invocation completes again), and the same if
            // the same completion were recorded twice.
            id: format!(
                "{}-{}-{}",
                inv.id,
                condition.as_str().to_ascii_lowercase(),
                inv.errors.len() + 1
            ),
            function,
            target,
            webhook,
            payload: record.to_string().into_bytes(),
            content_type: Some("application/json".into()),
            event_type: TYPE_DESTINATION.into(),
            source: format!("stratus/function/{}", inv.function),
            created_at: now,
            not_before: now,
            traceparent: inv.traceparent.clone(),
        })
    }

    async fn post_webhook(&self, url: &str, inv: &Invocation) -> Result<(u16, String), String> {
        let (traceparent, _) = crate::mapping::attempt_trace(inv);
        let mut req = crate::mapping::cloud_event(inv, &traceparent);
        *req.uri_mut() = url
            .parse()
            .map_err(|e| format!("bad webhook URL {url}: {e}"))?;
        req.headers_mut().remove("host");
        let call = async {
            let resp = self
                .webhooks
                .request(req)
                .await
                .map_err(|e| format!("webhook {url}: {e}"))?;
            let status = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if (200..300).contains(&status) {
                Ok((status, result_text(&body)))
            } else {
                Err(format!("webhook {url}: {}", failure_text(status, &body)))
            }
        };
        tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .unwrap_or_else(|_| Err(format!("webhook {url} did not answer within 30s")))
    }
}

/// Succeeded invocations are kept this long for `invoke status`; dead letters until redriven.
const KEEP_SUCCEEDED: Duration = Duration::from_secs(24 * 3600);

/// Claims and starts deliveries until the engine is dropped.
pub async fn run(engine: Arc<Engine>) {
    let mut pruned = std::time::Instant::now();
    loop {
        if pruned.elapsed() > Duration::from_secs(600) {
            pruned = std::time::Instant::now();
            let before = now_ms() - KEEP_SUCCEEDED.as_millis() as i64;
            if let Err(e) = engine.store.prune_invocations(before).await {
                tracing::warn!("pruning old invocations failed: {e}");
            }
        }
        let (total, exclude) = engine.saturated();
        let free = MAX_IN_FLIGHT.saturating_sub(total).min(BATCH);
        let mut claimed = 0;
        if free > 0 {
            match engine
                .store
                .claim_due(&engine.owner, now_ms(), free, &exclude)
                .await
            {
                Ok(batch) => {
                    claimed = batch.len() as u32;
                    for inv in batch {
                        engine.track(&inv.function, 1);
                        tokio::spawn(engine.clone().attempt(inv));
                    }
                }
                Err(e) => tracing::warn!("claiming async invocations failed: {e}"),
            }
        }
        if claimed == free && free > 0 {
            // A full batch: there may be more due right now.
            continue;
        }
        tokio::select! {
            _ = engine.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}
