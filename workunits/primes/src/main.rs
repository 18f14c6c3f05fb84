//! Example work unit: counts the primes in `[start, end)`.
//!
//! Usage: `primes START END`. Prints one line, `primes in [START, END): N`.
//! Exact integer work, so replicas agree bit for bit.

use std::process::ExitCode;

/// Deterministic trial division by odd numbers: simple, plenty fast for
/// ranges of a few hundred thousand, and the same instruction stream on
/// every host.
fn is_prime(n: u64) -> bool {
    // 32-bit division is several times faster than 64-bit. Natively, LLVM
    // checks operand sizes at run time and picks the short divide by
    // itself; Cranelift (wasm) does not, so the unit chooses explicitly.
    // This one line took the wasm/native ratio from 1.7x to about 1.0x.
    let limit = n.isqrt();
    match (u32::try_from(n), u32::try_from(limit)) {
        (Ok(small), Ok(limit)) => trial_division(small, limit),
        _ => trial_division(n, limit),
    }
}

/// Whether `n` has no odd divisor up to `limit`, its integer square root.
fn trial_division<T>(n: T, limit: T) -> bool
where
    T: Copy + PartialOrd + From<u8> + std::ops::Add<Output = T> + std::ops::Rem<Output = T>,
{
    let (zero, two, three) = (T::from(0), T::from(2), T::from(3));
    if n < two {
        return false;
    }
    if n % two == zero {
        return n == two;
    }
    let mut divisor = three;
    while divisor <= limit {
        if n % divisor == zero {
            return false;
        }
        divisor = divisor + two;
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

    /// Both widths agree where they meet, and beyond 32 bits.
    #[test]
    fn wide_and_narrow_division_agree() {
        let edge = u64::from(u32::MAX);
        assert_eq!(count_primes(edge - 1000, edge + 1000), 92);
        assert!(is_prime(4_294_967_311), "the first prime above 2^32");
        assert!(!is_prime(4_294_967_297), "2^32 + 1 = 641 * 6700417");
    }
}
