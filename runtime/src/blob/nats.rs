//! [`NatsBlobStore`]: blobs in a NATS object store bucket, so a worker
//! needs nothing but the NATS URL.

use async_nats::jetstream::{self, object_store};
use async_trait::async_trait;
use tokio::io::AsyncReadExt;

use super::{BlobError, BlobErrorKind, BlobStore, blob_error, hash};

/// The bucket's name.
pub const BUCKET: &str = "sandmill-blobs";

/// Content-addressed blobs in the `sandmill-blobs` bucket.
#[derive(Clone)]
pub struct NatsBlobStore {
    bucket: object_store::ObjectStore,
}

impl NatsBlobStore {
    /// Opens (creating if needed) the bucket.
    pub async fn connect(client: async_nats::Client) -> Result<Self, BlobError> {
        let js = jetstream::new(client);
        let bucket = match js.get_object_store(BUCKET).await {
            Ok(bucket) => bucket,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: BUCKET.into(),
                    description: Some("Sandmill modules, inputs and outputs by sha256".into()),
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    blob_error(
                        BlobErrorKind::Unavailable,
                        format!("cannot create bucket {BUCKET}: {e}"),
                    )
                })?,
        };
        Ok(NatsBlobStore { bucket })
    }
}

#[async_trait]
impl BlobStore for NatsBlobStore {
    async fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let name = hash(bytes);
        if self.bucket.info(&name).await.is_ok() {
            return Ok(name);
        }
        let mut reader = bytes;
        self.bucket
            .put(name.as_str(), &mut reader)
            .await
            .map_err(|e| {
                blob_error(
                    BlobErrorKind::Unavailable,
                    format!("cannot store {name}: {e}"),
                )
            })?;
        Ok(name)
    }

    async fn contains(&self, name: &str) -> Result<bool, BlobError> {
        match self.bucket.info(name).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot look for {name}: {e}"),
            )),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let mut object = match self.bucket.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(blob_error(
                    BlobErrorKind::Unavailable,
                    format!("cannot read {name}: {e}"),
                ));
            }
        };
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(|e| {
            blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot read {name}: {e}"),
            )
        })?;
        if hash(&bytes) != name {
            return Err(blob_error(
                BlobErrorKind::Corrupt,
                format!("the bytes read under {name} have another hash"),
            ));
        }
        Ok(Some(bytes))
    }
}
