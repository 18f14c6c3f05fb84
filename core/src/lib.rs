//! Cobble's shared domain: content ids for blobs, signed work-unit manifests
//! and job specs. Everything here is plain functions over plain data, used by
//! the coordinator, the worker and the `cobble` CLI alike.

pub mod agreement;
pub mod auth;
pub mod blob;
pub mod capability;
pub mod chunk;
pub mod code_signing;
pub mod durable;
pub mod error;
pub mod manifest;
pub mod output;
pub mod rate;
pub mod runtime;
pub mod spec;

pub use blob::BlobHash;
pub use error::Error;

/// Fills a buffer from the operating system's secure random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS random source failing is not recoverable and never expected.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// A fresh random token as lowercase hex, for lease ids and keys.
pub fn random_token() -> String {
    hex::encode(random_bytes::<16>())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (the proleptic Gregorian
/// calendar, after Howard Hinnant's civil-from-days), so logs and pages
/// read without a calculator and without a date crate.
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod properties;
