//! Signed work-unit manifests.
//!
//! The coordinator encodes a [`Manifest`] once, signs those exact bytes and
//! ships bytes and signature together; the worker verifies the signature over
//! the bytes it received before decoding them. Signing bytes rather than a
//! re-encoding avoids any dependence on canonical protobuf encoding.

use crate::Error;
use cobble_proto::v1::{Assignment, BlobRef, Manifest};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;

/// Domain separation: a manifest signature can never be replayed as a
/// signature over anything else the project key might sign later.
const SIGNING_CONTEXT: &[u8] = b"cobble-manifest-v1\0";

fn signed_message(manifest_bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + manifest_bytes.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(manifest_bytes);
    message
}

/// Encodes and signs a manifest with the project key.
pub fn sign(manifest: &Manifest, key: &SigningKey) -> Assignment {
    let manifest_bytes = manifest.encode_to_vec();
    let signature = key.sign(&signed_message(&manifest_bytes));
    Assignment {
        manifest: manifest_bytes,
        signature: signature.to_bytes().to_vec(),
    }
}

/// Verifies an assignment's signature, then decodes its manifest.
/// Nothing from an unverified manifest is ever looked at.
pub fn verify(assignment: &Assignment, project_key: &VerifyingKey) -> Result<Manifest, Error> {
    let signature = Signature::from_slice(&assignment.signature)
        .map_err(|e| Error::MalformedSignature(e.to_string()))?;
    project_key
        .verify(&signed_message(&assignment.manifest), &signature)
        .map_err(|_| Error::BadSignature)?;
    let manifest = Manifest::decode(assignment.manifest.as_slice())
        .map_err(|e| Error::MalformedManifest(e.to_string()))?;
    // The worker places each input at its name: a signed manifest (from a
    // stolen project key, say) must not name a file outside `/input`.
    check_input_names(manifest.inputs.iter().map(|i| i.name.as_str()))
        .map_err(Error::MalformedManifest)?;
    // The unit sees these and nothing else of an environment: bounded and
    // well formed, whoever signed them.
    crate::spec::check_env(
        manifest
            .env
            .iter()
            .map(|var| (var.name.as_str(), var.value.as_str())),
    )
    .map_err(|e| Error::MalformedManifest(e.to_string()))?;
    Ok(manifest)
}

/// Names of one unit's inputs: each a path inside `/input`, none twice,
/// and none both a file and a folder of another (`0/a` beside `0/a/b`), so
/// that placing them never lands on a file already placed.
pub fn check_input_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let names: Vec<&str> = names.collect();
    let mut files = std::collections::HashSet::new();
    for name in &names {
        if !is_input_path(name) {
            return Err(format!("input name {name:?} is not a path inside /input"));
        }
        if !files.insert(*name) {
            return Err(format!("two inputs are named {name:?}"));
        }
    }
    for name in &names {
        let mut folder = *name;
        while let Some((parent, _)) = folder.rsplit_once('/') {
            if files.contains(parent) {
                return Err(format!(
                    "input {parent:?} is a file, and {name:?} would need it as a folder"
                ));
            }
            folder = parent;
        }
    }
    Ok(())
}

/// A name a unit may see under `/input`: relative, its components plain
/// (no `.`, `..`, empty part, backslash or NUL), at most 4 deep and 1024
/// bytes. `0/tile.pgm` is one (a reduce unit's inputs are by unit index);
/// `../x`, `/etc/x` and `a//b` are not.
pub fn is_input_path(name: &str) -> bool {
    name.len() <= 1024
        && !name.is_empty()
        && name.split('/').count() <= 4
        && name.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.len() <= 255
                && !part.contains(['\\', '\0'])
        })
}

/// Parses a project public key from its 32 raw bytes.
pub fn project_key_from_bytes(bytes: &[u8]) -> Result<VerifyingKey, Error> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Error::BadProjectKey(format!("expected 32 bytes, got {}", bytes.len())))?;
    VerifyingKey::from_bytes(&array).map_err(|e| Error::BadProjectKey(e.to_string()))
}

/// Parses a project public key from 64 hex digits, as printed by the coordinator.
pub fn project_key_from_hex(text: &str) -> Result<VerifyingKey, Error> {
    let bytes = hex::decode(text.trim()).map_err(|e| Error::BadProjectKey(e.to_string()))?;
    project_key_from_bytes(&bytes)
}

/// Every blob a unit needs: its module, then its inputs.
pub fn blobs(manifest: &Manifest) -> impl Iterator<Item = &BlobRef> {
    manifest.module.iter().chain(
        manifest
            .inputs
            .iter()
            .filter_map(|input| input.blob.as_ref()),
    )
}

/// Creates a fresh project signing key from the OS random source.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::from_bytes(&crate::random_bytes::<32>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cobble_proto::v1::BlobRef;

    fn manifest() -> Manifest {
        Manifest {
            unit_id: 7,
            job_id: 1,
            lease_id: "lease".into(),
            module: Some(BlobRef {
                hash: vec![1; 32],
                size: 10,
                chunk_root: vec![2; 32],
            }),
            args: vec!["0".into(), "100".into()],
            deadline_ms: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn signed_manifest_verifies() {
        let key = generate_signing_key();
        let assignment = sign(&manifest(), &key);
        let decoded = verify(&assignment, &key.verifying_key()).ok();
        assert_eq!(decoded, Some(manifest()));
    }

    #[test]
    fn a_signed_manifest_naming_an_input_outside_input_is_refused() {
        let key = generate_signing_key();
        let blob = BlobRef {
            hash: vec![3; 32],
            size: 1,
            chunk_root: vec![4; 32],
        };
        let with_input = |name: &str| Manifest {
            inputs: vec![cobble_proto::v1::NamedBlob {
                name: name.into(),
                blob: Some(blob.clone()),
            }],
            ..manifest()
        };
        for good in ["data.bin", "0/tile.pgm", "12/stdout", "a/b/c/d"] {
            let signed = sign(&with_input(good), &key);
            assert!(verify(&signed, &key.verifying_key()).is_ok(), "{good}");
        }
        let long = "x".repeat(256);
        for hostile in [
            "../escape",
            "a/../../escape",
            "/home/volunteer/.bashrc",
            "",
            ".",
            "a//b",
            "a/./b",
            "a\\..\\b",
            "nul\0byte",
            "a/b/c/d/e",
            long.as_str(),
        ] {
            let signed = sign(&with_input(hostile), &key);
            let error = verify(&signed, &key.verifying_key()).expect_err(hostile);
            assert!(
                matches!(error, Error::MalformedManifest(ref m) if m.contains("not a path inside /input")),
                "{hostile:?}: {error}"
            );
        }
    }

    #[test]
    fn a_signed_manifests_environment_is_checked_too() {
        let key = generate_signing_key();
        let with_env = |vars: &[(&str, &str)]| Manifest {
            env: vars
                .iter()
                .map(|(name, value)| cobble_proto::v1::EnvVar {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            ..manifest()
        };
        let good = sign(&with_env(&[("PYTHONHASHSEED", "0")]), &key);
        let verified = verify(&good, &key.verifying_key()).expect("valid");
        assert_eq!(verified.env[0].name, "PYTHONHASHSEED");
        let huge = "x".repeat(5000);
        for hostile in [
            &[("LD_PRELOAD=/x", "1")][..],
            &[("A", "nul\0")][..],
            &[("A", huge.as_str())][..],
            &[("A", "1"), ("A", "2")][..],
        ] {
            let signed = sign(&with_env(hostile), &key);
            let error = verify(&signed, &key.verifying_key()).expect_err("refused");
            assert!(
                matches!(error, Error::MalformedManifest(ref m) if m.contains("env")),
                "{hostile:?}: {error}"
            );
        }
    }

    #[test]
    fn tampered_manifest_is_refused() {
        let key = generate_signing_key();
        let mut assignment = sign(&manifest(), &key);
        // Flip one byte of the args: a host asking for a bigger range, say.
        let last = assignment.manifest.len() - 1;
        assignment.manifest[last] ^= 1;
        assert!(matches!(
            verify(&assignment, &key.verifying_key()),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn wrong_key_is_refused() {
        let key = generate_signing_key();
        let other = generate_signing_key();
        let assignment = sign(&manifest(), &key);
        assert!(matches!(
            verify(&assignment, &other.verifying_key()),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn truncated_signature_is_refused() {
        let key = generate_signing_key();
        let mut assignment = sign(&manifest(), &key);
        assignment.signature.truncate(10);
        assert!(matches!(
            verify(&assignment, &key.verifying_key()),
            Err(Error::MalformedSignature(_))
        ));
    }

    #[test]
    fn unsigned_assignment_is_refused() {
        let key = generate_signing_key();
        let assignment = Assignment {
            manifest: manifest().encode_to_vec(),
            signature: vec![0; 64],
        };
        assert!(verify(&assignment, &key.verifying_key()).is_err());
    }

    #[test]
    fn project_key_hex_round_trip() {
        let key = generate_signing_key().verifying_key();
        let parsed = project_key_from_hex(&hex::encode(key.as_bytes())).ok();
        assert_eq!(parsed, Some(key));
        assert!(project_key_from_hex("abcd").is_err());
    }

    #[test]
    fn input_names_that_would_land_on_each_other_are_refused() {
        let check = |names: &[&str]| check_input_names(names.iter().copied());
        check(&["sir.py", "0/stdout", "0/tile.pgm", "1/stdout", "1/a/b/c"]).expect("distinct");
        // A unit that wrote a file named stdout beside its stdout.
        let error = check(&["0/stdout", "0/stdout"]).expect_err("twice");
        assert!(error.contains("two inputs"), "{error}");
        // A shared input named like a unit's folder, and a file that would
        // have to be a folder.
        for names in [
            &["0", "0/stdout"][..],
            &["0/a", "0/a/b"][..],
            &["0/a/b/c", "0/a"][..],
        ] {
            let error = check(names).expect_err("file and folder");
            assert!(error.contains("is a file"), "{names:?}: {error}");
        }
        let error = check(&["../x"]).expect_err("outside");
        assert!(error.contains("not a path inside /input"), "{error}");
    }
}
