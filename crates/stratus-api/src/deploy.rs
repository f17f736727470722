use std::time::{Duration, Instant};

use serde::Serialize;
use stratus_core::{ErrorCode, FunctionName, PlatformError, VersionNumber};
use stratus_router::conflicting_route;
use stratus_runtime::RuntimeError;
use stratus_store::{BlobPutError, NewVersion};
use tokio::io::AsyncRead;

use crate::ControlPlane;

#[derive(Debug, Clone, Serialize)]
pub struct DeployOutcome {
    pub function: FunctionName,
    pub version: VersionNumber,
    pub aliases: Vec<String>,
    pub artifact: String,
    pub artifact_size: u64,
    /// The identical artifact was already stored.
    pub deduplicated: bool,
    /// Server-side time from the end of the upload to the version serving.
    pub took_ms: u64,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> PlatformError {
    PlatformError::new(code, msg)
}

impl ControlPlane {
    /// Stores an uploaded archive, validates it and its manifest, proves the new version starts
    /// and answers its readiness check, and only then records it and moves `latest`. Any failure
    /// leaves every existing version and alias as it was.
    pub async fn deploy(
        &self,
        upload: Box<dyn AsyncRead + Send + Unpin>,
        expected: Option<FunctionName>,
        actor: &str,
    ) -> Result<DeployOutcome, PlatformError> {
        let blob = self.blobs.put(upload, self.config.max_artifact_bytes).await.map_err(|e| match e {
            BlobPutError::TooLarge(n) => err(ErrorCode::PayloadTooLarge, format!("the archive is larger than the server's limit of {n} bytes: add large, unneeded files to .stratusignore")),
            BlobPutError::Read(e) => err(ErrorCode::BadRequest, format!("the upload was interrupted: {e}")),
            BlobPutError::Store(e) => e.into(),
        })?;
        let started = Instant::now();
        let dir = self
            .code
            .unpacked(&blob.digest)
            .await
            .map_err(|e| match e {
                RuntimeError::InvalidArtifact(m) => err(ErrorCode::InvalidArchive, m),
                other => err(ErrorCode::Internal, other.to_string()),
            })?;
        let src = tokio::fs::read_to_string(dir.join(stratus_manifest::MANIFEST_FILE))
            .await
            .map_err(|_| {
                err(
                    ErrorCode::InvalidManifest,
                    "the archive has no stratus.toml at its root: deploy the folder that holds it",
                )
            })?;
        let spec = stratus_manifest::parse(stratus_manifest::MANIFEST_FILE, &src)
            .map_err(|e| err(ErrorCode::InvalidManifest, e.to_string()))?;
        if let Some(expected) = expected
            && expected != spec.name
        {
            return Err(err(
                ErrorCode::Conflict,
                format!("the manifest names `{}`, not `{expected}`", spec.name),
            ));
        }
        if let Some((route, owner)) =
            conflicting_route(&self.router.table(), &spec.name, &spec.routes)
        {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "route {}{} is already served by function `{owner}`: pick another path or host",
                    route.host.as_deref().unwrap_or(""),
                    route.path
                ),
            ));
        }

        // One deploy per function at a time on this node; the store's numbering catches the rest.
        let lock = self
            .deploy_locks
            .lock()
            .await
            .entry(spec.name.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let number = self.store.next_version_number(&spec.name).await?;
        self.fleet
            .prove(&spec, number, &blob.digest)
            .await
            .map_err(|why| {
                err(
                    ErrorCode::DeployFailed,
                    format!(
                        "the new version of `{}` did not start, nothing was changed: {why}",
                        spec.name
                    ),
                )
            })?;
        let name = spec.name.clone();
        let created = self
            .store
            .create_version(NewVersion {
                spec,
                artifact: blob.digest.clone(),
                artifact_size: blob.size,
                number,
                actor: actor.to_string(),
            })
            .await;
        let version = match created {
            Ok(v) => v,
            Err(e) => {
                self.fleet.retire(&name, Some(number)).await;
                return Err(e.into());
            }
        };
        self.serving_now().await;
        Ok(DeployOutcome {
            function: version.function,
            version: version.number,
            aliases: vec!["latest".into()],
            artifact: blob.digest,
            artifact_size: blob.size,
            deduplicated: !blob.created,
            took_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Returns once the gateway routes by a table that includes every change committed so far.
    pub(crate) async fn serving_now(&self) {
        let generation = *self.store.changes().borrow();
        if !self
            .router
            .wait_for(generation, Duration::from_secs(5))
            .await
        {
            tracing::warn!("routing table did not reach generation {generation} in time");
        }
    }
}
