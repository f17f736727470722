//! The wasm runtime: a function is a WebAssembly component exporting
//! `wasi:http/incoming-handler` (WASI 0.2, the contract of `wasmtime serve` and Spin), run on
//! wasmtime with `wasmtime-wasi-http`.
//!
//! - **Compile once per component.** [`Runtime::prepare`] validates and compiles the component
//!   on the blocking pool and writes the machine code to a cache directory, keyed by the sha256
//!   of the component's bytes and the engine's compatibility hash, so the same component
//!   deployed as 10,000 functions is compiled once. [`Runtime::start`] maps that file
//!   (`Component::deserialize_file`) and links it (`ProxyPre`) once per component, shared by
//!   every function and version using it, so a restart or a scale-from-zero never runs the
//!   compiler.
//! - **An instance per request.** The scaler's "instance" is the loaded component; each request
//!   gets a fresh `Store` and component instance, with the function's env, its stdout/stderr
//!   going to the logs, its outbound HTTP checked against `allowed_outbound_hosts`, its memory
//!   capped by a limiter, and a wall-clock deadline enforced by epoch interruption.
//! - **Little idle in memory.** Loaded components are shared through weak references, and the
//!   [`RESIDENT`] most recently started ones are also held, so a scale-from-zero of a recently
//!   used component only instantiates (no file mapping, no linking); a component used by no
//!   instance and not among those is unmapped until its next start.
//!
//! This is the only crate that names wasmtime.
// `deny` rather than `forbid`: loading cached machine code (`Component::deserialize_file`) is
// `unsafe` in wasmtime's API, and `compile::load_cached` is the one place allowed to call it.
#![deny(unsafe_code)]

mod compile;
mod engine;
mod host;
mod instance;
mod output;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use async_trait::async_trait;
use stratus_core::{FunctionSpec, VersionNumber, now_ms};
use stratus_runtime::{CodeCache, Instance, LogSink, PreparedVersion, Runtime, RuntimeError};
use stratus_store::{LogLine, LogStream};
use wasmtime::Engine;
use wasmtime::component::Linker;

pub use compile::{CompileError, HANDLER};
pub use engine::{EPOCH_TICK, EngineOptions, GUEST_THREADS_ENV};
pub use instance::WasmInstance;

use crate::compile::Loaded;
use crate::host::Host;

pub struct WasmConfig {
    /// Where compiled components are kept (under the data dir, so restarts reuse them).
    pub cache_dir: PathBuf,
    pub engine: EngineOptions,
}

pub struct WasmRuntime {
    engine: Engine,
    guests: engine::GuestThreads,
    linker: Arc<Linker<Host>>,
    code: Arc<CodeCache>,
    logs: Arc<dyn LogSink>,
    cache_dir: PathBuf,
    fingerprint: String,
    pooling: bool,
    /// Loaded components by compiled file, shared by the instances of every version using the
    /// component while any lives.
    loaded: Mutex<HashMap<PathBuf, Weak<Loaded>>>,
    /// The most recently started components, most recent last, kept loaded while idle.
    resident: Mutex<VecDeque<Arc<Loaded>>>,
    resident_max: usize,
    /// The compiled file of each component file in a version folder (folders are immutable,
    /// named by their artifact's digest), so its bytes are hashed once per process.
    keys: Mutex<HashMap<PathBuf, PathBuf>>,
    /// One compile per cache file at a time.
    compiling: tokio::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl WasmRuntime {
    pub fn new(
        code: Arc<CodeCache>,
        logs: Arc<dyn LogSink>,
        config: WasmConfig,
    ) -> Result<Self, RuntimeError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            RuntimeError::PrepareFailed(format!("wasm runtime: {what}: {e}"))
        };
        let built = engine::build(&config.engine).map_err(|e| fail("engine", &e))?;
        let engine = built.engine;
        engine::start_epoch_ticker(&engine);
        let mut linker = Linker::new(&engine);
        // All of WASI 0.2 (env, clocks, random, stdio; files and sockets are given nothing) and
        // wasi:http: components built for `wasmtime serve` or Spin import a subset of these.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| fail("linker", &e))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| fail("linker", &e))?;
        std::fs::create_dir_all(&config.cache_dir).map_err(|e| fail("cache dir", &e))?;
        let fingerprint = engine::fingerprint(&engine);
        let allocator = match (&built.fallback, built.pooling) {
            (_, true) => "pooling allocator".to_string(),
            (Some(why), false) => format!("on-demand allocation (pooling unavailable: {why})"),
            (None, false) => "on-demand allocation".to_string(),
        };
        tracing::info!(
            "wasm runtime: wasmtime 48, {allocator}, {} guest threads, compiled code in {}",
            config.engine.guest_threads,
            config.cache_dir.display()
        );
        let guests = engine::GuestThreads::start(config.engine.guest_threads)
            .map_err(|e| fail("guest threads", &e))?;
        Ok(Self {
            engine,
            guests,
            linker: Arc::new(linker),
            code,
            logs,
            cache_dir: config.cache_dir,
            fingerprint,
            pooling: built.pooling,
            loaded: Mutex::new(HashMap::new()),
            resident: Mutex::new(VecDeque::new()),
            resident_max: std::env::var(RESIDENT_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(RESIDENT),
            keys: Mutex::new(HashMap::new()),
            compiling: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Where the compiled code of a prepared version's component is kept, from the sha256 of its
    /// bytes (hashed once per version folder and process).
    async fn compiled_path(&self, p: &PreparedVersion) -> Result<PathBuf, RuntimeError> {
        let file = component_of(&p.spec).to_string();
        let at = p.dir.join(&file);
        if let Some(k) = lock(&self.keys).get(&at) {
            return Ok(k.clone());
        }
        let src = inside(&p.dir, &file)?;
        let sha = tokio::task::spawn_blocking(move || compile::content_sha256(&src, &file))
            .await
            .map_err(|e| RuntimeError::PrepareFailed(format!("the hash task failed: {e}")))?
            .map_err(|e| RuntimeError::PrepareFailed(e.to_string()))?;
        let path = compile::cache_path(&self.cache_dir, &self.fingerprint, &sha);
        lock(&self.keys).insert(at, path.clone());
        Ok(path)
    }

    /// Holds `l` among the `resident_max` most recently started components.
    fn keep_resident(&self, l: &Arc<Loaded>) {
        let mut r = lock(&self.resident);
        r.retain(|x| !Arc::ptr_eq(x, l));
        r.push_back(l.clone());
        while r.len() > self.resident_max {
            r.pop_front();
        }
    }

    fn platform(&self, spec: &FunctionSpec, version: VersionNumber, instance: &str, line: String) {
        self.logs.emit(LogLine {
            id: 0,
            at: now_ms(),
            function: spec.name.to_string(),
            version: version.0,
            instance: instance.to_string(),
            stream: LogStream::Platform,
            line,
            request_id: None,
        });
    }

    /// Compiles into the cache unless the compiled file is there. Returns whether it compiled.
    async fn ensure_compiled(
        &self,
        p: &PreparedVersion,
        force: bool,
    ) -> Result<bool, RuntimeError> {
        let dest = self.compiled_path(p).await?;
        let cached = || async { !force && tokio::fs::try_exists(&dest).await.unwrap_or(false) };
        if cached().await {
            return Ok(false);
        }
        let file = component_of(&p.spec).to_string();
        let src = inside(&p.dir, &file)?;
        let lock = self
            .compiling
            .lock()
            .await
            .entry(dest.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        // Someone compiled it while we waited.
        if cached().await {
            return Ok(false);
        }
        let (engine, linker) = (self.engine.clone(), self.linker.clone());
        let target = dest.clone();
        let name = file.clone();
        let result = tokio::task::spawn_blocking(move || {
            compile::compile_to_cache(&engine, &linker, &src, &name, &target)
        })
        .await;
        // Later callers find the file (or compile again after a failure): the lock has done its
        // job, and the map must not keep an entry for every component ever deployed.
        self.compiling.lock().await.remove(&dest);
        let took = result
            .map_err(|e| RuntimeError::PrepareFailed(format!("the compile task failed: {e}")))?
            .map_err(|e| RuntimeError::PrepareFailed(e.to_string()))?;
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        self.platform(
            &p.spec,
            p.version,
            "compile",
            format!(
                "compiled {file} in {} ms ({} KiB of machine code, cached)",
                took.as_millis(),
                size / 1024
            ),
        );
        Ok(true)
    }

    /// The version's component, loaded from the cache unless an instance already holds it.
    async fn load(&self, p: &PreparedVersion) -> Result<(Arc<Loaded>, Option<u128>), RuntimeError> {
        let path = self
            .compiled_path(p)
            .await
            .map_err(|e| RuntimeError::StartFailed(e.to_string()))?;
        if let Some(l) = self.cached(&path) {
            self.keep_resident(&l);
            return Ok((l, None));
        }
        let started = Instant::now();
        let file = component_of(&p.spec).to_string();
        let mut recompiled = false;
        let loaded = loop {
            let (engine, linker, at, name) = (
                self.engine.clone(),
                self.linker.clone(),
                path.clone(),
                file.clone(),
            );
            let r = tokio::task::spawn_blocking(move || {
                compile::load_cached(&engine, &linker, &name, &at)
            })
            .await
            .map_err(|e| RuntimeError::StartFailed(format!("the load task failed: {e}")))?;
            match r {
                Ok(l) => break l,
                // Missing or unusable (deleted, truncated by a full disk, another wasmtime's):
                // compile again from the artifact, once.
                Err(e) if !recompiled => {
                    self.platform(
                        &p.spec,
                        p.version,
                        "compile",
                        format!(
                            "compiled code at {} unusable ({e:#}); compiling again",
                            path.display()
                        ),
                    );
                    self.ensure_compiled(p, true)
                        .await
                        .map_err(|e| RuntimeError::StartFailed(e.to_string()))?;
                    recompiled = true;
                }
                Err(e) => {
                    return Err(RuntimeError::StartFailed(format!(
                        "cannot load {file}: {e:#}"
                    )));
                }
            }
        };
        let loaded = Arc::new(loaded);
        let loaded = {
            let mut map = lock(&self.loaded);
            // Another start may have loaded it meanwhile: keep one copy.
            match map.get(&path).and_then(Weak::upgrade) {
                Some(l) => Err(l),
                None => {
                    map.retain(|_, w| w.strong_count() > 0);
                    map.insert(path, Arc::downgrade(&loaded));
                    Ok(loaded)
                }
            }
        };
        let (l, took) = match loaded {
            Ok(l) => (l, Some(started.elapsed().as_micros())),
            Err(l) => (l, None),
        };
        self.keep_resident(&l);
        Ok((l, took))
    }

    fn cached(&self, path: &Path) -> Option<Arc<Loaded>> {
        lock(&self.loaded).get(path).and_then(Weak::upgrade)
    }

    /// Requests whose guest computed through an epoch tick and was moved off the caller's
    /// threads to the guest threads (for tests and diagnostics).
    pub fn offloaded_requests(&self) -> u64 {
        self.guests.moved()
    }

    /// How many distinct components are loaded in memory (for tests and diagnostics).
    pub fn loaded_components(&self) -> usize {
        lock(&self.loaded)
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// How many recently started components stay loaded while no instance uses them: a mapped
/// compiled file and its linked `ProxyPre` cost little memory (the code pages are the page
/// cache's, shared), and keeping them makes a scale-from-zero an instantiation only.
pub const RESIDENT: usize = 64;

/// Overrides [`RESIDENT`] (0 unloads a component with its last instance; benchmarks use it to
/// measure a start with nothing in memory).
pub const RESIDENT_ENV: &str = "STRATUS_WASM_RESIDENT";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn component_of(spec: &FunctionSpec) -> &str {
    spec.component().unwrap_or("")
}

/// The component's path in the version folder, which must not lead out of it (the manifest
/// checks the text; this checks the file system, symlinks included).
fn inside(dir: &Path, file: &str) -> Result<PathBuf, RuntimeError> {
    let missing = || {
        RuntimeError::PrepareFailed(format!(
            "component `{file}` is not in the deployed folder: build it before deploying (`build.command`), and check it is not ignored by .gitignore or .stratusignore"
        ))
    };
    let root = dir.canonicalize().map_err(|_| missing())?;
    let path = root.join(file).canonicalize().map_err(|_| missing())?;
    if !path.starts_with(&root) || !path.is_file() {
        return Err(RuntimeError::PrepareFailed(format!(
            "component `{file}` must be a file inside the deployed folder"
        )));
    }
    Ok(path)
}

#[async_trait]
impl Runtime for WasmRuntime {
    async fn prepare(
        &self,
        spec: Arc<FunctionSpec>,
        version: VersionNumber,
        artifact: &str,
    ) -> Result<PreparedVersion, RuntimeError> {
        let dir = self.code.unpacked(artifact).await?;
        let prepared = PreparedVersion { spec, version, dir };
        self.ensure_compiled(&prepared, false).await?;
        Ok(prepared)
    }

    async fn start(
        &self,
        prepared: &PreparedVersion,
        instance_id: &str,
    ) -> Result<Arc<dyn Instance>, RuntimeError> {
        let (loaded, load_us) = self.load(prepared).await?;
        if let Some(us) = load_us {
            self.platform(
                &prepared.spec,
                prepared.version,
                instance_id,
                format!(
                    "instance {instance_id} ready: compiled component loaded from cache in {us} µs ({} KiB)",
                    loaded.compiled_bytes / 1024
                ),
            );
        }
        Ok(Arc::new(WasmInstance::new(
            instance_id.to_string(),
            self.engine.clone(),
            self.guests.handle(),
            loaded,
            prepared.spec.clone(),
            prepared.version.0,
            self.logs.clone(),
        )))
    }
}

#[cfg(test)]
mod tests;
