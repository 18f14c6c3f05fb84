//! A token bucket: how long to wait before sending bytes under a bandwidth
//! limit. Pure: the caller passes the clock and does the waiting, so the
//! coordinator and the worker share the rule and tests need no sleeping.

use std::time::{Duration, Instant};

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
}
