//! When the worker may compute: the owner's use of the machine, power,
//! the time of day and the CPU throttle, judged against the computing
//! preferences.
//!
//! A thread of its own, at normal priority while the units run at the
//! lowest, samples the CPU load every [`SAMPLE_EVERY`] and flips the permit
//! every running unit watches (see `sandbox::UnitControl`). Two busy
//! samples in a row suspend, so detection takes 100-200 ms and a lone
//! spike does not.

use crate::prefs::Prefs;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the load is sampled while units are queued or running.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often when there is nothing to pause: keeps an idle worker idle.
/// The load over those seconds still counts toward `idle_time_to_run`.
const SAMPLE_EVERY_WHEN_EMPTY: Duration = Duration::from_secs(5);
/// Busy samples in a row that mean the owner is using the machine.
const BUSY_SAMPLES: u32 = 2;
/// Length of one throttle on/off cycle (BOINC uses one second too).
const THROTTLE_PERIOD: Duration = Duration::from_secs(1);
/// Battery and clock change slowly; read them at most this often.
const SLOW_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Why the worker is not computing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuspendReason {
    /// Other programs use more CPU than `suspend_cpu_usage`, or did within
    /// the last `idle_time_to_run` minutes.
    UserActive,
    OnBatteries,
    TimeOfDay,
    /// The off part of the `cpu_usage_limit` duty cycle.
    CpuThrottle,
    /// The volunteer pressed Pause on the local page.
    Paused,
}

impl std::fmt::Display for SuspendReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SuspendReason::UserActive => "computer is in use",
            SuspendReason::OnBatteries => "on batteries",
            SuspendReason::TimeOfDay => "outside the allowed hours",
            SuspendReason::CpuThrottle => "CPU throttling",
            SuspendReason::Paused => "paused by you",
        })
    }
}

/// What the rest of the worker sees of the activity monitor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Activity {
    /// None while units may compute.
    pub suspended: Option<SuspendReason>,
    /// Percent of all CPUs other programs used in the last sample.
    pub other_load: f64,
}

impl Activity {
    /// Whether the owner is at the machine (BOINC's "in use"), which picks
    /// the lower of the two memory caps.
    pub fn in_use(&self) -> bool {
        self.suspended == Some(SuspendReason::UserActive)
    }
}

/// Where the load of other programs comes from.
pub trait LoadSource: Send {
    /// Percent of all CPUs used by programs other than this worker since
    /// the previous call, if it can be measured.
    fn sample(&mut self) -> Option<f64>;
}

/// The real machine: all CPU time minus this process's (the units run
/// inside it).
///
/// On Linux it reads `/proc/stat` and `/proc/self/stat` directly: two small
/// files, a few tens of microseconds a sample, where sysinfo took about
/// 0.3 ms. That matters because the monitor samples ten times a second
/// while units are suspended, which is exactly when the worker should cost
/// its owner nothing. Elsewhere it asks sysinfo.
pub struct SystemLoad {
    source: Source,
}

enum Source {
    /// CPU ticks at the previous sample.
    Proc(Ticks),
    Sysinfo {
        system: Box<sysinfo::System>,
        pid: sysinfo::Pid,
        cpus: f64,
    },
    /// The OS gives no CPU statistics: the load counts as quiet and only
    /// the other preferences apply.
    Unmeasurable,
}

/// Cumulative CPU time, in the kernel's clock ticks, summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticks {
    total: u64,
    idle: u64,
    /// Used by this process, all its threads.
    own: u64,
}

impl Ticks {
    fn read() -> Option<Ticks> {
        let (total, idle) = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let own = parse_self_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        Some(Ticks { total, idle, own })
    }

    /// Percent of all CPUs used by other programs between `self` and `now`.
    fn load_until(self, now: Ticks) -> f64 {
        let total = now.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        let busy = total.saturating_sub(now.idle.saturating_sub(self.idle));
        let others = busy.saturating_sub(now.own.saturating_sub(self.own));
        (others as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
    }
}

/// (all ticks, idle ticks) from the aggregate `cpu` line of `/proc/stat`:
/// user nice system idle iowait irq softirq steal (guest time is already
/// counted in user). Waiting for I/O counts as idle.
fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((fields.iter().sum(), idle))
}

/// utime + stime from `/proc/self/stat`. The command name in parentheses
/// may hold spaces and parentheses itself, so fields count from the last
/// `)`: state is the first after it, utime the 12th, stime the 13th.
fn parse_self_stat(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

impl SystemLoad {
    pub fn new() -> Self {
        if let Some(ticks) = Ticks::read() {
            return SystemLoad {
                source: Source::Proc(ticks),
            };
        }
        let source = match sysinfo::System::new() {
            Ok(mut system) => {
                let pid = sysinfo::Pid::from_u32(std::process::id());
                refresh(&mut system, pid);
                let cpus = system.cpus().len().max(1) as f64;
                Source::Sysinfo {
                    system: Box::new(system),
                    pid,
                    cpus,
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot measure the CPU load; suspend_cpu_usage is ignored");
                Source::Unmeasurable
            }
        };
        SystemLoad { source }
    }
}

fn refresh(system: &mut sysinfo::System, pid: sysinfo::Pid) {
    system.refresh_cpu_usage();
    system.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&[pid]),
        false,
        sysinfo::ProcessRefreshKind::nothing().with_cpu(),
    );
}

impl Default for SystemLoad {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadSource for SystemLoad {
    fn sample(&mut self) -> Option<f64> {
        match &mut self.source {
            Source::Proc(previous) => {
                let now = Ticks::read()?;
                let load = previous.load_until(now);
                *previous = now;
                Some(load)
            }
            Source::Sysinfo { system, pid, cpus } => {
                refresh(system, *pid);
                let total = f64::from(system.global_cpu_usage());
                // Percent of one CPU, summed over this process's threads.
                let own = f64::from(system.process(*pid)?.cpu_usage()) / *cpus;
                Some((total - own).clamp(0.0, 100.0))
            }
            Source::Unmeasurable => None,
        }
    }
}

/// A load read from a file (a percentage; absent means 0), for tests that
/// must not depend on what else the machine is doing.
pub struct FileLoad(pub PathBuf);

impl LoadSource for FileLoad {
    fn sample(&mut self) -> Option<f64> {
        match std::fs::read_to_string(&self.0) {
            Ok(text) => text.trim().parse().ok(),
            Err(_) => Some(0.0),
        }
    }
}

/// Whether the machine runs on battery: a battery discharging and no mains
/// adapter online, per Linux's `/sys/class/power_supply`. A desktop (no
/// supply listed) never is.
pub fn on_batteries(power_supply: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(power_supply) else {
        return false;
    };
    let read = |dir: &Path, name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let mut discharging = false;
    for entry in entries.flatten() {
        let dir = entry.path();
        match read(&dir, "type").as_str() {
            "Mains" if read(&dir, "online") == "1" => return false,
            "Battery" if read(&dir, "status") == "Discharging" => discharging = true,
            _ => {}
        }
    }
    discharging
}

/// The rules, apart from the clock and the machine, so tests can drive them.
#[derive(Debug)]
pub struct Policy {
    prefs: Prefs,
    busy_streak: u32,
    /// Since when other programs' load has stayed low; None while busy.
    quiet_since: Option<Instant>,
}

impl Policy {
    pub fn new(prefs: Prefs) -> Self {
        Policy {
            prefs,
            busy_streak: 0,
            quiet_since: None,
        }
    }

    /// New preferences; what was observed so far (the idle streak) stays.
    pub fn set_prefs(&mut self, prefs: Prefs) {
        self.prefs = prefs;
    }

    /// Feeds one observation; returns why computing must stop, if it must.
    pub fn decide(
        &mut self,
        now: Instant,
        other_load: Option<f64>,
        on_batteries: bool,
        hour: f64,
    ) -> Option<SuspendReason> {
        let user_active = self.user_active(now, other_load);
        if on_batteries && !self.prefs.run_on_batteries {
            Some(SuspendReason::OnBatteries)
        } else if !self.prefs.in_time_window(hour) {
            Some(SuspendReason::TimeOfDay)
        } else if user_active {
            Some(SuspendReason::UserActive)
        } else {
            None
        }
    }

    fn user_active(&mut self, now: Instant, other_load: Option<f64>) -> bool {
        let threshold = self.prefs.suspend_cpu_usage;
        if threshold <= 0.0 {
            return false;
        }
        // An unmeasurable load counts as quiet: the other rules still hold.
        if other_load.unwrap_or(0.0) > threshold {
            self.busy_streak += 1;
        } else {
            self.busy_streak = 0;
        }
        if self.busy_streak >= BUSY_SAMPLES {
            self.quiet_since = None;
            return true;
        }
        let quiet_since = *self.quiet_since.get_or_insert(now);
        let wanted = Duration::from_secs_f64(self.prefs.idle_time_to_run * 60.0);
        now.duration_since(quiet_since) < wanted
    }

    /// Whether the throttle's duty cycle allows computing at `elapsed` since
    /// the monitor started, and how long until that changes.
    pub fn throttle(&self, elapsed: Duration) -> (bool, Duration) {
        let limit = self.prefs.cpu_usage_limit / 100.0;
        if limit >= 1.0 {
            return (true, Duration::MAX);
        }
        let period = THROTTLE_PERIOD.as_secs_f64();
        let phase = elapsed.as_secs_f64() % period;
        let on_for = period * limit;
        if phase < on_for {
            (true, Duration::from_secs_f64(on_for - phase))
        } else {
            (false, Duration::from_secs_f64(period - phase))
        }
    }
}

/// The volunteer's own switches (the local page's buttons), read by the
/// monitor and the work fetcher.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Pause: nothing computes until cleared.
    pub paused: Arc<AtomicBool>,
    /// Finish the units in hand and fetch no more until cleared.
    pub finishing: Arc<AtomicBool>,
    /// Preferences saved since, for the monitor to take up.
    new_prefs: Arc<std::sync::Mutex<Option<Prefs>>>,
}

impl Controls {
    /// Makes `prefs` the monitor's from its next sample on: when to
    /// compute (idle time, load, batteries, hours, throttle) changes at once.
    pub fn apply(&self, prefs: Prefs) {
        *self.new_prefs.lock().unwrap_or_else(|p| p.into_inner()) = Some(prefs);
    }

    fn take_prefs(&self) -> Option<Prefs> {
        self.new_prefs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Whether units are queued or running, so sampling is fast only when
/// there is something to pause. Work arriving wakes the monitor: it may be
/// in the middle of an idle pause of [`SAMPLE_EVERY_WHEN_EMPTY`], and the
/// owner's first use of the machine after that must not wait it out.
#[derive(Debug, Clone, Default)]
pub struct HasWork {
    flag: Arc<AtomicBool>,
    monitor: Arc<std::sync::OnceLock<std::thread::Thread>>,
}

impl HasWork {
    pub fn set(&self, has_work: bool) {
        let had = self.flag.swap(has_work, Ordering::Relaxed);
        if has_work
            && !had
            && let Some(monitor) = self.monitor.get()
        {
            monitor.unpark();
        }
    }

    pub fn get(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// The running monitor; dropping it stops the thread.
pub struct Monitor {
    pub permit: watch::Receiver<bool>,
    pub activity: watch::Receiver<Activity>,
    pub has_work: HasWork,
    /// The local page's Pause, Finish and preferences.
    pub controls: Controls,
    stop: Arc<AtomicBool>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Monitor {
    /// Starts the monitor thread. Call it before lowering this thread's
    /// priority: the monitor must keep running when the machine is busy.
    pub fn start(prefs: Prefs, mut load: Box<dyn LoadSource>, power_supply: PathBuf) -> Monitor {
        let mut policy = Policy::new(prefs);
        let started = Instant::now();
        let initial = policy.decide(
            started,
            load.sample(),
            on_batteries(&power_supply),
            crate::sys::local_hour(),
        );
        let (permit_tx, permit) = watch::channel(initial.is_none());
        let (activity_tx, activity) = watch::channel(Activity {
            suspended: initial,
            other_load: 0.0,
        });
        let has_work = HasWork::default();
        let controls = Controls::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (work_flag, stop_flag, switches) = (has_work.clone(), stop.clone(), controls.clone());
        let thread = std::thread::Builder::new()
            .name("cobble-activity".into())
            .spawn(move || {
                work_flag.monitor.set(std::thread::current()).ok();
                let mut slow_checked = Instant::now();
                let (mut batteries, mut hour) =
                    (on_batteries(&power_supply), crate::sys::local_hour());
                while !stop_flag.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now.duration_since(slow_checked) >= SLOW_CHECK_EVERY {
                        (batteries, hour) = (on_batteries(&power_supply), crate::sys::local_hour());
                        slow_checked = now;
                    }
                    if let Some(prefs) = switches.take_prefs() {
                        policy.set_prefs(prefs);
                    }
                    let other_load = load.sample();
                    let mut suspended = policy.decide(now, other_load, batteries, hour);
                    let (throttle_on, throttle_change) = policy.throttle(now - started);
                    if suspended.is_none() && !throttle_on {
                        suspended = Some(SuspendReason::CpuThrottle);
                    }
                    if switches.paused.load(Ordering::Relaxed) {
                        suspended = Some(SuspendReason::Paused);
                    }
                    permit_tx.send_if_modified(|may_run| {
                        let changed = *may_run != suspended.is_none();
                        *may_run = suspended.is_none();
                        changed
                    });
                    let activity = Activity {
                        suspended,
                        other_load: other_load.unwrap_or(0.0),
                    };
                    activity_tx.send_if_modified(|current| {
                        let changed = current.suspended != activity.suspended;
                        *current = activity;
                        changed
                    });
                    let period = if work_flag.get() {
                        SAMPLE_EVERY
                    } else {
                        SAMPLE_EVERY_WHEN_EMPTY
                    };
                    // Woken early when work arrives (`HasWork::set`).
                    std::thread::park_timeout(period.min(throttle_change));
                }
            });
        if let Err(error) = thread {
            tracing::error!(%error, "cannot start the activity monitor; computing without it");
        }
        Monitor {
            permit,
            activity,
            has_work,
            controls,
            stop,
        }
    }
}

#[cfg(test)]
#[path = "activity_tests.rs"]
mod tests;
