//! Researchers' validator modules on every backend: the real
//! `montecarlo-validator` wasm groups estimates that differ within their
//! statistical error, rejects garbage, and a module that is no validator is
//! refused at submit or errors its units with the reason.

use super::store::{attach, backends, job_spec, report, success, take_one};
use cobble_coordinator::Error;
use cobble_coordinator::store::Store;
use cobble_proto::v1 as pb;

async fn blob(store: &Store, bytes: &[u8]) -> pb::BlobRef {
    let hash = store.blobs.put(bytes).await.expect("blob");
    pb::BlobRef {
        hash: hash.0.to_vec(),
        size: bytes.len() as u64,
        chunk_root: Vec::new(),
    }
}

async fn submit_validated(store: &Store, units: i64, validator_wasm: &[u8]) -> Result<i64, Error> {
    let validator = pb::Validator {
        kind: "module".into(),
        module: Some(blob(store, validator_wasm).await),
        ..Default::default()
    };
    let spec = job_spec(store, units, (2, 2, 5), 600, Some(validator)).await;
    store
        .submit_job(&spec, &super::store::owner(store).await)
        .await
        .map(|(job, _)| job)
}

fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).expect("built by cobble-unit-artifacts")
}

/// Reports `stdout` for one replica of the job's only unit from a new host,
/// then lets the validators run as the coordinator's loop would.
async fn reply(store: &Store, account: &str, stdout: &str) {
    let host = attach(store, account).await;
    let manifest = take_one(store, host)
        .await
        .expect("a replica for a new host");
    let request = success(store, stdout.as_bytes(), 1_000_000_000).await;
    report(store, host, &manifest.lease_id, request)
        .await
        .expect("report");
    store.run_validators().await.expect("validators run");
}

#[tokio::test]
async fn a_validator_module_accepts_estimates_within_their_error_and_nothing_else() {
    let validator = wasm(cobble_unit_artifacts::MONTECARLO_VALIDATOR);
    for backend in backends().await {
        let store = &backend.store;
        let job = submit_validated(store, 1, &validator)
            .await
            .expect("submit");
        let honest = "pi 3.14159e0 integral 7.46820e-1 samples 10000000\n";
        // Another random stream: a different estimate, within the error.
        let also_honest = "pi 3.14230e0 integral 7.46790e-1 samples 10000000\n";
        let wrong = "pi 3.20000e0 integral 7.46820e-1 samples 10000000\n";
        reply(store, "wrong", wrong).await;
        reply(store, "garbage", "pi is exactly three\n").await;
        let status = store.job_status(job).await.expect("status");
        assert_eq!(status.state, "running", "{status:?}");
        reply(store, "honest", honest).await;
        let status = store.job_status(job).await.expect("status");
        assert_eq!(status.state, "running", "no two agree yet: {status:?}");
        reply(store, "also-honest", also_honest).await;

        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (
                status.state.as_str(),
                status.results_valid,
                status.results_invalid
            ),
            ("done", 2, 2),
            "{status:?}"
        );
        let results = store.job_results(job).await.expect("results");
        let canonical = results.units[0].stdout.as_ref().expect("stdout");
        let text = store
            .blobs
            .read(&cobble_core::BlobHash::from_slice(&canonical.hash).expect("hash"))
            .await
            .expect("canonical stdout");
        assert_eq!(
            text,
            honest.as_bytes(),
            "the first agreeing output is canonical"
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn a_module_that_is_no_validator_is_refused_or_errors_its_units() {
    for backend in backends().await {
        let store = &backend.store;
        // Not WebAssembly at all: refused before any unit exists.
        let refused = submit_validated(store, 1, b"this is not wasm").await;
        assert!(matches!(&refused, Err(Error::Sandbox(_))), "{refused:?}");
        let status: tonic::Status = refused.expect_err("refused").into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

        // A WASI command that fails on every output (primes wants two
        // arguments): the unit errors with the validator's reason rather
        // than burning replicas that could never be judged.
        let job = submit_validated(store, 1, &wasm(cobble_unit_artifacts::PRIMES))
            .await
            .expect("a valid command is accepted");
        reply(store, "a", "pi 3.14159e0 integral 7.46820e-1 samples 10\n").await;
        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (status.state.as_str(), status.units_errored),
            ("done", 1),
            "{status:?}"
        );
        let results = store.job_results(job).await.expect("results");
        assert!(
            results.units[0].error.contains("validator failed")
                && results.units[0].error.contains("status 2"),
            "{:?}",
            results.units[0].error
        );
        backend.cleanup().await;
    }
}
