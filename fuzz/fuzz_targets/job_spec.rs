//! A SubmitJob spec as the coordinator decodes it off the wire: refused,
//! or split into at most a million units, never a panic.
#![no_main]

use prost::Message;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(spec) = cobble_proto::v1::JobSpec::decode(bytes) else {
        return;
    };
    if cobble_core::spec::check_spec(&spec).is_ok() {
        let units = cobble_core::spec::split(&spec);
        assert!(units.len() <= 1_000_000);
    }
});
