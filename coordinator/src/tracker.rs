//! The tracker and super-seed. For each blob it remembers the hosts that
//! recently fetched or hold it (the 20 most recent, like Spotify's
//! tracker), and how often the coordinator itself handed out each chunk,
//! so that it hands every chunk out about once and lets the workers trade
//! the rest. Soft state: workers re-announce what they hold in every
//! heartbeat, so a restart loses nothing that matters. One coordinator
//! keeps it in memory; several on one PostgreSQL database keep it in the
//! database (`blob_holders`, `seed_chunks`), so that a host attached to one
//! finds peers that announced themselves to another. Two coordinators may
//! then hand out the same seed chunk at once: the counts steer, they do
//! not promise.

use crate::db::Db;
use crate::error::Result;
use cobble_core::BlobHash;
use cobble_core::chunk::ChunkSet;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// Holders remembered per blob.
const MAX_HOLDERS: usize = 20;
/// A holder not seen for this long is forgotten.
const HOLDER_TTL_MS: i64 = 10 * 60 * 1000;

/// Where and how a host serves peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// `ip:port`, the IP being the one its request came from.
    pub address: String,
    /// SHA-256 of its peer TLS certificate, which callers pin.
    pub certificate: [u8; 32],
}

/// A host that fetched or holds a blob, reachable at `contact`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host_id: i64,
    pub contact: Contact,
    pub seen_ms: i64,
}

#[derive(Debug, Default)]
struct Swarm {
    /// Most recent first.
    holders: VecDeque<Holder>,
    /// Times the coordinator sent each chunk.
    served: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    swarms: Mutex<HashMap<BlobHash, Swarm>>,
    /// Set when the state is shared with other coordinators.
    shared: Option<Db>,
}

impl Tracker {
    /// A tracker whose state lives in the database, for several
    /// coordinators on one PostgreSQL server.
    pub fn shared(db: Db) -> Self {
        Tracker {
            swarms: Mutex::default(),
            shared: Some(db),
        }
    }

    /// Records that `host_id`, serving peers at `contact`, fetches or holds
    /// each of the blobs (what a heartbeat announces, or a GetPeers asks).
    pub async fn note_holders(
        &self,
        hashes: &[BlobHash],
        host_id: i64,
        contact: Option<Contact>,
        now_ms: i64,
    ) -> Result<()> {
        let Some(contact) = contact else {
            return Ok(());
        };
        let Some(db) = &self.shared else {
            for hash in hashes {
                self.note_holder(hash, host_id, Some(contact.clone()), now_ms);
            }
            return Ok(());
        };
        let mut hashes = hashes.to_vec();
        // One order for every writer: two upserts never wait on each other
        // in a cycle.
        hashes.sort_by_key(|h| h.0);
        hashes.dedup();
        if hashes.is_empty() {
            return Ok(());
        }
        let rows: Vec<String> = (0..hashes.len())
            .map(|i| format!("(${}, $1, $2, $3, $4)", i + 5))
            .collect();
        let sql = format!(
            "INSERT INTO blob_holders (hash, host_id, address, certificate, seen_ms) VALUES {}
             ON CONFLICT (hash, host_id) DO UPDATE SET address = excluded.address,
                 certificate = excluded.certificate, seen_ms = excluded.seen_ms",
            rows.join(", ")
        );
        let mut query = sqlx::query(&sql)
            .bind(host_id)
            .bind(&contact.address)
            .bind(contact.certificate.to_vec())
            .bind(now_ms);
        for hash in &hashes {
            query = query.bind(hash.0.to_vec());
        }
        query.execute(db.writes()).await?;
        Ok(())
    }

    /// Up to `limit` recent holders of the blob, leaving out `exclude`.
    pub async fn recent_peers(
        &self,
        hash: &BlobHash,
        exclude: &HashSet<i64>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<Holder>> {
        let Some(db) = &self.shared else {
            return Ok(self.peers(hash, exclude, limit, now_ms));
        };
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT host_id, address, certificate, seen_ms FROM blob_holders
             WHERE hash = $1 AND seen_ms > $2 ORDER BY seen_ms DESC LIMIT $3",
        )
        .bind(hash.0.to_vec())
        .bind(now_ms - HOLDER_TTL_MS)
        .bind(i64::try_from(MAX_HOLDERS.min(limit + exclude.len())).unwrap_or(i64::MAX))
        .fetch_all(db.pool())
        .await?;
        let mut holders = Vec::new();
        for row in rows {
            let host_id: i64 = row.try_get("host_id")?;
            let certificate: Vec<u8> = row.try_get("certificate")?;
            let Ok(certificate) = <[u8; 32]>::try_from(certificate.as_slice()) else {
                continue;
            };
            if exclude.contains(&host_id) || holders.len() >= limit {
                continue;
            }
            holders.push(Holder {
                host_id,
                contact: Contact {
                    address: row.try_get("address")?,
                    certificate,
                },
                seen_ms: row.try_get("seen_ms")?,
            });
        }
        Ok(holders)
    }

    /// [`Tracker::take_seed_chunk`], with counts shared between
    /// coordinators when there are several.
    pub async fn next_seed_chunk(
        &self,
        hash: &BlobHash,
        chunk_count: usize,
        have: &ChunkSet,
        peers_stalled: bool,
    ) -> Result<Option<usize>> {
        let Some(db) = &self.shared else {
            return Ok(self.take_seed_chunk(hash, chunk_count, have, peers_stalled));
        };
        let counts: Vec<(i64, i64)> =
            sqlx::query_as("SELECT chunk, served FROM seed_chunks WHERE hash = $1")
                .bind(hash.0.to_vec())
                .fetch_all(db.pool())
                .await?;
        let mut served = vec![0u32; chunk_count];
        for (chunk, count) in counts {
            if let Some(slot) = usize::try_from(chunk).ok().and_then(|c| served.get_mut(c)) {
                *slot = u32::try_from(count.max(0)).unwrap_or(u32::MAX);
            }
        }
        let Some(chosen) = choose_seed_chunk(&served, have, peers_stalled) else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO seed_chunks (hash, chunk, served) VALUES ($1, $2, 1)
             ON CONFLICT (hash, chunk) DO UPDATE SET served = seed_chunks.served + 1",
        )
        .bind(hash.0.to_vec())
        .bind(chosen as i64)
        .execute(db.writes())
        .await?;
        Ok(Some(chosen))
    }

    /// Forgets holders not heard from for the holders' time to live.
    pub async fn forget_stale(&self, now_ms: i64) -> Result<()> {
        if let Some(db) = &self.shared {
            sqlx::query("DELETE FROM blob_holders WHERE seen_ms <= $1")
                .bind(now_ms - HOLDER_TTL_MS)
                .execute(db.writes())
                .await?;
        }
        Ok(())
    }

    fn with_swarm<T>(&self, hash: &BlobHash, f: impl FnOnce(&mut Swarm) -> T) -> T {
        let mut swarms = self.swarms.lock().unwrap_or_else(|p| p.into_inner());
        f(swarms.entry(*hash).or_default())
    }

    /// Records that `host_id`, serving peers at `contact`, fetches or holds
    /// the blob. Hosts that serve nobody are not recorded.
    pub fn note_holder(
        &self,
        hash: &BlobHash,
        host_id: i64,
        contact: Option<Contact>,
        now_ms: i64,
    ) {
        let Some(contact) = contact else {
            return;
        };
        self.with_swarm(hash, |swarm| {
            swarm.holders.retain(|h| h.host_id != host_id);
            swarm.holders.push_front(Holder {
                host_id,
                contact,
                seen_ms: now_ms,
            });
            swarm.holders.truncate(MAX_HOLDERS);
        });
    }

    /// Up to `limit` recent holders of the blob, leaving out `exclude`.
    pub fn peers(
        &self,
        hash: &BlobHash,
        exclude: &HashSet<i64>,
        limit: usize,
        now_ms: i64,
    ) -> Vec<Holder> {
        self.with_swarm(hash, |swarm| {
            swarm.holders.retain(|h| now_ms - h.seen_ms < HOLDER_TTL_MS);
            swarm
                .holders
                .iter()
                .filter(|h| !exclude.contains(&h.host_id))
                .take(limit)
                .cloned()
                .collect()
        })
    }

    /// Decides whether the coordinator sends a chunk of a blob of
    /// `chunk_count` chunks to a host holding `have`, and counts it.
    pub fn take_seed_chunk(
        &self,
        hash: &BlobHash,
        chunk_count: usize,
        have: &ChunkSet,
        peers_stalled: bool,
    ) -> Option<usize> {
        self.with_swarm(hash, |swarm| {
            swarm.served.resize(chunk_count, 0);
            let chosen = choose_seed_chunk(&swarm.served, have, peers_stalled)?;
            swarm.served[chosen] += 1;
            Some(chosen)
        })
    }
}

/// The super-seed's rule: among the chunks the host lacks, the one the
/// coordinator sent least often; but a chunk already sent once is in the
/// swarm, so it is sent again only when the host's peers have stalled.
pub fn choose_seed_chunk(served: &[u32], have: &ChunkSet, peers_stalled: bool) -> Option<usize> {
    let chosen = have
        .missing()
        .filter(|&index| index < served.len())
        .min_by_key(|&index| served[index])?;
    (served[chosen] == 0 || peers_stalled).then_some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_goes_out_once_before_any_goes_out_twice() {
        let tracker = Tracker::default();
        let hash = BlobHash::of(b"input");
        let nothing = ChunkSet::empty(4);
        let handed: Vec<Option<usize>> = (0..5)
            .map(|_| tracker.take_seed_chunk(&hash, 4, &nothing, false))
            .collect();
        assert_eq!(handed, [Some(0), Some(1), Some(2), Some(3), None]);
        // A host whose peers deliver nothing still gets served.
        assert_eq!(tracker.take_seed_chunk(&hash, 4, &nothing, true), Some(0));
        let mut almost = ChunkSet::empty(4);
        for index in [0, 1, 3] {
            almost.insert(index);
        }
        assert_eq!(tracker.take_seed_chunk(&hash, 4, &almost, true), Some(2));
        assert_eq!(
            tracker.take_seed_chunk(&hash, 4, &ChunkSet::full(4), true),
            None
        );
    }

    #[test]
    fn peers_are_recent_holders_without_the_excluded() {
        let tracker = Tracker::default();
        let hash = BlobHash::of(b"input");
        for host in 1..=25 {
            tracker.note_holder(
                &hash,
                host,
                Some(Contact {
                    address: format!("127.0.0.1:{}", 7000 + host),
                    certificate: [host as u8; 32],
                }),
                1_000,
            );
        }
        tracker.note_holder(&hash, 99, None, 1_000);
        let exclude = HashSet::from([25, 24]);
        let peers = tracker.peers(&hash, &exclude, 3, 2_000);
        let ids: Vec<i64> = peers.iter().map(|p| p.host_id).collect();
        assert_eq!(ids, [23, 22, 21]);
        // Only the 20 most recent are kept, and old ones expire.
        assert_eq!(
            tracker.peers(&hash, &HashSet::new(), 100, 2_000).len(),
            MAX_HOLDERS
        );
        assert!(
            tracker
                .peers(&hash, &HashSet::new(), 100, 1_000 + HOLDER_TTL_MS)
                .is_empty()
        );
    }
}
