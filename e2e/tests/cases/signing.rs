//! Invariant 5 for signatures: a worker pins the project key it first saw
//! and refuses units signed by any other, reporting them as errors; a
//! restarted worker refuses to attach to a coordinator with another key.

use cobble_e2e::{Coordinator, start_worker, wait_until};
use std::time::Duration;

#[test]
fn units_signed_with_another_key_are_refused() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let first = Coordinator::start(dir);
    let worker_dir = dir.join("pinned");
    let worker = start_worker("cobble-worker", &first, &worker_dir, "pinned");
    assert!(
        worker.wait_for_log("attached to project", 1, Duration::from_secs(60)),
        "{}",
        worker.log_text()
    );

    // The project's coordinator comes back on the same address and database
    // but signs with a different key, as a compromised server would.
    let address = first.address();
    let data_dir = first.data_dir.clone();
    drop(first);
    let other_key = dir.join("other.key");
    std::fs::write(&other_key, "11".repeat(32)).expect("write key");
    let second = Coordinator::start_at(
        dir,
        &data_dir,
        &[
            "--listen",
            &address,
            "--signing-key",
            other_key.to_str().expect("utf-8"),
        ],
    );

    let job = second.submit_tiny_primes_job(dir);
    assert!(
        worker.wait_for_log(
            "refusing unit with a bad signature",
            1,
            Duration::from_secs(60)
        ),
        "{}",
        worker.log_text()
    );
    let reported = wait_until(Duration::from_secs(30), || {
        second.cli_ok(&["status", &job]).contains("1 client errors")
    });
    assert!(reported, "{}", second.cli_ok(&["status", &job]));
    assert!(!worker.log_text().contains("unit finished"));
    drop(worker);

    // Restarted, the worker will not attach to the changed project at all.
    let restarted = start_worker("cobble-worker", &second, &worker_dir, "pinned");
    assert!(
        wait_until(Duration::from_secs(30), || restarted
            .log_text()
            .contains("differs from the key pinned")),
        "{}",
        restarted.log_text()
    );
}

/// A project that creates accounts by invitation only: a worker with the
/// code attaches and computes, one without it is refused with a message
/// that says what to do, and creates nothing.
#[test]
fn a_project_by_invitation_admits_only_workers_with_the_code() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start_with(dir, &["--invite-code", "sesame"]);
    let job = coordinator.submit_tiny_primes_job(dir);
    let uninvited = start_worker("cobble-worker", &coordinator, &dir.join("eve"), "eve");
    let refused = uninvited.wait_for_log("invitation", 1, Duration::from_secs(30));
    assert!(refused, "{}", uninvited.log_text());
    let _invited = cobble_e2e::start_worker_with(
        "cobble-worker",
        &coordinator,
        &dir.join("alice"),
        "alice",
        &["--invite-code", "sesame"],
    );
    let _second = cobble_e2e::start_worker_with(
        "cobble-worker",
        &coordinator,
        &dir.join("bob"),
        "bob",
        &["--invite-code", "sesame"],
    );
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(60));
    assert!(done, "{status}");
    let board = coordinator.cli_ok(&["leaderboard"]);
    assert!(!board.contains("eve"), "{board}");
}
