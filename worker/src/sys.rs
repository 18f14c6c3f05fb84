//! The few operating-system calls the standard library does not offer:
//! process priority, process liveness, free disk space and local time. The only unsafe code in the worker.
#![allow(unsafe_code)]

/// Puts the calling thread, and every thread it creates afterwards, at the
/// lowest CPU and I/O priority the OS offers: nice 19, `SCHED_IDLE` and the
/// idle I/O class. Linux keeps these per thread, so call it before the
/// runtime starts its threads. Returns what could not be set.
pub fn lower_priority() -> Vec<String> {
    let mut failures = Vec::new();
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread with valid arguments.
        unsafe {
            if libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0 {
                failures.push(format!("nice 19: {}", std::io::Error::last_os_error()));
            }
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                failures.push(format!("SCHED_IDLE: {}", std::io::Error::last_os_error()));
            }
            // ioprio_set(IOPRIO_WHO_PROCESS, this thread, IOPRIO_CLASS_IDLE).
            const IOPRIO_WHO_PROCESS: libc::c_long = 1;
            const IOPRIO_CLASS_IDLE: libc::c_long = 3;
            const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
            if libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0,
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            ) != 0
            {
                failures.push(format!(
                    "idle I/O class: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        // SAFETY: a plain syscall with valid arguments.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
            failures.push(format!("nice 19: {}", std::io::Error::last_os_error()));
        }
    }
    failures
}

/// Whether a process with this id exists (for `cobble-worker status`).
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let result = unsafe { libc::kill(pid, 0) };
        result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Bytes free for this user on the file system holding `path`.
pub fn free_disk_bytes(path: &std::path::Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs only writes into the struct we own, and the path
        // is a valid NUL-terminated string.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
            return None;
        }
        // The field types differ between platforms; u64 holds them all.
        #[allow(clippy::useless_conversion)]
        let (blocks, block_size) = (u64::from(stats.f_bavail), u64::from(stats.f_frsize));
        Some(blocks.saturating_mul(block_size))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The local hour of the day, 0-24 with fractions, for `start_hour` and
/// `end_hour`. UTC where the local zone cannot be read.
pub fn local_hour() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let offset = utc_offset_s(now);
    (now + offset).rem_euclid(86_400) as f64 / 3600.0
}

#[cfg(unix)]
fn utc_offset_s(now: i64) -> i64 {
    let time: libc::time_t = now as libc::time_t;
    // SAFETY: localtime_r writes only into the tm we own; it is the
    // reentrant form, safe to call from any thread.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&time, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff as i64
    }
}

#[cfg(not(unix))]
fn utc_offset_s(_now: i64) -> i64 {
    0
}
