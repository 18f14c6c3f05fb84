//! The coordinator's content-addressed blob store (modules, inputs,
//! outputs), in one of two places:
//! - a local directory (the default): one file per blob under
//!   `<dir>/<first two hex digits>/<hash>`, written to a temporary name,
//!   fsync'd and renamed, so a crash never leaves a torn blob under its
//!   final name;
//! - an S3-compatible bucket (`--blob-store s3://bucket/prefix`), which
//!   several coordinators share: `blobs/<hash>`, put only once the upload
//!   has been checked against its hash (an S3 put appears whole or not at
//!   all), and `touched/<hash>`, the time a blob was last uploaded again.
//!
//! Either way an upload is first written to a local temporary file and
//! hashed as it arrives: nothing that does not match its hash is ever
//! stored.

mod http;

use crate::error::{Error, Result};
use cobble_core::BlobHash;
use cobble_core::chunk::{ChunkHasher, ChunkList, chunk_span};
use cobble_core::rate::Pacer;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_stream::StreamExt;

/// Uploads up to this size go to the bucket in one put; larger ones in
/// parts of this size (S3's minimum part is 5 MiB).
const PART_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct BlobStore {
    /// Local blobs, or (with a bucket) only the scratch space under `tmp/`.
    root: PathBuf,
    bucket: Option<Bucket>,
    /// Chunk lists computed so far (32 bytes per 256 KiB chunk), so a
    /// blob is hashed chunk by chunk once per coordinator run.
    chunk_lists: Arc<Mutex<HashMap<BlobHash, Arc<ChunkList>>>>,
    /// Paces the bytes served to workers (`--max-serve-bytes-per-sec`).
    pacer: Arc<Pacer>,
    /// Bytes served to workers by this process (metrics).
    served: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Clone)]
struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket/prefix`, for messages.
    url: String,
}

/// Where the blobs live, as the operator said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Directory(PathBuf),
    /// An S3 bucket, a key prefix in it (may be empty), the endpoint of an
    /// S3-compatible service (None: AWS itself), and the access key id and
    /// secret (None: the cloud's own ways, such as an instance's role).
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        keys: Option<(String, String)>,
    },
}

impl Location {
    /// Reads `--blob-store`: `s3://bucket[/prefix]` or a directory.
    pub fn parse(
        text: &str,
        endpoint: Option<String>,
        keys: Option<(String, String)>,
    ) -> Result<Location> {
        let Some(rest) = text.strip_prefix("s3://") else {
            if text.contains("://") {
                return Err(Error::InvalidArgument(format!(
                    "blob store {text:?}: only s3:// URLs and directories are supported"
                )));
            }
            if endpoint.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "blob store {text:?} is a directory: an endpoint is for s3:// stores"
                )));
            }
            return Ok(Location::Directory(PathBuf::from(text)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(Error::InvalidArgument(format!(
                "blob store {text:?}: {bucket:?} is not an S3 bucket name (3 to 63 lower-case letters, digits, '-' and '.')"
            )));
        }
        if endpoint.is_some() && keys.is_none() {
            // Without keys the client would ask the cloud's instance
            // metadata address, which an S3-compatible service is not.
            return Err(Error::InvalidArgument(format!(
                "blob store {text:?} with an endpoint: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )));
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
            keys,
        })
    }
}

/// An upload under way; becomes a blob only if its bytes hash as expected.
/// Dropped unfinished, it removes its temporary file.
#[derive(Debug)]
pub struct BlobWriter {
    file: tokio::fs::File,
    temporary: tempfile::TempPath,
    hasher: blake3::Hasher,
    chunks: ChunkHasher,
    written: u64,
}

/// A stored blob as a local file, for what needs a path (the validator
/// sandbox): the store's own file, or a copy fetched from the bucket that
/// is deleted when this is dropped.
#[derive(Debug)]
pub enum LocalBlob {
    Stored(PathBuf),
    Fetched(tempfile::TempPath),
}

impl LocalBlob {
    pub fn path(&self) -> &Path {
        match self {
            LocalBlob::Stored(path) => path,
            LocalBlob::Fetched(path) => path,
        }
    }
}

impl BlobStore {
    /// Opens the store; `scratch` holds temporary files (and, without a
    /// bucket, the blobs themselves).
    pub async fn open(location: Location, scratch: PathBuf) -> Result<Self> {
        let (root, bucket) = match location {
            Location::Directory(dir) => (dir, None),
            Location::S3 {
                bucket,
                prefix,
                endpoint,
                keys,
            } => (
                scratch,
                Some(Bucket::connect(bucket, prefix, endpoint, keys)?),
            ),
        };
        tokio::fs::create_dir_all(root.join("tmp"))
            .await
            .map_err(Error::io(format!("creating blob store {}", root.display())))?;
        let store = BlobStore {
            root,
            bucket,
            chunk_lists: Arc::default(),
            pacer: Arc::default(),
            served: Arc::default(),
        };
        if let Some(bucket) = &store.bucket {
            // A wrong bucket or key fails the start, not the first upload.
            let probe = bucket.store.list(Some(&Key::from("blobs"))).next().await;
            if let Some(Err(error)) = probe {
                return Err(Error::BlobStore {
                    context: format!("opening {}", bucket.url),
                    source: error,
                });
            }
        }
        Ok(store)
    }

    /// Limits what blob downloads and seed chunks send, in bytes per
    /// second (0: no limit), so serving volunteers cannot starve the
    /// project's other traffic.
    pub fn with_rate_limit(mut self, bytes_per_sec: u64) -> Self {
        self.pacer = Arc::new(Pacer::new(bytes_per_sec as f64));
        self
    }

    /// Bytes sent to workers so far by this process.
    pub fn bytes_served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `bytes` may be sent under the rate limit; counts them.
    pub async fn pace(&self, bytes: usize) {
        self.served
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        let wait = self.pacer.delay(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The chunk list of a stored blob, computed on first use.
    pub async fn chunk_list(&self, hash: &BlobHash) -> Result<Arc<ChunkList>> {
        let cached = self
            .chunk_lists
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned();
        if let Some(list) = cached {
            return Ok(list);
        }
        let list = match &self.bucket {
            None => {
                let path = self.path_of(hash);
                let missing = || Error::NotFound(format!("blob {hash} is not stored here"));
                tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&path)?;
                    let size = file.metadata()?.len();
                    ChunkList::of_reader(std::io::BufReader::new(file), size)
                })
                .await
                .map_err(|_| missing())?
                .map_err(|_| missing())?
            }
            Some(bucket) => {
                let mut stream = bucket.get(hash).await?.into_stream();
                let mut chunks = ChunkHasher::default();
                while let Some(piece) = stream.next().await {
                    chunks.update(&piece.map_err(bucket.failed(format!("reading blob {hash}")))?);
                }
                chunks.finish()
            }
        };
        Ok(self.remember(*hash, list))
    }

    fn remember(&self, hash: BlobHash, list: ChunkList) -> Arc<ChunkList> {
        let list = Arc::new(list);
        self.chunk_lists
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, list.clone());
        list
    }

    /// Reads chunk `index` of a stored blob of `size` bytes.
    pub async fn read_chunk(&self, hash: &BlobHash, size: u64, index: usize) -> Result<Vec<u8>> {
        let (offset, length) = chunk_span(size, index);
        self.read_range(hash, offset, length).await
    }

    /// Reads `length` bytes at `offset`; a blob shorter than that is an
    /// error, never a short answer.
    pub async fn read_range(&self, hash: &BlobHash, offset: u64, length: usize) -> Result<Vec<u8>> {
        if length == 0 {
            // S3 has no empty range; an empty blob is read as such.
            return Ok(Vec::new());
        }
        if let Some(bucket) = &self.bucket {
            let key = Bucket::blob_key(hash);
            let bytes = bucket
                .store
                .get_range(&key, offset..offset + length as u64)
                .await
                .map_err(bucket.failed(format!("reading blob {hash}")))?;
            if bytes.len() != length {
                return Err(Error::Corrupt(format!(
                    "blob {hash}: {} bytes read at {offset}, {length} expected",
                    bytes.len()
                )));
            }
            return Ok(bytes.to_vec());
        }
        let mut file = tokio::fs::File::open(self.path_of(hash))
            .await
            .map_err(|_| Error::NotFound(format!("blob {hash} is not stored here")))?;
        let mut data = vec![0u8; length];
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(Error::io(format!("reading blob {hash}")))?;
        file.read_exact(&mut data)
            .await
            .map_err(Error::io(format!("reading blob {hash}")))?;
        Ok(data)
    }

    /// A stored blob of `size` bytes as `(offset, bytes)` pieces of at
    /// most `piece` bytes, each read when taken and paced as it is sent:
    /// what every download streams. An empty blob is one empty piece.
    pub fn pieces(
        &self,
        hash: BlobHash,
        size: u64,
        piece: u64,
    ) -> impl tokio_stream::Stream<Item = Result<(u64, Vec<u8>)>> + Send + 'static {
        let blobs = self.clone();
        let offsets = (0..size.div_ceil(piece).max(1)).map(move |i| i * piece);
        tokio_stream::iter(offsets).then(move |offset| {
            let blobs = blobs.clone();
            async move {
                let length = (size - offset).min(piece) as usize;
                let data = blobs.read_range(&hash, offset, length).await?;
                blobs.pace(length).await;
                Ok((offset, data))
            }
        })
    }

    /// Where temporary files go: on the local blob store's file system,
    /// so a blob can be hard-linked there rather than copied.
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn path_of(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// The blob as a local file (fetched from the bucket if need be).
    pub async fn local(&self, hash: &BlobHash) -> Result<LocalBlob> {
        if self.bucket.is_none() {
            return Ok(LocalBlob::Stored(self.path_of(hash)));
        }
        let temporary = tempfile::Builder::new()
            .prefix("fetched-")
            .tempfile_in(self.scratch_dir())
            .map_err(Error::io("creating a file for a fetched blob"))?
            .into_temp_path();
        self.copy_to(hash, &temporary).await?;
        Ok(LocalBlob::Fetched(temporary))
    }

    /// Puts a copy of the blob at `path` (a hard link when it can: the
    /// reader gets it read-only, so the store is never at risk).
    pub async fn copy_to(&self, hash: &BlobHash, path: &Path) -> Result<()> {
        let Some(bucket) = &self.bucket else {
            let source = self.path_of(hash);
            tokio::fs::remove_file(path).await.ok();
            if tokio::fs::hard_link(&source, path).await.is_err() {
                tokio::fs::copy(&source, path)
                    .await
                    .map_err(Error::io(format!("copying {}", source.display())))?;
            }
            return Ok(());
        };
        let mut stream = bucket.get(hash).await?.into_stream();
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(Error::io(format!("creating {}", path.display())))?;
        let mut hasher = blake3::Hasher::new();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(bucket.failed(format!("reading blob {hash}")))?;
            hasher.update(&piece);
            file.write_all(&piece)
                .await
                .map_err(Error::io(format!("writing {}", path.display())))?;
        }
        file.flush()
            .await
            .map_err(Error::io(format!("writing {}", path.display())))?;
        // The bucket is trusted no more than a disk: what it returns must
        // be what was stored.
        if BlobHash::from(hasher.finalize()) != *hash {
            return Err(Error::Corrupt(format!(
                "blob {hash} in {} does not match its hash",
                bucket.url
            )));
        }
        Ok(())
    }

    /// Every stored blob that was last written before `before` (Unix ms).
    pub async fn older_than(&self, before: i64) -> Result<Vec<BlobHash>> {
        if let Some(bucket) = &self.bucket {
            return bucket.older_than(before).await;
        }
        let root = self.root.clone();
        // Walking the store is a few thousand stats: off the runtime.
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let Ok(prefixes) = std::fs::read_dir(&root) else {
                return found;
            };
            for prefix in prefixes.flatten() {
                let Ok(entries) = std::fs::read_dir(prefix.path()) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(hash) = name.to_str().and_then(|n| BlobHash::from_hex(n).ok()) else {
                        continue;
                    };
                    let written_ms = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(i64::MAX, |d| d.as_millis() as i64);
                    if written_ms < before {
                        found.push(hash);
                    }
                }
            }
            found
        })
        .await
        .map_err(|e| Error::Corrupt(format!("listing blobs: {e}")))
    }

    /// Marks a blob as just written: an upload that found it already here
    /// must not lose it to the collection of unreferenced blobs before the
    /// job or report that names it arrives.
    pub async fn touch(&self, hash: &BlobHash) -> Result<()> {
        if let Some(bucket) = &self.bucket {
            return bucket
                .store
                .put(&Bucket::touch_key(hash), PutPayload::new())
                .await
                .map(|_| ())
                .map_err(bucket.failed(format!("refreshing blob {hash}")));
        }
        let path = self.path_of(hash);
        let touched = tokio::task::spawn_blocking(move || {
            std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|file| file.set_modified(std::time::SystemTime::now()))
        })
        .await;
        if !matches!(touched, Ok(Ok(()))) {
            tracing::warn!(%hash, "cannot refresh a blob's time");
        }
        Ok(())
    }

    /// Deletes a blob; returns the bytes freed (0 if it was not there).
    pub async fn remove(&self, hash: &BlobHash) -> Result<u64> {
        let size = self.size_of(hash).await?.unwrap_or(0);
        if let Some(bucket) = &self.bucket {
            for key in [Bucket::blob_key(hash), Bucket::touch_key(hash)] {
                match bucket.store.delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(error) => {
                        return Err(Error::BlobStore {
                            context: format!("deleting blob {hash}"),
                            source: error,
                        });
                    }
                }
            }
        } else if tokio::fs::remove_file(self.path_of(hash)).await.is_err() {
            return Ok(0);
        }
        self.chunk_lists
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
        Ok(size)
    }

    pub async fn contains(&self, hash: &BlobHash) -> Result<bool> {
        Ok(self.size_of(hash).await?.is_some())
    }

    /// Size of a stored blob, or None; an unreachable bucket is an error,
    /// not an absence.
    pub async fn size_of(&self, hash: &BlobHash) -> Result<Option<u64>> {
        if let Some(bucket) = &self.bucket {
            return match bucket.store.head(&Bucket::blob_key(hash)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(source) => Err(Error::BlobStore {
                    context: format!("looking up blob {hash}"),
                    source,
                }),
            };
        }
        Ok(tokio::fs::metadata(self.path_of(hash))
            .await
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len()))
    }

    pub async fn writer(&self) -> Result<BlobWriter> {
        let temporary = self
            .scratch_dir()
            .join(format!("{}.partial", cobble_core::random_token()));
        let file = tokio::fs::File::create(&temporary)
            .await
            .map_err(Error::io("creating upload file"))?;
        Ok(BlobWriter {
            file,
            temporary: tempfile::TempPath::try_from_path(temporary)
                .map_err(Error::io("naming upload file"))?,
            hasher: blake3::Hasher::new(),
            chunks: ChunkHasher::default(),
            written: 0,
        })
    }

    /// Stores bytes held in memory (small blobs, tests).
    pub async fn put(&self, bytes: &[u8]) -> Result<BlobHash> {
        let mut writer = self.writer().await?;
        writer.write(bytes).await?;
        let hash = BlobHash::of(bytes);
        writer.finish(self, &hash, bytes.len() as u64).await?;
        Ok(hash)
    }

    pub async fn read(&self, hash: &BlobHash) -> Result<Vec<u8>> {
        if let Some(bucket) = &self.bucket {
            let bytes = bucket
                .get(hash)
                .await?
                .bytes()
                .await
                .map_err(bucket.failed(format!("reading blob {hash}")))?;
            return Ok(bytes.to_vec());
        }
        tokio::fs::read(self.path_of(hash))
            .await
            .map_err(|_| Error::NotFound(format!("blob {hash} is not stored here")))
    }
}

impl Bucket {
    fn connect(
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        keys: Option<(String, String)>,
    ) -> Result<Bucket> {
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        // The region, a session token and the like come from the usual
        // AWS_* variables.
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_http_connector(http::Connector::new()?)
            // A caller waits seconds for a bucket that is down, then gets
            // UNAVAILABLE and retries itself (the default waits 3 minutes).
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
            });
        if let Some((id, secret)) = keys {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|source| Error::BlobStore {
            context: format!("configuring {url}"),
            source,
        })?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                store,
                prefix.as_str(),
            ))
        };
        Ok(Bucket { store, url })
    }

    fn blob_key(hash: &BlobHash) -> Key {
        Key::from(format!("blobs/{}", hash.to_hex()))
    }

    fn touch_key(hash: &BlobHash) -> Key {
        Key::from(format!("touched/{}", hash.to_hex()))
    }

    fn failed(&self, context: String) -> impl FnOnce(object_store::Error) -> Error {
        move |source| match source {
            object_store::Error::NotFound { .. } => {
                Error::NotFound(format!("{context}: not stored"))
            }
            source => Error::BlobStore { context, source },
        }
    }

    async fn get(&self, hash: &BlobHash) -> Result<object_store::GetResult> {
        self.store
            .get(&Bucket::blob_key(hash))
            .await
            .map_err(self.failed(format!("reading blob {hash}")))
    }

    async fn older_than(&self, before: i64) -> Result<Vec<BlobHash>> {
        let mut touched = HashMap::new();
        let mut listing = self.store.list(Some(&Key::from("touched")));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(self.failed("listing blobs".into()))?;
            if let Some(hash) = meta
                .location
                .filename()
                .and_then(|n| BlobHash::from_hex(n).ok())
            {
                touched.insert(hash, meta.last_modified.timestamp_millis());
            }
        }
        let mut found = Vec::new();
        let mut listing = self.store.list(Some(&Key::from("blobs")));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(self.failed("listing blobs".into()))?;
            let Some(hash) = meta
                .location
                .filename()
                .and_then(|n| BlobHash::from_hex(n).ok())
            else {
                continue;
            };
            let written = meta
                .last_modified
                .timestamp_millis()
                .max(touched.get(&hash).copied().unwrap_or(i64::MIN));
            if written < before {
                found.push(hash);
            }
        }
        Ok(found)
    }

    /// Sends a checked upload from its local file: one put, or parts.
    async fn upload(&self, hash: &BlobHash, local: &Path, size: u64) -> Result<()> {
        let key = Bucket::blob_key(hash);
        let failed = || self.failed(format!("storing blob {hash}"));
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(Error::io("reading upload"))?;
        if size <= PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .await
                .map_err(Error::io("reading upload"))?;
            self.store
                .put(&key, PutPayload::from(bytes))
                .await
                .map_err(failed())?;
            return Ok(());
        }
        let upload = self.store.put_multipart(&key).await.map_err(failed())?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = match file.read(&mut buffer).await {
                Ok(read) => read,
                Err(source) => {
                    parts.abort().await.ok();
                    return Err(Error::Io {
                        context: "reading upload".into(),
                        source,
                    });
                }
            };
            if read == 0 {
                break;
            }
            // At most a few parts in flight: memory stays bounded.
            if let Err(error) = parts.wait_for_capacity(4).await {
                return Err(failed()(error));
            }
            parts.write(&buffer[..read]);
        }
        parts.finish().await.map_err(failed())?;
        Ok(())
    }
}

impl BlobWriter {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.chunks.update(bytes);
        self.written += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .await
            .map_err(Error::io("writing upload"))
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the upload against what the sender promised and publishes
    /// it. On any error the temporary file goes with the writer.
    pub async fn finish(self, store: &BlobStore, expected: &BlobHash, size: u64) -> Result<()> {
        let BlobWriter {
            mut file,
            temporary,
            hasher,
            chunks,
            written,
        } = self;
        let actual = BlobHash::from(hasher.finalize());
        if actual != *expected || written != size {
            return Err(Error::InvalidArgument(format!(
                "upload does not match its declared hash and size: declared {expected} ({size} bytes), received {actual} ({written} bytes)"
            )));
        }
        // tokio's File reports a failed write (a full disk) at the next
        // write or flush, not at sync_all: without the flush, a short file
        // would be published under the hash of what was sent.
        let on_disk = async {
            file.flush().await?;
            file.sync_all().await?;
            file.metadata().await.map(|m| m.len())
        }
        .await
        .map_err(Error::io("writing upload"))?;
        drop(file);
        if on_disk != size {
            return Err(Error::Io {
                context: "writing upload".into(),
                source: std::io::Error::other(format!(
                    "{on_disk} bytes reached the disk of {size}"
                )),
            });
        }
        if let Some(bucket) = &store.bucket {
            bucket.upload(expected, &temporary, size).await?;
        } else {
            let destination = store.path_of(expected);
            if let Some(parent) = destination.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(Error::io("creating blob directory"))?;
            }
            tokio::fs::rename(&temporary, &destination)
                .await
                .map_err(Error::io("publishing blob"))?;
            sync_dir(destination.parent()).await;
        }
        store.remember(*expected, chunks.finish());
        Ok(())
    }
}

/// Makes a rename durable: the directory entry itself must reach the disk.
async fn sync_dir(dir: Option<&Path>) {
    if let Some(dir) = dir
        && let Ok(handle) = tokio::fs::File::open(dir).await
    {
        handle.sync_all().await.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_and_refuses_mismatched_uploads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let location = Location::Directory(dir.path().to_path_buf());
        let store = BlobStore::open(location, dir.path().to_path_buf())
            .await
            .expect("store");
        let hash = store.put(b"hello").await.expect("put");
        assert_eq!(store.read(&hash).await.expect("read"), b"hello");

        let mut writer = store.writer().await.expect("writer");
        writer.write(b"hellO").await.expect("write");
        let refused = writer.finish(&store, &BlobHash::of(b"other"), 5).await;
        assert!(matches!(refused, Err(Error::InvalidArgument(_))));
        assert!(!store.contains(&BlobHash::of(b"hellO")).await.expect("look"));
        let leftovers = std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count();
        assert_eq!(leftovers, 0, "a refused upload leaves nothing behind");

        let abandoned = store.writer().await.expect("writer");
        drop(abandoned);
        let leftovers = std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count();
        assert_eq!(leftovers, 0, "an abandoned upload leaves nothing behind");
    }

    #[test]
    fn blob_store_locations_are_checked() {
        assert_eq!(
            Location::parse("/srv/blobs", None, None).expect("dir"),
            Location::Directory("/srv/blobs".into())
        );
        assert_eq!(
            Location::parse("s3://cobble-blobs/project/a/", None, None).expect("s3"),
            Location::S3 {
                bucket: "cobble-blobs".into(),
                prefix: "project/a".into(),
                endpoint: None,
                keys: None,
            }
        );
        let endpoint = || Some("http://127.0.0.1:9000".to_string());
        assert!(Location::parse("/srv/blobs", endpoint(), None).is_err());
        assert!(
            Location::parse("s3://cobble-blobs", endpoint(), None).is_err(),
            "an endpoint without keys would send the client to the cloud's metadata address"
        );
        for bad in [
            "gs://bucket",
            "s3://",
            "s3://UPPER",
            "s3://a",
            "s3://bad_name/x",
        ] {
            assert!(
                matches!(
                    Location::parse(bad, None, None),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}
