//! Client-side helpers shared by `cobble-worker` and `cobble`: connecting
//! to a coordinator, uploading files as blobs and downloading blobs with
//! their hash verified before anything uses them.

use cobble_core::BlobHash;
use cobble_core::auth::{BEARER_PREFIX, HOST_ID_HEADER, HOST_KEY_HEADER, RESEARCHER_HEADER};
use cobble_proto::v1::{self as pb, blob_service_client::BlobServiceClient};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Bytes per upload message: well under gRPC's 4 MiB message limit.
pub const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("coordinator address {url:?} is not a valid URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot reach the coordinator at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("coordinator: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("blob {expected} failed verification: the bytes received hash to {actual}")]
    HashMismatch {
        expected: BlobHash,
        actual: BlobHash,
    },
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Who a client speaks as.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// Public calls only: project info, job status, the leaderboard.
    #[default]
    Anonymous,
    /// A researcher holding the project's researcher token.
    Researcher(String),
    /// An attached host.
    Host { id: i64, key: String },
}

/// A channel to a coordinator plus the credentials every request carries.
#[derive(Debug, Clone)]
pub struct Connection {
    channel: Channel,
    credentials: Credentials,
}

impl Connection {
    /// Connects to a coordinator URL such as `http://127.0.0.1:7710`.
    pub async fn open(url: &str, credentials: Credentials) -> Result<Self, Error> {
        Ok(Connection {
            channel: connect(url).await?,
            credentials,
        })
    }

    /// Uses a channel opened earlier, e.g. before the host had credentials.
    pub fn from_channel(channel: Channel, credentials: Credentials) -> Self {
        Connection {
            channel,
            credentials,
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Wraps a message in a request carrying this connection's credentials.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        match &self.credentials {
            Credentials::Anonymous => {}
            Credentials::Researcher(token) => {
                if let Ok(value) = MetadataValue::try_from(format!("{BEARER_PREFIX}{token}")) {
                    metadata.insert(RESEARCHER_HEADER, value);
                }
            }
            Credentials::Host { id, key } => {
                if let Ok(value) = MetadataValue::try_from(id.to_string()) {
                    metadata.insert(HOST_ID_HEADER, value);
                }
                if let Ok(value) = MetadataValue::try_from(key.as_str()) {
                    metadata.insert(HOST_KEY_HEADER, value);
                }
            }
        }
        request
    }

    fn blobs(&self) -> BlobServiceClient<Channel> {
        BlobServiceClient::new(self.channel.clone())
    }

    /// Uploads a file unless the coordinator already holds it.
    pub async fn upload_file(&self, path: &Path) -> Result<pb::BlobRef, Error> {
        let blob = hash_file(path).await?;
        let mut client = self.blobs();
        let missing = client
            .has_blobs(self.request(pb::HasBlobsRequest {
                hashes: vec![blob.hash.clone()],
            }))
            .await?
            .into_inner()
            .missing;
        if missing.is_empty() {
            return Ok(blob);
        }
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(io(format!("opening {}", path.display())))?;
        // A reader task feeds the request stream, so a large file is never held
        // whole in memory; a read error ends the stream short and the
        // coordinator refuses the incomplete upload.
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let expected = blob.clone();
        let reader = tokio::spawn(async move {
            let mut first = true;
            loop {
                let mut buffer = vec![0u8; CHUNK_BYTES];
                let read = file.read(&mut buffer).await?;
                if read == 0 && !first {
                    return Ok(());
                }
                buffer.truncate(read);
                let chunk = pb::BlobChunk {
                    expected: first.then(|| expected.clone()),
                    data: buffer,
                };
                first = false;
                if sender.send(chunk).await.is_err() || read == 0 {
                    return Ok::<(), std::io::Error>(());
                }
            }
        });
        let uploaded = client
            .upload_blob(self.request(tokio_stream::wrappers::ReceiverStream::new(receiver)))
            .await;
        let read = reader.await.map_err(|e| Error::Io {
            context: format!("reading {}", path.display()),
            source: std::io::Error::other(e),
        })?;
        read.map_err(io(format!("reading {}", path.display())))?;
        uploaded?;
        Ok(blob)
    }

    /// Uploads bytes held in memory.
    pub async fn upload_bytes(&self, bytes: &[u8]) -> Result<pb::BlobRef, Error> {
        let blob = pb::BlobRef {
            hash: BlobHash::of(bytes).0.to_vec(),
            size: bytes.len() as u64,
            chunk_root: Vec::new(),
        };
        let mut chunks: Vec<pb::BlobChunk> = bytes
            .chunks(CHUNK_BYTES)
            .map(|data| pb::BlobChunk {
                expected: None,
                data: data.to_vec(),
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(pb::BlobChunk::default());
        }
        chunks[0].expected = Some(blob.clone());
        self.blobs()
            .upload_blob(self.request(tokio_stream::iter(chunks)))
            .await?;
        Ok(blob)
    }

    /// Downloads a blob to `destination`, verifying its hash before the file
    /// appears under that name: a corrupt or forged blob is never visible.
    pub async fn download_verified(
        &self,
        hash: &BlobHash,
        destination: &Path,
    ) -> Result<u64, Error> {
        let temporary = partial_path(destination);
        let result = self.download_to(hash, &temporary).await;
        match result {
            Ok(size) => {
                tokio::fs::rename(&temporary, destination)
                    .await
                    .map_err(io(format!("publishing {}", destination.display())))?;
                Ok(size)
            }
            Err(error) => {
                tokio::fs::remove_file(&temporary).await.ok();
                Err(error)
            }
        }
    }

    async fn download_to(&self, hash: &BlobHash, path: &Path) -> Result<u64, Error> {
        let mut stream = self
            .blobs()
            .get_blob(self.request(pb::GetBlobRequest {
                hash: hash.0.to_vec(),
            }))
            .await?
            .into_inner();
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(io(format!("creating {}", path.display())))?;
        let mut hasher = blake3::Hasher::new();
        while let Some(chunk) = stream.message().await? {
            hasher.update(&chunk.data);
            file.write_all(&chunk.data)
                .await
                .map_err(io(format!("writing {}", path.display())))?;
        }
        let actual = BlobHash::from(hasher.finalize());
        if actual != *hash {
            return Err(Error::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        file.sync_all()
            .await
            .map_err(io(format!("syncing {}", path.display())))?;
        Ok(hasher.count())
    }
}

/// Opens a channel to a coordinator URL such as `http://127.0.0.1:7710`.
pub async fn connect(url: &str) -> Result<Channel, Error> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let endpoint = Endpoint::from_shared(with_scheme.clone())
        .map_err(|e| Error::BadUrl {
            url: url.to_string(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(30)));
    endpoint.connect().await.map_err(|e| Error::Unreachable {
        url: with_scheme,
        message: e.to_string(),
    })
}

/// Hashes a file without holding it in memory.
pub async fn hash_file(path: &Path) -> Result<pb::BlobRef, Error> {
    let path = path.to_path_buf();
    let context = format!("reading {}", path.display());
    let (hash, size) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(&path)?)?;
        Ok((hasher.finalize(), hasher.count()))
    })
    .await
    .map_err(|e| Error::Io {
        context: context.clone(),
        source: std::io::Error::other(e),
    })?
    .map_err(io(context))?;
    Ok(pb::BlobRef {
        hash: hash.as_bytes().to_vec(),
        size,
        chunk_root: Vec::new(),
    })
}

fn partial_path(destination: &Path) -> PathBuf {
    let mut name = destination.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.partial", cobble_core::random_token()));
    destination.with_file_name(name)
}
