//! Which chunk to ask which peer for: rarest first, so the chunks few
//! peers hold spread before they vanish; a few requests per peer at once;
//! and an endgame in which the last chunks may be asked of two peers, so
//! one slow peer cannot hold the whole download back.

use cobble_core::chunk::ChunkSet;
use std::collections::HashMap;

/// Requests one chunk may have outstanding at once (2 only in the endgame).
const MAX_DUPLICATES: u32 = 2;

/// What the scheduler knows of one peer.
#[derive(Debug)]
pub struct PeerView<'a> {
    /// Its chunk map, once known.
    pub have: Option<&'a ChunkSet>,
    /// Requests to it not yet answered.
    pub in_flight: usize,
    /// False while it is cooling off after saying it was busy.
    pub available: bool,
}

/// The next requests: (index into `peers`, chunk). `rotation` spreads
/// hosts over different chunks when rarity ties.
pub fn next_requests(
    have: &ChunkSet,
    in_flight: &HashMap<usize, u32>,
    peers: &[PeerView<'_>],
    per_peer: usize,
    rotation: usize,
) -> Vec<(usize, usize)> {
    let holders = |chunk: usize| {
        peers
            .iter()
            .filter(|p| p.have.is_some_and(|h| h.contains(chunk)))
            .count()
    };
    let outstanding = |chunk: usize| in_flight.get(&chunk).copied().unwrap_or(0);
    let len = have.len().max(1);
    let mut wanted: Vec<usize> = have
        .missing()
        .filter(|&c| outstanding(c) == 0 && holders(c) > 0)
        .collect();
    // Endgame: everything missing is already requested; ask a second peer.
    if wanted.is_empty() {
        wanted = have
            .missing()
            .filter(|&c| outstanding(c) < MAX_DUPLICATES && holders(c) > 1)
            .collect();
    }
    wanted.sort_by_key(|&c| (holders(c), (c + len - rotation % len) % len));
    let mut capacity: Vec<usize> = peers
        .iter()
        .map(|p| {
            if p.available {
                per_peer.saturating_sub(p.in_flight)
            } else {
                0
            }
        })
        .collect();
    let mut requests = Vec::new();
    for chunk in wanted {
        // The least loaded peer that has it (the first, on ties).
        let chosen = peers
            .iter()
            .enumerate()
            .filter(|(i, p)| capacity[*i] > 0 && p.have.is_some_and(|h| h.contains(chunk)))
            .max_by(|(i, _), (j, _)| capacity[*i].cmp(&capacity[*j]).then(j.cmp(i)));
        if let Some((i, _)) = chosen {
            capacity[i] -= 1;
            requests.push((i, chunk));
        }
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(len: usize, chunks: &[usize]) -> ChunkSet {
        let mut set = ChunkSet::empty(len);
        for &chunk in chunks {
            set.insert(chunk);
        }
        set
    }

    fn peer(have: &ChunkSet) -> PeerView<'_> {
        PeerView {
            have: Some(have),
            in_flight: 0,
            available: true,
        }
    }

    #[test]
    fn rarest_chunks_first_within_each_peers_limit() {
        let mine = set(4, &[0]);
        let (a, b) = (set(4, &[1, 2, 3]), set(4, &[2, 3]));
        let requests = next_requests(&mine, &HashMap::new(), &[peer(&a), peer(&b)], 1, 0);
        // Chunk 1 only a has: it goes first; b takes the next rarest it has.
        assert_eq!(requests, [(0, 1), (1, 2)]);
        let requests = next_requests(&mine, &HashMap::new(), &[peer(&a), peer(&b)], 2, 0);
        assert_eq!(requests, [(0, 1), (1, 2), (0, 3)]);
    }

    #[test]
    fn busy_peers_and_requested_chunks_are_skipped() {
        let mine = set(3, &[]);
        let a = set(3, &[0, 1, 2]);
        let busy = PeerView {
            have: Some(&a),
            in_flight: 0,
            available: false,
        };
        assert!(next_requests(&mine, &HashMap::new(), &[busy], 4, 0).is_empty());
        let in_flight = HashMap::from([(0, 1), (1, 1)]);
        assert_eq!(
            next_requests(&mine, &in_flight, &[peer(&a)], 4, 0),
            [(0, 2)]
        );
        let unknown = PeerView {
            have: None,
            in_flight: 0,
            available: true,
        };
        assert!(next_requests(&mine, &HashMap::new(), &[unknown], 4, 0).is_empty());
    }

    #[test]
    fn endgame_asks_a_second_peer_for_the_last_chunks() {
        let mine = set(3, &[0, 1]);
        let (a, b) = (set(3, &[0, 1, 2]), set(3, &[0, 1, 2]));
        let in_flight = HashMap::from([(2, 1)]);
        let mut first = peer(&a);
        first.in_flight = 1;
        let requests = next_requests(&mine, &in_flight, &[first, peer(&b)], 1, 0);
        assert_eq!(requests, [(1, 2)]);
        let twice = HashMap::from([(2, 2)]);
        assert!(next_requests(&mine, &twice, &[peer(&a), peer(&b)], 1, 0).is_empty());
    }

    #[test]
    fn rotation_spreads_hosts_over_different_chunks() {
        let mine = set(4, &[]);
        let a = set(4, &[0, 1, 2, 3]);
        assert_eq!(
            next_requests(&mine, &HashMap::new(), &[peer(&a)], 1, 0),
            [(0, 0)]
        );
        assert_eq!(
            next_requests(&mine, &HashMap::new(), &[peer(&a)], 1, 2),
            [(0, 2)]
        );
    }
}
