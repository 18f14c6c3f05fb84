//! Invariant 5 end to end: a worker never runs a unit whose blobs do not
//! hash to what the signed manifest says. Here the coordinator's own copy
//! of the module is corrupted on disk after submission.

use cobble_e2e::{Coordinator, start_worker, wait_until};
use serde_json::Value;
use std::time::Duration;

#[test]
fn a_corrupt_module_is_refused_and_reported() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let job = coordinator.submit_tiny_primes_job(dir);
    let module = std::fs::read(cobble_unit_artifacts::PRIMES).expect("primes.wasm");

    // Flip one byte of the stored module: same name, different content.
    let hex = cobble_core::BlobHash::of(&module).to_hex();
    let stored = coordinator
        .data_dir
        .join("blobs")
        .join(&hex[..2])
        .join(&hex);
    let mut bytes = std::fs::read(&stored).expect("stored module");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, bytes).expect("corrupt");

    let worker_dir = dir.join("victim");
    let worker = start_worker("cobble-worker", &coordinator, &worker_dir, "victim");
    assert!(
        worker.wait_for_log("failed verification", 1, Duration::from_secs(60)),
        "{}",
        worker.log_text()
    );
    let reported = wait_until(Duration::from_secs(30), || {
        let status: Value =
            serde_json::from_str(&coordinator.cli_ok(&["status", &job, "--json"])).expect("json");
        status["results"]["client_error"] == 1
    });
    assert!(reported, "{}", coordinator.cli_ok(&["status", &job]));
    let log = worker.log_text();
    assert!(
        !log.contains("unit finished"),
        "a unit ran on a corrupt module:\n{log}"
    );
    let cached: Vec<_> = std::fs::read_dir(worker_dir.join("blobs"))
        .expect("blob cache")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        cached.is_empty(),
        "unverified bytes reached the cache: {cached:?}"
    );
}
