use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stratus_artifact::UnpackLimits;
use stratus_store::BlobStore;
use tokio::sync::Mutex;

use crate::RuntimeError;

/// Unpacked artifacts, one folder per digest under `root`, shared by every version with the same
/// content. Unpacking is atomic (the artifact crate extracts beside and renames), so a folder that
/// exists is complete, and a restart reuses it.
pub struct CodeCache {
    root: PathBuf,
    blobs: Arc<dyn BlobStore>,
    limits: UnpackLimits,
    /// One unpack per digest at a time.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl CodeCache {
    pub fn new(
        root: impl Into<PathBuf>,
        blobs: Arc<dyn BlobStore>,
        limits: UnpackLimits,
    ) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            blobs,
            limits,
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir_of(&self, digest: &str) -> PathBuf {
        self.root.join(digest.replace(':', "-"))
    }

    /// A per-digest lock, for work that must happen once per unpacked folder (installs).
    pub async fn lock(&self, digest: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .await
            .entry(digest.to_string())
            .or_default()
            .clone()
    }

    /// The folder holding the unpacked artifact, unpacking it first if needed.
    pub async fn unpacked(&self, digest: &str) -> Result<PathBuf, RuntimeError> {
        let dest = self.dir_of(digest);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Ok(dest);
        }
        let lock = self.lock(digest).await;
        let _guard = lock.lock().await;
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Ok(dest);
        }
        let reader = self
            .blobs
            .open(digest)
            .await
            .map_err(|e| RuntimeError::PrepareFailed(format!("cannot read artifact: {e}")))?;
        let limits = self.limits;
        let target = dest.clone();
        tokio::task::spawn_blocking(move || {
            let sync = tokio_util::io::SyncIoBridge::new(reader);
            stratus_artifact::unpack(sync, &target, &limits)
        })
        .await
        .map_err(|e| RuntimeError::PrepareFailed(format!("unpack task failed: {e}")))?
        .map_err(|e| RuntimeError::InvalidArtifact(e.to_string()))?;
        Ok(dest)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
