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

/// A primes job over `range`, quorum 2; `more` continues its
/// `[replication]` table and may add tables after it.
fn write_primes_job(
    dir: &std::path::Path,
    (start, end): (u64, u64),
    more: &str,
) -> std::path::PathBuf {
    write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        &format!(
            "name = \"primes\"\nmodule = \"primes.wasm\"\nargs = [\"{{start}}\", \"{{end}}\"]\n\
             [split]\nrange = {{ start = {start}, end = {end}, per_unit = {PER_UNIT} }}\n\
             [replication]\nmin_quorum = 2\ntarget_results = 2\n{more}"
        ),
    )
}

fn status_json(coordinator: &Coordinator, job: &str) -> Value {
    serde_json::from_str(&coordinator.cli_ok(&["status", job, "--json"])).expect("json")
}

fn start_honest(
    coordinator: &Coordinator,
    dir: &std::path::Path,
    names: &[&str],
    slots: &str,
) -> Vec<cobble_e2e::Process> {
    names
        .iter()
        .map(|name| {
            start_worker_with(
                "cobble-worker",
                coordinator,
                &dir.join(name),
                name,
                &["--slots", slots],
            )
        })
        .collect()
}

/// Deterministic in its phases, whatever the machine's load: the cheater
/// first earns trust honestly on a job of single results; then, alone on
/// the project, it
/// forges everything of a second job, and the test waits until some of
/// those forgeries were accepted alone (adaptive replication); only then
/// do honest hosts join. They compute the replicas and spot-checks the
/// cheater holds, which catches it, and everything it returned alone must
/// be verified again: no forged result may survive.
#[test]
fn a_worker_that_turns_bad_after_earning_trust_is_caught_and_its_results_redone() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // Trust after three valid results, and a check on a quarter of what
    // would go alone, so the scenario plays out within small jobs.
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
    let limits =
        "max_total_results = 8\n[limits]\nfuel = 50000000000\nmemory_mib = 64\ndeadline_s = 120\n";
    let status = |job: &str| status_json(&coordinator, job);
    let mallory_dir = dir.join("mallory");
    let mallory_with = |honest_for: &str| {
        start_worker_with(
            "cobble-cheater",
            &coordinator,
            &mallory_dir,
            "mallory",
            &["--honest-for", honest_for, "--slots", "2"],
        )
    };

    // 1. Trust earned: a job of single results (min_quorum 1, each valid
    // as it comes back), computed honestly by the cheater alone, so its
    // run of valid results does not depend on the machine's load.
    let earn_dir = dir.join("earn");
    std::fs::create_dir_all(&earn_dir).expect("dir");
    let earn = coordinator.submit(&write_job(
        &earn_dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        &format!(
            "name = \"earn\"\nmodule = \"primes.wasm\"\nargs = [\"{{start}}\", \"{{end}}\"]\n\
             [split]\nrange = {{ start = 0, end = {}, per_unit = {PER_UNIT} }}\n\
             [replication]\nmin_quorum = 1\ntarget_results = 1\n",
            16 * PER_UNIT
        ),
    ));
    // Ten of them accepted is trust enough; the rest may be spot-checks
    // waiting for a second host, which come in phase 3.
    let mallory = mallory_with("1000000");
    // It is stopped only with nothing in hand: a lease it held when killed
    // would count against what it may take in phase 2 until its deadline.
    let trusted = wait_until(Duration::from_secs(300), || {
        status(&earn)["units"]["done"].as_u64() >= Some(10)
            && cobble_e2e::worker_status(&mallory_dir).is_some_and(|s| s.tasks.is_empty())
    });
    assert!(
        trusted,
        "the cheater's honest results were not accepted: {}\n{}",
        status(&earn),
        mallory.log_text()
    );
    drop(mallory);

    // 2. Alone on the project, the trusted cheater forges every result.
    let spec = write_primes_job(dir, (RANGE_START, RANGE_START + UNITS * PER_UNIT), limits);
    let job = coordinator.submit(&spec);
    let mallory = mallory_with("0");
    let alone = wait_until(Duration::from_secs(120), || {
        status(&job)["units"]["unreplicated"].as_u64() >= Some(2)
    });
    assert!(
        alone,
        "the trusted cheater got no unit alone: {}\n{}",
        status(&job),
        mallory.log_text()
    );
    assert!(
        mallory.log_text().contains("forging a unit's stdout"),
        "the cheater never forged: {}",
        mallory.log_text()
    );

    // 3. Honest hosts join and check what the cheater holds.
    let honest = start_honest(&coordinator, dir, &["alice", "bob", "carol"], "1");
    let done = wait_until(Duration::from_secs(300), || status(&job)["state"] == "done");
    let final_status = status(&job);
    assert!(
        done,
        "job did not finish: {final_status}\n{}",
        mallory.log_text()
    );
    assert!(
        final_status["results"]["invalid"].as_u64() >= Some(1),
        "the cheater was never caught: {final_status}"
    );
    assert!(
        coordinator.process.log_text().contains("verified again"),
        "the caught cheater's lone results were not verified again\n{}",
        coordinator.process.log_text()
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
    drop(honest);
}

/// Known answers end to end: the researcher takes a unit's digest from a
/// trusted local `cobble-worker exec` run and lists it under `[spot_check]`;
/// a `cobble-cheater` that forges everything is caught by its copy, honest
/// workers pass theirs, and the job's results are the honest answers.
#[test]
fn a_known_answer_from_exec_catches_a_forger_and_passes_honest_workers() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let (start, end) = (RANGE_START, RANGE_START + PER_UNIT);
    let exec = cobble_e2e::worker_exec()
        .args([cobble_unit_artifacts::PRIMES, "--"])
        .args([start.to_string(), end.to_string()])
        .output()
        .expect("cobble-worker exec");
    let stderr = String::from_utf8_lossy(&exec.stderr);
    let digest = stderr
        .lines()
        .find_map(|line| line.strip_prefix("digest: "))
        .unwrap_or_else(|| panic!("exec printed no digest: {stderr}"));

    let coordinator = Coordinator::start_with(dir, &["--replica-spacing-ms", "100"]);
    // One unit of the job's own, and a known-answer unit that looks just
    // like one of it (the same arguments a real unit of this range gets).
    let spec = write_primes_job(
        dir,
        (start, end),
        &format!(
            "max_total_results = 6\n[spot_check]\ncopies = 3\n\
             units = [{{ args = [\"{start}\", \"{end}\"], digest = \"{digest}\" }}]\n"
        ),
    );
    let job = coordinator.submit(&spec);
    let status = || status_json(&coordinator, &job);
    // The forger alone first: asking for two units, it gets both the job's
    // unit and a copy of the known one (never two copies of one unit).
    let mallory = start_worker_with(
        "cobble-cheater",
        &coordinator,
        &dir.join("mallory"),
        "mallory",
        &["--honest-for", "0", "--slots", "2"],
    );
    let caught = wait_until(Duration::from_secs(60), || {
        status()["known_answer_checks"]["failed"] == 1
    });
    assert!(
        caught,
        "the forger was not caught: {}\n{}",
        status(),
        mallory.log_text()
    );
    let _honest = start_honest(&coordinator, dir, &["alice", "bob"], "2");
    let done = wait_until(Duration::from_secs(120), || status()["state"] == "done");
    let final_status = status();
    assert!(done, "job did not finish: {final_status}");
    assert!(
        final_status["known_answer_checks"]["passed"].as_u64() >= Some(1)
            && final_status["known_answer_checks"]["failed"] == 1
            && final_status["units"]["total"] == 1,
        "{final_status}"
    );
    let out = dir.join("results");
    coordinator.cli_ok(&["results", &job, "--out", out.to_str().expect("utf-8 path")]);
    let stdout = std::fs::read_to_string(out.join("0").join("stdout")).expect("unit 0");
    assert_eq!(
        stdout,
        format!("primes in [{start}, {end}): {}\n", count_primes(start, end))
    );
    assert!(
        !out.join("1").exists(),
        "the known-answer unit is no result of the job"
    );
}
