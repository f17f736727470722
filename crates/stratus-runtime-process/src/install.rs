use std::path::Path;
use std::sync::Arc;

use stratus_core::{FunctionSpec, VersionNumber};
use stratus_runtime::{LogSink, RuntimeError};
use tokio::process::Command;

use crate::spawn::{OutputTail, capture_output, resolve_program};

/// Marks a folder whose install step has succeeded; the folder is per artifact digest, so the
/// install of identical content runs once.
const MARKER: &str = ".stratus-installed";

pub async fn run_once(
    dir: &Path,
    install: &[String],
    spec: &FunctionSpec,
    version: VersionNumber,
    logs: Arc<dyn LogSink>,
) -> Result<(), RuntimeError> {
    let marker = dir.join(MARKER);
    if tokio::fs::try_exists(&marker).await.unwrap_or(false) {
        return Ok(());
    }
    let program = resolve_program(dir, &install[0]);
    let mut child = Command::new(&program)
        .args(&install[1..])
        .current_dir(dir)
        .envs(&spec.env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            RuntimeError::PrepareFailed(format!(
                "install command `{}` could not start: {e}",
                install.join(" ")
            ))
        })?;
    let tail = OutputTail::default();
    let readers = capture_output(
        &mut child,
        spec.name.as_str(),
        version,
        "install",
        logs,
        tail.clone(),
    );
    let status = child
        .wait()
        .await
        .map_err(|e| RuntimeError::PrepareFailed(format!("install command failed: {e}")))?;
    for r in readers {
        let _ = r.await;
    }
    if !status.success() {
        return Err(RuntimeError::PrepareFailed(format!(
            "install command `{}` failed ({status}); last output:\n{}",
            install.join(" "),
            tail.text()
        )));
    }
    tokio::fs::write(&marker, b"ok")
        .await
        .map_err(|e| RuntimeError::PrepareFailed(format!("cannot record install: {e}")))?;
    Ok(())
}
