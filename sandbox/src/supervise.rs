//! Watching a running unit from outside: pausing it, its wall-clock limit
//! and its output cap.
//!
//! A unit's future yields to the runtime every [`super::YIELD_EVERY_FUEL`]
//! units of fuel (about a millisecond of work), so a future that is simply
//! not polled is a unit that has stopped using the CPU. That costs nothing
//! in compiled code: fuel checks are already on every loop back-edge, and
//! yielding is what the out-of-fuel path does instead of trapping.

use super::UnitFailure;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Output-size checks walk `/output` and `/checkpoint`, twice a second: a
/// backstop (writes to `/output` are capped as they happen, `output_cap`)
/// and the cap on checkpoints.
const OUTPUT_CHECK_EVERY: Duration = Duration::from_millis(500);

/// The worker's handle on a unit while it runs.
#[derive(Debug, Clone)]
pub struct UnitControl {
    /// True while the unit may use the CPU. A unit paused here keeps its
    /// memory and resumes exactly where it stopped.
    pub permit: watch::Receiver<bool>,
    /// Linear-memory bytes the unit holds now, kept by the sandbox.
    pub memory_bytes: Arc<AtomicU64>,
}

impl UnitControl {
    /// A unit nobody pauses (`cobble-worker exec`, benchmarks, tests).
    pub fn unpaused() -> Self {
        let (sender, permit) = watch::channel(true);
        // A closed channel keeps its last value: always allowed to run.
        drop(sender);
        UnitControl {
            permit,
            memory_bytes: Arc::default(),
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }
}

/// What the supervisor checks while the unit runs.
pub(super) struct Watch {
    /// Running time allowed; time spent paused does not count.
    pub wall_time: Duration,
    pub max_output_bytes: u64,
    /// Directories whose size is capped at `max_output_bytes` each.
    pub capped_dirs: Vec<PathBuf>,
}

/// Polls `unit` while the permit allows, and stops it (by dropping it at its
/// next yield) when it runs past its time or writes past its cap.
pub(super) async fn supervise<F: Future>(
    unit: F,
    control: &UnitControl,
    watch: Watch,
) -> Result<F::Output, UnitFailure> {
    let mut permit = control.permit.clone();
    let mut remaining = watch.wall_time;
    let mut output_check = tokio::time::interval(OUTPUT_CHECK_EVERY);
    output_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once the sender is gone nobody can pause the unit any more.
    let mut pausable = true;
    tokio::pin!(unit);
    loop {
        if pausable && !*permit.borrow_and_update() {
            // Paused: the unit is not polled, so it uses no CPU at all.
            if permit.changed().await.is_err() {
                pausable = false;
            }
            continue;
        }
        let resumed = tokio::time::Instant::now();
        tokio::select! {
            output = &mut unit => return Ok(output),
            () = tokio::time::sleep(remaining) => {
                return Err(UnitFailure::WallTime(watch.wall_time));
            }
            _ = output_check.tick() => {
                if watch
                    .capped_dirs
                    .iter()
                    .any(|dir| super::dir_size(dir) > watch.max_output_bytes)
                {
                    return Err(UnitFailure::OutputTooLarge(watch.max_output_bytes));
                }
            }
            changed = permit.changed(), if pausable => {
                pausable = changed.is_ok();
            }
        }
        remaining = remaining.saturating_sub(resumed.elapsed());
    }
}
