//! Peer-to-peer input data. Every worker serves the blobs in its cache,
//! and the chunks it already has of blobs it is still downloading, to other
//! workers (`server`); and fetches its own inputs chunk by chunk from
//! several peers at once, falling back to the coordinator (`download`).
//!
//! Why chunk lists over tonic rather than iroh-blobs: the worker already
//! speaks gRPC to the coordinator, so the peer service adds no dependency;
//! a chunk list committed to by the signed manifest gives the same
//! per-chunk verification as BLAKE3 verified streaming; and downloading
//! from many peers at once, which iroh-blobs does not do yet, is the point.
//! What it lacks is NAT traversal: peers must reach each other directly
//! (a LAN, a lab or a cloud), and the coordinator serves everyone else.
//!
//! Who may fetch what: peers speak TLS, each worker with a self-signed
//! certificate of its own whose fingerprint the tracker hands out with its
//! address (callers pin it). A worker serves a blob only to a caller that
//! shows a capability for it (`cobble_core::capability`): signed by the
//! project key, short-lived, bound to the caller's host id and to the
//! certificate it connected with. Anyone else gets PermissionDenied and
//! learns nothing, not even whether the blob is here.

mod download;
mod schedule;
mod server;

pub use download::{Fetch, fetch};
pub use server::serve;

use crate::activity::Activity;
use crate::status::Transfers;
use cobble_core::BlobHash;
use cobble_core::chunk::{ChunkList, ChunkSet, chunk_span};
use cobble_core::rate::Pacer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, watch};

/// Status metadata a peer sets when it is busy for now (its owner is using
/// the machine, or every upload slot is taken): the downloader cools off
/// and tries it later rather than dropping it. Machine-readable, so no
/// program has to match an error's wording.
pub(crate) const BUSY_METADATA: &str = "x-cobble-peer-busy";

/// A status that says "busy, ask another peer".
pub(crate) fn busy(code: tonic::Code, message: &str) -> tonic::Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        BUSY_METADATA,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    tonic::Status::with_metadata(code, message, metadata)
}

/// Rewrites a chunk before it is served. Only the e2e crate's adversary
/// sets one, to prove that corrupt chunks are caught.
pub type ChunkFilter = Arc<dyn Fn(&mut Vec<u8>) + Send + Sync>;

/// A blob being downloaded: what of it can already be served.
#[derive(Debug)]
pub struct Partial {
    pub list: Arc<ChunkList>,
    pub have: Mutex<ChunkSet>,
    /// `<blob-dir>/<hash>.part`, written chunk by chunk at its offset.
    pub path: PathBuf,
}

/// Settings of the peer service, from the preferences.
#[derive(Debug, Clone)]
pub struct SharingPrefs {
    /// Uploads served at once; more callers are told to try another peer.
    pub upload_slots: usize,
    /// Upload bandwidth in bytes per second; 0 for no limit.
    pub max_bytes_sec_up: f64,
    /// Whether to serve while the owner uses the machine.
    pub serve_while_in_use: bool,
}

/// This worker's standing among peers: its TLS identity, and the key
/// capabilities must be signed with.
pub struct PeerTls {
    pub identity: cobble_tls::Identity,
    pub project_key: ed25519_dalek::VerifyingKey,
}

impl PeerTls {
    /// Loads this worker's peer certificate from the data dir, making a
    /// self-signed one on first start.
    pub fn load_or_create(
        data_dir: &Path,
        project_key: ed25519_dalek::VerifyingKey,
    ) -> crate::error::Result<PeerTls> {
        let identity = cobble_tls::Identity::load_or_create(
            &data_dir.join("peer.crt"),
            &data_dir.join("peer.key"),
            &["cobble-peer".to_string()],
        )?;
        Ok(PeerTls {
            identity,
            project_key,
        })
    }
}

/// What this worker shares, and the limits it shares under.
pub struct Sharing {
    tls: PeerTls,
    blob_dir: PathBuf,
    partials: Mutex<HashMap<BlobHash, Arc<Partial>>>,
    slots: Semaphore,
    prefs: SharingPrefs,
    activity: watch::Receiver<Activity>,
    /// Paces uploads under `max_bytes_sec_up`.
    pacer: Pacer,
    transfers: Arc<Transfers>,
    filter: Option<ChunkFilter>,
}

impl Sharing {
    pub fn new(
        tls: PeerTls,
        blob_dir: PathBuf,
        prefs: SharingPrefs,
        activity: watch::Receiver<Activity>,
        transfers: Arc<Transfers>,
        filter: Option<ChunkFilter>,
    ) -> Sharing {
        Sharing {
            tls,
            blob_dir,
            partials: Mutex::default(),
            slots: Semaphore::new(prefs.upload_slots.max(1)),
            activity,
            pacer: Pacer::new(prefs.max_bytes_sec_up),
            prefs,
            transfers,
            filter,
        }
    }

    pub fn blob_dir(&self) -> &Path {
        &self.blob_dir
    }

    pub(crate) fn identity(&self) -> &cobble_tls::Identity {
        &self.tls.identity
    }

    /// SHA-256 of the certificate this worker serves and calls peers with.
    pub fn certificate(&self) -> cobble_tls::Fingerprint {
        self.tls.identity.fingerprint()
    }

    fn partials(&self) -> std::sync::MutexGuard<'_, HashMap<BlobHash, Arc<Partial>>> {
        self.partials.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn partial(&self, hash: &BlobHash) -> Option<Arc<Partial>> {
        self.partials().get(hash).cloned()
    }

    pub(crate) fn begin(&self, hash: BlobHash, partial: Arc<Partial>) {
        self.partials().insert(hash, partial);
    }

    pub(crate) fn end(&self, hash: &BlobHash) {
        self.partials().remove(hash);
    }

    /// The whole blob in the cache, if it is there.
    fn complete_path(&self, hash: &BlobHash) -> Option<(PathBuf, u64)> {
        // Only ever a 64-digit hex name inside the cache: no request can
        // name any other file.
        let path = self.blob_dir.join(hash.to_hex());
        let size = std::fs::metadata(&path).ok().filter(|m| m.is_file())?.len();
        Some((path, size))
    }

    /// The chunks of a blob this worker can serve, and how many it has.
    pub fn chunk_map(&self, hash: &BlobHash) -> Option<ChunkSet> {
        if let Some(partial) = self.partial(hash) {
            return Some(
                partial
                    .have
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            );
        }
        let (_, size) = self.complete_path(hash)?;
        Some(ChunkSet::full(cobble_core::chunk::chunk_count(size)))
    }

    /// Reads a chunk this worker holds, or None.
    pub async fn read_chunk(&self, hash: &BlobHash, index: usize) -> Option<Vec<u8>> {
        let (path, size) = match self.partial(hash) {
            Some(partial) => {
                let held = partial
                    .have
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(index);
                if !held {
                    return None;
                }
                (partial.path.clone(), partial.list.size())
            }
            None => self.complete_path(hash)?,
        };
        let (offset, length) = chunk_span(size, index);
        if length == 0 {
            return None;
        }
        let mut data = tokio::task::spawn_blocking(move || read_at(&path, offset, length).ok())
            .await
            .ok()??;
        if let Some(filter) = &self.filter {
            filter(&mut data);
        }
        Some(data)
    }

    /// Whether serving is allowed now (the owner may be at the machine).
    fn may_serve(&self) -> bool {
        self.prefs.serve_while_in_use || !self.activity.borrow().in_use()
    }

    /// Waits until `bytes` may be sent under `max_bytes_sec_up`.
    async fn throttle(&self, bytes: usize) {
        let wait = self.pacer.delay(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

pub(crate) fn read_at(path: &Path, offset: u64, length: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut data = vec![0u8; length];
    file.read_exact_at(&mut data, offset)?;
    Ok(data)
}
