//! Integrity end to end: a `cobble-cheater` that reports honestly until
//! it is trusted, then forges every result. Spot-checks catch it, what it
//! returned alone is computed again, and the job's results are the honest
//! answers.

use super::job::count_primes;
use cobble_e2e::{Coordinator, start_worker_with, wait_until, write_job};
use serde_json::Value;
use std::time::Duration;

const UNITS: u64 = 64;
const PER_UNIT: u64 = 20_000;
const RANGE_START: u64 = 1_000_000_000;

/// Which units go alone and which are checked is random, so a run may
/// catch the cheater before it returned anything alone; the scenario runs
/// again then (each run must end with honest answers), up to three times.
#[test]
fn a_worker_that_turns_bad_after_earning_trust_is_caught_and_its_results_redone() {
    for attempt in 1..=3 {
        let reverified = turncoat_scenario();
        eprintln!("attempt {attempt}: units returned alone verified again {reverified} times");
        if reverified > 0 {
            return;
        }
    }
    panic!("in three runs the cheater was never caught holding units it returned alone");
}

/// Runs the scenario; returns how often the coordinator verified again the
/// units a caught host had returned alone.
fn turncoat_scenario() -> usize {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // Trust after three valid results, and a check on a quarter of what
    // would go alone, so the scenario plays out within one small job.
    let coordinator = Coordinator::start_with(
        dir,
        &[
            "--trust-after",
            "3",
            "--spot-check-trusted",
            "0.25",
            "--replica-spacing-ms",
            "100",
        ],
    );
    let spec = write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        &format!(
            "name = \"turncoat\"\nmodule = \"primes.wasm\"\nargs = [\"{{start}}\", \"{{end}}\"]\n\
             [split]\nrange = {{ start = {RANGE_START}, end = {end}, per_unit = {PER_UNIT} }}\n\
             [replication]\nmin_quorum = 2\ntarget_results = 2\nmax_total_results = 8\n\
             [limits]\nfuel = 50000000000\nmemory_mib = 64\ndeadline_s = 120\n",
            end = RANGE_START + UNITS * PER_UNIT
        ),
    );
    let job = coordinator.submit(&spec);
    let mallory = start_worker_with(
        "cobble-cheater",
        &coordinator,
        &dir.join("mallory"),
        "mallory",
        &["--honest-for", "16", "--slots", "2"],
    );
    let honest: Vec<_> = ["alice", "bob", "carol"]
        .iter()
        .map(|name| {
            start_worker_with(
                "cobble-worker",
                &coordinator,
                &dir.join(name),
                name,
                &["--slots", "1"],
            )
        })
        .collect();

    let status = || -> Value {
        serde_json::from_str(&coordinator.cli_ok(&["status", &job, "--json"])).expect("json")
    };
    let done = wait_until(Duration::from_secs(300), || status()["state"] == "done");
    let final_status = status();
    assert!(
        done,
        "job did not finish: {final_status}\n{}",
        mallory.log_text()
    );
    assert!(
        mallory.log_text().contains("forging a unit's stdout"),
        "the cheater never turned: {}",
        mallory.log_text()
    );
    assert!(
        final_status["results"]["invalid"].as_u64() >= Some(1),
        "the cheater was never caught: {final_status}"
    );

    // Every canonical result is the honest answer, forged ones replaced.
    let out = dir.join("results");
    coordinator.cli_ok(&["results", &job, "--out", out.to_str().expect("utf-8 path")]);
    for index in 0..UNITS {
        let start = RANGE_START + index * PER_UNIT;
        let end = start + PER_UNIT;
        let stdout = std::fs::read_to_string(out.join(index.to_string()).join("stdout"))
            .unwrap_or_else(|e| panic!("unit {index} has no stdout: {e}"));
        assert_eq!(
            stdout,
            format!("primes in [{start}, {end}): {}\n", count_primes(start, end)),
            "unit {index}: a forged result survived\n{}",
            coordinator.process.log_text()
        );
    }
    let results: Value = serde_json::from_str(&coordinator.cli_ok(&[
        "results",
        &job,
        "--json",
        "--out",
        out.to_str().expect("utf-8 path"),
    ]))
    .expect("json");
    let replicated = results["units"]
        .as_array()
        .map(|units| units.iter().filter(|u| u["replicated"] == true).count())
        .unwrap_or(0);
    assert!(replicated > 0, "{results}");
    drop(honest);
    coordinator
        .process
        .log_text()
        .matches("verified again")
        .count()
}
