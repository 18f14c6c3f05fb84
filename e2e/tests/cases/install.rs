//! `cobble-worker install` and `uninstall` in a scratch home directory:
//! the binary is copied into `~/.local/bin`, the systemd user unit runs it
//! with the volunteer's settings, bad preferences are refused before
//! anything is written, and uninstall removes what install wrote.

use cobble_e2e::binary;
use std::path::Path;
use std::process::{Command, Output};

fn worker_in_home(home: &Path, args: &[&str]) -> Output {
    Command::new(binary("cobble-worker"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .output()
        .expect("running cobble-worker")
}

#[test]
fn install_writes_a_user_service_and_uninstall_removes_it() {
    let temp = tempfile::tempdir().expect("temp dir");
    let home = temp.path();
    let unit = home.join(".config/systemd/user/cobble-worker.service");
    let installed = home.join(".local/bin/cobble-worker");

    let refused = worker_in_home(
        home,
        &[
            "install",
            "--coordinator",
            "http://127.0.0.1:9",
            "--pref",
            "max_ncpus_pct=500",
            "--no-start",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("max_ncpus_pct = 500"), "{stderr}");
    assert!(
        !unit.exists() && !installed.exists(),
        "a refused install wrote files"
    );

    let output = worker_in_home(
        home,
        &[
            "install",
            "--coordinator",
            "http://127.0.0.1:9",
            "--user",
            "ada",
            "--team",
            "the pioneers",
            "--pref",
            "max_ncpus_pct=50",
            "--no-start",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("cobble-worker status --data-dir"),
        "{stdout}"
    );

    let version = Command::new(&installed)
        .arg("--version")
        .output()
        .expect("installed binary runs");
    assert!(version.status.success());
    let text = std::fs::read_to_string(&unit).expect("unit file written");
    let expected = format!(
        "ExecStart={bin} run --coordinator http://127.0.0.1:9 --data-dir {data} --user ada --team \"the pioneers\" --pref max_ncpus_pct=50\n",
        bin = installed.display(),
        data = home.join(".local/share/cobble-worker").display(),
    );
    assert!(
        text.contains(&expected),
        "{text}\nshould contain\n{expected}"
    );
    assert!(text.contains("CPUSchedulingPolicy=idle"), "{text}");

    let removed = worker_in_home(home, &["uninstall"]);
    let stdout = String::from_utf8_lossy(&removed.stdout);
    assert!(removed.status.success(), "{stdout}");
    assert!(!unit.exists() && !installed.exists(), "{stdout}");
    assert!(stdout.contains("kept"), "{stdout}");
}
