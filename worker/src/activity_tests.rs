use super::*;

fn prefs(overrides: &[&str]) -> Prefs {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Prefs::parse("", "test", &overrides).expect("valid prefs")
}

const NOON: f64 = 12.0;

#[test]
fn load_suspends_after_two_busy_samples_and_resumes_after_the_idle_time() {
    let mut policy = Policy::new(prefs(&["suspend_cpu_usage=25", "idle_time_to_run=0.01"]));
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    // Quiet at start, but not yet for idle_time_to_run (0.6 s).
    assert_eq!(
        policy.decide(at(0), Some(5.0), false, NOON),
        Some(SuspendReason::UserActive)
    );
    assert_eq!(policy.decide(at(700), Some(5.0), false, NOON), None);
    // One spike is not enough; two busy samples in a row are.
    assert_eq!(policy.decide(at(800), Some(60.0), false, NOON), None);
    assert_eq!(policy.decide(at(900), Some(10.0), false, NOON), None);
    assert_eq!(policy.decide(at(1000), Some(60.0), false, NOON), None);
    assert_eq!(
        policy.decide(at(1100), Some(60.0), false, NOON),
        Some(SuspendReason::UserActive)
    );
    // Quiet again: computing waits for idle_time_to_run before resuming.
    assert_eq!(
        policy.decide(at(1200), Some(3.0), false, NOON),
        Some(SuspendReason::UserActive)
    );
    assert_eq!(
        policy.decide(at(1700), Some(3.0), false, NOON),
        Some(SuspendReason::UserActive)
    );
    assert_eq!(policy.decide(at(1900), Some(3.0), false, NOON), None);
}

#[test]
fn zero_suspend_cpu_usage_ignores_load() {
    let mut policy = Policy::new(prefs(&["suspend_cpu_usage=0"]));
    let now = Instant::now();
    for _ in 0..5 {
        assert_eq!(policy.decide(now, Some(100.0), false, NOON), None);
    }
}

#[test]
fn batteries_and_time_of_day() {
    let now = Instant::now();
    let mut policy = Policy::new(prefs(&["suspend_cpu_usage=0"]));
    assert_eq!(
        policy.decide(now, None, true, NOON),
        Some(SuspendReason::OnBatteries)
    );
    let mut policy = Policy::new(prefs(&["suspend_cpu_usage=0", "run_on_batteries=true"]));
    assert_eq!(policy.decide(now, None, true, NOON), None);
    let mut policy = Policy::new(prefs(&[
        "suspend_cpu_usage=0",
        "start_hour=22",
        "end_hour=6",
    ]));
    assert_eq!(
        policy.decide(now, None, false, NOON),
        Some(SuspendReason::TimeOfDay)
    );
    assert_eq!(policy.decide(now, None, false, 23.0), None);
}

#[test]
fn throttle_is_a_duty_cycle() {
    let policy = Policy::new(prefs(&["cpu_usage_limit=30"]));
    let (on, change) = policy.throttle(Duration::from_millis(100));
    assert!(on);
    assert_eq!(change.as_millis(), 200);
    let (on, change) = policy.throttle(Duration::from_millis(2500));
    assert!(!on);
    assert_eq!(change.as_millis(), 500);
    let full = Policy::new(prefs(&[]));
    assert_eq!(full.throttle(Duration::from_secs(7)), (true, Duration::MAX));
}

#[test]
fn power_supply_states() {
    let dir = tempfile::tempdir().expect("temp dir");
    let supply = |name: &str, files: &[(&str, &str)]| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        for (file, text) in files {
            std::fs::write(path.join(file), format!("{text}\n")).expect("write");
        }
    };
    assert!(!on_batteries(dir.path()), "a desktop has no battery");
    supply("BAT0", &[("type", "Battery"), ("status", "Discharging")]);
    supply("AC", &[("type", "Mains"), ("online", "0")]);
    assert!(on_batteries(dir.path()));
    supply("AC", &[("type", "Mains"), ("online", "1")]);
    assert!(!on_batteries(dir.path()), "plugged in");
    assert!(!on_batteries(&dir.path().join("missing")));
}

#[test]
fn file_load_reads_a_percentage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("load");
    let mut source = FileLoad(path.clone());
    assert_eq!(source.sample(), Some(0.0), "absent means no load");
    std::fs::write(&path, "80\n").expect("write");
    assert_eq!(source.sample(), Some(80.0));
}

/// The real measurement sees a CPU-burning process that is not the worker.
#[test]
fn system_load_sees_another_process_burning_cpu() {
    let mut source = SystemLoad::new();
    let mut burner = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .expect("spawn a burner");
    std::thread::sleep(Duration::from_millis(300));
    source.sample();
    std::thread::sleep(Duration::from_millis(500));
    let load = source.sample();
    burner.kill().ok();
    burner.wait().ok();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let load = load.expect("load is measurable on Linux");
    // The burner alone is one CPU out of `cpus`; other tests may add more,
    // and a crowded machine may give it less, hence the wide margin.
    assert!(
        load >= 30.0 / cpus,
        "a busy-looping process showed as only {load:.1}% of {cpus} CPUs"
    );
}

#[test]
fn proc_stat_gives_all_and_idle_ticks() {
    let text = "cpu  100 5 50 1000 20 3 2 7 40 0\ncpu0 50 2 25 500 10 1 1 3 20 0\nintr 1 2\n";
    // user nice system idle iowait irq softirq steal; guest is inside user.
    assert_eq!(parse_proc_stat(text), Some((1187, 1020)));
    assert_eq!(parse_proc_stat("intr 1 2\n"), None);
    assert_eq!(parse_proc_stat("cpu  1 2 x 4\n"), None);
}

#[test]
fn self_stat_counts_from_the_last_parenthesis() {
    // A command name may hold spaces and parentheses.
    let text = "4242 (we(ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 321 45 0 0 39 19 9 0 1";
    assert_eq!(parse_self_stat(text), Some(366));
    assert_eq!(parse_self_stat("4242 (short) S 1"), None);
}

#[test]
fn load_is_other_programs_share_of_all_ticks() {
    let before = Ticks {
        total: 1000,
        idle: 800,
        own: 50,
    };
    // 200 ticks pass: 60 idle, 140 busy, of which this worker used 40.
    let now = Ticks {
        total: 1200,
        idle: 860,
        own: 90,
    };
    assert_eq!(before.load_until(now), 50.0);
    assert_eq!(before.load_until(before), 0.0, "no time passed");
    // Counters never run backwards, but a bad read must not underflow.
    assert_eq!(now.load_until(before), 0.0);
}

/// With no work the monitor samples every 5 s; work arriving wakes it, so
/// an owner who starts using the machine right after is noticed within
/// two fast samples, not after the rest of an idle pause.
#[test]
fn work_arriving_wakes_the_monitor_from_its_idle_pause() {
    let dir = tempfile::tempdir().expect("temp dir");
    let load_file = dir.path().join("load");
    std::fs::write(&load_file, "0").expect("write");
    let monitor = Monitor::start(
        prefs(&["suspend_cpu_usage=25", "idle_time_to_run=0"]),
        Box::new(FileLoad(load_file.clone())),
        dir.path().join("no-power-supply"),
    );
    // Let it take its first sample and settle into the idle pause.
    std::thread::sleep(Duration::from_millis(300));
    assert!(*monitor.permit.borrow());
    std::fs::write(&load_file, "90").expect("write");
    let asked = Instant::now();
    monitor.has_work.set(true);
    let mut permit = monitor.permit.clone();
    while *permit.borrow_and_update() {
        assert!(
            asked.elapsed() < SAMPLE_EVERY_WHEN_EMPTY,
            "the monitor slept through the arrival of work"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
