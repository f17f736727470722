//! From a request's host and path to the version that serves it.
//!
//! [`RoutingTable`] is built from a [`RoutingSnapshot`] of the store and is immutable; lookups
//! are plain functions over it (no I/O, no locks). [`Router`] holds the current table behind an
//! `ArcSwap` and swaps in a new one whenever the store's change feed moves, so the request path
//! reads routing state with one atomic load.
#![forbid(unsafe_code)]

mod policy;
mod table;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use stratus_store::Metastore;
use tokio::sync::watch;

pub use policy::{CompiledPolicy, NoRequest, RequestView};
pub use table::{
    Resolved, RouteError, RoutingTable, ShadowTarget, conflicting_route, parse_fn_path,
};

pub struct Router {
    table: ArcSwap<RoutingTable>,
    loaded: watch::Sender<u64>,
}

impl Router {
    pub fn new(table: RoutingTable) -> Arc<Self> {
        let generation = table.generation;
        Arc::new(Self {
            table: ArcSwap::from_pointee(table),
            loaded: watch::channel(generation).0,
        })
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    pub fn install(&self, table: RoutingTable) {
        let g = table.generation;
        self.table.store(Arc::new(table));
        self.loaded.send_modify(|old| *old = (*old).max(g));
    }

    /// Loads the current state of the store.
    pub async fn refresh(&self, store: &dyn Metastore) -> Result<(), stratus_store::StoreError> {
        let snap = store.routing_snapshot().await?;
        self.install(RoutingTable::build(snap));
        Ok(())
    }

    /// Waits until a table at least as new as `generation` is serving (bounded by `timeout`), so
    /// the API answers a change only once requests see it.
    pub async fn wait_for(&self, generation: u64, timeout: Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|g| *g >= generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Follows the store's change feed, rebuilding the table after every change. `on_change` sees
    /// each new table (the binary uses it to tell the fleet which versions are routable).
    pub fn follow(
        self: &Arc<Self>,
        store: Arc<dyn Metastore>,
        on_change: impl Fn(&RoutingTable) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let router = self.clone();
        let mut changes = store.changes();
        tokio::spawn(async move {
            loop {
                changes.borrow_and_update();
                match router.refresh(&*store).await {
                    Ok(()) => on_change(&router.table()),
                    Err(e) => {
                        tracing::error!("cannot rebuild the routing table: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}
