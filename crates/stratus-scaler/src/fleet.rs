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
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            stop_grace: Duration::from_secs(10),
            tick: Duration::from_millis(500),
        }
    }
}

/// Every instance pool of this node, by version.
pub struct Fleet {
    runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    pools: Mutex<HashMap<VersionKey, Arc<InstancePool>>>,
    routable: Mutex<HashSet<VersionKey>>,
    config: FleetConfig,
}

impl Fleet {
    pub fn new(runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>, config: FleetConfig) -> Arc<Self> {
        Arc::new(Self {
            runtimes,
            pools: Mutex::new(HashMap::new()),
            routable: Mutex::new(HashSet::new()),
            config,
        })
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<VersionKey, Arc<InstancePool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool of a version, created on first use.
    pub fn pool(
        &self,
        spec: &FunctionSpec,
        version: VersionNumber,
        artifact: &str,
    ) -> Arc<InstancePool> {
        let key = (spec.name.clone(), version);
        if let Some(p) = self.pools().get(&key) {
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
        let routable = self
            .routable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key);
        let mut pools = self.pools();
        pools
            .entry(key)
            .or_insert_with(|| {
                let p = InstancePool::new(
                    Arc::new(spec.clone()),
                    version,
                    artifact.to_string(),
                    runtime,
                    self.config.stop_grace,
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
        let result = pool.start_one().await;
        if result.is_err() {
            self.retire(&spec.name, Some(version)).await;
        }
        result
    }

    /// Tells the fleet which versions aliases point at; only those keep their `min` instances.
    pub fn set_routable(&self, keys: HashSet<VersionKey>) {
        for (k, p) in self.pools().iter() {
            p.set_routable(keys.contains(k));
        }
        *self.routable.lock().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Drains and stops the pools of a function (one version, or all of them) and forgets them.
    pub async fn retire(&self, function: &FunctionName, version: Option<VersionNumber>) {
        let gone: Vec<_> = {
            let mut pools = self.pools();
            let keys: Vec<_> = pools
                .keys()
                .filter(|(f, v)| f == function && version.is_none_or(|want| want == *v))
                .cloned()
                .collect();
            keys.into_iter().filter_map(|k| pools.remove(&k)).collect()
        };
        for p in gone {
            p.close().await;
        }
    }

    pub fn status(&self, function: &FunctionName) -> Vec<PoolStatus> {
        let mut out: Vec<_> = self
            .pools()
            .iter()
            .filter(|((f, _), _)| f == function)
            .map(|(_, p)| p.status())
            .collect();
        out.sort_by_key(|s| s.version);
        out
    }

    pub fn instance_count(&self) -> usize {
        self.pools().values().map(|p| p.instance_count()).sum()
    }

    /// Runs the scaling loop until the fleet is dropped.
    pub fn spawn_ticker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let fleet = Arc::downgrade(self);
        let every = self.config.tick;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(fleet) = fleet.upgrade() else { return };
                let pools: Vec<_> = fleet.pools().values().cloned().collect();
                for p in pools {
                    p.tick();
                }
            }
        })
    }

    /// Stops every instance, letting in-flight requests finish first.
    pub async fn shutdown(&self) {
        let all: Vec<_> = self.pools().drain().map(|(_, p)| p).collect();
        let handles: Vec<_> = all
            .into_iter()
            .map(|p| tokio::spawn(async move { p.close().await }))
            .collect();
        for h in handles {
            let _ = h.await;
        }
    }
}
