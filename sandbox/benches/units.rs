//! Wasm against native, side by side in one run: each example unit runs
//! natively and through the worker's real sandbox (production engine
//! settings, fuel metering on) on the same input, interleaved round by
//! round (the variants in a rotating order) so machine noise hits all
//! alike. Prints the median wasm/native ratio per example, what each engine
//! setting costs, first-compile and disk-cache load times, and the time from
//! handing a cached module to the sandbox to its first instruction.
//!
//! Each ratio is the median over rounds of the wasm time divided by the
//! mean of the native runs just before and after it; the fastest wasm run
//! over the fastest native run is printed beside it. The native build is
//! compiled with default flags, the portable binary a project would ship;
//! the production settings are also compared with a build for this CPU
//! (`target-cpu=native`), which may use instructions wasm lacks.
//!
//! `cargo bench -p cobble-sandbox --bench units` (COBBLE_BENCH_ROUNDS=N for
//! more rounds, COBBLE_BENCH_ONLY=NAME for the examples whose name contains NAME).

use cobble_sandbox::{
    EngineSettings, Invocation, PreparedModule, Sandbox, UnitControl, UnitLimits,
};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use wasmtime::OptLevel;

struct Example {
    name: &'static str,
    wasm: &'static str,
    /// Built with default flags: the portable binary a project would ship.
    native: &'static str,
    /// Built for this machine's CPU (`target-cpu=native`, `-march=native`).
    native_cpu: &'static str,
    /// `{input}` stands for the input file: `/input/data` in wasm, its
    /// path on disk natively.
    args: &'static [&'static str],
    /// As in the example's job.toml (`[engine] nan_canonicalization`).
    nan_canonicalization: bool,
    /// Written nobody's way but the obvious one (`workunits/untuned`).
    untuned: bool,
}

/// The input file of the I/O units: 200 MiB, as in the measurement that
/// asked for them (a 64 KiB-read FNV digest ran at 2.5x native).
const INPUT_BYTES: usize = 200 << 20;

const EXAMPLES: &[Example] = &[
    Example {
        name: "primes (Rust)",
        wasm: cobble_unit_artifacts::PRIMES,
        native: cobble_unit_artifacts::PRIMES_NATIVE,
        native_cpu: cobble_unit_artifacts::PRIMES_NATIVE_CPU,
        args: &["1000000000", "1000300000"],
        nan_canonicalization: true,
        untuned: false,
    },
    Example {
        name: "folding (Rust, SDK)",
        wasm: cobble_unit_artifacts::FOLDING,
        native: cobble_unit_artifacts::FOLDING_NATIVE,
        native_cpu: cobble_unit_artifacts::FOLDING_NATIVE_CPU,
        args: &["HPHPPHHPHPPHPHHPPHPH", "0", "2", "2000000"],
        nan_canonicalization: true,
        untuned: false,
    },
    Example {
        name: "mandelbrot (Rust, f64)",
        wasm: cobble_unit_artifacts::MANDELBROT,
        native: cobble_unit_artifacts::MANDELBROT_NATIVE,
        native_cpu: cobble_unit_artifacts::MANDELBROT_NATIVE_CPU,
        args: &[
            "render",
            "0",
            "1",
            "1",
            "600",
            "600",
            "-0.743643887037151",
            "0.131825904205330",
            "0.0000002",
            "3000",
        ],
        nan_canonicalization: false,
        untuned: false,
    },
    Example {
        name: "montecarlo (Rust, f64 + exp)",
        wasm: cobble_unit_artifacts::MONTECARLO,
        native: cobble_unit_artifacts::MONTECARLO_NATIVE,
        native_cpu: cobble_unit_artifacts::MONTECARLO_NATIVE_CPU,
        args: &["1", "20000000"],
        nan_canonicalization: false,
        untuned: false,
    },
    Example {
        name: "collatz (C)",
        wasm: cobble_unit_artifacts::COLLATZ_C,
        native: cobble_unit_artifacts::COLLATZ_C_NATIVE,
        native_cpu: cobble_unit_artifacts::COLLATZ_C_NATIVE_CPU,
        args: &["1", "3000000"],
        nan_canonicalization: true,
        untuned: false,
    },
    Example {
        name: "collatz (untuned Rust)",
        wasm: cobble_unit_artifacts::UNTUNED_COLLATZ,
        native: cobble_unit_artifacts::UNTUNED_COLLATZ_NATIVE,
        native_cpu: cobble_unit_artifacts::UNTUNED_COLLATZ_NATIVE_CPU,
        args: &["1", "2000000"],
        nan_canonicalization: true,
        untuned: true,
    },
    Example {
        name: "fnv byte loop (untuned Rust, 64 KiB reads)",
        wasm: cobble_unit_artifacts::UNTUNED_FNV,
        native: cobble_unit_artifacts::UNTUNED_FNV_NATIVE,
        native_cpu: cobble_unit_artifacts::UNTUNED_FNV_NATIVE_CPU,
        args: &["{input}"],
        nan_canonicalization: true,
        untuned: true,
    },
    Example {
        name: "checksum, I/O-bound (untuned Rust, 1 MiB reads)",
        wasm: cobble_unit_artifacts::UNTUNED_CHECKSUM,
        native: cobble_unit_artifacts::UNTUNED_CHECKSUM_NATIVE,
        native_cpu: cobble_unit_artifacts::UNTUNED_CHECKSUM_NATIVE_CPU,
        args: &["{input}"],
        nan_canonicalization: true,
        untuned: true,
    },
];

/// A variant of an example's production settings, to price one setting.
type Variant = (&'static str, fn(EngineSettings) -> EngineSettings);

/// The first row is what a worker runs for the example's job.
const VARIANTS: &[Variant] = &[
    ("production (as its job.toml)", |s| s),
    ("NaN canonicalization on", |s| EngineSettings {
        nan_canonicalization: true,
        ..s
    }),
    ("NaN canonicalization off", |s| EngineSettings {
        nan_canonicalization: false,
        ..s
    }),
    ("opt level speed_and_size", |s| EngineSettings {
        opt_level: OptLevel::SpeedAndSize,
        ..s
    }),
    // The previous design: epoch checks on loop back-edges to make units
    // yield, where fuel yields now do the same for free.
    ("with epoch checks as well", |s| EngineSettings {
        epoch_interruption: true,
        ..s
    }),
    // Not a setting a worker can use: without fuel a unit never yields, so
    // it could not be paused or stopped at its deadline. Here to price the
    // fuel checks on loop back-edges.
    ("without fuel", |s| EngineSettings { fuel: false, ..s }),
];

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Lowest, median and highest of the per-round ratios.
fn spread(mut ratios: Vec<f64>) -> (f64, f64, f64) {
    ratios.sort_by(f64::total_cmp);
    (
        ratios[0],
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1],
    )
}

fn limits() -> UnitLimits {
    UnitLimits {
        fuel: u64::MAX / 2,
        memory_bytes: 1 << 30,
        wall_time: Duration::from_secs(600),
        max_output_bytes: 64 << 20,
    }
}

/// The example's arguments, `{input}` replaced by `input`.
fn args_with(example: &Example, input: &str) -> Vec<String> {
    example
        .args
        .iter()
        .map(|a| a.replace("{input}", input))
        .collect()
}

fn run_native(binary: &str, example: &Example, input: &Path) -> (Duration, Vec<u8>) {
    let args = args_with(example, input.to_str().expect("utf-8 temp path"));
    let started = Instant::now();
    let output = Command::new(binary)
        .args(args)
        .output()
        .expect("native build of the unit runs");
    assert!(
        output.status.success(),
        "{}: native run failed",
        example.name
    );
    (started.elapsed(), output.stdout)
}

/// A file of pseudo-random bytes (xorshift), the same every run.
fn write_input(path: &Path) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = Vec::with_capacity(INPUT_BYTES);
    while bytes.len() < INPUT_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::write(path, bytes).expect("writing the input file");
}

/// One run with `scratch/in` as /input and `scratch/out` as /output.
async fn run_in(
    sandbox: &Sandbox,
    module: &PreparedModule,
    args: &[String],
    env: &[(String, String)],
    scratch: &Path,
) -> cobble_sandbox::RunReport {
    sandbox
        .run(
            module,
            Invocation {
                env,
                args,
                input_dir: &scratch.join("in"),
                output_dir: &scratch.join("out"),
                checkpoint_dir: None,
                stdin: Vec::new(),
                seed: [0; 32],
                limits: limits(),
                control: UnitControl::unpaused(),
            },
        )
        .await
        .expect("sandbox runs")
}

async fn run_wasm(
    sandbox: &Sandbox,
    module: &PreparedModule,
    example: &Example,
    data: &Path,
) -> (Duration, Duration, Vec<u8>) {
    let scratch = tempfile::tempdir_in(data.parent().expect("input dir")).expect("temp dir");
    let (input, output) = (scratch.path().join("in"), scratch.path().join("out"));
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::create_dir_all(&output).expect("mkdir");
    // As the worker places a cached blob: a hard link, no copy.
    std::fs::hard_link(data, input.join("data")).expect("linking the input");
    let args = args_with(example, "/input/data");
    let report = run_in(sandbox, module, &args, &[], scratch.path()).await;
    assert_eq!(
        report.outcome,
        Ok(()),
        "{}: {:?}",
        example.name,
        report.outcome
    );
    (report.elapsed, report.startup, report.stdout)
}

fn main() {
    let rounds: usize = std::env::var("COBBLE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let only = std::env::var("COBBLE_BENCH_ONLY").unwrap_or_default();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let data = data_dir.path().join("data");
    write_input(&data);
    println!("wasm vs native, {rounds} interleaved rounds, medians\n");
    let mut summary = Vec::new();
    for example in EXAMPLES.iter().filter(|e| e.name.contains(only.as_str())) {
        let production = EngineSettings {
            nan_canonicalization: example.nan_canonicalization,
            ..EngineSettings::default()
        };
        let sandboxes: Vec<Sandbox> = VARIANTS
            .iter()
            .map(|(_, variant)| Sandbox::with_settings(None, variant(production)).expect("engine"))
            .collect();
        let bytes = std::fs::read(example.wasm).expect("wasm unit");
        let mut modules = Vec::new();
        let mut compile = Duration::ZERO;
        for (index, sandbox) in sandboxes.iter().enumerate() {
            let started = Instant::now();
            modules.push(sandbox.prepare_bytes(&bytes).expect("compiles"));
            if index == 0 {
                compile = started.elapsed();
            }
        }
        let mut native = Vec::new();
        let mut native_runs = Vec::new();
        let mut native_cpu = Vec::new();
        let mut ratios_cpu = Vec::new();
        let mut wasm: Vec<Vec<Duration>> = vec![Vec::new(); VARIANTS.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        let mut startups = Vec::new();
        let mut identical = true;
        for round in 0..rounds {
            // Native runs before and after the wasm runs of the round, and
            // each wasm time is divided by their mean: this machine's speed
            // drifts by 10-20% over seconds, and a ratio within one round
            // cancels most of that.
            let (before, native_out) = run_native(example.native, example, &data);
            // Each round starts at another variant, so that whatever the
            // first run after the native one suffers falls on all alike.
            let order = (0..VARIANTS.len()).map(|i| (i + round) % VARIANTS.len());
            let mut times = vec![Duration::ZERO; VARIANTS.len()];
            for index in order {
                let sandbox = &sandboxes[index];
                let (elapsed, startup, wasm_out) =
                    runtime.block_on(run_wasm(sandbox, &modules[index], example, &data));
                identical &= wasm_out == native_out;
                times[index] = elapsed;
                if index == 0 {
                    startups.push(startup);
                }
            }
            let (after, _) = run_native(example.native, example, &data);
            let (cpu, cpu_out) = run_native(example.native_cpu, example, &data);
            identical &= cpu_out == native_out;
            native_cpu.push(cpu);
            ratios_cpu.push(times[0].as_secs_f64() / cpu.as_secs_f64());
            native_runs.extend([before, after]);
            let native_round = (before + after) / 2;
            native.push(native_round);
            for (index, elapsed) in times.into_iter().enumerate() {
                wasm[index].push(elapsed);
                ratios[index].push(elapsed.as_secs_f64() / native_round.as_secs_f64());
            }
        }
        let native_best = native_runs.iter().min().copied().unwrap_or_default();
        let native = median(native);
        println!(
            "{}: native {:.3} s (default flags); wasm output {} native's",
            example.name,
            native.as_secs_f64(),
            if identical {
                "bit-identical to"
            } else {
                "DIFFERS from"
            }
        );
        let production_runs = wasm[0].clone();
        let production_ratio = spread(ratios[0].clone()).1;
        for (((name, _), samples), ratios) in VARIANTS.iter().zip(wasm).zip(ratios) {
            let (low, ratio, high) = spread(ratios);
            // Interference only ever adds time: the fastest runs of each
            // are a second estimate, robust to the slow spells.
            let best = samples.iter().min().copied().unwrap_or_default();
            println!(
                "  wasm {name:<30} {:.3} s  ratio {ratio:.2}x  (rounds {low:.2}-{high:.2}; best/best {:.2}x)",
                median(samples).as_secs_f64(),
                best.as_secs_f64() / native_best.as_secs_f64(),
            );
        }
        let cpu_best = native_cpu.iter().min().copied().unwrap_or_default();
        let production_best = production_runs.iter().min().copied().unwrap_or_default();
        let (low, ratio, high) = spread(ratios_cpu);
        println!(
            "  native for this CPU {:.3} s: production wasm ratio {ratio:.2}x  (rounds {low:.2}-{high:.2}; best/best {:.2}x)",
            median(native_cpu).as_secs_f64(),
            production_best.as_secs_f64() / cpu_best.as_secs_f64(),
        );
        let cache = tempfile::tempdir().expect("temp dir");
        let hash = cobble_core::BlobHash::of(&bytes);
        Sandbox::new(Some(cache.path().to_path_buf()))
            .expect("engine")
            .prepare(&hash, Path::new(example.wasm))
            .expect("compile into the disk cache");
        let fresh = Sandbox::new(Some(cache.path().to_path_buf())).expect("engine");
        let started = Instant::now();
        fresh
            .prepare(&hash, Path::new(example.wasm))
            .expect("load from the disk cache");
        let disk_load = started.elapsed();
        let startup = median(startups);
        println!(
            "  first compile {:.1} ms, load from disk cache {:.1} ms, cached module to first instruction {} us (median)\n",
            compile.as_secs_f64() * 1e3,
            disk_load.as_secs_f64() * 1e3,
            startup.as_micros()
        );
        summary.push((example, production_ratio, compile, disk_load + startup));
    }
    let python = if "python".contains(only.as_str()) {
        python_row(&runtime, rounds)
    } else {
        None
    };
    println!("summary: production settings, ratio to native (default flags)\n");
    println!("| unit | wasm / native | first compile | cached start |\n|---|---|---|---|");
    for (example, ratio, compile, cached) in &summary {
        println!(
            "| {}{} | {ratio:.2}x | {:.0} ms | {:.1} ms |",
            example.name,
            if example.untuned { "" } else { ", tuned" },
            compile.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
        );
    }
    if let Some(row) = &python {
        println!(
            "| python sir.py (CPython 3.12 WASI vs native CPython) | {:.2}x | {:.0} ms | {:.1} ms |",
            row.ratio,
            row.compile.as_secs_f64() * 1e3,
            row.cached_start.as_secs_f64() * 1e3,
        );
    }
    if !summary.is_empty() {
        let logs: f64 = summary.iter().map(|(_, ratio, _, _)| ratio.ln()).sum();
        println!(
            "geometric mean {:.2}x over {} units; goal: each at most 1.30x, the mean at most 1.15x",
            (logs / summary.len() as f64).exp(),
            summary.len()
        );
    }
}

/// What the Python example measured.
struct PythonRow {
    ratio: f64,
    compile: Duration,
    /// From a unit's assignment (module on disk, compiled) to its script's
    /// first line: loading the compiled module plus CPython's start.
    cached_start: Duration,
}

/// The files the Python row needs, or None after saying which is missing.
fn python_files() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let runtime = root
        .join("target/third-party")
        .join(cobble_core::runtime::PYTHON.file);
    let script = root.join("cli/templates/python/sir.py");
    let native = Command::new("python3").arg("--version").output();
    if !runtime.is_file() || !native.is_ok_and(|o| o.status.success()) {
        println!(
            "python: skipped ({} and a native python3 are needed; `cargo xtask setup` fetches the first)\n",
            runtime.display()
        );
        return None;
    }
    Some((runtime, script))
}

/// Runs `script` (placed at /input/<its name>) on the CPython module with
/// the runtime's variables; returns the run's time, its start (module to
/// first instruction) and its stdout.
async fn run_python(
    sandbox: &Sandbox,
    module: &PreparedModule,
    script: &Path,
    args: &[&str],
) -> (Duration, Duration, Vec<u8>) {
    let scratch = tempfile::tempdir().expect("temp dir");
    let (input, output) = (scratch.path().join("in"), scratch.path().join("out"));
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::create_dir_all(&output).expect("mkdir");
    std::fs::copy(script, input.join("script.py")).expect("placing the script");
    let args: Vec<String> = std::iter::once("/input/script.py")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let env = cobble_core::runtime::PYTHON.with_env(&[]);
    let report = run_in(sandbox, module, &args, &env, scratch.path()).await;
    assert_eq!(report.outcome, Ok(()), "python: {:?}", report.outcome);
    (report.elapsed, report.startup, report.stdout)
}

/// The Python example (`cobble init --python`'s sir.py over all 40 rates)
/// through the sandbox on the pinned CPython, against native CPython on the
/// same script, interleaved as the other rows; then the cached start: a
/// fresh sandbox loading the compiled runtime from its disk cache, as a
/// worker's first Python unit after a restart does, and one already in
/// memory, as every later unit, each up to an empty script's first line.
fn python_row(runtime: &tokio::runtime::Runtime, rounds: usize) -> Option<PythonRow> {
    let (wasm, script) = python_files()?;
    let bytes = std::fs::read(&wasm).expect("the runtime");
    let sandbox = Sandbox::with_settings(None, EngineSettings::default()).expect("engine");
    let started = Instant::now();
    let module = sandbox.prepare_bytes(&bytes).expect("compiles");
    let compile = started.elapsed();
    let native_run = || {
        let started = Instant::now();
        let output = Command::new("python3")
            .arg(&script)
            .args(["0", "40"])
            .env("PYTHONHASHSEED", "0")
            .output()
            .expect("python3 runs");
        assert!(output.status.success(), "native python3 failed");
        (started.elapsed(), output.stdout)
    };
    let (mut ratios, mut wasm_times, mut native_times) = (Vec::new(), Vec::new(), Vec::new());
    let mut identical = true;
    for _ in 0..rounds {
        let (before, native_out) = native_run();
        let (elapsed, _, out) =
            runtime.block_on(run_python(&sandbox, &module, &script, &["0", "40"]));
        let (after, _) = native_run();
        identical &= out == native_out;
        let native = (before + after) / 2;
        ratios.push(elapsed.as_secs_f64() / native.as_secs_f64());
        wasm_times.push(elapsed);
        native_times.push(native);
    }
    let (low, ratio, high) = spread(ratios);
    println!(
        "python sir.py 0 40 (CPython 3.12 for WASI vs native CPython {}): native {:.3} s, wasm {:.3} s, ratio {ratio:.2}x (rounds {low:.2}-{high:.2}); output {} native's",
        String::from_utf8_lossy(
            &Command::new("python3")
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim(),
        median(native_times).as_secs_f64(),
        median(wasm_times).as_secs_f64(),
        if identical {
            "bit-identical to"
        } else {
            "DIFFERS from"
        }
    );

    let empty = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(empty.path(), "").expect("write");
    let cache = tempfile::tempdir().expect("temp dir");
    let hash = cobble_core::BlobHash::of(&bytes);
    Sandbox::new(Some(cache.path().to_path_buf()))
        .expect("engine")
        .prepare(&hash, &wasm)
        .expect("compile into the disk cache");
    let (mut from_disk, mut loads, mut in_memory) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let fresh = Sandbox::new(Some(cache.path().to_path_buf())).expect("engine");
        let started = Instant::now();
        let cached = fresh
            .prepare(&hash, &wasm)
            .expect("load from the disk cache");
        let load = started.elapsed();
        let (elapsed, startup, _) =
            runtime.block_on(run_python(&fresh, &cached, empty.path(), &[]));
        from_disk.push(load + startup + elapsed);
        loads.push(load);
        // The next unit on the same worker: the module is in memory.
        let started = Instant::now();
        let again = fresh.prepare(&hash, &wasm).expect("in memory");
        let lookup = started.elapsed();
        let (elapsed, startup, _) = runtime.block_on(run_python(&fresh, &again, empty.path(), &[]));
        in_memory.push(lookup + startup + elapsed);
    }
    let cached_start = median(in_memory);
    println!(
        "  first compile {:.1} s; to an empty script's end: from the disk cache {:.1} ms (of which loading {:.1} ms), module in memory {:.1} ms (goal: under 50 ms)\n",
        compile.as_secs_f64(),
        median(from_disk).as_secs_f64() * 1e3,
        median(loads).as_secs_f64() * 1e3,
        cached_start.as_secs_f64() * 1e3,
    );
    Some(PythonRow {
        ratio,
        compile,
        cached_start,
    })
}
