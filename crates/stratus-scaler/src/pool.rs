use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use stratus_core::{FunctionSpec, VersionNumber, now_ms};
use stratus_runtime::{CpuClass, ExitCause, Instance, InstanceHealth, PreparedVersion, Runtime};
use tokio::sync::{Notify, oneshot};

use crate::AcquireError;
use crate::autoscale::{
    AutoscaleInput, AutoscalerState, ResourceObservation, autoscale, starts_now,
};
use crate::decide::{Observation, ScaleDecision, decide, restart_backoff};
use crate::floor::{Floor, FloorSchedule, floor_at};
use crate::utilization::{ResourceRule, RuleOutcome, UsageHistory};

/// An instance lived less than this before exiting: count it as a crash loop step.
const CRASH_WINDOW: Duration = Duration::from_secs(10);
/// This many quick exits in a row are reported as a crash loop.
const CRASH_LOOP: u32 = 3;
/// An instance with no request in flight for this long (or never leased) leaves the serving
/// CPU class until its next lease: a function's is parked, an app's goes to the background
/// (`CpuClass`; see [`InstancePool::yield_idle`]).
pub(crate) const YIELD_AFTER: Duration = Duration::from_millis(25);

struct Slot {
    instance: Arc<dyn Instance>,
    in_flight: AtomicU32,
    draining: AtomicBool,
    started_at: i64,
    started: Instant,
    /// Milliseconds since `started` at which the last request finished.
    last_used_ms: AtomicU64,
    served: AtomicU64,
    /// How long the runtime took to start it (the cold-start cost of its first request).
    init: Duration,
    /// No request has been leased on it yet.
    fresh: AtomicBool,
    /// Its recent CPU and memory samples (`Instance::usage`).
    usage: Mutex<UsageHistory>,
    /// Its `CpuClass` as the pool last set it (`class_code`; changed under the pool lock, so
    /// that a lease's move back and the tick's move away cannot cross).
    class: AtomicU8,
}

impl Slot {
    fn idle_for(&self) -> Duration {
        let used = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(used)
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, UsageHistory> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn class_code(c: CpuClass) -> u8 {
    match c {
        CpuClass::Serving => 0,
        CpuClass::Background => 1,
        CpuClass::Parked => 2,
    }
}

/// Pools without CPU or memory rules sample their instances' use every this many ticks (once a
/// second), for `stratus info` only; pools with rules sample every tick.
const STATUS_SAMPLE_TICKS: u64 = 5;

#[derive(Default)]
struct PoolState {
    slots: Vec<Arc<Slot>>,
    starting: u32,
    waiting: u32,
    /// Requests waiting for a slot, oldest first. A freed slot is handed to the oldest waiter
    /// directly (FIFO, one wake per slot) instead of waking every waiter to race for it: with
    /// hundreds waiting that race cost more CPU than the instances starting for them, and its
    /// losers made the p99.
    queue: VecDeque<oneshot::Sender<Lease>>,
    failures: u32,
    backoff_until: Option<Instant>,
    /// Bumped at every failed start, with its reason, so waiters can fail fast.
    failure_epoch: u64,
    last_error: Option<String>,
    crashes: u64,
    oom_kills: u64,
    timeouts: u64,
    last_exit: Option<ExitReport>,
    starts: u64,
    auto: AutoscalerState,
    desired: u32,
    panic: bool,
    /// The warm floor, recomputed when its `valid_until` has passed.
    floor: Option<Floor>,
    /// What the CPU and memory rules want kept (the last tick's), and what they saw.
    hold: u32,
    rules: Vec<RuleOutcome>,
    ticks: u64,
    /// The last scaling decisions that changed the size, newest last.
    events: VecDeque<ScaleEvent>,
}

/// A scaling decision, for `stratus info`: when, from how many to how many, and why.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleEvent {
    pub at: i64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

const EVENTS_KEPT: usize = 10;

/// How the last instance that went away unexpectedly did so, for `stratus info`.
#[derive(Debug, Clone, Serialize)]
pub struct ExitReport {
    pub at: i64,
    pub instance: String,
    /// `crashed`, `out_of_memory`, `timeout` or `stopped`.
    pub reason: &'static str,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Consecutive quick exits (within 10 s of starting) including this one; 3 or more is a
    /// crash loop, and restarts back off.
    pub crash_loop: u32,
}

/// One in-flight request counted against the function's reserved concurrency.
struct FunctionPermit(Arc<AtomicU32>);

impl Drop for FunctionPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The instances of one version.
pub struct InstancePool {
    spec: Arc<FunctionSpec>,
    version: VersionNumber,
    artifact: String,
    runtime: Arc<dyn Runtime>,
    prepared: tokio::sync::Mutex<Option<PreparedVersion>>,
    state: Mutex<PoolState>,
    changed: Notify,
    routable: AtomicBool,
    closed: AtomicBool,
    /// In flight over every version of the function (shared by its pools).
    function_in_flight: Arc<AtomicU32>,
    created: Instant,
    stop_grace: Duration,
    floor_schedule: FloorSchedule,
    rules: Vec<ResourceRule>,
    /// A rule's resource was found unobservable and said so in the log.
    warned_unobservable: AtomicBool,
}

/// One concurrency slot of one instance. Dropping it frees the slot.
pub struct Lease {
    slot: Arc<Slot>,
    pool: Arc<InstancePool>,
    _function: Option<FunctionPermit>,
    cold_start: Option<Duration>,
    /// False when a slot was free as the request arrived (it did not queue).
    queued: bool,
    /// False for a lease whose slot was already passed on (its drop must not free it again).
    live: bool,
}

impl Lease {
    pub fn instance(&self) -> &Arc<dyn Instance> {
        &self.slot.instance
    }

    /// The instance's start time when this request waited for that instance to start (a cold
    /// start), for request records and metrics.
    pub fn cold_start(&self) -> Option<Duration> {
        self.cold_start
    }

    /// Whether the request queued for its slot (none was free when it arrived), so that traces
    /// show a queue span only for a wait that happened.
    pub fn queued(&self) -> bool {
        self.queued
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        let s = &self.slot;
        s.last_used_ms
            .store(s.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        s.served.fetch_add(1, Ordering::Relaxed);
        let draining = {
            // Under the lock: a request that found no free slot and queued can not miss this one.
            let mut st = self.pool.lock();
            let draining = s.draining.load(Ordering::Relaxed);
            if !draining && self.pool.hand_off(&mut st, s) {
                return;
            }
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            draining
        };
        if draining {
            // A drain waits for its instance's last request.
            self.pool.changed.notify_waiters();
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub id: String,
    pub state: &'static str,
    pub in_flight: u32,
    pub served: u64,
    pub started_at: i64,
    pub idle_ms: u64,
    /// Cores used, averaged over the last few seconds; absent where this node cannot count it
    /// (or the instance is too new for a rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// Working set (resident memory and active page cache) at the last sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// `serving`, `background` or `parked` (see `CpuClass`), read back from where it is enforced;
    /// absent where the runtime has no per-instance class (wasm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_class: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub version: VersionNumber,
    pub instances: Vec<InstanceStatus>,
    pub starting: u32,
    pub waiting: u32,
    pub starts: u64,
    pub crashes: u64,
    /// Instances the kernel killed for going over `limits.memory`.
    pub oom_kills: u64,
    /// Instances the platform killed because an invocation ran past `limits.timeout`.
    pub timeouts: u64,
    pub last_exit: Option<ExitReport>,
    pub last_error: Option<String>,
    /// What the autoscaler wants (ready + starting).
    pub desired: u32,
    pub panic: bool,
    pub scale_events: Vec<ScaleEvent>,
    /// Instances kept ready with no traffic, and where that number comes from.
    pub floor: Floor,
    /// The CPU and memory rules (`scaling.cpu_target`, `memory_target`): what each saw and
    /// wants at the last tick.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleOutcome>,
}

struct WaitGuard<'a>(&'a InstancePool);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl InstancePool {
    pub(crate) fn new(
        spec: Arc<FunctionSpec>,
        version: VersionNumber,
        artifact: String,
        runtime: Arc<dyn Runtime>,
        stop_grace: Duration,
        function_in_flight: Arc<AtomicU32>,
    ) -> Arc<Self> {
        let floor_schedule = FloorSchedule::new(&spec.scaling);
        let rules = ResourceRule::of(&spec);
        Arc::new(Self {
            floor_schedule,
            rules,
            warned_unobservable: AtomicBool::new(false),
            spec,
            version,
            artifact,
            runtime,
            prepared: tokio::sync::Mutex::new(None),
            state: Mutex::new(PoolState::default()),
            changed: Notify::new(),
            routable: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            function_in_flight,
            created: Instant::now(),
            stop_grace,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn spec(&self) -> &Arc<FunctionSpec> {
        &self.spec
    }

    pub fn version(&self) -> VersionNumber {
        self.version
    }

    pub(crate) fn set_routable(&self, r: bool) {
        self.routable.store(r, Ordering::Relaxed);
    }

    /// The least-loaded ready instance with a free slot, leased.
    fn try_lease(self: &Arc<Self>, st: &PoolState) -> Option<Lease> {
        let conc = self.spec.limits.concurrency;
        let slot = st
            .slots
            .iter()
            .filter(|s| !s.draining.load(Ordering::Relaxed))
            .map(|s| (s.in_flight.load(Ordering::Acquire), s))
            .filter(|(n, _)| *n < conc)
            .min_by_key(|(n, _)| *n)?
            .1;
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        // Serving again before the request reaches it (one cgroup write, only on a change).
        if slot.class.load(Ordering::Relaxed) != class_code(CpuClass::Serving) {
            slot.class
                .store(class_code(CpuClass::Serving), Ordering::Relaxed);
            slot.instance.set_cpu_class(CpuClass::Serving);
        }
        // Remember whether this is the instance's first request; only a request that waited
        // for the start counts it as a cold start (see `acquire_slot`).
        let first = slot.fresh.swap(false, Ordering::Relaxed);
        Some(Lease {
            slot: slot.clone(),
            pool: self.clone(),
            _function: None,
            cold_start: first.then_some(slot.init),
            queued: true,
            live: true,
        })
    }

    /// Passes `slot` (whose in-flight count already includes this request) to the oldest live
    /// waiter; false when nobody waits.
    fn hand_off(self: &Arc<Self>, st: &mut PoolState, slot: &Arc<Slot>) -> bool {
        while let Some(waiter) = st.queue.pop_front() {
            let lease = Lease {
                slot: slot.clone(),
                pool: self.clone(),
                _function: None,
                cold_start: None,
                queued: true,
                live: true,
            };
            match waiter.send(lease) {
                Ok(()) => return true,
                // That waiter gave up (timeout, client gone): the next one.
                Err(mut lease) => lease.live = false,
            }
        }
        false
    }

    /// Gives free slots to waiting requests, oldest first, until either runs out: called when
    /// an instance becomes ready and before a new request looks for a slot, so that a free slot
    /// and a live waiter never coexist. (Without the second call, a request that queued in the
    /// moment between a waiter being handed its slot and leaving the count stayed queued behind
    /// the free slot, and in a closed loop of clients every hand-off brought a new arrival into
    /// the queue: the slot stayed idle for good, and a burst's steady state ran at half speed.)
    fn serve_queue(self: &Arc<Self>, st: &mut PoolState) {
        while !st.queue.is_empty() {
            let Some(lease) = self.try_lease(st) else {
                return;
            };
            let mut left = Some(lease);
            while let Some(waiter) = st.queue.pop_front() {
                match waiter.send(left.take().expect("a lease to hand")) {
                    Ok(()) => break,
                    // That waiter gave up: the next one.
                    Err(lease) => left = Some(lease),
                }
            }
            if let Some(mut lease) = left {
                // Nobody took it: give the slot back as it was.
                lease.live = false;
                lease.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
                if lease.cold_start.is_some() {
                    lease.slot.fresh.store(true, Ordering::Relaxed);
                }
                return;
            }
        }
    }

    fn observe(&self, st: &PoolState) -> Observation {
        let live: Vec<_> = st
            .slots
            .iter()
            .filter(|s| !s.draining.load(Ordering::Relaxed))
            .collect();
        Observation {
            ready: live.len() as u32,
            starting: st.starting,
            in_flight: live
                .iter()
                .map(|s| s.in_flight.load(Ordering::Acquire))
                .sum(),
            waiting: st.waiting,
            concurrency: self.spec.limits.concurrency,
            idle: live
                .iter()
                .filter(|s| s.in_flight.load(Ordering::Acquire) == 0)
                .map(|s| (s.instance.id().to_string(), s.idle_for()))
                .collect(),
            routable: self.routable.load(Ordering::Relaxed),
            in_backoff: st.backoff_until.is_some_and(|t| Instant::now() < t),
            floor: st.floor.as_ref().map_or(0, |f| f.effective),
            hold: st.hold,
        }
    }

    /// The warm floor now; computed again only once the schedule's next fire has passed.
    pub fn floor_now(&self) -> Floor {
        let now = now_ms();
        let mut st = self.lock();
        match &st.floor {
            Some(f) if f.valid_until().is_none_or(|t| now < t) => f.clone(),
            _ => {
                let f = floor_at(&self.spec.scaling, &self.floor_schedule, now);
                st.floor = Some(f.clone());
                f
            }
        }
    }

    /// Moves instances that serve nothing to their idle CPU class, on the fleet's class tick
    /// (every [`YIELD_AFTER`]): never leased, or no request in flight for [`YIELD_AFTER`]. A
    /// function's instance is parked (frozen), as Function Compute and Lambda freeze one
    /// between requests; an app's (always on, and free to work between requests) goes to the
    /// background. Priority alone was not enough: a spinner at `cpu.idle` with its 0.5 cores,
    /// called 4 times a second, still doubled a loaded neighbour's p99 on 2 cores
    /// (BENCHMARKS.md). A function under steady load always has a request in flight and never
    /// moves; one called now and then is parked and thawed once per call. Under the pool lock
    /// (see `Slot::class`).
    pub(crate) fn yield_idle(&self) {
        let class = if self.spec.scaling.app {
            CpuClass::Background
        } else {
            CpuClass::Parked
        };
        let st = self.lock();
        for s in &st.slots {
            if s.class.load(Ordering::Relaxed) == class_code(class)
                || s.in_flight.load(Ordering::Acquire) > 0
                || !(s.fresh.load(Ordering::Relaxed) || s.idle_for() >= YIELD_AFTER)
            {
                continue;
            }
            if s.instance.set_cpu_class(class) {
                s.class.store(class_code(class), Ordering::Relaxed);
            }
        }
    }

    /// Samples every live instance's CPU and memory use (outside the pool lock: the runtime
    /// reads its cgroup's counters).
    fn sample_usage(&self, now_ms: u64) {
        let slots: Vec<_> = {
            let mut st = self.lock();
            st.ticks += 1;
            if self.rules.is_empty() && st.ticks % STATUS_SAMPLE_TICKS != 1 {
                return;
            }
            st.slots
                .iter()
                .filter(|s| !s.draining.load(Ordering::Relaxed))
                .cloned()
                .collect()
        };
        for s in slots {
            if let Some(u) = s.instance.usage() {
                s.usage().record(now_ms, u);
            }
        }
    }

    /// Each rule with the utilisation of every live instance that reports it; a rule that no
    /// instance reports on this node is said once in the log.
    fn resource_observations(&self, st: &PoolState) -> Vec<ResourceObservation> {
        let live: Vec<_> = st
            .slots
            .iter()
            .filter(|s| !s.draining.load(Ordering::Relaxed))
            .collect();
        self.rules
            .iter()
            .map(|rule| {
                let utilization: Vec<f64> = live
                    .iter()
                    .filter_map(|s| rule.utilization(&s.usage()))
                    .collect();
                let settled = live.iter().filter(|s| s.usage().settled()).count();
                let never = live
                    .iter()
                    .all(|s| s.usage().used(rule.resource).is_none());
                if settled > 0
                    && never
                    && !self.warned_unobservable.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(function = %self.spec.name, version = %self.version, "scaling.{0}_target cannot act: this node does not observe the instances' {0} use (see `stratus info`: limits, usage)", rule.resource.as_str());
                }
                ResourceObservation {
                    rule: *rule,
                    utilization,
                }
            })
            .collect()
    }

    /// Waits for a free slot until `deadline`, starting instances as the policy allows.
    pub async fn acquire(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Result<Lease, AcquireError> {
        let permit = self.admit()?;
        let mut lease = self.acquire_slot(deadline).await?;
        lease._function = permit;
        Ok(lease)
    }

    /// Counts the request against the function's reserved concurrency, if it has one.
    fn admit(&self) -> Result<Option<FunctionPermit>, AcquireError> {
        let Some(cap) = self.spec.scaling.reserved_concurrency else {
            return Ok(None);
        };
        let before = self.function_in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = FunctionPermit(self.function_in_flight.clone());
        if before >= cap {
            return Err(AcquireError::Throttled(format!(
                "`{}` is at its reserved concurrency of {cap} requests in flight",
                self.spec.name
            )));
        }
        Ok(Some(permit))
    }

    async fn acquire_slot(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Result<Lease, AcquireError> {
        let (epoch_at_start, mut handed) = {
            let mut st = self.lock();
            // Requests already waiting go first; then the fast path, a free slot. An instance
            // started ahead of demand (at deploy, for `min`) was not waited for: a warm request.
            self.serve_queue(&mut st);
            if st.queue.is_empty()
                && let Some(mut lease) = self.try_lease(&st)
            {
                lease.cold_start = None;
                lease.queued = false;
                return Ok(lease);
            }
            // A bounded queue: past it, shed load now rather than pile requests up.
            if st.waiting >= self.spec.scaling.max_queue {
                return Err(AcquireError::QueueFull(format!(
                    "{} requests already wait for `{}` version {} (scaling.max_queue)",
                    st.waiting, self.spec.name, self.version
                )));
            }
            st.waiting += 1;
            // Waiters that gave up stay queued until a slot passes them; with no slot freeing
            // (a hung instance) they would pile up past `max_queue`.
            if st.queue.len() > 2 * (st.waiting as usize) + 16 {
                st.queue.retain(|w| !w.is_closed());
            }
            let (tx, rx) = oneshot::channel();
            st.queue.push_back(tx);
            (st.failure_epoch, rx)
        };
        let _guard = WaitGuard(self);
        loop {
            // A slot handed over wins over any failure seen since.
            if let Ok(lease) = handed.try_recv() {
                return Ok(lease);
            }
            if self.closed.load(Ordering::Relaxed) {
                return Err(AcquireError::ShuttingDown);
            }
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let decision = {
                let st = self.lock();
                let live = st.slots.iter().any(|s| !s.draining.load(Ordering::Relaxed));
                if st.failure_epoch != epoch_at_start && st.starting == 0 && !live {
                    let why = st
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "the instance failed to start".into());
                    return Err(AcquireError::StartFailed(why));
                }
                let obs = self.observe(&st);
                ScaleDecision {
                    start: decide(&obs, &self.spec.scaling).start,
                    stop: vec![],
                }
            };
            self.apply(decision);
            let backoff = self.lock().backoff_until;
            let wake = match backoff {
                Some(t) if t > Instant::now() => tokio::time::Instant::from_std(t).min(deadline),
                _ => deadline,
            };
            tokio::select! {
                lease = &mut handed => match lease {
                    Ok(lease) => return Ok(lease),
                    // The queue was dropped: the pool closed.
                    Err(_) => return Err(AcquireError::ShuttingDown),
                },
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        if let Ok(lease) = handed.try_recv() {
                            return Ok(lease);
                        }
                        return Err(AcquireError::Timeout);
                    }
                }
            }
        }
    }

    /// Applies a decision: starts in the background, drains and stops idle instances.
    pub(crate) fn apply(self: &Arc<Self>, d: ScaleDecision) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if d.start > 0 {
            // A start that requests wait for serves them; one ahead of demand (the floor, a
            // crash loop's restart, headroom) starts in the background class, so that it does
            // not slow the instances that serve (a burst's slow seconds were 29 node processes
            // starting beside the 20 serving). So does a version's restart in a crash loop, even
            // with requests waiting: a function that keeps dying does not get to take CPU from
            // the node's healthy ones each time it starts again.
            let class = {
                let mut st = self.lock();
                st.starting += d.start;
                if st.waiting > 0 && st.failures < CRASH_LOOP {
                    CpuClass::Serving
                } else {
                    CpuClass::Background
                }
            };
            for _ in 0..d.start {
                let pool = self.clone();
                tokio::spawn(async move {
                    let _ = pool.start_one_counted(class).await;
                });
            }
        }
        for id in d.stop {
            let slot = {
                let st = self.lock();
                let s = st.slots.iter().find(|s| s.instance.id() == id).cloned();
                // Marked under the lock, so no lease can be taken after the idle check.
                match s {
                    Some(s) if s.in_flight.load(Ordering::Acquire) == 0 => {
                        s.draining.store(true, Ordering::Relaxed);
                        Some(s)
                    }
                    _ => None,
                }
            };
            if let Some(slot) = slot {
                let pool = self.clone();
                tokio::spawn(async move { pool.drain_and_stop(slot, Duration::ZERO).await });
            }
        }
    }

    /// One scheduling pass: the ticker's entry point.
    pub(crate) fn tick(self: &Arc<Self>) {
        let now = self.created.elapsed().as_millis() as u64;
        let floor = self.floor_now();
        self.sample_usage(now);
        let (d, drain) = {
            let mut st = self.lock();
            let mut obs = self.observe(&st);
            let current = obs.ready + obs.starting;
            let resources = self.resource_observations(&st);
            let floor_why = floor.describe();
            let a = autoscale(
                &mut st.auto,
                AutoscaleInput {
                    now_ms: now,
                    demand: obs.in_flight + obs.waiting,
                    current,
                    concurrency: obs.concurrency,
                    scaling: &self.spec.scaling,
                    routable: obs.routable,
                    floor: floor.effective,
                    floor_why: &floor_why,
                    resources: &resources,
                },
            );
            st.hold = a.resource_desired;
            obs.hold = a.resource_desired;
            let mut d = decide(&obs, &self.spec.scaling);
            d.start = starts_now(
                d.start,
                a.desired,
                obs.ready,
                obs.starting,
                obs.in_flight + obs.waiting,
                obs.in_backoff,
                a.resource_desired,
            );
            // Busy instances beyond the desired size drain (finishing what they serve).
            let mut drain = Vec::new();
            if a.may_scale_down && obs.starting == 0 {
                let surplus = obs
                    .ready
                    .saturating_sub(a.desired)
                    .saturating_sub(d.stop.len() as u32);
                let mut live: Vec<_> = st
                    .slots
                    .iter()
                    .filter(|s| {
                        !s.draining.load(Ordering::Relaxed)
                            && !d.stop.iter().any(|id| id == s.instance.id())
                    })
                    .cloned()
                    .collect();
                live.sort_by_key(|s| s.in_flight.load(Ordering::Relaxed));
                for s in live.into_iter().take(surplus as usize) {
                    s.draining.store(true, Ordering::Relaxed);
                    drain.push(s);
                }
            }
            let to = (current + d.start).saturating_sub((d.stop.len() + drain.len()) as u32);
            if to != current {
                let reason = if d.start > 0 && obs.waiting > 0 && !a.panic {
                    format!("{} requests waiting for a slot", obs.waiting)
                } else if !d.stop.is_empty() && drain.is_empty() {
                    format!("{} idle past idle_timeout", d.stop.len())
                } else {
                    a.reason.clone()
                };
                if st.events.len() == EVENTS_KEPT {
                    st.events.pop_front();
                }
                st.events.push_back(ScaleEvent {
                    at: now_ms(),
                    from: current,
                    to,
                    reason,
                });
            }
            st.desired = a.desired;
            st.panic = a.panic;
            st.rules = a.rules;
            (d, drain)
        };
        self.apply(d);
        let wait = self.spec.limits.timeout;
        for slot in drain {
            let pool = self.clone();
            tokio::spawn(async move { pool.drain_and_stop(slot, wait).await });
        }
    }

    async fn prepared(&self) -> Result<PreparedVersion, String> {
        let mut p = self.prepared.lock().await;
        if let Some(p) = &*p {
            return Ok(p.clone());
        }
        let prepared = self
            .runtime
            .prepare(self.spec.clone(), self.version, &self.artifact)
            .await
            .map_err(|e| e.to_string())?;
        *p = Some(prepared.clone());
        Ok(prepared)
    }

    /// Starts one instance now and waits for it (deploy uses this to prove a version works).
    pub async fn start_one(self: &Arc<Self>) -> Result<(), String> {
        self.lock().starting += 1;
        self.start_one_counted(CpuClass::Serving).await
    }

    /// Starts one instance for which `starting` was already counted.
    async fn start_one_counted(self: &Arc<Self>, class: CpuClass) -> Result<(), String> {
        let id = format!(
            "{}-v{}-{}",
            self.spec.name,
            self.version,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let begun = Instant::now();
        let result = match self.prepared().await {
            Ok(p) => self
                .runtime
                .start_as(&p, &id, class)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let out = match result {
            Ok(instance) => {
                // Read back: a runtime without classes started it as it starts any.
                let started_as = instance.cpu_class().unwrap_or(CpuClass::Serving);
                let slot = Arc::new(Slot {
                    instance,
                    in_flight: AtomicU32::new(0),
                    draining: AtomicBool::new(false),
                    started_at: now_ms(),
                    started: Instant::now(),
                    last_used_ms: AtomicU64::new(0),
                    served: AtomicU64::new(0),
                    init: begun.elapsed(),
                    fresh: AtomicBool::new(true),
                    usage: Mutex::new(UsageHistory::default()),
                    class: AtomicU8::new(class_code(started_as)),
                });
                {
                    let mut st = self.lock();
                    st.starting -= 1;
                    st.starts += 1;
                    if self.closed.load(Ordering::Relaxed) {
                        slot.draining.store(true, Ordering::Relaxed);
                    }
                    st.slots.push(slot.clone());
                    self.serve_queue(&mut st);
                }
                self.watch_exit(slot);
                Ok(())
            }
            Err(why) => {
                tracing::warn!(function = %self.spec.name, version = %self.version, "instance start failed: {why}");
                let mut st = self.lock();
                st.starting -= 1;
                st.failures += 1;
                st.backoff_until = Some(Instant::now() + restart_backoff(st.failures));
                st.failure_epoch += 1;
                st.last_error = Some(why.clone());
                Err(why)
            }
        };
        self.changed.notify_waiters();
        out
    }

    /// Removes an instance from the pool when it exits by itself, and backs off restarts when it
    /// did so soon after starting.
    fn watch_exit(self: &Arc<Self>, slot: Arc<Slot>) {
        let pool = Arc::downgrade(self);
        let mut health = slot.instance.health();
        tokio::spawn(async move {
            loop {
                if let InstanceHealth::Exited { .. } = *health.borrow_and_update() {
                    break;
                }
                if health.changed().await.is_err() {
                    break;
                }
            }
            let Some(pool) = pool.upgrade() else { return };
            let draining = slot.draining.load(Ordering::Relaxed);
            let (code, signal, cause) = match *slot.instance.health().borrow() {
                InstanceHealth::Exited {
                    code,
                    signal,
                    cause,
                } => (code, signal, cause),
                InstanceHealth::Running => (None, None, ExitCause::Crashed),
            };
            // A timeout kill or a stop is the platform's doing: replace the instance, but do
            // not count it as a crash or back off restarts for it.
            let crash = !draining && matches!(cause, ExitCause::Crashed | ExitCause::OutOfMemory);
            let unexpected = !draining && cause != ExitCause::Stopped;
            {
                let mut st = pool.lock();
                st.slots.retain(|s| !Arc::ptr_eq(s, &slot));
                match cause {
                    ExitCause::OutOfMemory => st.oom_kills += 1,
                    ExitCause::Timeout => st.timeouts += 1,
                    _ => {}
                }
                if crash {
                    st.crashes += 1;
                    if slot.started.elapsed() < CRASH_WINDOW {
                        st.failures += 1;
                    } else {
                        st.failures = 1;
                    }
                    let backoff = restart_backoff(st.failures);
                    st.backoff_until = Some(Instant::now() + backoff);
                    let what = match cause {
                        ExitCause::OutOfMemory => format!(
                            "killed: out of memory (limit {} MiB)",
                            pool.spec.limits.memory_bytes.unwrap_or(0) / (1024 * 1024)
                        ),
                        _ => match (code, signal) {
                            (Some(c), _) => format!("exited with code {c}"),
                            (_, Some(s)) => format!("killed by signal {s}"),
                            _ => "exited".into(),
                        },
                    };
                    let mut why = format!("instance {} {what}", slot.instance.id());
                    if st.failures >= CRASH_LOOP {
                        why.push_str(&format!(
                            "; crash loop: {} exits within {}s of starting, next start in {}ms",
                            st.failures,
                            CRASH_WINDOW.as_secs(),
                            backoff.as_millis()
                        ));
                    }
                    st.last_error = Some(why);
                }
                if unexpected {
                    st.last_exit = Some(ExitReport {
                        at: now_ms(),
                        instance: slot.instance.id().to_string(),
                        reason: cause.as_str(),
                        code,
                        signal,
                        crash_loop: if crash { st.failures } else { 0 },
                    });
                }
            }
            if !draining {
                if crash {
                    tracing::warn!(function = %pool.spec.name, version = %pool.version, instance = slot.instance.id(), reason = cause.as_str(), "instance exited unexpectedly");
                }
                // Make sure any process it left behind goes too, then let the policy restart.
                slot.instance.stop(Duration::ZERO).await;
                pool.changed.notify_waiters();
                pool.tick();
            }
        });
    }

    async fn drain_and_stop(self: Arc<Self>, slot: Arc<Slot>, wait: Duration) {
        let deadline = Instant::now() + wait;
        while slot.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            let notified = self.changed.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        slot.instance.stop(self.stop_grace).await;
        self.lock().slots.retain(|s| !Arc::ptr_eq(s, &slot));
    }

    /// Stops taking requests, lets in-flight ones finish (up to the version's timeout), stops every
    /// instance.
    pub async fn close(self: &Arc<Self>) {
        self.closed.store(true, Ordering::Relaxed);
        let slots: Vec<_> = {
            let mut st = self.lock();
            st.queue.clear();
            st.slots
                .iter()
                .inspect(|s| s.draining.store(true, Ordering::Relaxed))
                .cloned()
                .collect()
        };
        self.changed.notify_waiters();
        let wait = self.spec.limits.timeout;
        let stops = slots
            .into_iter()
            .map(|s| self.clone().drain_and_stop(s, wait));
        futures_join_all(stops).await;
    }

    pub fn status(&self) -> PoolStatus {
        let floor = self.floor_now();
        let st = self.lock();
        let instances: Vec<Arc<dyn Instance>> =
            st.slots.iter().map(|s| s.instance.clone()).collect();
        let mut status = PoolStatus {
            version: self.version,
            instances: st
                .slots
                .iter()
                .map(|s| {
                    let (cpu_cores, memory_bytes) = {
                        let u = s.usage();
                        (u.cpu_cores(), u.memory_bytes())
                    };
                    InstanceStatus {
                        id: s.instance.id().to_string(),
                        state: if s.draining.load(Ordering::Relaxed) {
                            "draining"
                        } else {
                            "ready"
                        },
                        in_flight: s.in_flight.load(Ordering::Relaxed),
                        served: s.served.load(Ordering::Relaxed),
                        started_at: s.started_at,
                        idle_ms: s.idle_for().as_millis() as u64,
                        cpu_cores,
                        memory_bytes,
                        // Read back after the lock is released (cgroup files).
                        cpu_class: None,
                    }
                })
                .collect(),
            starting: st.starting,
            waiting: st.waiting,
            starts: st.starts,
            crashes: st.crashes,
            oom_kills: st.oom_kills,
            timeouts: st.timeouts,
            last_exit: st.last_exit.clone(),
            last_error: st.last_error.clone(),
            desired: st.desired,
            panic: st.panic,
            scale_events: st.events.iter().cloned().collect(),
            floor,
            rules: st.rules.clone(),
        };
        drop(st);
        for (i, inst) in status.instances.iter_mut().zip(&instances) {
            i.cpu_class = inst.cpu_class().map(CpuClass::as_str);
        }
        status
    }

    pub fn instance_count(&self) -> usize {
        self.lock().slots.len()
    }
}

async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}
