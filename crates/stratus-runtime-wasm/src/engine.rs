//! The one wasmtime `Engine` every wasm function shares, and the epoch clock that bounds how
//! long a guest may run.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of wall-clock deadlines, and how long a guest
/// computes before it yields its thread back to the executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Use the pooling allocator (falls back to on-demand when it cannot reserve its memory).
    pub pooling: bool,
    /// Component instances alive at once across all functions: requests in flight. Only the
    /// pooling allocator bounds it; past it a request gets 503.
    pub max_instances: u32,
    /// Threads of the guest runtime ([`GuestThreads`]), where a guest that computes through an
    /// epoch tick is moved; 0 keeps every guest on the caller's runtime (the gateway's), where
    /// busy guests delay others' I/O.
    pub guest_threads: usize,
}

/// Overrides [`EngineOptions::guest_threads`] (a tuning knob for benchmarks and small hosts).
pub const GUEST_THREADS_ENV: &str = "STRATUS_WASM_GUEST_THREADS";

impl Default for EngineOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            pooling: true,
            max_instances: 1000,
            guest_threads: std::env::var(GUEST_THREADS_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(cores),
        }
    }
}

/// The engine and what it was built with.
pub struct Built {
    pub engine: Engine,
    pub pooling: bool,
    /// Why pooling is off, when it was asked for.
    pub fallback: Option<String>,
}

fn base_config() -> Config {
    let mut c = Config::new();
    // Epoch checks are a load and a compare at loop headers and function entries: much cheaper
    // than fuel, and enough for a wall-clock deadline.
    c.epoch_interruption(true);
    // Linear memories start as copy-on-write mappings of the compiled image, so instantiating a
    // large guest (componentize-js, -py) does not copy its heap.
    c.memory_init_cow(true);
    c
}

/// Bytes of a linear memory restored in place, not decommitted, when its slot is freed: a small
/// guest's whole working set (larger guests have the rest decommitted as before).
const KEEP_RESIDENT_MEMORY: usize = 1 << 20;
/// The same for each table (a small guest's funcref tables fit).
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

fn pooling_config(max_instances: u32) -> PoolingAllocationConfig {
    let n = max_instances.max(1);
    let mut p = PoolingAllocationConfig::default();
    // Interpreter-based guests (componentize-js, componentize-py) are made of several core
    // instances, each with its memory and tables, so the core pools are larger than the
    // component pool.
    p.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(stratus_core::Limits::WASM_MAX_MEMORY_BYTES as usize)
        // Python's and JavaScript's runtimes keep big vmctx and tables.
        .max_core_instance_size(4 << 20)
        .max_component_instance_size(4 << 20)
        .max_tables_per_module(8)
        .table_elements(100_000)
        // A slot is reset after every request. By default that is an `madvise(DONTNEED)` of
        // everything the guest touched, and the next request on the slot page-faults it all
        // back in (with TLB shoot-downs across the gateway's threads): the largest cost of a
        // small guest's request. Instead the pages it dirtied, found with Linux's PAGEMAP_SCAN
        // (6.7+, `Auto` falls back to the plain `memset` of the low bytes elsewhere), are
        // restored in place up to these sizes, and only what lies beyond is decommitted. This
        // keeps at most this much resident per warm slot (`max_unused_warm_slots`, 100 by
        // default), in place of the page faults.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_TABLE);
    p
}

/// Builds the engine, with the pooling allocator when asked and when the host lets it reserve
/// its address space (it maps every slot up front; a low `ulimit -v` or a 32-bit host can't).
pub fn build(opts: &EngineOptions) -> Result<Built, wasmtime::Error> {
    if opts.pooling {
        let mut c = base_config();
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
            opts.max_instances,
        )));
        match Engine::new(&c) {
            Ok(engine) => {
                return Ok(Built {
                    engine,
                    pooling: true,
                    fallback: None,
                });
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(
                    "wasm: the pooling allocator is unavailable ({why}); allocating instances on demand"
                );
                let engine = Engine::new(&base_config())?;
                return Ok(Built {
                    engine,
                    pooling: false,
                    fallback: Some(why),
                });
            }
        }
    }
    Ok(Built {
        engine: Engine::new(&base_config())?,
        pooling: false,
        fallback: None,
    })
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a thread of its own (the executor's
/// threads may all be busy running guests), until the engine is dropped.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch thread");
}

/// Identifies what compiled code is valid for: wasmtime's version and every setting that
/// changes the machine code. Part of the compiled cache's key, so an upgrade or a config change
/// compiles again instead of loading stale code.
pub fn fingerprint(engine: &Engine) -> String {
    // FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The threads busy guests run on, apart from the gateway's: a guest computing between epoch
/// ticks holds its thread for up to [`EPOCH_TICK`], and on the gateway's own threads a few busy
/// guests would delay every other request's I/O by that much per step. On threads of their own
/// the OS shares the cores, and the gateway's threads, mostly idle, get them when they wake. A
/// request starts on the gateway's thread, though, and is moved here only once it computed
/// through a tick: most answer well within one, and a thread hop each way (two wake-ups of
/// another thread) was a large part of a small request's cost.
pub struct GuestThreads {
    rt: Option<tokio::runtime::Runtime>,
    moved: Arc<AtomicU64>,
}

/// Where busy guests are moved, and how many were.
#[derive(Clone)]
pub struct GuestHandle {
    pub runtime: tokio::runtime::Handle,
    pub moved: Arc<AtomicU64>,
}

impl GuestThreads {
    /// `threads == 0`: no runtime of its own; guests run wherever `handle` is called.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let moved = Arc::default();
        if threads == 0 {
            return Ok(Self { rt: None, moved });
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wasm-guest")
            .enable_all()
            .build()?;
        Ok(Self {
            rt: Some(rt),
            moved,
        })
    }

    /// Where a busy guest is moved to; `None`: guests stay on the runtime they started on.
    pub fn handle(&self) -> Option<GuestHandle> {
        self.rt.as_ref().map(|rt| GuestHandle {
            runtime: rt.handle().clone(),
            moved: self.moved.clone(),
        })
    }

    /// Requests whose guest was moved to these threads since the start.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which is not allowed from async code; the
        // runtime is usually dropped there (server shutdown, tests).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
