//! Content-addressed blobs: modules, inputs, large outputs. A trait with a
//! directory implementation (the embedded mode); the NATS object store
//! implements the same trait.

mod dir;
mod local_copy;
mod nats;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

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

    /// The bytes stored under `hash`, if any.
    async fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, BlobError>;

    /// Whether a blob is stored under `hash` (without reading it, where
    /// the store can tell).
    async fn contains(&self, hash: &str) -> Result<bool, BlobError> {
        Ok(self.get(hash).await?.is_some())
    }
}
