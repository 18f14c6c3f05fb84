//! Load: how many units a project validates per second, and what each
//! validated unit costs the coordinator and its database. The real
//! `cobble-coordinator` binary (one or two processes; SQLite, or PostgreSQL
//! with COBBLE_TEST_POSTGRES_URL) and H simulated hosts in this process,
//! over real gRPC and TLS on loopback. Each host registers through the real
//! flow with its own account, credentials and connection, then does what
//! the worker does with no-op units: asks for work, and for each unit
//! returns the unit's right answer, either as the worker of before did
//! (`single`: one upload and one ReportResult per unit) or batched
//! (`batched`: outputs inline, every finished unit in one ReportResults).
//! One job, quorum 2, no adaptive replication, so every validated unit is
//! two agreeing results. The default integrity policy but for the daily
//! quota, which would stop hosts this fast within a second.
//!
//! Per row: validated units/s over the measured window, p50/p99 of each
//! RPC, and CPU time per validated unit of the coordinator processes and of
//! the PostgreSQL server (every `postgres` process on this machine: run
//! nothing else). Rows: SQLite and PostgreSQL with 1 coordinator at 8, 64
//! and 512 hosts, PostgreSQL with 2 coordinators, and 64 hosts against a
//! job of 1,000,000 units (is the rate the same with a big database?).
//!
//! `cargo xtask bench load`. COBBLE_BENCH_SECONDS: measured seconds per row
//! (15); COBBLE_LOAD_ROWS: comma-separated filters on row names such as
//! `sqlite,pg-2c` or `!1M` (all); COBBLE_LOAD_PROTOCOLS: `single,batched` (both).

#[path = "common/mod.rs"]
mod common;

use cobble_client::{Connection, Security};
use cobble_e2e::{Coordinator, write_job};
use cobble_proto::v1::{
    self as pb, job_service_client::JobServiceClient, report_request::Outcome,
    worker_service_client::WorkerServiceClient,
};
use prost::Message;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Single,
    Batched,
}

#[derive(Debug, Clone)]
struct Row {
    name: String,
    postgres: bool,
    coordinators: usize,
    hosts: usize,
    units: u64,
}

/// Latencies of each RPC, recorded only while measuring.
#[derive(Default)]
struct Samples {
    measuring: AtomicBool,
    request: Mutex<Vec<Duration>>,
    upload: Mutex<Vec<Duration>>,
    report: Mutex<Vec<Duration>>,
    errors: AtomicU64,
}

impl Samples {
    fn note(&self, which: &Mutex<Vec<Duration>>, began: Instant) {
        if self.measuring.load(Ordering::Relaxed)
            && let Ok(mut samples) = which.lock()
        {
            samples.push(began.elapsed());
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

fn latency(samples: &Mutex<Vec<Duration>>) -> String {
    let mut samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    if samples.is_empty() {
        return "-".into();
    }
    samples.sort();
    format!(
        "{:.1} / {:.1}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99)
    )
}

/// The answer every honest host gives for a unit.
fn answer(manifest: &pb::Manifest) -> Vec<u8> {
    format!(
        "answer {}\n",
        manifest.args.first().map_or("", String::as_str)
    )
    .into_bytes()
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => 0.0,
    }
}

/// CPU seconds of every PostgreSQL process on this machine, including the
/// ones that have exited (their children's time is in the postmaster's
/// cumulative fields, which this adds).
fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "postgres" {
            continue;
        }
        total += cpu_seconds(pid);
        // cutime and cstime: backends that exited.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            for i in [13, 14] {
                total += fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    / 100.0;
            }
        }
    }
    total
}

/// One simulated host: registers, then asks, answers and reports until
/// `stop`, as the worker does (retrying what the coordinator could not
/// take now).
async fn simulated_host(
    url: String,
    security: Security,
    index: usize,
    protocol: Protocol,
    stop: Arc<AtomicBool>,
    samples: Arc<Samples>,
) -> anyhow::Result<()> {
    let (connection, mut worker) = loop {
        let attempt = common::attach(
            &url,
            &security,
            format!("volunteer{index}"),
            format!("host{index}"),
            // Room for a batch of 16 in flight (two per CPU).
            8,
        );
        match attempt.await {
            Ok(attached) => break attached,
            Err(error) if !stop.load(Ordering::Relaxed) => {
                samples.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("  host {index} could not attach ({error:#}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    };
    let slots = match protocol {
        Protocol::Single => 4,
        Protocol::Batched => 16,
    };
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let response = worker
            .request_work(connection.request(pb::WorkRequest { slots, wait_s: 1 }))
            .await;
        samples.note(&samples.request, began);
        let assignments = match response {
            Ok(response) => response.into_inner().assignments,
            Err(_) => {
                samples.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut manifests = Vec::new();
        for assignment in &assignments {
            manifests.push(pb::Manifest::decode(assignment.manifest.as_slice())?);
        }
        match protocol {
            Protocol::Single => {
                for manifest in manifests {
                    let stdout = answer(&manifest);
                    let began = Instant::now();
                    let Ok(blob) = connection.upload_bytes(&stdout).await else {
                        samples.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    samples.note(&samples.upload, began);
                    let report = pb::ReportRequest {
                        lease_id: manifest.lease_id,
                        outcome: Some(Outcome::Success(pb::Success {
                            stdout: Some(blob),
                            fuel_used: 1_000_000,
                            elapsed_ms: 1,
                            ..Default::default()
                        })),
                    };
                    for attempt in 0..10u32 {
                        let began = Instant::now();
                        let reported = worker
                            .report_result(connection.request(report.clone()))
                            .await;
                        samples.note(&samples.report, began);
                        match reported {
                            Ok(_) => break,
                            Err(status) => {
                                samples.errors.fetch_add(1, Ordering::Relaxed);
                                if status.code() != tonic::Code::Unavailable {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(50 << attempt.min(4)))
                                    .await;
                            }
                        }
                    }
                }
            }
            Protocol::Batched => {
                batched::report(&mut worker, &connection, manifests, &samples).await;
            }
        }
    }
    Ok(())
}

mod batched {
    use super::*;

    /// Every finished unit in one call, outputs inline.
    pub async fn report(
        worker: &mut WorkerServiceClient<tonic::transport::Channel>,
        connection: &Connection,
        manifests: Vec<pb::Manifest>,
        samples: &Samples,
    ) {
        if manifests.is_empty() {
            return;
        }
        let reports: Vec<pb::ReportRequest> = manifests
            .iter()
            .map(|manifest| {
                let stdout = answer(manifest);
                pb::ReportRequest {
                    lease_id: manifest.lease_id.clone(),
                    outcome: Some(Outcome::Success(pb::Success {
                        stdout: Some(pb::BlobRef {
                            hash: blake3::hash(&stdout).as_bytes().to_vec(),
                            size: stdout.len() as u64,
                            chunk_root: Vec::new(),
                        }),
                        fuel_used: 1_000_000,
                        elapsed_ms: 1,
                        inline: vec![stdout],
                        ..Default::default()
                    })),
                }
            })
            .collect();
        let batch = pb::ReportBatch { reports };
        for attempt in 0..10u32 {
            let began = Instant::now();
            let reported = worker
                .report_results(connection.request(batch.clone()))
                .await;
            samples.note(&samples.report, began);
            match reported {
                Ok(_) => return,
                Err(status) => {
                    samples.errors.fetch_add(1, Ordering::Relaxed);
                    if !matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Aborted
                    ) {
                        eprintln!("  batch refused: {status}");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
                }
            }
        }
    }
}

struct Figures {
    rate: f64,
    coordinator_ms_per_unit: f64,
    database_ms_per_unit: f64,
    samples: Arc<Samples>,
    seconds_to_submit: f64,
}

async fn run(row: &Row, protocol: Protocol, measure: Duration) -> anyhow::Result<Figures> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let database = match (row.postgres, std::env::var("COBBLE_TEST_POSTGRES_URL")) {
        (false, _) => None,
        (true, Ok(admin)) => Some(common::fresh_postgres(&admin).await?),
        (true, Err(_)) => anyhow::bail!("COBBLE_TEST_POSTGRES_URL is not set"),
    };
    let mut flags: Vec<String> = cobble_e2e::ONE_ADDRESS_MANY_MACHINES
        .iter()
        .map(|f| f.to_string())
        .collect();
    // Hosts here return units in microseconds: a daily quota made for
    // real volunteers (64 for a new host) would stop each within a second.
    // Everything else is the default policy, replica spacing included.
    flags.extend(
        [
            "--max-requests-per-host-per-sec",
            "0",
            "--initial-daily-quota",
            "100000000",
            "--max-daily-quota-per-cpu",
            "100000000",
        ]
        .map(String::from),
    );
    if let Some(url) = &database {
        flags.extend(["--database-url".to_string(), url.clone()]);
    }
    // One blob store for all coordinators of the project.
    flags.extend([
        "--blob-dir".to_string(),
        dir.join("blobs").display().to_string(),
    ]);
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut coordinators = vec![Coordinator::start_with(dir, &flag_refs)];
    for index in 1..row.coordinators {
        // Same database, same signing key and token: one project.
        let data_dir = dir.join(format!("coordinator{index}"));
        std::fs::create_dir_all(&data_dir)?;
        for file in ["project.key", "researcher.token", "tls.crt", "tls.key"] {
            let from = coordinators[0].data_dir.join(file);
            if from.exists() {
                std::fs::copy(&from, data_dir.join(file))?;
            }
        }
        coordinators.push(Coordinator::start_at(dir, &data_dir, &flag_refs));
    }
    let units = row.units;
    let spec = write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        &format!(
            "name = \"load\"\nmodule = \"primes.wasm\"\nargs = [\"{{start}}\"]\n\
             [split]\nrange = {{ start = 0, end = {units}, per_unit = 1 }}\n\
             [replication]\nmin_quorum = 2\ntarget_results = 2\nmax_total_results = 4\nadaptive = false\n"
        ),
    );
    let submitting = Instant::now();
    let job: i64 = coordinators[0].submit(&spec).parse()?;
    let seconds_to_submit = submitting.elapsed().as_secs_f64();

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Samples::default());
    let mut tasks = Vec::new();
    for index in 0..row.hosts {
        let coordinator = &coordinators[index % coordinators.len()];
        let host = simulated_host(
            coordinator.url.clone(),
            coordinator.security(),
            index,
            protocol,
            stop.clone(),
            samples.clone(),
        );
        // Hosts come in over a second or so, as a swarm does, not in
        // the same millisecond.
        tokio::time::sleep(Duration::from_millis(2)).await;
        tasks.push(tokio::spawn(async move {
            if let Err(error) = host.await {
                eprintln!("  simulated host {index} failed: {error:#}");
            }
        }));
    }
    // A crowd connecting at once may find the handshake queue full for a
    // moment (its bound is an abuse limit); so may this connection.
    let status_channel = loop {
        match cobble_client::connect(&coordinators[0].url, &coordinators[0].security()).await {
            Ok(channel) => break channel,
            Err(error) => {
                eprintln!("  status connection: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut jobs = JobServiceClient::new(status_channel);
    let done = async |jobs: &mut JobServiceClient<tonic::transport::Channel>| {
        jobs.get_job_status(pb::JobRequest { job_id: job })
            .await
            .map(|s| s.into_inner().units_done)
    };
    // Warm up: every host attached and working, quotas grown.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids: Vec<u32> = coordinators.iter().map(|c| c.process.child.id()).collect();
    let coordinator_cpu = || pids.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>();
    let (cpu0, db0, done0) = (
        coordinator_cpu(),
        postgres_cpu_seconds(),
        done(&mut jobs).await?,
    );
    samples.measuring.store(true, Ordering::Relaxed);
    let began = Instant::now();
    tokio::time::sleep(measure).await;
    samples.measuring.store(false, Ordering::Relaxed);
    let (cpu1, db1, done1) = (
        coordinator_cpu(),
        postgres_cpu_seconds(),
        done(&mut jobs).await?,
    );
    let seconds = began.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    if done1 == done0 {
        let log = coordinators[0].process.log_text();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("  no unit validated; the coordinator's log ends:");
        for line in tail.iter().rev() {
            eprintln!("    {line}");
        }
    }
    let validated = done1.saturating_sub(done0).max(1) as f64;
    if u64::from(done1) >= units {
        eprintln!("  the job ran out of units: the rate is a lower bound");
    }
    Ok(Figures {
        rate: (done1.saturating_sub(done0)) as f64 / seconds,
        coordinator_ms_per_unit: (cpu1 - cpu0) * 1e3 / validated,
        database_ms_per_unit: if row.postgres {
            (db1 - db0) * 1e3 / validated
        } else {
            0.0
        },
        samples,
        seconds_to_submit,
    })
}

/// Whether a row is selected by COBBLE_LOAD_ROWS: comma-separated terms,
/// a row runs if it contains any plain term (or there is none) and no
/// term that starts with `!`.
fn selected(name: &str, filter: &str) -> bool {
    let terms: Vec<&str> = filter.split(',').filter(|t| !t.is_empty()).collect();
    let wanted = terms.iter().filter(|t| !t.starts_with('!'));
    let refused = terms.iter().filter_map(|t| t.strip_prefix('!'));
    (wanted.clone().count() == 0 || wanted.clone().any(|t| name.contains(t)))
        && !refused.clone().any(|t| name.contains(t))
}

fn rows() -> Vec<Row> {
    let units = env_or("COBBLE_LOAD_UNITS", 100_000);
    let mut rows = Vec::new();
    for postgres in [false, true] {
        let backend = if postgres { "pg" } else { "sqlite" };
        for hosts in [8, 64, 512] {
            rows.push(Row {
                name: format!("{backend}-1c-{hosts}h"),
                postgres,
                coordinators: 1,
                hosts,
                units,
            });
        }
    }
    for hosts in [64, 512] {
        rows.push(Row {
            name: format!("pg-2c-{hosts}h"),
            postgres: true,
            coordinators: 2,
            hosts,
            units,
        });
    }
    for postgres in [false, true] {
        let backend = if postgres { "pg" } else { "sqlite" };
        rows.push(Row {
            name: format!("{backend}-1c-64h-1M"),
            postgres,
            coordinators: 1,
            hosts: 64,
            units: 1_000_000,
        });
    }
    rows
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let measure = Duration::from_secs(env_or("COBBLE_BENCH_SECONDS", 15));
    let filter = std::env::var("COBBLE_LOAD_ROWS").unwrap_or_default();
    let protocols = std::env::var("COBBLE_LOAD_PROTOCOLS").unwrap_or("single,batched".into());
    let postgres = std::env::var("COBBLE_TEST_POSTGRES_URL").is_ok();
    if !postgres {
        eprintln!("COBBLE_TEST_POSTGRES_URL is not set: skipping the PostgreSQL rows");
    }
    println!(
        "load: quorum 2, no-op units, {} s measured per row after 5 s of warm-up",
        measure.as_secs()
    );
    println!(
        "| row | protocol | units in job | submit | validated units/s | RequestWork p50 / p99 ms | UploadBlob p50 / p99 ms | Report p50 / p99 ms | coordinator CPU ms/unit | PostgreSQL CPU ms/unit | failed calls |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows() {
        if !selected(&row.name, &filter) || (row.postgres && !postgres) {
            continue;
        }
        for protocol in protocols.split(',') {
            let protocol = match protocol {
                "single" => Protocol::Single,
                "batched" => Protocol::Batched,
                other => anyhow::bail!("unknown protocol {other}"),
            };
            match run(&row, protocol, measure).await {
                Ok(figures) => println!(
                    "| {} | {protocol:?} | {} | {:.1} s | {:.0} | {} | {} | {} | {:.2} | {} | {} |",
                    row.name,
                    row.units,
                    figures.seconds_to_submit,
                    figures.rate,
                    latency(&figures.samples.request),
                    latency(&figures.samples.upload),
                    latency(&figures.samples.report),
                    figures.coordinator_ms_per_unit,
                    if row.postgres {
                        format!("{:.2}", figures.database_ms_per_unit)
                    } else {
                        "-".into()
                    },
                    figures.samples.errors.load(Ordering::Relaxed),
                ),
                Err(error) => println!("| {} | {protocol:?} | failed: {error:#} |", row.name),
            }
        }
    }
    Ok(())
}
