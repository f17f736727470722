//! The process runtime: an instance is the manifest's `command`, started in the version's folder
//! with `PORT` and the manifest's `env`, and ready once its port accepts (or its health path
//! answers 2xx). Requests are proxied over pooled keep-alive HTTP/1.1 connections.
//!
//! Each instance is its own process group and its own cgroup (see [`cgroup`]), which enforces
//! `limits.memory`, `limits.cpu` and `limits.pids`; stopping it kills every process in the
//! cgroup, even ones that left the process group. It asks the kernel to kill it should the
//! server die (`PR_SET_PDEATHSIG`), so a `kill -9` of the server leaves no orphans holding ports.

pub mod cgroup;
mod confine;
mod install;
mod instance;
pub mod isolate;
mod spawn;

use std::sync::Arc;

use async_trait::async_trait;
use stratus_core::{FunctionSpec, VersionNumber};
use stratus_runtime::{
    CodeCache, CpuClass, Instance, LogSink, PreparedVersion, Runtime, RuntimeError,
};

pub use cgroup::{Enforcement, PARKED_CORES, enforcement};
pub use confine::{Confinement, signal_group};
/// Process plumbing the handler runtimes (`stratus-runtime-lambda`) start their bootstraps with.
pub use install::run_once as run_install;
pub use instance::ProcessInstance;
pub use isolate::{IsolationMode, IsolationReport};
pub use spawn::{
    OutputTail, capture_output, not_found, on_spawner, platform_line, resolve_program, watch_exit,
};

/// Unpacks a version's artifact and runs its `[build] install` once per artifact: the `prepare`
/// of every runtime whose instances are child processes in the version's folder.
pub async fn prepare_code(
    code: &CodeCache,
    logs: Arc<dyn LogSink>,
    spec: Arc<FunctionSpec>,
    version: VersionNumber,
    artifact: &str,
) -> Result<PreparedVersion, RuntimeError> {
    let dir = code.unpacked(artifact).await?;
    if let Some(install) = &spec.build.install {
        let lock = code.lock(artifact).await;
        let _guard = lock.lock().await;
        install::run_once(&dir, install, &spec, version, logs).await?;
    }
    Ok(PreparedVersion { spec, version, dir })
}

pub struct ProcessRuntime {
    code: Arc<CodeCache>,
    logs: Arc<dyn LogSink>,
}

impl ProcessRuntime {
    pub fn new(code: Arc<CodeCache>, logs: Arc<dyn LogSink>) -> Self {
        Self { code, logs }
    }
}

impl ProcessRuntime {
    /// Starts an instance and hands back the concrete type (its cgroup is reachable through
    /// [`ProcessInstance::confinement`]).
    pub async fn start_process(
        &self,
        prepared: &PreparedVersion,
        instance_id: &str,
    ) -> Result<ProcessInstance, RuntimeError> {
        self.start_process_as(prepared, instance_id, CpuClass::Serving)
            .await
    }

    /// [`Self::start_process`] in a CPU class (see [`CpuClass`]).
    pub async fn start_process_as(
        &self,
        prepared: &PreparedVersion,
        instance_id: &str,
        class: CpuClass,
    ) -> Result<ProcessInstance, RuntimeError> {
        spawn::start(prepared, instance_id, class, self.logs.clone()).await
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    async fn prepare(
        &self,
        spec: Arc<FunctionSpec>,
        version: VersionNumber,
        artifact: &str,
    ) -> Result<PreparedVersion, RuntimeError> {
        prepare_code(&self.code, self.logs.clone(), spec, version, artifact).await
    }

    async fn start(
        &self,
        prepared: &PreparedVersion,
        instance_id: &str,
    ) -> Result<Arc<dyn Instance>, RuntimeError> {
        Ok(Arc::new(self.start_process(prepared, instance_id).await?))
    }

    async fn start_as(
        &self,
        prepared: &PreparedVersion,
        instance_id: &str,
        class: CpuClass,
    ) -> Result<Arc<dyn Instance>, RuntimeError> {
        Ok(Arc::new(
            self.start_process_as(prepared, instance_id, class).await?,
        ))
    }
}
