//! `cobble-worker prefs`: the preferences in effect, and a clear error for
//! a bad value in the file or on the command line.

use cobble_e2e::binary;
use std::process::Command;

fn prefs(dir: &std::path::Path, overrides: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(binary("cobble-worker"));
    command.arg("prefs").arg("--data-dir").arg(dir);
    for o in overrides {
        command.args(["--pref", o]);
    }
    let output = command.output().expect("running cobble-worker prefs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn prefs_show_defaults_file_values_and_overrides() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (ok, stdout, _) = prefs(temp.path(), &[]);
    assert!(
        ok && stdout.contains("suspend_cpu_usage = 25.0"),
        "{stdout}"
    );
    std::fs::write(temp.path().join("prefs.toml"), "idle_time_to_run = 0.5\n").expect("write");
    let (ok, stdout, _) = prefs(temp.path(), &["run_on_batteries=true"]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("idle_time_to_run = 0.5") && stdout.contains("run_on_batteries = true"),
        "{stdout}"
    );
}

#[test]
fn a_bad_preference_is_refused_with_its_name() {
    let temp = tempfile::tempdir().expect("temp dir");
    std::fs::write(temp.path().join("prefs.toml"), "suspend_cpu_usage = 150\n").expect("write");
    let (ok, _, stderr) = prefs(temp.path(), &[]);
    assert!(!ok);
    assert!(
        stderr.contains("prefs.toml") && stderr.contains("suspend_cpu_usage = 150"),
        "{stderr}"
    );
    let (ok, _, stderr) = prefs(
        tempfile::tempdir().expect("temp dir").path(),
        &["max_ncpus_pct=0"],
    );
    assert!(!ok && stderr.contains("max_ncpus_pct"), "{stderr}");
}
