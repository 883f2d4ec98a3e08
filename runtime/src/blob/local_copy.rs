//! [`LocalCopy`]: a remote blob store read through a local directory, so a
//! worker fetches each module once per machine, not once per process.

use std::sync::Arc;

use async_trait::async_trait;

use super::{BlobError, BlobStore, DirBlobStore, hash};

/// Reads go to the local copy first; a blob missing there (or damaged) is
/// fetched from the remote store and kept. Writes go to both.
pub struct LocalCopy {
    remote: Arc<dyn BlobStore>,
    local: DirBlobStore,
}

impl LocalCopy {
    /// `remote`, with copies in `local`.
    pub fn new(remote: Arc<dyn BlobStore>, local: DirBlobStore) -> Self {
        LocalCopy { remote, local }
    }
}

#[async_trait]
impl BlobStore for LocalCopy {
    async fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let name = self.remote.put(bytes).await?;
        let _ = self.local.put(bytes).await;
        Ok(name)
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BlobError> {
        if let Ok(Some(bytes)) = self.local.get(name).await {
            if hash(&bytes) == name {
                return Ok(Some(bytes));
            }
            tracing::warn!(blob = name, "ignoring a damaged local copy");
        }
        let Some(bytes) = self.remote.get(name).await? else {
            return Ok(None);
        };
        if let Err(error) = self.local.put(&bytes).await {
            tracing::warn!(blob = name, %error, "cannot keep a local copy");
        }
        Ok(Some(bytes))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_through_and_serves_the_copy_once_the_remote_is_gone() {
        let remote_dir = tempfile::tempdir().unwrap();
        let local_dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(DirBlobStore::new(remote_dir.path()).unwrap());
        let name = remote.put(b"module bytes").await.unwrap();
        let copy = LocalCopy::new(remote, DirBlobStore::new(local_dir.path()).unwrap());
        assert_eq!(copy.get(&name).await.unwrap().unwrap(), b"module bytes");
        // The remote loses it; the local copy still answers.
        std::fs::remove_dir_all(remote_dir.path()).unwrap();
        assert_eq!(copy.get(&name).await.unwrap().unwrap(), b"module bytes");
        assert!(copy.get(&hash(b"other")).await.unwrap().is_none());
    }
}
