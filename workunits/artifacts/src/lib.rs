//! Paths of the work units built for `wasm32-wasip1`, for tests and
//! benchmarks: every guest is run by at least one test.

include!(concat!(env!("OUT_DIR"), "/units.rs"));
