//! Property tests (proptest, stable Rust) for the three parsers hostile
//! bytes reach first: the job spec, manifest verification and chunk-list
//! verification. Each must answer every input with a value or an error,
//! never a panic, and accept nothing it should not.

use crate::chunk::{CHUNK_SIZE, ChunkList};
use crate::spec::{self, LocalJob};
use cobble_proto::v1 as pb;
use proptest::prelude::*;

fn range_spec(
    start: i64,
    end: i64,
    per_unit: i64,
    quorum: (u32, u32, u32),
    limits: pb::Limits,
) -> pb::JobSpec {
    pb::JobSpec {
        name: "p".into(),
        module: Some(pb::BlobRef {
            hash: vec![7; 32],
            size: 8,
            chunk_root: Vec::new(),
        }),
        args: vec!["{start}".into(), "{end}".into()],
        split: Some(pb::SplitRule {
            rule: Some(pb::split_rule::Rule::Range(pb::RangeSplit {
                start,
                end,
                per_unit,
            })),
        }),
        replication: Some(pb::Replication {
            min_quorum: quorum.0,
            target_results: quorum.1,
            max_total_results: quorum.2,
            adaptive: None,
        }),
        limits: Some(limits),
        ..Default::default()
    }
}

/// Integers near the places ranges break: zero, small, and the ends of i64.
fn edgy_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -1_000i64..1_000,
        (i64::MAX - 1_000)..=i64::MAX,
        i64::MIN..(i64::MIN + 1_000),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any numbers at all: the coordinator's check answers, and what it
    /// accepts splits into at most a million units that tile the range
    /// without wrapping.
    #[test]
    fn spec_checks_never_panic_and_accepted_ranges_split_sanely(
        start in edgy_i64(),
        end in edgy_i64(),
        per_unit in edgy_i64(),
        quorum in (0u32..6, 0u32..8, 0u32..12),
        fuel in prop_oneof![any::<u64>(), 1u64..1_000_000],
        memory_mib in prop_oneof![any::<u32>(), 1u32..4096],
        deadline_s in prop_oneof![any::<u32>(), 1u32..100_000],
        max_output_bytes in prop_oneof![any::<u64>(), 1u64..(1 << 30)],
    ) {
        let limits = pb::Limits { fuel, memory_mib, deadline_s, max_output_bytes };
        let job = range_spec(start, end, per_unit, quorum, limits);
        if spec::check_spec(&job).is_ok() {
            let units = spec::split(&job);
            prop_assert!(!units.is_empty() && units.len() <= 1_000_000);
            let mut expected = start;
            for unit in &units {
                let from: i64 = unit.args[0].parse().expect("start");
                let to: i64 = unit.args[1].parse().expect("end");
                prop_assert_eq!(from, expected);
                prop_assert!(to > from && to <= end);
                expected = to;
            }
            prop_assert_eq!(expected, end);
        }
    }

    /// Arbitrary text as a spec file: parsed or refused, never a panic.
    #[test]
    fn spec_text_never_panics(text in "\\PC{0,400}") {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("unit.wasm"), b"\0asm").expect("write");
        let _ = LocalJob::parse(&text, dir.path());
        let with_module = format!("name = \"x\"\nmodule = \"unit.wasm\"\n{text}");
        let _ = LocalJob::parse(&with_module, dir.path());
    }

    /// A manifest verifies only as signed: any flipped bit in the bytes or
    /// the signature, or another key, is refused; garbage never verifies.
    #[test]
    fn manifests_verify_only_as_signed(
        unit_id in any::<i64>(),
        args in proptest::collection::vec("\\PC{0,20}", 0..4),
        flip in any::<proptest::sample::Index>(),
        bit in 0u8..8,
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let key = crate::manifest::generate_signing_key();
        let manifest = pb::Manifest { unit_id, args, lease_id: "l".into(), ..Default::default() };
        let signed = crate::manifest::sign(&manifest, &key);
        prop_assert_eq!(crate::manifest::verify(&signed, &key.verifying_key()).ok(), Some(manifest));
        let mut tampered = signed.clone();
        let total = tampered.manifest.len() + tampered.signature.len();
        let at = flip.index(total);
        if at < tampered.manifest.len() {
            tampered.manifest[at] ^= 1 << bit;
        } else {
            tampered.signature[at - tampered.manifest.len()] ^= 1 << bit;
        }
        prop_assert!(crate::manifest::verify(&tampered, &key.verifying_key()).is_err());
        let other = crate::manifest::generate_signing_key();
        prop_assert!(crate::manifest::verify(&signed, &other.verifying_key()).is_err());
        let forged = pb::Assignment { manifest: garbage.clone(), signature: garbage };
        prop_assert!(crate::manifest::verify(&forged, &key.verifying_key()).is_err());
    }

    /// A chunk list is accepted only with its own root and length, and a
    /// chunk only with its own bytes; arbitrary lists never panic.
    #[test]
    fn chunk_lists_accept_only_the_committed_bytes(
        len in 0usize..(3 * CHUNK_SIZE as usize),
        seed in any::<u8>(),
        flip in any::<proptest::sample::Index>(),
        wire in proptest::collection::vec(any::<u8>(), 0..200),
        size in any::<u64>(),
        root in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let list = ChunkList::of_bytes(&bytes);
        let parsed = ChunkList::from_wire(&list.to_wire(), len as u64, &list.root());
        prop_assert!(parsed.is_ok());
        let parsed = parsed.expect("checked");
        prop_assert!(ChunkList::from_wire(&list.to_wire(), len as u64 + 1, &list.root()).is_err());
        if !bytes.is_empty() {
            let at = flip.index(bytes.len());
            let index = at / CHUNK_SIZE as usize;
            let start = index * CHUNK_SIZE as usize;
            let end = (start + CHUNK_SIZE as usize).min(bytes.len());
            let mut chunk = bytes[start..end].to_vec();
            prop_assert!(parsed.verify(index, &chunk));
            chunk[at - start] ^= 0x80;
            prop_assert!(!parsed.verify(index, &chunk));
            prop_assert!(!parsed.verify(index + 1_000, &chunk));
        }
        let _ = ChunkList::from_wire(&wire, size, &root);
        let mut wrong_root = list.root();
        wrong_root[0] ^= 1;
        prop_assert!(ChunkList::from_wire(&list.to_wire(), len as u64, &wrong_root).is_err());
    }
}
