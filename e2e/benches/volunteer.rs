//! What a volunteer notices of the worker, measured on real processes: a
//! coordinator and one `cobble-worker` with its real load measurement and
//! default preferences (but `idle_time_to_run = 0`, so resuming is not
//! delayed by design), on loopback.
//!
//! Prints: resident memory and CPU use with no work, beside the BOINC
//! client's in the same window when it is installed (`boinc`, Debian's
//! boinc-client, started here in a temporary directory with no project),
//! and while suspended; suspend latency (the owner starts one CPU-bound
//! program, or one per CPU -> the worker's units are off the CPU) and
//! resume latency (they end -> the units compute again); and how much a
//! CPU-bound program of the owner's is slowed while the worker has work,
//! against the same program with the worker stopped (SIGSTOP), interleaved
//! round by round; then, a minute after work, its memory again, and what
//! letting go of engines and code cost the next units' start.
//!
//! `cargo bench -p cobble-e2e --bench volunteer` (COBBLE_BENCH_ROUNDS=N).

use cobble_e2e::{Coordinator, Process, start_worker_with, submit_folding_job, wait_until};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Run time of every thread of `pid` but the activity monitor's, which
/// keeps sampling while units are suspended.
fn unit_cpu(pid: u32) -> Duration {
    process_cpu(pid, Some("cobble-activity"))
}

/// Run time of every thread of `pid` (nanosecond-precise schedstat),
/// optionally leaving out the thread named `except`.
fn process_cpu(pid: u32, except: Option<&str>) -> Duration {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let mut total = 0u64;
    for thread in threads.flatten() {
        let dir = thread.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if except.is_some_and(|except| name.trim() == except) {
            continue;
        }
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        total += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(total)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The resident memory's parts: anonymous (heap, stacks) and file-backed
/// (the program's own code and libraries, which the kernel can drop and
/// read again).
fn rss_parts(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    format!(
        "anonymous {:.1} MiB, file-backed {:.1} MiB",
        field("RssAnon:"),
        field("RssFile:")
    )
}

/// Resident memory and the share of one core used over `window`.
fn footprint(pid: u32, window: Duration) -> (f64, f64) {
    let before = process_cpu(pid, None);
    std::thread::sleep(window);
    let used = process_cpu(pid, None).saturating_sub(before);
    (
        rss_mib(pid),
        used.as_secs_f64() / window.as_secs_f64() * 100.0,
    )
}

/// Samples the units' CPU time every 5 ms for `span`; returns (elapsed, cpu).
fn trace_cpu(pid: u32, span: Duration) -> Vec<(Duration, Duration)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < span {
        samples.push((start.elapsed(), unit_cpu(pid)));
        std::thread::sleep(Duration::from_millis(5));
    }
    samples
}

/// CPU used in the `window` after sample `i`.
fn cpu_in_window(samples: &[(Duration, Duration)], i: usize, window: Duration) -> Option<Duration> {
    let (at, cpu) = samples[i];
    let end = samples.iter().find(|(t, _)| *t >= at + window)?;
    Some(end.1.saturating_sub(cpu))
}

/// First moment after which the units use under 2% of a core for 500 ms.
fn stopped_at(samples: &[(Duration, Duration)]) -> Option<Duration> {
    let window = Duration::from_millis(500);
    (0..samples.len()).find_map(|i| {
        cpu_in_window(samples, i, window)
            .filter(|cpu| *cpu < window / 50)
            .map(|_| samples[i].0)
    })
}

/// First moment at which the units use over half a core for 50 ms.
fn running_at(samples: &[(Duration, Duration)]) -> Option<Duration> {
    let window = Duration::from_millis(50);
    (0..samples.len()).find_map(|i| {
        cpu_in_window(samples, i, window)
            .filter(|cpu| *cpu > window / 2)
            .map(|_| samples[i].0)
    })
}

/// The owner's CPU-bound programs: `count` busy loops in other processes.
fn burners(count: usize) -> Vec<Child> {
    (0..count)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("spawn a CPU burner")
        })
        .collect()
}

/// The BOINC client with no project, in its own temporary directory, if
/// it is installed; killed when dropped.
struct Boinc {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Boinc {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn start_boinc() -> Option<Boinc> {
    let dir = tempfile::tempdir().ok()?;
    // Any free port for its GUI RPC, so it never meets another client.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("boinc")
        .arg("--dir")
        .arg(dir.path())
        .args(["--no_gpus", "--gui_rpc_port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    Some(Boinc { child, _dir: dir })
}

/// The owner's program whose slowdown is measured: the native primes
/// counter over a fixed range (about a second on this kind of machine).
fn owner_program() -> Duration {
    let started = Instant::now();
    let status = Command::new(cobble_unit_artifacts::PRIMES_NATIVE)
        .args(["1000000000", "1000700000"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run the owner's program");
    assert!(status.success());
    started.elapsed()
}

fn signal(pid: u32, name: &str) {
    Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .ok();
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{} ms", d.as_millis()))
}

fn main() {
    let rounds: usize = std::env::var("COBBLE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // The long job's units, aborted at its cancel, would spend a new
    // host's daily quota (64) before the quick job at the end.
    let coordinator = Coordinator::start_with(
        dir,
        &[
            "--initial-daily-quota",
            "100000",
            "--max-daily-quota-per-cpu",
            "100000",
        ],
    );
    let worker_dir = dir.join("volunteer");
    let worker: Process = start_worker_with(
        "cobble-worker",
        &coordinator,
        &worker_dir,
        "bench",
        // The real load measurement, default thresholds; only the wait
        // before resuming is zeroed so that resume latency is measurable.
        &[
            "--pref",
            "suspend_cpu_usage=25",
            "--pref",
            "idle_time_to_run=0",
        ],
    );
    let pid = worker.child.id();
    let boinc = start_boinc();
    std::thread::sleep(Duration::from_secs(5));
    // Both measured over the same 20 s.
    let boinc_footprint = boinc.as_ref().map(|boinc| {
        let boinc_pid = boinc.child.id();
        std::thread::spawn(move || footprint(boinc_pid, Duration::from_secs(20)))
    });
    let (idle_rss, idle_cpu) = footprint(pid, Duration::from_secs(20));
    println!(
        "idle, no work:      {idle_rss:6.1} MiB resident, {idle_cpu:.3}% of a core ({})",
        rss_parts(pid)
    );
    let boinc_parts = boinc.as_ref().map(|boinc| rss_parts(boinc.child.id()));
    match boinc_footprint.map(|measuring| measuring.join()) {
        Some(Ok((rss, cpu))) => println!(
            "BOINC client, idle: {rss:6.1} MiB resident, {cpu:.3}% of a core (boinc 7.x, no project, same window; {})",
            boinc_parts.unwrap_or_default()
        ),
        _ => {
            println!("BOINC client:       not installed (apt-get install boinc-client to compare)")
        }
    }
    drop(boinc);

    let job = submit_long_units(&coordinator, dir);
    // Computing means using at least 3/4 of a core over 200 ms.
    let computing = |timeout: Duration| {
        wait_until(timeout, || {
            let before = unit_cpu(pid);
            std::thread::sleep(Duration::from_millis(200));
            unit_cpu(pid).saturating_sub(before) > Duration::from_millis(150)
        })
    };
    assert!(
        computing(Duration::from_secs(60)),
        "the worker never started computing: {}",
        worker.log_text()
    );

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut suspend = Vec::new();
    let mut suspend_all = Vec::new();
    let mut resume = Vec::new();
    let mut suspended_footprint = (0.0, 0.0);
    for round in 0..rounds * 2 {
        // Let it run a while, then the owner starts CPU-bound programs:
        // one, or one per CPU, in alternate rounds. A round in which the
        // worker is not computing measures nothing.
        std::thread::sleep(Duration::from_secs(2));
        if !computing(Duration::from_secs(10)) {
            println!("round {round}: the worker was not computing; skipped");
            continue;
        }
        let every_cpu = round % 2 == 1;
        let mut owner = burners(if every_cpu { cpus } else { 1 });
        let samples = trace_cpu(pid, Duration::from_secs(2));
        if every_cpu {
            suspend_all.push(stopped_at(&samples));
        } else {
            suspend.push(stopped_at(&samples));
        }
        if round == 0 {
            suspended_footprint = footprint(pid, Duration::from_secs(10));
        }
        for burner in &mut owner {
            burner.kill().ok();
            burner.wait().ok();
        }
        let samples = trace_cpu(pid, Duration::from_secs(3));
        resume.push(running_at(&samples));
    }
    let (rss, cpu) = suspended_footprint;
    println!(
        "suspended:          {rss:6.1} MiB resident, {cpu:.3}% of a core (units paused in memory)"
    );
    let show = |name: &str, values: &[Option<Duration>]| {
        let shown: Vec<String> = values.iter().map(|v| ms(*v)).collect();
        let known: Vec<f64> = values
            .iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        let med = if known.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.0} ms", median(known))
        };
        println!("{name} median {med} (rounds: {})", shown.join(", "));
    };
    show("suspend latency:   ", &suspend);
    show(&format!("  ({cpus} programs):   "), &suspend_all);
    show("resume latency:    ", &resume);

    // Slowdown of the owner's program: worker stopped vs worker with work,
    // alternating so that machine noise hits both alike.
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        signal(pid, "-STOP");
        alone.push(owner_program().as_secs_f64());
        signal(pid, "-CONT");
        std::thread::sleep(Duration::from_secs(2));
        beside.push(owner_program().as_secs_f64());
    }
    let (alone, beside) = (median(alone), median(beside));
    println!(
        "owner's program:    {alone:.3} s alone, {beside:.3} s with the worker holding work: {:+.1}% slower",
        (beside / alone - 1.0) * 100.0
    );

    // Idle again after work: the job is cancelled, its units aborted, and
    // the worker left alone for longer than it waits before letting go
    // of its engines (a minute).
    coordinator.cli_ok(&["cancel", &job]);
    let stopped = wait_until(Duration::from_secs(60), || {
        let before = unit_cpu(pid);
        std::thread::sleep(Duration::from_millis(500));
        unit_cpu(pid).saturating_sub(before) < Duration::from_millis(10)
    });
    assert!(stopped, "the cancelled units never stopped");
    std::thread::sleep(Duration::from_secs(75));
    let (rss, cpu) = footprint(pid, Duration::from_secs(10));
    println!(
        "idle after work:    {rss:6.1} MiB resident, {cpu:.3}% of a core ({})",
        rss_parts(pid)
    );

    // What letting go costs: the next units' start (assignment to first
    // instruction), the first ones after the release beside those after.
    let seen = worker.log_text().len();
    let quick = submit_folding_job(
        &coordinator,
        dir,
        ["HPHPPHHPHPPHPHHPPHPH", "0", "12", "20000"],
        1,
        "deadline_s = 600",
    );
    let (done, status) = coordinator.wait_done(&quick, Duration::from_secs(120));
    let log = worker.log_text();
    assert!(
        done,
        "the quick job did not finish: {status}\nworker log, last lines:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let starts = unit_starts(log.get(seen..).unwrap_or_default());
    let (first, later) = starts.split_at(starts.len().min(cpus));
    let shown: Vec<String> = first.iter().map(|ms| format!("{ms:.1} ms")).collect();
    println!(
        "unit start after idle: {} (first {} units: engines made again, modules read from disk, code paged in); later units median {}",
        shown.join(", "),
        first.len(),
        if later.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.1} ms", median(later.to_vec()))
        }
    );
}

/// Assignment-to-first-instruction times, in milliseconds, of the units
/// the worker log `text` says finished, in order.
fn unit_starts(text: &str) -> Vec<f64> {
    cobble_e2e::plain(text)
        .lines()
        .filter(|line| line.contains("unit finished"))
        .filter_map(|line| {
            let rest = line.split("first_instruction_us=").nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<f64>().ok().map(|us| us / 1000.0)
        })
        .collect()
}

/// A job of long folding units, many more than the worker has slots:
/// it outlasts the rounds.
fn submit_long_units(coordinator: &Coordinator, dir: &Path) -> String {
    submit_folding_job(
        coordinator,
        dir,
        ["HPHPPHHPHPPHPHHPPHPH", "0", "1024", "9000000"],
        16,
        "deadline_s = 3600\nfuel = 10000000000000",
    )
}
