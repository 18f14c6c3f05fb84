//! Python jobs (`runtime = "python"`): the coordinator serves the pinned
//! CPython WASI runtime (fetched by `cargo xtask setup` from PyPI) as a
//! blob; workers fetch it once, compile it once, and run the researcher's
//! script on it. Replicas agree bit for bit, string hashing and set order
//! match native CPython with the same `PYTHONHASHSEED`, a package zip is
//! importable, and a script's traceback reaches the researcher.

use cobble_e2e::{Coordinator, Process, cobble, start_volunteers};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The runtime's size: the worker logs each blob it fetches with it.
const RUNTIME_SIZE: &str = "size=26267204";

/// The runtime `cargo xtask setup` fetched, or None after saying why the
/// test skips.
fn runtime() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/third-party")
        .join(cobble_core::runtime::PYTHON.file);
    if !path.is_file() {
        eprintln!(
            "skipping: {} is missing; `cargo xtask setup` fetches it",
            path.display()
        );
        return None;
    }
    Some(path)
}

/// Native CPython, to build the package zip as a researcher would.
fn python3() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn start(dir: &Path, runtime: &Path) -> Coordinator {
    Coordinator::start_with(
        dir,
        &["--python-runtime", runtime.to_str().expect("utf-8 path")],
    )
}

/// Log lines of `worker` that contain every one of `needles`.
fn count(worker: &Process, needles: &[&str]) -> usize {
    cobble_e2e::plain(&worker.log_text())
        .lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .count()
}

const PROBE: &str = r#"
import os, random, sys
import helpers
words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
print("set order:", " ".join(set(words)))
print("dict from set:", " ".join({w: 1 for w in set(words)}))
print("hash:", hash("abc"), hash("cobble"))
print("args:", sys.argv[1:])
print("env:", os.environ.get("COBBLE_STUDY"), os.environ.get("HOME"))
print("helper:", helpers.double(21))
print("random:", random.random(), random.randrange(10**9))
print("urandom:", os.urandom(8).hex())
"#;

/// What string hashing alone decides (wasm32 CPython hashes to 32 bits,
/// so these differ from a 64-bit native CPython's, seed for seed).
const HASHING: &str = r#"
words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
print("set order:", " ".join(set(words)))
print("dict from set:", " ".join({w: 1 for w in set(words)}))
print("hash:", hash("abc"), hash("cobble"))
"#;

/// The hashing lines `cobble-worker exec` prints for [`HASHING`] under
/// `PYTHONHASHSEED=seed`, on the same runtime.
fn hashing_under(runtime: &Path, dir: &Path, seed: u32) -> String {
    let script = dir.join("hashing.py");
    std::fs::write(&script, HASHING).expect("write");
    let output = cobble_e2e::worker_exec()
        .arg(runtime)
        .arg("--input")
        .arg(&script)
        .args([
            "--env",
            &format!("PYTHONHASHSEED={seed}"),
            "--",
            "/input/hashing.py",
        ])
        .output()
        .expect("cobble-worker exec");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn a_python_job_runs_on_the_served_runtime_and_replicas_agree() {
    let Some(runtime) = runtime() else {
        return;
    };
    if !python3() {
        eprintln!("skipping: no native python3 to make the package zip with");
        return;
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let job_dir = dir.join("job");
    std::fs::create_dir_all(&job_dir).expect("mkdir");
    std::fs::write(job_dir.join("probe.py"), PROBE).expect("write script");
    // A package zip, made the way a researcher would.
    let status = Command::new("python3")
        .current_dir(&job_dir)
        .args([
            "-c",
            "import zipfile\nwith zipfile.ZipFile('helpers.zip', 'w', zipfile.ZIP_DEFLATED) as z:\n    z.writestr('helpers.py', 'def double(x):\\n    return 2 * x\\n')",
        ])
        .status()
        .expect("python3");
    assert!(status.success());
    let spec = job_dir.join("job.toml");
    std::fs::write(
        &spec,
        r#"
name = "python-probe"
runtime = "python"
script = "probe.py"
packages = ["helpers.zip"]
args = ["{start}", "{end}"]
env = { COBBLE_STUDY = "from the spec" }
[split]
range = { start = 0, end = 3, per_unit = 1 }
[replication]
min_quorum = 2
target_results = 2
[limits]
deadline_s = 600
"#,
    )
    .expect("write spec");

    let coordinator = start(dir, &runtime);
    let volunteers = start_volunteers(&coordinator, dir, &["one", "two"]);
    let job = coordinator.submit(&spec);
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(600));
    assert!(done, "{status}");
    // Two replicas of each unit agreed bit for bit (the bitwise validator).
    assert!(
        status.contains("3 done") && status.contains("6 valid"),
        "{status}"
    );
    let out = dir.join("out");
    coordinator.cli_ok(&["results", &job, "--out", out.to_str().expect("utf-8")]);
    // Hashing is the job's (PYTHONHASHSEED=0), not the unit's: the same in
    // every unit, as `exec` prints it with that seed and not with another.
    let hashing = hashing_under(&runtime, dir, 0);
    assert_ne!(hashing, hashing_under(&runtime, dir, 1), "the seed decides");
    let mut draws = Vec::new();
    for unit in 0..3 {
        let stdout =
            std::fs::read_to_string(out.join(unit.to_string()).join("stdout")).expect("stdout");
        assert!(
            stdout.starts_with(&hashing),
            "unit {unit}:\n{stdout}\nexec with PYTHONHASHSEED=0:\n{hashing}"
        );
        assert!(
            stdout.contains(&format!("args: ['{unit}', '{}']", unit + 1)),
            "{stdout}"
        );
        // The job's variable, and nothing of the host's.
        assert!(stdout.contains("env: from the spec None"), "{stdout}");
        assert!(stdout.contains("helper: 42"), "{stdout}");
        let draw = stdout
            .lines()
            .filter(|line| line.starts_with("random:") || line.starts_with("urandom:"))
            .collect::<Vec<_>>()
            .join("\n");
        draws.push(draw);
    }
    draws.sort();
    draws.dedup();
    assert_eq!(
        draws.len(),
        3,
        "each unit draws from its own seed: {draws:?}"
    );
    // Each worker fetched the 26 MB runtime once and compiled it once,
    // for its three units.
    for volunteer in &volunteers {
        let log = cobble_e2e::plain(&volunteer.log_text());
        assert_eq!(
            count(volunteer, &["blob fetched", RUNTIME_SIZE]),
            1,
            "{log}"
        );
        assert_eq!(
            count(volunteer, &["module prepared", "Compiled"]),
            1,
            "{log}"
        );
        assert_eq!(count(volunteer, &["unit finished", "Ok(())"]), 3, "{log}");
    }
}

#[test]
fn a_scripts_traceback_reaches_the_researcher() {
    let Some(runtime) = runtime() else {
        return;
    };
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = start(dir, &runtime);
    let _volunteer = start_volunteers(&coordinator, dir, &["one"]);
    let mut jobs = Vec::new();
    for (name, script) in [
        (
            "raises",
            "def f(x):\n    raise ValueError(f'boom at {x}')\nf(7)\n",
        ),
        ("syntax", "print('never'\n"),
    ] {
        let job_dir = dir.join(name);
        std::fs::create_dir_all(&job_dir).expect("mkdir");
        std::fs::write(job_dir.join("script.py"), script).expect("write script");
        let spec = job_dir.join("job.toml");
        std::fs::write(
            &spec,
            format!(
                "name = \"{name}\"\nruntime = \"python\"\nscript = \"script.py\"\n\
                 [split]\nrange = {{ start = 0, end = 1, per_unit = 1 }}\n\
                 [replication]\nmin_quorum = 1\ntarget_results = 1\nmax_total_results = 1\n\
                 [reduce]\nargs = [\"/input\"]\n"
            ),
        )
        .expect("write spec");
        jobs.push((name, coordinator.submit(&spec)));
    }
    for (name, job) in jobs {
        let (done, status) = coordinator.wait_done(&job, Duration::from_secs(600));
        assert!(done, "{status}");
        let results = coordinator.cli_ok(&[
            "results",
            &job,
            "--out",
            dir.join("out").to_str().expect("utf-8"),
        ]);
        let expected: &[&str] = match name {
            "raises" => &[
                "Traceback (most recent call last):",
                "line 3, in <module>",
                "ValueError: boom at 7",
            ],
            _ => &["SyntaxError", "line 1"],
        };
        for text in [&status, &results] {
            for line in expected {
                assert!(text.contains(line), "{name}: {line:?} missing from\n{text}");
            }
        }
        // Every unit failed: the job never made its reduce unit.
        let listed = coordinator.cli_ok(&[
            "results",
            &job,
            "--json",
            "--out",
            dir.join("out").to_str().expect("utf-8"),
        ]);
        let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
        let units = listed["units"].as_array().expect("units");
        assert_eq!(units.len(), 1, "{listed}");
        assert!(units.iter().all(|u| u["reduce"] == false), "{listed}");
    }
}

#[test]
fn bad_python_specs_are_refused_with_the_reason() {
    let Some(runtime) = runtime() else {
        return;
    };
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // A coordinator without the runtime says so; the CLI uploaded nothing
    // it would need.
    std::fs::create_dir_all(dir.join("bare")).expect("mkdir");
    let bare = Coordinator::start(&dir.join("bare"));
    let job_dir = dir.join("job");
    std::fs::create_dir_all(&job_dir).expect("mkdir");
    std::fs::write(job_dir.join("script.py"), "print(1)\n").expect("write");
    let spec = job_dir.join("job.toml");
    std::fs::write(
        &spec,
        "name = \"p\"\nruntime = \"python\"\nscript = \"script.py\"\n[split]\nrange = { start = 0, end = 1, per_unit = 1 }\n",
    )
    .expect("write");
    let refused = bare.cli(&["submit", spec.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("serves no") && stderr.contains("--python-runtime FILE"),
        "{stderr}"
    );
    drop(bare);
    // A file that is not the pinned runtime fails the start, with why.
    let fake = dir.join("python-3.12.0.wasm");
    let mut bytes = std::fs::read(&runtime).expect("runtime");
    bytes[100] ^= 1;
    std::fs::write(&fake, bytes).expect("write");
    let mut command = Command::new(cobble_e2e::binary("cobble-coordinator"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.join("fake-data"))
        .arg("--python-runtime")
        .arg(&fake);
    let mut refused = Process::spawn(command, dir.join("fake.log"));
    let exited = cobble_e2e::wait_until(Duration::from_secs(60), || {
        refused.child.try_wait().ok().flatten().is_some()
    });
    let log = refused.log_text();
    assert!(exited, "a coordinator with a wrong runtime started: {log}");
    assert!(log.contains("not the pinned"), "{log}");
}

#[test]
fn cobble_init_python_writes_a_job_that_runs_and_matches_native_cpython() {
    let Some(runtime) = runtime() else {
        return;
    };
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let job_dir = dir.join("sir");
    let coordinator = start(dir, &runtime);
    coordinator.cli_ok(&["init", "--python", job_dir.to_str().expect("utf-8")]);
    // A second init into it is refused, and what is there stays.
    std::fs::write(job_dir.join("sir.py"), "# mine\n").expect("write");
    let again = coordinator.cli(&["init", "--python", job_dir.to_str().expect("utf-8")]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
    assert_eq!(
        std::fs::read_to_string(job_dir.join("sir.py")).expect("read"),
        "# mine\n"
    );
    coordinator.cli_ok(&[
        "init",
        "--python",
        dir.join("fresh").to_str().expect("utf-8"),
    ]);
    let job_dir = dir.join("fresh");

    let _volunteers = start_volunteers(&coordinator, dir, &["one", "two"]);
    let job = coordinator.submit(&job_dir.join("job.toml"));
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(600));
    assert!(done, "{status}");
    // Ten units and the reduce unit, each agreed by both hosts; or the
    // reduce unit, 21st of its kind, from one host that has earned trust by
    // then (adaptive replication, as for any unit; its inputs were all
    // agreed by two).
    assert!(
        status.contains("11 done")
            && status.contains("0 invalid")
            && (status.contains("22 valid")
                || (status.contains("21 valid")
                    && status.contains("1 done units accepted from one trusted host"))),
        "{status}"
    );
    let out = dir.join("out");
    coordinator.cli_ok(&["results", &job, "--out", out.to_str().expect("utf-8")]);
    let computed: String = (0..10)
        .map(|unit| {
            std::fs::read_to_string(out.join(unit.to_string()).join("stdout")).expect("stdout")
        })
        .collect();
    assert_eq!(computed.lines().count(), 40, "{computed}");
    if python3() {
        let native = Command::new("python3")
            .arg(job_dir.join("sir.py"))
            .args(["0", "40"])
            .output()
            .expect("python3");
        assert_eq!(
            computed,
            String::from_utf8_lossy(&native.stdout),
            "the sweep through the sandbox differs from native CPython's"
        );
        // The reduce step, natively over the same validated outputs.
        assert_reduce_is_native(&job_dir, &out, &dir.join("native"));
    }
    let table = std::fs::read_to_string(out.join("reduce/sweep.csv")).expect("the table");
    assert_eq!(table.lines().count(), 41, "{table}");
    assert!(table.starts_with("beta,peak_infected,peak_day,ever_infected\n0.10,"));
}

/// Runs the example's reduce.py with native CPython over the unit folders
/// in `outputs` and asserts that its stdout, table and plot equal those in
/// `outputs/reduce/`, which the sandbox made.
fn assert_reduce_is_native(job_dir: &Path, outputs: &Path, native_out: &Path) {
    let native = Command::new("python3")
        .arg(job_dir.join("reduce.py"))
        .arg(outputs)
        .arg(native_out)
        .output()
        .expect("python3");
    assert!(native.status.success(), "{native:?}");
    let reduced = outputs.join("reduce");
    assert_eq!(
        std::fs::read(reduced.join("stdout")).expect("the reduce unit's stdout"),
        native.stdout
    );
    for file in ["sweep.csv", "sweep.svg"] {
        assert_eq!(
            std::fs::read(reduced.join(file)).expect("the reduce unit's file"),
            std::fs::read(native_out.join(file)).expect("native file"),
            "{file} differs from native CPython's"
        );
    }
}

#[test]
fn cobble_run_local_runs_the_first_units_and_the_reduce_step_and_shows_a_traceback() {
    let Some(runtime) = runtime() else {
        return;
    };
    let temp = tempfile::tempdir().expect("temp dir");
    let job_dir = temp.path().join("sir");
    let init = cobble()
        .args(["init", "--python"])
        .arg(&job_dir)
        .output()
        .expect("cobble init");
    assert!(init.status.success(), "{init:?}");
    let spec = job_dir.join("job.toml");
    let run_local = |extra: &[&std::ffi::OsStr]| {
        let output = cobble()
            .arg("run-local")
            .arg(&spec)
            .env("COBBLE_PYTHON_RUNTIME", &runtime)
            .args(extra)
            .output()
            .expect("cobble run-local");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };

    let (passed, text) = run_local(&[]);
    assert!(passed, "{text}");
    for expected in [
        "running 3 of the job's 10 units, then its reduce step",
        "unit 0 [/input/sir.py 0 4]: ok, fuel ",
        "unit 2 [/input/sir.py 8 12]: ok",
        "0.10,10,0,374",
        "reads all 10",
        "reduce [/input/reduce.py /input /output]: ok",
        "12 infection rates from 0.10 to 0.21",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
    assert!(!text.contains("unit 3 ["), "{text}");
    let out = job_dir.join("run-local");
    let table = std::fs::read_to_string(out.join("reduce/sweep.csv")).expect("the table");
    assert_eq!(table.lines().count(), 13, "{table}");
    if python3() {
        // The same reduce natively, over the same three units' outputs.
        assert_reduce_is_native(&job_dir, &out, &temp.path().join("native"));
    }

    // Run again with --units 1: the folder it made is replaced.
    let (passed, text) = run_local(&["--units".as_ref(), "1".as_ref()]);
    assert!(passed, "{text}");
    assert!(!out.join("2").exists() && out.join("0/stdout").is_file());

    // A folder of the researcher's is never replaced.
    let mine = temp.path().join("mine");
    std::fs::create_dir_all(&mine).expect("mkdir");
    std::fs::write(mine.join("notes.txt"), "keep").expect("write");
    let (passed, text) = run_local(&["--out".as_ref(), mine.as_os_str()]);
    assert!(
        !passed && text.contains("holds files run-local did not write"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("notes.txt")).expect("kept"),
        "keep"
    );

    // A runtime that is not the pinned file is refused.
    let (passed, text) = run_local(&["--python-runtime".as_ref(), spec.as_os_str()]);
    assert!(!passed && text.contains("not the pinned"), "{text}");

    // A unit that writes a file named stdout: as on the coordinator, no
    // reduce step, with the reason.
    let script = job_dir.join("sir.py");
    let source = std::fs::read_to_string(&script).expect("read");
    std::fs::write(
        &script,
        source.replace(
            "    start, end = int(",
            "    open('/output/stdout', 'w').write('mine')\n    start, end = int(",
        ),
    )
    .expect("write");
    let (passed, text) = run_local(&[]);
    assert!(!passed, "{text}");
    assert!(
        text.contains("no reduce step") && text.contains("two inputs are named \"0/stdout\""),
        "{text}"
    );

    // A script that raises: its traceback, verbatim, and no reduce step.
    std::fs::write(
        &script,
        source.replace("    start, end = int(", "    1 / 0\n    start, end = int("),
    )
    .expect("write");
    let (passed, text) = run_local(&[]);
    assert!(!passed, "{text}");
    for expected in [
        "unit 0 [/input/sir.py 0 4]: FAILED",
        "| Traceback (most recent call last):",
        "| ZeroDivisionError: division by zero",
        "no reduce step: a unit failed",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
}

#[test]
fn exec_places_a_named_input_in_a_folder_and_nowhere_outside_input() {
    let Some(runtime) = runtime() else {
        return;
    };
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    std::fs::write(
        dir.join("show.py"),
        "print(open('/input/3/stdout').read())\n",
    )
    .expect("write");
    std::fs::write(dir.join("unit-out"), "unit three said hello").expect("write");
    let run = |named: &str| {
        cobble_e2e::worker_exec()
            .arg(&runtime)
            .arg("--input")
            .arg(dir.join("show.py"))
            .arg("--input")
            .arg(named)
            .args(["--", "/input/show.py"])
            .output()
            .expect("cobble-worker exec")
    };
    let output = run(&format!("3/stdout={}", dir.join("unit-out").display()));
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "unit three said hello\n"
    );
    // A name that climbs out of /input is refused before anything runs.
    for hostile in ["../3/stdout", "/etc/passwd", "a/b/c/d/e"] {
        let output = run(&format!("{hostile}={}", dir.join("unit-out").display()));
        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is not a name under /input"), "{stderr}");
    }
}
