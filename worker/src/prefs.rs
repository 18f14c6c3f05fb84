//! Computing preferences: when the worker may compute and how much of the
//! machine it may use. BOINC's names and units, which volunteers know, in
//! `<data-dir>/prefs.toml`; each overridable by `--pref KEY=VALUE`. The
//! defaults are ones a volunteer never has to touch.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file name inside the data dir.
pub const FILE_NAME: &str = "prefs.toml";

/// Every preference and what it means, in the order a form shows them.
pub const FIELDS: &[(&str, &str)] = &[
    (
        "idle_time_to_run",
        "minutes the computer must be idle before computing starts",
    ),
    (
        "suspend_cpu_usage",
        "% of CPU other programs may use before computing stops (0: never stop for load)",
    ),
    ("cpu_usage_limit", "% of CPU time to compute (duty cycle)"),
    ("max_ncpus_pct", "% of the CPUs to compute on"),
    (
        "ram_max_used_busy_pct",
        "% of memory units may use while the computer is in use",
    ),
    (
        "ram_max_used_idle_pct",
        "% of memory units may use while it is idle",
    ),
    (
        "run_on_batteries",
        "compute on battery power (true or false)",
    ),
    (
        "start_hour",
        "hour computing may start (0-24; equal to the end: any time)",
    ),
    ("end_hour", "hour computing must stop"),
    ("disk_max_used_gb", "GB of disk the cache may use"),
    (
        "work_buf_min_units",
        "fetch more work when fewer units than this wait",
    ),
    ("work_buf_max_units", "units to keep waiting"),
    (
        "max_bytes_sec_up",
        "upload bytes per second for other volunteers (0: no limit)",
    ),
    ("peer_upload_slots", "volunteers served at once"),
    (
        "serve_peers_while_in_use",
        "share inputs while you use the computer (true or false)",
    ),
];

/// A `--pref` or form value as TOML (50, 0.5, true); anything else as text,
/// so the type error names the key.
fn scalar(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table() && !v.is_array())
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prefs {
    /// Minutes the machine must have been idle (non-Cobble CPU load below
    /// `suspend_cpu_usage`) before computing starts; fractions allowed.
    pub idle_time_to_run: f64,
    /// Percent of all CPUs that other programs may use before the worker
    /// suspends; 0 means never suspend because of load.
    pub suspend_cpu_usage: f64,
    /// Percent of CPU time the worker may use, by duty cycle.
    pub cpu_usage_limit: f64,
    /// Percent of the machine's CPUs to compute on (at least one).
    pub max_ncpus_pct: f64,
    /// Percent of RAM units may use while the machine is in use.
    pub ram_max_used_busy_pct: f64,
    /// Percent of RAM units may use while the machine is idle.
    pub ram_max_used_idle_pct: f64,
    /// Whether to compute on battery power.
    pub run_on_batteries: bool,
    /// Hour of the day (0-24, fractions allowed) computing may start; equal
    /// to `end_hour` means any time. A window may wrap past midnight.
    pub start_hour: f64,
    pub end_hour: f64,
    /// Gigabytes the worker's blob cache may take on disk; it also keeps
    /// to a tenth of the free disk, and at least 50 MB.
    pub disk_max_used_gb: f64,
    /// Fetch more work when fewer units than this wait for a slot.
    pub work_buf_min_units: u32,
    /// Units to keep waiting for a slot when fetching, so that a slot never
    /// waits on the network.
    pub work_buf_max_units: u32,
    /// Upload bandwidth for serving peers, bytes per second; 0: no limit.
    pub max_bytes_sec_up: f64,
    /// Peers served at once; more are sent to other peers.
    pub peer_upload_slots: u32,
    /// Whether to serve peers while the owner uses the machine.
    pub serve_peers_while_in_use: bool,
}

impl Default for Prefs {
    fn default() -> Self {
        Prefs {
            idle_time_to_run: 3.0,
            suspend_cpu_usage: 25.0,
            cpu_usage_limit: 100.0,
            max_ncpus_pct: 100.0,
            ram_max_used_busy_pct: 50.0,
            ram_max_used_idle_pct: 90.0,
            run_on_batteries: false,
            start_hour: 0.0,
            end_hour: 0.0,
            disk_max_used_gb: 10.0,
            work_buf_min_units: 1,
            work_buf_max_units: 2,
            max_bytes_sec_up: 0.0,
            peer_upload_slots: 4,
            serve_peers_while_in_use: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrefsError {
    #[error("{source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("--pref {0:?}: expected KEY=VALUE, e.g. --pref suspend_cpu_usage=50")]
    BadOverride(String),
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl Prefs {
    /// Reads `<data_dir>/prefs.toml` (defaults if absent), applies the
    /// overrides and checks every value.
    pub fn load(data_dir: &Path, overrides: &[String]) -> Result<Prefs, PrefsError> {
        let path = data_dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(PrefsError::Read { path, error }),
        };
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses preferences text; `source_name` names it in error messages.
    pub fn parse(text: &str, source_name: &str, overrides: &[String]) -> Result<Prefs, PrefsError> {
        let invalid = |source_name: &str, message: String| PrefsError::Invalid {
            source_name: source_name.to_string(),
            message: message.trim_end().to_string(),
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| invalid(source_name, e.to_string()))?;
        for entry in overrides {
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| PrefsError::BadOverride(entry.clone()))?;
            table.insert(key.trim().to_string(), scalar(value));
        }
        let source = if overrides.is_empty() {
            source_name.to_string()
        } else {
            format!("{source_name} with --pref overrides")
        };
        Self::from_table(table, &source)
    }

    /// Preferences from a form's fields (the local page), each value read
    /// as a `--pref` value is, and checked as the file is, with the same
    /// messages; `source_name` names the form in them.
    pub fn from_fields(
        fields: &[(String, String)],
        source_name: &str,
    ) -> Result<Prefs, PrefsError> {
        let table = fields
            .iter()
            .map(|(key, value)| (key.trim().to_string(), scalar(value.trim())))
            .collect();
        Self::from_table(table, source_name)
    }

    fn from_table(table: toml::Table, source_name: &str) -> Result<Prefs, PrefsError> {
        let invalid = |message: String| PrefsError::Invalid {
            source_name: source_name.to_string(),
            message: message.trim_end().to_string(),
        };
        let prefs: Prefs = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        prefs.check().map_err(invalid)?;
        Ok(prefs)
    }

    /// Every preference's name and value as text, in [`FIELDS`] order.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        let table = toml::Value::try_from(self)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default();
        FIELDS
            .iter()
            .map(|(name, _)| {
                let value = match table.get(*name) {
                    Some(toml::Value::Float(f)) if f.fract() == 0.0 && f.abs() < 1e15 => {
                        format!("{}", *f as i64)
                    }
                    Some(value) => value.to_string(),
                    None => String::new(),
                };
                (*name, value)
            })
            .collect()
    }

    fn check(&self) -> Result<(), String> {
        let percent = |name: &str, value: f64, min: f64| {
            if value.is_finite() && (min..=100.0).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{name} = {value}: must be a percentage from {min} to 100"
                ))
            }
        };
        percent("suspend_cpu_usage", self.suspend_cpu_usage, 0.0)?;
        percent("cpu_usage_limit", self.cpu_usage_limit, 1.0)?;
        percent("max_ncpus_pct", self.max_ncpus_pct, 1.0)?;
        percent("ram_max_used_busy_pct", self.ram_max_used_busy_pct, 0.0)?;
        percent("ram_max_used_idle_pct", self.ram_max_used_idle_pct, 0.0)?;
        if !self.idle_time_to_run.is_finite() || self.idle_time_to_run < 0.0 {
            return Err(format!(
                "idle_time_to_run = {}: must be a number of minutes, 0 or more",
                self.idle_time_to_run
            ));
        }
        for (name, hour) in [("start_hour", self.start_hour), ("end_hour", self.end_hour)] {
            if !hour.is_finite() || !(0.0..=24.0).contains(&hour) {
                return Err(format!("{name} = {hour}: must be an hour from 0 to 24"));
            }
        }
        if !self.disk_max_used_gb.is_finite() || self.disk_max_used_gb < 0.05 {
            return Err(format!(
                "disk_max_used_gb = {}: must be at least 0.05 (50 MB)",
                self.disk_max_used_gb
            ));
        }
        if !self.max_bytes_sec_up.is_finite() || self.max_bytes_sec_up < 0.0 {
            return Err(format!(
                "max_bytes_sec_up = {}: must be bytes per second, 0 for no limit",
                self.max_bytes_sec_up
            ));
        }
        if !(1..=64).contains(&self.peer_upload_slots) {
            return Err(format!(
                "peer_upload_slots = {}: must be from 1 to 64",
                self.peer_upload_slots
            ));
        }
        if self.work_buf_min_units > self.work_buf_max_units || self.work_buf_max_units > 100 {
            return Err(format!(
                "work_buf_min_units = {}, work_buf_max_units = {}: need min <= max <= 100",
                self.work_buf_min_units, self.work_buf_max_units
            ));
        }
        Ok(())
    }

    /// Units to run at once on a machine with `cpus` CPUs.
    pub fn slots(&self, cpus: usize) -> u32 {
        ((cpus as f64 * self.max_ncpus_pct / 100.0).floor() as u32).max(1)
    }

    /// Whether `hour` (0-24, fractional) lies in the allowed window.
    pub fn in_time_window(&self, hour: f64) -> bool {
        let (start, end) = (self.start_hour % 24.0, self.end_hour % 24.0);
        if start == end {
            true
        } else if start < end {
            (start..end).contains(&hour)
        } else {
            hour >= start || hour < end
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, overrides: &[&str], expected: &[&str]) {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let error = match Prefs::parse(text, "prefs.toml", &overrides) {
            Ok(prefs) => panic!("{text:?} {overrides:?} was accepted: {prefs:?}"),
            Err(error) => error.to_string(),
        };
        for fragment in expected {
            assert!(
                error.contains(fragment),
                "{error:?} should mention {fragment:?}"
            );
        }
    }

    #[test]
    fn defaults_need_no_file_and_overrides_apply() {
        assert_eq!(
            Prefs::parse("", "prefs.toml", &[]).ok(),
            Some(Prefs::default())
        );
        let overrides = [
            "suspend_cpu_usage=50".to_string(),
            "run_on_batteries=true".to_string(),
        ];
        let prefs =
            Prefs::parse("idle_time_to_run = 0.5\n", "prefs.toml", &overrides).expect("valid");
        assert_eq!(
            (prefs.idle_time_to_run, prefs.suspend_cpu_usage),
            (0.5, 50.0)
        );
        assert!(prefs.run_on_batteries);
        let round_trip = Prefs::parse(&prefs.to_toml(), "x", &[]).expect("round trip");
        assert_eq!(round_trip, prefs);
    }

    #[test]
    fn bad_values_get_clear_errors() {
        check(
            "suspend_cpu_usage = 150\n",
            &[],
            &["prefs.toml", "suspend_cpu_usage = 150", "percentage"],
        );
        check(
            "",
            &["cpu_usage_limit=0"],
            &["--pref overrides", "cpu_usage_limit", "1 to 100"],
        );
        check(
            "idle_time_to_run = -1\n",
            &[],
            &["idle_time_to_run", "minutes"],
        );
        check("start_hour = 25\n", &[], &["start_hour", "0 to 24"]);
        check(
            "disk_max_used_gb = 0\n",
            &[],
            &["disk_max_used_gb", "50 MB"],
        );
        check(
            "run_on_batteries = \"maybe\"\n",
            &[],
            &["run_on_batteries", "bool"],
        );
        check("idle_time = 3\n", &[], &["unknown field", "idle_time"]);
        check("", &["max_ncpus_pct=lots"], &["max_ncpus_pct"]);
        check("", &["nonsense"], &["KEY=VALUE"]);
        check(
            "work_buf_min_units = 3\nwork_buf_max_units = 2\n",
            &[],
            &["work_buf_min_units = 3", "min <= max"],
        );
        check("suspend_cpu_usage = \n", &[], &["prefs.toml"]);
    }

    #[test]
    fn a_form_is_read_and_checked_as_the_file_is() {
        let fields = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let prefs = Prefs::from_fields(
            &fields(&[("suspend_cpu_usage", " 40 "), ("run_on_batteries", "true")]),
            "the form",
        )
        .expect("valid");
        assert_eq!(prefs.suspend_cpu_usage, 40.0);
        assert!(prefs.run_on_batteries);
        for (pairs, expected) in [
            (
                vec![("suspend_cpu_usage", "150")],
                "suspend_cpu_usage = 150: must be a percentage",
            ),
            (vec![("idle_time", "3")], "unknown field"),
            (vec![("max_ncpus_pct", "lots")], "max_ncpus_pct"),
            // A value that would smuggle a second line of TOML is text.
            (
                vec![("idle_time_to_run", "1\nsuspend_cpu_usage = 0")],
                "idle_time_to_run",
            ),
            (vec![("start_hour", "[1, 2]")], "start_hour"),
        ] {
            let error = Prefs::from_fields(&fields(&pairs), "the form")
                .expect_err("refused")
                .to_string();
            assert!(
                error.starts_with("the form: ") && error.contains(expected),
                "{error}"
            );
        }
    }

    #[test]
    fn every_preference_has_a_field() {
        let prefs = Prefs::default();
        let values = prefs.values();
        assert_eq!(values.len(), FIELDS.len());
        let table: toml::Table = toml::from_str(&prefs.to_toml()).expect("toml");
        assert_eq!(
            table.len(),
            FIELDS.len(),
            "a preference missing from FIELDS"
        );
        let round_trip: Vec<(String, String)> = values
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(Prefs::from_fields(&round_trip, "x").expect("valid"), prefs);
    }

    #[test]
    fn slots_and_time_windows() {
        let mut prefs = Prefs::default();
        assert_eq!(prefs.slots(8), 8);
        prefs.max_ncpus_pct = 30.0;
        assert_eq!((prefs.slots(8), prefs.slots(2)), (2, 1));
        assert!(prefs.in_time_window(13.0), "equal hours mean any time");
        (prefs.start_hour, prefs.end_hour) = (22.0, 6.0);
        assert!(prefs.in_time_window(23.5) && prefs.in_time_window(2.0));
        assert!(!prefs.in_time_window(12.0));
    }
}
