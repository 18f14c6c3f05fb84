//! Idle-only computing, end to end: when the owner's load rises, a running
//! unit stops using the CPU and later resumes where it stopped; when memory
//! must be freed it leaves memory and resumes from its checkpoint. Either
//! way the result is the one an uninterrupted run gives. The owner's load
//! comes from the worker's injected load source (a file), so the test does
//! not depend on what else the machine is doing.

use cobble_e2e::{Coordinator, Process, binary, start_worker_with, submit_folding_job, wait_until};
use cobble_worker::status::{self, Status};
use cobble_worker::tasks::TaskState;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One folding unit of twelve seeds, about a second each: long enough to
/// suspend in the middle.
const ARGS: [&str; 4] = ["HPHPPHHPHPPHPHHPPHPH", "0", "12", "15000000"];
const FUEL: &str = "1000000000000";

struct Scenario {
    _temp: tempfile::TempDir,
    coordinator: Coordinator,
    worker: Process,
    job: String,
    worker_dir: std::path::PathBuf,
    load_file: std::path::PathBuf,
}

fn start(extra_prefs: &[&str]) -> Scenario {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let limits = format!("deadline_s = 600\nfuel = {FUEL}");
    let job = submit_folding_job(&coordinator, dir, ARGS, 12, &limits);
    let load_file = dir.join("owner-load");
    std::fs::write(&load_file, "0").expect("write load");
    let worker_dir = dir.join("volunteer");
    let load = load_file.to_str().expect("utf-8 path");
    let mut extra = vec![
        "--simulated-load-file",
        load,
        "--pref",
        "suspend_cpu_usage=25",
    ];
    for pref in extra_prefs {
        extra.extend(["--pref", pref]);
    }
    let worker = start_worker_with("cobble-worker", &coordinator, &worker_dir, "owner", &extra);
    Scenario {
        coordinator,
        worker,
        job,
        worker_dir,
        load_file,
        _temp: temp,
    }
}

impl Scenario {
    fn status(&self) -> Option<Status> {
        status::read(&self.worker_dir).ok()
    }

    /// The progress of the one unit, once it runs and has reported some.
    fn progress(&self) -> Option<f64> {
        self.status()?.tasks.first()?.progress
    }

    fn set_owner_load(&self, percent: u32) {
        std::fs::write(&self.load_file, percent.to_string()).expect("write load");
    }

    /// CPU seconds the worker process has used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.worker.child.id()))
            .expect("worker's /proc stat");
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        ticks as f64 / 100.0
    }

    fn finish_and_check_result(&self) {
        let (done, status) = self
            .coordinator
            .wait_done(&self.job, Duration::from_secs(300));
        assert!(done, "{status}\n{}", self.worker.log_text());
        let out = self._temp.path().join("out");
        self.coordinator
            .cli_ok(&["results", &self.job, "--out", out.to_str().expect("utf-8")]);
        let result = std::fs::read(out.join("0/stdout")).expect("result");
        let straight = cobble_e2e::worker_exec()
            .arg(cobble_unit_artifacts::FOLDING)
            .args(["--fuel", FUEL, "--"])
            .args(ARGS)
            .output()
            .expect("exec");
        assert_eq!(
            result, straight.stdout,
            "the interruption changed the answer"
        );
    }
}

fn worker_status_text(worker_dir: &Path) -> String {
    let output = Command::new(binary("cobble-worker"))
        .arg("status")
        .arg("--data-dir")
        .arg(worker_dir)
        .output()
        .expect("cobble-worker status");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_unit_pauses_while_the_owner_is_busy_and_resumes_where_it_stopped() {
    let scenario = start(&[]);
    assert!(
        wait_until(Duration::from_secs(60), || scenario
            .progress()
            .is_some_and(|p| p > 0.0)),
        "the unit never reported progress: {}",
        scenario.worker.log_text()
    );
    scenario.set_owner_load(90);
    assert!(
        scenario
            .worker
            .wait_for_log("suspending: computer is in use", 1, Duration::from_secs(10)),
        "{}",
        scenario.worker.log_text()
    );
    // Paused, the unit uses no CPU at all and makes no progress.
    std::thread::sleep(Duration::from_millis(300));
    let (cpu_before, progress_before) = (scenario.cpu_seconds(), scenario.progress());
    std::thread::sleep(Duration::from_millis(2000));
    let (cpu_after, progress_after) = (scenario.cpu_seconds(), scenario.progress());
    assert!(
        cpu_after - cpu_before < 0.2,
        "a suspended worker used {:.2} CPU seconds in 2 s",
        cpu_after - cpu_before
    );
    assert_eq!(
        progress_before, progress_after,
        "progress moved while suspended"
    );
    let status = scenario.status().expect("status file");
    assert_eq!(status.tasks.len(), 1, "{status:?}");
    assert_eq!(
        status.tasks[0].state,
        TaskState::Running,
        "paused, still in memory"
    );
    let text = worker_status_text(&scenario.worker_dir);
    assert!(
        text.contains("suspended: computer is in use") && text.contains("suspended "),
        "{text}"
    );

    scenario.set_owner_load(0);
    assert!(
        scenario
            .worker
            .wait_for_log("resuming computation", 1, Duration::from_secs(10)),
        "{}",
        scenario.worker.log_text()
    );
    scenario.finish_and_check_result();
    let log = scenario.worker.log_text();
    assert!(
        !log.contains("resuming from the unit's checkpoint"),
        "a pause in memory must not restart the unit: {log}"
    );
}

#[test]
fn a_unit_evicted_for_memory_resumes_from_its_checkpoint() {
    // While the owner is busy no unit may stay in memory.
    let scenario = start(&["ram_max_used_busy_pct=0"]);
    assert!(
        wait_until(Duration::from_secs(60), || scenario
            .progress()
            .is_some_and(|p| p >= 0.15)),
        "the unit never checkpointed: {}",
        scenario.worker.log_text()
    );
    scenario.set_owner_load(90);
    assert!(
        wait_until(Duration::from_secs(10), || scenario.status().is_some_and(
            |s| s
                .tasks
                .first()
                .is_some_and(|t| t.state == TaskState::WaitingForMemory)
        )),
        "the unit was not removed from memory: {}",
        scenario.worker.log_text()
    );
    let progress_at_eviction = scenario.progress().expect("progress");
    let text = worker_status_text(&scenario.worker_dir);
    assert!(text.contains("waiting for memory"), "{text}");

    scenario.set_owner_load(0);
    // Back in memory, it resumes from its checkpoint: its progress never
    // falls back to what a fresh start would show.
    assert!(
        scenario.worker.wait_for_log(
            "resuming from the unit's checkpoint",
            1,
            Duration::from_secs(20)
        ),
        "{}",
        scenario.worker.log_text()
    );
    let mut lowest_after = f64::MAX;
    wait_until(Duration::from_secs(300), || {
        if let Some(progress) = scenario.progress() {
            lowest_after = lowest_after.min(progress);
        }
        scenario.status().is_some_and(|s| s.tasks.is_empty())
    });
    assert!(
        lowest_after >= progress_at_eviction,
        "progress fell from {progress_at_eviction} to {lowest_after}: the unit started over"
    );
    scenario.finish_and_check_result();
}
