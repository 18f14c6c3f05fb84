//! Offline code signing (BOINC's `crypt_prog`): a project that requires
//! signed code accepts only modules its offline key signed, workers pin
//! that key on attach, and an attacker who steals the coordinator (its
//! database and its online manifest key, but not the offline key) cannot
//! make the volunteers run new code.

use cobble_e2e::{Coordinator, binary, start_volunteers, start_worker, wait_until, write_job};
use std::process::Command;
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const PRIMES_JOB: &str = "name = \"p\"\nmodule = \"primes.wasm\"\nargs = [\"{start}\", \"{end}\"]\n[split]\nrange = { start = 0, end = 10, per_unit = 10 }\n";

#[test]
fn a_stolen_coordinator_cannot_make_volunteers_run_new_code() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // The project's code-signing key, made "offline" (here: not on the
    // coordinator's data dir, and never given to it).
    let key_file = dir.join("offline").join("code.key");
    std::fs::create_dir_all(key_file.parent().expect("parent")).expect("dir");
    let made = Command::new(binary("cobble"))
        .arg("keygen")
        .arg(&key_file)
        .output()
        .expect("cobble keygen");
    assert!(made.status.success(), "{}", text(&made.stderr));
    let public = text(&made.stdout).trim().to_string();
    assert_eq!(public.len(), 64, "{public}");
    let again = Command::new(binary("cobble"))
        .arg("keygen")
        .arg(&key_file)
        .output()
        .expect("cobble keygen");
    assert!(!again.status.success(), "a key is never overwritten");

    let coordinator = Coordinator::start_with(dir, &["--code-signing-key", &public]);
    let spec = write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        PRIMES_JOB,
    );
    let spec_path = spec.to_str().expect("utf-8");
    // Unsigned: refused at submission, saying what to do.
    let refused = coordinator.cli(&["submit", spec_path]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("cobble sign-module"),
        "{}",
        text(&refused.stderr)
    );
    // Signed offline: accepted, computed, validated.
    let module = spec.with_file_name("primes.wasm");
    let signed = Command::new(binary("cobble"))
        .arg("sign-module")
        .arg(&module)
        .arg("--key")
        .arg(&key_file)
        .output()
        .expect("cobble sign-module");
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    assert!(spec.with_file_name("primes.wasm.sig").is_file());
    let job = coordinator.submit(&spec);
    let volunteers = start_volunteers(&coordinator, dir, &["ada", "bob"]);
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(120));
    assert!(done, "{status}\n{}", volunteers[0].log_text());
    for name in ["ada", "bob"] {
        let attachment = cobble_worker::attach::load(&dir.join(name))
            .expect("attach.toml")
            .expect("attached");
        assert_eq!(attachment.code_key.as_deref(), Some(public.as_str()));
    }

    // The attacker has the coordinator's data dir (database, online key,
    // certificate) and restarts it without the code-signing requirement,
    // then submits new code: once unsigned, once with a forged signature.
    let address = coordinator.address();
    let data_dir = coordinator.data_dir.clone();
    drop(coordinator);
    let stolen = Coordinator::start_at(dir, &data_dir, &["--listen", &address]);
    let evil_dir = dir.join("evil");
    std::fs::create_dir_all(&evil_dir).expect("dir");
    let unsigned = write_job(
        &evil_dir,
        cobble_unit_artifacts::MONTECARLO,
        "primes.wasm",
        PRIMES_JOB,
    );
    let evil_job = stolen.submit(&unsigned);
    std::fs::write(
        unsigned.with_file_name("primes.wasm.sig"),
        format!("{}\n", "ab".repeat(64)),
    )
    .expect("forged signature");
    let forged_job = stolen.submit(&unsigned);
    let refusals = wait_until(Duration::from_secs(90), || {
        let logs: String = volunteers.iter().map(|v| v.log_text()).collect();
        logs.matches("not signed by the project's code-signing key")
            .count()
            >= 2
    });
    assert!(refusals, "{}", volunteers[0].log_text());
    for job in [&evil_job, &forged_job] {
        let status = stolen.cli_ok(&["status", job]);
        assert!(status.contains(" 0 valid"), "{status}");
        assert!(!status.contains(" 0 client errors"), "{status}");
    }
    for volunteer in &volunteers {
        let log = volunteer.log_text();
        assert_eq!(
            log.matches("unit finished").count(),
            1,
            "only the signed unit ran: {log}"
        );
    }
    drop(volunteers);

    // A worker restarted against the stolen coordinator (which no longer
    // asks for signed code) keeps the pinned key.
    let restarted = start_worker("cobble-worker", &stolen, &dir.join("ada"), "ada");
    let warned = wait_until(Duration::from_secs(30), || {
        restarted
            .log_text()
            .contains("no longer says it requires signed code")
    });
    assert!(warned, "{}", restarted.log_text());
    let attachment = cobble_worker::attach::load(&dir.join("ada"))
        .expect("attach.toml")
        .expect("attached");
    assert_eq!(attachment.code_key.as_deref(), Some(public.as_str()));
    let later = stolen.submit(&unsigned);
    let refused = wait_until(Duration::from_secs(60), || {
        restarted
            .log_text()
            .contains("not signed by the project's code-signing key")
    });
    assert!(refused, "{}", restarted.log_text());
    assert!(!restarted.log_text().contains("unit finished"));
    let status = stolen.cli_ok(&["status", &later]);
    assert!(status.contains(" 0 valid"), "{status}");
}
