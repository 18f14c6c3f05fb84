//! Credit: how much a valid result earns, and the recent average credit
//! (RAC) that decays with a 7-day half-life, as volunteers know from BOINC.

/// One credit per billion units of wasm fuel: roughly a second of one
/// modern core's work. Fuel counts executed wasm instructions, so credit
/// derives from deterministic work, the same on every host.
pub const FUEL_PER_CREDIT: f64 = 1e9;
pub const RAC_HALF_LIFE_MS: f64 = 7.0 * 24.0 * 3600.0 * 1000.0;
const DAY_MS: f64 = 24.0 * 3600.0 * 1000.0;

pub fn for_fuel(fuel: u64) -> f64 {
    for_fuel_f64(fuel as f64)
}

/// [`for_fuel`] of a sum of fuel that the database added up as a float.
pub fn for_fuel_f64(fuel: f64) -> f64 {
    fuel / FUEL_PER_CREDIT
}

/// RAC as of `now_ms`, decayed from its value at `rac_time_ms`.
pub fn decayed_rac(rac: f64, rac_time_ms: i64, now_ms: i64) -> f64 {
    let elapsed = (now_ms - rac_time_ms).max(0) as f64;
    rac * (-elapsed * std::f64::consts::LN_2 / RAC_HALF_LIFE_MS).exp()
}

/// The ordering key of a RAC: ln(rac) + ln 2 · t / half-life. At any one
/// moment every RAC has decayed by the same factor since its own time, so
/// keys order RACs as they are now, and a list sorted by RAC is an index
/// scan rather than a decay computed for every row.
pub fn rac_order_key(rac: f64, rac_time_ms: i64) -> f64 {
    if rac > 0.0 && rac.is_finite() {
        rac.ln() + std::f64::consts::LN_2 * rac_time_ms as f64 / RAC_HALF_LIFE_MS
    } else {
        NO_RAC_KEY
    }
}

/// The key of a RAC of zero: below every other.
pub const NO_RAC_KEY: f64 = -1e300;

/// RAC after `credit` is granted at `now_ms`. RAC estimates credit per day
/// with an exponential kernel: a steady stream of `c` credits a day
/// converges to a RAC of `c`.
pub fn rac_after_grant(rac: f64, rac_time_ms: i64, now_ms: i64, credit: f64) -> f64 {
    let half_life_days = RAC_HALF_LIFE_MS / DAY_MS;
    decayed_rac(rac, rac_time_ms, now_ms) + credit * std::f64::consts::LN_2 / half_life_days
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rac_halves_in_a_week() {
        let week = RAC_HALF_LIFE_MS as i64;
        assert!((decayed_rac(100.0, 0, week) - 50.0).abs() < 1e-9);
        assert_eq!(decayed_rac(100.0, 10, 10), 100.0);
    }

    #[test]
    fn steady_credit_converges_to_daily_rate() {
        let day = DAY_MS as i64;
        let mut rac = 0.0;
        for d in 1..=200 {
            rac = rac_after_grant(rac, (d - 1) * day, d * day, 50.0);
        }
        // Daily grants are a coarse sampling of the kernel: within 6%.
        assert!((rac - 50.0).abs() < 3.0, "rac {rac}");
    }

    #[test]
    fn rac_keys_order_racs_as_they_are_now() {
        let day = DAY_MS as i64;
        // 100 a week ago is 50 now: below 60 of today, above 40.
        let old = rac_order_key(100.0, 0);
        assert!(old < rac_order_key(60.0, 7 * day));
        assert!(old > rac_order_key(40.0, 7 * day));
        assert_eq!(rac_order_key(0.0, day), NO_RAC_KEY);
        assert!(NO_RAC_KEY < rac_order_key(1e-9, 0));
    }

    #[test]
    fn credit_follows_fuel() {
        assert_eq!(for_fuel(2_000_000_000), 2.0);
        assert_eq!(for_fuel(0), 0.0);
    }
}
