//! `cobble-worker`: the volunteer's program. `run` computes for a project,
//! `status` shows what it is doing, `install`/`uninstall` make it a user
//! service, `prefs` shows the computing preferences, and `exec` runs one
//! unit locally in the same sandbox.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cobble_sandbox::UnitLimits;
use cobble_worker::activity::{LoadSource, Monitor, SystemLoad};
use cobble_worker::attach::Volunteer;
use cobble_worker::exec::{ExecRequest, exec};
use cobble_worker::install::Layout;
use cobble_worker::prefs::Prefs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Cobble's volunteer worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to a project and compute its work units until stopped.
    Run(RunArgs),
    /// Run one module locally in the sandbox a real unit gets.
    Exec(ExecArgs),
    /// Show the computing preferences in effect (prefs.toml plus --pref).
    Prefs(PrefsArgs),
    /// Show what the running worker is doing: units, progress, suspension,
    /// credit and transfers.
    Status(StatusArgs),
    /// Set the worker up as a systemd user service and start it.
    Install(InstallArgs),
    /// Stop the service and remove it (the data dir is kept).
    Uninstall,
}

/// How the worker authenticates its project, for `run` and `install`.
#[derive(Args)]
struct TrustArgs {
    /// SHA-256 fingerprint of the coordinator's TLS certificate, as its
    /// operator published it; default: pinned on first attach when no
    /// authority vouches for the certificate.
    #[arg(long, env = "COBBLE_TLS_FINGERPRINT")]
    tls_fingerprint: Option<cobble_client::Fingerprint>,
    /// Allow http:// to a coordinator on another machine (unencrypted).
    #[arg(long)]
    insecure_plaintext: bool,
    /// The project's code-signing key (hex), as it published it: every
    /// module must be signed by it. Default: pinned on first attach if the
    /// project requires signed code.
    #[arg(long, env = "COBBLE_CODE_SIGNING_KEY")]
    code_signing_key: Option<String>,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long, env = "COBBLE_WORKER_DIR", default_value = "cobble-worker-data")]
    data_dir: PathBuf,
    /// Print the raw status as JSON, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InstallArgs {
    /// The project's coordinator, e.g. https://project.example:7710.
    #[arg(long, env = "COBBLE_COORDINATOR")]
    coordinator: String,
    /// Data dir of the service; default ~/.local/share/cobble-worker.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Account name; created on first attach.
    #[arg(long, env = "USER", default_value = "volunteer")]
    user: String,
    #[arg(long)]
    team: Option<String>,
    /// The project's invitation code, if creating an account needs one.
    #[arg(long, env = "COBBLE_INVITE_CODE")]
    invite_code: Option<String>,
    /// Show your account's and hosts' names on the project's public pages,
    /// leaderboard and stats export (otherwise: an anonymous id; your
    /// credit counts either way). The latest attach decides.
    #[arg(long)]
    public_name: bool,
    /// Expected project key (hex), instead of trusting it on first attach.
    #[arg(long)]
    project_key: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
    /// Preference overrides for the service, e.g. --pref max_ncpus_pct=50.
    #[arg(long = "pref", value_name = "KEY=VALUE")]
    prefs: Vec<String>,
    /// Write the files but do not ask systemd to start the service.
    #[arg(long)]
    no_start: bool,
}

#[derive(Args)]
struct PrefsArgs {
    #[arg(long, env = "COBBLE_WORKER_DIR", default_value = "cobble-worker-data")]
    data_dir: PathBuf,
    /// Override one preference, e.g. --pref suspend_cpu_usage=50.
    #[arg(long = "pref", value_name = "KEY=VALUE")]
    prefs: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// The project's coordinator, e.g. https://127.0.0.1:7710.
    #[arg(long, env = "COBBLE_COORDINATOR")]
    coordinator: String,
    /// Where the worker keeps its keys, cache and state.
    #[arg(long, env = "COBBLE_WORKER_DIR", default_value = "cobble-worker-data")]
    data_dir: PathBuf,
    /// Account name; created on first attach.
    #[arg(long, env = "USER", default_value = "volunteer")]
    user: String,
    /// Team to join.
    #[arg(long)]
    team: Option<String>,
    /// Key of an existing account, to attach another machine to it.
    #[arg(long, env = "COBBLE_ACCOUNT_KEY")]
    account_key: Option<String>,
    /// The project's invitation code, if creating an account needs one.
    #[arg(long, env = "COBBLE_INVITE_CODE")]
    invite_code: Option<String>,
    /// Show your account's and hosts' names on the project's public pages,
    /// leaderboard and stats export (otherwise: an anonymous id; your
    /// credit counts either way). The latest attach decides.
    #[arg(long)]
    public_name: bool,
    /// Expected project key (hex), instead of trusting it on first attach.
    #[arg(long)]
    project_key: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
    /// Units to compute at once; default from the max_ncpus_pct preference.
    #[arg(long)]
    slots: Option<u32>,
    /// Override one preference from <data-dir>/prefs.toml, e.g.
    /// --pref suspend_cpu_usage=50; repeatable.
    #[arg(long = "pref", value_name = "KEY=VALUE")]
    prefs: Vec<String>,
    /// Where to serve other workers the blobs in the cache (peer-to-peer
    /// input data); if the port is taken, another is used.
    #[arg(long, default_value = "0.0.0.0:7711")]
    peer_listen: std::net::SocketAddr,
    /// Neither serve peers nor fetch from them: every input comes from
    /// the coordinator.
    #[arg(long)]
    no_peers: bool,
    /// The local page (what this computer does, Pause and Resume), on
    /// this computer only; `off` to serve none. A port in use leaves the
    /// worker running without it.
    #[arg(long, default_value = "127.0.0.1:7396")]
    local_page: String,
    /// Read the owner's CPU load (percent) from this file instead of
    /// measuring it: for tests and benchmarks of suspension. Only in builds
    /// with the `test-utils` feature, never in a released worker.
    #[cfg(feature = "test-utils")]
    #[arg(long, hide = true)]
    simulated_load_file: Option<PathBuf>,
}

#[derive(Args)]
struct ExecArgs {
    /// The WASI command module to run.
    module: PathBuf,
    /// A file to place at /input/<its file name>, or NAME=PATH to place
    /// it at /input/NAME (NAME may hold folders: 0/stdout); repeatable.
    #[arg(long = "input", value_name = "PATH|NAME=PATH", value_parser = named_input)]
    inputs: Vec<(String, PathBuf)>,
    /// Fuel budget (deterministic work units).
    #[arg(long, default_value_t = cobble_core::spec::DEFAULT_FUEL)]
    fuel: u64,
    /// Memory cap in MiB.
    #[arg(long, default_value_t = cobble_core::spec::DEFAULT_MEMORY_MIB)]
    memory_mib: u32,
    /// Wall-clock limit in seconds.
    #[arg(long, default_value_t = 600)]
    time_limit_s: u64,
    /// Keep /output here instead of a temporary directory.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Offer /checkpoint from this directory; a second run with the same
    /// directory resumes from the unit's checkpoint. The fuel spent up to
    /// the checkpoint is kept beside it, in `<DIR>.fuel`.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Run as a job with `[engine] nan_canonicalization = false` would.
    #[arg(long)]
    no_nan_canonicalization: bool,
    /// Keep compiled modules here, so the next run of the same module
    /// starts without compiling [default: $XDG_CACHE_HOME/cobble/modules,
    /// else ~/.cache/cobble/modules].
    #[arg(long, value_name = "DIR")]
    module_cache: Option<PathBuf>,
    /// Compile the module afresh and keep nothing.
    #[arg(long, conflicts_with = "module_cache")]
    no_module_cache: bool,
    /// A variable the unit sees, NAME=VALUE, as a job's `env` sets it;
    /// repeatable. Nothing else of this shell's environment reaches it.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = env_var)]
    env: Vec<(String, String)>,
    /// Arguments for the module, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

/// `PATH` (placed under its file name) or `NAME=PATH`, the name checked as
/// a manifest's input names are.
fn named_input(text: &str) -> Result<(String, PathBuf), String> {
    if let Some((name, path)) = text.split_once('=')
        && !std::path::Path::new(text).exists()
    {
        if !cobble_core::manifest::is_input_path(name) {
            return Err(format!(
                "{name:?} is not a name under /input: relative, plain parts, at most 4 levels"
            ));
        }
        return Ok((name.to_string(), PathBuf::from(path)));
    }
    let path = PathBuf::from(text);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{text:?} has no file name"))?;
    Ok((name.to_string(), path))
}

/// `NAME=VALUE`, checked as a job's `env` is.
fn env_var(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: give NAME=VALUE"))?;
    cobble_core::spec::check_env([(name, value)].into_iter()).map_err(|e| e.to_string())?;
    Ok((name.to_string(), value.to_string()))
}

fn main() -> anyhow::Result<ExitCode> {
    cobble_worker::init_logging();
    match Cli::parse().command {
        Command::Prefs(args) => {
            let prefs = Prefs::load(&args.data_dir, &args.prefs)?;
            print!("{}", prefs.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let status = cobble_worker::status::read(&args.data_dir).map_err(anyhow::Error::msg)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let alive = cobble_worker::sys::process_alive(status.pid);
                print!(
                    "{}",
                    cobble_worker::status::render(&status, alive, cobble_core::now_ms())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Install(args) => install(args),
        Command::Uninstall => {
            let layout = Layout::for_current_user()?;
            for note in cobble_worker::install::uninstall(&layout)? {
                println!("{note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(args),
        Command::Exec(args) => runtime()?.block_on(run_exec(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let prefs = Prefs::load(&args.data_dir, &args.prefs)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(feature = "test-utils")]
    let load: Box<dyn LoadSource> = match &args.simulated_load_file {
        Some(path) => Box::new(cobble_worker::activity::FileLoad(path.clone())),
        None => Box::new(SystemLoad::new()),
    };
    #[cfg(not(feature = "test-utils"))]
    let load: Box<dyn LoadSource> = Box::new(SystemLoad::new());
    // The monitor's thread keeps normal priority, so it still notices the
    // owner when the machine is busy; everything started after this line,
    // the units included, runs at the lowest priority.
    let monitor = Monitor::start(
        prefs.clone(),
        load,
        PathBuf::from("/sys/class/power_supply"),
    );
    for failure in cobble_worker::sys::lower_priority() {
        tracing::warn!("cannot lower priority: {failure}");
    }
    let config = cobble_worker::RunConfig {
        coordinator: args.coordinator,
        data_dir: args.data_dir,
        volunteer: Volunteer {
            user: args.user,
            team: args.team,
            account_key: args.account_key,
            project_key: args.project_key,
            code_key: args.trust.code_signing_key,
            invite_code: args.invite_code,
            public_name: args.public_name,
        },
        slots: args.slots.unwrap_or_else(|| prefs.slots(cpus)),
        prefs,
        peer_listen: (!args.no_peers).then_some(args.peer_listen),
        tls_fingerprint: args.trust.tls_fingerprint,
        insecure_plaintext: args.trust.insecure_plaintext,
    };
    let runtime = runtime()?;
    if args.local_page != "off" {
        runtime.block_on(serve_local_page(
            &args.local_page,
            cobble_worker::local_page::Setup {
                data_dir: config.data_dir.clone(),
                controls: monitor.controls.clone(),
                overrides: args.prefs.clone(),
            },
        ))?;
    }
    runtime.block_on(cobble_worker::run(
        config,
        monitor,
        cobble_worker::Hooks::default(),
        shutdown_signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the local page on `address`, which must be this computer's.
async fn serve_local_page(
    address: &str,
    setup: cobble_worker::local_page::Setup,
) -> anyhow::Result<()> {
    let address: std::net::SocketAddr = address
        .parse()
        .with_context(|| format!("--local-page {address:?} is not an address:port or off"))?;
    if !address.ip().is_loopback() {
        anyhow::bail!("--local-page must be a loopback address (127.0.0.1 or ::1), not {address}");
    }
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => {
            tracing::info!("local page at http://{}/", listener.local_addr()?);
            let router = cobble_worker::local_page::router(setup);
            tokio::spawn(cobble_worker::local_page::serve(listener, router));
        }
        Err(error) => {
            tracing::warn!(%error, "cannot serve the local page on {address}; running without it")
        }
    }
    Ok(())
}

fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let layout = Layout::for_current_user()?;
    let data_dir = args.data_dir.unwrap_or_else(|| layout.data_dir.clone());
    let data_dir = std::path::absolute(&data_dir)?;
    // Refuse bad preferences now rather than in a service that keeps failing.
    Prefs::load(&data_dir, &args.prefs)?;
    let mut run_args = vec![
        "--coordinator".to_string(),
        args.coordinator,
        "--data-dir".to_string(),
        data_dir.display().to_string(),
        "--user".to_string(),
        args.user,
    ];
    if let Some(team) = args.team {
        run_args.extend(["--team".to_string(), team]);
    }
    if let Some(code) = args.invite_code {
        run_args.extend(["--invite-code".to_string(), code]);
    }
    if args.public_name {
        run_args.push("--public-name".to_string());
    }
    if let Some(key) = args.project_key {
        run_args.extend(["--project-key".to_string(), key]);
    }
    if let Some(fingerprint) = args.trust.tls_fingerprint {
        run_args.extend(["--tls-fingerprint".to_string(), fingerprint.to_hex()]);
    }
    if args.trust.insecure_plaintext {
        run_args.push("--insecure-plaintext".to_string());
    }
    if let Some(key) = args.trust.code_signing_key {
        run_args.extend(["--code-signing-key".to_string(), key]);
    }
    for pref in args.prefs {
        run_args.extend(["--pref".to_string(), pref]);
    }
    for note in cobble_worker::install::install(&layout, &run_args, !args.no_start)? {
        println!("{note}");
    }
    println!(
        "see what it does: cobble-worker status --data-dir {}",
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let report = exec(ExecRequest {
        module: args.module.clone(),
        inputs: args.inputs,
        args: args.args,
        env: args.env,
        limits: UnitLimits {
            fuel: args.fuel,
            memory_bytes: u64::from(args.memory_mib) << 20,
            wall_time: Duration::from_secs(args.time_limit_s),
            max_output_bytes: cobble_core::spec::DEFAULT_MAX_OUTPUT_BYTES,
        },
        output_dir: args.output_dir,
        checkpoint_dir: args.checkpoint_dir,
        seed: [0; 32],
        nan_canonicalization: !args.no_nan_canonicalization,
        module_cache: if args.no_module_cache {
            None
        } else {
            args.module_cache
                .or_else(cobble_worker::exec::module_cache_dir)
        },
    })
    .await
    .with_context(|| format!("cannot run {}", args.module.display()))?;
    let run = &report.run;
    std::io::stdout().write_all(&run.stdout)?;
    std::io::stdout().flush()?;
    let mut err = std::io::stderr().lock();
    err.write_all(&run.stderr)?;
    writeln!(
        err,
        "fuel used: {}\ntime: {:.3} s\ncompile: {:.3} s{}\nstartup: {} us",
        run.fuel_used,
        run.elapsed.as_secs_f64(),
        report.compile.as_secs_f64(),
        match report.origin {
            cobble_sandbox::Origin::Compiled => "",
            cobble_sandbox::Origin::Disk | cobble_sandbox::Origin::Memory => " (cached)",
        },
        run.startup.as_micros()
    )?;
    for file in &run.files {
        writeln!(
            err,
            "output: {} ({} bytes)",
            report.output_dir.join(&file.name).display(),
            file.size
        )?;
    }
    if run.outcome.is_ok() {
        // Hashing the outputs reads files: off the async runtime.
        let digest = tokio::task::block_in_place(|| cobble_worker::exec::output_digest(run))?;
        writeln!(err, "digest: {}", hex::encode(digest))?;
    }
    Ok(match &run.outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            writeln!(err, "failed ({}): {failure}", failure.kind())?;
            ExitCode::FAILURE
        }
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    tokio::signal::ctrl_c().await.ok();
}
