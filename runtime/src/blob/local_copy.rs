//! [`LocalCopy`]: a remote blob store read through a local directory, so a
//! worker fetches each module once per machine, not once per process.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{BlobError, BlobStore, DirBlobStore, hash};

/// Reads go to the local copy first; a blob missing there (or damaged) is
/// fetched from the remote store and kept, the copies within a byte
/// budget (the least recently used go). Writes go to both.
pub struct LocalCopy {
    remote: Arc<dyn BlobStore>,
    local: DirBlobStore,
    max_bytes: u64,
}

impl LocalCopy {
    /// `remote`, with copies in `local` of at most `max_bytes` in all.
    pub fn new(remote: Arc<dyn BlobStore>, local: DirBlobStore, max_bytes: u64) -> Self {
        LocalCopy {
            remote,
            local,
            max_bytes,
        }
    }

    /// Keeps `bytes` as a local copy, then the copies within the budget:
    /// the least recently used go first, never the one just kept.
    async fn keep(&self, name: &str, bytes: &[u8]) {
        if let Err(error) = self.local.put(bytes).await {
            tracing::warn!(blob = name, %error, "cannot keep a local copy");
            return;
        }
        let Ok(mut listed) = self.local.list().await else {
            return;
        };
        let mut copies = Vec::new();
        let mut total = 0u64;
        while let Some(Ok(entry)) = listed.next().await {
            total += entry.size;
            copies.push(entry);
        }
        if total <= self.max_bytes {
            return;
        }
        copies.sort_by_key(|entry| entry.stored_at);
        for entry in copies {
            if total <= self.max_bytes {
                break;
            }
            if entry.hash != name
                && let Ok(true) = self.local.delete(&entry.hash, SystemTime::now()).await
            {
                total -= entry.size;
            }
        }
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
                self.local.touch(name).await;
                return Ok(Some(bytes));
            }
            tracing::warn!(blob = name, "ignoring a damaged local copy");
        }
        let Some(bytes) = self.remote.get(name).await? else {
            return Ok(None);
        };
        self.keep(name, &bytes).await;
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
        let copy = LocalCopy::new(
            remote,
            DirBlobStore::new(local_dir.path()).unwrap(),
            1 << 20,
        );
        assert_eq!(copy.get(&name).await.unwrap().unwrap(), b"module bytes");
        // The remote loses it; the local copy still answers.
        std::fs::remove_dir_all(remote_dir.path()).unwrap();
        assert_eq!(copy.get(&name).await.unwrap().unwrap(), b"module bytes");
        assert!(copy.get(&hash(b"other")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn copies_stay_within_their_budget_the_least_recently_used_going() {
        let remote_dir = tempfile::tempdir().unwrap();
        let local_dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(DirBlobStore::new(remote_dir.path()).unwrap());
        let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000]).collect();
        let mut names = Vec::new();
        for bytes in &blobs {
            names.push(remote.put(bytes).await.unwrap());
        }
        let copy = LocalCopy::new(remote, DirBlobStore::new(local_dir.path()).unwrap(), 2_500);
        let local = DirBlobStore::new(local_dir.path()).unwrap();
        copy.get(&names[0]).await.unwrap().unwrap();
        copy.get(&names[1]).await.unwrap().unwrap();
        // The first was stored longest ago: a third copy pushes it out.
        let old = std::fs::File::options()
            .write(true)
            .open(local_dir.path().join(&names[0][..2]).join(&names[0]))
            .unwrap();
        old.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        copy.get(&names[2]).await.unwrap().unwrap();
        assert!(!local.contains(&names[0]).await.unwrap());
        assert!(local.contains(&names[1]).await.unwrap());
        assert!(local.contains(&names[2]).await.unwrap());
        // Read again, it is fetched from the remote store.
        assert_eq!(copy.get(&names[0]).await.unwrap().unwrap(), blobs[0]);
    }
}
