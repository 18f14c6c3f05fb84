//! `cobble-worker`: the volunteer's program. `run` computes for a project,
//! `exec` runs one unit locally in the same sandbox.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cobble_worker::attach::Volunteer;
use cobble_worker::exec::{ExecRequest, exec};
use cobble_worker::prefs::Prefs;
use cobble_worker::sandbox::UnitLimits;
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
    /// The project's coordinator, e.g. http://127.0.0.1:7710.
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
    /// Expected project key (hex), instead of trusting it on first attach.
    #[arg(long)]
    project_key: Option<String>,
    /// Units to compute at once; default from the max_ncpus_pct preference.
    #[arg(long)]
    slots: Option<u32>,
    /// Override one preference from <data-dir>/prefs.toml, e.g.
    /// --pref suspend_cpu_usage=50; repeatable.
    #[arg(long = "pref", value_name = "KEY=VALUE")]
    prefs: Vec<String>,
}

#[derive(Args)]
struct ExecArgs {
    /// The WASI command module to run.
    module: PathBuf,
    /// A file to place at /input/<its file name>; repeatable.
    #[arg(long = "input")]
    inputs: Vec<PathBuf>,
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
    /// directory resumes from the unit's checkpoint.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Run as a job with `[engine] nan_canonicalization = false` would.
    #[arg(long)]
    no_nan_canonicalization: bool,
    /// Arguments for the module, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    cobble_worker::init_logging();
    match Cli::parse().command {
        Command::Prefs(args) => {
            let prefs = Prefs::load(&args.data_dir, &args.prefs)?;
            print!("{}", prefs.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let prefs = Prefs::load(&args.data_dir, &args.prefs)?;
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let config = cobble_worker::RunConfig {
                coordinator: args.coordinator,
                data_dir: args.data_dir,
                volunteer: Volunteer {
                    user: args.user,
                    team: args.team,
                    account_key: args.account_key,
                    project_key: args.project_key,
                },
                slots: args.slots.unwrap_or_else(|| prefs.slots(cpus)),
            };
            cobble_worker::run(config, cobble_worker::Hooks::default(), shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(args) => run_exec(args).await,
    }
}

async fn run_exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let report = exec(ExecRequest {
        module: args.module.clone(),
        inputs: args.inputs,
        args: args.args,
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
        "fuel used: {}\ntime: {:.3} s\ncompile: {:.3} s\nstartup: {} us",
        run.fuel_used,
        run.elapsed.as_secs_f64(),
        report.compile.as_secs_f64(),
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
