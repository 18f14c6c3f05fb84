//! An assignment as a worker receives it: nothing verifies but what the
//! project key signed.
#![no_main]

use prost::Message;
use std::sync::OnceLock;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    static KEY: OnceLock<ed25519_dalek::VerifyingKey> = OnceLock::new();
    let key = KEY.get_or_init(|| cobble_core::manifest::generate_signing_key().verifying_key());
    let Ok(assignment) = cobble_proto::v1::Assignment::decode(bytes) else {
        return;
    };
    assert!(cobble_core::manifest::verify(&assignment, key).is_err());
});
