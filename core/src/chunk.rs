//! Chunks: the pieces a blob travels in between workers. Each chunk is
//! checked on arrival against a chunk list (the BLAKE3 hash of every
//! chunk), and the list itself against its root, which the signed manifest
//! carries: a bad chunk from a peer is caught before it is written, and the
//! peer that sent it can be dropped at once.

use crate::Error;
use std::io::Read;

/// Bytes per chunk (the last one may be shorter): small enough that a lost
/// chunk costs little, large enough that a 64 MiB blob has 256 of them.
pub const CHUNK_SIZE: u64 = 256 * 1024;

/// Domain separation for the list's root, so it can never be confused with
/// the hash of a blob.
const ROOT_CONTEXT: &str = "cobble chunk list v1";

/// Number of chunks of a blob of `size` bytes.
pub fn chunk_count(size: u64) -> usize {
    size.div_ceil(CHUNK_SIZE) as usize
}

/// Offset and length of chunk `index` of a blob of `size` bytes.
pub fn chunk_span(size: u64, index: usize) -> (u64, usize) {
    let offset = index as u64 * CHUNK_SIZE;
    let length = size.saturating_sub(offset).min(CHUNK_SIZE);
    (offset, length as usize)
}

/// Builds a blob's chunk list from its bytes as they stream past, in
/// pieces of any size (an upload, an object store's response).
#[derive(Debug, Default)]
pub struct ChunkHasher {
    size: u64,
    hashes: Vec<[u8; 32]>,
    current: blake3::Hasher,
    in_chunk: u64,
}

impl ChunkHasher {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (CHUNK_SIZE - self.in_chunk).min(data.len() as u64) as usize;
            self.current.update(&data[..take]);
            self.in_chunk += take as u64;
            self.size += take as u64;
            if self.in_chunk == CHUNK_SIZE {
                self.hashes.push(*self.current.finalize().as_bytes());
                self.current.reset();
                self.in_chunk = 0;
            }
            data = &data[take..];
        }
    }

    pub fn finish(mut self) -> ChunkList {
        if self.in_chunk > 0 {
            self.hashes.push(*self.current.finalize().as_bytes());
        }
        ChunkList {
            size: self.size,
            hashes: self.hashes,
        }
    }
}

/// The hash of every chunk of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkList {
    size: u64,
    hashes: Vec<[u8; 32]>,
}

impl ChunkList {
    /// Hashes a blob of `size` bytes read from `reader`.
    pub fn of_reader(mut reader: impl Read, size: u64) -> std::io::Result<ChunkList> {
        let mut hashes = Vec::with_capacity(chunk_count(size));
        let mut buffer = vec![0u8; CHUNK_SIZE as usize];
        for index in 0..chunk_count(size) {
            let (_, length) = chunk_span(size, index);
            reader.read_exact(&mut buffer[..length])?;
            hashes.push(*blake3::hash(&buffer[..length]).as_bytes());
        }
        Ok(ChunkList { size, hashes })
    }

    pub fn of_bytes(bytes: &[u8]) -> ChunkList {
        let size = bytes.len() as u64;
        let hashes = (0..chunk_count(size))
            .map(|index| {
                let (offset, length) = chunk_span(size, index);
                *blake3::hash(&bytes[offset as usize..offset as usize + length]).as_bytes()
            })
            .collect();
        ChunkList { size, hashes }
    }

    /// Parses a list received over the network, accepting it only if it
    /// has the right length for `size` and hashes to `expected_root`.
    pub fn from_wire(bytes: &[u8], size: u64, expected_root: &[u8]) -> Result<ChunkList, Error> {
        let count = chunk_count(size);
        if bytes.len() != count * 32 {
            return Err(Error::BadChunkList(format!(
                "{} bytes for {count} chunks",
                bytes.len()
            )));
        }
        let hashes: Vec<[u8; 32]> = bytes
            .chunks_exact(32)
            .filter_map(|hash| hash.try_into().ok())
            .collect();
        let list = ChunkList { size, hashes };
        if list.root().as_slice() != expected_root {
            return Err(Error::BadChunkList(
                "its root differs from the signed manifest's".into(),
            ));
        }
        Ok(list)
    }

    pub fn to_wire(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    /// What the manifest commits to.
    pub fn root(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
        hasher.update(&self.size.to_le_bytes());
        for hash in &self.hashes {
            hasher.update(hash);
        }
        *hasher.finalize().as_bytes()
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `data` is exactly chunk `index`.
    pub fn verify(&self, index: usize, data: &[u8]) -> bool {
        let (_, length) = chunk_span(self.size, index);
        self.hashes
            .get(index)
            .is_some_and(|hash| data.len() == length && blake3::hash(data).as_bytes() == hash)
    }
}

/// A set of chunk indices as a bitmap; on the wire, one bit per chunk,
/// least significant bit first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkSet {
    bits: Vec<u8>,
    len: usize,
}

impl ChunkSet {
    pub fn empty(len: usize) -> ChunkSet {
        ChunkSet {
            bits: vec![0; len.div_ceil(8)],
            len,
        }
    }

    pub fn full(len: usize) -> ChunkSet {
        let mut set = ChunkSet::empty(len);
        for index in 0..len {
            set.insert(index);
        }
        set
    }

    /// Reads a bitmap for `len` chunks; a short or long one is refused.
    pub fn from_wire(bits: &[u8], len: usize) -> Option<ChunkSet> {
        (bits.len() == len.div_ceil(8)).then(|| ChunkSet {
            bits: bits.to_vec(),
            len,
        })
    }

    pub fn to_wire(&self) -> Vec<u8> {
        self.bits.clone()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, index: usize) -> bool {
        index < self.len && self.bits[index / 8] & (1 << (index % 8)) != 0
    }

    pub fn insert(&mut self, index: usize) {
        if index < self.len {
            self.bits[index / 8] |= 1 << (index % 8);
        }
    }

    pub fn count(&self) -> usize {
        (0..self.len).filter(|&i| self.contains(i)).count()
    }

    pub fn is_complete(&self) -> bool {
        self.count() == self.len
    }

    /// Indices not in the set.
    pub fn missing(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| !self.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn streamed_pieces_of_any_size_give_the_same_list() {
        for size in [0, 1, CHUNK_SIZE as usize, 2 * CHUNK_SIZE as usize + 10] {
            let bytes = blob(size);
            for piece in [1, 1000, CHUNK_SIZE as usize - 1, CHUNK_SIZE as usize + 3] {
                let mut hasher = ChunkHasher::default();
                for part in bytes.chunks(piece) {
                    hasher.update(part);
                }
                assert_eq!(
                    hasher.finish(),
                    ChunkList::of_bytes(&bytes),
                    "{size}/{piece}"
                );
            }
        }
    }

    #[test]
    fn spans_cover_the_blob_exactly() {
        let size = 2 * CHUNK_SIZE + 10;
        assert_eq!(chunk_count(size), 3);
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(CHUNK_SIZE), 1);
        assert_eq!(chunk_span(size, 2), (2 * CHUNK_SIZE, 10));
        assert_eq!(chunk_span(size, 3), (3 * CHUNK_SIZE, 0));
    }

    #[test]
    fn lists_verify_chunks_and_travel_checked_against_their_root() {
        let bytes = blob((CHUNK_SIZE * 2 + 100) as usize);
        let list = ChunkList::of_bytes(&bytes);
        assert_eq!(
            ChunkList::of_reader(bytes.as_slice(), bytes.len() as u64).ok(),
            Some(list.clone())
        );
        let second = &bytes[CHUNK_SIZE as usize..2 * CHUNK_SIZE as usize];
        assert!(list.verify(1, second));
        assert!(!list.verify(0, second), "a chunk in the wrong place");
        let mut corrupt = second.to_vec();
        corrupt[5] ^= 1;
        assert!(!list.verify(1, &corrupt));
        assert!(
            !list.verify(2, &bytes[2 * CHUNK_SIZE as usize - 1..]),
            "too long"
        );
        assert!(!list.verify(7, second), "past the end");

        let root = list.root();
        let size = bytes.len() as u64;
        assert_eq!(
            ChunkList::from_wire(&list.to_wire(), size, &root).ok(),
            Some(list.clone())
        );
        let mut tampered = list.to_wire();
        tampered[0] ^= 1;
        assert!(ChunkList::from_wire(&tampered, size, &root).is_err());
        assert!(ChunkList::from_wire(&list.to_wire()[..64], size, &root).is_err());
        assert_ne!(root, *blake3::hash(&list.to_wire()).as_bytes());
    }

    #[test]
    fn chunk_sets_round_trip_and_refuse_wrong_lengths() {
        let mut set = ChunkSet::empty(10);
        set.insert(0);
        set.insert(9);
        set.insert(10);
        assert_eq!(set.count(), 2);
        assert!(set.contains(9) && !set.contains(10));
        assert_eq!(set.missing().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7, 8]);
        let wire = set.to_wire();
        assert_eq!(ChunkSet::from_wire(&wire, 10), Some(set));
        assert_eq!(ChunkSet::from_wire(&wire, 17), None);
        assert!(ChunkSet::full(9).is_complete());
    }
}
