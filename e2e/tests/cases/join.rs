//! One command to join: in a scratch HOME, the install script fetched from
//! a running coordinator (`--worker-dist`) downloads the worker, checks it
//! against the hash the project's key signed, installs it, and the
//! installed worker attaches and computes a unit. A binary altered after
//! the coordinator signed its hash, and a list of hashes signed by another
//! key, are refused with a clear message and nothing is installed.

use cobble_e2e::{Coordinator, Process, binary, http_get, write_job};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BINARY: &str = "cobble-worker-linux-x86_64";

/// `curl -fsSL <site>/install.sh | sh -s -- ARGS` as a volunteer types it,
/// with HOME in `home`.
fn curl_pipe_sh(home: &Path, site: &str, args: &str) -> Output {
    run_script(
        home,
        &format!("curl -fsSL {site}/install.sh | sh -s -- {args}"),
    )
}

fn run_script(home: &Path, shell: &str) -> Output {
    std::fs::create_dir_all(home).expect("home");
    Command::new("sh")
        .args(["-c", shell])
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .output()
        .expect("running sh")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn nothing_installed(home: &Path) -> bool {
    !home.join(".local/bin/cobble-worker").exists()
        && !home
            .join(".config/systemd/user/cobble-worker.service")
            .exists()
}

#[test]
fn the_install_script_installs_a_worker_that_computes_and_refuses_a_tampered_one() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // The distribution: this build's worker under the name `cargo xtask
    // dist` gives its static build.
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).expect("dist dir");
    // COBBLE_TEST_DIST_WORKER names `cargo xtask dist`'s static build, to
    // test that instead (by hand: building it takes minutes).
    let worker = std::env::var_os("COBBLE_TEST_DIST_WORKER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| binary("cobble-worker"));
    std::fs::copy(&worker, dist.join(BINARY)).expect("copy worker");
    let coordinator = Coordinator::start_with(dir, &["--worker-dist", &dist.display().to_string()]);
    let site = coordinator.site();

    // The home page shows the one command.
    let home_page = http_get(&site, "/");
    let command = format!("curl -fsSL {site}/install.sh | sh -s -- --user YOUR_NAME");
    assert!(home_page.body.contains(&command), "{}", home_page.body);
    assert!(home_page.body.contains(&format!("/dist/{BINARY}")));

    // Installed as the home page says, with --no-start (no systemd here).
    let home = dir.join("home-ada");
    let installed = curl_pipe_sh(
        &home,
        &site,
        "--user ada --public-name --no-start --pref suspend_cpu_usage=0 --pref idle_time_to_run=0",
    );
    assert!(installed.status.success(), "{}", text(&installed));
    assert!(
        text(&installed).contains("matches the project's signed hash"),
        "{}",
        text(&installed)
    );
    let worker = home.join(".local/bin/cobble-worker");
    assert_eq!(
        std::fs::read(&worker).expect("installed binary"),
        std::fs::read(dist.join(BINARY)).expect("dist binary"),
        "installed what was signed"
    );
    let unit = std::fs::read_to_string(home.join(".config/systemd/user/cobble-worker.service"))
        .expect("the service's unit");
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    assert!(
        exec_start.contains(&format!("--project-key {}", coordinator.project_key)),
        "the script pins the project's key: {exec_start}"
    );

    // The installed worker, run as its service would run it, computes.
    // One result suffices: this worker is the only host.
    let job = coordinator.submit(&write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        "name = \"p\"\nmodule = \"primes.wasm\"\nargs = [\"{start}\", \"{end}\"]\n\
         [split]\nrange = { start = 0, end = 1000, per_unit = 1000 }\n\
         [replication]\nmin_quorum = 1\ntarget_results = 1\n",
    ));
    let words: Vec<&str> = exec_start.split_whitespace().collect();
    assert_eq!(words.first(), Some(&worker.to_str().expect("utf-8 path")));
    let mut command = Command::new(&worker);
    command
        .args(&words[1..])
        .args(["--peer-listen", "127.0.0.1:0", "--local-page", "off"])
        .env("HOME", &home)
        .env("RUST_LOG", "info,h2=warn,wasmtime=warn,cranelift=warn")
        .stdout(Stdio::null());
    let running = Process::spawn(command, dir.join("installed-worker.log"));
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(120));
    assert!(done, "{status}\n{}", running.log_text());

    // A binary altered after the coordinator signed its hash: refused.
    let mut altered = std::fs::read(dist.join(BINARY)).expect("dist binary");
    let middle = altered.len() / 2;
    altered[middle] ^= 0x01;
    std::fs::write(dist.join(BINARY), &altered).expect("tamper");
    let victim = dir.join("home-bob");
    let refused = curl_pipe_sh(&victim, &site, "--user bob --no-start");
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("altered or damaged on the way; refusing to install it"),
        "{}",
        text(&refused)
    );
    assert!(nothing_installed(&victim), "a refused install left files");

    // Hashes signed by another project's key (a mirror serving its own
    // list): the script pinned this project's key and refuses.
    std::fs::create_dir_all(dir.join("other")).expect("dir");
    let other = Coordinator::start_with(
        &dir.join("other"),
        &["--worker-dist", &dist.display().to_string()],
    );
    let other_site = other.site();
    let script = http_get(&site, "/install.sh").body;
    assert!(script.contains(&format!("site='{site}'")), "{script}");
    let redirected = script.replace(&format!("site='{site}'"), &format!("site='{other_site}'"));
    let script_path = dir.join("redirected.sh");
    std::fs::write(&script_path, redirected).expect("script");
    let victim = dir.join("home-carol");
    let refused = run_script(
        &victim,
        &format!("sh {} --user carol --no-start", script_path.display()),
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("is not signed by this project's key"),
        "{}",
        text(&refused)
    );
    assert!(nothing_installed(&victim), "a refused install left files");

    // What else the site answers about the distribution.
    assert_eq!(http_get(&site, "/dist/../../etc/passwd").status, 404);
    assert_eq!(http_get(&site, "/dist/nothing-here").status, 404);
    let sums = http_get(&site, "/dist/SHA256SUMS");
    assert!(sums.body.contains(BINARY), "{sums:?}");
}

#[test]
fn without_a_distribution_there_is_no_install_script() {
    let temp = tempfile::tempdir().expect("temp dir");
    let coordinator = Coordinator::start(temp.path());
    let site = coordinator.site();
    let answer = http_get(&site, "/install.sh");
    assert_eq!(answer.status, 404);
    assert!(
        answer.body.contains("serves no worker binaries"),
        "{answer:?}"
    );
    let home = http_get(&site, "/");
    assert!(home.body.contains("cobble-worker install --coordinator"));

    // A distribution without the worker stops the start with a clear word.
    let empty = temp.path().join("empty-dist");
    std::fs::create_dir_all(&empty).expect("dir");
    let output = Command::new(binary("cobble-coordinator"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(temp.path().join("refused"))
        .arg("--worker-dist")
        .arg(&empty)
        .output()
        .expect("running the coordinator");
    assert!(!output.status.success());
    assert!(text(&output).contains(BINARY), "{}", text(&output));
}
