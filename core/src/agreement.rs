//! When two results agree, under the job's validator. Bitwise: identical
//! output digests. Numeric: the same output files, and stdout equal token
//! by token, except that numbers may differ within a tolerance. Tolerance
//! is for units whose floating-point results legitimately vary; Cobble's
//! own sandbox makes replicas of one module agree bit for bit.

use cobble_proto::v1::Validator;

/// How a job compares results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agreement {
    Bitwise,
    Numeric {
        rel_tolerance: f64,
        abs_tolerance: f64,
    },
    /// The researcher's validator module groups the outputs; results agree
    /// when it put them in one group.
    Module,
}

impl Agreement {
    pub fn of(validator: Option<&Validator>) -> Agreement {
        match validator {
            Some(v) if v.kind == "numeric" => Agreement::Numeric {
                rel_tolerance: v.rel_tolerance,
                abs_tolerance: v.abs_tolerance,
            },
            Some(v) if v.kind == "module" => Agreement::Module,
            _ => Agreement::Bitwise,
        }
    }
}

/// Whether two stdouts agree numerically: the same tokens, numbers within
/// `|a - b| <= max(abs, rel * max(|a|, |b|))`, everything else identical.
pub fn stdout_close(a: &[u8], b: &[u8], rel_tolerance: f64, abs_tolerance: f64) -> bool {
    let (Ok(a), Ok(b)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else {
        return a == b;
    };
    let (mut left, mut right) = (a.split_whitespace(), b.split_whitespace());
    loop {
        match (left.next(), right.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let (Ok(x), Ok(y)) = (x.parse::<f64>(), y.parse::<f64>()) else {
                    return false;
                };
                if !x.is_finite() || !y.is_finite() {
                    return false;
                }
                let allowed = abs_tolerance.max(rel_tolerance * x.abs().max(y.abs()));
                if (x - y).abs() > allowed {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(a: &str, b: &str, rel: f64, expected: bool) {
        assert_eq!(
            stdout_close(a.as_bytes(), b.as_bytes(), rel, 0.0),
            expected,
            "{a:?} vs {b:?}"
        );
    }

    #[test]
    fn numbers_within_tolerance_agree_and_words_must_match() {
        check("pi 3.14159265358979", "pi 3.14159265358980", 1e-12, true);
        check("pi 3.14159265358979", "pi 3.14159265358980", 1e-16, false);
        check("pi 3.1416", "tau 3.1416", 1e-3, false);
        check("1 2 3", "1 2", 1e-3, false);
        check("x 1e300", "x 1.0000000001e300", 1e-9, true);
        check("x NaN", "x NaN", 1e-9, true);
        check("x NaN", "x nan", 1e-9, false);
        check("x inf", "x 1e308", 1.0, false);
        assert!(stdout_close(b"v 0.0", b"v 0.000001", 0.0, 1e-5));
    }
}
