//! The units in the worker's hands ("tasks", as BOINC's manager calls
//! them): what state each is in, how much memory it holds, and the signals
//! other parts of the worker send it (abort, remove from memory, come back).
//!
//! The heartbeat reads it to report progress, the memory governor to keep
//! units under the RAM preferences, and the status writer to show the
//! owner what is going on. Slots own the units; this is only their table.

use cobble_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Where a unit is in its life on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Leased and verified, waiting for a free slot (the work buffer).
    Queued,
    /// Fetching its module and inputs.
    Downloading,
    /// In the sandbox (it may be paused by the activity monitor).
    Running,
    /// Removed from memory to respect the RAM preferences; it resumes
    /// from its checkpoint when memory allows.
    WaitingForMemory,
    /// Uploading outputs and reporting.
    Uploading,
}

/// One unit's entry.
#[derive(Debug)]
struct Task {
    /// Hex hashes of its module and inputs, which the cache must keep.
    blobs: Vec<String>,
    unit_id: i64,
    job_id: i64,
    deadline_ms: i64,
    state: TaskState,
    /// Where the unit's progress file is, once it has a directory.
    checkpoint_dir: Option<PathBuf>,
    /// Linear-memory bytes of the running instance (0 when not running).
    memory_bytes: Arc<AtomicU64>,
    /// Memory it held when it was removed, needed again to come back.
    memory_needed: u64,
    signals: Arc<TaskSignals>,
}

/// Wake-ups a unit's slot waits on.
#[derive(Debug, Default)]
pub struct TaskSignals {
    /// The coordinator no longer wants this result.
    pub abort: Notify,
    /// Free the unit's memory now; it resumes from its checkpoint.
    pub evict: Notify,
    /// Memory is available again for an evicted unit.
    pub readmit: Notify,
}

/// A snapshot of one task, for the heartbeat, the governor and `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub lease_id: String,
    pub unit_id: i64,
    pub job_id: i64,
    pub state: TaskState,
    /// Fraction done, as the unit last reported it.
    pub progress: Option<f64>,
    pub memory_bytes: u64,
    pub deadline_ms: i64,
}

/// The table, shared by every part of the worker.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    inner: Arc<Mutex<HashMap<String, Task>>>,
    /// Woken when a unit is added or removed, so the background duties can
    /// sleep while there is nothing in hand.
    changed: Arc<Notify>,
}

impl Tasks {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Task>> {
        // A panic while holding this lock leaves a table that is still
        // consistent (every update is a single assignment), so go on.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves at the next addition or removal after this call. Take it
    /// before looking at the table, so a change in between is not lost.
    pub fn changed(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut changed = Box::pin(self.changed.notified());
        // Registered now, not at the first poll.
        changed.as_mut().enable();
        changed
    }

    /// Adds a verified unit that has just been leased or recovered.
    pub fn add(&self, manifest: &pb::Manifest) {
        let blobs = cobble_core::manifest::blobs(manifest)
            .map(|blob| hex::encode(&blob.hash))
            .collect();
        self.lock().insert(
            manifest.lease_id.clone(),
            Task {
                blobs,
                unit_id: manifest.unit_id,
                job_id: manifest.job_id,
                deadline_ms: manifest.deadline_ms,
                state: TaskState::Queued,
                checkpoint_dir: None,
                memory_bytes: Arc::default(),
                memory_needed: 0,
                signals: Arc::default(),
            },
        );
        self.changed.notify_waiters();
    }

    pub fn remove(&self, lease_id: &str) {
        self.lock().remove(lease_id);
        self.changed.notify_waiters();
    }

    pub fn set_state(&self, lease_id: &str, state: TaskState) {
        if let Some(task) = self.lock().get_mut(lease_id) {
            task.state = state;
        }
    }

    pub fn set_checkpoint_dir(&self, lease_id: &str, dir: PathBuf) {
        if let Some(task) = self.lock().get_mut(lease_id) {
            task.checkpoint_dir = Some(dir);
        }
    }

    /// The counter the sandbox keeps current while the unit runs, and the
    /// unit's signals.
    pub fn handles(&self, lease_id: &str) -> Option<(Arc<AtomicU64>, Arc<TaskSignals>)> {
        self.lock()
            .get(lease_id)
            .map(|task| (task.memory_bytes.clone(), task.signals.clone()))
    }

    /// Marks a unit removed from memory: it needs what it held to return.
    pub fn evicted(&self, lease_id: &str) {
        if let Some(task) = self.lock().get_mut(lease_id) {
            task.memory_needed = task.memory_bytes.swap(0, Ordering::Relaxed);
            task.state = TaskState::WaitingForMemory;
        }
    }

    /// Tells the coordinator's abort to the unit's slot.
    pub fn abort(&self, lease_id: &str) {
        if let Some(task) = self.lock().get(lease_id) {
            task.signals.abort.notify_one();
        }
    }

    /// Asks the named unit to leave memory, or to come back.
    pub fn signal(&self, lease_id: &str, action: MemoryAction) {
        if let Some(task) = self.lock().get_mut(lease_id) {
            match action {
                MemoryAction::Evict => task.signals.evict.notify_one(),
                MemoryAction::Readmit => {
                    // Counted as running from now, so one pass of the governor
                    // does not readmit more than fits.
                    task.state = TaskState::Running;
                    task.memory_bytes
                        .store(task.memory_needed, Ordering::Relaxed);
                    task.signals.readmit.notify_one();
                }
            }
        }
    }

    /// Leases the coordinator should still consider ours: every unit not
    /// yet handed back.
    pub fn active_leases(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, task)| task.state != TaskState::Uploading)
            .map(|(lease, _)| lease.clone())
            .collect()
    }

    /// Blobs that units in hand still need (hex hashes).
    pub fn needed_blobs(&self) -> HashSet<String> {
        self.lock()
            .values()
            .flat_map(|task| task.blobs.iter().cloned())
            .collect()
    }

    /// Whether nothing is in hand, without copying the table.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn count(&self, state: TaskState) -> usize {
        self.lock().values().filter(|t| t.state == state).count()
    }

    /// Every task, ordered by unit id for a stable display.
    pub fn snapshot(&self) -> Vec<TaskView> {
        let mut views: Vec<TaskView> = self
            .lock()
            .iter()
            .map(|(lease_id, task)| TaskView {
                lease_id: lease_id.clone(),
                unit_id: task.unit_id,
                job_id: task.job_id,
                state: task.state,
                progress: task
                    .checkpoint_dir
                    .as_deref()
                    .and_then(cobble_sandbox::read_progress),
                memory_bytes: match task.state {
                    TaskState::WaitingForMemory => task.memory_needed,
                    _ => task.memory_bytes.load(Ordering::Relaxed),
                },
                deadline_ms: task.deadline_ms,
            })
            .collect();
        views.sort_by_key(|view| (view.job_id, view.unit_id));
        views
    }
}

/// What the memory governor asks of one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryAction {
    Evict,
    Readmit,
}

/// The governor's decision for one pass: with `limit` bytes allowed to
/// units, evict the largest running units while they exceed it; otherwise
/// bring back waiting units, in table order, while they fit. Only the
/// memory of units that are running counts, so a unit larger than the limit
/// on its own waits until its deadline passes.
pub fn govern_memory(tasks: &[TaskView], limit: u64) -> Vec<(String, MemoryAction)> {
    let mut running: Vec<&TaskView> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .collect();
    let mut used: u64 = running.iter().map(|t| t.memory_bytes).sum();
    let mut actions = Vec::new();
    if used > limit {
        running.sort_by_key(|t| std::cmp::Reverse(t.memory_bytes));
        for task in running {
            if used <= limit {
                break;
            }
            used -= task.memory_bytes;
            actions.push((task.lease_id.clone(), MemoryAction::Evict));
        }
        return actions;
    }
    for task in tasks
        .iter()
        .filter(|t| t.state == TaskState::WaitingForMemory)
    {
        if used + task.memory_bytes <= limit {
            used += task.memory_bytes;
            actions.push((task.lease_id.clone(), MemoryAction::Readmit));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(lease: &str, state: TaskState, memory_mib: u64) -> TaskView {
        TaskView {
            lease_id: lease.into(),
            unit_id: 0,
            job_id: 0,
            state,
            progress: None,
            memory_bytes: memory_mib << 20,
            deadline_ms: 0,
        }
    }

    fn check(tasks: &[TaskView], limit_mib: u64, expected: &[(&str, MemoryAction)]) {
        let actions = govern_memory(tasks, limit_mib << 20);
        let actions: Vec<(&str, MemoryAction)> =
            actions.iter().map(|(l, a)| (l.as_str(), *a)).collect();
        assert_eq!(actions, expected);
    }

    #[test]
    fn under_the_limit_nothing_moves() {
        use TaskState::*;
        check(
            &[task("a", Running, 100), task("b", Running, 100)],
            256,
            &[],
        );
        check(
            &[task("a", Queued, 900), task("b", Uploading, 900)],
            256,
            &[],
        );
    }

    #[test]
    fn over_the_limit_the_largest_units_leave_first() {
        use MemoryAction::Evict;
        use TaskState::*;
        let tasks = [
            task("small", Running, 50),
            task("big", Running, 300),
            task("mid", Running, 120),
        ];
        check(&tasks, 200, &[("big", Evict)]);
        check(&tasks, 100, &[("big", Evict), ("mid", Evict)]);
    }

    #[test]
    fn waiting_units_return_only_when_they_fit() {
        use MemoryAction::Readmit;
        use TaskState::*;
        let tasks = [
            task("running", Running, 100),
            task("first", WaitingForMemory, 200),
            task("second", WaitingForMemory, 50),
        ];
        check(&tasks, 250, &[("second", Readmit)]);
        check(&tasks, 400, &[("first", Readmit), ("second", Readmit)]);
    }
}
