//! Example validator module, for results that legitimately differ: two runs
//! of the `montecarlo` unit with different random streams give different
//! estimates, and both are right if they agree within their statistical
//! error. This validator parses `pi P integral I samples N` and accepts two
//! outputs as agreeing when they used the same number of samples and both
//! estimates lie within `SIGMAS` standard errors of each other (the standard
//! error of a difference of two independent means is sqrt(2) times one's).
//!
//! A job uses it with:
//!   [validator]
//!   kind = "module"
//!   module = "montecarlo-validator.wasm"

use cobble_sdk::validator::{self, Candidate};

/// How many standard errors apart two honest estimates may be: at five,
/// an honest pair disagrees about once in 1.7 million comparisons.
const SIGMAS: f64 = 5.0;
/// Variance of 4 * [x^2 + y^2 < 1] for (x, y) uniform on the unit square.
const PI_VARIANCE: f64 = std::f64::consts::PI * (4.0 - std::f64::consts::PI);
/// Variance of exp(-x^2) for x uniform on [0, 1].
const INTEGRAL_VARIANCE: f64 = 0.040_254;

#[derive(Debug, PartialEq)]
struct Estimate {
    pi: f64,
    integral: f64,
    samples: u64,
}

fn parse(candidate: &Candidate) -> Option<Estimate> {
    let text = std::str::from_utf8(&candidate.stdout).ok()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let [_, pi, _, integral, _, samples] = words.as_slice() else {
        return None;
    };
    if words[0] != "pi" || words[2] != "integral" || words[4] != "samples" {
        return None;
    }
    let estimate = Estimate {
        pi: pi.parse().ok()?,
        integral: integral.parse().ok()?,
        samples: samples.parse().ok()?,
    };
    // Anything else is not an estimate this unit can produce.
    let plausible = estimate.samples > 0
        && estimate.pi.is_finite()
        && (0.0..=4.0).contains(&estimate.pi)
        && estimate.integral.is_finite()
        && (0.0..=1.0).contains(&estimate.integral);
    plausible.then_some(estimate)
}

fn agree(a: &Estimate, b: &Estimate) -> bool {
    let within = |x: f64, y: f64, variance: f64| {
        let standard_error = (2.0 * variance / a.samples as f64).sqrt();
        (x - y).abs() <= SIGMAS * standard_error
    };
    a.samples == b.samples
        && within(a.pi, b.pi, PI_VARIANCE)
        && within(a.integral, b.integral, INTEGRAL_VARIANCE)
}

fn main() -> std::process::ExitCode {
    match validator::run(parse, agree) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("montecarlo-validator: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(stdout: &str) -> Option<Estimate> {
        parse(&Candidate {
            stdout: stdout.as_bytes().to_vec(),
            files: Default::default(),
        })
    }

    #[test]
    fn parses_only_plausible_estimates() {
        assert_eq!(
            estimate("pi 3.14158e0 integral 7.468e-1 samples 1000\n"),
            Some(Estimate {
                pi: 3.14158,
                integral: 0.7468,
                samples: 1000
            })
        );
        for bad in [
            "",
            "pi 3.1 integral 0.7",
            "pi NaN integral 0.7 samples 10",
            "pi 9 integral 0.7 samples 10",
            "pi 3.1 integral 0.7 samples 0",
            "tau 3.1 integral 0.7 samples 10",
        ] {
            assert_eq!(estimate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn agreement_follows_the_standard_error() {
        let at = |pi: f64, integral: f64| Estimate {
            pi,
            integral,
            samples: 10_000_000,
        };
        // sqrt(2 * 2.697 / 1e7) = 7.3e-4 for pi: five of those is 3.7e-3.
        assert!(agree(&at(3.1417, 0.7468), &at(3.1440, 0.7469)));
        assert!(!agree(&at(3.1417, 0.7468), &at(3.1500, 0.7468)));
        assert!(!agree(&at(3.1417, 0.7468), &at(3.1417, 0.7500)));
        let fewer = Estimate {
            samples: 1000,
            ..at(3.1417, 0.7468)
        };
        assert!(!agree(&at(3.1417, 0.7468), &fewer));
    }
}
