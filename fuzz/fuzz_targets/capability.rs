//! A peer capability presented by a caller: nothing verifies but what the
//! project key signed.
#![no_main]

use std::sync::OnceLock;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    static KEY: OnceLock<ed25519_dalek::VerifyingKey> = OnceLock::new();
    let key = KEY.get_or_init(|| cobble_core::manifest::generate_signing_key().verifying_key());
    assert!(cobble_core::capability::PeerCapability::verify(bytes, key, 0).is_err());
});
