//! Invariant 7 on the worker's side: a worker killed with SIGKILL in the
//! middle of a unit resumes it from the unit's checkpoint when it restarts,
//! instead of the coordinator having to reissue it, and the result is the
//! one an uninterrupted run gives, for the same credit.

use cobble_coordinator::credit::FUEL_PER_CREDIT;
use cobble_e2e::{Coordinator, start_worker, submit_folding_job, wait_until};
use std::path::Path;
use std::time::Duration;

const ARGS: [&str; 4] = ["HPHPPHHPHPPHPHHPPHPH", "0", "6", "1000000"];

/// A checkpoint and the fuel spent reaching it, which the sandbox records
/// beside it just after the unit writes it (so the record is the newer
/// file). A kill between the two (milliseconds; longer on a loaded
/// machine) leaves the fuel of that checkpoint's stretch out of the
/// resumed unit's claim, which is not what this test measures.
fn has_checkpoint(work: &Path) -> bool {
    let modified = |path: std::path::PathBuf| std::fs::metadata(path).and_then(|m| m.modified());
    std::fs::read_dir(work)
        .map(|leases| {
            leases.flatten().any(|lease| {
                let state = modified(lease.path().join("checkpoint/state"));
                let record = modified(lease.path().join("checkpoint.fuel"));
                matches!((state, record), (Ok(state), Ok(record)) if record >= state)
            })
        })
        .unwrap_or(false)
}

#[test]
fn a_killed_worker_resumes_its_unit_from_the_checkpoint() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let job = submit_folding_job(&coordinator, dir, ARGS, 6, "deadline_s = 300");

    let worker_dir = dir.join("solo");
    let mut worker = start_worker("cobble-worker", &coordinator, &worker_dir, "solo");
    assert!(
        wait_until(Duration::from_secs(60), || has_checkpoint(
            &worker_dir.join("work")
        )),
        "the unit never checkpointed: {}",
        worker.log_text()
    );
    worker.kill();
    assert!(
        !worker.log_text().contains("reported"),
        "the unit finished before the kill"
    );

    let restarted = start_worker("cobble-worker", &coordinator, &worker_dir, "solo");
    let done = wait_until(Duration::from_secs(120), || {
        coordinator.cli_ok(&["status", &job]).contains("): done,")
    });
    let status = coordinator.cli_ok(&["status", &job]);
    assert!(done, "{status}\n{}", restarted.log_text());
    assert!(
        status.contains("1 valid") && status.contains("0 timed out"),
        "{status}"
    );
    let log = restarted.log_text();
    assert!(log.contains("resuming from the unit's checkpoint"), "{log}");

    let out = dir.join("out");
    coordinator.cli_ok(&["results", &job, "--out", out.to_str().expect("utf-8")]);
    let resumed = std::fs::read(out.join("0/stdout")).expect("result");
    let straight = cobble_e2e::worker_exec()
        .arg(cobble_unit_artifacts::FOLDING)
        .arg("--")
        .args(ARGS)
        .output()
        .expect("exec");
    assert_eq!(resumed, straight.stdout, "resuming changed the answer");

    // Credit is fuel: the fuel spent before the kill, up to the checkpoint,
    // counts, so the resumed unit earns what an uninterrupted one would.
    let stderr = String::from_utf8_lossy(&straight.stderr);
    let straight_fuel: f64 = stderr
        .lines()
        .find_map(|line| line.strip_prefix("fuel used: "))
        .and_then(|fuel| fuel.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fuel figure from exec: {stderr}"));
    let status: serde_json::Value =
        serde_json::from_str(&coordinator.cli_ok(&["status", &job, "--json"])).expect("json");
    // A quorum-1 unit is accepted on one host's word: its credit is
    // pending until that host passes a check, and counted the same.
    let credit = status["credit_granted"].as_f64().expect("credit")
        + status["credit_pending"].as_f64().expect("pending credit");
    let extra = credit * FUEL_PER_CREDIT / straight_fuel - 1.0;
    assert!(
        (-0.005..0.01).contains(&extra),
        "credit {credit} for a resumed unit, against {straight_fuel} fuel straight through"
    );
}
