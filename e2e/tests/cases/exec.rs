//! `cobble-worker exec`: a researcher's local test run, in the real sandbox.

use cobble_e2e::worker_exec;

fn exec(args: &[&str]) -> (bool, String, String) {
    let output = worker_exec()
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
    let output = worker_exec()
        .env("TMPDIR", temp.path())
        .args([cobble_unit_artifacts::PRIMES, "--", "0", "100"])
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

/// The second `exec` of a module loads it compiled, as a worker's second
/// unit does; the cache is keyed by the module's bytes, a torn entry is
/// compiled again, `--no-module-cache` keeps nothing, and a cache that
/// cannot be written costs only speed.
#[test]
fn a_second_exec_loads_the_compiled_module_from_the_cache() {
    let temp = tempfile::tempdir().expect("temp dir");
    let cache = temp.path().join("cache");
    let run = |extra: &[&str]| {
        let output = worker_exec()
            .env("XDG_CACHE_HOME", &cache)
            .args(extra)
            .args([cobble_unit_artifacts::PRIMES, "--", "0", "1000"])
            .output()
            .expect("running cobble-worker exec");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        assert_eq!(output.stdout, b"primes in [0, 1000): 168\n");
        let compile = stderr
            .lines()
            .find(|line| line.starts_with("compile: "))
            .unwrap_or_else(|| panic!("no compile line in {stderr}"))
            .to_string();
        compile.ends_with("(cached)")
    };
    let modules = cache.join("cobble/modules");
    let cached_files = || {
        std::fs::read_dir(&modules)
            .map(|dir| dir.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(!run(&["--no-module-cache"]), "nothing was cached yet");
    assert!(
        cached_files().is_empty(),
        "--no-module-cache wrote the cache"
    );
    assert!(!run(&[]), "the first run compiles");
    assert!(run(&[]), "the second run loads the compiled module");
    let files = cached_files();
    assert_eq!(files.len(), 1, "{files:?}");
    // A torn entry is never trusted: compiled again, and right.
    std::fs::write(&files[0], b"torn").expect("tear the entry");
    assert!(!run(&[]));
    assert!(run(&[]));
    // A cache directory that cannot be made: the unit still runs.
    let blocked = temp.path().join("file");
    std::fs::write(&blocked, b"not a directory").expect("write");
    assert!(!run(&[
        "--module-cache",
        blocked.join("modules").to_str().expect("utf-8")
    ]));
}

#[test]
fn exec_refuses_an_environment_variable_a_job_could_not_set() {
    for (bad, expected) in [
        ("NOVALUE", "give NAME=VALUE"),
        ("1BAD=x", "not a variable name"),
        ("LD PRELOAD=x", "not a variable name"),
        ("=x", "not a variable name"),
    ] {
        let (ok, _, stderr) = exec(&[cobble_unit_artifacts::PRIMES, "--env", bad, "--", "0", "10"]);
        assert!(!ok, "{bad:?} was accepted");
        assert!(stderr.contains(expected), "{bad:?}: {stderr}");
    }
    let huge = format!("A={}", "x".repeat(5000));
    let (ok, _, stderr) = exec(&[
        cobble_unit_artifacts::PRIMES,
        "--env",
        &huge,
        "--",
        "0",
        "10",
    ]);
    assert!(!ok && stderr.contains("4096"), "{stderr}");
    // A good one reaches the unit, which runs as before.
    let (ok, stdout, stderr) = exec(&[
        cobble_unit_artifacts::PRIMES,
        "--env",
        "A=b=c",
        "--",
        "0",
        "10",
    ]);
    assert!(ok, "{stderr}");
    assert!(!stdout.is_empty());
}
