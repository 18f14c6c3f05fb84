//! Virtual clocks: a unit never sees the host's time, so replicas on
//! different hosts observe the same clock readings and can agree bit for bit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Every reading advances the clock by one microsecond: time moves forward
/// (programs that time loops terminate) but depends only on how often the
/// unit looks, which is deterministic.
const STEP_NANOS: u64 = 1_000;
/// 2000-01-01T00:00:00Z: a fixed, obviously-synthetic start.
const WALL_START_NANOS: u64 = 946_684_800 * 1_000_000_000;

#[derive(Default)]
pub struct VirtualWallClock {
    readings: AtomicU64,
}

impl HostWallClock for VirtualWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(STEP_NANOS)
    }

    fn now(&self) -> Duration {
        let n = self.readings.fetch_add(1, Ordering::Relaxed);
        Duration::from_nanos(WALL_START_NANOS + n * STEP_NANOS)
    }
}

#[derive(Default)]
pub struct VirtualMonotonicClock {
    readings: AtomicU64,
}

impl HostMonotonicClock for VirtualMonotonicClock {
    fn resolution(&self) -> u64 {
        STEP_NANOS
    }

    fn now(&self) -> u64 {
        self.readings.fetch_add(1, Ordering::Relaxed) * STEP_NANOS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_advance_deterministically() {
        let wall = VirtualWallClock::default();
        let first = wall.now();
        assert_eq!(wall.now() - first, Duration::from_nanos(STEP_NANOS));
        let mono = VirtualMonotonicClock::default();
        assert_eq!((mono.now(), mono.now()), (0, STEP_NANOS));
    }
}
