//! Fetching one blob from the swarm: its chunk list from the coordinator
//! (checked against the signed manifest), chunks from several peers at
//! once (rarest first, see `schedule`), and from the coordinator the chunks
//! no peer has yet: the coordinator hands each chunk out about once and the
//! workers trade the rest. Every chunk is verified before it is written; a
//! peer that sends a bad one is dropped. A download survives restarts: the
//! `.part` file's verified chunks are kept. When peers deliver nothing for
//! [`PEER_PATIENCE`], the coordinator serves whatever is missing, so a unit
//! never waits on peers for long.

use super::schedule::{PeerView, next_requests};
use super::{Partial, Sharing, read_at};
use crate::error::{Error, Result};
use crate::status::Transfers;
use cobble_client::Connection;
use cobble_core::BlobHash;
use cobble_core::chunk::{ChunkList, ChunkSet, chunk_span};
use cobble_proto::v1::{self as pb, peer_service_client::PeerServiceClient};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Without a chunk from any peer for this long, the coordinator serves.
pub const PEER_PATIENCE: Duration = Duration::from_secs(2);
/// Peers downloaded from at once.
const MAX_PEERS: usize = 8;
/// Requests outstanding per peer.
const PER_PEER: usize = 2;
/// How often a peer's chunk map is asked for again.
const MAP_EVERY: Duration = Duration::from_millis(300);
/// How often the tracker is asked for more peers while there are fewer
/// than [`MAX_PEERS`], and once there are enough.
const PEERS_EVERY: Duration = Duration::from_millis(500);
const PEERS_EVERY_WHEN_FULL: Duration = Duration::from_secs(5);
/// A peer that answered "busy" is left alone this long.
const BUSY_COOL_OFF: Duration = Duration::from_millis(500);
/// Any single request to a peer.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// What one download needs from the worker.
pub struct Fetch<'a> {
    pub connection: &'a Connection,
    pub sharing: &'a Sharing,
    pub transfers: &'a Transfers,
    pub blob: &'a pb::BlobRef,
    /// The lease that needs the blob, so the tracker can leave out its
    /// unit's other replicas.
    pub lease_id: &'a str,
    pub peer_port: u32,
    pub deadline_ms: i64,
}

struct PeerSlot {
    client: PeerServiceClient<Channel>,
    have: Option<ChunkSet>,
    in_flight: usize,
    map_pending: bool,
    map_asked: Option<Instant>,
    cool_until: Instant,
}

enum Event {
    Peers(std::result::Result<pb::PeersResponse, tonic::Status>),
    Map(String, std::result::Result<pb::ChunkMap, tonic::Status>),
    Chunk(
        String,
        usize,
        std::result::Result<pb::ChunkData, tonic::Status>,
    ),
    Seed(std::result::Result<pb::SeedChunkResponse, tonic::Status>),
}

/// Downloads the blob into the cache and returns its path.
pub async fn fetch(fetch: Fetch<'_>) -> Result<PathBuf> {
    let hash = BlobHash::from_slice(&fetch.blob.hash)?;
    let final_path = fetch.sharing.blob_dir().join(hash.to_hex());
    let list = chunk_list(&fetch, &hash).await?;
    let part_path = fetch
        .sharing
        .blob_dir()
        .join(format!("{}.part", hash.to_hex()));
    let have = resume(&part_path, &list)?;
    if have.count() > 0 {
        tracing::info!(%hash, chunks = have.count(), of = list.len(), "resuming a download");
    }
    let partial = Arc::new(Partial {
        list: list.clone(),
        have: Mutex::new(have),
        path: part_path.clone(),
    });
    fetch.sharing.begin(hash, partial.clone());
    let result = match Swarm::new(&fetch, hash, partial) {
        Ok(swarm) => swarm.run().await,
        Err(error) => Err(error),
    };
    fetch.sharing.end(&hash);
    if let Err(error) = result {
        // Verified chunks are kept for a retry, unless the blob itself is bad.
        if matches!(error, Error::BlobMismatch { .. }) {
            std::fs::remove_file(&part_path).ok();
        }
        return Err(error);
    }
    // Defence in depth: the assembled whole must hash as the manifest says.
    let path = part_path.clone();
    let actual = tokio::task::spawn_blocking(move || -> std::io::Result<BlobHash> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(&path)?)?;
        Ok(BlobHash::from(hasher.finalize()))
    })
    .await
    .map_err(|e| Error::Engine(e.to_string()))?
    .map_err(Error::io(format!("reading {}", part_path.display())))?;
    if actual != hash {
        std::fs::remove_file(&part_path).ok();
        return Err(Error::BlobMismatch {
            hash: hash.to_hex(),
            expected: hash.to_hex(),
            actual: actual.to_hex(),
        });
    }
    std::fs::rename(&part_path, &final_path)
        .map_err(Error::io(format!("publishing {}", final_path.display())))?;
    Ok(final_path)
}

async fn chunk_list(fetch: &Fetch<'_>, hash: &BlobHash) -> Result<Arc<ChunkList>> {
    let response =
        crate::runner::with_retry(fetch.deadline_ms, "fetching a chunk list", || async {
            let request = fetch.connection.request(pb::ChunkListRequest {
                hash: hash.0.to_vec(),
            });
            crate::runner::worker_client(fetch.connection)
                .get_chunk_list(request)
                .await
                .map(|r| r.into_inner())
                .map_err(cobble_client::Error::Rpc)
        })
        .await?;
    let list = ChunkList::from_wire(&response.hashes, fetch.blob.size, &fetch.blob.chunk_root)
        .map_err(|error| Error::BlobMismatch {
            hash: hash.to_hex(),
            expected: "the signed chunk list".into(),
            actual: error.to_string(),
        })?;
    Ok(Arc::new(list))
}

/// Opens (creating) the `.part` file at its full size and finds the
/// chunks an interrupted download already wrote correctly.
fn resume(part_path: &std::path::Path, list: &ChunkList) -> Result<ChunkSet> {
    let io = |what: &str| Error::io(format!("{what} {}", part_path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(part_path)
        .map_err(io("opening"))?;
    let existing = file.metadata().map_err(io("reading"))?.len();
    if existing != list.size() {
        file.set_len(list.size()).map_err(io("sizing"))?;
    }
    let mut have = ChunkSet::empty(list.len());
    if existing == list.size() {
        for index in 0..list.len() {
            let (offset, length) = chunk_span(list.size(), index);
            if read_at(part_path, offset, length).is_ok_and(|data| list.verify(index, &data)) {
                have.insert(index);
            }
        }
    }
    Ok(have)
}

struct Swarm<'a> {
    fetch: &'a Fetch<'a>,
    hash: BlobHash,
    partial: Arc<Partial>,
    /// The `.part` file, open for writing chunks at their offsets.
    file: std::fs::File,
    peers: HashMap<String, PeerSlot>,
    /// Peers dropped for this download: failed, vanished or lying.
    dropped: HashSet<String>,
    in_flight: HashMap<usize, u32>,
    events: JoinSet<Event>,
    peers_pending: bool,
    peers_next: Instant,
    seed_pending: bool,
    seed_next: Instant,
    /// Since when no peer has delivered a chunk.
    last_from_peer: Instant,
    rotation: usize,
    /// The tracker's latest permission to fetch this blob from peers.
    capability: Option<Arc<Vec<u8>>>,
}

/// A request to a peer, carrying the capability for the blob.
fn to_peer<T>(message: T, capability: &Option<Arc<Vec<u8>>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(capability) = capability {
        request.metadata_mut().insert_bin(
            cobble_core::capability::METADATA_KEY,
            tonic::metadata::MetadataValue::from_bytes(capability),
        );
    }
    request
}

impl<'a> Swarm<'a> {
    fn new(fetch: &'a Fetch<'a>, hash: BlobHash, partial: Arc<Partial>) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&partial.path)
            .map_err(Error::io(format!("opening {}", partial.path.display())))?;
        let now = Instant::now();
        let rotation = usize::from(u16::from_le_bytes(cobble_core::random_bytes::<2>()));
        Ok(Swarm {
            fetch,
            hash,
            partial,
            file,
            peers: HashMap::new(),
            dropped: HashSet::new(),
            in_flight: HashMap::new(),
            events: JoinSet::new(),
            peers_pending: false,
            peers_next: now,
            seed_pending: false,
            seed_next: now,
            last_from_peer: now,
            rotation,
            capability: None,
        })
    }

    fn have(&self) -> ChunkSet {
        self.partial
            .have
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn run(mut self) -> Result<()> {
        loop {
            let have = self.have();
            if have.is_complete() {
                self.file.sync_data().map_err(Error::io(format!(
                    "syncing {}",
                    self.partial.path.display()
                )))?;
                return Ok(());
            }
            if cobble_core::now_ms() > self.fetch.deadline_ms {
                return Err(Error::Transfer(cobble_client::Error::Unreachable {
                    url: "peers and coordinator".into(),
                    message: format!("blob {} incomplete at the lease deadline", self.hash),
                }));
            }
            self.ask_for_peers();
            self.ask_for_maps();
            self.ask_peers_for_chunks(&have);
            self.ask_coordinator(&have);
            tokio::select! {
                Some(joined) = self.events.join_next() => {
                    if let Ok(event) = joined {
                        self.handle(event)?;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn ask_for_peers(&mut self) {
        if self.peers_pending || Instant::now() < self.peers_next {
            return;
        }
        self.peers_pending = true;
        let connection = self.fetch.connection.clone();
        let request = pb::PeersRequest {
            hash: self.hash.0.to_vec(),
            lease_id: self.fetch.lease_id.to_string(),
            peer_port: self.fetch.peer_port,
            peer_certificate: self.fetch.sharing.certificate().0.to_vec(),
        };
        self.events.spawn(async move {
            let result = crate::runner::worker_client(&connection)
                .get_peers(connection.request(request))
                .await
                .map(|r| r.into_inner());
            Event::Peers(result)
        });
    }

    fn ask_for_maps(&mut self) {
        for (address, peer) in &mut self.peers {
            let due = peer.map_asked.is_none_or(|at| at.elapsed() >= MAP_EVERY);
            if peer.map_pending || !due {
                continue;
            }
            peer.map_pending = true;
            peer.map_asked = Some(Instant::now());
            let (mut client, address) = (peer.client.clone(), address.clone());
            let request = to_peer(
                pb::ChunkMapRequest {
                    hash: self.hash.0.to_vec(),
                },
                &self.capability,
            );
            self.events.spawn(async move {
                let result = client.get_chunk_map(request).await.map(|r| r.into_inner());
                Event::Map(address, result)
            });
        }
    }

    fn ask_peers_for_chunks(&mut self, have: &ChunkSet) {
        let now = Instant::now();
        let addresses: Vec<String> = self.peers.keys().cloned().collect();
        let views: Vec<PeerView<'_>> = addresses
            .iter()
            .filter_map(|a| self.peers.get(a))
            .map(|p| PeerView {
                have: p.have.as_ref(),
                in_flight: p.in_flight,
                available: p.cool_until <= now,
            })
            .collect();
        let requests = next_requests(have, &self.in_flight, &views, PER_PEER, self.rotation);
        for (peer_index, chunk) in requests {
            let Some(address) = addresses.get(peer_index) else {
                continue;
            };
            let Some(peer) = self.peers.get_mut(address) else {
                continue;
            };
            peer.in_flight += 1;
            *self.in_flight.entry(chunk).or_default() += 1;
            let (mut client, address) = (peer.client.clone(), address.clone());
            let request = to_peer(
                pb::ChunkRequest {
                    hash: self.hash.0.to_vec(),
                    index: chunk as u32,
                },
                &self.capability,
            );
            self.events.spawn(async move {
                let result = client.get_chunk(request).await.map(|r| r.into_inner());
                Event::Chunk(address, chunk, result)
            });
        }
    }

    /// Asks the super-seed for a chunk when no peer has what is missing,
    /// or when peers have stalled.
    fn ask_coordinator(&mut self, have: &ChunkSet) {
        if self.seed_pending || Instant::now() < self.seed_next {
            return;
        }
        let stalled = self.last_from_peer.elapsed() >= PEER_PATIENCE;
        let no_peer_has = |chunk: usize| {
            !self
                .peers
                .values()
                .any(|p| p.have.as_ref().is_some_and(|h| h.contains(chunk)))
        };
        let needed = have
            .missing()
            .any(|c| !self.in_flight.contains_key(&c) && no_peer_has(c));
        if !needed && !stalled {
            return;
        }
        // Chunks already requested from peers count as held, so the
        // coordinator sends something else (unless peers have stalled).
        let mut asking = have.clone();
        if !stalled {
            for chunk in self.in_flight.keys() {
                asking.insert(*chunk);
            }
        }
        self.seed_pending = true;
        let connection = self.fetch.connection.clone();
        let request = pb::SeedChunkRequest {
            hash: self.hash.0.to_vec(),
            have: asking.to_wire(),
            peers_stalled: stalled,
        };
        self.events.spawn(async move {
            let result = crate::runner::worker_client(&connection)
                .get_seed_chunk(connection.request(request))
                .await
                .map(|r| r.into_inner());
            Event::Seed(result)
        });
    }

    fn handle(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Peers(result) => {
                self.peers_pending = false;
                if let Ok(response) = result {
                    if !response.capability.is_empty() {
                        self.capability = Some(Arc::new(response.capability));
                    }
                    self.add_peers(response.peers);
                }
                let every = if self.peers.len() < MAX_PEERS {
                    PEERS_EVERY
                } else {
                    PEERS_EVERY_WHEN_FULL
                };
                self.peers_next = Instant::now() + every;
            }
            Event::Map(address, result) => {
                let count = self.partial.list.len();
                let Some(peer) = self.peers.get_mut(&address) else {
                    return Ok(());
                };
                peer.map_pending = false;
                match result
                    .ok()
                    .and_then(|map| ChunkSet::from_wire(&map.have, count))
                {
                    Some(map) => peer.have = Some(map),
                    None => self.drop_peer(&address, "its chunk map is unusable"),
                }
            }
            Event::Chunk(address, chunk, result) => {
                if let Some(count) = self.in_flight.get_mut(&chunk) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        self.in_flight.remove(&chunk);
                    }
                }
                if let Some(peer) = self.peers.get_mut(&address) {
                    peer.in_flight = peer.in_flight.saturating_sub(1);
                }
                let count = self.partial.list.len();
                if let (Ok(response), Some(peer)) = (&result, self.peers.get_mut(&address))
                    && let Some(map) = ChunkSet::from_wire(&response.have, count)
                {
                    peer.have = Some(map);
                }
                match result.map(|response| response.data) {
                    Ok(data) if self.partial.list.verify(chunk, &data) => {
                        if self.store(chunk, &data)? {
                            self.last_from_peer = Instant::now();
                            self.fetch
                                .transfers
                                .downloaded_from_peers
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {
                        tracing::warn!(peer = %address, chunk, blob = %self.hash, "a peer sent a corrupt chunk; dropping it");
                        self.drop_peer(&address, "it sent a corrupt chunk");
                    }
                    Err(status) if status.metadata().contains_key(super::BUSY_METADATA) => {
                        if let Some(peer) = self.peers.get_mut(&address) {
                            peer.cool_until = Instant::now() + BUSY_COOL_OFF;
                        }
                    }
                    Err(status) => {
                        self.drop_peer(
                            &address,
                            &format!("a request failed: {}", status.message()),
                        );
                    }
                }
            }
            Event::Seed(result) => {
                self.seed_pending = false;
                match result {
                    Ok(response) => match response.index {
                        Some(index) => {
                            let index = index as usize;
                            if self.partial.list.verify(index, &response.data) {
                                if self.store(index, &response.data)? {
                                    self.fetch
                                        .transfers
                                        .downloaded_from_coordinator
                                        .fetch_add(response.data.len() as u64, Ordering::Relaxed);
                                }
                            } else {
                                // The project's own copy is damaged: no
                                // retry can help, and the unit must not run.
                                return Err(Error::BlobMismatch {
                                    hash: self.hash.to_hex(),
                                    expected: format!(
                                        "chunk {index} as the signed chunk list says"
                                    ),
                                    actual: "a chunk from the coordinator that does not verify"
                                        .into(),
                                });
                            }
                        }
                        None => {
                            self.seed_next = Instant::now()
                                + Duration::from_millis(u64::from(response.retry_after_ms.max(50)));
                        }
                    },
                    Err(status) => {
                        tracing::debug!(%status, "asking the coordinator for a chunk failed");
                        self.seed_next = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
        }
        Ok(())
    }

    fn add_peers(&mut self, peers: Vec<pb::Peer>) {
        for peer in peers {
            if self.peers.len() >= MAX_PEERS {
                break;
            }
            if self.dropped.contains(&peer.address) || self.peers.contains_key(&peer.address) {
                continue;
            }
            // Only the certificate the tracker named will do: a peer is
            // whoever holds that key, not whoever answers at the address.
            let Ok(certificate) = <[u8; 32]>::try_from(peer.certificate.as_slice()) else {
                continue;
            };
            let trust = cobble_tls::Trust::Pinned(cobble_tls::Fingerprint(certificate));
            let Ok(config) = cobble_tls::client_config(
                trust,
                cobble_tls::Seen::default(),
                Some(self.fetch.sharing.identity()),
            ) else {
                continue;
            };
            let Ok(channel) = cobble_tls::connect_channel_lazy(&peer.address, config, |endpoint| {
                endpoint
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(PEER_TIMEOUT)
            }) else {
                continue;
            };
            self.peers.insert(
                peer.address,
                PeerSlot {
                    client: PeerServiceClient::new(channel)
                        .max_decoding_message_size(cobble_core::chunk::CHUNK_SIZE as usize * 2),
                    have: None,
                    in_flight: 0,
                    map_pending: false,
                    map_asked: None,
                    cool_until: Instant::now(),
                },
            );
        }
    }

    fn drop_peer(&mut self, address: &str, why: &str) {
        tracing::info!(peer = address, blob = %self.hash, "dropping a peer: {why}");
        self.peers.remove(address);
        self.dropped.insert(address.to_string());
    }

    /// Writes a verified chunk; false if it was already held.
    fn store(&mut self, index: usize, data: &[u8]) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        let mut have = self.partial.have.lock().unwrap_or_else(|p| p.into_inner());
        if have.contains(index) {
            return Ok(false);
        }
        let (offset, _) = chunk_span(self.partial.list.size(), index);
        self.file
            .write_all_at(data, offset)
            .map_err(Error::io(format!(
                "writing {}",
                self.partial.path.display()
            )))?;
        // Marked held only once written, so peers never read a hole.
        have.insert(index);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_download_keeps_exactly_its_verified_chunks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let size = 3 * cobble_core::chunk::CHUNK_SIZE as usize + 1000;
        let blob: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let list = ChunkList::of_bytes(&blob);
        let part = dir.path().join("blob.part");

        let fresh = resume(&part, &list).expect("fresh");
        assert_eq!(fresh.count(), 0);
        assert_eq!(
            std::fs::metadata(&part).expect("created").len(),
            size as u64
        );

        // Chunks 0 and 3 written, chunk 2 written wrong, chunk 1 never.
        let mut on_disk = vec![0u8; size];
        let (offset, length) = chunk_span(size as u64, 0);
        on_disk[offset as usize..][..length].copy_from_slice(&blob[offset as usize..][..length]);
        let (offset, length) = chunk_span(size as u64, 3);
        on_disk[offset as usize..][..length].copy_from_slice(&blob[offset as usize..][..length]);
        let (offset, length) = chunk_span(size as u64, 2);
        on_disk[offset as usize..][..length].fill(7);
        std::fs::write(&part, &on_disk).expect("write");
        let resumed = resume(&part, &list).expect("resume");
        assert_eq!(resumed.missing().collect::<Vec<_>>(), [1, 2]);

        // A file of the wrong length is not trusted at all.
        std::fs::write(&part, &blob[..100]).expect("write");
        assert_eq!(resume(&part, &list).expect("resume").count(), 0);
    }
}
