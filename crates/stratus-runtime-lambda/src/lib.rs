//! Handler runtimes: `lambda` (the manifest's `command` is a bootstrap speaking the AWS Lambda
//! Runtime API, such as Python's `awslambdaric`), and `node` / `python`, whose bootstraps ship in
//! this crate (`bootstrap/`) and speak the same API. An instance is one bootstrap process with
//! its own Runtime API endpoint on a loopback port; it runs one invocation at a time.
//!
//! An HTTP request becomes an HTTP payload 2.0 event and the handler's result becomes the
//! response ([`event`]); an async or timer invocation ([`stratus_runtime::DirectEvent`]) hands
//! its payload over as the event and answers with the raw result.
#![forbid(unsafe_code)]

mod api;
pub mod event;
mod instance;
mod start;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use stratus_core::{FunctionSpec, RuntimeKind, VersionNumber};
use stratus_runtime::{
    CodeCache, CpuClass, Instance, LogSink, PreparedVersion, Runtime, RuntimeError,
};

pub use instance::FUNCTION_ERROR_HEADER;

const NODE_BOOTSTRAP: &str = include_str!("../bootstrap/node.js");
const PYTHON_BOOTSTRAP: &str = include_str!("../bootstrap/python.py");

#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    #[error("cannot write the bootstraps to {0}: {1}")]
    Bootstrap(PathBuf, std::io::Error),
}

pub struct LambdaRuntime {
    code: Arc<CodeCache>,
    logs: Arc<dyn LogSink>,
    node: PathBuf,
    python: PathBuf,
}

/// Writes `text` to `dir/name` unless it is there already with the same content; by temp file
/// and rename, so a bootstrap starting meanwhile never reads half a file.
fn install_file(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(path);
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

impl LambdaRuntime {
    /// `bootstrap_dir` receives the node and python bootstraps (kept outside the code folders,
    /// which hold user code only).
    pub fn new(
        code: Arc<CodeCache>,
        logs: Arc<dyn LogSink>,
        bootstrap_dir: &Path,
    ) -> Result<Self, LambdaError> {
        let err = |e| LambdaError::Bootstrap(bootstrap_dir.to_path_buf(), e);
        std::fs::create_dir_all(bootstrap_dir).map_err(err)?;
        Ok(Self {
            node: install_file(bootstrap_dir, "stratus-node-bootstrap.js", NODE_BOOTSTRAP)
                .map_err(err)?,
            python: install_file(
                bootstrap_dir,
                "stratus_python_bootstrap.py",
                PYTHON_BOOTSTRAP,
            )
            .map_err(err)?,
            code,
            logs,
        })
    }

    /// The program and arguments an instance of `spec` runs.
    fn command(&self, spec: &FunctionSpec) -> Vec<String> {
        let interpreter = spec.command.first().cloned().unwrap_or_default();
        match spec.runtime {
            RuntimeKind::Node => vec![interpreter, self.node.display().to_string()],
            // -u: unbuffered, so output reaches the log as it is printed.
            RuntimeKind::Python => {
                vec![interpreter, "-u".into(), self.python.display().to_string()]
            }
            _ => spec.command.clone(),
        }
    }
}

#[async_trait]
impl Runtime for LambdaRuntime {
    async fn prepare(
        &self,
        spec: Arc<FunctionSpec>,
        version: VersionNumber,
        artifact: &str,
    ) -> Result<PreparedVersion, RuntimeError> {
        stratus_runtime_process::prepare_code(
            &self.code,
            self.logs.clone(),
            spec,
            version,
            artifact,
        )
        .await
    }

    async fn start(
        &self,
        prepared: &PreparedVersion,
        instance_id: &str,
    ) -> Result<Arc<dyn Instance>, RuntimeError> {
        self.start_as(prepared, instance_id, CpuClass::Serving)
            .await
    }

    async fn start_as(
        &self,
        prepared: &PreparedVersion,
        instance_id: &str,
        class: CpuClass,
    ) -> Result<Arc<dyn Instance>, RuntimeError> {
        let command = self.command(&prepared.spec);
        let inst = start::start(prepared, instance_id, class, command, self.logs.clone()).await?;
        Ok(Arc::new(inst))
    }
}
