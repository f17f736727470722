use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use stratus_store::{BlobInfo, BlobPutError, BlobStore, Result, StoreError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Blobs under `root/sha256/<first two hex>/<hex>`. Writes go to a temporary file in `root/tmp`
/// and are renamed into place once hashed and flushed, so a crash never leaves a partial blob
/// under a valid digest.
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("sha256"))?;
        Ok(Self { root })
    }

    fn path_of(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.root.join("sha256").join(&hex[..2]).join(hex))
    }
}

fn backend(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("blob store: {e}"))
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(
        &self,
        mut reader: Box<dyn AsyncRead + Send + Unpin>,
        max_size: u64,
    ) -> Result<BlobInfo, BlobPutError> {
        let tmp = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(backend)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut buf).await.map_err(BlobPutError::Read)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > max_size {
                    return Err(BlobPutError::TooLarge(max_size));
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).await.map_err(backend)?;
            }
            file.sync_all().await.map_err(backend)?;
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            let dest = self.path_of(&digest).expect("own digest is well-formed");
            if tokio::fs::try_exists(&dest).await.map_err(backend)? {
                return Ok(BlobInfo {
                    digest,
                    size,
                    created: false,
                });
            }
            tokio::fs::create_dir_all(dest.parent().unwrap())
                .await
                .map_err(backend)?;
            tokio::fs::rename(&tmp, &dest).await.map_err(backend)?;
            Ok(BlobInfo {
                digest,
                size,
                created: true,
            })
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }

    async fn open(&self, digest: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let path = self
            .path_of(digest)
            .ok_or_else(|| StoreError::BlobNotFound(digest.into()))?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound(digest.into()))
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn exists(&self, digest: &str) -> Result<bool> {
        match self.path_of(digest) {
            Some(p) => tokio::fs::try_exists(&p).await.map_err(backend),
            None => Ok(false),
        }
    }

    fn local_path(&self, digest: &str) -> Option<PathBuf> {
        self.path_of(digest).filter(|p| Path::exists(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn content_addressed_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        let a = store.put(Box::new(&b"hello"[..]), 100).await.unwrap();
        assert_eq!(
            a.digest,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(a.created);
        let b = store.put(Box::new(&b"hello"[..]), 100).await.unwrap();
        assert_eq!(b.digest, a.digest);
        assert!(!b.created, "identical content is stored once");
        let mut out = String::new();
        store
            .open(&a.digest)
            .await
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert_eq!(out, "hello");
        let too_big = store.put(Box::new(&[0u8; 200][..]), 100).await;
        assert!(matches!(too_big, Err(BlobPutError::TooLarge(100))));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "no leftovers"
        );
        assert!(matches!(
            store.open("sha256:nope").await,
            Err(StoreError::BlobNotFound(_))
        ));
    }
}
