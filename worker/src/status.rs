//! What the running worker shows its owner: `<data-dir>/status.json`,
//! rewritten whenever something in it changes, and read back by
//! `cobble-worker status` (a separate process, so the file is the
//! interface; nothing is written while nothing changes).

use crate::activity::SuspendReason;
use crate::tasks::{TaskState, TaskView};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const FILE_NAME: &str = "status.json";

/// The whole picture, as of the last change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The worker process that wrote it; `status` checks it is alive.
    pub pid: u32,
    pub coordinator: String,
    pub host_id: i64,
    /// The port it serves peers on; None with peer-to-peer off.
    pub peer_port: Option<u16>,
    /// None while the worker may compute.
    pub suspended: Option<SuspendReason>,
    /// The volunteer asked it to finish the units in hand and fetch no
    /// more (the local page's Finish).
    #[serde(default)]
    pub finishing: bool,
    pub tasks: Vec<TaskView>,
    /// As of the last heartbeat; None until the first one answers.
    pub credit: Option<Credit>,
    /// Credit granted since 00:00 UTC: the total now less the total first
    /// seen that day (kept in `credit-day` in the data dir, so a restart
    /// does not reset it).
    #[serde(default)]
    pub credit_today: Option<f64>,
    pub transfers: TransferCounts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credit {
    pub total: f64,
    pub recent_average: f64,
    pub valid_results: u64,
}

/// Bytes moved since the worker started, by direction and counterpart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferCounts {
    pub downloaded_from_coordinator: u64,
    pub downloaded_from_peers: u64,
    pub uploaded_to_coordinator: u64,
    /// Bytes this host served to other workers (peer-to-peer sharing).
    pub served_to_peers: u64,
}

/// The live counters behind [`TransferCounts`], bumped by the transfers.
#[derive(Debug, Default)]
pub struct Transfers {
    pub downloaded_from_coordinator: AtomicU64,
    pub downloaded_from_peers: AtomicU64,
    pub uploaded_to_coordinator: AtomicU64,
    pub served_to_peers: AtomicU64,
}

impl Transfers {
    pub fn counts(&self) -> TransferCounts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransferCounts {
            downloaded_from_coordinator: read(&self.downloaded_from_coordinator),
            downloaded_from_peers: read(&self.downloaded_from_peers),
            uploaded_to_coordinator: read(&self.uploaded_to_coordinator),
            served_to_peers: read(&self.served_to_peers),
        }
    }
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Replaces the status file atomically (a reader never sees half of it).
/// Not fsynced: it is rewritten often and worthless after a crash.
pub fn write(data_dir: &Path, status: &Status) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    cobble_core::durable::replace(&path(data_dir), &text, cobble_core::durable::How::CACHE)
}

/// Reads the status file a worker left in `data_dir`.
pub fn read(data_dir: &Path) -> Result<Status, String> {
    let path = path(data_dir);
    let text = std::fs::read(&path).map_err(|error| {
        format!(
            "cannot read {}: {error}; has `cobble-worker run` been started with this --data-dir?",
            path.display()
        )
    })?;
    serde_json::from_slice(&text).map_err(|error| format!("{} is corrupt: {error}", path.display()))
}

/// The text `cobble-worker status` prints. `alive` says whether the
/// process that wrote `status` still runs; `now_ms` is for deadlines.
pub fn render(status: &Status, alive: bool, now_ms: i64) -> String {
    let mut out = String::new();
    let state = if !alive {
        "not running (this is what it last reported)".to_string()
    } else if let Some(reason) = status.suspended {
        format!("suspended: {reason}")
    } else if status.finishing && status.tasks.is_empty() {
        "finished: fetching no new work until you resume it on the local page".to_string()
    } else if status.finishing {
        "finishing the units in hand, then stopping (no new work)".to_string()
    } else if status.tasks.is_empty() {
        "running, no work on hand".to_string()
    } else {
        "computing".to_string()
    };
    let _ = writeln!(
        out,
        "cobble-worker (pid {}), host {} of {}: {state}",
        status.pid, status.host_id, status.coordinator
    );
    match &status.credit {
        Some(credit) => {
            let _ = writeln!(
                out,
                "credit:    {:.3} total, {:.3} recent average, {} valid results",
                credit.total, credit.recent_average, credit.valid_results
            );
        }
        None => out.push_str("credit:    not known yet (first heartbeat pending)\n"),
    }
    let t = &status.transfers;
    let _ = writeln!(
        out,
        "transfers: {} downloaded from the coordinator, {} from peers, {} uploaded; {} shared with peers",
        bytes(t.downloaded_from_coordinator),
        bytes(t.downloaded_from_peers),
        bytes(t.uploaded_to_coordinator),
        bytes(t.served_to_peers),
    );
    match status.peer_port {
        Some(port) => {
            let _ = writeln!(out, "sharing:   serving peers on port {port}");
        }
        None => out.push_str("sharing:   off (--no-peers)\n"),
    }
    if status.tasks.is_empty() {
        out.push_str("tasks:     none\n");
        return out;
    }
    out.push_str("tasks:\n");
    for task in &status.tasks {
        let state = match (task.state, status.suspended) {
            (TaskState::Running, Some(_)) => "suspended",
            (TaskState::Running, None) => "running",
            (TaskState::Queued, _) => "queued",
            (TaskState::Downloading, _) => "downloading",
            (TaskState::WaitingForMemory, _) => "waiting for memory",
            (TaskState::Uploading, _) => "uploading",
        };
        let left_s = (task.deadline_ms - now_ms).max(0) / 1000;
        let _ = writeln!(
            out,
            "  job {:>4} unit {:>6}  {:<18} {} {:>9}  deadline in {}m{:02}s",
            task.job_id,
            task.unit_id,
            state,
            progress_bar(task.progress),
            bytes(task.memory_bytes),
            left_s / 60,
            left_s % 60,
        );
    }
    out
}

/// `[#####---------------]  25.0%`, or blanks when the unit reports none.
fn progress_bar(fraction: Option<f64>) -> String {
    const WIDTH: usize = 20;
    match fraction {
        Some(fraction) => {
            let fraction = fraction.clamp(0.0, 1.0);
            let filled = (fraction * WIDTH as f64).round() as usize;
            format!(
                "[{}{}] {:>5.1}%",
                "#".repeat(filled),
                "-".repeat(WIDTH - filled),
                fraction * 100.0
            )
        }
        None => format!("[{}]     ?", " ".repeat(WIDTH)),
    }
}

fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64;
    let mut unit = "B";
    for name in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = name;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(tasks: Vec<TaskView>, suspended: Option<SuspendReason>) -> Status {
        Status {
            pid: 42,
            coordinator: "http://127.0.0.1:7710".into(),
            host_id: 3,
            peer_port: Some(7711),
            suspended,
            finishing: false,
            credit_today: None,
            tasks,
            credit: Some(Credit {
                total: 12.5,
                recent_average: 1.25,
                valid_results: 7,
            }),
            transfers: TransferCounts {
                downloaded_from_coordinator: 3 << 20,
                uploaded_to_coordinator: 2048,
                ..TransferCounts::default()
            },
        }
    }

    fn task(unit_id: i64, state: TaskState, progress: Option<f64>) -> TaskView {
        TaskView {
            lease_id: format!("lease-{unit_id}"),
            unit_id,
            job_id: 1,
            state,
            progress,
            memory_bytes: 17 << 20,
            deadline_ms: 600_000,
        }
    }

    fn check(status: &Status, alive: bool, expected: &[&str]) {
        let text = render(status, alive, 1_000);
        for line in expected {
            assert!(text.contains(line), "{text}\nshould contain {line:?}");
        }
    }

    #[test]
    fn renders_units_with_progress_bars_credit_and_transfers() {
        let running = status(
            vec![
                task(4, TaskState::Running, Some(0.5)),
                task(5, TaskState::Queued, None),
            ],
            None,
        );
        check(
            &running,
            true,
            &[
                "pid 42), host 3 of http://127.0.0.1:7710: computing",
                "credit:    12.500 total, 1.250 recent average, 7 valid results",
                "3.0 MiB downloaded from the coordinator, 0 B from peers, 2.0 KiB uploaded; 0 B shared",
                "sharing:   serving peers on port 7711",
                "unit      4  running            [##########----------]  50.0%  17.0 MiB  deadline in 9m59s",
                "unit      5  queued             [                    ]     ?",
            ],
        );
    }

    #[test]
    fn says_why_it_is_suspended_and_when_it_is_not_running() {
        let paused = status(
            vec![task(4, TaskState::Running, Some(0.25))],
            Some(SuspendReason::UserActive),
        );
        check(
            &paused,
            true,
            &["suspended: computer is in use", "unit      4  suspended"],
        );
        check(&paused, false, &["not running"]);
        check(
            &status(Vec::new(), None),
            true,
            &["no work on hand", "tasks:     none"],
        );
        let mut finishing = status(vec![task(4, TaskState::Running, Some(0.5))], None);
        finishing.finishing = true;
        check(&finishing, true, &["finishing the units in hand"]);
        finishing.tasks.clear();
        check(&finishing, true, &["finished: fetching no new work"]);
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(read(dir.path()).is_err_and(|e| e.contains("cobble-worker run")));
        let written = status(vec![task(1, TaskState::Uploading, Some(1.0))], None);
        write(dir.path(), &written).expect("write");
        assert_eq!(read(dir.path()), Ok(written));
        std::fs::write(path(dir.path()), "{").expect("write");
        assert!(read(dir.path()).is_err_and(|e| e.contains("corrupt")));
    }
}

/// The file that keeps the day's starting total: `DAY TOTAL`.
const CREDIT_DAY_FILE: &str = "credit-day";

/// Credit granted today (UTC day `day`) given the total `total` now: the
/// total at the day's first sight is kept in `data_dir`, and replaced when
/// the day changes. A missing or unreadable file starts the day now.
pub fn credit_today(data_dir: &Path, day: i64, total: f64) -> f64 {
    let path = data_dir.join(CREDIT_DAY_FILE);
    let kept = std::fs::read_to_string(&path).ok().and_then(|text| {
        let (d, t) = text.trim().split_once(' ')?;
        Some((d.parse::<i64>().ok()?, t.parse::<f64>().ok()?))
    });
    match kept {
        Some((kept_day, start)) if kept_day == day && start.is_finite() => (total - start).max(0.0),
        _ => {
            let line = format!("{day} {total}\n");
            if let Err(error) = cobble_core::durable::replace(
                &path,
                line.as_bytes(),
                cobble_core::durable::How::PUBLIC,
            ) {
                tracing::warn!(%error, "cannot keep the day's starting credit");
            }
            0.0
        }
    }
}

#[cfg(test)]
mod credit_day_tests {
    use super::*;

    #[test]
    fn today_counts_from_the_days_first_total_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(credit_today(dir.path(), 100, 40.0), 0.0, "the day starts");
        assert_eq!(credit_today(dir.path(), 100, 52.5), 12.5);
        // Read again as a restarted worker would.
        assert_eq!(credit_today(dir.path(), 100, 60.0), 20.0);
        assert_eq!(credit_today(dir.path(), 101, 61.0), 0.0, "a new day");
        assert_eq!(credit_today(dir.path(), 101, 64.0), 3.0);
        std::fs::write(dir.path().join(CREDIT_DAY_FILE), "garbage").expect("write");
        assert_eq!(
            credit_today(dir.path(), 101, 70.0),
            0.0,
            "unreadable: start again"
        );
    }
}
