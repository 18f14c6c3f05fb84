//! `cobble`: the researcher's and the public's command. Submit a job,
//! follow it, collect its validated results, view the leaderboard.

mod init;
mod output;
mod run_local;
mod signing;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cobble_client::{Connection, Credentials};
use cobble_core::spec::LocalJob;
use cobble_proto::v1::{
    self as pb, job_service_client::JobServiceClient, stats_service_client::StatsServiceClient,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    version,
    about = "Submit Cobble jobs, follow them, collect results, view the leaderboard"
)]
struct Cli {
    /// The project's coordinator.
    #[arg(
        long,
        global = true,
        env = "COBBLE_COORDINATOR",
        default_value = "https://127.0.0.1:7710"
    )]
    coordinator: String,
    /// SHA-256 fingerprint of the coordinator's TLS certificate, for a
    /// project with a self-signed one (`cobble-coordinator serve` prints
    /// it); without it, the system's trusted authorities must vouch for it.
    #[arg(long, global = true, env = "COBBLE_TLS_FINGERPRINT")]
    tls_fingerprint: Option<cobble_client::Fingerprint>,
    /// Allow http:// to a coordinator on another machine (unencrypted).
    #[arg(long, global = true)]
    insecure_plaintext: bool,
    /// The project's researcher token, needed to submit, cancel and collect
    /// jobs (the coordinator keeps it in <data-dir>/researcher.token).
    #[arg(long, global = true, env = "COBBLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a working example job to start from into DIR (new or empty):
    /// a parameter sweep of an epidemic model and a reduce step.
    #[command(group(clap::ArgGroup::new("language").required(true).args(["python", "rust"])))]
    Init {
        /// In Python (runs on the coordinator's CPython runtime).
        #[arg(long)]
        python: bool,
        /// In Rust, built to a WASI module with cargo.
        #[arg(long)]
        rust: bool,
        dir: PathBuf,
    },
    /// Run a job's first units and its reduce step on this machine, in the
    /// sandbox volunteers use, and print their outputs, fuel and time.
    RunLocal {
        /// The job spec (TOML).
        spec: PathBuf,
        /// How many of the job's units to run.
        #[arg(long, default_value_t = 3)]
        units: usize,
        /// Where outputs go [default: run-local/ beside the spec]; replaced
        /// on the next run.
        #[arg(long)]
        out: Option<PathBuf>,
        /// CPython for WASI, for a job on the Python runtime [default: where
        /// `cargo xtask setup` leaves it].
        #[arg(long, env = "COBBLE_PYTHON_RUNTIME", value_name = "FILE")]
        python_runtime: Option<PathBuf>,
    },
    /// Upload a job's module and inputs and submit it; prints the job id.
    Submit {
        /// The job spec (TOML).
        spec: PathBuf,
    },
    /// Show a job's progress.
    Status {
        job: i64,
        #[arg(long)]
        json: bool,
    },
    /// Write each unit's validated output to DIR/<index>/.
    Results {
        job: i64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Stop issuing a job's work units.
    Cancel { job: i64 },
    /// Users (default), teams or hosts ranked by credit.
    Leaderboard {
        #[arg(long, conflicts_with = "hosts")]
        teams: bool,
        #[arg(long)]
        hosts: bool,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// How input data reached the hosts: from the coordinator or from
    /// peers, and who shared most.
    Transfers {
        #[arg(long)]
        json: bool,
    },
    /// Makes a code-signing key (ed25519) in FILE, mode 0600, and prints
    /// its public key for `cobble-coordinator serve --code-signing-key`.
    /// Do this on the machine that will keep the key, off the network.
    Keygen { file: PathBuf },
    /// Signs a module with the project's code-signing key; writes
    /// MODULE.sig, which `cobble submit` sends with the module.
    SignModule {
        module: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signature; default MODULE.sig.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Init { python, dir, .. } => {
            return init::write(if *python { &init::PYTHON } else { &init::RUST }, dir);
        }
        Command::RunLocal {
            spec,
            units,
            out,
            python_runtime,
        } => {
            let passed = run_local::run(run_local::Options {
                spec: spec.clone(),
                units: *units,
                out: out.clone(),
                python_runtime: python_runtime.clone(),
            })
            .await?;
            if !passed {
                std::process::exit(1);
            }
            return Ok(());
        }
        Command::Keygen { file } => return signing::keygen(file),
        Command::SignModule { module, key, out } => {
            return signing::sign_module(module, key, out.as_deref());
        }
        _ => {}
    }
    let credentials = cli
        .token
        .clone()
        .map_or(Credentials::Anonymous, Credentials::Researcher);
    let security = cobble_client::Security::pinned(cli.tls_fingerprint, cli.insecure_plaintext);
    let connect = || Connection::open(&cli.coordinator, &security, credentials.clone());
    match cli.command {
        Command::Submit { spec } => {
            let job = LocalJob::load(&spec)?;
            let connection = connect().await?;
            let spec = upload_job(&connection, &job).await?;
            let response = JobServiceClient::new(connection.channel())
                .submit_job(connection.request(pb::SubmitJobRequest { spec: Some(spec) }))
                .await
                .context("the coordinator refused the job")?
                .into_inner();
            eprintln!("submitted {:?}: {} work units", job.name, response.units);
            println!("{}", response.job_id);
        }
        Command::Status { job, json } => {
            let connection = connect().await?;
            let status = JobServiceClient::new(connection.channel())
                .get_job_status(connection.request(pb::JobRequest { job_id: job }))
                .await?
                .into_inner();
            output::print_status(&status, json)?;
        }
        Command::Results { job, out, json } => {
            let connection = connect().await?;
            let results = JobServiceClient::new(connection.channel())
                .get_job_results(connection.request(pb::JobRequest { job_id: job }))
                .await?
                .into_inner();
            write_results(&connection, &results, &out).await?;
            output::print_results(&results, &out, json)?;
        }
        Command::Cancel { job } => {
            let connection = connect().await?;
            let response = JobServiceClient::new(connection.channel())
                .cancel_job(connection.request(pb::JobRequest { job_id: job }))
                .await?
                .into_inner();
            if let Some(status) = response.status {
                output::print_status(&status, false)?;
            }
        }
        Command::Leaderboard {
            teams,
            hosts,
            limit,
            json,
        } => {
            let kind = if teams {
                "teams"
            } else if hosts {
                "hosts"
            } else {
                "users"
            };
            let board = StatsServiceClient::new(connect().await?.channel())
                .get_leaderboard(pb::LeaderboardRequest {
                    kind: kind.into(),
                    limit,
                })
                .await?
                .into_inner();
            output::print_leaderboard(&board, json)?;
        }
        Command::Init { .. }
        | Command::RunLocal { .. }
        | Command::Keygen { .. }
        | Command::SignModule { .. } => {}
        Command::Transfers { json } => {
            let stats = StatsServiceClient::new(connect().await?.channel())
                .get_transfer_stats(pb::TransferStatsRequest {})
                .await?
                .into_inner();
            output::print_transfers(&stats, json)?;
        }
    }
    Ok(())
}

/// Uploads every file the job names (each once) and builds the spec.
async fn upload_job(connection: &Connection, job: &LocalJob) -> anyhow::Result<pb::JobSpec> {
    // A job on a runtime uploads no module: the coordinator serves it.
    let mut paths: Vec<&Path> = job.module.iter().map(PathBuf::as_path).collect();
    paths.extend(job.validator_module.as_deref());
    paths.extend(job.inputs.iter().map(|(_, p)| p.as_path()));
    if let cobble_core::spec::LocalSplit::Files(files) = &job.split {
        paths.extend(files.iter().map(|(_, p)| p.as_path()));
    }
    if let Some(reduce) = &job.reduce {
        paths.extend(reduce.module.as_deref());
        paths.extend(reduce.inputs.iter().map(|(_, p)| p.as_path()));
    }
    let mut uploaded: HashMap<PathBuf, pb::BlobRef> = HashMap::new();
    for path in paths {
        if !uploaded.contains_key(path) {
            let blob = connection
                .upload_file(path)
                .await
                .with_context(|| format!("uploading {}", path.display()))?;
            uploaded.insert(path.to_path_buf(), blob);
        }
    }
    job.to_spec(|path| {
        uploaded
            .get(path)
            .cloned()
            .with_context(|| format!("{} was not uploaded", path.display()))
    })
}

/// Downloads each done unit's stdout and files into `out/<index>/`, the
/// reduce unit's into `out/reduce/`. A file
/// whose name is not a plain relative name (a coordinator from before names
/// were checked may hold one) is skipped with a warning, so one bad name
/// never keeps a researcher from the rest of the job's results.
async fn write_results(
    connection: &Connection,
    results: &pb::JobResults,
    out: &Path,
) -> anyhow::Result<()> {
    let mut skipped = 0;
    for unit in results.units.iter().filter(|u| u.state == "done") {
        let dir = output::unit_dir(out, unit);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some(stdout) = &unit.stdout {
            fetch(connection, stdout, &dir.join("stdout")).await?;
        }
        for file in &unit.files {
            let Some(target) = safe_join(&dir, &file.name) else {
                eprintln!(
                    "warning: unit {}: skipping output file {:?}: not a plain relative name",
                    unit.index, file.name
                );
                skipped += 1;
                continue;
            };
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if let Some(blob) = &file.blob {
                fetch(connection, blob, &target).await?;
            }
        }
    }
    if skipped > 0 {
        eprintln!("warning: {skipped} output files skipped for their names");
    }
    Ok(())
}

async fn fetch(connection: &Connection, blob: &pb::BlobRef, target: &Path) -> anyhow::Result<()> {
    let hash = cobble_core::BlobHash::from_slice(&blob.hash)?;
    connection
        .download_verified(&hash, target)
        .await
        .with_context(|| format!("downloading {}", target.display()))?;
    Ok(())
}

/// Output names come from work units: never let one write outside `dir`.
fn safe_join(dir: &Path, name: &str) -> Option<PathBuf> {
    cobble_core::output::is_plain_name(name).then(|| dir.join(name))
}
