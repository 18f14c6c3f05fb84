//! The few operating-system calls the standard library does not offer:
//! process priority, process liveness, free disk space, local time and
//! handing freed memory back. Liveness and disk space go through `rustix`,
//! safely; the scheduler class, I/O priority, local time and `malloc_trim`
//! have no safe wrapper there, and are the only unsafe code in the worker.
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
            // Zeroed, then the one field: musl's sched_param has more
            // fields than glibc's (the sporadic server's), all zero here.
            let mut param: libc::sched_param = std::mem::zeroed();
            param.sched_priority = 0;
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

/// Hands the heap's free pages back to the OS: glibc keeps them for reuse
/// otherwise, and an idle worker should hold only what it uses. musl's
/// allocator (the static build volunteers install) returns them itself.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether a process with this id exists (for `cobble-worker status`).
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return false;
        };
        // Signal 0 only checks that the process exists; EPERM means it
        // does, under another user.
        match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            Err(error) => error == rustix::io::Errno::PERM,
        }
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
        let stats = rustix::fs::statvfs(path).ok()?;
        Some(stats.f_bavail.saturating_mul(stats.f_frsize))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_and_free_space_answer_for_this_process_and_disk() {
        assert!(process_alive(std::process::id()));
        // A pid past the kernel's maximum (2^22) never exists.
        assert!(!process_alive(1 << 30));
        assert!(!process_alive(u32::MAX), "not a pid at all");
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(free_disk_bytes(dir.path()).is_some_and(|free| free > 0));
        assert_eq!(free_disk_bytes(&dir.path().join("missing")), None);
    }
}
