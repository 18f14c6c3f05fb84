//! The wasmtime sandbox every work unit runs in.
//!
//! A unit sees only what invariant 6 allows: `/input` read-only, an empty
//! `/output`, its args and stdin, virtual clocks and a random source seeded
//! from its unit id. No network (WASI preview 1 has no sockets), no host
//! environment. Fuel bounds its deterministic work, a [`ResourceLimiter`]
//! its memory, and a supervisor (see `supervise`) its wall-clock time and
//! output, and pauses it on request; every way a unit can fail becomes a
//! [`UnitFailure`], never a crash of the worker.

mod clock;
pub mod error;
mod fuel_ledger;
mod hooks;
mod module_cache;
mod output_cap;
mod pacing;
mod supervise;

pub use crate::error::{Error, Result};
use clock::{VirtualMonotonicClock, VirtualWallClock};
use fuel_ledger::FuelLedger;
pub use module_cache::{ModuleCache, Origin, Wasm};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
pub use supervise::UnitControl;
use wasmtime::{
    CallHook, Config, Engine, InstancePre, Linker, OptLevel, ResourceLimiter, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// A running unit yields to the async runtime after this much fuel (about
/// a millisecond of work): how soon a pause, a cancellation or the
/// wall-clock limit reaches it.
pub const YIELD_EVERY_FUEL: u64 = 1_000_000;
/// How often the engine's epoch advances, when epoch interruption is on.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// stderr is for diagnostics; more than this is a runaway unit.
const STDERR_CAP: usize = 1 << 20;

/// Resource limits of one run, already converted from the manifest.
#[derive(Debug, Clone, Copy)]
pub struct UnitLimits {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub wall_time: Duration,
    pub max_output_bytes: u64,
}

impl UnitLimits {
    pub fn from_proto(limits: &cobble_proto::v1::Limits, wall_time: Duration) -> Self {
        UnitLimits {
            fuel: limits.fuel,
            memory_bytes: u64::from(limits.memory_mib) << 20,
            wall_time,
            max_output_bytes: limits.max_output_bytes,
        }
    }
}

/// Everything one run of a unit needs.
#[derive(Debug)]
pub struct Invocation<'a> {
    pub args: &'a [String],
    /// The job's signed environment variables; the host's never reach a unit.
    pub env: &'a [(String, String)],
    /// Host directory shown read-only as `/input`.
    pub input_dir: &'a Path,
    /// Empty host directory shown as `/output`.
    pub output_dir: &'a Path,
    /// Host directory shown as `/checkpoint`, kept across interruptions of
    /// this unit: the checkpoint and progress protocol (workunits/README.md).
    pub checkpoint_dir: Option<&'a Path>,
    pub stdin: Vec<u8>,
    /// Seeds the unit's random source and so must be the same on every replica.
    pub seed: [u8; 32],
    pub limits: UnitLimits,
    /// Pauses the unit and reads its memory use while it runs.
    pub control: UnitControl,
}

/// One file a unit wrote under `/output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Path relative to `/output`, with `/` separators.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// Why a unit did not produce a result. Each is a failed result for the
/// coordinator, never a fault of the worker.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitFailure {
    #[error("unit trapped: {0}")]
    Trap(String),
    #[error("unit ran out of fuel (budget {0})")]
    FuelExhausted(u64),
    #[error("unit tried to use more than its {0} MiB memory limit")]
    MemoryExceeded(u64),
    #[error("unit ran past its wall-clock limit of {0:?}")]
    WallTime(Duration),
    #[error("unit wrote more than its {0}-byte output limit")]
    OutputTooLarge(u64),
    #[error("unit exited with status {0}")]
    Exit(i32),
    #[error("unit left something other than a regular file in /output: {0}")]
    BadOutput(String),
}

impl UnitFailure {
    /// The protocol's name for this failure (`ClientError.kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            UnitFailure::Trap(_) => "trap",
            UnitFailure::FuelExhausted(_) => "fuel_exhausted",
            UnitFailure::MemoryExceeded(_) => "memory",
            UnitFailure::WallTime(_) => "deadline",
            UnitFailure::OutputTooLarge(_) => "output_too_large",
            UnitFailure::Exit(_) => "exit",
            UnitFailure::BadOutput(_) => "bad_output",
        }
    }
}

/// What a finished run left behind, successful or not.
#[derive(Debug)]
pub struct RunReport {
    pub outcome: Result<(), UnitFailure>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub files: Vec<OutputFile>,
    /// Fuel of this run plus, for a unit resumed from its checkpoint, the
    /// fuel earlier runs spent reaching that checkpoint (`fuel_ledger`).
    pub fuel_used: u64,
    /// From `run` being called to the unit's first instruction.
    pub startup: Duration,
    pub elapsed: Duration,
}

/// Per-store state: the WASI context, the memory cap, the output cap and
/// the I/O pacing.
pub struct UnitState {
    wasi: WasiP1Ctx,
    memory: MemoryCap,
    writes: output_cap::WriteCap,
    pace: pacing::Pace,
}

struct MemoryCap {
    max_bytes: u64,
    /// Shared with the worker, which frees memory under pressure by
    /// dropping the largest paused units.
    in_use: Arc<AtomicU64>,
    /// Set when a growth was refused, so the trap that follows (Rust's
    /// allocator aborts) is reported as a memory failure, not a generic trap.
    exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired as u64 <= self.max_bytes;
        if allowed {
            self.in_use.store(desired as u64, Ordering::Relaxed);
        } else {
            self.exceeded = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real program.
        Ok(desired <= 1_000_000)
    }

    // A unit is one module instance with one memory and a few tables:
    // nothing a WASI command needs more of, and each costs the host.
    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        16
    }
}

/// Advances the engine's epoch until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("cobble-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .ok();
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How the engine compiles and meters units. `Default` is what every
/// worker runs; the benchmark varies one setting at a time to price it.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    /// Fuel metering: the deterministic work measure behind credit, the
    /// runaway-unit limit, and the points where a unit yields (so it can be
    /// paused, cancelled or timed out). Off only to measure its cost.
    pub fuel: bool,
    /// Canonical NaNs, so floating-point results agree bit for bit across hosts.
    pub nan_canonicalization: bool,
    pub opt_level: OptLevel,
    /// Epoch checks on loop back-edges, a second way to make units yield.
    /// Fuel yields do the same job for free, so this is off; the benchmark
    /// turns it on to price it.
    pub epoch_interruption: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            fuel: true,
            nan_canonicalization: true,
            opt_level: OptLevel::Speed,
            epoch_interruption: false,
        }
    }
}

/// The engine, its WASI linker and the compiled-module cache, shared by
/// every unit a worker runs.
pub struct Sandbox {
    engine: Engine,
    settings: EngineSettings,
    linker: Linker<UnitState>,
    modules: ModuleCache,
    _ticker: Option<EpochTicker>,
}

/// A compiled module ready to instantiate.
pub type PreparedModule = InstancePre<UnitState>;

impl Sandbox {
    /// Builds the engine. `cache_dir` keeps compiled modules across restarts.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self> {
        Self::with_settings(cache_dir, EngineSettings::default())
    }

    pub fn with_settings(cache_dir: Option<PathBuf>, settings: EngineSettings) -> Result<Self> {
        let engine =
            Engine::new(&engine_config(&settings)).map_err(|e| Error::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut UnitState| {
            &mut state.wasi
        })
        .and_then(|()| hooks::add_hooks(&mut linker))
        .map_err(|e| Error::Engine(e.to_string()))?;
        let modules = ModuleCache::new(cache_dir, &engine)?;
        let ticker = settings
            .epoch_interruption
            .then(|| EpochTicker::start(&engine));
        Ok(Sandbox {
            engine,
            settings,
            linker,
            modules,
            _ticker: ticker,
        })
    }

    /// Returns the module named by `hash`, compiling `wasm` only if neither
    /// memory nor the disk cache has it. The caller has verified the hash.
    pub fn prepare(&self, hash: &cobble_core::BlobHash, wasm: &Path) -> Result<PreparedModule> {
        Ok(self.prepare_from(hash, wasm)?.0)
    }

    /// As `prepare`, saying whether the module was compiled, read from the
    /// disk cache or already in memory.
    pub fn prepare_from(
        &self,
        hash: &cobble_core::BlobHash,
        wasm: &Path,
    ) -> Result<(PreparedModule, Origin)> {
        self.modules
            .get_or_compile(&self.engine, &self.linker, hash, Wasm::File(wasm))
    }

    /// As `prepare_from`, for a module already read (`cobble-worker exec`
    /// hashes it first): read once, compiled only if not cached.
    pub fn prepare_read(
        &self,
        hash: &cobble_core::BlobHash,
        wasm: &[u8],
    ) -> Result<(PreparedModule, Origin)> {
        self.modules
            .get_or_compile(&self.engine, &self.linker, hash, Wasm::Bytes(wasm))
    }

    /// Compiles bytes that have no content id yet (`cobble-worker exec`).
    pub fn prepare_bytes(&self, wasm: &[u8]) -> Result<PreparedModule> {
        let module = module_cache::compile(&self.engine, wasm)?;
        module_cache::instantiate_pre(&self.linker, &module)
    }

    /// Runs a unit to completion or failure.
    pub async fn run(
        &self,
        module: &PreparedModule,
        invocation: Invocation<'_>,
    ) -> Result<RunReport> {
        let started = Instant::now();
        let limits = invocation.limits;
        // One byte past the cap: a full pipe then proves the unit overflowed,
        // while writing exactly the cap stays legal.
        let stdout_capacity =
            usize::try_from(limits.max_output_bytes.saturating_add(1)).unwrap_or(usize::MAX);
        let stdout = MemoryOutputPipe::new(stdout_capacity);
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        let wasi = build_wasi(&invocation, stdout.clone(), stderr.clone())?;
        let ledger = invocation
            .checkpoint_dir
            .filter(|_| self.settings.fuel)
            .map(FuelLedger::open);
        let carried = ledger.as_ref().map_or(0, FuelLedger::carried);
        // Earlier passes count against the budget: resuming is no way to
        // run past it.
        let budget = limits.fuel.saturating_sub(carried);
        let mut store = Store::new(
            &self.engine,
            UnitState {
                wasi,
                memory: MemoryCap {
                    max_bytes: limits.memory_bytes,
                    in_use: invocation.control.memory_bytes.clone(),
                    exceeded: false,
                },
                writes: output_cap::WriteCap::new(
                    limits.max_output_bytes,
                    invocation.output_dir.to_path_buf(),
                ),
                pace: pacing::Pace::new(),
            },
        );
        store.limiter(|state| &mut state.memory);
        if self.settings.fuel {
            store
                .set_fuel(budget)
                .and_then(|()| store.fuel_async_yield_interval(Some(YIELD_EVERY_FUEL)))
                .map_err(|e| Error::Engine(e.to_string()))?;
        }
        if let Some(mut ledger) = ledger {
            // Checkpoints are written through host calls, so the fuel spent
            // up to one is known exactly when that call returns.
            store.call_hook(move |store, hook| {
                if matches!(hook, CallHook::ReturningFromHost) {
                    ledger.observe(budget.saturating_sub(store.get_fuel()?));
                }
                Ok(())
            });
        }
        if self.settings.epoch_interruption {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        }
        // Checkpoints get the same cap as outputs: neither may fill the disk.
        let capped_dirs = std::iter::once(invocation.output_dir)
            .chain(invocation.checkpoint_dir)
            .map(Path::to_path_buf)
            .collect();
        let watch = supervise::Watch {
            wall_time: limits.wall_time,
            max_output_bytes: limits.max_output_bytes,
            capped_dirs,
        };

        let mut startup = Duration::ZERO;
        let unit = async {
            let instance = module.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            startup = started.elapsed();
            start.call_async(&mut store, ()).await
        };
        let supervised = supervise::supervise(unit, &invocation.control, watch).await;

        let fuel_used = match store.get_fuel() {
            Ok(left) => carried.saturating_add(budget.saturating_sub(left)),
            Err(_) => 0,
        };
        let memory_exceeded = store.data().memory.exceeded;
        let output_exceeded = store.data().writes.exceeded;
        drop(store);
        let stdout = stdout.contents().to_vec();
        let stderr = stderr.contents().to_vec();
        let mut outcome = match supervised {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) if output_exceeded => {
                Err(UnitFailure::OutputTooLarge(limits.max_output_bytes))
            }
            Ok(Err(error)) => classify(&error, &limits, memory_exceeded, stdout.len()),
            Err(stopped) => Err(stopped),
        };
        let files = match collect_outputs(invocation.output_dir) {
            Ok(files) => files,
            Err(failure) => {
                outcome = outcome.and(Err(failure));
                Vec::new()
            }
        };
        let total: u64 = stdout.len() as u64 + files.iter().map(|f| f.size).sum::<u64>();
        if outcome.is_ok() && total > limits.max_output_bytes {
            outcome = Err(UnitFailure::OutputTooLarge(limits.max_output_bytes));
        }
        Ok(RunReport {
            outcome,
            stdout,
            stderr,
            files,
            fuel_used,
            startup,
            elapsed: started.elapsed(),
        })
    }
}

/// Engine settings shared by every unit. Determinism comes first: replicas
/// on different hosts must agree bit for bit.
fn engine_config(settings: &EngineSettings) -> Config {
    let mut config = Config::new();
    config.consume_fuel(settings.fuel);
    config.epoch_interruption(settings.epoch_interruption);
    config.cranelift_nan_canonicalization(settings.nan_canonicalization);
    config.relaxed_simd_deterministic(true);
    config.cranelift_opt_level(settings.opt_level);
    // Untrusted code (ARCHITECTURE.md, "The sandbox's configuration"): one
    // 32-bit memory, so the limiter's cap is the unit's whole memory (with
    // several memories each would get the cap); an explicit stack limit,
    // so deep recursion traps with "call stack exhausted".
    config.wasm_multi_memory(false);
    config.wasm_memory64(false);
    config.max_wasm_stack(MAX_WASM_STACK);
    config
}

/// Stack a unit's wasm code may use (wasmtime's default, written down).
const MAX_WASM_STACK: usize = 512 << 10;

fn build_wasi(
    invocation: &Invocation<'_>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
) -> Result<WasiP1Ctx> {
    let mut builder = WasiCtxBuilder::new();
    // File I/O on the unit's own thread, straight into its memory: no hop
    // to the blocking pool and no copy per call (`pacing` keeps it
    // pausable).
    builder.allow_blocking_current_thread(true);
    // argv[0] is fixed so that replicas see identical arguments.
    builder.arg("unit");
    builder.args(invocation.args);
    builder.envs(invocation.env);
    builder.stdin(MemoryInputPipe::new(invocation.stdin.clone()));
    builder.stdout(stdout);
    builder.stderr(stderr);
    builder
        .preopened_dir(invocation.input_dir, "/input", FsPerms::ReadOnly)
        .map_err(|e| Error::Engine(format!("cannot map /input: {e}")))?;
    builder
        .preopened_dir(invocation.output_dir, "/output", FsPerms::ReadWrite)
        .map_err(|e| Error::Engine(format!("cannot map /output: {e}")))?;
    if let Some(checkpoint_dir) = invocation.checkpoint_dir {
        builder
            .preopened_dir(checkpoint_dir, "/checkpoint", FsPerms::ReadWrite)
            .map_err(|e| Error::Engine(format!("cannot map /checkpoint: {e}")))?;
    }
    let seed = invocation.seed;
    builder.wall_clock(VirtualWallClock::default());
    builder.monotonic_clock(VirtualMonotonicClock::default());
    builder.secure_random(rand::rngs::StdRng::from_seed(derive(&seed, "secure")));
    builder.insecure_random(rand::rngs::StdRng::from_seed(derive(&seed, "insecure")));
    let insecure_seed = derive(&seed, "insecure-seed");
    builder.insecure_random_seed(u128::from_le_bytes(
        insecure_seed[..16].try_into().unwrap_or_default(),
    ));
    Ok(builder.build_p1())
}

/// Independent streams from one seed, so no two random sources correlate.
fn derive(seed: &[u8; 32], purpose: &str) -> [u8; 32] {
    blake3::derive_key(&format!("cobble unit random {purpose}"), seed)
}

fn classify(
    error: &wasmtime::Error,
    limits: &UnitLimits,
    memory_exceeded: bool,
    stdout_len: usize,
) -> Result<(), UnitFailure> {
    // Checked first: a unit whose writes failed at the cap often exits
    // with an error status of its own, which would hide the real cause.
    if stdout_len as u64 > limits.max_output_bytes {
        return Err(UnitFailure::OutputTooLarge(limits.max_output_bytes));
    }
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return if exit.0 == 0 {
            Ok(())
        } else {
            Err(UnitFailure::Exit(exit.0))
        };
    }
    if memory_exceeded {
        return Err(UnitFailure::MemoryExceeded(limits.memory_bytes >> 20));
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        return Err(UnitFailure::FuelExhausted(limits.fuel));
    }
    // The trap code says what happened ("call stack exhausted"); the
    // error's own first line is only "error while executing at wasm
    // backtrace:", and the backtrace after it is noise here.
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return Err(UnitFailure::Trap(trap.to_string()));
    }
    // A host function's error: its own message, not the backtrace header.
    let message = error.root_cause().to_string();
    let first = message.lines().next().unwrap_or("unknown trap");
    Err(UnitFailure::Trap(first.to_string()))
}

/// Lists `/output` without following links: a symlink left there could
/// otherwise make the worker read and upload a host file.
fn collect_outputs(dir: &Path) -> Result<Vec<OutputFile>, UnitFailure> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let entries = std::fs::read_dir(dir.join(&relative))
            .map_err(|e| UnitFailure::BadOutput(format!("{}: {e}", relative.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| UnitFailure::BadOutput(e.to_string()))?;
            let name = relative.join(entry.file_name());
            let meta = std::fs::symlink_metadata(entry.path())
                .map_err(|e| UnitFailure::BadOutput(e.to_string()))?;
            if meta.is_dir() {
                pending.push(name);
            } else if meta.is_file() {
                let text = name
                    .to_str()
                    .ok_or_else(|| UnitFailure::BadOutput(format!("{name:?} is not UTF-8")))?
                    .replace('\\', "/");
                files.push(OutputFile {
                    name: text,
                    path: entry.path(),
                    size: meta.len(),
                });
            } else {
                return Err(UnitFailure::BadOutput(name.display().to_string()));
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The fraction done that a unit last reported in its checkpoint
/// directory, if it reported any.
pub fn read_progress(checkpoint_dir: &Path) -> Option<f64> {
    // A fraction is a few bytes of text; anything longer is not one.
    let bytes = read_unit_file(&checkpoint_dir.join("progress"), 64)?;
    let fraction: f64 = std::str::from_utf8(&bytes).ok()?.trim().parse().ok()?;
    fraction.is_finite().then(|| fraction.clamp(0.0, 1.0))
}

/// Reads at most `max` bytes of a file a unit wrote, while the unit may
/// still be running: never following a link (a unit can make its file a
/// symlink to any host file), never blocking on a FIFO, and only from a
/// regular file (not `/dev/zero` behind some other name). None otherwise.
pub fn read_unit_file(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let file = options.open(path).ok()?;
    // Checked on the opened file: the name may have been swapped since.
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= max).then_some(bytes)
}

/// Bytes under a directory, not following links.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                _ => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
            }
        }
    }
    total
}

#[cfg(test)]
mod tests;
