//! A job spec file's text, as `cobble submit` reads it: parsed or refused,
//! never a panic.
#![no_main]

use std::sync::OnceLock;

fn spec_dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("unit.wasm"), b"\0asm\x01\0\0\0").expect("module");
        std::fs::write(dir.path().join("table.bin"), b"t").expect("input");
        dir
    })
    .path()
}

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = cobble_core::spec::LocalJob::parse(text, spec_dir());
});
