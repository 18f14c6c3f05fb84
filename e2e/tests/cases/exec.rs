//! `cobble-worker exec`: a researcher's local test run, in the real sandbox.

use cobble_e2e::binary;
use std::process::Command;

fn exec(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary("cobble-worker"))
        .arg("exec")
        .args(args)
        .output()
        .expect("running cobble-worker exec");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn exec_runs_a_module_and_reports_fuel_and_time() {
    let (ok, stdout, stderr) = exec(&[cobble_unit_artifacts::PRIMES, "--", "0", "1000"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "primes in [0, 1000): 168\n");
    for field in ["fuel used: ", "time: ", "compile: ", "startup: "] {
        assert!(stderr.contains(field), "{field:?} missing from {stderr}");
    }
}

#[test]
fn exec_enforces_the_limits_a_real_unit_gets() {
    let (ok, _, stderr) = exec(&[
        "--fuel",
        "100000",
        cobble_unit_artifacts::PRIMES,
        "--",
        "0",
        "100000000",
    ]);
    assert!(!ok);
    assert!(stderr.contains("failed (fuel_exhausted)"), "{stderr}");
    let (ok, _, stderr) = exec(&[
        "--memory-mib",
        "32",
        cobble_unit_artifacts::SANDBOX_PROBE,
        "--",
        "alloc",
        "64",
    ]);
    assert!(!ok);
    assert!(stderr.contains("failed (memory)"), "{stderr}");
}

#[test]
fn exec_refuses_what_is_not_a_module() {
    let temp = tempfile::tempdir().expect("temp dir");
    let script = temp.path().join("unit.wasm");
    std::fs::write(&script, "#!/bin/sh\nrm -rf /\n").expect("write");
    let (ok, stdout, stderr) = exec(&[script.to_str().expect("utf-8")]);
    assert!(!ok && stdout.is_empty());
    assert!(
        stderr.contains("not a valid WebAssembly module"),
        "{stderr}"
    );
}

#[test]
fn exec_leaves_nothing_behind_when_the_unit_writes_no_file() {
    let temp = tempfile::tempdir().expect("temp dir");
    let output = Command::new(binary("cobble-worker"))
        .env("TMPDIR", temp.path())
        .args(["exec", cobble_unit_artifacts::PRIMES, "--", "0", "100"])
        .output()
        .expect("running cobble-worker exec");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(temp.path())
        .expect("temp dir")
        .map(|e| e.map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "exec left {left:?} in the temp directory");
}
