//! [`DirBlobStore`]: blobs as files under a directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use super::{
    BlobEntry, BlobError, BlobErrorKind, BlobRead, BlobStore, RENEW_AFTER, blob_error, hash,
    is_name,
};

/// Entries a listing reads ahead of its consumer.
const LIST_AHEAD: usize = 256;

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

/// Small blobs by hash (content-addressed, so never stale), each with
/// when its file's time was last renewed by this process.
#[derive(Default)]
struct SmallBlobs {
    blobs: HashMap<String, (Arc<[u8]>, Instant)>,
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
        self.blobs
            .insert(hash.to_owned(), (bytes.into(), Instant::now()));
    }

    fn forget(&mut self, hash: &str) {
        if let Some((bytes, _)) = self.blobs.remove(hash) {
            self.bytes -= bytes.len();
        }
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
        self.small().blobs.get(hash).map(|(bytes, _)| bytes.clone())
    }

    /// Whether `hash` is cached and its file's time was renewed lately.
    fn cached_fresh(&self, hash: &str) -> bool {
        self.small()
            .blobs
            .get(hash)
            .is_some_and(|(_, renewed)| renewed.elapsed() < RENEW_AFTER)
    }

    /// Marks a stored blob as used now (its file's time, at most once a
    /// minute), as a put of its bytes would, without its bytes.
    pub async fn touch(&self, hash: &str) {
        if let Some(path) = self.path(hash) {
            let _ = tokio::task::spawn_blocking(move || renew(&path)).await;
        }
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
        if self.cached_fresh(&hash) {
            return Ok(hash);
        }
        let Some(path) = self.path(&hash) else {
            return Err(blob_error(BlobErrorKind::Io, "bad hash"));
        };
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            let renewing = path.clone();
            let renewed = tokio::task::spawn_blocking(move || renew(&renewing))
                .await
                .unwrap_or(false);
            if renewed {
                let mut small = self.small();
                small.forget(&hash);
                small.keep(&hash, bytes);
                return Ok(hash);
            }
            // Deleted meanwhile: written again below.
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

    async fn put_in_background(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        if bytes.len() <= SMALL_BLOB_BYTES {
            return self.put(&bytes).await;
        }
        let store = self.dir.clone();
        crate::background::run("store", move || put_large(&store, &bytes))
            .await
            .map_err(|e| blob_error(BlobErrorKind::Io, format!("storing stopped: {e}")))?
    }

    async fn contains(&self, hash: &str) -> Result<bool, BlobError> {
        if self.cached(hash).is_some() {
            return Ok(true);
        }
        self.has(hash).await
    }

    async fn list(&self) -> Result<BoxStream<'static, Result<BlobEntry, BlobError>>, BlobError> {
        let (sender, receiver) = tokio::sync::mpsc::channel(LIST_AHEAD);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = list_into(&dir, &sender) {
                let _ = sender.blocking_send(Err(error));
            }
        });
        Ok(Box::pin(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|entry| (entry, receiver)) },
        )))
    }

    async fn delete(&self, hash: &str, stored_before: SystemTime) -> Result<bool, BlobError> {
        let Some(path) = self.path(hash) else {
            return Ok(false);
        };
        let deleting = path.clone();
        let gone = tokio::task::spawn_blocking(move || {
            let stored_at = match std::fs::metadata(&deleting).and_then(|m| m.modified()) {
                Ok(at) => at,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            };
            if stored_at >= stored_before {
                return Ok(false);
            }
            match std::fs::remove_file(&deleting) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| blob_error(BlobErrorKind::Io, format!("deleting stopped: {e}")))?
        .map_err(|e| {
            blob_error(
                BlobErrorKind::Io,
                format!("cannot delete {}: {e}", path.display()),
            )
        })?;
        if gone {
            self.small().forget(hash);
        }
        Ok(gone)
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
    if path.exists() && renew(&path) {
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
    write_in_pieces(&tmp, bytes).map_err(|e| {
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

/// Writes `bytes` to a new file at `path` a MiB per call: the kernel
/// copies a call's bytes without letting another thread have the core,
/// so one call of a large blob would hold it for tens of milliseconds.
fn write_in_pieces(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    for piece in bytes.chunks(WRITE_PIECE) {
        file.write_all(piece)?;
    }
    Ok(())
}

/// How much of a blob one write call takes ([`write_in_pieces`]).
const WRITE_PIECE: usize = 1 << 20;

/// Renews a stored blob's time (its file's modification time) if it is
/// older than [`RENEW_AFTER`]: a put of stored bytes counts as storing
/// them. Whether the file is (still) there.
fn renew(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let stale = meta
        .modified()
        .ok()
        .and_then(|at| at.elapsed().ok())
        .is_none_or(|age| age >= RENEW_AFTER);
    if stale {
        let renewed = std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|file| file.set_modified(SystemTime::now()));
        if let Err(error) = renewed {
            return error.kind() != std::io::ErrorKind::NotFound;
        }
    }
    true
}

/// Sends every blob under `dir` (`<2 hex>/<64 hex>`) to `sender`, until
/// it is dropped.
fn list_into(
    dir: &Path,
    sender: &tokio::sync::mpsc::Sender<Result<BlobEntry, BlobError>>,
) -> Result<(), BlobError> {
    let io = |path: &Path, e: std::io::Error| {
        blob_error(
            BlobErrorKind::Io,
            format!("cannot list {}: {e}", path.display()),
        )
    };
    for shard in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let shard = shard.map_err(|e| io(dir, e))?;
        let name = shard.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 2 || !shard.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let shard = shard.path();
        let entries = match std::fs::read_dir(&shard) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&shard, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io(&shard, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_name(name) {
                remove_if_orphan(&entry.path(), name);
                continue;
            }
            let hash = name;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&entry.path(), e)),
            };
            let found = BlobEntry {
                hash: hash.to_owned(),
                size: meta.len(),
                stored_at: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            };
            if sender.blocking_send(Ok(found)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// How old a temporary file must be before a listing takes it for one a
/// killed process left (a write in progress is far younger).
const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes `path` if it is a temporary file of a write (`<hash>.tmp...`)
/// older than [`ORPHAN_AGE`]: one a killed process never renamed.
fn remove_if_orphan(path: &Path, name: &str) {
    let Some((hash, rest)) = name.split_once('.') else {
        return;
    };
    if !is_name(hash) || !rest.starts_with("tmp") {
        return;
    }
    let old = std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|at| at.elapsed().ok())
        .is_some_and(|age| age >= ORPHAN_AGE);
    if old && std::fs::remove_file(path).is_ok() {
        tracing::info!(path = %path.display(), "removed a temporary file a killed write left");
    }
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

    /// Every blob `store` lists.
    async fn all(store: &DirBlobStore) -> Vec<BlobEntry> {
        use futures_util::StreamExt;
        store
            .list()
            .await
            .unwrap()
            .map(|e| e.unwrap())
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_put_of_stored_bytes_renews_them_and_a_delete_spares_what_was_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBlobStore::new(dir.path()).unwrap();
        let small = store.put(b"small").await.unwrap();
        let large = store.put(&vec![7u8; SMALL_BLOB_BYTES + 1]).await.unwrap();
        let old = SystemTime::now() - 10 * RENEW_AFTER;
        let age = |name: &str| {
            let path = dir.path().join(&name[..2]).join(name);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
            // The cache forgets when it last renewed.
            store.small().forget(name);
        };
        age(&small);
        age(&large);
        let mut listed = all(&store).await;
        listed.sort_by_key(|e| e.size);
        assert_eq!(listed.len(), 2);
        // Temporary files are not blobs; a listing removes those a killed
        // write left an hour ago, not one in progress.
        let shard = dir.path().join(&small[..2]);
        let (orphan, fresh) = (
            shard.join(format!("{small}.tmp99-0")),
            shard.join(format!("{small}.tmp99-1")),
        );
        std::fs::write(&orphan, b"half").unwrap();
        std::fs::write(&fresh, b"half").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&orphan)
            .unwrap()
            .set_modified(SystemTime::now() - ORPHAN_AGE * 2)
            .unwrap();
        let again = all(&store).await;
        assert_eq!(again.len(), 2);
        assert!(!orphan.exists() && fresh.exists());
        assert_eq!(
            (listed[0].hash.as_str(), listed[0].size),
            (small.as_str(), 5)
        );
        assert!(listed.iter().all(|e| e.stored_at <= old));

        // Stored again: renewed, so a delete of what was stored before
        // an hour ago spares it.
        store.put(b"small").await.unwrap();
        store.put(&vec![7u8; SMALL_BLOB_BYTES + 1]).await.unwrap();
        let cutoff = SystemTime::now() - RENEW_AFTER;
        assert!(!store.delete(&small, cutoff).await.unwrap());
        assert!(!store.delete(&large, cutoff).await.unwrap());
        assert!(store.contains(&small).await.unwrap());

        // Not renewed: deleted, from the cache too.
        age(&small);
        store.get(&small).await.unwrap();
        assert!(store.delete(&small, cutoff).await.unwrap());
        assert!(!store.contains(&small).await.unwrap());
        assert_eq!(store.get(&small).await.unwrap(), None);
        assert!(!store.delete(&small, cutoff).await.unwrap(), "gone already");
        assert!(!store.delete("../../etc/passwd", cutoff).await.unwrap());
    }
}
