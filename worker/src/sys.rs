//! The few operating-system calls the standard library does not offer:
//! process priority, process liveness, free disk space, local time and
//! handing memory back. Liveness and disk space go through `rustix`,
//! safely; the scheduler class, I/O priority, local time, `malloc_trim`
//! and `madvise` have no safe wrapper there, and are the only unsafe code
//! in the worker.
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

/// Lets go of the worker's own machine code: the pages of its executable
/// that compiling and running units brought in (Cranelift, wasmtime) stay
/// mapped, and counted as the worker's, long after the last unit. This
/// unmaps every page of the executable's read-only mappings that holds
/// nothing but the file's bytes; they stay in the page cache as any file
/// does, and code that runs again maps its page back with a minor fault.
/// Returns the resident bytes let go.
pub fn release_code_pages() -> u64 {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        // The running file, even if an upgrade replaced it on disk since.
        let Ok(exe) = std::fs::metadata("/proc/self/exe") else {
            return 0;
        };
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let mut released = 0;
        for mapping in clean_mappings_of(&smaps, exe.ino()) {
            // SAFETY: the range is a whole mapping of the executable,
            // private, not writable, and without a page of its own
            // (Anonymous: 0 kB): every page is the file's bytes. It cannot
            // have become writable since: nothing here mprotects the
            // executable, and the executable is never unmapped. Dropping
            // such pages loses nothing: touching one again reads it back
            // from the file.
            let dropped = unsafe {
                libc::madvise(
                    mapping.start as *mut libc::c_void,
                    mapping.len,
                    libc::MADV_DONTNEED,
                )
            };
            if dropped == 0 {
                released += mapping.resident;
            }
        }
        released
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// A mapping whose pages can be dropped and read again from its file.
#[derive(Debug, PartialEq)]
struct CleanMapping {
    start: usize,
    len: usize,
    resident: u64,
}

/// The mappings of file `inode` in `/proc/self/smaps` text that are
/// private, not writable, and hold no page of their own: the executable's
/// code and read-only data, but not the relocated part (RELRO), whose
/// pages were written at start.
fn clean_mappings_of(smaps: &str, inode: u64) -> Vec<CleanMapping> {
    let mut found = Vec::new();
    // The mapping being read: (start, len, resident bytes, anonymous
    // bytes); anonymous is unknown, so not zero, until its line is read.
    let mut current: Option<(usize, usize, u64, u64)> = None;
    let mut finish = |current: Option<(usize, usize, u64, u64)>| {
        if let Some((start, len, resident, 0)) = current {
            found.push(CleanMapping {
                start,
                len,
                resident,
            });
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(first), Some(second)) = (fields.next(), fields.next()) else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-') {
            // A mapping's header: range, perms, offset, device, inode, path.
            finish(current.take());
            let range = usize::from_str_radix(start, 16)
                .ok()
                .zip(usize::from_str_radix(end, 16).ok());
            let perms = second.as_bytes();
            let mapped_inode = fields.nth(2).and_then(|field| field.parse::<u64>().ok());
            if let Some((start, end)) = range
                && end > start
                && perms.len() == 4
                && perms[0] == b'r'
                && perms[1] == b'-'
                && perms[3] == b'p'
                && mapped_inode == Some(inode)
                && inode != 0
            {
                current = Some((start, end - start, 0, u64::MAX));
            }
            continue;
        }
        let Some((_, _, resident, anonymous)) = current.as_mut() else {
            continue;
        };
        let kib = second.parse::<u64>().ok().map(|kib| kib * 1024);
        match (first, kib) {
            ("Rss:", Some(bytes)) => *resident = bytes,
            ("Anonymous:", Some(bytes)) => *anonymous = bytes,
            _ => {}
        }
    }
    finish(current);
    found
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

    #[test]
    fn only_the_executables_clean_read_only_mappings_are_let_go() {
        let smaps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 42 /usr/bin/cobble-worker
Rss:                 512 kB
Anonymous:             0 kB
55d0a0100000-55d0a1000000 r-xp 00100000 fe:00 42 /usr/bin/cobble-worker
Size:              15360 kB
Rss:               12000 kB
Anonymous:             0 kB
55d0a1000000-55d0a1100000 r--p 01000000 fe:00 42 /usr/bin/cobble-worker
Rss:                 900 kB
Anonymous:           900 kB
55d0a1100000-55d0a1200000 rw-p 01100000 fe:00 42 /usr/bin/cobble-worker
Rss:                  64 kB
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 43 /usr/lib/libc.so.6
Rss:                 300 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 r-xs 00000000 fe:00 42 /usr/bin/cobble-worker
Rss:                 100 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 fe:00 42 /usr/bin/cobble-worker
Rss:                 100 kB
7f0000300000-7f0000200000 r-xp 00000000 fe:00 42 /usr/bin/cobble-worker
Rss:                 100 kB
Anonymous:             0 kB
zzzz-7f0000400000 r-xp 00000000 fe:00 42 /usr/bin/cobble-worker
Anonymous:             0 kB
7f0000400000-7f0000500000 r-xp 00000000 fe:00 0
Anonymous:             0 kB
garbage
VmFlags: rd ex mr mw me
";
        assert_eq!(
            clean_mappings_of(smaps, 42),
            vec![
                CleanMapping {
                    start: 0x55d0a0000000,
                    len: 0x100000,
                    resident: 512 * 1024,
                },
                CleanMapping {
                    start: 0x55d0a0100000,
                    len: 0xf00000,
                    resident: 12000 * 1024,
                },
            ],
            "RELRO (pages of its own), writable, shared, another file's, \
             unknown Anonymous, and malformed ranges are all left alone"
        );
        assert_eq!(clean_mappings_of(smaps, 0), vec![], "inode 0 is no file");
        assert_eq!(clean_mappings_of("", 42), vec![]);
    }

    /// Run on this test binary, with the other tests running code on other
    /// threads meanwhile: the pages go, and code keeps working.
    #[cfg(target_os = "linux")]
    #[test]
    fn letting_go_of_code_pages_shrinks_this_process_and_it_runs_on() {
        let file_backed = || {
            std::fs::read_to_string("/proc/self/status")
                .expect("status")
                .lines()
                .find_map(|line| line.strip_prefix("RssFile:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .expect("RssFile")
        };
        let before = file_backed();
        let released = release_code_pages();
        let after = file_backed();
        assert!(released > 0, "nothing let go");
        assert!(after < before, "RssFile {before} kB -> {after} kB");
        // Code and read-only data come back from the file, intact.
        let handle = std::thread::spawn(|| {
            let mut words: Vec<String> = (0..1000).map(|n| format!("{n:04}")).collect();
            words.sort_by(|a, b| b.cmp(a));
            words.concat().len()
        });
        assert_eq!(handle.join().expect("thread"), 4000);
        assert!(process_alive(std::process::id()));
    }
}
