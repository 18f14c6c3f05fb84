//! Researcher accounts as an operator and researchers meet them: the
//! operator adds accounts beside the running server, each researcher
//! submits and collects their own jobs with their own token, another's
//! job is out of reach, a revoked token stops at once, and the audit log
//! tells who did what.

use cobble_e2e::{Coordinator, start_volunteers, write_job};
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn each_researcher_owns_their_jobs_and_the_operator_sees_who_did_what() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let add = |name: &str| {
        let output = coordinator.admin(&["researcher", "add", name]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let token = text(&output.stdout).trim().to_string();
        assert!(token.len() >= 32, "{token:?}");
        token
    };
    let (ada, bob) = (add("ada"), add("bob"));
    let again = coordinator.admin(&["researcher", "add", "ada"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("exists"),
        "{}",
        text(&again.stderr)
    );

    let spec = write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        "name = \"p\"\nmodule = \"primes.wasm\"\nargs = [\"{start}\", \"{end}\"]\n[split]\nrange = { start = 0, end = 10, per_unit = 10 }\n",
    );
    let submitted = coordinator.cli_as(&ada, &["submit", spec.to_str().expect("utf-8")]);
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    let job = text(&submitted.stdout).trim().to_string();
    let _volunteers = start_volunteers(&coordinator, dir, &["v1", "v2"]);
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(120));
    assert!(done, "{status}");

    // Bob cannot collect or cancel Ada's job.
    let out = dir.join("bob-results");
    let refused = coordinator.cli_as(
        &bob,
        &["results", &job, "--out", out.to_str().expect("utf-8")],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("another researcher"),
        "{}",
        text(&refused.stderr)
    );
    let refused = coordinator.cli_as(&bob, &["cancel", &job]);
    assert!(!refused.status.success());
    // Ada can.
    let out = dir.join("ada-results");
    let collected = coordinator.cli_as(
        &ada,
        &["results", &job, "--out", out.to_str().expect("utf-8")],
    );
    assert!(collected.status.success(), "{}", text(&collected.stderr));
    assert!(out.join("0").join("stdout").is_file());

    // Revoked, Ada's token stops working.
    let revoked = coordinator.admin(&["researcher", "revoke", "ada"]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let refused = coordinator.cli_as(
        &ada,
        &["results", &job, "--out", out.to_str().expect("utf-8")],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("revoked"),
        "{}",
        text(&refused.stderr)
    );

    let listed = text(&coordinator.admin(&["researcher", "list"]).stdout);
    assert!(listed.contains("owner"), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("ada") && l.contains("revoked")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("bob") && l.contains("active")),
        "{listed}"
    );
    let audit = text(&coordinator.admin(&["audit"]).stdout);
    for expected in [
        format!("ada submit job {job}"),
        format!("ada results job {job}"),
        "ada download".to_string(),
        "operator researcher_revoke".to_string(),
    ] {
        assert!(
            audit.contains(&expected),
            "{expected:?} missing from:\n{audit}"
        );
    }
    // Bob's refused attempts did nothing, so they are not in the log.
    assert!(
        !audit.lines().any(|l| l.split(' ').nth(1) == Some("bob")),
        "{audit}"
    );
}
