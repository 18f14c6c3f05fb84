//! Client-side helpers shared by `cobble-worker` and `cobble`: connecting
//! to a coordinator, uploading files as blobs and downloading blobs with
//! their hash verified before anything uses them.

use cobble_core::BlobHash;
use cobble_core::auth::{BEARER_PREFIX, HOST_ID_HEADER, HOST_KEY_HEADER, RESEARCHER_HEADER};
use cobble_proto::v1::{self as pb, blob_service_client::BlobServiceClient};
pub use cobble_tls::{Fingerprint, Seen, Trust};
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
    /// The server's certificate is not the pinned one, or nothing vouches
    /// for it: retrying will not help.
    #[error("refusing the coordinator at {url}: {message}")]
    Certificate { url: String, message: String },
    #[error(
        "refusing plaintext {url}: {host} is not this machine, and host keys and tokens would \
         cross the network unencrypted. Use https://, or pass --insecure-plaintext if the link \
         is private"
    )]
    Plaintext { url: String, host: String },
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
    /// Connects to a coordinator URL such as `https://127.0.0.1:7710`.
    pub async fn open(
        url: &str,
        security: &Security,
        credentials: Credentials,
    ) -> Result<Self, Error> {
        Ok(Connection {
            channel: connect(url, security).await?,
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

/// How a client authenticates the coordinator it connects to.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The certificate's SHA-256 fingerprint, for a self-signed project:
    /// given by the user or pinned on first attach.
    pub fingerprint: Option<Fingerprint>,
    /// Without a fingerprint, accept a certificate no authority vouches
    /// for and record it in `seen`, for the caller to pin (a worker's first
    /// attach, like the project key).
    pub first_use: bool,
    /// Allow `http://` to hosts other than this machine.
    pub insecure_plaintext: bool,
    /// The certificate the coordinator showed.
    pub seen: Seen,
    /// Connect from this local address (tests that place hosts on
    /// different networks).
    pub local_address: Option<std::net::IpAddr>,
}

impl Security {
    /// Pinned to `fingerprint` when there is one, else the system's roots.
    pub fn pinned(fingerprint: Option<Fingerprint>, insecure_plaintext: bool) -> Security {
        Security {
            fingerprint,
            first_use: false,
            insecure_plaintext,
            seen: Seen::default(),
            local_address: None,
        }
    }

    fn trust(&self) -> Trust {
        match (self.fingerprint, self.first_use) {
            (Some(fingerprint), _) => Trust::Pinned(fingerprint),
            (None, true) => Trust::FirstUse,
            (None, false) => Trust::System,
        }
    }
}

/// Opens a channel to a coordinator URL such as `https://project.example:7710`
/// (no scheme means https). `http://` is refused unless the host is this
/// machine or the caller allows plaintext.
pub async fn connect(url: &str, security: &Security) -> Result<Channel, Error> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let bad = |message: String| Error::BadUrl {
        url: url.to_string(),
        message,
    };
    let uri: tonic::transport::Uri = with_scheme.parse().map_err(|e| bad(format!("{e}")))?;
    let host = uri.host().ok_or_else(|| bad("no host".into()))?.to_string();
    let tune = |endpoint: Endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
    };
    let unreachable = |message: String| Error::Unreachable {
        url: with_scheme.clone(),
        message,
    };
    match uri.scheme_str() {
        Some("https") => {
            let port = uri.port_u16().unwrap_or(443);
            let trust = security.trust();
            let config = cobble_tls::client_config(trust, security.seen.clone(), None)
                .map_err(|e| unreachable(e.to_string()))?;
            security.seen.clear();
            cobble_tls::connect_channel(
                &format!("{host}:{port}"),
                config,
                security.local_address,
                tune,
            )
            .await
            .map_err(|e| {
                let refused = match (trust, security.seen.get()) {
                    (Trust::Pinned(pinned), Some((shown, _))) => shown != pinned,
                    (Trust::System, Some((_, vouched))) => !vouched,
                    _ => false,
                };
                if refused {
                    Error::Certificate {
                        url: with_scheme.clone(),
                        message: e.to_string(),
                    }
                } else {
                    unreachable(e.to_string())
                }
            })
        }
        Some("http") => {
            if !security.insecure_plaintext && !is_loopback(&host) {
                return Err(Error::Plaintext {
                    url: with_scheme.clone(),
                    host,
                });
            }
            let endpoint =
                Endpoint::from_shared(with_scheme.clone()).map_err(|e| bad(e.to_string()))?;
            tune(endpoint)
                .connect()
                .await
                .map_err(|e| unreachable(cobble_tls::chain(&e)))
        }
        _ => Err(bad(
            "the scheme must be https:// (or http:// on this machine)".into(),
        )),
    }
}

/// Whether `host` (as a URL gives it) names this machine.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_this_machine_only() {
        for host in [
            "127.0.0.1",
            "127.3.2.1",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "192.168.1.1",
            "example.org",
            "localhost.example.org",
            "[::2]",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    /// Plaintext to another machine is refused before any byte is sent;
    /// to this machine it is allowed; an unknown scheme is a bad URL.
    #[tokio::test]
    async fn plaintext_only_to_this_machine_unless_allowed() {
        let strict = Security::default();
        let error = connect("http://192.0.2.1:7710", &strict)
            .await
            .expect_err("plaintext to another machine");
        assert!(matches!(error, Error::Plaintext { .. }), "{error}");
        assert!(
            error.to_string().contains("--insecure-plaintext"),
            "{error}"
        );
        let error = connect("ftp://127.0.0.1:7710", &strict)
            .await
            .expect_err("unknown scheme");
        assert!(matches!(error, Error::BadUrl { .. }), "{error}");
        // Allowed, it gets as far as the network (nothing listens on port 9).
        let allowed = Security {
            insecure_plaintext: true,
            ..Security::default()
        };
        let error = connect("http://127.0.0.1:9", &allowed)
            .await
            .expect_err("nothing listens");
        assert!(matches!(error, Error::Unreachable { .. }), "{error}");
        let error = connect("http://127.0.0.1:9", &strict)
            .await
            .expect_err("nothing listens");
        assert!(matches!(error, Error::Unreachable { .. }), "{error}");
    }
}
