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

/// Stalled uploads do not keep a coordinator from stopping: SIGTERM stops
/// it within its grace period although three uploads never finish.
#[test]
fn a_coordinator_stops_on_sigterm_despite_stalled_uploads() {
    use cobble_client::{Connection, Credentials};
    use cobble_proto::v1::{self as pb, blob_service_client::BlobServiceClient};
    let temp = tempfile::tempdir().expect("temp dir");
    let mut coordinator = Coordinator::start(temp.path());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _stalled: Vec<_> = (0..3)
        .map(|_| {
            let url = coordinator.url.clone();
            let security = coordinator.security();
            let token = coordinator.researcher_token();
            runtime.spawn(async move {
                let channel = cobble_client::connect(&url, &security)
                    .await
                    .expect("connect");
                let connection =
                    Connection::from_channel(channel.clone(), Credentials::Researcher(token));
                let first = pb::BlobChunk {
                    expected: Some(pb::BlobRef {
                        hash: vec![9; 32],
                        size: 1 << 20,
                        chunk_root: Vec::new(),
                    }),
                    data: vec![0; 1024],
                };
                // One chunk, then nothing, ever.
                let stream = one_chunk_then_nothing(first);
                let _ = BlobServiceClient::new(channel)
                    .upload_blob(connection.request(stream))
                    .await;
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let pid = coordinator.process.child.id();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let stopped = wait_until(Duration::from_secs(15), || {
        matches!(coordinator.process.child.try_wait(), Ok(Some(_)))
    });
    assert!(
        stopped,
        "still running 15 s after SIGTERM\n{}",
        coordinator.process.log_text()
    );
    assert!(
        coordinator.process.log_text().contains("grace period"),
        "{}",
        coordinator.process.log_text()
    );
    coordinator.process.kill();
}

/// A stream of one item that then never ends.
fn one_chunk_then_nothing(
    first: cobble_proto::v1::BlobChunk,
) -> impl tokio_stream::Stream<Item = cobble_proto::v1::BlobChunk> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::iter([first]).chain(tokio_stream::pending())
}
