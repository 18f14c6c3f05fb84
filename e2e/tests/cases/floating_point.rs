//! Floating-point work through the whole platform: replicas on two hosts
//! agree bit for bit (wasmtime's deterministic settings), for Mandelbrot
//! tiles (assembled into a PNG by the job's reduce unit, on the hosts) and
//! for Monte Carlo sums using libm's exp, the latter with NaN
//! canonicalization turned off as its job allows.

use cobble_e2e::{Coordinator, start_volunteers, write_job};
use std::process::Command;
use std::time::Duration;

/// Submits a job with a quorum of two, runs it on two volunteers and
/// checks that every replica agreed bit for bit: `units` units, two valid
/// results each.
fn run_on_two_hosts(
    coordinator: &Coordinator,
    dir: &std::path::Path,
    module: &str,
    module_name: &str,
    spec: &str,
    units: u32,
) -> (String, Vec<cobble_e2e::Process>) {
    let job = coordinator.submit(&write_job(dir, module, module_name, spec));
    let volunteers = start_volunteers(coordinator, dir, &["one", "two"]);
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(120));
    assert!(
        done && status.contains(&format!("{} valid", units * 2)) && status.contains("0 invalid"),
        "{status}"
    );
    (job, volunteers)
}

#[test]
fn mandelbrot_tiles_agree_across_hosts_and_the_reduce_unit_assembles_the_png() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let spec = "name = \"zoom\"\nmodule = \"mandelbrot.wasm\"\n\
        args = [\"render\", \"{index}\", \"2\", \"2\", \"240\", \"160\", \"-0.7436\", \"0.1318\", \"0.00002\", \"800\"]\n\
        [split]\nrange = { start = 0, end = 4, per_unit = 1 }\n\
        [replication]\nmin_quorum = 2\ntarget_results = 2\n\
        [reduce]\nargs = [\"assemble\", \"/input\", \"2\", \"2\", \"/output/zoom.png\"]\n";
    // Four tiles and the reduce unit, each agreed by both hosts.
    let (job, _volunteers) = run_on_two_hosts(
        &coordinator,
        dir,
        cobble_unit_artifacts::MANDELBROT,
        "mandelbrot.wasm",
        spec,
        5,
    );

    let out = dir.join("results");
    let listed = coordinator.cli_ok(&["results", &job, "--out", out.to_str().expect("utf-8")]);
    assert!(listed.contains("reduce"), "{listed}");
    // The same tiles assembled here, natively, give the same bytes.
    let png = dir.join("zoom.png");
    let assembled = Command::new(cobble_unit_artifacts::MANDELBROT_NATIVE)
        .args([
            "assemble",
            out.to_str().expect("utf-8"),
            "2",
            "2",
            png.to_str().expect("utf-8"),
        ])
        .output()
        .expect("assemble");
    assert!(
        assembled.status.success(),
        "{}",
        String::from_utf8_lossy(&assembled.stderr)
    );
    let bytes = std::fs::read(&png).expect("png");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(
        &bytes[16..24],
        &[0, 0, 0, 240, 0, 0, 0, 160],
        "240x160 pixels"
    );
    let reduced = std::fs::read(out.join("reduce/zoom.png")).expect("the reduce unit's PNG");
    assert_eq!(
        reduced, bytes,
        "the reduce unit's PNG is the native assembly's"
    );
}

#[test]
fn monte_carlo_replicas_agree_bit_for_bit() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let spec = "name = \"mc\"\nmodule = \"montecarlo.wasm\"\nargs = [\"{index}\", \"300000\"]\n\
        [split]\nrange = { start = 0, end = 4, per_unit = 1 }\n\
        [replication]\nmin_quorum = 2\ntarget_results = 2\n[engine]\nnan_canonicalization = false\n";
    let (_job, _volunteers) = run_on_two_hosts(
        &coordinator,
        dir,
        cobble_unit_artifacts::MONTECARLO,
        "montecarlo.wasm",
        spec,
        4,
    );
}

/// A researcher's validator module through the whole platform: the CLI
/// uploads it with the job, the coordinator refuses nothing, runs it over
/// each unit's outputs (in its sandbox, never the unit itself) and accepts
/// the estimates it groups together.
#[test]
fn monte_carlo_results_are_judged_by_the_researchers_validator_module() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let spec = "name = \"mc-validated\"\nmodule = \"montecarlo.wasm\"\nargs = [\"{index}\", \"300000\"]\n\
        [split]\nrange = { start = 0, end = 4, per_unit = 1 }\n\
        [replication]\nmin_quorum = 2\ntarget_results = 2\n\
        [validator]\nkind = \"module\"\nmodule = \"montecarlo-validator.wasm\"\n";
    let spec_path = write_job(
        dir,
        cobble_unit_artifacts::MONTECARLO,
        "montecarlo.wasm",
        spec,
    );
    std::fs::copy(
        cobble_unit_artifacts::MONTECARLO_VALIDATOR,
        dir.join("job/montecarlo-validator.wasm"),
    )
    .expect("copying the validator");
    let job = coordinator.submit(&spec_path);
    let _volunteers = start_volunteers(&coordinator, dir, &["one", "two"]);
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(120));
    assert!(
        done && status.contains("8 valid") && status.contains("0 invalid"),
        "{status}"
    );
    let out = dir.join("results");
    coordinator.cli_ok(&["results", &job, "--out", out.to_str().expect("utf-8")]);
    for index in 0..4 {
        let stdout = std::fs::read_to_string(out.join(index.to_string()).join("stdout"))
            .expect("each unit's validated stdout");
        assert!(
            stdout.starts_with("pi ") && stdout.contains("samples 300000"),
            "{stdout}"
        );
    }
}
