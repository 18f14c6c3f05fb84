//! The output cap, enforced at write time through the `hooks` wrappers:
//! the hooks see the guest's memory (they are called from wasm), count the
//! bytes written to files under `/output`, and trap the write that would
//! cross `max_output_bytes` before any of its bytes reach the disk.
//! Polling `/output` let a fast writer put 74-427 MiB on disk against a
//! 64 MiB cap first. Writes also pace (`pacing`), as reads do.
//!
//! The count is an upper bound (a rewrite counts again); near the cap it
//! is replaced by the directory's real size, so rewriting a small file is
//! never taken for a large output. `/checkpoint`, rewritten by design,
//! keeps the periodic check.

use crate::UnitState;
use crate::hooks::{HOOKS, memory, read_u32};
use std::collections::HashSet;
use std::path::PathBuf;
use wasmtime::{Caller, Linker};

/// The `/output` preopen's descriptor: preopens are numbered from 3 in the
/// order `build_wasi` adds them, `/input` first.
const OUTPUT_PREOPEN: u32 = 4;

/// Per-run accounting of what a unit wrote under `/output`.
pub(crate) struct WriteCap {
    limit: u64,
    output_dir: PathBuf,
    /// Descriptors of files and directories under `/output`.
    tracked: HashSet<u32>,
    /// Bytes written so far, counted generously.
    counted: u64,
    /// Set when a write was refused: the run failed for its output size.
    pub(crate) exceeded: bool,
}

impl WriteCap {
    pub(crate) fn new(limit: u64, output_dir: PathBuf) -> WriteCap {
        WriteCap {
            limit,
            output_dir,
            tracked: HashSet::from([OUTPUT_PREOPEN]),
            counted: 0,
            exceeded: false,
        }
    }

    /// Whether `extra` more bytes fit; near the cap, measures for real.
    fn admit(&mut self, extra: u64) -> bool {
        if self.counted.saturating_add(extra) <= self.limit {
            self.counted += extra;
            return true;
        }
        self.counted = crate::dir_size(&self.output_dir);
        if self.counted.saturating_add(extra) <= self.limit {
            self.counted += extra;
            return true;
        }
        self.exceeded = true;
        false
    }

    fn refuse(&mut self) -> wasmtime::Error {
        self.exceeded = true;
        wasmtime::format_err!("unit wrote more than its {}-byte output limit", self.limit)
    }
}

/// Adds the output cap's hooks.
pub(crate) fn add_hooks(linker: &mut Linker<UnitState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        HOOKS,
        "fd_write",
        |mut caller: Caller<'_, UnitState>, (fd, iovs, count, _written): (i32, i32, i32, i32)| {
            Box::new(async move {
                check_write(&mut caller, fd, iovs, count)?;
                crate::pacing::pace(&mut caller).await;
                Ok(())
            })
        },
    )?;
    linker.func_wrap_async(
        HOOKS,
        "fd_pwrite",
        |mut caller: Caller<'_, UnitState>,
         (fd, iovs, count, offset, _written): (i32, i32, i32, i64, i32)| {
            Box::new(async move {
                check_write(&mut caller, fd, iovs, count)?;
                check_growth(&mut caller, fd, offset.max(0) as u64)?;
                crate::pacing::pace(&mut caller).await;
                Ok(())
            })
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "fd_filestat_set_size",
        |mut caller: Caller<'_, UnitState>, fd: i32, size: i64| {
            check_growth(&mut caller, fd, size.max(0) as u64)
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "fd_allocate",
        |mut caller: Caller<'_, UnitState>, fd: i32, offset: i64, length: i64| {
            let end = (offset.max(0) as u64).saturating_add(length.max(0) as u64);
            check_growth(&mut caller, fd, end)
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "path_open",
        |mut caller: Caller<'_, UnitState>,
         dir: i32,
         _dirflags: i32,
         _path: i32,
         _path_len: i32,
         _oflags: i32,
         _base: i64,
         _inheriting: i64,
         _fdflags: i32,
         opened_at: i32,
         errno: i32| {
            if errno == 0
                && caller.data().writes.tracked.contains(&(dir as u32))
                && let Some(opened) = read_u32(&mut caller, opened_at as u32)
            {
                caller.data_mut().writes.tracked.insert(opened);
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "fd_close",
        |mut caller: Caller<'_, UnitState>, fd: i32, errno: i32| {
            if errno == 0 && fd as u32 != OUTPUT_PREOPEN {
                caller.data_mut().writes.tracked.remove(&(fd as u32));
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        HOOKS,
        "fd_renumber",
        |mut caller: Caller<'_, UnitState>, from: i32, to: i32, errno: i32| {
            if errno == 0 {
                let tracked = &mut caller.data_mut().writes.tracked;
                if tracked.remove(&(from as u32)) {
                    tracked.insert(to as u32);
                } else {
                    tracked.remove(&(to as u32));
                }
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// Counts a write of the iovecs at `iovs` to `fd`, refusing it past the cap.
fn check_write(
    caller: &mut Caller<'_, UnitState>,
    fd: i32,
    iovs: i32,
    count: i32,
) -> wasmtime::Result<()> {
    if !caller.data().writes.tracked.contains(&(fd as u32)) {
        return Ok(());
    }
    // A malformed iovec list is left to WASI, which answers EFAULT.
    let Some(bytes) = iovec_total(caller, iovs as u32, count as u32) else {
        return Ok(());
    };
    let writes = &mut caller.data_mut().writes;
    if writes.admit(bytes) {
        Ok(())
    } else {
        Err(writes.refuse())
    }
}

/// Refuses making a file under `/output` `size` bytes long past the cap.
fn check_growth(caller: &mut Caller<'_, UnitState>, fd: i32, size: u64) -> wasmtime::Result<()> {
    let writes = &mut caller.data_mut().writes;
    if !writes.tracked.contains(&(fd as u32)) || size <= writes.limit {
        return Ok(());
    }
    Err(writes.refuse())
}

/// The total length of `count` iovecs (`{ buf: u32, len: u32 }`) at `at`.
fn iovec_total(caller: &mut Caller<'_, UnitState>, at: u32, count: u32) -> Option<u64> {
    let memory = memory(caller)?;
    let data = memory.data(&*caller);
    let mut total = 0u64;
    for index in 0..count as usize {
        let start = (at as usize).checked_add(index.checked_mul(8)?)?;
        let entry = data.get(start..start.checked_add(8)?)?;
        total += u64::from(u32::from_le_bytes(entry[4..8].try_into().ok()?));
    }
    Some(total)
}
