use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stratus_core::{FunctionName, FunctionSpec, RuntimeKind, VersionNumber};
use stratus_runtime::Runtime;

use crate::pool::{InstancePool, PoolStatus};

pub type VersionKey = (FunctionName, VersionNumber);

#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// SIGTERM-to-SIGKILL grace when stopping an instance.
    pub stop_grace: Duration,
    /// How often idle instances are reaped and minimums restored.
    pub tick: Duration,
    /// How often instances with no request in flight are moved out of the serving CPU class
    /// (`InstancePool::yield_idle`); a divisor of `tick`.
    pub class_tick: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            stop_grace: Duration::from_secs(10),
            tick: Duration::from_millis(200),
            class_tick: crate::pool::YIELD_AFTER,
        }
    }
}

type Pools = HashMap<FunctionName, HashMap<VersionNumber, Arc<InstancePool>>>;

/// Every instance pool of this node, by function and version.
pub struct Fleet {
    runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    /// By name first, so the request path looks a pool up by `&str` without allocating.
    pools: Mutex<Pools>,
    routable: Mutex<HashSet<VersionKey>>,
    /// In-flight requests per function, over all its versions (reserved concurrency).
    in_flight: Mutex<HashMap<FunctionName, Arc<std::sync::atomic::AtomicU32>>>,
    config: FleetConfig,
}

impl Fleet {
    pub fn new(runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>, config: FleetConfig) -> Arc<Self> {
        Arc::new(Self {
            runtimes,
            pools: Mutex::new(HashMap::new()),
            routable: Mutex::new(HashSet::new()),
            in_flight: Mutex::new(HashMap::new()),
            config,
        })
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn all(&self) -> Vec<Arc<InstancePool>> {
        self.pools()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// The pool of a version, created on first use.
    pub fn pool(
        &self,
        spec: &FunctionSpec,
        version: VersionNumber,
        artifact: &str,
    ) -> Arc<InstancePool> {
        if let Some(p) = self
            .pools()
            .get(spec.name.as_str())
            .and_then(|m| m.get(&version))
        {
            return p.clone();
        }
        let runtime = self
            .runtimes
            .get(&spec.runtime)
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "no runtime registered for {:?}: the binary must wire every RuntimeKind",
                    spec.runtime
                )
            });
        let key = (spec.name.clone(), version);
        let routable = self
            .routable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key);
        let counter = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.0.clone())
            .or_default()
            .clone();
        let mut pools = self.pools();
        pools
            .entry(key.0)
            .or_default()
            .entry(version)
            .or_insert_with(|| {
                let p = InstancePool::new(
                    Arc::new(spec.clone()),
                    version,
                    artifact.to_string(),
                    runtime,
                    self.config.stop_grace,
                    counter,
                );
                p.set_routable(routable);
                p
            })
            .clone()
    }

    /// Prepares a version and starts one instance of it, so a deploy proves the version serves
    /// before any alias points at it. The instance stays, warm, for the first requests.
    pub async fn prove(
        &self,
        spec: &FunctionSpec,
        version: VersionNumber,
        artifact: &str,
    ) -> Result<(), String> {
        let pool = self.pool(spec, version, artifact);
        // An app's new version takes traffic only once its floor (`min`, or the provisioned
        // count in force) is ready: a rolling replacement, never a moment with less capacity
        // than the old version kept.
        let n = if spec.scaling.app {
            pool.floor_now().effective.max(1)
        } else {
            1
        };
        let starts: Vec<_> = (0..n)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.start_one().await })
            })
            .collect();
        let mut result = Ok(());
        for s in starts {
            let r = s
                .await
                .unwrap_or_else(|e| Err(format!("instance start panicked: {e}")));
            if result.is_ok() {
                result = r;
            }
        }
        if result.is_err() {
            self.retire(&spec.name, Some(version)).await;
        }
        result
    }

    /// Tells the fleet which versions aliases point at; only those keep their `min` instances.
    pub fn set_routable(&self, keys: HashSet<VersionKey>) {
        for (f, m) in self.pools().iter() {
            for (v, p) in m {
                p.set_routable(keys.contains(&(f.clone(), *v)));
            }
        }
        *self.routable.lock().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Drains and stops the pools of a function (one version, or all of them) and forgets them.
    pub async fn retire(&self, function: &FunctionName, version: Option<VersionNumber>) {
        let gone: Vec<_> = {
            let mut pools = self.pools();
            let Some(m) = pools.get_mut(function) else {
                return;
            };
            let out = match version {
                Some(v) => m.remove(&v).into_iter().collect(),
                None => m.drain().map(|(_, p)| p).collect(),
            };
            if m.is_empty() {
                pools.remove(function);
            }
            out
        };
        for p in gone {
            p.close().await;
        }
    }

    pub fn status(&self, function: &FunctionName) -> Vec<PoolStatus> {
        let mut out: Vec<_> = self
            .pools()
            .get(function)
            .map(|m| m.values().map(|p| p.status()).collect())
            .unwrap_or_default();
        out.sort_by_key(|s| s.version);
        out
    }

    /// Every pool's status with its function, for the metrics endpoint and `stratus top`.
    pub fn statuses(&self) -> Vec<(FunctionName, PoolStatus)> {
        let mut out: Vec<_> = self
            .pools()
            .iter()
            .flat_map(|(f, m)| m.values().map(move |p| (f.clone(), p.status())))
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.version).cmp(&(&b.0, b.1.version)));
        out
    }

    pub fn instance_count(&self) -> usize {
        self.all().iter().map(|p| p.instance_count()).sum()
    }

    /// Runs the scaling loop until the fleet is dropped.
    pub fn spawn_ticker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let fleet = Arc::downgrade(self);
        let every = self.config.class_tick.min(self.config.tick);
        let full_every = (self.config.tick.as_millis() / every.as_millis().max(1)).max(1) as u64;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                tick.tick().await;
                let Some(fleet) = fleet.upgrade() else { return };
                let full = n % full_every == 0;
                for p in fleet.all() {
                    if full {
                        p.tick();
                    }
                    p.yield_idle();
                }
            }
        })
    }

    /// Stops every instance, letting in-flight requests finish first.
    pub async fn shutdown(&self) {
        let all: Vec<_> = self
            .pools()
            .drain()
            .flat_map(|(_, m)| m.into_values())
            .collect();
        let handles: Vec<_> = all
            .into_iter()
            .map(|p| tokio::spawn(async move { p.close().await }))
            .collect();
        for h in handles {
            let _ = h.await;
        }
    }
}
