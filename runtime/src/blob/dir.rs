//! [`DirBlobStore`]: blobs as files under a directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{BlobError, BlobErrorKind, BlobRead, BlobStore, blob_error, hash};

/// Blobs this small are also kept in memory once written or read: an
/// interactive call's input and parameters cost no file operation the
/// second time.
pub const SMALL_BLOB_BYTES: usize = 64 * 1024;

/// Bytes of small blobs kept in memory at most (the cache starts over when
/// full).
pub const SMALL_BLOB_CACHE_BYTES: usize = 16 << 20;

/// Blobs as `<dir>/<first two hex digits>/<hash>`, written atomically.
pub struct DirBlobStore {
    dir: PathBuf,
    small: Mutex<SmallBlobs>,
}

/// Small blobs by hash: content-addressed, so never stale.
#[derive(Default)]
struct SmallBlobs {
    blobs: HashMap<String, Arc<[u8]>>,
    bytes: usize,
}

impl SmallBlobs {
    fn keep(&mut self, hash: &str, bytes: &[u8]) {
        if bytes.len() > SMALL_BLOB_BYTES || self.blobs.contains_key(hash) {
            return;
        }
        if self.bytes + bytes.len() > SMALL_BLOB_CACHE_BYTES {
            self.blobs.clear();
            self.bytes = 0;
        }
        self.bytes += bytes.len();
        self.blobs.insert(hash.to_owned(), bytes.into());
    }
}

impl DirBlobStore {
    /// A store rooted at `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            blob_error(
                BlobErrorKind::Io,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        Ok(DirBlobStore {
            dir,
            small: Mutex::default(),
        })
    }

    fn small(&self) -> std::sync::MutexGuard<'_, SmallBlobs> {
        // A map of immutable bytes: a panic cannot leave it inconsistent.
        self.small.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, hash: &str) -> Option<Arc<[u8]>> {
        self.small().blobs.get(hash).cloned()
    }

    fn path(&self, hash: &str) -> Option<PathBuf> {
        // Only names we made: 64 hex digits, so no path tricks.
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.dir.join(&hash[..2]).join(hash))
    }
}

#[async_trait]
impl BlobStore for DirBlobStore {
    async fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        if bytes.len() > SMALL_BLOB_BYTES {
            return self.put_owned(bytes.to_vec()).await;
        }
        let hash = hash(bytes);
        if self.cached(&hash).is_some() {
            return Ok(hash);
        }
        let Some(path) = self.path(&hash) else {
            return Err(blob_error(BlobErrorKind::Io, "bad hash"));
        };
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            self.small().keep(&hash, bytes);
            return Ok(hash);
        }
        let parent = path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.clone());
        tokio::fs::create_dir_all(&parent).await.map_err(|e| {
            blob_error(
                BlobErrorKind::Io,
                format!("cannot create {}: {e}", parent.display()),
            )
        })?;
        let tmp = path.with_extension(format!("tmp{}-{}", std::process::id(), rand_suffix()));
        tokio::fs::write(&tmp, bytes).await.map_err(|e| {
            blob_error(
                BlobErrorKind::Io,
                format!("cannot write {}: {e}", tmp.display()),
            )
        })?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| {
            blob_error(
                BlobErrorKind::Io,
                format!("cannot store {}: {e}", path.display()),
            )
        })?;
        self.small().keep(&hash, bytes);
        Ok(hash)
    }

    async fn put_owned(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        if bytes.len() <= SMALL_BLOB_BYTES {
            return self.put(&bytes).await;
        }
        // Hashing and writing a large blob is work for a thread of its own:
        // several puts then run at once.
        let store = self.dir.clone();
        tokio::task::spawn_blocking(move || put_large(&store, &bytes))
            .await
            .map_err(|e| blob_error(BlobErrorKind::Io, format!("storing stopped: {e}")))?
    }

    async fn contains(&self, hash: &str) -> Result<bool, BlobError> {
        if self.cached(hash).is_some() {
            return Ok(true);
        }
        self.has(hash).await
    }

    async fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, BlobError> {
        if let Some(bytes) = self.cached(hash) {
            return Ok(Some(bytes.to_vec()));
        }
        let Some(path) = self.path(hash) else {
            return Ok(None);
        };
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                self.small().keep(hash, &bytes);
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(blob_error(
                BlobErrorKind::Io,
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }

    async fn read(&self, hash: &str) -> Result<Option<BlobRead>, BlobError> {
        if let Some(bytes) = self.cached(hash) {
            return Ok(Some(BlobRead::whole(bytes.to_vec())));
        }
        let Some(path) = self.path(hash) else {
            return Ok(None);
        };
        let io = |e: std::io::Error| {
            blob_error(
                BlobErrorKind::Io,
                format!("cannot read {}: {e}", path.display()),
            )
        };
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let size = file.metadata().await.map_err(io)?.len();
        Ok(Some(BlobRead::checked(hash.to_owned(), size, file)))
    }
}

impl DirBlobStore {
    /// Whether `hash` is stored (a file check, no read).
    pub async fn has(&self, hash: &str) -> Result<bool, BlobError> {
        let Some(path) = self.path(hash) else {
            return Ok(false);
        };
        tokio::fs::try_exists(&path).await.map_err(|e| {
            blob_error(
                BlobErrorKind::Io,
                format!("cannot look for {}: {e}", path.display()),
            )
        })
    }
}

/// Stores a blob too large for the small-blob cache, on a blocking thread.
fn put_large(dir: &std::path::Path, bytes: &[u8]) -> Result<String, BlobError> {
    let hash = hash(bytes);
    let path = dir.join(&hash[..2]).join(&hash);
    if path.exists() {
        return Ok(hash);
    }
    let parent = dir.join(&hash[..2]);
    std::fs::create_dir_all(&parent).map_err(|e| {
        blob_error(
            BlobErrorKind::Io,
            format!("cannot create {}: {e}", parent.display()),
        )
    })?;
    let tmp = path.with_extension(format!("tmp{}-{}", std::process::id(), rand_suffix()));
    std::fs::write(&tmp, bytes).map_err(|e| {
        blob_error(
            BlobErrorKind::Io,
            format!("cannot write {}: {e}", tmp.display()),
        )
    })?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        blob_error(
            BlobErrorKind::Io,
            format!("cannot store {}: {e}", path.display()),
        )
    })?;
    Ok(hash)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBlobStore::new(dir.path()).unwrap();
        let a = store.put(b"hello").await.unwrap();
        let b = store.put(b"hello").await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a, hash(b"hello"));
        assert_eq!(store.get(&a).await.unwrap(), Some(b"hello".to_vec()));
        assert_eq!(store.get(&hash(b"other")).await.unwrap(), None);
        assert_eq!(store.get("../../etc/passwd").await.unwrap(), None);
    }

    #[tokio::test]
    async fn reads_go_a_chunk_at_a_time_and_changed_bytes_never_arrive_whole() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let store = DirBlobStore::new(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let name = store.put(&bytes).await.unwrap();
        let read = store.read(&name).await.unwrap().unwrap();
        assert_eq!(read.size, bytes.len() as u64);
        let chunks: Vec<_> = read.chunks.collect().await;
        assert!(chunks.len() > 1, "one chunk of {}", bytes.len());
        let got: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(got, bytes);

        // A byte changed on disk: the last chunk is an error, and what
        // came before it is short of the whole.
        let mut changed = bytes.clone();
        changed[150_000] ^= 1;
        std::fs::write(dir.path().join(&name[..2]).join(&name), &changed).unwrap();
        let items: Vec<_> = store
            .read(&name)
            .await
            .unwrap()
            .unwrap()
            .chunks
            .collect()
            .await;
        let (last, sent) = items.split_last().unwrap();
        assert_eq!(last.as_ref().unwrap_err().kind(), BlobErrorKind::Corrupt);
        let sent: usize = sent.iter().map(|c| c.as_ref().unwrap().len()).sum();
        assert!(sent < bytes.len());
        assert!(store.read(&hash(b"none")).await.unwrap().is_none());
    }
}
