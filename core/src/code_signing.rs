//! Offline code signing, as BOINC's `crypt_prog`: a project may keep a
//! second ed25519 key off the network and sign each module with it. Workers
//! pin its public key on attach and refuse any module it did not sign, so
//! whoever steals the coordinator (its database and its online manifest
//! key) still cannot make volunteers run new code.
//!
//! A signature covers the module's BLAKE3 hash, under a context of its
//! own; the detached `.sig` file holds it as 128 hex digits.

use crate::{BlobHash, Error};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Domain separation from manifests and capabilities.
const SIGNING_CONTEXT: &[u8] = b"cobble-code-v1\0";

fn message(module: &BlobHash) -> Vec<u8> {
    [SIGNING_CONTEXT, &module.0[..]].concat()
}

/// Signs a module, given its hash.
pub fn sign(module: &BlobHash, key: &SigningKey) -> [u8; 64] {
    key.sign(&message(module)).to_bytes()
}

/// Checks that `signature` is `key`'s over the module with this hash.
pub fn verify(module: &BlobHash, signature: &[u8], key: &VerifyingKey) -> Result<(), Error> {
    let signature = Signature::from_slice(signature).map_err(|_| {
        Error::UnsignedCode(format!(
            "module {module} carries no valid signature ({} bytes)",
            signature.len()
        ))
    })?;
    key.verify(&message(module), &signature).map_err(|_| {
        Error::UnsignedCode(format!(
            "module {module} is not signed by the code-signing key {}",
            hex::encode(key.as_bytes())
        ))
    })
}

/// The text of a `.sig` file.
pub fn to_file_text(signature: &[u8; 64]) -> String {
    format!("{}\n", hex::encode(signature))
}

/// Reads a `.sig` file's text.
pub fn from_file_text(text: &str) -> Result<Vec<u8>, Error> {
    hex::decode(text.trim())
        .ok()
        .filter(|bytes| bytes.len() == 64)
        .ok_or_else(|| {
            Error::UnsignedCode(
                "a module signature file holds 128 hex digits (`cobble sign-module` writes it)"
                    .into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::generate_signing_key;

    #[test]
    fn only_the_code_key_over_exactly_this_module() {
        let code_key = generate_signing_key();
        let module = BlobHash::of(b"\0asm module");
        let signature = sign(&module, &code_key);
        verify(&module, &signature, &code_key.verifying_key()).expect("verifies");
        let text = to_file_text(&signature);
        assert_eq!(from_file_text(&text).expect("parses"), signature);
        // Another module, another key, a tampered or truncated signature.
        let other = BlobHash::of(b"\0asm other");
        assert!(verify(&other, &signature, &code_key.verifying_key()).is_err());
        let online = generate_signing_key();
        assert!(verify(&module, &sign(&module, &online), &code_key.verifying_key()).is_err());
        let mut tampered = signature;
        tampered[10] ^= 1;
        assert!(verify(&module, &tampered, &code_key.verifying_key()).is_err());
        let error = verify(&module, &[], &code_key.verifying_key()).expect_err("none");
        assert!(error.to_string().contains("no valid signature"), "{error}");
        for bad in ["", "zz", &"ab".repeat(63), &"ab".repeat(65)] {
            assert!(from_file_text(bad).is_err(), "{bad}");
        }
    }
}
