//! Example work unit: floating-point Monte Carlo.
//!
//! `montecarlo SEED SAMPLES` draws SAMPLES points from a generator seeded
//! by SEED (the job passes the unit's `{index}`) and prints estimates of pi
//! (points inside the quarter circle) and of the integral of exp(-x^2) over
//! [0, 1] (0.746824132812427...), with their running sums at full precision.
//!
//! Inside Cobble every replica runs the same wasm with the same seed on
//! wasmtime's deterministic settings, so replicas agree bit for bit. `exp`
//! comes from libm, which IEEE 754 does not require to be correctly rounded:
//! a native build may differ from the wasm one in the last bits, which is
//! what the job spec's numeric validator allows for.

fn main() -> std::process::ExitCode {
    let args = cobble_sdk::args();
    let parsed = match args.as_slice() {
        [seed, samples] => seed.parse::<u64>().ok().zip(samples.parse::<u64>().ok()),
        _ => None,
    };
    let Some((seed, samples)) = parsed.filter(|(_, n)| *n > 0) else {
        eprintln!("usage: montecarlo SEED SAMPLES");
        return std::process::ExitCode::from(2);
    };
    let estimate = estimate(seed, samples);
    println!(
        "pi {:.17e} integral {:.17e} samples {samples}",
        estimate.pi, estimate.integral
    );
    std::process::ExitCode::SUCCESS
}

struct Estimate {
    pi: f64,
    integral: f64,
}

/// xoshiro256** seeded through splitmix64: a good generator in a few lines.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits: exact, no rounding.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn estimate(seed: u64, samples: u64) -> Estimate {
    let mut rng = Rng::new(seed);
    let (mut inside, mut sum) = (0u64, 0.0f64);
    for _ in 0..samples {
        let (x, y) = (rng.unit(), rng.unit());
        if x * x + y * y < 1.0 {
            inside += 1;
        }
        sum += (-x * x).exp();
    }
    Estimate {
        pi: 4.0 * inside as f64 / samples as f64,
        integral: sum / samples as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers, to the accuracy a million samples give.
    #[test]
    fn estimates_converge_to_known_values() {
        let e = estimate(7, 1_000_000);
        assert!((e.pi - std::f64::consts::PI).abs() < 0.01, "{}", e.pi);
        assert!(
            (e.integral - 0.746_824_132_812_427).abs() < 0.001,
            "{}",
            e.integral
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let (a, b) = (estimate(3, 1000), estimate(3, 1000));
        assert_eq!(
            (a.pi.to_bits(), a.integral.to_bits()),
            (b.pi.to_bits(), b.integral.to_bits())
        );
        assert_ne!(estimate(4, 1000).integral.to_bits(), a.integral.to_bits());
    }
}
