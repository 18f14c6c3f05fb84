//! The Cobble work-unit SDK: a thin layer over plain WASI that a Rust
//! program built for `wasm32-wasip1` uses to read its inputs, write its
//! outputs, checkpoint its state and report progress. The protocol behind
//! it is files and directories only (see `workunits/README.md`), so units
//! in C or any WASI language speak it without this crate.
//!
//! A unit's result must not depend on whether it was resumed from a
//! checkpoint: replicas on other hosts may run straight through.

pub mod validator;

use std::io;
use std::path::{Path, PathBuf};

/// Where the unit's shared and per-unit input files are, read-only.
pub const INPUT_DIR: &str = "/input";
/// Where output files go; with stdout they form the unit's result.
pub const OUTPUT_DIR: &str = "/output";
/// Kept by the worker across suspension, restarts and crashes of this
/// unit on this host; empty when the unit starts fresh.
pub const CHECKPOINT_DIR: &str = "/checkpoint";
/// The unit's saved state inside [`CHECKPOINT_DIR`].
pub const STATE_FILE: &str = "state";
/// Fraction done, as decimal text, inside [`CHECKPOINT_DIR`].
pub const PROGRESS_FILE: &str = "progress";

/// The unit's arguments, without the program name.
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// The path of an input file by its name.
pub fn input_path(name: &str) -> PathBuf {
    Path::new(INPUT_DIR).join(name)
}

/// Reads a whole input file.
pub fn read_input(name: &str) -> io::Result<Vec<u8>> {
    std::fs::read(input_path(name))
}

/// Writes an output file, creating parent directories under `/output`.
pub fn write_output(name: &str, bytes: &[u8]) -> io::Result<()> {
    let path = Path::new(OUTPUT_DIR).join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes)
}

/// Saves state atomically: written beside, then renamed over the old
/// state, so an interruption leaves either the old state or the new one.
pub fn save_checkpoint(state: &[u8]) -> io::Result<()> {
    let dir = Path::new(CHECKPOINT_DIR);
    let partial = dir.join("state.partial");
    std::fs::write(&partial, state)?;
    std::fs::rename(&partial, dir.join(STATE_FILE))
}

/// The state saved by the last [`save_checkpoint`] of this unit on this
/// host, or None when starting fresh (or when the worker offers no
/// checkpoint directory, e.g. in a plain WASI runtime).
pub fn load_checkpoint() -> Option<Vec<u8>> {
    std::fs::read(Path::new(CHECKPOINT_DIR).join(STATE_FILE)).ok()
}

/// Reports the fraction of the unit done, clamped to `0.0..=1.0`. Cheap
/// enough to call every few seconds; failures are ignored because
/// progress is advisory.
pub fn report_progress(fraction: f64) {
    let fraction = if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    let dir = Path::new(CHECKPOINT_DIR);
    let partial = dir.join("progress.partial");
    if std::fs::write(&partial, format!("{fraction:.4}")).is_ok() {
        std::fs::rename(&partial, dir.join(PROGRESS_FILE)).ok();
    }
}

/// A loop counter that checkpoints itself: the common shape of a long
/// unit, which does steps `0..total` and can resume at any step.
///
/// ```no_run
/// let mut steps = cobble_sdk::Steps::resume(1_000_000, 50_000);
/// let mut sum = steps.state_or(0u64);
/// while let Some(i) = steps.next_with(&sum) {
///     sum += i;
/// }
/// ```
#[derive(Debug)]
pub struct Steps {
    next: u64,
    total: u64,
    every: u64,
    restored: Option<Vec<u8>>,
}

impl Steps {
    /// Resumes from the last checkpoint, if any; checkpoints every `every` steps.
    pub fn resume(total: u64, every: u64) -> Steps {
        let mut steps = Steps {
            next: 0,
            total,
            every: every.max(1),
            restored: None,
        };
        if let Some(saved) = load_checkpoint()
            && saved.len() >= 8
        {
            let (counter, state) = saved.split_at(8);
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(counter);
            steps.next = u64::from_le_bytes(bytes).min(total);
            steps.restored = Some(state.to_vec());
        }
        steps
    }

    /// The step to run next: where a resumed unit picks up.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Whether this run resumed from a checkpoint.
    pub fn resumed(&self) -> bool {
        self.restored.is_some()
    }

    /// The restored state, decoded, or `initial` when starting fresh.
    pub fn state_or<S: Checkpointable>(&mut self, initial: S) -> S {
        self.restored
            .take()
            .and_then(|bytes| S::decode(&bytes))
            .unwrap_or(initial)
    }

    /// Advances one step, saving `state` (the state *before* that step)
    /// and progress every `every` steps. None when all steps are done.
    pub fn next_with<S: Checkpointable>(&mut self, state: &S) -> Option<u64> {
        if self.next >= self.total {
            report_progress(1.0);
            return None;
        }
        if self.next > 0 && self.next.is_multiple_of(self.every) {
            let mut bytes = self.next.to_le_bytes().to_vec();
            bytes.extend(state.encode());
            save_checkpoint(&bytes).ok();
            report_progress(self.next as f64 / self.total as f64);
        }
        let step = self.next;
        self.next += 1;
        Some(step)
    }
}

/// State that can go into a checkpoint.
pub trait Checkpointable: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl Checkpointable for u64 {
    fn encode(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

impl Checkpointable for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}
