//! End to end: a real coordinator on embedded SQLite, three real worker
//! processes (one of them a liar), a real job, over real sockets.

use cobble_e2e::{Coordinator, start_worker, start_worker_with, wait_until, write_job};
use serde_json::Value;
use std::time::Duration;

const UNITS: u64 = 24;
const PER_UNIT: u64 = 100_000;
/// Numbers near 10^9 make each unit take a few hundred milliseconds, long
/// enough to kill a worker in the middle of one.
const RANGE_START: u64 = 1_000_000_000;

/// Counts primes in `[start, end)` with a segmented sieve: an independent
/// check of the unit's trial division.
pub(super) fn count_primes(start: u64, end: u64) -> usize {
    let root = (end as f64).sqrt() as usize + 1;
    let mut small = vec![true; root + 1];
    let mut base = Vec::new();
    for i in 2..=root {
        if small[i] {
            base.push(i as u64);
            (i * i..=root).step_by(i).for_each(|j| small[j] = false);
        }
    }
    let mut segment = vec![true; (end - start) as usize];
    for p in base {
        let first = (start.div_ceil(p) * p).max(p * p);
        (first..end)
            .step_by(p as usize)
            .for_each(|m| segment[(m - start) as usize] = false);
    }
    (start..end)
        .filter(|&n| n >= 2 && segment[(n - start) as usize])
        .count()
}

fn primes_spec(deadline_s: u32) -> String {
    format!(
        r#"
name = "primes-e2e"
module = "primes.wasm"
args = ["{{start}}", "{{end}}"]
[split]
range = {{ start = {RANGE_START}, end = {end}, per_unit = {PER_UNIT} }}
[replication]
min_quorum = 2
target_results = 2
max_total_results = 5
[limits]
fuel = 50000000000
memory_mib = 64
deadline_s = {deadline_s}
"#,
        end = RANGE_START + UNITS * PER_UNIT
    )
}

/// Polls every 10 ms: the window to catch is a unit in flight.
fn wait_until_fast(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn job_completes_with_a_cheater_and_a_crash() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let spec = write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        &primes_spec(8),
    );

    let job = coordinator.submit(&spec);

    // The liar starts first and holds a unit before the honest workers
    // arrive, so it is sure to take part.
    // Everyone here allows their name in public: the test finds them by it.
    let named = ["--public-name"];
    let mallory = start_worker_with(
        "cobble-cheater",
        &coordinator,
        &dir.join("mallory"),
        "mallory",
        &named,
    );
    assert!(
        mallory.wait_for_log("unit started", 1, Duration::from_secs(60)),
        "the cheater never started a unit: {}",
        mallory.log_text()
    );
    let alice_dir = dir.join("alice");
    let mut alice = start_worker_with("cobble-worker", &coordinator, &alice_dir, "alice", &named);
    let _bob = start_worker_with(
        "cobble-worker",
        &coordinator,
        &dir.join("bob"),
        "bob",
        &named,
    );

    // Kill alice with SIGKILL while she is computing a unit: once she has
    // finished one (warm caches), the moment she has started another.
    assert!(
        alice.wait_for_log("unit finished", 1, Duration::from_secs(60)),
        "alice never finished a unit: {}",
        alice.log_text()
    );
    let mid_unit = wait_until_fast(Duration::from_secs(60), || {
        let log = alice.log_text();
        log.matches("unit started").count() > log.matches("unit finished").count()
    });
    alice.kill();
    assert!(
        mid_unit,
        "alice never started another unit:\n{}",
        alice.log_text()
    );
    // Alice's machine never comes back (resuming after a restart is
    // resume.rs's test): her lease must time out and be reissued. Carol
    // joins, so two honest hosts remain to form quorums.
    let _carol = start_worker_with(
        "cobble-worker",
        &coordinator,
        &dir.join("carol"),
        "carol",
        &named,
    );

    let done = wait_until(Duration::from_secs(240), || {
        json(&coordinator.cli_ok(&["status", &job, "--json"]))["state"] == "done"
    });
    let status = json(&coordinator.cli_ok(&["status", &job, "--json"]));
    assert!(done, "job did not finish: {status}");
    assert_eq!(status["units"]["done"], UNITS, "{status}");
    assert_eq!(status["units"]["errored"], 0, "{status}");
    assert!(
        status["results"]["invalid"].as_u64() >= Some(1),
        "the cheater was never caught: {status}"
    );
    assert!(
        status["results"]["timed_out"].as_u64() >= Some(1),
        "the killed lease never timed out: {status}"
    );

    assert_results_correct(&coordinator, &job, dir);

    // Credit: honest volunteers earn, the cheater earns nothing.
    let board = json(&coordinator.cli_ok(&["leaderboard", "--json"]));
    let credit_of = |name: &str| {
        board["entries"]
            .as_array()
            .and_then(|entries| entries.iter().find(|e| e["name"] == name))
            .map(|e| {
                (
                    e["total_credit"].as_f64().unwrap_or(-1.0),
                    e["valid_results"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or_else(|| panic!("{name} missing from {board}"))
    };
    assert_eq!(credit_of("mallory"), (0.0, 0), "{board}");
    // Alice may have lost even her finished work: with a unit per CPU, one
    // slot can be uploading a result when the machine dies for good.
    for honest in ["bob", "carol"] {
        let (credit, valid) = credit_of(honest);
        assert!(credit > 0.0 && valid > 0, "{honest}: {board}");
    }
    let teams = json(&coordinator.cli_ok(&["leaderboard", "--teams", "--json"]));
    assert_eq!(teams["entries"][0]["name"], "liars");
    assert_eq!(teams["entries"][0]["total_credit"], 0.0);
    // Total credit equals what the job says it granted, counted once each
    // (credit still pending for units returned alone is on no board yet).
    let granted = status["credit_granted"].as_f64().unwrap_or(0.0);
    let total: f64 = ["alice", "bob", "carol", "mallory"]
        .iter()
        .map(|n| credit_of(n).0)
        .sum();
    assert!(
        (granted - total).abs() < 1e-6,
        "granted {granted}, leaderboard {total}"
    );
    // Honest hosts may earn trust on the way and get units alone
    // (adaptive replication): those have one valid result, the rest two.
    let alone = status["units"]["unreplicated"].as_u64().unwrap_or(0);
    assert_eq!(
        status["results"]["valid"].as_u64(),
        Some(2 * (UNITS - alone) + alone),
        "exactly a quorum of two per replicated unit is valid: {status}"
    );
}

/// Every validated result equals the count computed here.
fn assert_results_correct(coordinator: &Coordinator, job: &str, dir: &std::path::Path) {
    let out = dir.join("results");
    coordinator.cli_ok(&["results", job, "--out", out.to_str().expect("utf-8 path")]);
    for index in 0..UNITS {
        let start = RANGE_START + index * PER_UNIT;
        let end = start + PER_UNIT;
        let expected = count_primes(start, end);
        let stdout = std::fs::read_to_string(out.join(index.to_string()).join("stdout"))
            .unwrap_or_else(|e| panic!("unit {index} has no stdout: {e}"));
        assert_eq!(stdout, format!("primes in [{start}, {end}): {expected}\n"));
    }
}

fn status_of(coordinator: &Coordinator, job: &str) -> Value {
    json(&coordinator.cli_ok(&["status", job, "--json"]))
}

/// Invariant 7: SIGKILL the coordinator mid-job; once restarted on the same
/// data dir, everything it acknowledged is still there and the job ends
/// correct, with workers having waited out the outage on their own.
#[test]
fn coordinator_killed_mid_job_loses_nothing() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let mut coordinator = Coordinator::start(dir);
    let spec = write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        &primes_spec(60),
    );
    let job = coordinator.submit(&spec);
    let _ada = start_worker("cobble-worker", &coordinator, &dir.join("ada"), "ada");
    let _bob = start_worker("cobble-worker", &coordinator, &dir.join("bob"), "bob");
    // A third host: a lease that times out across the outage leaves its
    // unit needing a result from a host that never held it, and the
    // scheduler never gives a unit twice to one host (BOINC's rule).
    let _cy = start_worker("cobble-worker", &coordinator, &dir.join("cy"), "cy");

    let mut before = 0;
    assert!(wait_until_fast(Duration::from_secs(120), || {
        before = status_of(&coordinator, &job)["units"]["done"]
            .as_u64()
            .unwrap_or(0);
        before >= 4
    }));
    coordinator.process.kill();
    std::thread::sleep(Duration::from_secs(2));
    let address = coordinator.address();
    let data_dir = coordinator.data_dir.clone();
    drop(coordinator);
    let coordinator = Coordinator::start_at(dir, &data_dir, &["--listen", &address]);
    let after = status_of(&coordinator, &job);
    assert!(
        after["units"]["done"].as_u64() >= Some(before),
        "units acknowledged as done were lost: {before} before, {after} after"
    );
    let done = wait_until(Duration::from_secs(240), || {
        status_of(&coordinator, &job)["state"] == "done"
    });
    let status = status_of(&coordinator, &job);
    assert!(done, "job did not finish after the restart: {status}");
    // Units a trusted host got alone have one valid result, the rest two.
    let alone = status["units"]["unreplicated"].as_u64().unwrap_or(0);
    assert_eq!(
        status["results"]["valid"].as_u64(),
        Some(2 * (UNITS - alone) + alone),
        "{status}"
    );
    assert_results_correct(&coordinator, &job, dir);
}
