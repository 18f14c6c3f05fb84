//! File I/O on the unit's own thread, and a unit that still pauses at once.
//!
//! wasmtime-wasi normally hands every file operation to tokio's blocking
//! pool and waits for it: a thread hop and a copy per `read`, which made an
//! I/O-bound unit run at 2.5x its native time. The sandbox lets WASI block
//! the calling thread instead (`allow_blocking_current_thread`): a read
//! goes straight from the page cache into the unit's memory, as natively.
//!
//! Two things that the hop gave for free must then be kept by hand:
//! - A unit that does little but I/O spends almost no fuel, so fuel yields
//!   alone would leave it running long after a pause. The hooks on reads
//!   and writes yield to the runtime once [`IO_YIELD_EVERY`] has passed
//!   since the last such yield: the pause, the deadline and cancellation
//!   reach it as soon as they reach a computing unit.
//! - With blocking allowed, WASI answers a single relative-clock
//!   `poll_oneoff` (a plain `sleep`) with `std::thread::sleep`, which
//!   nothing could interrupt: a unit asking to sleep for years would hold
//!   its thread past every deadline. The hook sleeps on the runtime
//!   instead, where the supervisor can stop it, and leaves WASI a zero
//!   timeout.

use crate::UnitState;
use std::time::{Duration, Instant};
use wasmtime::{Caller, Linker};

/// At most this long between yields of a unit doing I/O.
pub(crate) const IO_YIELD_EVERY: Duration = Duration::from_millis(1);

/// Per-run: when the unit last yielded from an I/O hook.
pub(crate) struct Pace {
    last_yield: Instant,
}

impl Pace {
    pub(crate) fn new() -> Pace {
        Pace {
            last_yield: Instant::now(),
        }
    }
}

/// Yields to the runtime if the unit has not for [`IO_YIELD_EVERY`].
pub(crate) async fn pace(caller: &mut Caller<'_, UnitState>) {
    let now = Instant::now();
    if now.duration_since(caller.data().pace.last_yield) >= IO_YIELD_EVERY {
        caller.data_mut().pace.last_yield = now;
        tokio::task::yield_now().await;
    }
}

/// Where a subscription's fields are (WASI preview 1's `subscription`:
/// userdata u64, then the tagged union from offset 8, its clock variant's
/// `timeout` at 24 and `flags` at 40; 48 bytes in all).
const SUBSCRIPTION_SIZE: usize = 48;
const TAG_AT: usize = 8;
const TIMEOUT_AT: usize = 24;
const FLAGS_AT: usize = 40;
const TAG_CLOCK: u8 = 0;
const ABSTIME: u16 = 1;

/// Before `poll_oneoff`: a lone relative clock subscription is slept here,
/// on the runtime, and its timeout zeroed for WASI. Anything else (several
/// subscriptions, an absolute time, a bad pointer) is left to WASI, whose
/// answer to it does not block the thread.
pub(crate) async fn sleep_hook(caller: &mut Caller<'_, UnitState>, subs: u32, count: u32) {
    if count != 1 {
        return;
    }
    let Some(memory) = crate::hooks::memory(caller) else {
        return;
    };
    let start = subs as usize;
    let Some(sub) = start
        .checked_add(SUBSCRIPTION_SIZE)
        .and_then(|end| memory.data(&*caller).get(start..end))
    else {
        return;
    };
    let (Some(flags), Some(nanos)) = (
        crate::hooks::bytes_at(sub, FLAGS_AT).map(u16::from_le_bytes),
        crate::hooks::bytes_at(sub, TIMEOUT_AT).map(u64::from_le_bytes),
    ) else {
        return;
    };
    if sub.get(TAG_AT) != Some(&TAG_CLOCK) || flags & ABSTIME != 0 {
        return;
    }
    tokio::time::sleep(Duration::from_nanos(nanos)).await;
    if let Some(timeout) = memory
        .data_mut(&mut *caller)
        .get_mut(start + TIMEOUT_AT..start + TIMEOUT_AT + 8)
    {
        timeout.copy_from_slice(&0u64.to_le_bytes());
    }
    caller.data_mut().pace.last_yield = Instant::now();
}

/// The hooks on reads and sleeps; writes pace in `output_cap`'s hooks.
pub(crate) fn add_hooks(linker: &mut Linker<UnitState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        crate::hooks::HOOKS,
        "fd_read",
        pace_only::<(i32, i32, i32, i32)>,
    )?;
    linker.func_wrap_async(
        crate::hooks::HOOKS,
        "fd_pread",
        pace_only::<(i32, i32, i32, i64, i32)>,
    )?;
    linker.func_wrap_async(
        crate::hooks::HOOKS,
        "poll_oneoff",
        |mut caller: Caller<'_, UnitState>,
         (subs, _events, count, _stored): (i32, i32, i32, i32)| {
            Box::new(async move {
                sleep_hook(&mut caller, subs as u32, count as u32).await;
                wasmtime::Result::<()>::Ok(())
            })
        },
    )?;
    Ok(())
}

/// A hook that only paces, whatever the call's arguments.
fn pace_only<Args>(
    mut caller: Caller<'_, UnitState>,
    _args: Args,
) -> Box<dyn Future<Output = wasmtime::Result<()>> + Send + '_> {
    Box::new(async move {
        pace(&mut caller).await;
        Ok(())
    })
}
