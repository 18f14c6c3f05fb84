//! Python jobs (`runtime = "python"`): the coordinator serves the pinned
//! CPython WASI runtime (fetched by `cargo xtask setup` from PyPI) as a
//! blob; workers fetch it once, compile it once, and run the researcher's
//! script on it. Replicas agree bit for bit, string hashing and set order
//! match native CPython with the same `PYTHONHASHSEED`, a package zip is
//! importable, and a script's traceback reaches the researcher.

use cobble_e2e::{Coordinator, Process, start_volunteers};
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
                 [replication]\nmin_quorum = 1\ntarget_results = 1\nmax_total_results = 1\n"
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
    assert!(
        status.contains("10 done") && status.contains("20 valid"),
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
    }
}
