//! Content-addressed blobs: modules, inputs, large outputs. A trait with a
//! directory implementation (the embedded mode); the NATS object store
//! implements the same trait.

mod dir;
mod local_copy;
mod nats;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub use dir::DirBlobStore;
pub use local_copy::LocalCopy;
pub use nats::{NatsBlobStore, RESULTS_BUCKET, Writer};

/// What kind of failure a blob store had; callers decide on it (a worker
/// waits out an unavailable store instead of failing the task).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlobErrorKind {
    /// The store could not be reached or did not answer (NATS down, a
    /// timeout): worth trying again after a while.
    #[error("blob store unavailable")]
    Unavailable,
    /// Reading or writing local files failed (disk full, permissions).
    #[error("blob store i/o failed")]
    Io,
    /// The bytes stored under a hash are not the bytes of that hash.
    #[error("blob does not match its hash")]
    Corrupt,
    /// The store is at its byte limit: no room for the bytes (until blobs
    /// nothing names are collected, or the limit is raised).
    #[error("blob store full")]
    Full,
}

/// The blob store failed.
pub type BlobError = crate::error::Error<BlobErrorKind>;

/// A blob error of `kind` whose cause is `message`.
pub(crate) fn blob_error(kind: BlobErrorKind, message: impl Into<String>) -> BlobError {
    BlobError::with_source(kind, message.into())
}

/// The sha256 of `bytes`, hex-encoded: a blob's name.
pub fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `name` is a blob's name: 64 lowercase hex digits.
pub fn is_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A stored blob as a [listing](BlobStore::list) shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// Its name (sha256).
    pub hash: String,
    /// Bytes.
    pub size: u64,
    /// When it was last stored: written, or put again (a put of stored
    /// bytes renews this, at most every [`RENEW_AFTER`]).
    pub stored_at: std::time::SystemTime,
}

/// How stale a blob's stored-at time may be before a put of the same
/// bytes renews it: what a garbage collector's grace must exceed.
pub const RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// How much of a blob a [`BlobRead`] holds at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A blob as it is read: its size, and its bytes a chunk at a time,
/// checked against its hash as they go (should they not match, the last
/// item is a [`BlobErrorKind::Corrupt`] error instead of the end).
pub struct BlobRead {
    /// Bytes in all.
    pub size: u64,
    /// The bytes.
    pub chunks: BoxStream<'static, Result<Bytes, BlobError>>,
}

impl BlobRead {
    /// Bytes already read (and checked).
    pub fn whole(bytes: Vec<u8>) -> Self {
        BlobRead {
            size: bytes.len() as u64,
            chunks: Box::pin(futures_util::stream::once(
                async move { Ok(Bytes::from(bytes)) },
            )),
        }
    }

    /// The `size` bytes of `reader`, [`READ_CHUNK`] at a time, checked
    /// against `name` as they go. The last chunk is held back until the
    /// check: changed bytes never arrive whole.
    pub fn checked(
        name: String,
        size: u64,
        reader: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    ) -> Self {
        struct Reading<R> {
            reader: R,
            /// `None` once the end (or an error) was given.
            hasher: Option<Sha256>,
            /// The chunk read last, sent once the next one is read.
            held: Option<Bytes>,
            name: String,
        }
        let start = Reading {
            reader,
            hasher: Some(Sha256::new()),
            held: None,
            name,
        };
        let chunks = futures_util::stream::unfold(start, |mut state| async move {
            loop {
                let hasher = state.hasher.as_mut()?;
                let mut chunk = vec![0u8; READ_CHUNK];
                match state.reader.read(&mut chunk).await {
                    Ok(0) => {
                        let digest = hex::encode(state.hasher.take()?.finalize());
                        if digest == state.name {
                            return state.held.take().map(|last| (Ok(last), state));
                        }
                        let error = blob_error(
                            BlobErrorKind::Corrupt,
                            format!("the bytes read under {} have another hash", state.name),
                        );
                        return Some((Err(error), state));
                    }
                    Ok(n) => {
                        chunk.truncate(n);
                        hasher.update(&chunk);
                        if let Some(ready) = state.held.replace(Bytes::from(chunk)) {
                            return Some((Ok(ready), state));
                        }
                    }
                    Err(e) => {
                        state.hasher = None;
                        let error = blob_error(
                            BlobErrorKind::Io,
                            format!("cannot read {}: {e}", state.name),
                        );
                        return Some((Err(error), state));
                    }
                }
            }
        });
        BlobRead {
            size,
            chunks: Box::pin(chunks),
        }
    }
}

/// Stores bytes under their sha256.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` and returns their hash; storing the same bytes again
    /// is a no-op.
    async fn put(&self, bytes: &[u8]) -> Result<String, BlobError>;

    /// [`put`](Self::put) of bytes the caller gives away: a store that
    /// hands large blobs to another thread saves a copy.
    async fn put_owned(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        self.put(&bytes).await
    }

    /// [`put_owned`](Self::put_owned) of bulk work that must not slow the
    /// answers (an upload): a store that hashes and writes large blobs
    /// itself does so on a thread at the background priority
    /// ([`crate::background`]).
    async fn put_in_background(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        self.put_owned(bytes).await
    }

    /// The bytes stored under `hash`, if any.
    async fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, BlobError>;

    /// The bytes under `hash` as they are read ([`BlobRead`]), if any: a
    /// chunk in memory at a time where the store can (by default, read
    /// whole first).
    async fn read(&self, hash: &str) -> Result<Option<BlobRead>, BlobError> {
        Ok(self.get(hash).await?.map(BlobRead::whole))
    }

    /// Whether a blob is stored under `hash` (without reading it, where
    /// the store can tell).
    async fn contains(&self, hash: &str) -> Result<bool, BlobError> {
        Ok(self.get(hash).await?.is_some())
    }

    /// Every stored blob, as the store lists them (a bounded number in
    /// memory at a time, in no particular order).
    async fn list(&self) -> Result<BoxStream<'static, Result<BlobEntry, BlobError>>, BlobError> {
        Err(blob_error(
            BlobErrorKind::Io,
            "this blob store cannot be listed",
        ))
    }

    /// Removes the blob under `hash` if it was last stored before
    /// `stored_before` (a put since keeps it); returns whether it went.
    async fn delete(
        &self,
        hash: &str,
        stored_before: std::time::SystemTime,
    ) -> Result<bool, BlobError> {
        let _ = (hash, stored_before);
        Err(blob_error(
            BlobErrorKind::Io,
            "this blob store cannot delete",
        ))
    }
}
