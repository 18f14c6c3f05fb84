//! `cobble init --rust`: the example a researcher who writes Rust starts
//! from builds with stock cargo, runs with `cobble run-local`, and computes
//! what the Python example computes, line for line.

use cobble_e2e::cobble;
use std::process::Command;

fn init(language: &str, dir: &std::path::Path) {
    let init = cobble()
        .args(["init", language])
        .arg(dir)
        .output()
        .expect("cobble init");
    assert!(init.status.success(), "{init:?}");
}

#[test]
fn cobble_init_rust_builds_runs_locally_and_agrees_with_the_python_example() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("sir");
    init("--rust", &dir);
    // Its README's first step, as written, in a cargo of the user's.
    let build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip1"])
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo build");
    assert!(build.status.success(), "{build:?}");

    let run = cobble()
        .args(["run-local", "--units", "10"])
        .arg(dir.join("job.toml"))
        .output()
        .expect("cobble run-local");
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        text.contains("running 10 of the job's 10 units, then its reduce step"),
        "{text}"
    );
    assert!(
        text.contains("10 units, 40 rates: wrote sweep.csv"),
        "{text}"
    );
    let table = std::fs::read_to_string(dir.join("run-local/reduce/sweep.csv")).expect("the table");
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 40, "{table}");

    // The Python example's script, natively: the same 40 lines.
    let python = temp.path().join("python");
    init("--python", &python);
    match Command::new("python3")
        .arg(python.join("sir.py"))
        .args(["0", "40"])
        .output()
    {
        Ok(native) if native.status.success() => {
            let native = String::from_utf8_lossy(&native.stdout);
            assert_eq!(rows, native.lines().collect::<Vec<_>>());
        }
        _ => eprintln!("skipping the comparison: no python3"),
    }
}
