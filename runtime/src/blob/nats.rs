//! [`NatsBlobStore`]: blobs in NATS object store buckets, so a worker
//! needs nothing but the NATS URL.
//!
//! Two buckets, one per writer: the control plane's (`sandmill-blobs`:
//! modules, inputs, large parameters) and the workers' (`sandmill-results`:
//! outputs, logs, shuffle partitions). Each process writes only to its own
//! and reads both, so under the least-privilege NATS users a worker cannot
//! write over a module or an input. Every read is checked against the
//! blob's sha256.

use async_nats::jetstream::{self, object_store};
use async_trait::async_trait;
use tokio::io::AsyncReadExt;

use super::{BlobError, BlobErrorKind, BlobRead, BlobStore, blob_error, hash};

/// The control plane's bucket.
pub const BUCKET: &str = "sandmill-blobs";
/// The workers' bucket.
pub const RESULTS_BUCKET: &str = "sandmill-results";

/// Who writes through a store: which bucket is its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// `sandmill serve` (and `sandmill dev --nats`): writes `sandmill-blobs`.
    ControlPlane,
    /// `sandmill worker`: writes `sandmill-results`.
    Worker,
}

/// One bucket and its stream.
#[derive(Clone)]
struct Bucket {
    name: &'static str,
    store: object_store::ObjectStore,
    /// The bucket's stream, for reading one-chunk objects directly.
    stream: jetstream::stream::Stream,
}

/// Content-addressed blobs in the `sandmill-blobs` and `sandmill-results`
/// buckets.
#[derive(Clone)]
pub struct NatsBlobStore {
    /// Where this process writes (and looks first).
    own: Bucket,
    /// The other writer's bucket (read only).
    other: Bucket,
}

impl Bucket {
    /// Opens the bucket; the control plane creates it if missing (a worker
    /// may not, and waits for it).
    async fn open(
        js: &jetstream::Context,
        name: &'static str,
        description: &str,
        create: bool,
    ) -> Result<Bucket, BlobError> {
        let store = match js.get_object_store(name).await {
            Ok(store) => store,
            Err(e) if !create => {
                return Err(blob_error(
                    BlobErrorKind::Unavailable,
                    format!("cannot open bucket {name}: {e}"),
                ));
            }
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: name.into(),
                    description: Some(description.into()),
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    blob_error(
                        BlobErrorKind::Unavailable,
                        format!("cannot create bucket {name}: {e}"),
                    )
                })?,
        };
        let stream = js.get_stream(format!("OBJ_{name}")).await.map_err(|e| {
            blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot open the stream of bucket {name}: {e}"),
            )
        })?;
        Ok(Bucket {
            name,
            store,
            stream,
        })
    }

    /// An object of at most one chunk, read with two direct requests (its
    /// info, then its chunk) instead of through a consumer, which the
    /// object store creates per read: thousands of small reads a second
    /// (a subscription's messages) would otherwise run into the server's
    /// consumer limit. `None` if it is larger (or a link).
    async fn get_small(&self, name: &str) -> Result<Option<Option<Vec<u8>>>, BlobError> {
        let info = match self.store.info(name).await {
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
            let subject = format!("$O.{}.C.{}", self.name, info.nuid);
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

    /// The bytes under `name`, checked against it.
    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BlobError> {
        if let Some(small) = self.get_small(name).await? {
            return match small {
                Some(bytes) if hash(&bytes) != name => Err(self.corrupt(name)),
                other => Ok(other),
            };
        }
        let Some(mut object) = self.open_object(name).await? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(|e| {
            blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot read {name}: {e}"),
            )
        })?;
        if hash(&bytes) != name {
            return Err(self.corrupt(name));
        }
        Ok(Some(bytes))
    }

    /// The object under `name`, opened for reading, if any.
    async fn open_object(&self, name: &str) -> Result<Option<object_store::Object>, BlobError> {
        match self.store.get(name).await {
            Ok(object) => Ok(Some(object)),
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => Ok(None),
            Err(e) => Err(blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot read {name}: {e}"),
            )),
        }
    }

    /// The error of bytes read under `name` that have another hash.
    fn corrupt(&self, name: &str) -> BlobError {
        blob_error(
            BlobErrorKind::Corrupt,
            format!(
                "the bytes read under {name} in {} have another hash",
                self.name
            ),
        )
    }

    /// [`get`](Self::get) as it is read: a large object a chunk at a time.
    async fn read(&self, name: &str) -> Result<Option<BlobRead>, BlobError> {
        if let Some(small) = self.get_small(name).await? {
            return match small {
                Some(bytes) if hash(&bytes) != name => Err(self.corrupt(name)),
                other => Ok(other.map(BlobRead::whole)),
            };
        }
        let Some(object) = self.open_object(name).await? else {
            return Ok(None);
        };
        let size = object.info.size as u64;
        Ok(Some(BlobRead::checked(name.to_owned(), size, object)))
    }

    async fn contains(&self, name: &str) -> Result<bool, BlobError> {
        match self.store.info(name).await {
            Ok(info) => Ok(!info.deleted),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot look for {name}: {e}"),
            )),
        }
    }
}

impl NatsBlobStore {
    /// Opens both buckets, writing to `writer`'s own; the control plane
    /// creates them if missing.
    pub async fn connect(client: async_nats::Client, writer: Writer) -> Result<Self, BlobError> {
        let js = jetstream::new(client);
        let create = writer == Writer::ControlPlane;
        let blobs = Bucket::open(
            &js,
            BUCKET,
            "Sandmill modules, inputs and parameters by sha256 (written by the control plane)",
            create,
        )
        .await?;
        let results = Bucket::open(
            &js,
            RESULTS_BUCKET,
            "Sandmill outputs, logs and shuffle partitions by sha256 (written by workers)",
            create,
        )
        .await?;
        Ok(match writer {
            Writer::ControlPlane => NatsBlobStore {
                own: blobs,
                other: results,
            },
            Writer::Worker => NatsBlobStore {
                own: results,
                other: blobs,
            },
        })
    }
}

#[async_trait]
impl BlobStore for NatsBlobStore {
    async fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let name = hash(bytes);
        if self.own.contains(&name).await? {
            return Ok(name);
        }
        let mut reader = bytes;
        self.own
            .store
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
        Ok(self.own.contains(name).await? || self.other.contains(name).await?)
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BlobError> {
        own_then_other(self.own.get(name).await, || self.other.get(name)).await
    }

    async fn read(&self, name: &str) -> Result<Option<BlobRead>, BlobError> {
        own_then_other(self.own.read(name).await, || self.other.read(name)).await
    }
}

/// What the own bucket answered, else the other's: when the own holds
/// nothing, or changed bytes (the other may hold them intact).
async fn own_then_other<T, F>(
    own: Result<Option<T>, BlobError>,
    other: impl FnOnce() -> F,
) -> Result<Option<T>, BlobError>
where
    F: std::future::Future<Output = Result<Option<T>, BlobError>>,
{
    match own {
        Ok(Some(found)) => Ok(Some(found)),
        Ok(None) => other().await,
        Err(error) if error.kind() == BlobErrorKind::Corrupt => match other().await {
            Ok(Some(found)) => Ok(Some(found)),
            _ => Err(error),
        },
        Err(error) => Err(error),
    }
}
