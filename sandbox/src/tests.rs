//! Sandbox tests against real guests: runaway loops, memory hogs, escapes.

use super::*;
use cobble_unit_artifacts::{PRIMES, SANDBOX_PROBE};

struct Dirs {
    _root: tempfile::TempDir,
    input: PathBuf,
    output: PathBuf,
    checkpoint: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().expect("temp dir");
    let input = root.path().join("input");
    let output = root.path().join("output");
    let checkpoint = root.path().join("checkpoint");
    for dir in [&input, &output, &checkpoint] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(input.join("data.txt"), b"hello").expect("write");
    Dirs {
        _root: root,
        input,
        output,
        checkpoint,
    }
}

fn limits() -> UnitLimits {
    UnitLimits {
        fuel: 5_000_000_000,
        memory_bytes: 64 << 20,
        wall_time: Duration::from_secs(20),
        max_output_bytes: 1 << 20,
    }
}

async fn run_with(wasm: &str, args: &[&str], limits: UnitLimits) -> (RunReport, Dirs) {
    let sandbox = Sandbox::new(None).expect("sandbox");
    let bytes = std::fs::read(wasm).expect("guest built by cobble-unit-artifacts");
    let module = sandbox.prepare_bytes(&bytes).expect("module");
    let dirs = dirs();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let report = run_in(
        &sandbox,
        &module,
        &dirs,
        &args,
        limits,
        Some(&dirs.checkpoint),
    )
    .await;
    (report, dirs)
}

/// Runs a prepared module in `dirs`, with a checkpoint directory or none.
async fn run_in(
    sandbox: &Sandbox,
    module: &PreparedModule,
    dirs: &Dirs,
    args: &[String],
    limits: UnitLimits,
    checkpoint: Option<&Path>,
) -> RunReport {
    sandbox
        .run(
            module,
            Invocation {
                env: &[],
                args,
                input_dir: &dirs.input,
                output_dir: &dirs.output,
                checkpoint_dir: checkpoint,
                stdin: Vec::new(),
                seed: [7; 32],
                limits,
                control: UnitControl::unpaused(),
            },
        )
        .await
        .expect("the sandbox itself works")
}

/// Runs a unit three ways: straight through; starved of fuel (a fraction of
/// what the straight run used) with a checkpoint directory; and again on that
/// directory. Returns the three reports and the progress after the second.
async fn interrupt_and_resume(
    wasm: &str,
    args: &[&str],
    starve_to: fn(u64) -> u64,
) -> [RunReport; 3] {
    let sandbox = Sandbox::new(None).expect("sandbox");
    let bytes = std::fs::read(wasm).expect("unit built by cobble-unit-artifacts");
    let module = sandbox.prepare_bytes(&bytes).expect("module");
    let dirs = dirs();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut generous = limits();
    generous.fuel = 50_000_000_000;
    let straight = run_in(&sandbox, &module, &dirs, &args, generous, None).await;
    let mut starved = generous;
    starved.fuel = starve_to(straight.fuel_used);
    let interrupted = run_in(
        &sandbox,
        &module,
        &dirs,
        &args,
        starved,
        Some(&dirs.checkpoint),
    )
    .await;
    assert!(read_progress(&dirs.checkpoint).is_some_and(|p| p > 0.0 && p < 1.0));
    std::fs::remove_dir_all(&dirs.output).ok();
    std::fs::create_dir_all(&dirs.output).expect("mkdir");
    let resumed = run_in(
        &sandbox,
        &module,
        &dirs,
        &args,
        generous,
        Some(&dirs.checkpoint),
    )
    .await;
    assert_eq!(read_progress(&dirs.checkpoint), Some(1.0));
    let stderr = |report: &RunReport| String::from_utf8_lossy(&report.stderr).into_owned();
    assert_eq!(straight.outcome, Ok(()), "{}", stderr(&straight));
    assert!(matches!(
        interrupted.outcome,
        Err(UnitFailure::FuelExhausted(_))
    ));
    assert_eq!(resumed.outcome, Ok(()), "{}", stderr(&resumed));
    assert_eq!(
        resumed.stdout, straight.stdout,
        "resuming changed the result"
    );
    // The resumed run counts the fuel spent up to its checkpoint, so its
    // total is the straight run's plus what a second start repeats (about
    // a million for folding, whose lattice is 1 MiB: 1% of these small
    // runs). Starting over, or counting the first run whole, would add
    // up to half the straight run's.
    let extra = resumed.fuel_used as f64 / straight.fuel_used as f64 - 1.0;
    assert!(
        (-0.005..0.03).contains(&extra),
        "resumed total {} against straight {}",
        resumed.fuel_used,
        straight.fuel_used
    );
    [straight, interrupted, resumed]
}

async fn probe(args: &[&str]) -> RunReport {
    run_with(SANDBOX_PROBE, args, limits()).await.0
}

fn stdout(report: &RunReport) -> String {
    String::from_utf8_lossy(&report.stdout).into_owned()
}

#[tokio::test]
async fn primes_unit_counts_and_uses_fuel() {
    let (report, _dirs) = run_with(PRIMES, &["0", "10000"], limits()).await;
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(stdout(&report), "primes in [0, 10000): 1229\n");
    assert!(report.fuel_used > 0);
}

#[tokio::test]
async fn infinite_loop_runs_out_of_fuel() {
    let mut limits = limits();
    limits.fuel = 50_000_000;
    let (report, _) = run_with(SANDBOX_PROBE, &["loop"], limits).await;
    assert_eq!(report.outcome, Err(UnitFailure::FuelExhausted(50_000_000)));
    assert_eq!(report.fuel_used, 50_000_000);
}

#[tokio::test]
async fn infinite_loop_hits_the_wall_clock_limit() {
    let mut limits = limits();
    limits.fuel = u64::MAX;
    limits.wall_time = Duration::from_millis(300);
    let (report, _) = run_with(SANDBOX_PROBE, &["loop"], limits).await;
    assert_eq!(
        report.outcome,
        Err(UnitFailure::WallTime(Duration::from_millis(300)))
    );
}

#[tokio::test]
async fn four_gib_allocation_is_refused() {
    let report = probe(&["alloc", "4096"]).await;
    assert_eq!(report.outcome, Err(UnitFailure::MemoryExceeded(64)));
    // Within the cap the same code works.
    let report = probe(&["alloc", "16"]).await;
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(stdout(&report), "allocated 16 MiB\n");
}

#[tokio::test]
async fn host_files_are_out_of_reach() {
    for path in [
        "/etc/passwd",
        "/input/../../etc/passwd",
        "../etc/passwd",
        "/input/../output/../../../etc/passwd",
        "/proc/self/environ",
    ] {
        let report = probe(&["read", path]).await;
        assert_eq!(report.outcome, Ok(()));
        let seen = stdout(&report);
        assert!(seen.starts_with("denied:"), "{path} was readable: {seen}");
    }
    let report = probe(&["list", "/"]).await;
    assert!(
        stdout(&report).starts_with("denied:"),
        "{}",
        stdout(&report)
    );
}

#[tokio::test]
async fn inputs_are_read_only_and_outputs_are_captured() {
    let report = probe(&["read", "/input/data.txt"]).await;
    assert_eq!(stdout(&report), "read 5 bytes\n");
    let report = probe(&["write", "/input/new.txt", "x"]).await;
    assert!(
        stdout(&report).starts_with("denied:"),
        "{}",
        stdout(&report)
    );
    let (report, dirs) = run_with(
        SANDBOX_PROBE,
        &["write", "/output/result.txt", "42"],
        limits(),
    )
    .await;
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(report.files.len(), 1);
    assert_eq!(report.files[0].name, "result.txt");
    assert_eq!(
        std::fs::read(dirs.output.join("result.txt")).expect("output file"),
        b"42"
    );
}

#[tokio::test]
async fn a_symlink_left_in_output_is_refused() {
    let report = probe(&["symlink"]).await;
    assert!(
        matches!(report.outcome, Err(UnitFailure::BadOutput(_))),
        "{:?} {}",
        report.outcome,
        stdout(&report)
    );
}

/// A unit makes its progress file a link to a host file, or to a device
/// that never ends: the worker reads neither (it reads progress while the
/// unit runs and sends it to the coordinator).
#[tokio::test]
async fn a_progress_file_linked_out_of_the_checkpoint_is_not_followed() {
    let sandbox = Sandbox::new(None).expect("sandbox");
    let module = sandbox
        .prepare_bytes(&std::fs::read(SANDBOX_PROBE).expect("probe"))
        .expect("prepare");
    for target in ["../secret", "../../../../../../../../../../dev/zero"] {
        let dirs = dirs();
        let secret = dirs.checkpoint.with_file_name("secret");
        std::fs::write(&secret, b"0.25").expect("write");
        let args = vec!["symlink-progress".to_string(), target.to_string()];
        let report = run_in(
            &sandbox,
            &module,
            &dirs,
            &args,
            limits(),
            Some(&dirs.checkpoint),
        )
        .await;
        let link = dirs.checkpoint.join("progress");
        assert!(
            std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
            "the probe did not make its link: {}",
            String::from_utf8_lossy(&report.stdout)
        );
        assert_eq!(read_progress(&dirs.checkpoint), None, "followed {target}");
    }
    // What the worker reads from a unit's directories is bounded as well.
    let dirs = dirs();
    std::fs::write(dirs.checkpoint.join("progress"), vec![b'0'; 1 << 20]).expect("write");
    assert_eq!(read_progress(&dirs.checkpoint), None);
    assert_eq!(read_unit_file(&dirs.checkpoint.join("progress"), 16), None);
    std::fs::write(dirs.checkpoint.join("progress"), b"0.5\n").expect("write");
    assert_eq!(read_progress(&dirs.checkpoint), Some(0.5));
}

/// Several memories would each get the memory cap: refused at compile.
#[test]
fn a_module_with_two_memories_is_refused() {
    let sandbox = Sandbox::new(None).expect("sandbox");
    // The wasm header, then a memory section (id 5, 5 bytes) declaring two
    // memories of one page each.
    let two_memories = b"\0asm\x01\0\0\0\x05\x05\x02\x00\x01\x00\x01";
    let refused = sandbox.prepare_bytes(two_memories);
    assert!(
        matches!(&refused, Err(Error::InvalidModule(message)) if message.contains("memor")),
        "{:?}",
        refused.err()
    );
    // One memory is fine, as far as memories go (no `_start`, so still no command).
    let one_memory = b"\0asm\x01\0\0\0\x05\x03\x01\x00\x01";
    assert!(matches!(
        sandbox.prepare_bytes(one_memory),
        Err(Error::NotACommand)
    ));
}

#[tokio::test]
async fn unbounded_recursion_fails_alone_and_says_why() {
    let report = probe(&["recurse"]).await;
    assert!(
        matches!(&report.outcome, Err(UnitFailure::Trap(message)) if message.contains("stack")),
        "{:?}",
        report.outcome
    );
}

#[tokio::test]
async fn stdout_is_capped() {
    let report = probe(&["spam", "2000000"]).await;
    assert_eq!(report.outcome, Err(UnitFailure::OutputTooLarge(1 << 20)));
    // Exactly at the cap is still within it.
    let report = probe(&["spam", "1048576"]).await;
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(report.stdout.len(), 1 << 20);
}

#[tokio::test]
async fn the_host_is_invisible_and_replicas_see_the_same_world() {
    let first = probe(&["observe", "x"]).await;
    let second = probe(&["observe", "x"]).await;
    let seen = stdout(&first);
    assert!(
        seen.starts_with("env=0 now=946684800 random=true:"),
        "{seen}"
    );
    assert_eq!(first.stdout, second.stdout, "same seed, same observations");
    assert_eq!(first.fuel_used, second.fuel_used, "fuel is deterministic");
}

#[tokio::test]
async fn exit_status_and_panics_are_failures() {
    assert_eq!(probe(&["exit", "0"]).await.outcome, Ok(()));
    assert_eq!(
        probe(&["exit", "3"]).await.outcome,
        Err(UnitFailure::Exit(3))
    );
    let report = probe(&["panic"]).await;
    assert!(
        matches!(report.outcome, Err(UnitFailure::Trap(_))),
        "{:?}",
        report.outcome
    );
    assert!(String::from_utf8_lossy(&report.stderr).contains("probe asked to panic"));
}

#[test]
fn non_wasm_bytes_are_refused() {
    let sandbox = Sandbox::new(None).expect("sandbox");
    for bytes in [&b"#!/bin/sh\necho hi\n"[..], b"", b"\0asm\x01\0\0\0garbage"] {
        let error = sandbox.prepare_bytes(bytes).err();
        assert!(
            matches!(error, Some(Error::InvalidModule(_))),
            "{bytes:?} gave {error:?}"
        );
    }
}

#[test]
fn a_module_without_start_is_refused() {
    let sandbox = Sandbox::new(None).expect("sandbox");
    // The smallest valid module: a header and nothing else, so no `_start`.
    let empty_module = b"\0asm\x01\0\0\0";
    assert!(matches!(
        sandbox.prepare_bytes(empty_module),
        Err(Error::NotACommand)
    ));
}

#[tokio::test]
async fn compiled_modules_are_cached_on_disk() {
    let cache = tempfile::tempdir().expect("temp dir");
    let wasm = Path::new(PRIMES);
    let hash = cobble_core::BlobHash::of(&std::fs::read(wasm).expect("guest"));
    let cached = || -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(cache.path())
            .expect("cache dir")
            .map(|entry| entry.expect("entry").path())
            .collect();
        files.sort();
        files
    };
    {
        let sandbox = Sandbox::new(Some(cache.path().to_path_buf())).expect("sandbox");
        let (_, origin) = sandbox.prepare_from(&hash, wasm).expect("compile");
        assert_eq!(origin, Origin::Compiled);
        let (_, origin) = sandbox.prepare_from(&hash, wasm).expect("again");
        assert_eq!(origin, Origin::Memory);
    }
    let files = cached();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().contains(&hash.to_string()));
    // A file of an earlier layout goes when a cache opens; others stay.
    let stale = cache.path().join(format!("{hash}.v2.cwasm"));
    std::fs::write(&stale, b"old").expect("write");
    // A fresh sandbox loads it without the .wasm at all.
    let sandbox = Sandbox::new(Some(cache.path().to_path_buf())).expect("sandbox");
    let (_, origin) = sandbox
        .prepare_from(&hash, Path::new("/nonexistent.wasm"))
        .expect("served from the disk cache");
    assert_eq!(origin, Origin::Disk);
    assert!(!stale.exists(), "a stale compiled module was kept");
    assert_eq!(cached(), files);
    drop(sandbox);
    // An engine with other settings keeps its own file beside it: the two
    // never read, refuse and overwrite each other's.
    let other = EngineSettings {
        nan_canonicalization: false,
        ..EngineSettings::default()
    };
    Sandbox::with_settings(Some(cache.path().to_path_buf()), other)
        .expect("sandbox")
        .prepare(&hash, wasm)
        .expect("compile");
    assert_eq!(cached().len(), 2);
    let sandbox = Sandbox::new(Some(cache.path().to_path_buf())).expect("sandbox");
    let (_, origin) = sandbox.prepare_from(&hash, wasm).expect("cached");
    assert_eq!(origin, Origin::Disk);
    drop(sandbox);
    // A torn cache entry is discarded and recompiled, never trusted.
    for file in cached() {
        std::fs::write(&file, b"torn").expect("write");
    }
    let sandbox = Sandbox::new(Some(cache.path().to_path_buf())).expect("sandbox");
    let (_, origin) = sandbox.prepare_from(&hash, wasm).expect("recompiled");
    assert_eq!(origin, Origin::Compiled);
}

#[test]
fn units_of_a_new_module_that_start_together_compile_it_once() {
    let wasm = Path::new(cobble_unit_artifacts::FOLDING);
    let hash = cobble_core::BlobHash::of(&std::fs::read(wasm).expect("guest"));
    let sandbox = Sandbox::new(None).expect("sandbox");
    let origins: Vec<Origin> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| sandbox.prepare_from(&hash, wasm).expect("prepare").1))
            .collect();
        callers
            .into_iter()
            .map(|caller| caller.join().expect("thread"))
            .collect()
    });
    let compiled = origins.iter().filter(|o| **o == Origin::Compiled).count();
    assert_eq!(compiled, 1, "{origins:?}");
}

/// The checkpoint protocol from a C unit that knows nothing of Cobble but
/// files: starved of fuel it stops with a checkpoint; run again on the same
/// directory it resumes there and prints exactly what a straight run prints.
#[tokio::test]
async fn a_c_unit_resumes_from_its_checkpoint() {
    let [straight, _, resumed] = interrupt_and_resume(
        cobble_unit_artifacts::COLLATZ_C,
        &["1", "1000000"],
        |fuel| fuel / 2,
    )
    .await;
    assert!(
        stdout(&straight).contains("837799 takes 524 steps"),
        "{}",
        stdout(&straight)
    );
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resumes: 1"));
}

/// The Rust SDK's checkpoints: the folding unit, starved of fuel part-way,
/// resumes at the seed it had reached and finds the same best fold.
#[tokio::test]
async fn the_folding_unit_resumes_through_the_sdk() {
    let args = ["HPHPPHHPHPPHPHHPPHPH", "0", "4", "20000"];
    let [straight, _, resumed] =
        interrupt_and_resume(cobble_unit_artifacts::FOLDING, &args, |fuel| fuel / 2).await;
    assert!(
        stdout(&straight).starts_with("best energy -"),
        "{}",
        stdout(&straight)
    );
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resumed at seed"));
}

/// The fuel budget covers all runs of a unit together: resuming from a
/// checkpoint gives no fresh budget, so a unit cannot outrun its limit by
/// being interrupted (or by crashing on purpose).
#[tokio::test]
async fn resuming_does_not_renew_the_fuel_budget() {
    let sandbox = Sandbox::new(None).expect("sandbox");
    let bytes = std::fs::read(cobble_unit_artifacts::COLLATZ_C).expect("unit built");
    let module = sandbox.prepare_bytes(&bytes).expect("module");
    let dirs = dirs();
    let args: Vec<String> = ["1", "1000000"].iter().map(|a| a.to_string()).collect();
    let mut generous = limits();
    generous.fuel = 50_000_000_000;
    let straight = run_in(&sandbox, &module, &dirs, &args, generous, None).await;
    assert_eq!(straight.outcome, Ok(()));
    // Two runs of 60% each would finish if each had its own budget.
    let mut tight = generous;
    tight.fuel = straight.fuel_used * 6 / 10;
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let run = run_in(
            &sandbox,
            &module,
            &dirs,
            &args,
            tight,
            Some(&dirs.checkpoint),
        )
        .await;
        assert_eq!(
            run.fuel_used, tight.fuel,
            "each run reports the whole budget spent"
        );
        outcomes.push(run.outcome);
    }
    assert_eq!(
        outcomes,
        vec![
            Err(UnitFailure::FuelExhausted(tight.fuel)),
            Err(UnitFailure::FuelExhausted(tight.fuel))
        ]
    );
}

/// Runs the probe with `args` under the test limits; it must succeed.
async fn probe_ok(args: &[&str]) -> (RunReport, Dirs) {
    let (report, dirs) = run_with(SANDBOX_PROBE, args, limits()).await;
    assert_eq!(
        report.outcome,
        Ok(()),
        "{args:?}: {}",
        String::from_utf8_lossy(&report.stdout)
    );
    (report, dirs)
}

/// The output cap holds at write time: the write that would cross it
/// fails the unit before its bytes reach the disk, however the unit tries
/// (one big file, a file deep in subdirectories, a sparse file), while a
/// unit that rewrites a small file many times is not taken for a big one.
#[tokio::test]
async fn files_under_output_are_capped_as_they_are_written() {
    for (args, what) in [
        (vec!["fill", "/output/big", "1073741824"], "a 1 GiB file"),
        (
            vec!["fill", "/output/a/b/c/big", "1073741824"],
            "a file deep down",
        ),
        (
            vec!["sparse", "/output/holes", "1099511627776"],
            "a 1 TiB sparse file",
        ),
    ] {
        let (report, dirs) = run_with(SANDBOX_PROBE, &args, limits()).await;
        assert_eq!(
            report.outcome,
            Err(UnitFailure::OutputTooLarge(1 << 20)),
            "{what}: {}",
            String::from_utf8_lossy(&report.stdout)
        );
        let on_disk = dir_size(&dirs.output);
        assert!(
            on_disk <= 1 << 20,
            "{what}: {on_disk} bytes reached the disk"
        );
    }
    let (report, _dirs) = probe_ok(&["rewrite", "/output/small", "102400", "50"]).await;
    assert_eq!(String::from_utf8_lossy(&report.stdout), "rewrote 50\n");
    // Just under the cap (stdout counts too) is allowed.
    let (_report, dirs) = probe_ok(&["fill", "/output/under", "1000000"]).await;
    assert_eq!(dir_size(&dirs.output), 1_000_000);
    // Writes elsewhere (/checkpoint) are not the hooks' business.
    probe_ok(&["fill", "/checkpoint/state", "600000"]).await;
}

/// A unit that does nothing but read a file spends almost no fuel, so
/// fuel yields reach it only seconds apart: the I/O hooks must. It runs
/// on its own runtime thread, as in the worker; paused, it stops within
/// the README's 0.2 s and stays stopped; resumed, it goes on. Its memory,
/// which grows by 64 KiB a pass over the file, shows it moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_reading_a_file_pauses_at_once_and_resumes() {
    let sandbox = Arc::new(Sandbox::new(None).expect("sandbox"));
    let bytes = std::fs::read(SANDBOX_PROBE).expect("guest built by cobble-unit-artifacts");
    let module = sandbox.prepare_bytes(&bytes).expect("module");
    let dirs = dirs();
    std::fs::write(dirs.input.join("big"), vec![7u8; 64 << 20]).expect("write");
    let (permit_tx, permit) = tokio::sync::watch::channel(true);
    let memory = Arc::new(AtomicU64::new(0));
    let control = UnitControl {
        permit,
        memory_bytes: memory.clone(),
    };
    let memory_now = || memory.load(Ordering::Relaxed);
    let mut generous = limits();
    generous.wall_time = Duration::from_secs(120);
    generous.memory_bytes = 1 << 30;
    let unit = tokio::spawn(async move {
        let args: Vec<String> = ["reread", "/input/big", "0"].map(String::from).to_vec();
        sandbox
            .run(
                &module,
                Invocation {
                    env: &[],
                    args: &args,
                    input_dir: &dirs.input,
                    output_dir: &dirs.output,
                    checkpoint_dir: None,
                    stdin: Vec::new(),
                    seed: [0; 32],
                    limits: generous,
                    control,
                },
            )
            .await
    });
    // Three passes' growth past `from`.
    let moved_past = |from: u64| async move {
        for _ in 0..6000 {
            if memory_now() >= from + (3 << 16) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the unit never read the file three more times");
    };
    moved_past(0).await;
    moved_past(memory_now()).await;
    permit_tx.send_replace(false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paused_at = memory_now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        memory_now(),
        paused_at,
        "the unit kept reading while paused"
    );
    permit_tx.send_replace(true);
    moved_past(paused_at).await;
    assert!(!unit.is_finished(), "the unit ended: {:?}", unit.await);
    unit.abort();
}

/// A unit asking to sleep for an hour is held to its wall-clock limit
/// like any other (WASI would sleep on the thread, where nothing could
/// stop it); a short sleep still sleeps and returns.
#[tokio::test]
async fn a_sleeping_unit_is_held_to_its_wall_clock_limit() {
    let mut short = limits();
    short.wall_time = Duration::from_secs(1);
    let (report, _dirs) = run_with(SANDBOX_PROBE, &["sleep", "3600000"], short).await;
    assert_eq!(
        report.outcome,
        Err(UnitFailure::WallTime(Duration::from_secs(1)))
    );
    let (report, _dirs) = run_with(SANDBOX_PROBE, &["sleep", "20"], limits()).await;
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(stdout(&report), "slept 20\n");
}
