//! The coordinator's content-addressed blob store: one file per blob under
//! `<data-dir>/blobs/<first two hex digits>/<hash>`, written to a temporary
//! name, fsync'd and renamed, so a crash never leaves a torn blob under its
//! final name and every stored blob matches its hash.

use crate::error::{Error, Result};
use cobble_core::BlobHash;
use cobble_core::chunk::{ChunkList, chunk_span};
use cobble_core::rate::Pacer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Chunk lists computed so far (32 bytes per 256 KiB chunk), so a
    /// blob is hashed chunk by chunk once per coordinator run.
    chunk_lists: Arc<Mutex<HashMap<BlobHash, Arc<ChunkList>>>>,
    /// Paces the bytes served to workers (`--max-serve-bytes-per-sec`).
    pacer: Arc<Pacer>,
}

/// An upload under way; becomes a blob only if its bytes hash as expected.
#[derive(Debug)]
pub struct BlobWriter {
    file: tokio::fs::File,
    temporary: PathBuf,
    hasher: blake3::Hasher,
    written: u64,
}

impl BlobStore {
    pub async fn open(root: PathBuf) -> Result<Self> {
        tokio::fs::create_dir_all(root.join("tmp"))
            .await
            .map_err(Error::io(format!("creating blob store {}", root.display())))?;
        Ok(BlobStore {
            root,
            chunk_lists: Arc::default(),
            pacer: Arc::default(),
        })
    }

    /// Limits what blob downloads and seed chunks send, in bytes per
    /// second (0: no limit), so serving volunteers cannot starve the
    /// project's other traffic.
    pub fn with_rate_limit(mut self, bytes_per_sec: u64) -> Self {
        self.pacer = Arc::new(Pacer::new(bytes_per_sec as f64));
        self
    }

    /// Waits until `bytes` may be sent under the rate limit.
    pub async fn pace(&self, bytes: usize) {
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
        let path = self.path_of(hash);
        let missing = || Error::NotFound(format!("blob {hash} is not stored here"));
        let list = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            ChunkList::of_reader(std::io::BufReader::new(file), size)
        })
        .await
        .map_err(|_| missing())?
        .map_err(|_| missing())?;
        let list = Arc::new(list);
        self.chunk_lists
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*hash, list.clone());
        Ok(list)
    }

    /// Reads chunk `index` of a stored blob of `size` bytes.
    pub async fn read_chunk(&self, hash: &BlobHash, size: u64, index: usize) -> Result<Vec<u8>> {
        let (offset, length) = chunk_span(size, index);
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

    /// Where temporary files go: on the blob store's file system, so a
    /// blob can be hard-linked there rather than copied.
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn path_of(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Every stored blob that was last written before `before` (Unix ms).
    pub async fn older_than(&self, before: i64) -> Result<Vec<BlobHash>> {
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
    pub async fn touch(&self, hash: &BlobHash) {
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
    }

    /// Deletes a blob; returns the bytes freed (0 if it was not there).
    pub async fn remove(&self, hash: &BlobHash) -> u64 {
        let path = self.path_of(hash);
        let size = self.size_of(hash).await.unwrap_or(0);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                if let Ok(mut lists) = self.chunk_lists.lock() {
                    lists.remove(hash);
                }
                size
            }
            Err(_) => 0,
        }
    }

    pub async fn contains(&self, hash: &BlobHash) -> bool {
        tokio::fs::metadata(self.path_of(hash))
            .await
            .map(|m| m.is_file())
            .unwrap_or(false)
    }

    /// Size of a stored blob, or None.
    pub async fn size_of(&self, hash: &BlobHash) -> Option<u64> {
        tokio::fs::metadata(self.path_of(hash))
            .await
            .ok()
            .map(|m| m.len())
    }

    pub async fn writer(&self) -> Result<BlobWriter> {
        let temporary = self
            .root
            .join("tmp")
            .join(format!("{}.partial", cobble_core::random_token()));
        let file = tokio::fs::File::create(&temporary)
            .await
            .map_err(Error::io("creating upload file"))?;
        Ok(BlobWriter {
            file,
            temporary,
            hasher: blake3::Hasher::new(),
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
        tokio::fs::read(self.path_of(hash))
            .await
            .map_err(|_| Error::NotFound(format!("blob {hash} is not stored here")))
    }
}

impl BlobWriter {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .await
            .map_err(Error::io("writing upload"))
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the upload against what the sender promised and publishes it.
    pub async fn finish(self, store: &BlobStore, expected: &BlobHash, size: u64) -> Result<()> {
        let actual = BlobHash::from(self.hasher.finalize());
        let written = self.written;
        if actual != *expected || written != size {
            self.discard().await;
            return Err(Error::InvalidArgument(format!(
                "upload does not match its declared hash and size: declared {expected} ({size} bytes), received {actual} ({written} bytes)"
            )));
        }
        // tokio's File reports a failed write (a full disk) at the next
        // write or flush, not at sync_all: without the flush, a short file
        // would be published under the hash of what was sent.
        let mut file = self.file;
        let written_out = async {
            file.flush().await?;
            file.sync_all().await?;
            file.metadata().await.map(|m| m.len())
        }
        .await;
        let on_disk = match written_out {
            Ok(length) => length,
            Err(source) => {
                drop(file);
                tokio::fs::remove_file(&self.temporary).await.ok();
                return Err(Error::Io {
                    context: "writing upload".into(),
                    source,
                });
            }
        };
        if on_disk != size {
            drop(file);
            tokio::fs::remove_file(&self.temporary).await.ok();
            return Err(Error::Io {
                context: "writing upload".into(),
                source: std::io::Error::other(format!(
                    "{on_disk} bytes reached the disk of {size}"
                )),
            });
        }
        drop(file);
        let destination = store.path_of(expected);
        if let Some(parent) = destination.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(Error::io("creating blob directory"))?;
        }
        tokio::fs::rename(&self.temporary, &destination)
            .await
            .map_err(Error::io("publishing blob"))?;
        sync_dir(destination.parent()).await;
        Ok(())
    }

    pub async fn discard(self) {
        drop(self.file);
        tokio::fs::remove_file(&self.temporary).await.ok();
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
        let store = BlobStore::open(dir.path().to_path_buf())
            .await
            .expect("store");
        let hash = store.put(b"hello").await.expect("put");
        assert_eq!(store.read(&hash).await.expect("read"), b"hello");

        let mut writer = store.writer().await.expect("writer");
        writer.write(b"hellO").await.expect("write");
        let refused = writer.finish(&store, &BlobHash::of(b"other"), 5).await;
        assert!(matches!(refused, Err(Error::InvalidArgument(_))));
        assert!(!store.contains(&BlobHash::of(b"hellO")).await);
        let leftovers = std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count();
        assert_eq!(leftovers, 0, "a refused upload leaves nothing behind");
    }
}
