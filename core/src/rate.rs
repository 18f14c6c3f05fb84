//! A token bucket: how long to wait before sending bytes under a bandwidth
//! limit. Pure: the caller passes the clock and does the waiting, so the
//! coordinator and the worker share the rule and tests need no sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A shared bandwidth limit, or none: what the coordinator's serving and a
/// worker's uploads both pace themselves with.
#[derive(Debug, Default)]
pub struct Pacer(Option<Mutex<TokenBucket>>);

impl Pacer {
    /// Allows `bytes_per_sec` (0 or less: no limit).
    pub fn new(bytes_per_sec: f64) -> Self {
        Pacer(
            (bytes_per_sec > 0.0)
                .then(|| Mutex::new(TokenBucket::new(bytes_per_sec, Instant::now()))),
        )
    }

    /// How long to wait before sending `bytes`; zero without a limit.
    pub fn delay(&self, bytes: usize) -> Duration {
        self.0.as_ref().map_or(Duration::ZERO, |bucket| {
            bucket
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(bytes, Instant::now())
        })
    }
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    bytes_per_sec: f64,
    /// Bytes that may go now; negative when callers are queued behind.
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A bucket allowing `bytes_per_sec`, with bursts of up to one second.
    pub fn new(bytes_per_sec: f64, now: Instant) -> Self {
        TokenBucket {
            bytes_per_sec,
            tokens: bytes_per_sec,
            refilled: now,
        }
    }

    /// Takes `bytes`; returns how long the caller must wait before sending
    /// them. Callers that wait in turn share the rate fairly.
    pub fn take(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec).min(self.bytes_per_sec);
        self.refilled = now;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.bytes_per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_one_second_then_paces_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, start);
        assert_eq!(bucket.take(1000, start), Duration::ZERO);
        assert_eq!(bucket.take(500, start), Duration::from_millis(500));
        // A second caller queues behind the first.
        assert_eq!(bucket.take(500, start), Duration::from_secs(1));
        // Two seconds later everything is paid and the burst is back.
        let later = start + Duration::from_secs(3);
        assert_eq!(bucket.take(1000, later), Duration::ZERO);
    }

    #[test]
    fn a_pacer_without_a_limit_never_waits() {
        assert_eq!(Pacer::new(0.0).delay(1 << 30), Duration::ZERO);
        let limited = Pacer::new(1000.0);
        assert_eq!(limited.delay(1000), Duration::ZERO);
        assert!(limited.delay(1000) > Duration::ZERO);
    }
}
