//! A chunk list from the network: accepted only with the committed root,
//! never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: (Vec<u8>, u64, Vec<u8>)| {
    let (wire, size, root) = input;
    let _ = cobble_core::chunk::ChunkList::from_wire(&wire, size, &root);
});
