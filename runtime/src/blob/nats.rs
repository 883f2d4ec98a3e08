//! [`NatsBlobStore`]: blobs in NATS object store buckets, so a worker
//! needs nothing but the NATS URL.
//!
//! Two buckets, one per writer: the control plane's (`sandmill-blobs`:
//! modules, inputs, large parameters) and the workers' (`sandmill-results`:
//! outputs, logs, shuffle partitions). Each process writes only to its own
//! and reads both, so under the least-privilege NATS users a worker cannot
//! write over a module or an input. Every read is checked against the
//! blob's sha256.

use std::time::SystemTime;

use async_nats::jetstream::{self, object_store};
use async_trait::async_trait;
use base64::Engine;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::AsyncReadExt;

use super::{
    BlobEntry, BlobError, BlobErrorKind, BlobRead, BlobStore, RENEW_AFTER, blob_error, hash,
    is_name,
};

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
    js: jetstream::Context,
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
            js: js.clone(),
        })
    }

    /// The subject of an object's info.
    fn meta_subject(&self, name: &str) -> String {
        format!(
            "$O.{}.M.{}",
            self.name,
            base64::engine::general_purpose::URL_SAFE.encode(name)
        )
    }

    /// An object's info, if it is stored (not deleted).
    async fn info(&self, name: &str) -> Result<Option<object_store::ObjectInfo>, BlobError> {
        match self.store.info(name).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => Ok(Some(info)),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot look for {name}: {e}"),
            )),
        }
    }

    /// Renews a stored object's time if it is older than [`RENEW_AFTER`]
    /// (its info published again, chunks untouched); whether it is
    /// stored.
    async fn renew(&self, name: &str) -> Result<bool, BlobError> {
        let Some(mut info) = self.info(name).await? else {
            return Ok(false);
        };
        if stored_at(&info)
            .elapsed()
            .is_ok_and(|age| age < RENEW_AFTER)
        {
            return Ok(true);
        }
        info.modified = Some(SystemTime::now().into());
        let unavailable = |e: &dyn std::fmt::Display| {
            blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot renew {name}: {e}"),
            )
        };
        let payload = serde_json::to_vec(&info).map_err(|e| unavailable(&e))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        self.js
            .publish_with_headers(self.meta_subject(name), headers, payload.into())
            .await
            .map_err(|e| unavailable(&e))?
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(true)
    }

    /// Refuses `size` more bytes when the bucket's byte limit leaves no
    /// room for them, before a chunk is written: a put that fails part-way
    /// leaves its chunks behind, named by nothing. (Puts at once from
    /// several processes can still meet the limit part-way; the stream's
    /// own limit holds then.)
    async fn room_for(&self, size: usize) -> Result<(), BlobError> {
        let info = self.stream.get_info().await.map_err(|e| {
            blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot read the state of bucket {}: {e}", self.name),
            )
        })?;
        let limit = match u64::try_from(info.config.max_bytes) {
            Ok(limit) if limit > 0 => limit,
            _ => return Ok(()),
        };
        let free = limit.saturating_sub(info.state.bytes);
        if stored_bytes(size) > free {
            return Err(self.full(&format!(
                "{size} more bytes do not fit in the {free} left of its {limit}"
            )));
        }
        Ok(())
    }

    /// The error of a bucket at its byte limit.
    fn full(&self, detail: &str) -> BlobError {
        let flag = if self.name == BUCKET {
            "--blobs-max-bytes"
        } else {
            "--results-max-bytes"
        };
        blob_error(
            BlobErrorKind::Full,
            format!(
                "bucket {} is full: {detail} (`sandmill serve {flag}`; blobs nothing names go after `--blob-grace`)",
                self.name
            ),
        )
    }

    /// The bucket's stream configuration with `max_bytes` as its byte
    /// limit (`None`: none but the server's), if that is a change. One
    /// below what it holds is refused: lowering a stream's limit under its
    /// bytes would drop its oldest chunks, of blobs still named.
    async fn limited(
        &self,
        max_bytes: Option<u64>,
    ) -> Result<Option<jetstream::stream::Config>, BlobError> {
        let info = self.stream.get_info().await.map_err(|e| {
            blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot read the state of bucket {}: {e}", self.name),
            )
        })?;
        let wanted = max_bytes.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        if info.config.max_bytes == wanted {
            return Ok(None);
        }
        if let Some(limit) = max_bytes
            && info.state.bytes > limit
        {
            return Err(self.full(&format!(
                "it holds {} bytes, more than the limit of {limit} asked for",
                info.state.bytes
            )));
        }
        Ok(Some(jetstream::stream::Config {
            max_bytes: wanted,
            ..info.config
        }))
    }

    /// Every stored object of the bucket.
    async fn list(&self) -> Result<BoxStream<'static, Result<BlobEntry, BlobError>>, BlobError> {
        let bucket = self.name;
        let list = self.store.list().await.map_err(|e| {
            blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot list bucket {bucket}: {e}"),
            )
        })?;
        Ok(Box::pin(list.filter_map(move |info| async move {
            match info {
                Ok(info) if info.deleted || !is_name(&info.name) => None,
                Ok(info) => Some(Ok(BlobEntry {
                    stored_at: stored_at(&info),
                    hash: info.name,
                    size: info.size as u64,
                })),
                Err(e) => Some(Err(blob_error(
                    BlobErrorKind::Unavailable,
                    format!("cannot list bucket {bucket}: {e}"),
                ))),
            }
        })))
    }

    /// Removes an object last stored before `stored_before`: its chunks,
    /// then its info (no tombstone is left).
    async fn delete(&self, name: &str, stored_before: SystemTime) -> Result<bool, BlobError> {
        let Some(info) = self.info(name).await? else {
            return Ok(false);
        };
        if stored_at(&info) >= stored_before {
            return Ok(false);
        }
        let unavailable = |e: &dyn std::fmt::Display| {
            blob_error(
                BlobErrorKind::Unavailable,
                format!("cannot delete {name} from {}: {e}", self.name),
            )
        };
        self.stream
            .purge()
            .filter(self.meta_subject(name))
            .await
            .map_err(|e| unavailable(&e))?;
        self.stream
            .purge()
            .filter(format!("$O.{}.C.{}", self.name, info.nuid))
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(true)
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

    /// Sets the byte limits of the control plane's bucket and the
    /// workers' (`None`: none but the nats-server's store); a put that
    /// would pass one fails as [`BlobErrorKind::Full`]. A limit below what
    /// a bucket holds is refused, changing nothing.
    pub async fn set_limits(
        &self,
        blobs: Option<u64>,
        results: Option<u64>,
    ) -> Result<(), BlobError> {
        let (blobs_bucket, results_bucket) = if self.own.name == BUCKET {
            (&self.own, &self.other)
        } else {
            (&self.other, &self.own)
        };
        // Both checked before either changes.
        let mut changes = Vec::new();
        for (bucket, limit) in [(blobs_bucket, blobs), (results_bucket, results)] {
            if let Some(config) = bucket.limited(limit).await? {
                changes.push(config);
            }
        }
        for config in changes {
            self.own.js.update_stream(config).await.map_err(|e| {
                blob_error(
                    BlobErrorKind::Unavailable,
                    format!("cannot set the byte limit of a bucket: {e}"),
                )
            })?;
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for NatsBlobStore {
    async fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let name = hash(bytes);
        if self.own.renew(&name).await? {
            return Ok(name);
        }
        self.own.room_for(bytes.len()).await?;
        let mut reader = bytes;
        self.own
            .store
            .put(name.as_str(), &mut reader)
            .await
            .map_err(|e| {
                // The stream's own limit, met by puts at once.
                if e.to_string().contains("maximum bytes exceeded") {
                    self.own.full(&format!("storing {name}: {e}"))
                } else {
                    blob_error(
                        BlobErrorKind::Unavailable,
                        format!("cannot store {name}: {e}"),
                    )
                }
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

    async fn list(&self) -> Result<BoxStream<'static, Result<BlobEntry, BlobError>>, BlobError> {
        Ok(Box::pin(
            self.own.list().await?.chain(self.other.list().await?),
        ))
    }

    async fn delete(&self, name: &str, stored_before: SystemTime) -> Result<bool, BlobError> {
        let own = self.own.delete(name, stored_before).await?;
        let other = self.other.delete(name, stored_before).await?;
        Ok(own || other)
    }
}

/// Bytes a put of `size` bytes adds to a bucket's stream, at most: its
/// chunks (128 KiB each) with their subjects and headers, and its info.
fn stored_bytes(size: usize) -> u64 {
    const CHUNK: u64 = 128 * 1024;
    let size = size as u64;
    size + (size / CHUNK + 1) * 160 + 1024
}

/// When an object was last stored (the epoch if its info does not say).
fn stored_at(info: &object_store::ObjectInfo) -> SystemTime {
    info.modified
        .map_or(SystemTime::UNIX_EPOCH, SystemTime::from)
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
