//! Example work unit: counts the primes in `[start, end)`.
//!
//! Usage: `primes START END`. Prints one line, `primes in [START, END): N`.
//! Exact integer work, so replicas agree bit for bit.

use std::process::ExitCode;

/// Deterministic trial division by odd numbers: simple and plenty fast for
/// ranges of a few hundred thousand, and the same instruction stream on
/// every host.
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut divisor = 3;
    while divisor * divisor <= n {
        if n.is_multiple_of(divisor) {
            return false;
        }
        divisor += 2;
    }
    true
}

fn count_primes(start: u64, end: u64) -> u64 {
    (start..end).filter(|&n| is_prime(n)).count() as u64
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed: Option<(u64, u64)> = match args.as_slice() {
        [start, end] => start.parse().ok().zip(end.parse().ok()),
        _ => None,
    };
    let Some((start, end)) = parsed else {
        eprintln!("usage: primes START END (non-negative integers)");
        return ExitCode::from(2);
    };
    println!("primes in [{start}, {end}): {}", count_primes(start, end));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers: pi(100) = 25, pi(10^4) = 1229, pi(10^6) = 78498.
    #[test]
    fn known_prime_counts() {
        assert_eq!(count_primes(0, 100), 25);
        assert_eq!(count_primes(0, 10_000), 1_229);
        assert_eq!(count_primes(0, 1_000_000), 78_498);
        assert_eq!(count_primes(100, 200), 21);
    }
}
