//! Content ids: every module, input and output is named by its BLAKE3 hash.

use crate::Error;
use std::fmt;

/// The BLAKE3 hash of a blob's bytes: the blob's name everywhere in Cobble.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// Hashes bytes held in memory.
    pub fn of(bytes: &[u8]) -> Self {
        BlobHash(*blake3::hash(bytes).as_bytes())
    }

    /// Parses the 32 raw bytes carried in protocol messages.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::BadHashLength(bytes.len()))?;
        Ok(BlobHash(array))
    }

    /// Parses the 64-digit lowercase hex form used in file names and logs.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let bytes = hex::decode(text).map_err(|e| Error::BadHashHex(e.to_string()))?;
        Self::from_slice(&bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(hash: blake3::Hash) -> Self {
        BlobHash(*hash.as_bytes())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve digits identify a blob in logs without flooding them.
        write!(f, "BlobHash({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let hash = BlobHash::of(b"cobble");
        assert_eq!(BlobHash::from_hex(&hash.to_hex()).ok(), Some(hash));
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(matches!(
            BlobHash::from_slice(&[0u8; 31]),
            Err(Error::BadHashLength(31))
        ));
        assert!(matches!(
            BlobHash::from_hex("zz"),
            Err(Error::BadHashHex(_))
        ));
    }
}
