//! The worker's duties beside the slots: one heartbeat for every unit in
//! hand (progress up, aborts and credit down), the memory governor that
//! keeps units under the RAM preferences, and the status file its owner
//! reads with `cobble-worker status`.

use super::{RunConfig, Worker};
use crate::activity::{Activity, Monitor};
use crate::status::{Credit, Status, TransferCounts};
use crate::tasks::{TaskState, govern_memory};
use cobble_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Heartbeat while units are in hand: progress and aborts travel this often.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Heartbeat with nothing in hand, only to keep the shown credit fresh.
const IDLE_HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

/// How often the memory governor looks at the units.
const GOVERN_EVERY: Duration = Duration::from_millis(500);
/// How often the status file is compared with the state (and rewritten if
/// it changed).
const STATUS_EVERY: Duration = Duration::from_secs(1);
const STATUS_EVERY_WHEN_IDLE: Duration = Duration::from_secs(30);
/// With nothing in hand this long, the engines and compiled modules are
/// dropped and freed memory handed back to the OS.
const RELEASE_WHEN_IDLE_FOR: Duration = Duration::from_secs(60);
/// Cached blobs announced to the tracker per heartbeat.
const MAX_ANNOUNCED: usize = 64;

/// Starts the background duties on `set`.
pub(super) fn spawn(
    worker: &Arc<Worker>,
    monitor: &Monitor,
    config: &RunConfig,
    host_id: i64,
    set: &mut JoinSet<()>,
) {
    let credit = Arc::new(Mutex::new(None));
    // The heartbeat tells the status writer when the credit changed.
    let credit_changed = Arc::new(Notify::new());
    set.spawn(heartbeat_loop(
        worker.clone(),
        credit.clone(),
        credit_changed.clone(),
    ));
    set.spawn(govern_loop(worker.clone(), monitor.activity.clone()));
    set.spawn(release_when_idle(worker.clone()));
    let status = StatusWriter {
        worker: worker.clone(),
        activity: monitor.activity.clone(),
        has_work: monitor.has_work.clone(),
        credit,
        credit_changed,
        data_dir: config.data_dir.clone(),
        coordinator: config.coordinator.clone(),
        host_id,
    };
    set.spawn(status.run());
}

async fn heartbeat_loop(
    worker: Arc<Worker>,
    credit: Arc<Mutex<Option<Credit>>>,
    credit_changed: Arc<Notify>,
) {
    // What the coordinator has acknowledged so far; each heartbeat sends
    // the difference, so a lost heartbeat's bytes go with the next one.
    let mut reported = TransferCounts::default();
    let mut last_sent: Option<Instant> = None;
    loop {
        // Work arriving or leaving changes when the next heartbeat is due.
        let mut changed = worker.tasks.changed();
        let leases = worker.tasks.active_leases();
        let counts = worker.transfers.counts();
        // Idle, the worker calls rarely; with units in hand, bytes moved or
        // results reported since the last heartbeat, it calls soon, so
        // progress, credit and the project's figures stay current.
        let credit_may_change = worker.reported_since_heartbeat.load(Ordering::Relaxed);
        let every = if leases.is_empty() && counts == reported && !credit_may_change {
            IDLE_HEARTBEAT_EVERY
        } else {
            HEARTBEAT_EVERY
        };
        if let Some(due) = last_sent.map(|at| at + every)
            && Instant::now() < due
        {
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = &mut changed => {}
            }
            continue;
        }
        last_sent = Some(Instant::now());
        worker
            .reported_since_heartbeat
            .store(false, Ordering::Relaxed);
        // Read only now: it reads every unit's progress file.
        let progress = worker
            .tasks
            .snapshot()
            .into_iter()
            .filter(|task| task.state != TaskState::Uploading)
            .filter_map(|task| {
                task.progress.map(|fraction| pb::LeaseProgress {
                    lease_id: task.lease_id,
                    fraction,
                })
            })
            .collect();
        let request = worker.authorized(pb::HeartbeatRequest {
            running_leases: leases,
            progress,
            transfers: Some(pb::TransferDelta {
                from_coordinator: counts.downloaded_from_coordinator
                    - reported.downloaded_from_coordinator,
                from_peers: counts.downloaded_from_peers - reported.downloaded_from_peers,
                served_to_peers: counts.served_to_peers - reported.served_to_peers,
            }),
            peer_port: worker.peer_port,
            peer_certificate: worker
                .sharing
                .as_ref()
                .map(|sharing| sharing.certificate().0.to_vec())
                .unwrap_or_default(),
            held_blobs: if worker.peer_port == 0 {
                Vec::new()
            } else {
                held_blobs(&worker.blob_dir)
            },
        });
        match worker.client().heartbeat(request).await {
            Ok(response) => {
                reported = counts;
                let response = response.into_inner();
                for lease in &response.abort_leases {
                    worker.tasks.abort(lease);
                }
                if let Some(standing) = response.credit {
                    let standing = Some(Credit {
                        total: standing.total_credit,
                        recent_average: standing.recent_average_credit,
                        valid_results: standing.valid_results,
                    });
                    let mut shown = credit.lock().unwrap_or_else(|p| p.into_inner());
                    if *shown != standing {
                        *shown = standing;
                        credit_changed.notify_one();
                    }
                }
            }
            Err(status) => tracing::debug!(%status, "heartbeat failed; trying again later"),
        }
    }
}

/// The blobs in the cache, most recently used first, for the tracker.
fn held_blobs(blob_dir: &Path) -> Vec<Vec<u8>> {
    let mut blobs = crate::cache::entries(blob_dir);
    blobs.sort_by_key(|blob| std::cmp::Reverse(blob.last_used));
    blobs
        .iter()
        .filter_map(|blob| cobble_core::BlobHash::from_hex(&blob.name).ok())
        .take(MAX_ANNOUNCED)
        .map(|hash| hash.0.to_vec())
        .collect()
}

/// Evicts units while they hold more than the RAM preference allows (the
/// lower `ram_max_used_busy_pct` while the owner uses the machine), and
/// lets them back when memory is free.
async fn govern_loop(worker: Arc<Worker>, activity: watch::Receiver<Activity>) {
    // Without a reading of the RAM size the RAM preferences cannot apply.
    let total_ram = sysinfo::System::new().map_or(0, |mut system| {
        system.refresh_memory();
        system.total_memory()
    });
    loop {
        let changed = worker.tasks.changed();
        let tasks = worker.tasks.snapshot();
        if tasks.is_empty() || total_ram == 0 {
            // Nothing to govern: sleep until units arrive.
            changed.await;
            continue;
        }
        tokio::time::sleep(GOVERN_EVERY).await;
        let percent = if activity.borrow().in_use() {
            worker.prefs.ram_max_used_busy_pct
        } else {
            worker.prefs.ram_max_used_idle_pct
        };
        let limit = (total_ram as f64 * percent / 100.0) as u64;
        for (lease, action) in govern_memory(&tasks, limit) {
            tracing::debug!(lease, ?action, limit, "memory governor");
            worker.tasks.signal(&lease, action);
        }
    }
}

/// An idle worker should cost its owner as little memory as the BOINC
/// client: once nothing has been in hand for [`RELEASE_WHEN_IDLE_FOR`],
/// the engines and their compiled modules go, the allocator returns freed
/// pages, and the code pages compiling and running units touched are
/// unmapped, once per idle spell. The next unit's start pays a few
/// milliseconds for it (`Engines`, and minor faults for the code).
async fn release_when_idle(worker: Arc<Worker>) {
    let mut idle_since: Option<Instant> = None;
    let mut released = false;
    loop {
        let changed = worker.tasks.changed();
        if !worker.tasks.is_empty() {
            (idle_since, released) = (None, false);
            changed.await;
            continue;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        let left = RELEASE_WHEN_IDLE_FOR.saturating_sub(since.elapsed());
        if !left.is_zero() {
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(left) => {}
            }
            continue;
        }
        if !released {
            released = true;
            let engines = worker.engines.release();
            crate::sys::return_freed_memory();
            let code = crate::sys::release_code_pages();
            tracing::info!(
                engines,
                code_pages_kib = code / 1024,
                "idle: let go of the engines, freed heap and code pages"
            );
        }
        changed.await;
    }
}

struct StatusWriter {
    worker: Arc<Worker>,
    activity: watch::Receiver<Activity>,
    /// Tells the monitor whether there is anything to pause.
    has_work: crate::activity::HasWork,
    credit: Arc<Mutex<Option<Credit>>>,
    credit_changed: Arc<Notify>,
    data_dir: PathBuf,
    coordinator: String,
    host_id: i64,
}

impl StatusWriter {
    async fn run(mut self) {
        let mut written: Option<Status> = None;
        let mut suspended = None;
        // False once the monitor is gone (then only the timer wakes us).
        let mut monitor_alive = true;
        loop {
            let now_suspended = self.activity.borrow_and_update().suspended;
            if now_suspended != suspended {
                match now_suspended {
                    Some(reason) => tracing::info!("suspending: {reason}"),
                    None => tracing::info!("resuming computation"),
                }
                suspended = now_suspended;
            }
            let mut changed = self.worker.tasks.changed();
            let tasks = self.worker.tasks.snapshot();
            let idle = tasks.is_empty();
            self.has_work.set(!idle);
            let credit = self
                .credit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let status = Status {
                pid: std::process::id(),
                coordinator: self.coordinator.clone(),
                host_id: self.host_id,
                peer_port: u16::try_from(self.worker.peer_port)
                    .ok()
                    .filter(|port| *port != 0),
                suspended,
                finishing: self.worker.finishing.load(Ordering::Relaxed),
                tasks,
                credit: credit.clone(),
                credit_today: credit.as_ref().map(|c| {
                    let day = cobble_core::now_ms().div_euclid(86_400_000);
                    crate::status::credit_today(&self.data_dir, day, c.total)
                }),
                transfers: self.worker.transfers.counts(),
            };
            if written.as_ref() != Some(&status) {
                if let Err(error) = crate::status::write(&self.data_dir, &status) {
                    tracing::warn!(%error, "cannot write the status file");
                }
                written = Some(status);
            }
            // Idle, only a change of activity or of the units, or the
            // occasional credit or sharing update, is worth a look.
            let every = if idle {
                STATUS_EVERY_WHEN_IDLE
            } else {
                STATUS_EVERY
            };
            tokio::select! {
                activity = self.activity.changed(), if monitor_alive => {
                    monitor_alive = activity.is_ok();
                }
                () = &mut changed => {}
                () = self.credit_changed.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
