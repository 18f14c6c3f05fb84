//! Peer capabilities: the tracker's signed permission for one host to
//! fetch one blob from other workers, for a few minutes. A worker serves a
//! chunk only to a caller that shows one for that blob, bound to the TLS
//! certificate the caller connected with, so a capability copied off the
//! wire is useless to anyone else, and a stranger who finds a worker's peer
//! port learns nothing about what it holds.

use crate::BlobHash;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Domain separation from manifests and anything else the key signs.
const SIGNING_CONTEXT: &[u8] = b"cobble-peer-capability-v1\0";
/// blob (32) + host id (8) + certificate fingerprint (32) + expiry (8).
const FIELDS: usize = 32 + 8 + 32 + 8;
/// The encoded length: fields and an ed25519 signature.
pub const ENCODED_LEN: usize = FIELDS + 64;
/// The gRPC metadata key (binary) a capability travels in.
pub const METADATA_KEY: &str = "x-cobble-capability-bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCapability {
    pub blob: BlobHash,
    /// The host the tracker gave it to.
    pub host_id: i64,
    /// SHA-256 of that host's peer TLS certificate.
    pub certificate: [u8; 32],
    pub expires_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("a capability is {ENCODED_LEN} bytes, this one {0}")]
    Length(usize),
    #[error("the capability's signature is not the project's")]
    Signature,
    #[error("the capability expired {0} ms ago")]
    Expired(i64),
}

impl PeerCapability {
    fn fields(&self) -> [u8; FIELDS] {
        let mut fields = [0u8; FIELDS];
        fields[..32].copy_from_slice(&self.blob.0);
        fields[32..40].copy_from_slice(&self.host_id.to_le_bytes());
        fields[40..72].copy_from_slice(&self.certificate);
        fields[72..].copy_from_slice(&self.expires_ms.to_le_bytes());
        fields
    }

    fn message(fields: &[u8]) -> Vec<u8> {
        [SIGNING_CONTEXT, fields].concat()
    }

    /// The fields and the project key's signature over them.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let fields = self.fields();
        let signature = key.sign(&Self::message(&fields));
        [&fields[..], &signature.to_bytes()[..]].concat()
    }

    /// Checks the signature and the expiry, then decodes.
    pub fn verify(
        bytes: &[u8],
        key: &VerifyingKey,
        now_ms: i64,
    ) -> Result<PeerCapability, CapabilityError> {
        if bytes.len() != ENCODED_LEN {
            return Err(CapabilityError::Length(bytes.len()));
        }
        let (fields, signature) = bytes.split_at(FIELDS);
        let signature = Signature::from_slice(signature).map_err(|_| CapabilityError::Signature)?;
        key.verify(&Self::message(fields), &signature)
            .map_err(|_| CapabilityError::Signature)?;
        let word = |range: std::ops::Range<usize>| -> [u8; 8] {
            let mut word = [0u8; 8];
            word.copy_from_slice(&fields[range]);
            word
        };
        let mut blob = [0u8; 32];
        blob.copy_from_slice(&fields[..32]);
        let mut certificate = [0u8; 32];
        certificate.copy_from_slice(&fields[40..72]);
        let capability = PeerCapability {
            blob: BlobHash(blob),
            host_id: i64::from_le_bytes(word(32..40)),
            certificate,
            expires_ms: i64::from_le_bytes(word(72..80)),
        };
        if capability.expires_ms < now_ms {
            return Err(CapabilityError::Expired(now_ms - capability.expires_ms));
        }
        Ok(capability)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::generate_signing_key;

    fn sample() -> PeerCapability {
        PeerCapability {
            blob: BlobHash::of(b"input"),
            host_id: 7,
            certificate: [3; 32],
            expires_ms: 1_000,
        }
    }

    #[test]
    fn only_the_project_key_and_only_before_expiry() {
        let key = generate_signing_key();
        let signed = sample().sign(&key);
        assert_eq!(signed.len(), ENCODED_LEN);
        assert_eq!(
            PeerCapability::verify(&signed, &key.verifying_key(), 999),
            Ok(sample())
        );
        assert_eq!(
            PeerCapability::verify(&signed, &key.verifying_key(), 1_500),
            Err(CapabilityError::Expired(500))
        );
        let stranger = generate_signing_key();
        assert_eq!(
            PeerCapability::verify(&sample().sign(&stranger), &key.verifying_key(), 0),
            Err(CapabilityError::Signature)
        );
        // Every single-byte change is caught: the blob, the host, the
        // certificate, the expiry, the signature.
        for index in 0..ENCODED_LEN {
            let mut tampered = signed.clone();
            tampered[index] ^= 0x40;
            assert!(
                PeerCapability::verify(&tampered, &key.verifying_key(), 0).is_err(),
                "byte {index}"
            );
        }
        for length in [0, 1, ENCODED_LEN - 1, ENCODED_LEN + 1, 4096] {
            let mut odd = signed.clone();
            odd.resize(length, 0);
            assert_eq!(
                PeerCapability::verify(&odd, &key.verifying_key(), 0),
                Err(CapabilityError::Length(length))
            );
        }
    }
}
