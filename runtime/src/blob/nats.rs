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
    /// The bucket's stream, for reading one-chunk objects directly.
    stream: jetstream::stream::Stream,
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
        let stream = js.get_stream(format!("OBJ_{BUCKET}")).await.map_err(|e| {
            blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot open the stream of bucket {BUCKET}: {e}"),
            )
        })?;
        Ok(NatsBlobStore { bucket, stream })
    }

    /// An object of at most one chunk, read with two direct requests (its
    /// info, then its chunk) instead of through a consumer, which the
    /// object store creates per read: thousands of small reads a second
    /// (a subscription's messages) would otherwise run into the server's
    /// consumer limit. `None` if it is larger (or a link).
    async fn get_small(&self, name: &str) -> Result<Option<Option<Vec<u8>>>, BlobError> {
        let info = match self.bucket.info(name).await {
            Ok(info) => info,
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {
                return Ok(Some(None));
            }
            Err(e) => {
                return Err(blob_error(
                    BlobErrorKind::Unavailable,
                    format!("cannot read {name}: {e}"),
                ));
            }
        };
        if info.deleted {
            return Ok(Some(None));
        }
        if info.chunks > 1 || info.options.as_ref().is_some_and(|o| o.link.is_some()) {
            return Ok(None);
        }
        let bytes = if info.size == 0 {
            Vec::new()
        } else {
            let subject = format!("$O.{BUCKET}.C.{}", info.nuid);
            let message = self
                .stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .map_err(|e| {
                    blob_error(
                        BlobErrorKind::Unavailable,
                        format!("cannot read {name}: {e}"),
                    )
                })?;
            message.payload.to_vec()
        };
        Ok(Some(Some(bytes)))
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
        if let Some(small) = self.get_small(name).await? {
            return match small {
                Some(bytes) if hash(&bytes) != name => Err(blob_error(
                    BlobErrorKind::Corrupt,
                    format!("the bytes read under {name} have another hash"),
                )),
                other => Ok(other),
            };
        }
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
