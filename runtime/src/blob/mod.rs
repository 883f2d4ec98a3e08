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
pub use nats::NatsBlobStore;

/// The blob store failed.
#[derive(Debug, thiserror::Error)]
#[error("blob store: {0}")]
pub struct BlobError(pub String);

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

    /// The bytes stored under `hash`, if any.
    async fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, BlobError>;
}
